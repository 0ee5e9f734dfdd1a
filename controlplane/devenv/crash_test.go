package devenv_test

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/bootstrap/sandbox"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
)

// serveProc is `devpilot serve` as a real process the test can SIGKILL.
type serveProc struct {
	t       *testing.T
	args    []string
	env     []string // added to this process's environment
	dataDir string
	url     string
	log     *os.File
	cmd     *exec.Cmd
	client  *http.Client
	token   string
}

func (p *serveProc) start() {
	p.t.Helper()
	p.launch()
	p.waitReady(20 * time.Second)
}

// launch starts the process without waiting for it.
func (p *serveProc) launch() {
	p.t.Helper()
	p.cmd = exec.Command(filepath.Join(agentDir, "devpilot"), p.args...)
	p.cmd.Env = append(os.Environ(), p.env...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
}

// waitReady waits for /readyz, then reads the owner token if it has none.
func (p *serveProc) waitReady(limit time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		if p.client == nil {
			if ca, err := os.ReadFile(filepath.Join(p.dataDir, "tls", "ca.crt")); err == nil {
				pool := x509.NewCertPool()
				pool.AppendCertsFromPEM(ca)
				p.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
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
			p.t.Fatalf("devpilot serve did not become ready; see %s", p.log.Name())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if p.token == "" {
		b, err := os.ReadFile(filepath.Join(p.dataDir, "owner.token"))
		if err != nil {
			p.t.Fatal(err)
		}
		p.token = strings.TrimSpace(string(b))
	}
}

func (p *serveProc) kill() {
	if p.cmd == nil || p.cmd.ProcessState != nil {
		return // never started, or already reaped
	}
	_ = p.cmd.Process.Kill() // SIGKILL: no graceful anything
	_ = p.cmd.Wait()
	if p.client != nil {
		p.client.CloseIdleConnections()
	}
}

func (p *serveProc) do(method, path string, body, out any) int {
	p.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
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

// databaseEnv points a serve process at the database the suite runs on
// (storetest.Database): nothing for SQLite in its data dir.
func databaseEnv(t *testing.T) []string {
	if dsn := storetest.Database(t); dsn != "" {
		return []string{"DEVPILOT_DATABASE=" + dsn}
	}
	return nil
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().String()
}

// TestControlPlaneKilledDuringEachStep SIGKILLs `devpilot serve` while each
// provisioning step runs, restarts it, and checks the job resumes and ends
// with one online server and one droplet. (The narrowest window, a droplet
// created but its id not yet recorded, is TestInstanceFoundByTagIsAdopted.)
func TestControlPlaneKilledDuringEachStep(t *testing.T) {
	log := zap.NewNop()
	machines := sandbox.New(sandbox.Options{Dir: filepath.Join(t.TempDir(), "machines"), Logger: log})
	t.Cleanup(func() { _ = machines.Close() })
	do := dosim.New(dosim.Options{Runtime: machines, BootDelay: 500 * time.Millisecond})
	t.Cleanup(do.Close)
	sim := httptest.NewServer(do.Handler())
	t.Cleanup(sim.Close)
	token := "dop_v1_" + strings.Repeat("7", 64)
	do.AddToken(token, true)
	do.SetLatency(150 * time.Millisecond) // every step takes long enough to be killed in

	dataDir := t.TempDir()
	addr := freeAddr(t)
	logf, err := os.Create(filepath.Join(t.TempDir(), "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = logf.Close() }()
	p := &serveProc{t: t, dataDir: dataDir, url: "https://" + addr, log: logf, env: databaseEnv(t), args: []string{"serve",
		"--data-dir", dataDir, "--listen", addr, "--digitalocean-api-url", sim.URL, "--agent-dir", agentDir,
		"--log-level", "debug"}}
	p.start()
	t.Cleanup(p.kill)

	var in integration
	if c := p.do("POST", base, map[string]string{"provider": "digitalocean", "access_key": "do", "secret_key": token}, &in); c != 201 {
		t.Fatalf("connect: %d", c)
	}
	var s server
	if c := p.do("POST", servers, map[string]any{"integration_id": in.ID, "name": "crashy", "region": "nyc3",
		"size": "s-1vcpu-1gb", "image": "debian-12"}, &s); c != 202 {
		t.Fatalf("create: %d", c)
	}
	stepState := func(name string) (string, server) {
		var got server
		p.do("GET", servers+"/"+s.ID, nil, &got)
		for _, st := range got.Steps {
			if st.Name == name {
				return st.State, got
			}
		}
		return "", got
	}
	killed := 0
	for _, step := range []string{"preflight", "ssh_key", "firewall", "instance", "wait_active", "wait_agent"} {
		deadline := time.Now().Add(60 * time.Second)
		for {
			state, got := stepState(step)
			if state == "running" {
				break
			}
			if state == "done" || got.State == "online" {
				t.Logf("step %s finished before it could be killed", step)
				break
			}
			if got.State == "failed" {
				t.Fatalf("provisioning failed: %+v", got.Error)
			}
			if time.Now().After(deadline) {
				t.Fatalf("step %s never ran: %+v", step, got)
			}
			time.Sleep(5 * time.Millisecond)
		}
		if st, _ := stepState(step); st == "running" {
			p.kill()
			killed++
			p.start()
		}
	}
	if killed < 4 {
		t.Errorf("only %d of 6 steps were killed while running; the test proved little", killed)
	}
	deadline := time.Now().Add(90 * time.Second)
	var got server
	for {
		p.do("GET", servers+"/"+s.ID, nil, &got)
		if got.State == "online" {
			break
		}
		if got.State == "failed" || time.Now().After(deadline) {
			t.Fatalf("after %d kills: %+v (log %s)", killed, got, logf.Name())
		}
		time.Sleep(50 * time.Millisecond)
	}
	st := do.State()
	var mine []int
	for _, d := range st.Droplets {
		if slices.Contains(d.Tags, "devpilot-srv-"+s.ID) {
			mine = append(mine, d.ID)
		}
	}
	if len(mine) != 1 || len(st.Firewalls) != 1 || len(st.SSHKeys) != 1 {
		t.Fatalf("after %d kills: droplets %v, %d firewalls, %d keys; want exactly one each", killed, mine, len(st.Firewalls), len(st.SSHKeys))
	}
	if got.InstanceID == "" || got.InstanceID != strconv.Itoa(mine[0]) {
		t.Errorf("recorded instance %q, cloud has %v", got.InstanceID, mine)
	}
	t.Logf("killed the control plane %d times; one server online, one droplet", killed)

	// Stopped for 30 s and restarted: the agent comes back by itself. While
	// its agent is frozen the restarted control plane shows the server offline.
	info, ok := machines.Machine(got.InstanceID)
	if !ok || info.AgentPID == 0 {
		t.Fatalf("no agent: %+v", info)
	}
	p.kill()
	time.Sleep(30 * time.Second)
	if err := killPID(info.AgentPID, "STOP"); err != nil {
		t.Fatal(err)
	}
	p.start()
	if _, got = stepState("wait_agent"); got.State != "offline" || got.Agent.Connected {
		t.Errorf("with its agent away, the restarted control plane shows %s (connected %v), want offline", got.State, got.Agent.Connected)
	}
	_ = killPID(info.AgentPID, "CONT")
	deadline = time.Now().Add(90 * time.Second)
	for {
		if _, got = stepState("wait_agent"); got.State == "online" && got.Agent.Connected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not come back after the outage: %+v", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
