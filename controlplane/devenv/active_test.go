package devenv_test

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/agent/layout"
	"github.com/devpilot/devpilot/bootstrap/sandbox"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
	"github.com/devpilot/devpilot/controlplane/tcplb"
	"github.com/devpilot/devpilot/shared/protocol"
)

// TestPostgresActiveControlPlanes runs two `devpilot serve --mode active`
// processes on one PostgreSQL database behind a TCP balancer, as README's
// "Several active control planes" describes. Both answer the API: each
// shows every agent connected, wherever its session is held, and a task
// created on either runs on its agent (one of the two hands it to the
// other). Then the one running the jobs is SIGKILLed mid-provisioning and
// mid-task: the other takes the jobs over and finishes both (one droplet
// per server, the task's whole output), and the killed one's agents come
// back through the balancer.
func TestPostgresActiveControlPlanes(t *testing.T) {
	ap := startActivePair(t, 1500*time.Millisecond)
	a, b, do, token := ap.a, ap.b, ap.do, ap.token
	onA, onB := caller(a.do), caller(b.do)

	var in integration
	if c := a.do("POST", base, map[string]string{"provider": "digitalocean", "access_key": "do", "secret_key": token}, &in); c != 201 {
		t.Fatalf("connect: %d", c)
	}
	create := func(p *serveProc, name string) server { return createOn(p, in.ID, name) }
	wait := waitOn
	first := create(b, "active-1") // created on b, provisioned by a (the jobs' runner)
	for _, p := range []*serveProc{a, b} {
		wait(p, first.ID, "online with its agent connected", 90*time.Second, connected)
	}
	// A task through each control plane: the agent's session is held by
	// one of them, so one task goes there by way of the other.
	for _, call := range []caller{onA, onB} {
		v := waitTask(t, call, runTask(t, call, first.ID, map[string]any{"kind": "exec", "argv": []string{"echo", "routed"}}).ID,
			30*time.Second, "final", final)
		if out := logText(t, call, v.ID); v.State != protocol.TaskSucceeded || out != "routed\n" {
			t.Fatalf("a task through one control plane: %+v, output %q", v, out)
		}
	}

	if routed, received := metricSum(t, "devpilot_cluster_routed_total", a, b), metricSum(t, "devpilot_cluster_received_total", a, b); routed < 1 || received < 1 {
		t.Errorf("tasks handed between the control planes: %v sent, %v received; want at least one", routed, received)
	}

	// Work in flight when the jobs' runner dies.
	task := runTask(t, onB, first.ID, map[string]any{"kind": "exec", "argv": []string{"sh", "-c", "echo before; sleep 3; echo after"}})
	waitTask(t, onB, task.ID, 15*time.Second, "running", func(v e2eTask) bool { return v.State == protocol.TaskRunning })
	second := create(b, "active-2")
	wait(b, second.ID, "waiting for its droplet", 30*time.Second, func(s server) bool {
		for _, st := range s.Steps {
			if st.Name == "wait_active" && st.State == "running" {
				return true
			}
		}
		return false
	})
	a.kill()
	killedAt := time.Now()
	during := runTask(t, onB, first.ID, map[string]any{"kind": "exec", "argv": []string{"echo", "during"}})

	for _, id := range []string{first.ID, second.ID} {
		wait(b, id, "online on the survivor", 120*time.Second, connected)
	}
	back := time.Since(killedAt)
	v := waitTask(t, onB, task.ID, 60*time.Second, "final", final)
	if out := logText(t, onB, task.ID); v.State != protocol.TaskSucceeded || out != "before\nafter\n" {
		t.Errorf("the task running at the kill: %+v, output %q", v, out)
	}
	v = waitTask(t, onB, during.ID, 60*time.Second, "final", final)
	if out := logText(t, onB, during.ID); v.State != protocol.TaskSucceeded || out != "during\n" {
		t.Errorf("the task created just after the kill: %+v, output %q", v, out)
	}
	v = waitTask(t, onB, runTask(t, onB, second.ID, map[string]any{"kind": "exec", "argv": []string{"echo", "survivor"}}).ID,
		30*time.Second, "final", final)
	if out := logText(t, onB, v.ID); v.State != protocol.TaskSucceeded || out != "survivor\n" {
		t.Errorf("a task on the server the survivor finished: %+v, %q", v, out)
	}
	for _, s := range []server{first, second} {
		if n := dropletsOf(do, s.ID); n != 1 {
			t.Errorf("server %s has %d droplets, want 1", s.Name, n)
		}
	}
	if !strings.Contains(readFile(t, b.log.Name()), "this control plane runs the jobs") {
		t.Errorf("the survivor never took the jobs over; its log:\n%s", readFile(t, b.log.Name()))
	}
	t.Logf("both servers online on the survivor %v after the kill", back.Round(10*time.Millisecond))
}

