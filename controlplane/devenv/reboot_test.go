package devenv_test

import (
	"maps"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/bootstrap/sandbox"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
	"github.com/devpilot/devpilot/controlplane/devenv"
)

// TestGracefulRebootThroughTheAgent: on both clouds a reboot without hard
// asks the agent (protocol 1.1): the sandboxed machine reboots (a new boot
// id, the agent back by itself), the job saw the new boot, and the
// simulator counts no cloud action for it.
func TestGracefulRebootThroughTheAgent(t *testing.T) {
	h := start(t)
	v := h.env.Values
	_, do, _ := h.connect("digitalocean", "do", v["DO_SIM_TOKEN"])
	_, vu, _ := h.connect("vultr", "vultr", v["VULTR_SIM_KEY"])
	sDO := h.createServer(do.ID, "boot-do", "nyc3", "s-1vcpu-1gb", "debian-12", nil)
	sVU := h.createServer(vu.ID, "boot-vultr", "ewr", "vc2-1c-1gb", "debian-12", nil)
	for _, c := range []struct {
		srv    server
		counts func(string) map[string]int
	}{
		{sDO, func(id string) map[string]int { n, _ := strconv.Atoi(id); return h.env.DO.ActionCounts(n) }},
		{sVU, h.env.Vultr.ActionCounts},
	} {
		srv := h.waitServer(c.srv.ID, 90*time.Second, "online", online)
		before, _ := h.env.Machines.Machine(srv.InstanceID)
		cloudBefore := maps.Clone(c.counts(srv.InstanceID))
		a := h.act(srv, map[string]any{"type": "reboot"})
		after, _ := h.env.Machines.Machine(srv.InstanceID)
		if after.Reboots != before.Reboots+1 || after.BootID == before.BootID || after.BootID == "" {
			t.Errorf("%s: machine reboots %d → %d, boot %q → %q; want one reboot and a new boot id",
				srv.Name, before.Reboots, after.Reboots, before.BootID, after.BootID)
		}
		if cloudAfter := c.counts(srv.InstanceID); !maps.Equal(cloudBefore, cloudAfter) {
			t.Errorf("%s: cloud actions %v → %v; a reboot by the agent must not use the cloud", srv.Name, cloudBefore, cloudAfter)
		}
		if !strings.Contains(a.Steps[0].Detail, "asked the agent") || !strings.Contains(a.Steps[1].Detail, after.BootID) {
			t.Errorf("%s steps: %q / %q; want the agent asked and its new boot %s", srv.Name, a.Steps[0].Detail, a.Steps[1].Detail, after.BootID)
		}
		if a.Params["via"] != "agent" {
			t.Errorf("%s params %v, want via agent", srv.Name, a.Params)
		}
		h.waitServer(srv.ID, 30*time.Second, "online after the reboot", online)
	}
}

// TestRebootOfAnOldAgentUsesTheCloud: an agent that does not advertise
// reboots (protocol 1.0 behaviour) gets the cloud's graceful reboot, and
// the step says why.
func TestRebootOfAnOldAgentUsesTheCloud(t *testing.T) {
	h := startWith(t, func(c *devenv.Config) { c.AgentEnv = []string{"DEVPILOT_AGENT_REBOOT=none"} })
	_, do, _ := h.connect("digitalocean", "do", h.env.Values["DO_SIM_TOKEN"])
	srv := h.waitServer(h.createServer(do.ID, "old-agent", "nyc3", "s-1vcpu-1gb", "debian-12", nil).ID, 90*time.Second, "online", online)
	a := h.act(srv, map[string]any{"type": "reboot"})
	n, _ := strconv.Atoi(srv.InstanceID)
	if got := h.env.DO.ActionCounts(n)["reboot"]; got != 1 {
		t.Errorf("droplet reboot actions = %d, want 1", got)
	}
	if info, _ := h.env.Machines.Machine(srv.InstanceID); info.Reboots != 0 {
		t.Errorf("the old agent rebooted its machine itself (%d)", info.Reboots)
	}
	if !strings.Contains(a.Steps[0].Detail, "does not offer reboots") || a.Params["via"] != "cloud" {
		t.Errorf("step %q, params %v; want the fallback named", a.Steps[0].Detail, a.Params)
	}
}

