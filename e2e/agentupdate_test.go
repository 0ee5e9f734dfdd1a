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
// agent build with another version) and back to A (a rollout of A is how
// an operator undoes B); then a broken B' (a signed program that exits at
// once) is sent, and the update guard (ExecStartPre=) puts A back by
// itself, with no help from the control plane: `systemctl status
// devpilot-agent` ends active, its main process A's binary.
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

	vA := strings.Fields(got.Agent.Version)[0]
	onVersion := func(v string) func(apitypes.Server) bool {
		return func(s apitypes.Server) bool { return connected(s) && strings.Fields(s.Agent.Version)[0] == v }
	}
	// current is the unit's view: the `current` link, whether the unit is
	// active, and the binary its main process runs.
	current := func() string {
		t.Helper()
		out, _ := sh(t, m, "readlink /usr/lib/devpilot-agent/current; systemctl is-active devpilot-agent; readlink /proc/$(systemctl show -p MainPID --value devpilot-agent)/exe")
		return out
	}
	want := func(v string) string {
		return "versions/" + v + "\nactive\n/usr/lib/devpilot-agent/versions/" + v + "/devpilot-agent"
	}

	if a := act("1.1.0-e2e"); a.State != apitypes.ActionSucceeded {
		t.Fatalf("A → B: %s %+v", a.State, a.Error)
	}
	h.waitServer(t, s.ID, 2*time.Minute, "online on B", onVersion("1.1.0-e2e"))
	if out := current(); out != want("1.1.0-e2e") {
		t.Errorf("after A → B: %q, want %q", out, want("1.1.0-e2e"))
	}
	if a := act(vA); a.State != apitypes.ActionSucceeded {
		t.Fatalf("B → A: %s %+v", a.State, a.Error)
	}
	h.waitServer(t, s.ID, 2*time.Minute, "online on A", onVersion(vA))

	a := act("1.2.0-broken")
	if a.State != apitypes.ActionFailed || a.Error == nil || a.Error.Code != "update_rolled_back" {
		t.Fatalf("B': %s %+v, want update_rolled_back", a.State, a.Error)
	}
	h.waitServer(t, s.ID, 2*time.Minute, "online on A after the rollback", onVersion(vA))
	if out := current(); out != want(vA) {
		t.Errorf("after B': %q, want %q", out, want(vA))
	}
	status, _ := sh(t, m, "systemctl status devpilot-agent --no-pager --lines=0")
	t.Logf("systemctl status devpilot-agent:\n%s", status)
	if !strings.Contains(status, "Active: active (running)") {
		t.Errorf("systemctl status after B': want active (running)")
	}
	if n, _ := sh(t, m, "journalctl -u devpilot-agent --no-pager | grep -c 'update guard: rolled back update '"+a.ID); n != "1" {
		t.Errorf("the guard's rollback of %s logged %s times, want once", a.ID, n)
	}
}
