package cloudinit

import (
	"context"
	"encoding/json"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/shared/protocol"
	"github.com/devpilot/devpilot/shared/tlspin"
)

// hostArch is the script's name for the machine the tests run on.
func hostArch(t *testing.T) string {
	t.Helper()
	switch runtime.GOARCH {
	case "amd64", "arm64":
		return runtime.GOARCH
	}
	t.Skipf("no devpilot-agent build for %s", runtime.GOARCH)
	return ""
}

// env is one run of the rendered user-data against a control plane.
type env struct {
	t        *testing.T
	ca       *testCA
	srv      string // control plane URL
	sums     map[string]string
	root     string // DEVPILOT_AGENT_ROOT_DIR
	cwd      string // the script's working directory
	path     string // PATH
	extraEnv []string
}

// newEnv serves the fake agent as every architecture's build over TLS from
// a fresh CA, behind an optional middleware.
func newEnv(t *testing.T, wrap func(http.Handler) http.Handler) *env {
	t.Helper()
	dir := t.TempDir()
	for _, arch := range []string{ArchAMD64, ArchARM64} {
		if err := os.WriteFile(filepath.Join(dir, AgentFileName("linux", arch)), []byte(fakeAgent), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	h, sums, err := AgentHandler(dir)
	if err != nil {
		t.Fatal(err)
	}
	if wrap != nil {
		h = wrap(h)
	}
	ca := newCA(t)
	srv := ca.serve(t, h)
	return &env{
		t: t, ca: ca, srv: srv.URL, sums: sums,
		root: t.TempDir(), cwd: t.TempDir(), path: toolsDir(t, nil, nil),
		extraEnv: []string{"DEVPILOT_BOOTSTRAP_RETRIES=0"},
	}
}

func (e *env) params() Params {
	return Params{
		ControlPlaneURL: e.srv,
		CACertPEM:       e.ca.certPEM,
		AgentSHA256:     e.sums,
		ServerID:        "srv_123",
		BootstrapToken:  secrets.New("dpb_token_0123456789"),
		Hostname:        "web-1",
	}
}

// run renders p, runs the script with sh and returns its combined output.
func (e *env) run(p Params) (string, error) {
	e.t.Helper()
	script, err := Render(p)
	if err != nil {
		e.t.Fatal(err)
	}
	path := filepath.Join(e.t.TempDir(), "user-data")
	if err := os.WriteFile(path, script, 0o600); err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(e.path, "sh"), path)
	cmd.Dir = e.cwd
	cmd.Env = append([]string{"PATH=" + e.path, "HOME=" + e.cwd, "DEVPILOT_AGENT_ROOT_DIR=" + e.root}, e.extraEnv...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (e *env) read(rel string) string {
	e.t.Helper()
	b, err := os.ReadFile(filepath.Join(e.root, rel))
	if err != nil {
		e.t.Fatal(err)
	}
	return string(b)
}

func (e *env) exists(rel string) bool {
	_, err := os.Lstat(filepath.Join(e.root, rel))
	return err == nil
}

// files lists every path under dir, relative.
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if rel, _ := filepath.Rel(dir, p); rel != "." {
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

func TestRunInstalls(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	arch := hostArch(t)
	p := e.params()
	out, err := e.run(p)
	if err != nil {
		t.Fatalf("script failed: %v\n%s", err, out)
	}

	bootstrapFile := filepath.Join(e.root, "etc/devpilot-agent/bootstrap.json")
	if got, want := strings.Split(strings.TrimSpace(e.read("fake-agent/argv")), "\n"), []string{"install", "--bootstrap-file", bootstrapFile}; !slices.Equal(got, want) {
		t.Errorf("agent argv = %q, want %q", got, want)
	}
	if got := strings.TrimSpace(e.read("fake-agent/bootstrap.mode")); got != "600" {
		t.Errorf("bootstrap file mode = %s, want 600", got)
	}
	var b protocol.Bootstrap
	if err := json.Unmarshal([]byte(e.read("fake-agent/bootstrap.json")), &b); err != nil {
		t.Fatal(err)
	}
	want := protocol.Bootstrap{URL: e.srv, CAPin: tlspin.PinOf(e.ca.cert), CACertPEM: e.ca.certPEM, ServerID: "srv_123", BootstrapToken: "dpb_token_0123456789"}
	if !reflect.DeepEqual(b, want) {
		t.Errorf("bootstrap file = %+v\nwant %+v", b, want)
	}
	if e.exists("etc/devpilot-agent/bootstrap.json") {
		t.Error("bootstrap file (with the token) left behind after install")
	}
	if got := e.read("etc/devpilot-agent/bootstrap-ca.crt"); got != e.ca.certPEM {
		t.Errorf("CA file = %q, want the CA", got)
	}
	agent := filepath.Join(e.root, "usr/local/bin/devpilot-agent")
	fi, err := os.Stat(agent)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o755 {
		t.Errorf("agent mode = %v, want 0755", fi.Mode().Perm())
	}
	if got := e.read("usr/local/bin/devpilot-agent"); got != fakeAgent {
		t.Error("installed agent differs from the served build")
	}
	if e.exists("usr/local/bin/.devpilot-agent.download") {
		t.Error("download temp file left behind")
	}
	if fi, err := os.Stat(filepath.Join(e.root, "etc/devpilot-agent")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("etc/devpilot-agent mode = %v (%v), want 0700", fi.Mode().Perm(), err)
	}

	phases := ParsePhases([]byte(out))
	var last time.Time
	for _, ph := range []string{PhaseStart, PhaseDownloaded, PhaseVerified, PhaseInstalled} {
		at, ok := phases[ph]
		if !ok {
			t.Fatalf("no %q phase line in output:\n%s", ph, out)
		}
		if at.Before(last) {
			t.Errorf("phase %s at %v before the previous one (%v)", ph, at, last)
		}
		last = at
	}
	if _, failed := phases[PhaseFailed]; failed {
		t.Errorf("failed phase reported on success:\n%s", out)
	}
	if !strings.Contains(out, "verified sha256="+e.sums[arch]) {
		t.Errorf("output does not name the verified sha256:\n%s", out)
	}
	if strings.Contains(out, "dpb_token") {
		t.Errorf("output shows the bootstrap token:\n%s", out)
	}
}

func TestRunHostileValuesAreInert(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	hostArch(t)
	canary := filepath.Join(e.root, "canary")
	if err := os.Mkdir(canary, 0o700); err != nil {
		t.Fatal(err)
	}
	inject := func(s string) string {
		return strings.ReplaceAll(s, "PWN", e.root+"/pwned")
	}
	p := e.params()
	p.ServerID = inject(`srv'; touch PWN1; rm -rf "$DEVPILOT_AGENT_ROOT_DIR/canary"; echo '`)
	p.BootstrapToken = secrets.New(inject("tok$(touch PWN2)`touch PWN3`\"\\'${IFS}'\"'; rm -rf \"$DEVPILOT_AGENT_ROOT_DIR\" #"))
	p.Hostname = inject(`web'"$(touch PWN4)"'; rm -rf / #`)
	out, err := e.run(p)
	if err != nil {
		t.Fatalf("script failed: %v\n%s", err, out)
	}
	if _, err := os.Stat(canary); err != nil {
		t.Errorf("canary removed by an injected command: %v", err)
	}
	for _, f := range files(t, e.root) {
		if strings.Contains(f, "pwned") {
			t.Errorf("injected command ran: %s exists", f)
		}
	}
	if got := files(t, e.cwd); len(got) != 0 {
		t.Errorf("files appeared in the script's working directory: %v", got)
	}
	var b protocol.Bootstrap
	if err := json.Unmarshal([]byte(e.read("fake-agent/bootstrap.json")), &b); err != nil {
		t.Fatal(err)
	}
	if b.ServerID != p.ServerID || b.BootstrapToken != p.BootstrapToken.Reveal() {
		t.Errorf("values did not round-trip:\nserver_id %q\nwant      %q\ntoken %q\nwant  %q", b.ServerID, p.ServerID, b.BootstrapToken, p.BootstrapToken.Reveal())
	}
	if !strings.Contains(out, "start server_id="+p.ServerID+" hostname="+p.Hostname+"\n") {
		t.Errorf("start line does not show the values verbatim:\n%s", out)
	}
}

func TestRunRefuses(t *testing.T) {
	t.Parallel()
	arch := hostArch(t)
	other := map[string]string{ArchAMD64: ArchARM64, ArchARM64: ArchAMD64}[arch]
	tests := []struct {
		name    string
		setup   func(*env, *Params)
		wantOut string
	}{
		{
			name: "wrong sha256",
			setup: func(e *env, p *Params) {
				p.AgentSHA256 = map[string]string{arch: shaA}
			},
			wantOut: "checksum mismatch: expected sha256 " + shaA + ", got ",
		},
		{
			name: "server presents another CA",
			setup: func(e *env, p *Params) {
				p.CACertPEM = newCA(e.t).certPEM
				p.CAPin = ""
			},
			wantOut: "download of devpilot-agent from " + "https://127.0.0.1",
		},
		{
			name: "no build for this architecture",
			setup: func(e *env, p *Params) {
				p.AgentSHA256 = map[string]string{other: e.sums[other]}
			},
			wantOut: "no devpilot-agent build for " + arch,
		},
		{
			name: "unsupported architecture",
			setup: func(e *env, p *Params) {
				e.path = toolsDir(e.t, nil, map[string]string{"uname": "#!/bin/sh\necho riscv64\n"})
			},
			wantOut: "unsupported machine architecture 'riscv64'",
		},
		{
			name: "no curl",
			setup: func(e *env, p *Params) {
				e.path = toolsDir(e.t, []string{"curl"}, nil)
			},
			wantOut: "curl not found",
		},
		{
			name: "plain http to an https server",
			setup: func(e *env, p *Params) {
				p.ControlPlaneURL = strings.Replace(e.srv, "https://", "http://", 1)
			},
			wantOut: "download of devpilot-agent",
		},
		{
			name: "install fails",
			setup: func(e *env, p *Params) {
				e.extraEnv = append(e.extraEnv, "FAKE_AGENT_EXIT=3")
			},
			wantOut: "devpilot-agent install failed (exit 3)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, nil)
			p := e.params()
			tt.setup(e, &p)
			out, err := e.run(p)
			if err == nil {
				t.Fatalf("script succeeded:\n%s", out)
			}
			if !strings.Contains(out, tt.wantOut) {
				t.Errorf("output does not say %q:\n%s", tt.wantOut, out)
			}
			phases := ParsePhases([]byte(out))
			if _, ok := phases[PhaseFailed]; !ok {
				t.Errorf("no failed phase line:\n%s", out)
			}
			if _, ok := phases[PhaseInstalled]; ok {
				t.Errorf("installed phase reported on failure:\n%s", out)
			}
			ran := e.exists("fake-agent/argv")
			if wantRan := tt.name == "install fails"; ran != wantRan {
				t.Errorf("agent ran = %v, want %v", ran, wantRan)
			}
			if tt.name != "install fails" && e.exists("usr/local/bin/devpilot-agent") {
				t.Error("an unverified agent was installed")
			}
			for _, leftover := range []string{"etc/devpilot-agent/bootstrap.json", "usr/local/bin/.devpilot-agent.download"} {
				if e.exists(leftover) {
					t.Errorf("%s left behind", leftover)
				}
			}
		})
	}
}

// TestRunRetries checks that transient control plane errors are retried.
func TestRunRetries(t *testing.T) {
	t.Parallel()
	hostArch(t)
	var calls atomic.Int32
	e := newEnv(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if calls.Add(1) == 1 {
				http.Error(w, "starting", http.StatusServiceUnavailable)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	e.extraEnv = []string{"DEVPILOT_BOOTSTRAP_RETRIES=3", "DEVPILOT_BOOTSTRAP_RETRY_DELAY=1"}
	out, err := e.run(e.params())
	if err != nil {
		t.Fatalf("script failed: %v\n%s", err, out)
	}
	if calls.Load() != 2 {
		t.Errorf("control plane saw %d requests, want 2", calls.Load())
	}
	if !e.exists("fake-agent/argv") {
		t.Error("agent not run after a retried download")
	}
}
