// Package layout is where devpilot-agent keeps its files on a server, all
// below one root directory ("/" on a real server, a temp dir in tests and
// in the dev simulator).
package layout

import (
	"path/filepath"

	"github.com/devpilot/devpilot/packaging"
)

// Paths of an installation below Root.
type Paths struct {
	Root string
}

// New returns the layout below root ("" means "/").
func New(root string) Paths {
	if root == "" {
		root = "/"
	}
	return Paths{Root: filepath.Clean(root)}
}

func (p Paths) join(rel string) string { return filepath.Join(p.Root, rel) }

// Binary is the command on the PATH: a symlink to CurrentBinary.
func (p Paths) Binary() string { return p.join("usr/local/bin/devpilot-agent") }

// LibDir holds the installed versions, the current link and the update
// guard (0755).
func (p Paths) LibDir() string { return p.join("usr/lib/devpilot-agent") }

// VersionsDir holds one directory per installed version.
func (p Paths) VersionsDir() string { return p.join("usr/lib/devpilot-agent/versions") }

// VersionBinary is version v's executable (0755).
func (p Paths) VersionBinary(v string) string {
	return filepath.Join(p.VersionsDir(), v, "devpilot-agent")
}

// Current is the symlink to the running version's directory
// (versions/<v>, relative); the unit starts CurrentBinary.
func (p Paths) Current() string { return p.join("usr/lib/devpilot-agent/current") }

// CurrentBinary is the executable the unit starts.
func (p Paths) CurrentBinary() string { return p.join("usr/lib/devpilot-agent/current/devpilot-agent") }

// UpdateGuard is the update guard script (packaging.UpdateGuard, 0755).
func (p Paths) UpdateGuard() string { return p.join("usr/lib/devpilot-agent/update-guard.sh") }

// UpdatePending is the pending-update marker the guard reads (0600).
func (p Paths) UpdatePending() string { return p.join("var/lib/devpilot-agent/update-pending") }

// UpdateResult is the outcome of the last update still to report (0600).
func (p Paths) UpdateResult() string { return p.join("var/lib/devpilot-agent/update-result.json") }

// UpdatesSeen lists the update ids this server handled, newest last.
func (p Paths) UpdatesSeen() string { return p.join("var/lib/devpilot-agent/updates-seen") }

// ConfigDir holds ConfigFile (0700).
func (p Paths) ConfigDir() string { return p.join("etc/devpilot-agent") }

// ConfigFile is the agent's configuration (0600).
func (p Paths) ConfigFile() string { return p.join("etc/devpilot-agent/config.json") }

// StateDir holds the identity and, later, the task journal (0700).
func (p Paths) StateDir() string { return p.join("var/lib/devpilot-agent") }

// IdentityKey is the agent's ed25519 private key (0600).
func (p Paths) IdentityKey() string { return p.join("var/lib/devpilot-agent/identity.key") }

// UnitFile is the systemd unit (0644).
func (p Paths) UnitFile() string { return p.join("etc/systemd/system/" + packaging.UnitName) }

// IsHostRoot reports whether the layout is the real file system.
func (p Paths) IsHostRoot() bool { return p.Root == "/" }
