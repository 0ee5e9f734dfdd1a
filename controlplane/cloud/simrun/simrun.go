// Package simrun is the seam between a cloud simulator and whatever "runs"
// its instances. With no Runtime a simulated instance simply turns active;
// `devpilot dev` plugs in a runtime that executes the instance's user-data
// as a sandboxed process, and the e2e suite one that boots a container.
package simrun

import "context"

// Machine is what a cloud's metadata service would tell a new instance.
type Machine struct {
	Provider          string // "digitalocean" or "vultr"
	ID                string // droplet id or instance UUID
	Hostname          string
	Region            string
	PublicIPv4        string
	Tags              []string
	SSHAuthorizedKeys []string // OpenSSH authorized_keys lines
	UserData          []byte   // as the user supplied it (Vultr's base64 already decoded)
}

// Runtime boots and destroys simulated instances. Boot returns once the
// machine has started (not when its user-data finished); Destroy stops it and
// removes everything it left behind. Both must be safe for concurrent use.
type Runtime interface {
	Boot(ctx context.Context, m Machine) error
	Destroy(ctx context.Context, id string) error
}

// Power is implemented by runtimes whose machines can be powered off and on
// without being destroyed: PowerOff stops everything the machine runs (the
// agent goes away) and keeps its disk; PowerOn boots it again from that disk
// (the user-data does not run a second time; the agent comes back by
// itself). Powering off a machine that is off, or on one that runs, is a
// no-op. An unknown id is an error.
type Power interface {
	PowerOff(ctx context.Context, id string) error
	PowerOn(ctx context.Context, id string) error
}
