// Package install lays devpilot-agent out on a server (binary, config,
// identity key, systemd unit), starts it through a unitctl.Controller, and
// undoes that. Every path is below a root directory so the same code runs
// unprivileged in a temp dir.
package install

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/agent/config"
	"github.com/devpilot/devpilot/agent/identity"
	"github.com/devpilot/devpilot/agent/layout"
	"github.com/devpilot/devpilot/agent/unitctl"
	"github.com/devpilot/devpilot/agent/update"
	"github.com/devpilot/devpilot/packaging"
	"github.com/devpilot/devpilot/shared/atomicfile"
	"github.com/devpilot/devpilot/shared/protocol"
	"github.com/devpilot/devpilot/shared/release"
	"github.com/devpilot/devpilot/shared/version"
)

// Options for Install.
type Options struct {
	Paths layout.Paths
	// BootstrapFile is the install contract (protocol.Bootstrap JSON, mode
	// 0600). It is deleted after a successful install. Empty: reinstall
	// from the existing config (binary and unit only, e.g. an upgrade).
	BootstrapFile string
	// Executable is the binary to install; empty means this process's own.
	Executable string
	// Version is Executable's version (the versions/<v> it goes to);
	// empty means this build's (shared/version).
	Version    string
	Supervisor unitctl.Controller
	Log        *zap.Logger
}

// Result says what Install changed.
type Result struct {
	Changed         []string // files written
	IdentityCreated bool
	Started         bool // the supervisor was asked to (re)start the unit
}

