package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/controlplane/devenv"
)

// built is a devpilot-agent built for this run, for the servers the tests
// create. It is built on first use, not in TestMain: each fuzz worker runs
// TestMain too, and a build there would stall every FuzzParsePlan run.
var built struct {
	once sync.Once
	dir  string
	err  error
}

func agentDir(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		dir, err := os.MkdirTemp("", "devpilot-cli-agent-")
		if err != nil {
			built.err = err
			return
		}
		built.dir = dir
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "devpilot-agent"), "github.com/devpilot/devpilot/cmd/devpilot-agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			built.err = fmt.Errorf("build devpilot-agent: %w\n%s", err, out)
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.dir
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.Cleanup(func(code int) {
			if built.dir != "" {
				_ = os.RemoveAll(built.dir)
			}
			os.Exit(code)
		}),
	)
}

type run struct {
	code           int
	stdout, stderr string
}

// cli runs the CLI in-process with env vars and stdin, as a user's shell would.
func cli(t *testing.T, vars map[string]string, stdin string, args ...string) run {
	t.Helper()
	var out, errb bytes.Buffer
	env := Env{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errb,
		Getenv: func(k string) string { return vars[k] }}
	code := Main(context.Background(), args, env)
	return run{code, out.String(), errb.String()}
}

func startDev(t *testing.T) (*devenv.Env, map[string]string) {
	t.Helper()
	dir := t.TempDir()
	e, err := devenv.Start(context.Background(), devenv.Config{DataDir: dir, Listen: "127.0.0.1:0", Out: &bytes.Buffer{},
		BootDelay: 10 * time.Millisecond, AgentDir: agentDir(t), HeartbeatInterval: time.Second, PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	// Exactly what `set -a; . dev.env` gives a shell.
	vars := map[string]string{}
	for k, v := range e.Values {
		vars[k] = v
	}
	return e, vars
}

// TestDemoWalkthrough is the README's quick start, through the CLI.
func TestDemoWalkthrough(t *testing.T) {
	_, v := startDev(t)

	r := cli(t, v, v["DO_SIM_TOKEN"]+"\n", "integrations", "connect", "--provider", "digitalocean", "--access-key", "my-do")
	if r.code != 0 || !strings.Contains(r.stdout, "status:         valid") {
		t.Fatalf("connect digitalocean: %+v", r)
	}
	// Secret from the environment instead of stdin.
	v2 := map[string]string{"DEVPILOT_SECRET_KEY": v["VULTR_SIM_KEY"]}
	for k, x := range v {
		v2[k] = x
	}
	r = cli(t, v2, "", "integrations", "connect", "--provider", "vultr", "--access-key", "my-vultr")
	if r.code != 0 {
		t.Fatalf("connect vultr: %+v", r)
	}

	r = cli(t, v, "", "integrations", "list", "--json")
	var list struct {
		Integrations []struct {
			ID, Provider  string
			SecretKeyHint string `json:"secret_key_hint"`
		}
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &list) != nil || len(list.Integrations) != 2 {
		t.Fatalf("list: %+v", r)
	}
	if strings.Contains(r.stdout, v["DO_SIM_TOKEN"]) || strings.Contains(r.stdout, v["VULTR_SIM_KEY"]) {
		t.Fatal("list printed a secret")
	}
	table := cli(t, v, "", "integrations", "list")
	if !strings.Contains(table.stdout, "…"+v["DO_SIM_TOKEN"][len(v["DO_SIM_TOKEN"])-4:]) {
		t.Errorf("table should show the hint: %s", table.stdout)
	}
	doID := list.Integrations[0].ID
	if list.Integrations[0].Provider != "digitalocean" {
		doID = list.Integrations[1].ID
	}

	if r := cli(t, v, "", "integrations", "test", doID); r.code != 0 || !strings.Contains(r.stdout, "Credentials work.") {
		t.Errorf("test: %+v", r)
	}
	r = cli(t, v, "dop_v1_"+strings.Repeat("9", 64)+"\n", "integrations", "rotate", doID)
	if r.code != 1 || !strings.Contains(r.stderr, "(invalid_credentials)") || !strings.Contains(r.stderr, "hint:") {
		t.Errorf("rotate to a bad token must fail with invalid_credentials and a hint: %+v", r)
	}
	if r := cli(t, v, "", "integrations", "test", doID); r.code != 0 {
		t.Errorf("old token must keep working after a refused rotation: %+v", r)
	}

	r = cli(t, v, v["DO_SIM_READONLY_TOKEN"], "integrations", "connect", "--provider", "digitalocean", "--access-key", "ro")
	if r.code != 1 || !strings.Contains(r.stderr, "insufficient_scope") || !strings.Contains(r.stderr, "Read and Write") {
		t.Errorf("read-only token: %+v", r)
	}
	r = cli(t, v, v["VULTR_SIM_BLOCKED_KEY"], "integrations", "connect", "--provider", "vultr", "--access-key", "blocked")
	if r.code != 1 || !strings.Contains(r.stderr, "ip_not_allowed") || !strings.Contains(r.stderr, "allowlist") {
		t.Errorf("blocked key: %+v", r)
	}

	if r := cli(t, v, "", "integrations", "catalog", doID, "--region", "nyc3"); r.code != 0 || !strings.Contains(r.stdout, "s-1vcpu-1gb") {
		t.Errorf("catalog: %+v", r)
	}
	for _, in := range list.Integrations {
		if r := cli(t, v, "", "integrations", "remove", in.ID, "--force"); r.code != 0 || !strings.Contains(r.stdout, "not touched") {
			t.Errorf("remove: %+v", r)
		}
	}
	if r := cli(t, v, "", "integrations", "list", "--json"); !strings.Contains(r.stdout, `"integrations": []`) {
		t.Errorf("after remove: %s", r.stdout)
	}
}

func TestTokensAndAudit(t *testing.T) {
	_, v := startDev(t)
	r := cli(t, v, "", "tokens", "create", "--role", "viewer", "--name", "dashboard")
	viewer := strings.TrimSpace(r.stdout)
	if r.code != 0 || !strings.HasPrefix(viewer, "dpt_") {
		t.Fatalf("tokens create: %+v", r)
	}
	asViewer := map[string]string{}
	for k, x := range v {
		asViewer[k] = x
	}
	asViewer["DEVPILOT_TOKEN"] = viewer
	if r := cli(t, asViewer, "", "integrations", "list"); r.code != 0 {
		t.Errorf("viewer list: %+v", r)
	}
	r = cli(t, asViewer, v["DO_SIM_TOKEN"], "integrations", "connect", "--provider", "digitalocean", "--access-key", "x")
	if r.code != 1 || !strings.Contains(r.stderr, "(forbidden)") {
		t.Errorf("viewer connect: %+v", r)
	}
	if r := cli(t, v, "", "tokens", "create", "--role", "root"); r.code != 1 || !strings.Contains(r.stderr, "validation_failed") {
		t.Errorf("bad role: %+v", r)
	}
	if r := cli(t, v, "", "audit"); r.code != 0 || !strings.Contains(r.stdout, "token.create") {
		t.Errorf("audit: %+v", r)
	}
	if r := cli(t, v, "", "keys", "rotate"); r.code != 0 || !strings.Contains(r.stdout, "New master key") {
		t.Errorf("keys rotate: %+v", r)
	}
}

func TestUsageErrors(t *testing.T) {
	cases := [][]string{
		{},
		{"nope"},
		{"integrations"},
		{"integrations", "frobnicate"},
		{"integrations", "connect", "--provider", "digitalocean"},
		{"integrations", "show"},
	}
	for _, args := range cases {
		if r := cli(t, map[string]string{}, "", args...); r.code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage): %s", args, r.code, r.stderr)
		}
	}
	// Flags take their defaults from DEVPILOT_* variables.
	r := cli(t, map[string]string{"DEVPILOT_DATA_DIR": "/nonexistent/dir"}, "", "integrations", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "/nonexistent/dir") {
		t.Errorf("DEVPILOT_DATA_DIR not honoured: %+v", r)
	}
}

