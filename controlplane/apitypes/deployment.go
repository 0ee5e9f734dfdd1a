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

// Plan is a deployment's work: the steps of the deploy task each server runs.
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
	Plan        protocol.Task  `json:"plan"` // the deploy task's spec, redacted
}

// Target is one server of a deployment.
type Target struct {
	ServerID   string                `json:"server_id"`
	Batch      int                   `json:"batch"` // from 1
	TaskID     string                `json:"task_id,omitempty"`
	State      string                `json:"state"` // pending, skipped, or the task's state
	Reason     string                `json:"reason,omitempty"`
	Error      string                `json:"error,omitempty"`
	ExitCode   *int                  `json:"exit_code,omitempty"`
	Steps      []protocol.StepResult `json:"steps,omitempty"`
	FinishedAt *time.Time            `json:"finished_at,omitempty"`
}
