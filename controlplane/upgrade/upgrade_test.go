package upgrade_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/devpilot/devpilot/bootstrap/sandbox"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
)

// BaseCommit is the earlier release the upgrade starts from: 7a7fc05, the
// last commit before the session that added migrations 00010 to 00013
// (the API's, the lifecycle's and ops'). Move it forward deliberately, to
// the commit of the oldest release an operator may still upgrade from
// (see the README's "Upgrades"); the test must keep passing from it.
const BaseCommit = "7a7fc05"

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("upgrade: skipped under -short (builds an earlier commit and runs two control planes)")
		os.Exit(0)
	}
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

type binaries struct{ oldDir, newDir string }

var (
	buildOnce sync.Once
	built     binaries
	buildErr  error
)

func run(dir string, env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return out, nil
}

// build makes devpilot and devpilot-agent of BaseCommit (its tree taken
// with git archive into a temporary directory: no worktree is registered
// in the repository, nothing is left behind if the test is killed) and of
// the current tree.
func build(t *testing.T) binaries {
	t.Helper()
	buildOnce.Do(func() {
		root, err := run(".", nil, "git", "rev-parse", "--show-toplevel")
		if err != nil {
			buildErr = fmt.Errorf("the upgrade test needs this repository's git history: %w", err)
			return
		}
		repo := strings.TrimSpace(string(root))
		if _, err := run(repo, nil, "git", "rev-parse", "--verify", "--quiet", BaseCommit+"^{commit}"); err != nil {
			buildErr = fmt.Errorf("commit %s (upgrade_test.go's BaseCommit) is not in this clone: fetch the whole history "+
				"(git fetch --unshallow, or actions/checkout with fetch-depth: 0): %w", BaseCommit, err)
			return
		}
		tmp, err := os.MkdirTemp("", "devpilot-upgrade-")
		if err != nil {
			buildErr = err
			return
		}
		src := filepath.Join(tmp, "src")
		built = binaries{oldDir: filepath.Join(tmp, "old"), newDir: filepath.Join(tmp, "new")}
		for _, d := range []string{src, built.oldDir, built.newDir} {
			if buildErr = os.MkdirAll(d, 0o755); buildErr != nil {
				return
			}
		}
		if _, buildErr = run(repo, nil, "sh", "-c", `git archive --format=tar "$0" | tar -x -C "$1"`, BaseCommit, src); buildErr != nil {
			return
		}
		for _, b := range []struct{ dir, out string }{{src, built.oldDir}, {repo, built.newDir}} {
			for _, name := range []string{"devpilot", "devpilot-agent"} {
				if _, buildErr = run(b.dir, []string{"CGO_ENABLED=0", "GOFLAGS=-buildvcs=false"}, "go", "build", "-o",
					filepath.Join(b.out, name), "./cmd/"+name); buildErr != nil {
					return
				}
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

// proc is `devpilot serve` of one build, as a process.
type proc struct {
	t       *testing.T
	bin     string
	args    []string
	env     []string
	dataDir string
	url     string
	log     *os.File
	cmd     *exec.Cmd
	client  *http.Client
	token   string
}

func (p *proc) start() {
	p.t.Helper()
	p.cmd = exec.Command(p.bin, p.args...)
	p.cmd.Env = append(os.Environ(), p.env...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	deadline := time.Now().Add(120 * time.Second)
	for {
		if p.client == nil {
			if ca, err := os.ReadFile(filepath.Join(p.dataDir, "tls", "ca.crt")); err == nil {
				pool := x509.NewCertPool()
				pool.AppendCertsFromPEM(ca)
				p.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
			}
		}
		if p.client != nil {
			if resp, err := p.client.Get(p.url + "/readyz"); err == nil {
				_ = resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s serve did not become ready; see %s", p.bin, p.log.Name())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if p.token == "" {
		b, err := os.ReadFile(filepath.Join(p.dataDir, "owner.token"))
		if err != nil {
			p.t.Fatal(err)
		}
		p.token = strings.TrimSpace(string(b))
	}
}

// stop ends it as systemd does: SIGTERM, then wait.
func (p *proc) stop() {
	if p.cmd == nil || p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
		p.t.Errorf("%s did not stop on SIGTERM within 60s", p.bin)
	}
	if p.client != nil {
		p.client.CloseIdleConnections()
	}
}

func (p *proc) do(method, path string, body, out any) int {
	p.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, p.url+path, rd)
	req.Header.Set("Authorization", "Bearer "+p.token)
	resp, err := p.client.Do(req)
	if err != nil {
		p.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	if out != nil {
		_ = json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

const (
	ws = "/v1/workspaces/default"
)

type server struct {
	ID    string `json:"id"`
	State string `json:"state"`
	Agent struct {
		Connected bool   `json:"connected"`
		Version   string `json:"version"`
	} `json:"agent"`
}

type task struct {
	ID    string `json:"id"`
	State string `json:"state"`
}

func waitFor[T any](t *testing.T, p *proc, path string, limit time.Duration, what string, cond func(T) bool) T {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		var v T
		p.do("GET", path, nil, &v)
		if cond(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not %s after %v: %+v (log %s)", path, what, limit, v, p.log.Name())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func logText(p *proc, id string) string {
	var l struct {
		Chunks []struct{ Stream, Text string } `json:"chunks"`
	}
	p.do("GET", ws+"/tasks/"+id+"/logs", nil, &l)
	var b strings.Builder
	for _, c := range l.Chunks {
		if c.Stream != "system" {
			b.WriteString(c.Text)
		}
	}
	return b.String()
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().String()
}

// TestUpgradeFromBaseCommit: BaseCommit's control plane provisions a
// server (its agent is BaseCommit's too) and runs a task, and is stopped;
// the current binary starts on the same data dir and database: pending
// migrations run (migrate status: none left), the integration, server and
// task are all there, the integration still passes its test (its sealed
// token opens), the old agent reconnects and runs a new task.
func TestUpgradeFromBaseCommit(t *testing.T) {
	b := build(t)
	t.Run("sqlite", func(t *testing.T) { upgrade(t, b, "") })
	t.Run("postgres", func(t *testing.T) { upgrade(t, b, storetest.PostgresURL(t)) })
}

func upgrade(t *testing.T, b binaries, database string) {
	machines := sandbox.New(sandbox.Options{Dir: filepath.Join(t.TempDir(), "machines"), Logger: zap.NewNop()})
	t.Cleanup(func() { _ = machines.Close() })
	do := dosim.New(dosim.Options{Runtime: machines, BootDelay: 10 * time.Millisecond})
	t.Cleanup(do.Close)
	sim := httptest.NewServer(do.Handler())
	t.Cleanup(sim.Close)
	doToken := "dop_v1_" + strings.Repeat("5", 64)
	do.AddToken(doToken, true)

	dataDir := t.TempDir()
	addr := freeAddr(t)
	var env []string
	if database != "" {
		env = []string{"DEVPILOT_DATABASE=" + database}
	}
	serve := func(dir, name string) *proc {
		logf, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = logf.Close() })
		p := &proc{t: t, bin: filepath.Join(dir, "devpilot"), dataDir: dataDir, url: "https://" + addr, log: logf, env: env,
			args: []string{"serve", "--data-dir", dataDir, "--listen", addr, "--digitalocean-api-url", sim.URL,
				"--agent-dir", dir, "--log-level", "debug"}}
		p.start()
		t.Cleanup(p.stop)
		return p
	}

	old := serve(b.oldDir, "old")
	var in struct{ ID, Status string }
	if c := old.do("POST", ws+"/integrations", map[string]string{"provider": "digitalocean", "access_key": "do", "secret_key": doToken}, &in); c != 201 {
		t.Fatalf("connect on %s: %d", BaseCommit, c)
	}
	var s server
	if c := old.do("POST", ws+"/servers", map[string]any{"integration_id": in.ID, "name": "old-web", "region": "nyc3",
		"size": "s-1vcpu-1gb", "image": "debian-12"}, &s); c != 202 {
		t.Fatalf("create server on %s: %d", BaseCommit, c)
	}
	s = waitFor(t, old, ws+"/servers/"+s.ID, 120*time.Second, "online", func(s server) bool { return s.State == "online" && s.Agent.Connected })
	oldAgent := s.Agent.Version
	var tk task
	if c := old.do("POST", ws+"/servers/"+s.ID+"/tasks", map[string]any{"kind": "exec", "argv": []string{"echo", "from-the-old-release"}}, &tk); c != 202 {
		t.Fatalf("task on %s: %d", BaseCommit, c)
	}
	tk = waitFor(t, old, ws+"/tasks/"+tk.ID, 60*time.Second, "succeeded", func(v task) bool { return v.State == "succeeded" })
	old.stop()

	// What the new binary sees before it migrates anything.
	status := func() (current int64, pending int) {
		t.Helper()
		out, err := run(".", env, filepath.Join(b.newDir, "devpilot"), "migrate", "status", "--data-dir", dataDir, "--json")
		if err != nil {
			t.Fatal(err)
		}
		var st struct {
			SchemaVersion int64 `json:"schema_version"`
			Pending       int   `json:"pending"`
		}
		if err := json.Unmarshal(out, &st); err != nil {
			t.Fatalf("migrate status: %q: %v", out, err)
		}
		return st.SchemaVersion, st.Pending
	}
	before, pendingBefore := status()
	t.Logf("%s left schema version %d; %d migrations pending for the current binary", BaseCommit, before, pendingBefore)

	cur := serve(b.newDir, "new")
	latest, err := store.LatestSchema(map[bool]store.Dialect{true: store.Postgres, false: store.SQLite}[database != ""])
	if err != nil {
		t.Fatal(err)
	}
	if v, pending := status(); v != latest || pending != 0 {
		t.Fatalf("after the upgrade: schema %d with %d pending, want %d with none", v, pending, latest)
	}

	var lists struct {
		Integrations []struct{ ID string } `json:"integrations"`
		Servers      []struct{ ID string } `json:"servers"`
		Tasks        []struct{ ID string } `json:"tasks"`
	}
	for _, path := range []string{"/integrations", "/servers", "/tasks"} {
		if c := cur.do("GET", ws+path, nil, &lists); c != 200 {
			t.Fatalf("GET %s after the upgrade: %d", path, c)
		}
	}
	if len(lists.Integrations) != 1 || lists.Integrations[0].ID != in.ID || len(lists.Servers) != 1 || lists.Servers[0].ID != s.ID ||
		!slices.ContainsFunc(lists.Tasks, func(x struct{ ID string }) bool { return x.ID == tk.ID }) {
		t.Fatalf("after the upgrade: %+v", lists)
	}
	if c := cur.do("POST", ws+"/integrations/"+in.ID+"/test", nil, &in); c != 200 || in.Status != "valid" {
		t.Fatalf("integration test after the upgrade: %d %+v", c, in)
	}
	if got := waitFor(t, cur, ws+"/tasks/"+tk.ID, 10*time.Second, "succeeded", func(v task) bool { return v.State == "succeeded" }); logText(cur, got.ID) != "from-the-old-release\n" {
		t.Fatalf("the old task's output after the upgrade: %q", logText(cur, got.ID))
	}
	s = waitFor(t, cur, ws+"/servers/"+s.ID, 120*time.Second, "online with the old agent reconnected",
		func(s server) bool { return s.State == "online" && s.Agent.Connected })
	if s.Agent.Version != oldAgent {
		t.Errorf("agent version %q, want the old agent's %q", s.Agent.Version, oldAgent)
	}
	var nt task
	if c := cur.do("POST", ws+"/servers/"+s.ID+"/tasks", map[string]any{"kind": "exec", "argv": []string{"echo", "on-the-new-release"}}, &nt); c != 202 {
		t.Fatalf("task after the upgrade: %d", c)
	}
	waitFor(t, cur, ws+"/tasks/"+nt.ID, 60*time.Second, "succeeded", func(v task) bool { return v.State == "succeeded" })
	if got := logText(cur, nt.ID); got != "on-the-new-release\n" {
		t.Fatalf("new task output on the old agent: %q", got)
	}
}