// A database password never goes on the command line (argv is readable by
// every user); the refusal names the way that works and not the password.
func TestServeRefusesADatabasePasswordInArgv(t *testing.T) {
	const canary = "canary-db-pass-4d1f"
	r := cli(t, map[string]string{}, "", "serve", "--data-dir", t.TempDir(), "--database", "postgres://devpilot:"+canary+"@db.internal/devpilot")
	if r.code != 2 || !strings.Contains(r.stderr, "DEVPILOT_DATABASE") || strings.Contains(r.stderr+r.stdout, canary) {
		t.Errorf("serve --database with a password: %+v", r)
	}
}

// TestServersTasksAndDeployThroughTheCLI: a server created with --wait, a
// task run and followed, a deployment from a plan file.
func TestServersTasksAndDeployThroughTheCLI(t *testing.T) {
	_, v := startDev(t)
	if r := cli(t, v, v["DO_SIM_TOKEN"], "integrations", "connect", "--provider", "digitalocean", "--access-key", "do"); r.code != 0 {
		t.Fatalf("connect: %+v", r)
	}
	var list struct{ Integrations []struct{ ID string } }
	_ = json.Unmarshal([]byte(cli(t, v, "", "integrations", "list", "--json").stdout), &list)
	r := cli(t, v, "", "servers", "create", "--integration", list.Integrations[0].ID, "--name", "web-1",
		"--region", "nyc3", "--size", "s-1vcpu-1gb", "--image", "debian-12", "--port", "22,8080", "--wait")
	if r.code != 0 || !strings.Contains(r.stdout, "✓ wait_agent") || !strings.Contains(r.stdout, "is online") {
		t.Fatalf("servers create --wait: %+v", r)
	}
	var servers struct{ Servers []struct{ ID string } }
	_ = json.Unmarshal([]byte(cli(t, v, "", "servers", "list", "--json").stdout), &servers)
	id := servers.Servers[0].ID
	if r := cli(t, v, "", "servers", "show", id); r.code != 0 || !strings.Contains(r.stdout, "22 8080") || !strings.Contains(r.stdout, "wait_agent") {
		t.Errorf("servers show: %+v", r)
	}

	// A task's output comes back on stdout; its exit code decides ours.
	r = cli(t, v, "", "tasks", "run", "--server", id, "--", "sh", "-c", "echo out-line; echo err-line >&2; exit 3")
	if r.code != 3 || !strings.Contains(r.stdout, "out-line") || !strings.Contains(r.stderr, "err-line") || !strings.Contains(r.stderr, "exit code 3") {
		t.Errorf("tasks run (failing): %+v", r)
	}
	if r := cli(t, v, "", "tasks", "run", "--server", id, "--", "echo", "fine"); r.code != 0 || r.stdout != "fine\n" {
		t.Errorf("tasks run: %+v", r)
	}

	plan := filepath.Join(t.TempDir(), "plan.yaml")
	if err := os.WriteFile(plan, []byte(`tag: devpilot
steps:
  - name: write
    kind: file
    path: /etc/demo.conf
    content: |
      from the plan
  - name: read
    kind: exec
    argv: [cat, etc/demo.conf]
`), 0o600); err != nil {
		t.Fatal(err)
	}
	r = cli(t, v, "", "deploy", "-f", plan)
	if r.code != 0 || !strings.HasSuffix(r.stdout, "succeeded: 1 succeeded\n") {
		t.Errorf("deploy: %+v", r)
	}
	var tasks struct {
		Tasks []struct{ ID, Kind string }
	}
	_ = json.Unmarshal([]byte(cli(t, v, "", "tasks", "list", "--json").stdout), &tasks)
	if len(tasks.Tasks) != 3 || tasks.Tasks[0].Kind != "deploy" {
		t.Fatalf("tasks list: %+v", tasks)
	}
	if r := cli(t, v, "", "tasks", "logs", tasks.Tasks[0].ID); r.code != 0 || !strings.Contains(r.stdout, "from the plan") {
		t.Errorf("tasks logs: %+v", r)
	}

	// rekey (by name) prints the one-time token inside the command to run
	// on the server; show then says what the server waits for.
	r = cli(t, v, "", "servers", "rekey", "web-1")
	if r.code != 0 || !strings.Contains(r.stdout, "| sudo devpilot-agent enroll --token-file -") || !strings.Contains(r.stdout, "'dp") {
		t.Errorf("servers rekey: %+v", r)
	}
	if r := cli(t, v, "", "servers", "show", id); r.code != 0 || !strings.Contains(r.stdout, "rekeyed: waiting for the real agent") {
		t.Errorf("servers show after rekey: %+v", r)
	}
}