// ReadBootstrap reads the install contract, refusing a file that group or
// others may read (it holds a one-time token), and checks it.
func ReadBootstrap(path string) (protocol.Bootstrap, error) {
	var b protocol.Bootstrap
	fi, err := os.Stat(path)
	if err != nil {
		return b, fmt.Errorf("bootstrap file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return b, fmt.Errorf("bootstrap file %s has mode %04o: it holds a one-time token and must be readable by its owner only (chmod 600 %s)", path, fi.Mode().Perm(), path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return b, fmt.Errorf("bootstrap file: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&b); err != nil {
		return b, fmt.Errorf("bootstrap file %s: %w", path, err)
	}
	if b.BootstrapToken == "" {
		return b, fmt.Errorf("bootstrap file %s: bootstrap_token is empty", path)
	}
	if b.CACertPEM == "" {
		return b, fmt.Errorf("bootstrap file %s: ca_cert_pem is empty", path)
	}
	if err := config.FromBootstrap(b).Validate(); err != nil {
		return b, fmt.Errorf("bootstrap file %s: %w", path, err)
	}
	return b, nil
}

// Install lays the agent out and starts it. Running it again with the same
// input changes nothing: files are rewritten only when their content
// differs, the identity key is never replaced, and an agent that already
// enrolled as the same server keeps its token-free config.
func Install(ctx context.Context, o Options) (Result, error) {
	var res Result
	log := o.Log
	if log == nil {
		log = zap.NewNop()
	}
	if o.Supervisor == nil {
		o.Supervisor = unitctl.None{}
	}
	if o.Supervisor.Name() == "systemd" && !o.Paths.IsHostRoot() {
		return res, fmt.Errorf("install: --supervisor systemd needs --root-dir / (got %s); use --supervisor none to only write files", o.Paths.Root)
	}
	p := o.Paths

	// 1. What to configure.
	var cfg config.Config
	if o.BootstrapFile != "" {
		b, err := ReadBootstrap(o.BootstrapFile)
		if err != nil {
			return res, fmt.Errorf("install: %w", err)
		}
		cfg = config.FromBootstrap(b)
		if old, err := config.Load(p.ConfigFile()); err == nil && old.Enrolled() && old.ServerID == cfg.ServerID {
			// Already enrolled as this server: the token is spent, keep it out.
			cfg.BootstrapToken = ""
		}
	} else {
		old, err := config.Load(p.ConfigFile())
		if err != nil {
			return res, fmt.Errorf("install: no --bootstrap-file and no usable existing config: %w", err)
		}
		cfg = old
	}

	// 2. Directories.
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{
		{filepath.Dir(p.Binary()), 0o755},
		{p.VersionsDir(), 0o755},
		{p.ConfigDir(), 0o700},
		{p.StateDir(), 0o700},
		{filepath.Dir(p.UnitFile()), 0o755},
	} {
		if err := ensureDir(d.path, d.mode); err != nil {
			return res, fmt.Errorf("install: %w", err)
		}
	}

	// 3. Binary: versions/<v>/devpilot-agent, the current link at it, the
	// update guard beside them, and the command on the PATH a link to
	// current. An install from before versions (a plain file in
	// /usr/local/bin) is migrated to this layout.
	exe := o.Executable
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return res, fmt.Errorf("install: find own executable: %w", err)
		}
	}
	bin, err := os.ReadFile(exe)
	if err != nil {
		return res, fmt.Errorf("install: read executable: %w", err)
	}
	ver := o.Version
	if ver == "" {
		ver = version.Get().Version
	}
	if err := release.CheckVersion(ver); err != nil {
		return res, fmt.Errorf("install: this build's %w", err)
	}
	if err := ensureDir(filepath.Dir(p.VersionBinary(ver)), 0o755); err != nil {
		return res, fmt.Errorf("install: %w", err)
	}
	binChanged, err := writeIfChanged(p.VersionBinary(ver), bin, 0o755)
	if err != nil {
		return res, fmt.Errorf("install: %w", err)
	}
	if binChanged {
		res.Changed = append(res.Changed, p.VersionBinary(ver))
	}
	if update.CurrentVersion(p) != ver {
		if err := update.PointCurrent(p, ver); err != nil {
			return res, fmt.Errorf("install: %w", err)
		}
		res.Changed = append(res.Changed, p.Current())
	}
	guardChanged, err := writeIfChanged(p.UpdateGuard(), []byte(packaging.UpdateGuard), 0o755)
	if err != nil {
		return res, fmt.Errorf("install: %w", err)
	}
	if guardChanged {
		res.Changed = append(res.Changed, p.UpdateGuard())
	}
	linked, err := linkBinary(p)
	if err != nil {
		return res, fmt.Errorf("install: %w", err)
	}
	if linked {
		res.Changed = append(res.Changed, p.Binary())
	}

	// 4. Config.
	changed, err := writeIfChanged(p.ConfigFile(), cfg.Marshal(), 0o600)
	if err != nil {
		return res, fmt.Errorf("install: %w", err)
	}
	if changed {
		res.Changed = append(res.Changed, p.ConfigFile())
	}

	// 5. Identity, once.
	key, created, err := identity.Ensure(p.IdentityKey())
	if err != nil {
		return res, fmt.Errorf("install: %w", err)
	}
	if err := os.Chmod(p.IdentityKey(), 0o600); err != nil {
		return res, fmt.Errorf("install: %w", err)
	}
	res.IdentityCreated = created
	if created {
		res.Changed = append(res.Changed, p.IdentityKey())
	}

	// 6. Unit.
	unitChanged, err := writeIfChanged(p.UnitFile(), []byte(packaging.SystemdUnit), 0o644)
	if err != nil {
		return res, fmt.Errorf("install: %w", err)
	}
	if unitChanged {
		res.Changed = append(res.Changed, p.UnitFile())
		if err := o.Supervisor.Reload(ctx); err != nil {
			return res, fmt.Errorf("install: %w", err)
		}
	}

	// 7. Start (restart if what runs changed).
	restart := len(res.Changed) > 0
	if err := o.Supervisor.EnableStart(ctx, packaging.UnitName, restart); err != nil {
		return res, fmt.Errorf("install: %w", err)
	}
	res.Started = o.Supervisor.Name() != "none"

	// 8. The token now lives only in the 0600 config: remove the contract.
	if o.BootstrapFile != "" {
		if err := os.Remove(o.BootstrapFile); err != nil && !errors.Is(err, os.ErrNotExist) {
			return res, fmt.Errorf("install: delete bootstrap file: %w", err)
		}
	}
	log.Info("installed",
		zap.String("root", p.Root),
		zap.String("server_id", cfg.ServerID),
		zap.String("url", cfg.URL),
		zap.String("identity", identity.Fingerprint(key.Public().(ed25519.PublicKey))),
		zap.Bool("identity_created", created),
		zap.Strings("changed", res.Changed),
		zap.String("supervisor", o.Supervisor.Name()))
	return res, nil
}

