package install

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/devpilot/devpilot/agent/config"
	"github.com/devpilot/devpilot/agent/identity"
	"github.com/devpilot/devpilot/agent/layout"
	"github.com/devpilot/devpilot/agent/unitctl"
	"github.com/devpilot/devpilot/packaging"
)

// Status writes what is installed below p and the service state, for a
// person. It never prints the bootstrap token, only whether one is pending.
// It returns false when the agent is not (completely) installed.
func Status(ctx context.Context, w io.Writer, p layout.Paths, sup unitctl.Controller) bool {
	ok := true
	file := func(label, path string) {
		fi, err := os.Stat(path)
		if err != nil {
			ok = false
			fmt.Fprintf(w, "%-9s %s: missing\n", label, path)
			return
		}
		fmt.Fprintf(w, "%-9s %s (%04o)\n", label, path, fi.Mode().Perm())
	}
	fmt.Fprintf(w, "root      %s\n", p.Root)
	file("binary", p.Binary())
	file("unit", p.UnitFile())
	file("config", p.ConfigFile())
	if cfg, err := config.Load(p.ConfigFile()); err == nil {
		fmt.Fprintf(w, "  url       %s\n", cfg.URL)
		fmt.Fprintf(w, "  server_id %s\n", cfg.ServerID)
		fmt.Fprintf(w, "  ca_pin    %s\n", cfg.CAPin)
		if cfg.Enrolled() {
			fmt.Fprintln(w, "  enrolled  yes (no bootstrap token on disk)")
		} else {
			fmt.Fprintln(w, "  enrolled  not yet (bootstrap token pending first contact)")
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		ok = false
		fmt.Fprintf(w, "  invalid: %v\n", err)
	}
	file("identity", p.IdentityKey())
	if key, err := identity.Load(p.IdentityKey()); err == nil {
		fmt.Fprintf(w, "  key       %s\n", identity.Fingerprint(key.Public().(ed25519.PublicKey)))
	}
	if sup == nil {
		sup = unitctl.None{}
	}
	st, err := sup.State(ctx, packaging.UnitName)
	if err != nil {
		st = "unknown: " + err.Error()
	}
	fmt.Fprintf(w, "service   %s: %s\n", packaging.UnitName, st)
	return ok
}
