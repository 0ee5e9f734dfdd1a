package install_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/devpilot/devpilot/agent/agenttest"
	"github.com/devpilot/devpilot/agent/config"
	"github.com/devpilot/devpilot/agent/install"
	"github.com/devpilot/devpilot/agent/layout"
	"github.com/devpilot/devpilot/agent/unitctl"
	"github.com/devpilot/devpilot/agent/update"
	"github.com/devpilot/devpilot/packaging"
	"github.com/devpilot/devpilot/shared/protocol"
	"github.com/devpilot/devpilot/shared/version"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fixture writes a fake executable and a bootstrap file.
func fixture(t *testing.T, b protocol.Bootstrap, mode os.FileMode) (root, exe, bootstrap string) {
	t.Helper()
	dir := t.TempDir()
	root = filepath.Join(dir, "root")
	exe = filepath.Join(dir, "devpilot-agent-download")
	if err := os.WriteFile(exe, []byte("#!fake agent binary\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	bootstrap = filepath.Join(dir, "bootstrap.json")
	raw, _ := json.Marshal(b)
	if err := os.WriteFile(bootstrap, raw, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(bootstrap, mode); err != nil { // umask
		t.Fatal(err)
	}
	return root, exe, bootstrap
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return fi.Mode().Perm()
}

func TestInstallLayoutIdempotentUninstall(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	boot := hub.Bootstrap("srv-1")
	root, exe, bootFile := fixture(t, boot, 0o600)
	p := layout.New(root)
	ctx := context.Background()

	res, err := install.Install(ctx, install.Options{Paths: p, BootstrapFile: bootFile, Executable: exe, Supervisor: unitctl.None{}})
	if err != nil {
		t.Fatal(err)
	}
	if !res.IdentityCreated {
		t.Error("first install did not create an identity")
	}
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{
		{p.Binary(), 0o755},
		{p.ConfigFile(), 0o600},
		{p.ConfigDir(), 0o700},
		{p.IdentityKey(), 0o600},
		{p.StateDir(), 0o700},
		{p.UnitFile(), 0o644},
	} {
		if got := mode(t, f.path); got != f.mode {
			t.Errorf("%s: mode %04o, want %04o", f.path, got, f.mode)
		}
	}
	if _, err := os.Stat(bootFile); !os.IsNotExist(err) {
		t.Errorf("bootstrap file still there after install (err=%v)", err)
	}
	if b, _ := os.ReadFile(p.Binary()); string(b) != "#!fake agent binary\n" {
		t.Errorf("binary not copied: %q", b)
	}
	// Versions layout: the binary under versions/<v>, current at it, the
	// command on the PATH and the unit going through current, the guard.
	if got := update.CurrentVersion(p); got != version.Get().Version {
		t.Errorf("current -> %q, want %q", got, version.Get().Version)
	}
	if got := mode(t, p.VersionBinary(version.Get().Version)); got != 0o755 {
		t.Errorf("versioned binary mode %04o", got)
	}
	if fi, err := os.Lstat(p.Binary()); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("%s is not a symlink (%v)", p.Binary(), err)
	}
	if b, _ := os.ReadFile(p.UpdateGuard()); string(b) != packaging.UpdateGuard || mode(t, p.UpdateGuard()) != 0o755 {
		t.Error("update guard not installed 0755")
	}
	if !strings.Contains(packaging.SystemdUnit, "\nExecStart=/usr/lib/devpilot-agent/current/devpilot-agent run\n") ||
		!strings.Contains(packaging.SystemdUnit, "\nExecStartPre=/bin/sh /usr/lib/devpilot-agent/update-guard.sh start\n") {
		t.Error("the unit does not start current behind the guard")
	}
	if b, _ := os.ReadFile(p.UnitFile()); string(b) != packaging.SystemdUnit {
		t.Error("unit file differs from packaging/devpilot-agent.service")
	}
	cfg, err := config.Load(p.ConfigFile())
	if err != nil {
		t.Fatal(err)
	}
	want := config.FromBootstrap(boot)
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("config = %+v, want %+v", cfg, want)
	}
	key1, _ := os.ReadFile(p.IdentityKey())
	cfg1, _ := os.ReadFile(p.ConfigFile())

	// Second run with the same bootstrap (cloud-init re-running runcmd):
	// nothing changes, the identity is kept.
	root2, _, bootFile2 := fixture(t, boot, 0o600)
	_ = root2
	res, err = install.Install(ctx, install.Options{Paths: p, BootstrapFile: bootFile2, Executable: exe, Supervisor: unitctl.None{}})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Changed) != 0 || res.IdentityCreated {
		t.Errorf("second install changed %v (identity created %v), want nothing", res.Changed, res.IdentityCreated)
	}
	if key2, _ := os.ReadFile(p.IdentityKey()); !bytes.Equal(key1, key2) {
		t.Error("identity key replaced by second install")
	}
	if cfg2, _ := os.ReadFile(p.ConfigFile()); !bytes.Equal(cfg1, cfg2) {
		t.Error("config changed by second install")
	}

	// Once enrolled (token dropped), reinstalling the same server does not
	// put the spent token back.
	cfg.BootstrapToken = ""
	if err := config.Save(p.ConfigFile(), cfg); err != nil {
		t.Fatal(err)
	}
	_, _, bootFile3 := fixture(t, boot, 0o600)
	if _, err := install.Install(ctx, install.Options{Paths: p, BootstrapFile: bootFile3, Executable: exe}); err != nil {
		t.Fatal(err)
	}
	if got, _ := config.Load(p.ConfigFile()); got.BootstrapToken != "" {
		t.Error("reinstall of an enrolled agent wrote the spent token back")
	}

	// Status reports it.
	var out strings.Builder
	if !install.Status(ctx, &out, p, unitctl.None{}) {
		t.Errorf("status says not installed:\n%s", out.String())
	}
	if strings.Contains(out.String(), boot.BootstrapToken) {
		t.Error("status printed the bootstrap token")
	}

	removed, err := install.Uninstall(ctx, install.UninstallOptions{Paths: p, Supervisor: unitctl.None{}})
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 5 {
		t.Errorf("removed %v, want unit, binary, versions, config dir, state dir", removed)
	}
	for _, f := range []string{p.Binary(), p.LibDir(), p.ConfigDir(), p.StateDir(), p.UnitFile()} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s still exists after uninstall", f)
		}
	}
	out.Reset()
	if install.Status(ctx, &out, p, nil) {
		t.Error("status says installed after uninstall")
	}
}