// binaryLink is Binary's target, relative so it holds below any root.
const binaryLink = "../../lib/devpilot-agent/current/devpilot-agent"

// linkBinary makes Binary a symlink to current's binary (replacing the
// plain file of an older install); true if it changed.
func linkBinary(p layout.Paths) (bool, error) {
	if t, err := os.Readlink(p.Binary()); err == nil && t == binaryLink {
		return false, nil
	}
	tmp := p.Binary() + ".new"
	_ = os.Remove(tmp)
	if err := os.Symlink(binaryLink, tmp); err != nil {
		return false, err
	}
	if err := os.Rename(tmp, p.Binary()); err != nil {
		_ = os.Remove(tmp)
		return false, err
	}
	return true, nil
}

// UninstallOptions for Uninstall.
type UninstallOptions struct {
	Paths layout.Paths
	// KeepState keeps the state dir (identity key), so a reinstall on the
	// same server can authenticate again without a new enrollment.
	KeepState bool
	// KeepConfig keeps the config dir.
	KeepConfig bool
	Supervisor unitctl.Controller
	Log        *zap.Logger
}

// Uninstall stops and disables the unit and removes what Install wrote.
// Missing pieces are not errors, so it can finish a half-done uninstall.
func Uninstall(ctx context.Context, o UninstallOptions) ([]string, error) {
	if o.Supervisor == nil {
		o.Supervisor = unitctl.None{}
	}
	p := o.Paths
	if err := o.Supervisor.StopDisable(ctx, packaging.UnitName); err != nil {
		return nil, fmt.Errorf("uninstall: %w", err)
	}
	var removed []string
	rm := func(path string, all bool) error {
		if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
			return nil
		}
		var err error
		if all {
			err = os.RemoveAll(path)
		} else {
			err = os.Remove(path)
		}
		if err != nil {
			return fmt.Errorf("uninstall: %w", err)
		}
		removed = append(removed, path)
		return nil
	}
	if err := rm(p.UnitFile(), false); err != nil {
		return removed, err
	}
	if err := o.Supervisor.Reload(ctx); err != nil {
		return removed, fmt.Errorf("uninstall: %w", err)
	}
	if err := rm(p.Binary(), false); err != nil {
		return removed, err
	}
	if err := rm(p.LibDir(), true); err != nil {
		return removed, err
	}
	if !o.KeepConfig {
		if err := rm(p.ConfigDir(), true); err != nil {
			return removed, err
		}
	}
	if !o.KeepState {
		if err := rm(p.StateDir(), true); err != nil {
			return removed, err
		}
	}
	return removed, nil
}

// ensureDir creates dir (and parents) and sets its mode.
func ensureDir(dir string, mode os.FileMode) error {
	if err := os.MkdirAll(dir, mode); err != nil {
		return err
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if fi.Mode().Perm() != mode {
		return os.Chmod(dir, mode)
	}
	return nil
}

// writeIfChanged writes data atomically unless the file already holds it
// with the right mode; it reports whether it wrote.
func writeIfChanged(path string, data []byte, mode os.FileMode) (bool, error) {
	if f, err := os.Open(path); err == nil {
		same, mode0 := sameContent(f, data)
		_ = f.Close()
		if same && mode0 == mode {
			return false, nil
		}
		if same {
			return true, os.Chmod(path, mode)
		}
	}
	if err := atomicfile.WriteFile(path, data, mode); err != nil {
		return true, fmt.Errorf("write %s: %w", path, err)
	}
	return true, nil
}

func sameContent(f *os.File, data []byte) (bool, os.FileMode) {
	fi, err := f.Stat()
	if err != nil || fi.Size() != int64(len(data)) {
		return false, 0
	}
	got, err := io.ReadAll(f)
	if err != nil {
		return false, 0
	}
	return bytes.Equal(got, data), fi.Mode().Perm()
}
