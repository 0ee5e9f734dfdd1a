package cloud

import (
	"context"
	"time"
)

// Power actions, as Lifecycle.Power takes them.
const (
	PowerReboot   = "reboot"      // graceful reboot through the cloud (ACPI)
	PowerCycle    = "power_cycle" // hard reset; Vultr has only one reboot, which is this
	PowerShutdown = "shutdown"    // graceful shutdown (DigitalOcean); Vultr's halt is a hard stop
	PowerOff      = "power_off"   // hard power off
	PowerOn       = "power_on"
)

// PowerActions lists the actions Lifecycle.Power accepts.
var PowerActions = []string{PowerReboot, PowerCycle, PowerShutdown, PowerOff, PowerOn}

// Lifecycle is what a provider does to an instance that exists: power,
// resize, rename and putting a removed tag back. Both providers implement
// it; callers reach it with a type assertion on a Provider.
//
// Each method starts one cloud action and returns an ActionRef; Action
// reports whether it finished. A caller records the ActionRef before it
// waits, so that a restarted job waits for the same action instead of
// starting a second one.
type Lifecycle interface {
	// Power starts one of PowerActions.
	Power(ctx context.Context, id, action string) (ActionRef, error)

	// Resize changes the instance's size (plan). DigitalOcean needs the
	// droplet powered off first and resizes the disk too (it cannot shrink);
	// Vultr upgrades a running instance (only to plans with at least the
	// current disk) and reboots it itself.
	Resize(ctx context.Context, id, size string) (ActionRef, error)

	// Rename sets the instance's name (DigitalOcean) or label (Vultr).
	Rename(ctx context.Context, id, name string) (ActionRef, error)

	// Action reports how a started action stands.
	Action(ctx context.Context, ref ActionRef) (ActionStatus, error)

	// Tag adds tag to the instance (drift repair: a Devpilot tag removed
	// outside Devpilot is put back). Tagging twice is no error.
	Tag(ctx context.Context, id, tag string) error
}

// ActionRef names a started cloud action so it can be waited for again
// after a restart. DigitalOcean actions have an id (polled through
// GET /v2/actions/{id}); Vultr's answer 204 with none, so their ref holds
// the instance and the state that means done.
type ActionRef struct {
	Provider string `json:"provider"`
	Type     string `json:"type"`                // reboot, power_off, resize, rename, ...
	Instance string `json:"instance"`            // instance id
	ID       string `json:"id,omitempty"`        // DigitalOcean action id
	Want     string `json:"want,omitempty"`      // Vultr: StateActive or StateOff once done; "" done at once
	WantSize string `json:"want_size,omitempty"` // Vultr resize: the plan once done
	// Started is when the cloud says the action started (DigitalOcean);
	// zero when it does not say.
	Started time.Time `json:"started_at,omitzero"`
}

// Action states.
const (
	ActionInProgress = "in-progress"
	ActionCompleted  = "completed"
	ActionErrored    = "errored"
)

// ActionStatus is how a started action stands.
type ActionStatus struct {
	State string // ActionInProgress, ActionCompleted or ActionErrored
}

// Done reports whether the action ended (completed or errored).
func (s ActionStatus) Done() bool { return s.State != ActionInProgress }

// FirewallRepairer is EnsureFirewall that reports whether the firewall had
// to be changed: the reconciler puts back rules edited outside Devpilot
// and records that it did. Both providers implement it.
type FirewallRepairer interface {
	RepairFirewall(ctx context.Context, spec FirewallSpec) (id string, changed bool, err error)
}