func TestUninstallKeepState(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	root, exe, bootFile := fixture(t, hub.Bootstrap("srv-k"), 0o600)
	p := layout.New(root)
	ctx := context.Background()
	if _, err := install.Install(ctx, install.Options{Paths: p, BootstrapFile: bootFile, Executable: exe}); err != nil {
		t.Fatal(err)
	}
	key, _ := os.ReadFile(p.IdentityKey())
	if _, err := install.Uninstall(ctx, install.UninstallOptions{Paths: p, KeepState: true}); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(p.IdentityKey()); !bytes.Equal(got, key) {
		t.Error("--keep-state lost the identity key")
	}
	if _, err := os.Stat(p.ConfigFile()); !os.IsNotExist(err) {
		t.Error("config kept without --keep-config")
	}
}

func TestInstallRefuses(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	other := agenttest.New(t)
	good := hub.Bootstrap("srv-2")
	badPin := good
	badPin.CAPin = other.CAPin
	notAPin := good
	notAPin.CAPin = "md5/abc"
	plainHTTP := good
	plainHTTP.URL = "http://cp.example.com"
	noToken := good
	noToken.BootstrapToken = ""

	for _, tc := range []struct {
		name string
		b    protocol.Bootstrap
		mode os.FileMode
		want string
	}{
		{"world readable", good, 0o644, "chmod 600"},
		{"group readable", good, 0o640, "chmod 600"},
		{"pin of another CA", badPin, 0o600, "does not match ca_pin"},
		{"malformed pin", notAPin, 0o600, "sha256/"},
		{"plain http", plainHTTP, 0o600, "want https"},
		{"no token", noToken, 0o600, "bootstrap_token is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			root, exe, bootFile := fixture(t, tc.b, tc.mode)
			p := layout.New(root)
			_, err := install.Install(context.Background(), install.Options{Paths: p, BootstrapFile: bootFile, Executable: exe})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tc.want)
			}
			if strings.Contains(err.Error(), good.BootstrapToken) {
				t.Error("error leaks the bootstrap token")
			}
			if _, err := os.Stat(bootFile); err != nil {
				t.Error("refused install deleted the bootstrap file")
			}
			if _, err := os.Stat(p.ConfigFile()); !os.IsNotExist(err) {
				t.Error("refused install wrote a config")
			}
		})
	}
}

