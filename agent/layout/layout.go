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

// Binary is the installed executable (0755).
func (p Paths) Binary() string { return p.join("usr/local/bin/devpilot-agent") }

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
