package apitypes

import "time"

// Action types a server accepts on POST …/servers/{id}/actions.
const (
	ActionReboot   = "reboot"
	ActionPowerOff = "power_off"
	ActionPowerOn  = "power_on"
	ActionResize   = "resize"
	ActionPorts    = "ports"
	ActionRename   = "rename"
	// ActionUpdateAgent installs a signed agent release on the server
	// (protocol 1.2 agents); {"type":"update_agent","version":"1.4.0"}.
	ActionUpdateAgent = "update_agent"
)

// ActionTypes lists the accepted action types, in the order error hints
// name them.
var ActionTypes = []string{ActionReboot, ActionPowerOff, ActionPowerOn, ActionResize, ActionPorts, ActionRename, ActionUpdateAgent}

// Action states.
const (
	ActionQueued    = "queued"
	ActionRunning   = "running"
	ActionSucceeded = "succeeded"
	ActionFailed    = "failed"
)

// ActionRequest is the body of POST /v1/workspaces/{ws}/servers/{id}/actions.
// Exactly the fields of its type are read:
//
//	{"type":"reboot","hard":false} {"type":"power_off","force":false} {"type":"power_on"}
//	{"type":"resize","size":"s-2vcpu-2gb"} {"type":"ports","ports":[22,8080]} {"type":"rename","name":"web-2"}
//	{"type":"update_agent","version":"1.4.0"}
type ActionRequest struct {
	Type  string `json:"type"`
	Hard  bool   `json:"hard,omitempty"`  // reboot: the cloud's hard reboot instead of asking the agent
	Force bool   `json:"force,omitempty"` // power_off: the cloud's power off at once, no graceful shutdown
	Size  string `json:"size,omitempty"`  // resize
	Ports []int  `json:"ports,omitempty"` // ports: the new inbound TCP set, exactly
	Name  string `json:"name,omitempty"`  // rename
	// Version is the agent release update_agent installs (GET
	// /v1/agent-releases lists them).
	Version string `json:"version,omitempty"`
}

// Action is one lifecycle action of a server (202 answer of POST, GET
// …/servers/{id}/actions/{action}).
type Action struct {
	ID         string         `json:"id"` // act_…
	ServerID   string         `json:"server_id"`
	Type       string         `json:"type"`
	Params     map[string]any `json:"params"` // the request's fields for its type
	State      string         `json:"state"`  // queued, running, succeeded, failed
	Steps      []ActionStep   `json:"steps"`
	Error      *ErrorDetail   `json:"error"` // null unless failed
	CreatedAt  time.Time      `json:"created_at"`
	FinishedAt *time.Time     `json:"finished_at"`
}

// ActionStep is one recorded step of an action.
type ActionStep struct {
	Name       string       `json:"name"`
	State      string       `json:"state"` // pending, running, done, failed
	StartedAt  *time.Time   `json:"started_at"`
	FinishedAt *time.Time   `json:"finished_at"`
	Error      *ErrorDetail `json:"error"`
	// Detail says what the step did (e.g. "asked the agent to reboot",
	// or why a reboot used the cloud's); absent until it is done.
	Detail string `json:"detail,omitempty"`
}

// ActionList is GET …/servers/{id}/actions.
type ActionList struct {
	Actions []Action `json:"actions"`
	Next    string   `json:"next"`
}
