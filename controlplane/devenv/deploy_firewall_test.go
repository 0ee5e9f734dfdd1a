package devenv_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vultr/govultr/v3"
	"go.uber.org/zap"

	"github.com/devpilot/devpilot/bootstrap/sandbox"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
	"github.com/devpilot/devpilot/controlplane/provision"
)

// fwDeployment is what these tests read of a deployment.
type fwDeployment struct {
	ID            string `json:"id"`
	State         string `json:"state"`
	Error         string `json:"error"`
	FirewallSteps []struct {
		Step  int   `json:"step"`
		Ports []int `json:"ports"`
	} `json:"firewall_steps"`
	Targets []struct {
		ServerID string `json:"server_id"`
		TaskID   string `json:"task_id"`
		ActionID string `json:"action_id"`
		State    string `json:"state"`
		Reason   string `json:"reason"`
		Error    string `json:"error"`
	} `json:"targets"`
}

// firewallPlan opens exactly 22 and 8080, then runs a command on the agent.
var firewallPlan = map[string]any{"steps": []map[string]any{
	{"name": "open", "kind": "firewall", "ports": []int{8080, 22}},
	{"name": "after", "kind": "exec", "argv": []string{"sh", "-c", "echo deployed"}},
}}

// portsActions lists a server's ports actions.
func portsActions(t *testing.T, call caller, serverID string) []action {
	t.Helper()
	var list struct {
		Actions []action `json:"actions"`
	}
	if c := call("GET", servers+"/"+serverID+"/actions?limit=100", nil, &list); c != http.StatusOK {
		t.Fatalf("list actions: %d", c)
	}
	var out []action
	for _, a := range list.Actions {
		if a.Type == "ports" {
			out = append(out, a)
		}
	}
	return out
}

// checkFirewallThenExec checks a finished deployment's one target: it
// succeeded, one ports action set [22 8080], and the exec ran after it.
func checkFirewallThenExec(t *testing.T, call caller, d fwDeployment, serverID string) {
	t.Helper()
	if d.State != "succeeded" || len(d.Targets) != 1 || d.Targets[0].State != "succeeded" {
		t.Fatalf("deployment: %+v", d)
	}
	if len(d.FirewallSteps) != 1 || d.FirewallSteps[0].Step != 0 || !slices.Equal(d.FirewallSteps[0].Ports, []int{22, 8080}) {
		t.Errorf("firewall_steps %+v", d.FirewallSteps)
	}
	acts := portsActions(t, call, serverID)
	if len(acts) != 1 || acts[0].State != "succeeded" || acts[0].FinishedAt == nil {
		t.Fatalf("want exactly one succeeded ports action, got %+v", acts)
	}
	var task struct {
		State     string    `json:"state"`
		CreatedAt time.Time `json:"created_at"`
		Steps     []struct {
			Name, State string
		} `json:"steps"`
	}
	if c := call("GET", tasksPath+"/"+d.Targets[0].TaskID, nil, &task); c != http.StatusOK {
		t.Fatalf("get task %s: %d", d.Targets[0].TaskID, c)
	}
	if task.State != "succeeded" || len(task.Steps) != 1 || task.Steps[0].Name != "after" {
		t.Errorf("exec task %+v", task)
	}
	if task.CreatedAt.Before(*acts[0].FinishedAt) {
		t.Errorf("the exec step's task was created at %v, before the firewall step finished at %v", task.CreatedAt, *acts[0].FinishedAt)
	}
	var srv struct {
		Ports []int `json:"ports"`
	}
	call("GET", servers+"/"+serverID, nil, &srv)
	if !slices.Equal(srv.Ports, []int{22, 8080}) {
		t.Errorf("server ports %v", srv.Ports)
	}
}

