//go:build e2e

package e2e_test

import (
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// TestPowerOffOnRebootRealContainer: power off, power on and reboot of a
// real booted container through the API; the container really stops, and
// its agent (a systemd unit) comes back online by itself after each. The
// reboot is graceful: the agent is asked and reboots the container through
// systemd (D-Bus), and the simulated cloud sees no reboot action.
func TestPowerOffOnRebootRealContainer(t *testing.T) {
	t.Parallel()
	h := start(t, envOptions{agentTimeout: 6 * time.Minute})
	do := h.connect("digitalocean", h.env.Values["DO_SIM_TOKEN"])
	s := h.createServer(do, "e2e-life", "nyc3", "s-1vcpu-1gb", "debian-12")
	connected := func(s apitypes.Server) bool { return s.State == "online" && s.Agent.Connected }
	got := h.waitServer(t, s.ID, 5*time.Minute, "online", connected)
	m, ok := h.rt.Machine(got.InstanceID)
	if !ok {
		t.Fatalf("no container for instance %s", got.InstanceID)
	}
	act := func(body map[string]any) apitypes.Action {
		t.Helper()
		var a apitypes.Action
		if c := h.call("POST", servers+"/"+s.ID+"/actions", body, &a); c != http.StatusAccepted {
			t.Fatalf("POST %v: %d %+v", body, c, a)
		}
		deadline := time.Now().Add(5 * time.Minute)
		for a.State != apitypes.ActionSucceeded {
			if a.State == apitypes.ActionFailed || time.Now().After(deadline) {
				t.Fatalf("%s: %s %+v steps %+v", a.Type, a.State, a.Error, a.Steps)
			}
			time.Sleep(200 * time.Millisecond)
			h.call("GET", servers+"/"+s.ID+"/actions/"+a.ID, nil, &a)
		}
		for _, st := range a.Steps {
			if st.StartedAt != nil && st.FinishedAt != nil {
				t.Logf("%s %-14s %v %s", a.Type, st.Name, st.FinishedAt.Sub(*st.StartedAt).Round(time.Millisecond), st.Detail)
			}
		}
		return a
	}

	act(map[string]any{"type": "power_off"})
	if m.Running() {
		t.Error("container still running after power_off")
	}
	h.waitServer(t, s.ID, time.Minute, "stopped without an agent", func(s apitypes.Server) bool { return s.State == "stopped" && !s.Agent.Connected })

	boots := m.Boots()
	act(map[string]any{"type": "power_on"})
	if !m.Running() || m.Boots() != boots+1 {
		t.Errorf("after power_on: running %v, boots %d (was %d)", m.Running(), m.Boots(), boots)
	}
	h.waitServer(t, s.ID, 2*time.Minute, "online after power on", connected)

	droplet, _ := strconv.Atoi(got.InstanceID)
	cloudReboots := h.env.DO.ActionCounts(droplet)["reboot"]
	a := act(map[string]any{"type": "reboot"})
	if a.Params["via"] != "agent" || !strings.Contains(a.Steps[0].Detail, "asked the agent") {
		t.Errorf("reboot params %v, first step %q; want it asked of the agent", a.Params, a.Steps[0].Detail)
	}
	if n := h.env.DO.ActionCounts(droplet)["reboot"]; n != cloudReboots {
		t.Errorf("the cloud saw %d reboots (was %d); the agent's reboot must not use it", n, cloudReboots)
	}
	if m.Boots() != boots+2 {
		t.Errorf("after reboot: boots %d, want %d", m.Boots(), boots+2)
	}
	h.waitServer(t, s.ID, 2*time.Minute, "online after reboot", connected)
	if out, _ := sh(t, m, "systemctl is-active devpilot-agent"); out != "active" {
		t.Errorf("devpilot-agent after reboot: %q", out)
	}
}
