package apitypes

import (
	"time"

	"github.com/devpilot/devpilot/shared/protocol"
)

// TaskSpec is POST /v1/workspaces/{ws}/servers/{id}/tasks: a kind (exec,
// systemd, file, deploy) and that kind's fields, flat.
type TaskSpec struct {
	Kind string `json:"kind"`
	StepFields
	Steps     []TaskStep `json:"steps,omitempty"`      // deploy
	DeadlineS int        `json:"deadline_s,omitempty"` // default 3600
}

// TaskStep is one step of a deploy task (kind exec, systemd or file) or,
// in a deployment's plan only, of kind firewall: the control plane sets
// the server's inbound ports to exactly Ports (its ports action) before
// the next step.
type TaskStep struct {
	Name string `json:"name,omitempty"`
	Kind string `json:"kind"`
	StepFields
	Ports []int `json:"ports,omitempty"` // firewall
}

// StepFields are the fields of the exec, systemd and file kinds.
type StepFields struct {
	// exec
	Argv           []string          `json:"argv,omitempty"`
	Env            map[string]string `json:"env,omitempty"` // values are never shown back
	Dir            string            `json:"dir,omitempty"`
	User           string            `json:"user,omitempty"`
	TimeoutS       int               `json:"timeout_s,omitempty"`
	MaxOutputBytes int64             `json:"max_output_bytes,omitempty"`
	// systemd
	Unit   string `json:"unit,omitempty"`
	Action string `json:"action,omitempty"` // start, stop, restart, reload, enable, disable, status
	// file
	Path          string `json:"path,omitempty"`
	ContentBase64 string `json:"content_base64,omitempty"` // never shown back
	Mode          string `json:"mode,omitempty"`           // octal, e.g. "0644"
	Owner         string `json:"owner,omitempty"`
	Group         string `json:"group,omitempty"`
}

// Task is a unit of work on one server.
type Task struct {
	ID           string `json:"id"` // task_…
	ServerID     string `json:"server_id"`
	DeploymentID string `json:"deployment_id,omitempty"`
	Kind         string `json:"kind"`
	// State: queued, sent, running, succeeded, failed, timed_out, canceled.
	State             string                `json:"state"`
	Reason            string                `json:"reason,omitempty"`
	Error             string                `json:"error,omitempty"`
	ExitCode          *int                  `json:"exit_code"` // exec and deploy, once finished
	Attempts          int                   `json:"attempts"`
	CreatedBy         string                `json:"created_by"`
	CreatedAt         time.Time             `json:"created_at"`
	Deadline          time.Time             `json:"deadline"`
	SentAt            *time.Time            `json:"sent_at"`
	StartedAt         *time.Time            `json:"started_at"`
	FinishedAt        *time.Time            `json:"finished_at"`
	CancelRequestedAt *time.Time            `json:"cancel_requested_at,omitempty"`
	SHA256            string                `json:"sha256,omitempty"` // file tasks: of what was written
	Unit              *protocol.UnitStatus  `json:"unit,omitempty"`   // systemd tasks
	Steps             []protocol.StepResult `json:"steps,omitempty"`  // deploy tasks
	Log               LogInfo               `json:"log"`
	Spec              protocol.Task         `json:"spec"` // env values and file contents redacted
}

// LogInfo summarises a task's stored output.
type LogInfo struct {
	Seq       int64 `json:"seq"`   // highest contiguous chunk received
	Bytes     int64 `json:"bytes"` // stored
	Truncated bool  `json:"truncated"`
}

// LogChunk is one chunk of output: Text is the bytes as UTF-8 (invalid
// sequences replaced); Data carries the exact bytes, base64, only when they
// are not valid UTF-8.
type LogChunk struct {
	Seq    int64     `json:"seq"`
	Stream string    `json:"stream"` // stdout or stderr
	Step   int       `json:"step,omitempty"`
	Text   string    `json:"text"`
	Data   []byte    `json:"data,omitempty"`
	At     time.Time `json:"at"`
}

// LogPage is GET …/tasks/{id}/logs without follow. (Its "next" is a
// sequence number to pass as ?after=, not a list link.)
type LogPage struct {
	TaskID    string     `json:"task_id"`
	State     string     `json:"state"`
	Chunks    []LogChunk `json:"chunks"`
	Next      int64      `json:"next"`      // pass as ?after= for the next page
	More      bool       `json:"more"`      // more output is stored already
	Done      bool       `json:"done"`      // the task is final and this page ends its output
	Truncated bool       `json:"truncated"` // output beyond the control plane's cap was dropped
}
