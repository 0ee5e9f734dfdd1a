package devenv_test

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/agent/layout"
	"github.com/devpilot/devpilot/agent/update"
	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/shared/release"
)

// actEnd posts an action and waits for it to end, whatever its outcome.
func (h *harness) actEnd(srv server, body map[string]any, limit time.Duration) action {
	h.t.Helper()
	var a action
	path := servers + "/" + srv.ID + "/actions"
	if c := h.call("", "POST", path, body, &a); c != http.StatusAccepted || a.ID == "" {
		h.t.Fatalf("POST %v: %d %+v", body, c, a)
	}
	deadline := time.Now().Add(limit)
	for a.State != "succeeded" && a.State != "failed" {
		if time.Now().After(deadline) {
			info, _ := h.env.Machines.Machine(srv.InstanceID)
			b, _ := os.ReadFile(filepath.Join(info.Root, "var/log/devpilot-agent.log"))
			if len(b) > 6000 {
				b = b[len(b)-6000:]
			}
			h.t.Fatalf("%s on %s still %s after %s: steps %+v\nmachine %+v\nagent log tail:\n%s", a.Type, srv.Name, a.State, limit, a.Steps, info, b)
		}
		time.Sleep(100 * time.Millisecond)
		h.call("", "GET", path+"/"+a.ID, nil, &a)
	}
	return a
}

func (h *harness) agentVersion(id string) string {
	// From the API, not one hub: with several control planes the session
	// may be held by any of them.
	var srv apitypes.Server
	h.call("", "GET", servers+"/"+id, nil, &srv)
	if !srv.Agent.Connected {
		return ""
	}
	v, _, _ := strings.Cut(srv.Agent.Version, " ")
	return v
}

// lastUpdateIs checks the server view's agent.last_update.
func (h *harness) lastUpdateIs(serverID, actionID, result, from, to, reason string) {
	h.t.Helper()
	var s apitypes.Server
	h.call("", "GET", servers+"/"+serverID, nil, &s)
	lu := s.Agent.LastUpdate
	if lu == nil || lu.ActionID != actionID || lu.Result != result || lu.FromVersion != from || lu.ToVersion != to ||
		!strings.Contains(lu.Reason, reason) || lu.ReportedAt == nil {
		h.t.Errorf("server view: last update %+v, want %s %s → %s (%q) of %s", lu, result, from, to, reason, actionID)
	}
}

// TestAgentUpdateAndRollback: one sandboxed server on version A (the
// build this environment installs) is sent a broken B' (a signed program
// that exits at once): the guard on the "server" rolls it back to A by
// itself and the action fails naming the rollback. Then B, a real agent
// build, is installed and reconnects: the action succeeds. A binary the
// control plane serves tampered, with the real release's metadata, is
// refused by the agent, which keeps running B. The server view shows each
// update's outcome.
func TestAgentUpdateAndRollback(t *testing.T) {
	h := start(t)
	dir := t.TempDir()
	b := filepath.Join(dir, "devpilot-agent-b")
	build := exec.Command("go", "build", "-ldflags", "-X github.com/devpilot/devpilot/shared/version.Version=1.1.0-test",
		"-o", b, "github.com/devpilot/devpilot/cmd/devpilot-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build B: %v\n%s", err, out)
	}
	broken := filepath.Join(dir, "devpilot-agent-broken")
	if err := os.WriteFile(broken, []byte("#!/bin/sh\necho 'B-prime: exiting at once' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for v, p := range map[string]string{"1.1.0-test": b, "1.2.0-broken": broken} {
		if _, err := h.env.AddRelease(p, v); err != nil {
			t.Fatalf("add %s: %v", v, err)
		}
	}
	// A release signed by a key the control plane does not trust is refused.
	stranger, _ := release.GenerateKey()
	if _, err := h.env.AddReleaseSigned(b, "1.3.0", stranger); err == nil {
		t.Error("a release signed by an untrusted key was added")
	}

	_, do, _ := h.connect("digitalocean", "do", h.env.Values["DO_SIM_TOKEN"])
	srv := h.waitServer(h.createServer(do.ID, "upd-1", "nyc3", "s-1vcpu-1gb", "debian-12", nil).ID, 90*time.Second, "online", online)
	a := h.agentVersion(srv.ID)
	if a == "" || a == "1.1.0-test" {
		t.Fatalf("agent A reports %q", a)
	}
	info, _ := h.env.Machines.Machine(srv.InstanceID)
	p := layout.New(info.Root)
	if update.CurrentVersion(p) != a {
		t.Fatalf("current -> %q, want the installed %s", update.CurrentVersion(p), a)
	}

	// B': rolled back to A by the server, not by the control plane.
	act := h.actEnd(srv, map[string]any{"type": "update_agent", "version": "1.2.0-broken"}, 3*time.Minute)
	if act.State != "failed" || act.Error == nil || act.Error.Code != "update_rolled_back" ||
		!strings.Contains(act.Error.Message, "failed to start 3 times") {
		t.Fatalf("broken update: %s %+v, steps %+v", act.State, act.Error, act.Steps)
	}
	h.waitServer(srv.ID, 60*time.Second, "online on A again", online)
	if got := h.agentVersion(srv.ID); got != a {
		t.Errorf("after the rollback the agent runs %q, want %s", got, a)
	}
	if update.CurrentVersion(p) != a {
		t.Errorf("current -> %q after the rollback", update.CurrentVersion(p))
	}
	if act.Params["from_version"] != a {
		t.Errorf("params %v", act.Params)
	}
	h.lastUpdateIs(srv.ID, act.ID, apitypes.UpdateResultRolledBack, a, "1.2.0-broken", "failed to start 3 times")

	// B: installed, back, confirmed.
	act = h.actEnd(srv, map[string]any{"type": "update_agent", "version": "1.1.0-test"}, 3*time.Minute)
	if act.State != "succeeded" {
		t.Fatalf("update to B: %s %+v, steps %+v", act.State, act.Error, act.Steps)
	}
	for _, st := range act.Steps {
		t.Logf("update_agent %-9s %v  %s", st.Name, st.FinishedAt.Sub(*st.StartedAt).Round(time.Millisecond), st.Detail)
	}
	if got := h.agentVersion(srv.ID); got != "1.1.0-test" {
		t.Errorf("after the update the agent runs %q", got)
	}
	h.lastUpdateIs(srv.ID, act.ID, apitypes.UpdateResultUpdated, a, "1.1.0-test", "")
	if _, pending := update.ReadPending(p); pending {
		t.Error("the new agent left the pending marker after its session")
	}
	if update.CurrentVersion(p) != "1.1.0-test" {
		t.Errorf("current -> %q", update.CurrentVersion(p))
	}

	// Tampered: the control plane serves other bytes under B's release
	// (same metadata, same signature). The agent refuses; B keeps running.
	if _, err := h.env.AddRelease(b, "1.4.0-tampered"); err != nil {
		t.Fatal(err)
	}
	rel, err := h.env.App.Releases.Get("1.4.0-tampered", "linux", runtime.GOARCH)
	if err != nil {
		t.Fatal(err)
	}
	orig, _ := os.ReadFile(rel.Path)
	evil := append([]byte(nil), orig...)
	evil[len(evil)/2] ^= 0xff
	if err := os.WriteFile(rel.Path, evil, 0o755); err != nil {
		t.Fatal(err)
	}
	if rel2, _ := h.env.App.Releases.Get("1.4.0-tampered", "linux", runtime.GOARCH); rel2.SHA256 != rel.SHA256 {
		t.Fatal("the store noticed; this test wants it to serve the tampered bytes")
	}
	act = h.actEnd(srv, map[string]any{"type": "update_agent", "version": "1.4.0-tampered"}, 2*time.Minute)
	if act.State != "failed" || act.Error == nil || act.Error.Code != "update_refused" || !strings.Contains(act.Error.Message, "sha256") {
		t.Fatalf("tampered update: %s %+v", act.State, act.Error)
	}
	h.lastUpdateIs(srv.ID, act.ID, apitypes.UpdateResultRefused, "1.1.0-test", "1.4.0-tampered", "sha256")
	if got := h.agentVersion(srv.ID); got != "1.1.0-test" {
		t.Errorf("after the refusal the agent runs %q", got)
	}
	if _, err := os.Stat(filepath.Join(p.VersionsDir(), "1.4.0-tampered")); !os.IsNotExist(err) {
		t.Errorf("the refused binary is on the server: %v", err)
	}
}

