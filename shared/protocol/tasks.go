package protocol

import "time"

// Deployment tasks. The control plane sends a Task; the agent journals its
// id on disk before running it and never runs an id twice. It streams
// TaskLog chunks (sequence numbers from 1, per task) and finally a
// TaskResult in a final state, which it resends (with any log chunks after
// TaskAck.LogSeq) on every new session, and on a live session when no
// TaskAck came for a while (backing off), until the hub sends a TaskAck
// with Final set. The hub acks only what it stored, so a chunk or result
// it failed to store arrives again; it stores each seq and the first
// final result once, so resends are harmless. (Behaviour, not wire
// format: no version bump; agents of Version 1 before 2026-12-01 resend
// on a new session only.) A Task whose id the agent journaled as started by a previous
// process but never finished is answered with a failed TaskResult whose
// Reason is ReasonAgentRestarted; it is never silently re-run.
//
//	hub → agent  task      Task
//	hub → agent  cancel    Cancel
//	hub → agent  task_ack  TaskAck
//	agent → hub  task_log  TaskLog
//	agent → hub  task_result TaskResult (State running when it starts; a final state at the end)

// Task kinds.
const (
	KindExec    = "exec"
	KindSystemd = "systemd"
	KindFile    = "file"
	KindDeploy  = "deploy"
)

// Task states. Queued and sent exist only in the control plane.
const (
	TaskQueued    = "queued"
	TaskSent      = "sent"
	TaskRunning   = "running"
	TaskSucceeded = "succeeded"
	TaskFailed    = "failed"
	TaskTimedOut  = "timed_out"
	TaskCanceled  = "canceled"
)

// Final reports whether a task state is final.
func Final(state string) bool {
	switch state {
	case TaskSucceeded, TaskFailed, TaskTimedOut, TaskCanceled:
		return true
	}
	return false
}

// Reasons a task failed that are not its own exit code.
const (
	ReasonAgentRestarted = "agent_restarted" // it was running when the agent process died
	ReasonDeadline       = "deadline"        // its deadline passed
	ReasonCanceled       = "canceled"
	ReasonUnsupported    = "unsupported"   // e.g. systemd task where systemd is absent
	ReasonInvalid        = "invalid"       // the task could not be understood
	ReasonOutputCapped   = "output_capped" // informational: output beyond the cap was dropped
)

// Task is one unit of work for an agent. Exactly one of Exec, Systemd,
// File, Deploy is set, matching Kind.
type Task struct {
	ID       string       `json:"id"`
	Kind     string       `json:"kind"`
	Deadline time.Time    `json:"deadline"` // the agent kills the work at this time (timed_out)
	Exec     *ExecSpec    `json:"exec,omitempty"`
	Systemd  *SystemdSpec `json:"systemd,omitempty"`
	File     *FileSpec    `json:"file,omitempty"`
	Deploy   *DeploySpec  `json:"deploy,omitempty"`
}

// ExecSpec runs a program (no shell unless argv names one).
type ExecSpec struct {
	Argv     []string          `json:"argv"`
	Env      map[string]string `json:"env,omitempty"`
	Dir      string            `json:"dir,omitempty"`
	User     string            `json:"user,omitempty"`      // run as this user (agent must be root)
	TimeoutS int               `json:"timeout_s,omitempty"` // 0: until the task deadline
	// MaxOutputBytes caps what is streamed and kept; 0: 1 MiB.
	MaxOutputBytes int64 `json:"max_output_bytes,omitempty"`
}

// SystemdSpec acts on a unit over D-Bus.
type SystemdSpec struct {
	Unit   string `json:"unit"`
	Action string `json:"action"` // start, stop, restart, reload, enable, disable, status
}

// FileSpec writes a file atomically.
type FileSpec struct {
	Path          string `json:"path"`
	ContentBase64 string `json:"content_base64"`
	Mode          string `json:"mode,omitempty"` // octal, default "0644"
	Owner         string `json:"owner,omitempty"`
	Group         string `json:"group,omitempty"`
}

// DeploySpec runs steps in order and stops at the first failure.
type DeploySpec struct {
	Steps []DeployStep `json:"steps"`
}

// DeployStep is one step of a deploy task.
type DeployStep struct {
	Name    string       `json:"name,omitempty"`
	Kind    string       `json:"kind"` // exec, systemd or file
	Exec    *ExecSpec    `json:"exec,omitempty"`
	Systemd *SystemdSpec `json:"systemd,omitempty"`
	File    *FileSpec    `json:"file,omitempty"`
}

// Cancel asks the agent to stop a task; it reports TaskCanceled.
type Cancel struct {
	TaskID string `json:"task_id"`
}

// TaskAck tells the agent what the control plane has stored: log chunks
// up to LogSeq, and (Final) the final result, after which the agent stops
// resending and may forget the task's spool.
type TaskAck struct {
	TaskID string `json:"task_id"`
	LogSeq int64  `json:"log_seq"`
	Final  bool   `json:"final"`
}

// Log streams.
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
	StreamSystem = "system" // the agent's own notes: step boundaries, truncation
)

// TaskLog is a chunk of a task's output.
type TaskLog struct {
	TaskID string `json:"task_id"`
	Seq    int64  `json:"seq"`
	Stream string `json:"stream"`
	Step   int    `json:"step,omitempty"` // deploy step index from 1
	Data   []byte `json:"data"`           // at most MaxLogChunkBytes
}

// TaskResult reports a task's state.
type TaskResult struct {
	TaskID     string       `json:"task_id"`
	State      string       `json:"state"`
	ExitCode   *int         `json:"exit_code,omitempty"`
	Reason     string       `json:"reason,omitempty"`
	Error      string       `json:"error,omitempty"`
	StartedAt  time.Time    `json:"started_at"`
	FinishedAt *time.Time   `json:"finished_at,omitempty"`
	LastLogSeq int64        `json:"last_log_seq"`     // the highest seq sent for this task
	SHA256     string       `json:"sha256,omitempty"` // file tasks: of what was written
	Unit       *UnitStatus  `json:"unit,omitempty"`   // systemd tasks
	Steps      []StepResult `json:"steps,omitempty"`  // deploy tasks
}

// UnitStatus is a systemd unit's state after an action.
type UnitStatus struct {
	Name        string `json:"name"`
	LoadState   string `json:"load_state"`
	ActiveState string `json:"active_state"`
	SubState    string `json:"sub_state"`
	UnitFile    string `json:"unit_file_state,omitempty"` // enabled, disabled, …
}

// StepResult is one deploy step's outcome.
type StepResult struct {
	Name     string      `json:"name,omitempty"`
	Kind     string      `json:"kind"`
	State    string      `json:"state"` // succeeded, failed, timed_out, canceled, or "skipped"
	ExitCode *int        `json:"exit_code,omitempty"`
	Error    string      `json:"error,omitempty"`
	SHA256   string      `json:"sha256,omitempty"`
	Unit     *UnitStatus `json:"unit,omitempty"`
}
