package devenv_test

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/bootstrap/sandbox"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
	"github.com/devpilot/devpilot/shared/protocol"
)

// copyFile copies what an operator copies to a standby's data dir.
func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestPostgresStandbyTakesOver runs two `devpilot serve` processes on one
// PostgreSQL database, as README's "High availability" describes: the
// standby (its own data dir holding copies of the active one's keyring and
// TLS files, the same --listen address standing in for a floating IP)
// waits while the active one runs, and after the active one is SIGKILLed
// mid-provisioning and mid-task it finishes both: one droplet per server,
// the task's whole output, the agents back on the new control plane.
func TestPostgresStandbyTakesOver(t *testing.T) {
	dsn := storetest.PostgresURL(t)
	machines := sandbox.New(sandbox.Options{Dir: filepath.Join(t.TempDir(), "machines"), Logger: zap.NewNop()})
	t.Cleanup(func() { _ = machines.Close() })
	do := dosim.New(dosim.Options{Runtime: machines, BootDelay: 1500 * time.Millisecond})
	t.Cleanup(do.Close)
	sim := httptest.NewServer(do.Handler())
	t.Cleanup(sim.Close)
	token := "dop_v1_" + strings.Repeat("9", 64)
	do.AddToken(token, true)

	addr := freeAddr(t)
	node := func(name string) *serveProc {
		dir := t.TempDir()
		logf, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = logf.Close() })
		p := &serveProc{t: t, dataDir: dir, url: "https://" + addr, log: logf,
			// The URL holds a password: it goes in the environment, never argv.
			env: []string{"DEVPILOT_DATABASE=" + dsn},
			args: []string{"serve", "--data-dir", dir, "--listen", addr, "--digitalocean-api-url", sim.URL,
				"--agent-dir", agentDir, "--log-level", "debug"}}
		t.Cleanup(p.kill)
		return p
	}
	active, standby := node("active"), node("standby")
	active.start()
	call := caller(active.do)

	var in integration
	if c := active.do("POST", base, map[string]string{"provider": "digitalocean", "access_key": "do", "secret_key": token}, &in); c != 201 {
		t.Fatalf("connect: %d", c)
	}
	create := func(p *serveProc, name string) server { return createOn(p, in.ID, name) }
	wait := waitOn
	first := create(active, "ha-1")
	wait(active, first.ID, "online", 60*time.Second, connected)

	// The standby: copies of the keyring and the TLS files (agents pin the
	// CA), then it waits for the database lock.
	for _, f := range []string{"keyring.json", "tls/ca.crt", "tls/ca.key", "tls/server.crt", "tls/server.key"} {
		copyFile(t, filepath.Join(active.dataDir, f), filepath.Join(standby.dataDir, f))
	}
	standby.launch()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(readFile(t, standby.log.Name()), "standby: another control plane holds the database") {
		if time.Now().After(deadline) {
			t.Fatalf("the second control plane did not wait as a standby:\n%s", readFile(t, standby.log.Name()))
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Work in flight when the active one dies: a task running, a server
	// being provisioned.
	task := runTask(t, call, first.ID, map[string]any{"kind": "exec", "argv": []string{"sh", "-c", "echo before; sleep 3; echo after"}})
	waitTask(t, call, task.ID, 10*time.Second, "running", func(v e2eTask) bool { return v.State == protocol.TaskRunning })
	second := create(active, "ha-2")
	wait(active, second.ID, "waiting for its droplet", 30*time.Second, func(s server) bool {
		for _, st := range s.Steps {
			if st.Name == "wait_active" && st.State == "running" {
				return true
			}
		}
		return false
	})
	active.kill()
	killedAt := time.Now()

	standby.token = active.token // same database, same tokens
	standby.waitReady(60 * time.Second)
	took := time.Since(killedAt)
	call = caller(standby.do)
	for _, id := range []string{first.ID, second.ID} {
		wait(standby, id, "online on the standby", 90*time.Second, connected)
	}
	v := waitTask(t, call, task.ID, 60*time.Second, "final", final)
	if v.State != protocol.TaskSucceeded {
		t.Errorf("the task running at the takeover: %+v", v)
	}
	if out := logText(t, call, task.ID); out != "before\nafter\n" {
		t.Errorf("its output %q, want before and after", out)
	}
	v = waitTask(t, call, runTask(t, call, second.ID, map[string]any{"kind": "exec", "argv": []string{"echo", "on the standby"}}).ID,
		30*time.Second, "final", final)
	if out := logText(t, call, v.ID); v.State != protocol.TaskSucceeded || out != "on the standby\n" {
		t.Errorf("a new task on the standby: %+v, %q", v, out)
	}
	for _, s := range []server{first, second} {
		if n := dropletsOf(do, s.ID); n != 1 {
			t.Errorf("server %s has %d droplets, want 1", s.Name, n)
		}
	}
	if _, err := os.Stat(filepath.Join(standby.dataDir, "owner.token")); err == nil {
		t.Error("the standby made a second owner token")
	}
	t.Logf("standby ready %v after the active control plane was killed", took.Round(10*time.Millisecond))
}

// createOn creates a DigitalOcean server on p with integration in.
func createOn(p *serveProc, in, name string) server {
	p.t.Helper()
	var s server
	if c := p.do("POST", servers, map[string]any{"integration_id": in, "name": name, "region": "nyc3",
		"size": "s-1vcpu-1gb", "image": "debian-12"}, &s); c != 202 {
		p.t.Fatalf("create %s: %d", name, c)
	}
	return s
}

// waitOn polls server id on p until cond holds (failing after limit).
func waitOn(p *serveProc, id, what string, limit time.Duration, cond func(server) bool) server {
	p.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		var s server
		p.do("GET", servers+"/"+id, nil, &s)
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("server %s not %s on %s after %v: %+v", id, what, p.url, limit, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// dropletsOf counts the simulator's droplets tagged for server id.
func dropletsOf(do *dosim.Sim, id string) int {
	n := 0
	for _, d := range do.State().Droplets {
		if slices.Contains(d.Tags, "devpilot-srv-"+id) {
			n++
		}
	}
	return n
}

// connected: online, with its agent's session up.
func connected(s server) bool { return s.State == "online" && s.Agent.Connected }

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
