package apitypes

import (
	"time"

	"github.com/devpilot/devpilot/shared/protocol"
)

// CreateDeployment is POST /v1/workspaces/{ws}/deployments: the plan's
// steps as one deploy task per server, max_parallel servers at a time.
type CreateDeployment struct {
	Servers     []string `json:"servers,omitempty"` // server ids; or tag
	Tag         string   `json:"tag,omitempty"`
	MaxParallel int      `json:"max_parallel,omitempty"` // default 1
	Plan        Plan     `json:"plan"`
	DeadlineS   int      `json:"deadline_s,omitempty"` // each server's task; default 3600
}

// Plan is a deployment's work: the steps each server runs, in order; runs
// of exec, systemd and file steps go to the agent as deploy tasks, and a
// firewall step runs on the control plane between them.
type Plan struct {
	Steps []TaskStep `json:"steps"`
}

// Deployment is a rolling deployment.
type Deployment struct {
	ID          string         `json:"id"`    // dep_…
	State       string         `json:"state"` // running, succeeded, failed
	Tag         string         `json:"tag,omitempty"`
	MaxParallel int            `json:"max_parallel"`
	DeadlineS   int            `json:"deadline_s"`
	Error       string         `json:"error,omitempty"`
	CreatedBy   string         `json:"created_by"`
	CreatedAt   time.Time      `json:"created_at"`
	FinishedAt  *time.Time     `json:"finished_at"`
	Counts      map[string]int `json:"counts"` // targets by state
	Targets     []Target       `json:"targets"`
	Plan        protocol.Task  `json:"plan"` // the plan's agent steps, redacted
	// Firewall lists the plan's firewall steps (they run on the control
	// plane, so the agent's plan above leaves them out).
	Firewall []FirewallStep `json:"firewall_steps,omitempty"`
}

// FirewallStep is a deployment plan's firewall step.
type FirewallStep struct {
	Step  int    `json:"step"` // its index in the plan's steps, from 0
	Name  string `json:"name,omitempty"`
	Ports []int  `json:"ports"`
}

// Target is one server of a deployment.
type Target struct {
	ServerID   string                `json:"server_id"`
	Batch      int                   `json:"batch"`               // from 1
	TaskID     string                `json:"task_id,omitempty"`   // its current (or last) agent phase's deploy task
	ActionID   string                `json:"action_id,omitempty"` // the ports action of the firewall step it is in
	State      string                `json:"state"`               // pending, skipped, or the task's state
	Reason     string                `json:"reason,omitempty"`
	Error      string                `json:"error,omitempty"`
	ExitCode   *int                  `json:"exit_code,omitempty"`
	Steps      []protocol.StepResult `json:"steps,omitempty"`
	FinishedAt *time.Time            `json:"finished_at,omitempty"`
}
