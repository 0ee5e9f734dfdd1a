package apitypes

import (
	"time"

	"github.com/devpilot/devpilot/shared/protocol"
)

// Server is a managed server.
type Server struct {
	ID            string `json:"id"` // srv_…
	Name          string `json:"name"`
	Provider      string `json:"provider"`
	IntegrationID string `json:"integration_id,omitempty"`
	Region        string `json:"region"`
	Size          string `json:"size"`
	Image         string `json:"image"`
	Ports         []int  `json:"ports"` // inbound TCP ports the firewall opens
	// State: provisioning, installing, online, offline, failed, deleting,
	// deleted, quarantined (the list may grow: stopped, agent_offline,
	// lost, unknown).
	State         string     `json:"state"`
	StateReason   string     `json:"state_reason,omitempty"` // why, and what to do
	QuarantinedAt *time.Time `json:"quarantined_at,omitempty"`
	InstanceID    string     `json:"instance_id,omitempty"` // the provider's id
	PublicIPv4    string     `json:"public_ipv4,omitempty"`
	Tags          []string   `json:"tags"`  // cloud tags Devpilot set
	Steps         []Step     `json:"steps"` // provisioning steps, in order
	// Health is the latest report from the agent; null before the first.
	Health      *protocol.Health `json:"health"`
	HealthAt    *time.Time       `json:"health_at"`
	Agent       Agent            `json:"agent"`
	Error       *StepError       `json:"error"`                 // set when state is failed
	Diagnostics string           `json:"diagnostics,omitempty"` // collected when the install did not confirm
	CreatedAt   time.Time        `json:"created_at"`
	UpdatedAt   time.Time        `json:"updated_at"`
}

// Step is one provisioning step.
type Step struct {
	Name       string     `json:"name"`  // preflight, ssh_key, instance, firewall, active, agent
	State      string     `json:"state"` // pending, running, done, failed
	Attempts   int        `json:"attempts"`
	StartedAt  *time.Time `json:"started_at"`
	FinishedAt *time.Time `json:"finished_at"`
	Error      *StepError `json:"error"`
	Detail     string     `json:"detail,omitempty"`
}

// StepError is a step's failure.
type StepError struct {
	Step    string `json:"step,omitempty"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
}

// Agent is the agent's side of a server.
type Agent struct {
	Connected   bool            `json:"connected"`
	Version     string          `json:"version,omitempty"`
	InstalledAt *time.Time      `json:"installed_at"`
	LastSeenAt  *time.Time      `json:"last_seen_at"`
	Facts       *protocol.Facts `json:"facts,omitempty"`
	// TargetVersion is the workspace's agent target version (its last
	// succeeded rollout's); OutsideTarget marks an agent on another
	// version (issue 13). Both absent before a rollout succeeded.
	TargetVersion string `json:"target_version,omitempty"`
	OutsideTarget bool   `json:"outside_target,omitempty"`
	// LastUpdate is the outcome of the agent's last update, as the agent
	// reported it when it came back; null before its first update.
	LastUpdate *AgentLastUpdate `json:"last_update"`
}

// Agent update results (AgentLastUpdate.Result).
const (
	UpdateResultUpdated    = protocol.UpdateResultUpdated    // the new version runs
	UpdateResultRolledBack = protocol.UpdateResultRolledBack // the server restored the previous version
	UpdateResultRefused    = protocol.UpdateResultRefused    // the binary did not verify; nothing installed
	UpdateResultFailed     = protocol.UpdateResultFailed     // the install failed; the previous version kept running
)

// AgentLastUpdate is the outcome of a server's last agent update (issue 13).
type AgentLastUpdate struct {
	ActionID string `json:"action_id"` // the update_agent action (act_…)
	// Result: updated, rolled_back, refused, failed.
	Result      string `json:"result"`
	FromVersion string `json:"from_version"`     // the version that ran before
	ToVersion   string `json:"to_version"`       // the version the update installed, or tried to
	Reason      string `json:"reason,omitempty"` // why it did not update, in the agent's words
	// ReportedAt is when a control plane first recorded the outcome
	// (null for outcomes recorded before this was kept).
	ReportedAt *time.Time `json:"reported_at"`
}

// CreateServer is POST /v1/workspaces/{ws}/servers; answered 202 with the
// Server while the provisioning job runs.
type CreateServer struct {
	IntegrationID string `json:"integration_id"`
	Name          string `json:"name"`   // a DNS label: lowercase letters, digits, dashes
	Region        string `json:"region"` // from the integration's catalog
	Size          string `json:"size"`   // from the catalog, available in region
	Image         string `json:"image"`  // catalog id, or debian-12 / ubuntu-24.04
	Ports         []int  `json:"ports"`  // 1..65535, no duplicates
}

// Rekey is what POST …/servers/{id}/rekey answers. Delivered "ssh": the
// token reached the agent over SSH and is not shown. Otherwise the
// one-time bootstrap token (shown once) and the command that enrolls a new
// identity with it; DeliveryError says why SSH did not do it.
type Rekey struct {
	Server         *Server   `json:"server"`
	Delivered      string    `json:"delivered,omitempty"`
	DeliveryError  string    `json:"delivery_error,omitempty"`
	BootstrapToken string    `json:"bootstrap_token,omitempty"`
	ExpiresAt      time.Time `json:"expires_at"`
	Command        string    `json:"command,omitempty"`
}

// RekeyRequest is the optional body of POST …/servers/{id}/rekey.
type RekeyRequest struct {
	// Print skips SSH delivery: the token is answered for the operator.
	Print bool `json:"print"`
}

// HealthSample is one stored health sample.
type HealthSample struct {
	At          time.Time `json:"at"`
	CPUPercent  float64   `json:"cpu_percent"`
	Load1       float64   `json:"load1"`
	MemUsedMB   int64     `json:"mem_used_mb"`
	MemTotalMB  int64     `json:"mem_total_mb"`
	DiskUsedMB  int64     `json:"disk_used_mb"`
	DiskTotalMB int64     `json:"disk_total_mb"`
}