func waitDeployment(t *testing.T, call caller, id string, limit time.Duration) fwDeployment {
	t.Helper()
	var d fwDeployment
	deadline := time.Now().Add(limit)
	for call("GET", "/v1/workspaces/default/deployments/"+id, nil, &d); d.State == "running"; call("GET", "/v1/workspaces/default/deployments/"+id, nil, &d) {
		if time.Now().After(deadline) {
			t.Fatalf("deployment still running after %v: %+v", limit, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return d
}

type bearerKey string

func (k bearerKey) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+string(k))
	return http.DefaultTransport.RoundTrip(r)
}

// TestDeployFirewallStepOnBothClouds deploys [firewall 22,8080 → exec] to a
// server on each simulated cloud, created with [22,80,443]: the cloud's
// firewall ends up holding exactly 22 and 8080, through one ports action,
// and the exec step ran after it.
func TestDeployFirewallStepOnBothClouds(t *testing.T) {
	h := start(t)
	v := h.env.Values
	_, do, _ := h.connect("digitalocean", "do", v["DO_SIM_TOKEN"])
	_, vu, _ := h.connect("vultr", "vultr", v["VULTR_SIM_KEY"])
	sDO := h.createServer(do.ID, "fw-do", "nyc3", "s-1vcpu-1gb", "debian-12", []int{22, 80, 443})
	sVU := h.createServer(vu.ID, "fw-vultr", "ewr", "vc2-1c-1gb", "debian-12", []int{22, 80, 443})
	for _, srv := range []server{sDO, sVU} {
		h.waitServer(srv.ID, 90*time.Second, "online", online)
		var d fwDeployment
		if c := h.api("POST", "/v1/workspaces/default/deployments", map[string]any{"servers": []string{srv.ID}, "plan": firewallPlan}, &d); c != http.StatusAccepted {
			t.Fatalf("deploy to %s: %d %+v", srv.Name, c, d)
		}
		d = waitDeployment(t, h.api, d.ID, 2*time.Minute)
		checkFirewallThenExec(t, h.api, d, srv.ID)
	}

	// The DigitalOcean firewall holds exactly tcp/22 and tcp/8080.
	found := false
	for _, fw := range h.env.DO.State().Firewalls {
		if fw.Name != provision.FirewallName(sDO.ID) {
			continue
		}
		found = true
		got := slices.Clone(fw.InboundPorts)
		sort.Strings(got)
		if !slices.Equal(got, []string{"tcp/22", "tcp/8080"}) {
			t.Errorf("digitalocean firewall %s: %v, want tcp/22 and tcp/8080", fw.Name, got)
		}
	}
	if !found {
		t.Errorf("no digitalocean firewall %s", provision.FirewallName(sDO.ID))
	}

	// The Vultr firewall group, read through govultr, holds exactly 22 and
	// 8080 (for IPv4 and IPv6).
	vc := govultr.NewClient(&http.Client{Transport: bearerKey(v["VULTR_SIM_KEY"])})
	if err := vc.SetBaseURL(v["VULTR_SIM_URL"]); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	groups, _, _, err := vc.FirewallGroup.List(ctx, &govultr.ListOptions{PerPage: 100})
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(groups, func(g govultr.FirewallGroup) bool { return g.Description == provision.FirewallName(sVU.ID) })
	if i < 0 {
		t.Fatalf("no vultr firewall group %s in %+v", provision.FirewallName(sVU.ID), groups)
	}
	rules, _, _, err := vc.FirewallRule.List(ctx, groups[i].ID, &govultr.ListOptions{PerPage: 100})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rules {
		got = append(got, r.IPType+"/"+strings.ToLower(r.Protocol)+"/"+r.Port)
	}
	sort.Strings(got)
	if want := []string{"v4/tcp/22", "v4/tcp/8080", "v6/tcp/22", "v6/tcp/8080"}; !slices.Equal(got, want) {
		t.Errorf("vultr firewall rules %v, want %v", got, want)
	}
}

// TestControlPlaneKilledDuringFirewallStep SIGKILLs `devpilot serve` while a
// deployment waits on its firewall step's ports action, starts it again,
// and checks the deployment finishes with that one action: no second ports
// action, and the DigitalOcean firewall was updated exactly once.
func TestControlPlaneKilledDuringFirewallStep(t *testing.T) {
	log := zap.NewNop()
	machines := sandbox.New(sandbox.Options{Dir: filepath.Join(t.TempDir(), "machines"), Logger: log})
	t.Cleanup(func() { _ = machines.Close() })
	do := dosim.New(dosim.Options{Runtime: machines, BootDelay: 100 * time.Millisecond})
	t.Cleanup(do.Close)
	sim := httptest.NewServer(do.Handler())
	t.Cleanup(sim.Close)
	token := "dop_v1_" + strings.Repeat("9", 64)
	do.AddToken(token, true)

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
	if c := p.do("POST", servers, map[string]any{"integration_id": in.ID, "name": "fw-crash", "region": "nyc3",
		"size": "s-1vcpu-1gb", "image": "debian-12", "ports": []int{22, 80, 443}}, &s); c != 202 {
		t.Fatalf("create: %d", c)
	}
	for deadline := time.Now().Add(2 * time.Minute); s.State != "online" || !s.Agent.Connected; time.Sleep(50 * time.Millisecond) {
		p.do("GET", servers+"/"+s.ID, nil, &s)
		if s.State == "failed" || time.Now().After(deadline) {
			t.Fatalf("server never online: %+v", s)
		}
	}
	var fwID string
	for _, fw := range do.State().Firewalls {
		if fw.Name == provision.FirewallName(s.ID) {
			fwID = fw.ID
		}
	}
	before := do.FirewallUpdates(fwID)

	// Every cloud call now takes a while, so the firewall step is still
	// under way when the control plane is killed.
	do.SetLatency(1500 * time.Millisecond)
	var d fwDeployment
	if c := p.do("POST", "/v1/workspaces/default/deployments", map[string]any{"servers": []string{s.ID}, "plan": firewallPlan}, &d); c != http.StatusAccepted {
		t.Fatalf("deploy: %d %+v", c, d)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(5 * time.Millisecond) {
		p.do("GET", "/v1/workspaces/default/deployments/"+d.ID, nil, &d)
		if len(d.Targets) == 1 && d.Targets[0].ActionID != "" {
			break
		}
		if d.State != "running" || time.Now().After(deadline) {
			t.Fatalf("the firewall step never started: %+v (log %s)", d, logf.Name())
		}
	}
	var a action
	p.do("GET", servers+"/"+s.ID+"/actions/"+d.Targets[0].ActionID, nil, &a)
	if a.State == "succeeded" {
		t.Fatalf("the ports action finished before the kill; the test proves nothing: %+v", a)
	}
	p.kill()
	p.start()
	do.SetLatency(0)

	d = waitDeployment(t, p.do, d.ID, 3*time.Minute)
	checkFirewallThenExec(t, p.do, d, s.ID)
	if n := do.FirewallUpdates(fwID) - before; n != 1 {
		t.Errorf("the firewall was updated %d times after the kill, want 1", n)
	}
	got := do.State().Firewalls
	for _, fw := range got {
		if fw.ID == fwID {
			ports := slices.Clone(fw.InboundPorts)
			sort.Strings(ports)
			if !slices.Equal(ports, []string{"tcp/22", "tcp/8080"}) {
				t.Errorf("firewall %v, want tcp/22 and tcp/8080", ports)
			}
		}
	}
}

// TestDeployFirewallStepFailureFailsTheServer: with the integration's token
// revoked, the firewall step's ports action fails; the deployment fails
// that server with the action's error and never runs the exec step.
func TestDeployFirewallStepFailureFailsTheServer(t *testing.T) {
	h := start(t)
	_, do, _ := h.connect("digitalocean", "do", h.env.Values["DO_SIM_TOKEN"])
	srv := h.createServer(do.ID, "fw-fail", "nyc3", "s-1vcpu-1gb", "debian-12", []int{22, 80, 443})
	h.waitServer(srv.ID, 90*time.Second, "online", online)
	h.env.DO.RemoveToken(h.env.Values["DO_SIM_TOKEN"])
	var d fwDeployment
	if c := h.api("POST", "/v1/workspaces/default/deployments", map[string]any{"servers": []string{srv.ID}, "plan": firewallPlan}, &d); c != http.StatusAccepted {
		t.Fatalf("deploy: %d %+v", c, d)
	}
	d = waitDeployment(t, h.api, d.ID, 2*time.Minute)
	if d.State != "failed" || len(d.Targets) != 1 || d.Targets[0].State != "failed" {
		t.Fatalf("deployment: %+v", d)
	}
	if e := d.Targets[0].Error; !strings.Contains(e, "firewall step 1 (ports [22 8080])") {
		t.Errorf("target error %q does not name the firewall step", e)
	}
	if d.Targets[0].TaskID != "" {
		t.Errorf("the exec step ran (task %s) after the firewall step failed", d.Targets[0].TaskID)
	}
	acts := portsActions(t, h.api, srv.ID)
	if len(acts) != 1 || acts[0].State != "failed" || acts[0].Error == nil || !strings.Contains(d.Targets[0].Error, acts[0].Error.Message) {
		t.Errorf("ports actions %+v; target error %q should carry the action's", acts, d.Targets[0].Error)
	}
}
