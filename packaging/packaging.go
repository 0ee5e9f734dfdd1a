// Package packaging holds the files that describe how devpilot-agent is
// installed on a server, embedded so the binary installs exactly what the
// repository ships: devpilot-agent.service is the single source of truth
// (go:embed cannot reach up from agent/install, so the file lives here and
// agent/install imports it).
package packaging

import _ "embed"

// SystemdUnit is the text of devpilot-agent.service.
//
//go:embed devpilot-agent.service
var SystemdUnit string

// UnitName is the systemd unit's name.
const UnitName = "devpilot-agent.service"

// UpdateGuard is the text of devpilot-agent-update-guard.sh, the POSIX sh
// guard that rolls a failed agent update back (ExecStartPre= of the unit,
// and the deadline timer the agent arms).
//
//go:embed devpilot-agent-update-guard.sh
var UpdateGuard string