// TestControlPlaneKilledDuringGracefulReboot SIGKILLs `devpilot serve`
// while the graceful reboot's steps run: the restarted control plane
// resumes waiting, never asks the agent twice, and the cloud sees no
// reboot.
func TestControlPlaneKilledDuringGracefulReboot(t *testing.T) {
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
	if c := p.do("POST", servers, map[string]any{"integration_id": in.ID, "name": "reboot-crash", "region": "nyc3",
		"size": "s-1vcpu-1gb", "image": "debian-12"}, &s); c != 202 {
		t.Fatalf("create: %d", c)
	}
	for deadline := time.Now().Add(2 * time.Minute); s.State != "online"; time.Sleep(50 * time.Millisecond) {
		p.do("GET", servers+"/"+s.ID, nil, &s)
		if s.State == "failed" || time.Now().After(deadline) {
			t.Fatalf("server never online: %+v", s)
		}
	}
	before, _ := machines.Machine(s.InstanceID)

	var a action
	if c := p.do("POST", servers+"/"+s.ID+"/actions", map[string]any{"type": "reboot"}, &a); c != 202 {
		t.Fatalf("POST reboot: %d", c)
	}
	path := servers + "/" + s.ID + "/actions/" + a.ID
	killed := 0
	for i := range a.Steps {
		for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(5 * time.Millisecond) {
			p.do("GET", path, nil, &a)
			if a.Steps[i].State == "running" {
				p.kill()
				killed++
				p.start()
				break
			}
			if a.Steps[i].State == "done" || a.State == "succeeded" {
				t.Logf("step %s finished before it could be killed", a.Steps[i].Name)
				break
			}
			if a.State == "failed" || time.Now().After(deadline) {
				t.Fatalf("step %s: %s %+v (log %s)", a.Steps[i].Name, a.State, a.Error, logf.Name())
			}
		}
	}
	// A kill between recording "asked" and asking leaves the agent
	// unasked: the job then falls back to the cloud after
	// --agent-reboot-timeout (default 5 min), so the deadline is longer.
	for deadline := time.Now().Add(8 * time.Minute); a.State != "succeeded"; time.Sleep(50 * time.Millisecond) {
		p.do("GET", path, nil, &a)
		if a.State == "failed" || time.Now().After(deadline) {
			t.Fatalf("reboot after kills: %s %+v (log %s)", a.State, a.Error, logf.Name())
		}
	}
	n, _ := strconv.Atoi(s.InstanceID)
	after, _ := machines.Machine(s.InstanceID)
	agentReboots, cloudReboots := after.Reboots-before.Reboots, do.ActionCounts(n)["reboot"]
	if agentReboots+cloudReboots != 1 {
		t.Errorf("after %d kills: %d reboots by the agent, %d by the cloud; want exactly one", killed, agentReboots, cloudReboots)
	}
	if killed == 0 {
		t.Errorf("no step was killed while running; the test proved little")
	}
	t.Logf("killed %d times; agent reboots %d, cloud reboots %d; steps %+v", killed, agentReboots, cloudReboots, a.Steps)
}

// TestGracefulRebootFallsBackToTheCloud: an agent that was asked but does
// not come back with a new boot (here: its boot id file never changes)
// gets the cloud's reboot after --agent-reboot-timeout, recorded as the
// fallback.
func TestGracefulRebootFallsBackToTheCloud(t *testing.T) {
	fixed := filepath.Join(t.TempDir(), "boot_id")
	if err := os.WriteFile(fixed, []byte("same-boot-forever\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h := startWith(t, func(c *devenv.Config) {
		c.AgentEnv = []string{"DEVPILOT_AGENT_BOOT_ID_FILE=" + fixed}
		c.AgentRebootTimeout = 3 * time.Second
	})
	_, do, _ := h.connect("digitalocean", "do", h.env.Values["DO_SIM_TOKEN"])
	srv := h.waitServer(h.createServer(do.ID, "stuck-boot", "nyc3", "s-1vcpu-1gb", "debian-12", nil).ID, 90*time.Second, "online", online)
	a := h.act(srv, map[string]any{"type": "reboot"})
	n, _ := strconv.Atoi(srv.InstanceID)
	if got := h.env.DO.ActionCounts(n)["reboot"]; got != 1 {
		t.Errorf("droplet reboot actions = %d, want 1 (the fallback)", got)
	}
	fb, _ := a.Params["fallback"].(string)
	if a.Params["via"] != "agent" || !strings.Contains(fb, "did not come back with a new boot") ||
		!strings.Contains(a.Steps[1].Detail, "fell back to the cloud's reboot") {
		t.Errorf("params %v, wait_reboot %q; want the fallback recorded", a.Params, a.Steps[1].Detail)
	}
}