// activePair is two `devpilot serve --mode active` on one PostgreSQL
// database behind a TCP balancer (their public URL), sharing the keyring
// and TLS files as every control plane of a database must, with a
// DigitalOcean simulator whose droplets boot in the sandbox.
type activePair struct {
	a, b         *serveProc
	addrA, addrB string
	do           *dosim.Sim
	machines     *sandbox.Runtime // the droplets' machines
	token        string           // the simulator's DigitalOcean token
}

func startActivePair(t *testing.T, bootDelay time.Duration) activePair {
	t.Helper()
	dsn := storetest.PostgresURL(t)
	machines := sandbox.New(sandbox.Options{Dir: filepath.Join(t.TempDir(), "machines"), Logger: zap.NewNop()})
	t.Cleanup(func() { _ = machines.Close() })
	do := dosim.New(dosim.Options{Runtime: machines, BootDelay: bootDelay})
	t.Cleanup(do.Close)
	sim := httptest.NewServer(do.Handler())
	t.Cleanup(sim.Close)
	token := "dop_v1_" + strings.Repeat("8", 64)
	do.AddToken(token, true)

	addrs := []string{freeAddr(t), freeAddr(t)}
	lb, err := tcplb.Listen("127.0.0.1:0", addrs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lb.Close() })
	a := activeNode(t, "a", dsn, addrs[0], "https://"+lb.Addr(), sim.URL)
	b := activeNode(t, "b", dsn, addrs[1], "https://"+lb.Addr(), sim.URL)
	a.start()
	for _, f := range []string{"keyring.json", "tls/ca.crt", "tls/ca.key", "tls/server.crt", "tls/server.key"} {
		copyFile(t, filepath.Join(a.dataDir, f), filepath.Join(b.dataDir, f))
	}
	b.token = a.token
	b.start()
	return activePair{a: a, b: b, addrA: addrs[0], addrB: addrs[1], do: do, machines: machines, token: token}
}

