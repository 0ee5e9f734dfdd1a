//go:build e2e

package e2e_test

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// TestAgentUpdateRealContainer: on a real booted container under systemd,
// update_agent moves the agent from A (the installed build) to B (a real
// agent build with another version); then a broken B' (a signed program
// that exits at once) is sent, and the update guard (ExecStartPre=) puts
// B back by itself, with no help from the control plane;
// `systemctl status devpilot-agent` ends active on the version it rolled
// back to.
func TestAgentUpdateRealContainer(t *testing.T) {
	t.Parallel()
	h := start(t, envOptions{agentTimeout: 6 * time.Minute})
	dir := t.TempDir()
	b := filepath.Join(dir, "devpilot-agent-b")
	build := exec.Command("go", "build", "-ldflags", "-X github.com/devpilot/devpilot/shared/version.Version=1.1.0-e2e",
		"-o", b, "github.com/devpilot/devpilot/cmd/devpilot-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build B: %v\n%s", err, out)
	}
	broken := filepath.Join(dir, "devpilot-agent-broken")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\necho 'B-prime: exiting at once' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for v, p := range map[string]string{"1.1.0-e2e": b, "1.2.0-broken": broken} {
		if _, err := h.env.AddRelease(p, v); err != nil {
			t.Fatalf("add %s: %v", v, err)
		}
	}
	do := h.connect("digitalocean", h.env.Values["DO_SIM_TOKEN"])
	s := h.createServer(do, "e2e-update", "nyc3", "s-1vcpu-1gb", "debian-12")
	connected := func(s apitypes.Server) bool { return s.State == "online" && s.Agent.Connected }
	got := h.waitServer(t, s.ID, 5*time.Minute, "online", connected)
	m, ok := h.rt.Machine(got.InstanceID)
	if !ok {
		t.Fatalf("no container for instance %s", got.InstanceID)
	}
	act := func(version string) apitypes.Action {
		t.Helper()
		var a apitypes.Action
		if c := h.call("POST", servers+"/"+s.ID+"/actions", map[string]any{"type": "update_agent", "version": version}, &a); c != http.StatusAccepted {
			t.Fatalf("POST update_agent %s: %d %+v", version, c, a)
		}
		deadline := time.Now().Add(6 * time.Minute)
		for a.State != apitypes.ActionSucceeded && a.State != apitypes.ActionFailed {
			if time.Now().After(deadline) {
				t.Fatalf("update_agent %s still %s: %+v", version, a.State, a.Steps)
			}
			time.Sleep(250 * time.Millisecond)
			h.call("GET", servers+"/"+s.ID+"/actions/"+a.ID, nil, &a)
		}
		for _, st := range a.Steps {
			if st.StartedAt != nil && st.FinishedAt != nil {
				t.Logf("update_agent %s %-9s %v %s", version, st.Name, st.FinishedAt.Sub(*st.StartedAt).Round(time.Millisecond), st.Detail)
			}
		}
		return a
	}
	if out, _ := sh(t, m, "readlink /usr/lib/devpilot-agent/current; systemctl show -p ExecStart --value devpilot-agent"); !strings.Contains(out, "versions/") ||
		!strings.Contains(out, "/usr/lib/devpilot-agent/current/devpilot-agent") {
		t.Fatalf("install layout: %q", out)
	}

	if a := act("1.1.0-e2e"); a.State != apitypes.ActionSucceeded {
		t.Fatalf("A → B: %s %+v", a.State, a.Error)
	}
	h.waitServer(t, s.ID, 2*time.Minute, "online on B", connected)
	if out, _ := sh(t, m, "readlink /usr/lib/devpilot-agent/current"); out != "versions/1.1.0-e2e" {
		t.Errorf("current after A → B: %q", out)
	}

	a := act("1.2.0-broken")
	if a.State != apitypes.ActionFailed || a.Error == nil || a.Error.Code != "update_rolled_back" {
		t.Fatalf("B': %s %+v, want update_rolled_back", a.State, a.Error)
	}
	h.waitServer(t, s.ID, 2*time.Minute, "online after the rollback", connected)
	out, _ := sh(t, m, "readlink /usr/lib/devpilot-agent/current; systemctl is-active devpilot-agent; systemctl status devpilot-agent --no-pager | head -5; journalctl -u devpilot-agent --no-pager | grep -c 'update guard: rolled back'")
	t.Logf("after the rollback:\n%s", out)
	if !strings.HasPrefix(out, "versions/1.1.0-e2e\nactive\n") || !strings.Contains(out, "/usr/lib/devpilot-agent/current/devpilot-agent run") {
		t.Errorf("after B': %q, want current back on 1.1.0-e2e and the unit active", out)
	}
}