// TestAgentUpdateSurvivesControlPlaneRestart: the control plane restarts
// while update_agent runs (right after send): the restarted one resumes
// the action, which ends succeeded, and the agent installed the update
// once (one restart into it, the id handled once).
func TestAgentUpdateSurvivesControlPlaneRestart(t *testing.T) {
	h := start(t)
	b := filepath.Join(t.TempDir(), "devpilot-agent-b")
	build := exec.Command("go", "build", "-ldflags", "-X github.com/devpilot/devpilot/shared/version.Version=1.1.0-restart",
		"-o", b, "github.com/devpilot/devpilot/cmd/devpilot-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build B: %v\n%s", err, out)
	}
	if _, err := h.env.AddRelease(b, "1.1.0-restart"); err != nil {
		t.Fatal(err)
	}
	_, do, _ := h.connect("digitalocean", "do", h.env.Values["DO_SIM_TOKEN"])
	srv := h.waitServer(h.createServer(do.ID, "upd-r", "nyc3", "s-1vcpu-1gb", "debian-12", nil).ID, 90*time.Second, "online", online)
	before, _ := h.env.Machines.Machine(srv.InstanceID)

	var a action
	path := servers + "/" + srv.ID + "/actions"
	if c := h.call("", "POST", path, map[string]any{"type": "update_agent", "version": "1.1.0-restart"}, &a); c != http.StatusAccepted {
		t.Fatalf("POST: %d %+v", c, a)
	}
	deadline := time.Now().Add(time.Minute)
	for len(a.Steps) == 0 || a.Steps[0].State != "done" {
		if time.Now().After(deadline) || a.State == "failed" {
			t.Fatalf("send never done: %+v", a)
		}
		time.Sleep(20 * time.Millisecond)
		h.call("", "GET", path+"/"+a.ID, nil, &a)
	}
	if err := h.env.RestartControlPlane(t.Context(), h.dir); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(3 * time.Minute)
	for a.State != "succeeded" {
		if a.State == "failed" || time.Now().After(deadline) {
			t.Fatalf("after the restart: %s %+v steps %+v", a.State, a.Error, a.Steps)
		}
		time.Sleep(100 * time.Millisecond)
		h.call("", "GET", path+"/"+a.ID, nil, &a)
	}
	for _, st := range a.Steps {
		t.Logf("update_agent %-9s %s", st.Name, st.Detail)
	}
	after, _ := h.env.Machines.Machine(srv.InstanceID)
	if after.AgentStarts != before.AgentStarts+1 {
		t.Errorf("agent started %d times during the update, want once (into B)", after.AgentStarts-before.AgentStarts)
	}
	seen, _ := os.ReadFile(layout.New(after.Root).UpdatesSeen())
	if n := strings.Count(string(seen), a.ID); n != 1 {
		t.Errorf("update id handled %d times: %q", n, seen)
	}
	if got := h.agentVersion(srv.ID); got != "1.1.0-restart" {
		t.Errorf("agent runs %q", got)
	}
}