func TestSystemdSupervisorNeedsHostRoot(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	root, exe, bootFile := fixture(t, hub.Bootstrap("srv-3"), 0o600)
	_, err := install.Install(context.Background(), install.Options{Paths: layout.New(root), BootstrapFile: bootFile, Executable: exe, Supervisor: &unitctl.Systemd{}})
	if err == nil || !strings.Contains(err.Error(), "--supervisor none") {
		t.Fatalf("err = %v, want a hint to use --supervisor none", err)
	}
}

// enroll after a rekey: a new identity key replaces the old one, the token
// goes into the config (and the token file away), and without a token or
// an install it refuses with what to do.
func TestEnrollReplacesIdentity(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	boot := hub.Bootstrap("srv-1")
	root, exe, bootFile := fixture(t, boot, 0o600)
	p := layout.New(root)
	ctx := context.Background()
	if _, err := install.Install(ctx, install.Options{Paths: p, BootstrapFile: bootFile, Executable: exe, Supervisor: unitctl.None{}}); err != nil {
		t.Fatal(err)
	}
	oldKey, _ := os.ReadFile(p.IdentityKey())
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte("dpt_new_token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	fp, err := install.Enroll(ctx, install.EnrollOptions{Paths: p, TokenFile: tokFile, Supervisor: unitctl.None{}})
	if err != nil {
		t.Fatal(err)
	}
	newKey, _ := os.ReadFile(p.IdentityKey())
	if bytes.Equal(oldKey, newKey) || !strings.HasPrefix(fp, "SHA256:") || mode(t, p.IdentityKey()) != 0o600 {
		t.Errorf("identity not replaced (fingerprint %q, mode %04o)", fp, mode(t, p.IdentityKey()))
	}
	cfg, err := config.Load(p.ConfigFile())
	if err != nil || cfg.BootstrapToken != "dpt_new_token" || cfg.ServerID != "srv-1" || mode(t, p.ConfigFile()) != 0o600 {
		t.Errorf("config after enroll: %+v %v", cfg, err)
	}
	if _, err := os.Stat(tokFile); !os.IsNotExist(err) {
		t.Errorf("token file still there (err=%v)", err)
	}

	if _, err := install.Enroll(ctx, install.EnrollOptions{Paths: p, TokenFile: "-", Stdin: strings.NewReader("\n")}); err == nil {
		t.Error("enroll with an empty token succeeded")
	}
	empty := layout.New(t.TempDir())
	_, err = install.Enroll(ctx, install.EnrollOptions{Paths: empty, TokenFile: "-", Stdin: strings.NewReader("dpt_x\n")})
	if err == nil || !strings.Contains(err.Error(), "install the agent first") {
		t.Errorf("enroll without an install: %v", err)
	}
}

// An install from before versions (a plain binary in /usr/local/bin) is
// migrated: the binary moves under versions/, the old path becomes a link.
func TestInstallMigratesPlainBinary(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	root, exe, bootFile := fixture(t, hub.Bootstrap("srv-m"), 0o600)
	p := layout.New(root)
	if err := os.MkdirAll(filepath.Dir(p.Binary()), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.Binary(), []byte("old plain agent"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := install.Install(context.Background(), install.Options{Paths: p, BootstrapFile: bootFile, Executable: exe,
		Supervisor: unitctl.None{}, Version: "1.0.0"}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p.Binary()); string(b) != "#!fake agent binary\n" {
		t.Errorf("after migration %s reads %q", p.Binary(), b)
	}
	if update.CurrentVersion(p) != "1.0.0" {
		t.Errorf("current = %q", update.CurrentVersion(p))
	}
	// Again: nothing changes.
	res, err := install.Install(context.Background(), install.Options{Paths: p, Executable: exe, Supervisor: unitctl.None{}, Version: "1.0.0"})
	if err != nil || len(res.Changed) != 0 {
		t.Errorf("second install changed %v (%v)", res.Changed, err)
	}
}