// TestPostgresActiveIdentityConflictAcrossControlPlanes: a copy of a
// server's identity key runs as a second agent dialling the control plane
// that does not hold the real agent's session (the real one dials the
// balancer). The two keep taking the session from each other across the
// control planes (each new holder tells the previous one, which ends its
// session and counts the takeover) until the server is quarantined, and
// neither agent stays connected.
func TestPostgresActiveIdentityConflictAcrossControlPlanes(t *testing.T) {
	ap := startActivePair(t, 10*time.Millisecond)
	var in integration
	if c := ap.a.do("POST", base, map[string]string{"provider": "digitalocean", "access_key": "do", "secret_key": ap.token}, &in); c != 201 {
		t.Fatalf("connect: %d", c)
	}
	s := createOn(ap.a, in.ID, "twin")
	s = waitOn(ap.a, s.ID, "online with its agent connected", 90*time.Second, connected)
	info, ok := ap.machines.Machine(s.InstanceID)
	if !ok || info.AgentPID == 0 {
		t.Fatalf("no agent process for %s: %+v", s.InstanceID, info)
	}
	// The control plane not holding the session: the one whose hub has no agent.
	other := ap.addrA
	if metricSum(t, "devpilot_hub_agents_connected", ap.a) == 1 {
		other = ap.addrB
	}
	real := layout.New(info.Root)
	imp := layout.New(filepath.Join(t.TempDir(), "impostor"))
	b, err := os.ReadFile(real.ConfigFile())
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["url"] = "https://" + other
	b, _ = json.Marshal(cfg)
	for _, f := range []struct {
		path string
		data []byte
	}{{imp.ConfigFile(), b}, {imp.IdentityKey(), nil}} {
		if f.data == nil {
			if f.data, err = os.ReadFile(real.IdentityKey()); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.MkdirAll(filepath.Dir(f.path), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f.path, f.data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	began := time.Now()
	startImpostor(t, imp)
	waitOn(ap.b, s.ID, "quarantined", 90*time.Second, func(x server) bool { return x.State == "quarantined" })
	t.Logf("quarantined %v after the impostor started on the other control plane", time.Since(began).Round(10*time.Millisecond))
	if metricSum(t, "devpilot_hub_identity_conflicts_total", ap.a, ap.b) < 1 {
		t.Errorf("no control plane counted the identity conflict")
	}
	// Neither agent keeps a session, on either control plane.
	for _, p := range []*serveProc{ap.a, ap.b} {
		waitOn(p, s.ID, "quarantined with no agent connected", 60*time.Second, func(x server) bool {
			return x.State == "quarantined" && !x.Agent.Connected
		})
	}
	if n := metricSum(t, "devpilot_hub_agents_connected", ap.a, ap.b); n != 0 {
		t.Errorf("%v agents still connected after the quarantine", n)
	}
}

// activeNode is a `devpilot serve --mode active` of database dsn on addr
// (not started), reached by agents at publicURL, its cloud at simURL.
func activeNode(t *testing.T, name, dsn, addr, publicURL, simURL string) *serveProc {
	dir := t.TempDir()
	logf, err := os.Create(filepath.Join(t.TempDir(), name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = logf.Close() })
	p := &serveProc{t: t, dataDir: dir, url: "https://" + addr, log: logf,
		env: []string{"DEVPILOT_DATABASE=" + dsn},
		args: []string{"serve", "--mode", "active", "--data-dir", dir, "--listen", addr, "--public-url", publicURL,
			"--digitalocean-api-url", simURL, "--agent-dir", agentDir, "--log-level", "debug"}}
	t.Cleanup(p.kill)
	return p
}

// TestPostgresActiveJobsComeBackAfterTheLockIsLost: an active control
// plane whose jobs lock's database session dies (a database restart or a
// cut connection does that to every control plane at once) stops its
// jobs, keeps serving, and asks for the lock again: with no other control
// plane to take it, it runs the jobs again, twice over, and a server
// created afterwards is provisioned.
func TestPostgresActiveJobsComeBackAfterTheLockIsLost(t *testing.T) {
	dsn := storetest.PostgresURL(t)
	machines := sandbox.New(sandbox.Options{Dir: filepath.Join(t.TempDir(), "machines"), Logger: zap.NewNop()})
	t.Cleanup(func() { _ = machines.Close() })
	do := dosim.New(dosim.Options{Runtime: machines, BootDelay: 10 * time.Millisecond})
	t.Cleanup(do.Close)
	sim := httptest.NewServer(do.Handler())
	t.Cleanup(sim.Close)
	token := "dop_v1_" + strings.Repeat("9", 64)
	do.AddToken(token, true)
	addr := freeAddr(t)
	p := activeNode(t, "solo", dsn, addr, "https://"+addr, sim.URL)
	p.start()
	// logged waits until the log has said what n times.
	logged := func(what string, n int, why string) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for strings.Count(readFile(t, p.log.Name()), what) < n {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the log does not say %q %d times after 60 s:\n%s", why, what, n, readFile(t, p.log.Name()))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	const runs, lostLock = "this control plane runs the jobs", "asks for the lock again"
	logged(runs, 1, "at its start")
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = admin.Close() }()
	for round := 1; round <= 2; round++ {
		// The session holding the jobs lock (store.leaderLock, "dp-leadr":
		// classid and objid are its high and low 32 bits).
		var killed bool
		if err := admin.QueryRow(`SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted
			AND classid = x'64702d6c'::int8 AND objid = x'65616472'::int8`).Scan(&killed); err != nil || !killed {
			t.Fatalf("round %d: end the jobs lock's session: %v, %v", round, killed, err)
		}
		logged(lostLock, round, fmt.Sprintf("round %d: the lost lock noticed", round))
		logged(runs, round+1, fmt.Sprintf("round %d: the lock won back", round))
	}
	if v := metricSum(t, "devpilot_control_plane_jobs", p); v != 1 {
		t.Errorf("devpilot_control_plane_jobs = %v after the lock was won back, want 1", v)
	}
	var in integration
	if c := p.do("POST", base, map[string]string{"provider": "digitalocean", "access_key": "do", "secret_key": token}, &in); c != 201 {
		t.Fatalf("connect: %d", c)
	}
	s := createOn(p, in.ID, "after-the-lock")
	waitOn(p, s.ID, "online: its provisioning ran on the jobs won back", 90*time.Second, connected)
	if n := strings.Count(readFile(t, p.log.Name()), runs); n != 3 {
		t.Errorf("the jobs were started %d times, want 3 (at the start, after each lost lock)", n)
	}
}

// metricSum adds a counter's samples (every label set) on the given
// control planes' /metrics.
func metricSum(t *testing.T, name string, ps ...*serveProc) float64 {
	t.Helper()
	var sum float64
	for _, p := range ps {
		resp, err := p.client.Get(p.url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if !strings.HasPrefix(l, name+"{") && !strings.HasPrefix(l, name+" ") {
				continue
			}
			f := strings.Fields(l)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err != nil {
				t.Fatalf("%s: %q", name, l)
			}
			sum += v
		}
	}
	return sum
}
