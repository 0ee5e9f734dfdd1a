package devenv_test

import (
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/bootstrap/sandbox"
	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
)

// TestRolloutSurvivesSIGKILL: `devpilot serve` (a real process, releases
// made with the operator's commands: agents keygen, sign, releases add) is
// SIGKILLed while a rollout over four agents is updating them; the
// restarted process goes on where it was. The rollout ends succeeded,
// every agent runs B, each server got exactly one update action for B,
// and each agent's own report of its last update names that action.
// Then a bad signature, served: restarted trusting a key its agents never
// pinned (a rotation done wrong, a key slipped into its configuration),
// the control plane serves a release signed with it, and the agent
// refuses it before installing anything and keeps running B.
func TestRolloutSurvivesSIGKILL(t *testing.T) {
	const vB = "1.1.0-kill"
	dir := t.TempDir()
	cli := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(filepath.Join(agentDir, "devpilot"), args...).CombinedOutput(); err != nil {
			t.Fatalf("devpilot %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	bBin := filepath.Join(dir, "devpilot-agent")
	build := exec.Command("go", "build", "-ldflags", "-X github.com/devpilot/devpilot/shared/version.Version="+vB,
		"-o", bBin, "github.com/devpilot/devpilot/cmd/devpilot-agent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build B: %v\n%s", err, out)
	}
	key := filepath.Join(dir, "release.key")
	dataDir := t.TempDir()
	cli("agents", "keygen", "--out", key)
	cli("agents", "sign", "--key", key, bBin, "--version", vB, "--arch", runtime.GOARCH)
	cli("agents", "releases", "add", bBin, "--version", vB, "--data-dir", dataDir, "--agent-release-key", key+".pub")

	machines := sandbox.New(sandbox.Options{Dir: filepath.Join(t.TempDir(), "machines"), Logger: zap.NewNop()})
	t.Cleanup(func() { _ = machines.Close() })
	do := dosim.New(dosim.Options{Runtime: machines, BootDelay: 200 * time.Millisecond})
	t.Cleanup(do.Close)
	sim := httptest.NewServer(do.Handler())
	t.Cleanup(sim.Close)
	token := "dop_v1_" + strings.Repeat("8", 64)
	do.AddToken(token, true)
	addr := freeAddr(t)
	logf, err := os.Create(filepath.Join(t.TempDir(), "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = logf.Close() }()
	p := &serveProc{t: t, dataDir: dataDir, url: "https://" + addr, log: logf, env: databaseEnv(t), args: []string{"serve",
		"--data-dir", dataDir, "--listen", addr, "--digitalocean-api-url", sim.URL, "--agent-dir", agentDir,
		"--agent-release-key", key + ".pub", "--log-level", "debug"}}
	p.start()
	t.Cleanup(p.kill)

	var in integration
	if c := p.do("POST", base, map[string]string{"provider": "digitalocean", "access_key": "do", "secret_key": token}, &in); c != 201 {
		t.Fatalf("connect: %d", c)
	}
	var ids []string
	for _, name := range []string{"kill-0", "kill-1", "kill-2", "kill-3"} {
		var s server
		if c := p.do("POST", servers, map[string]any{"integration_id": in.ID, "name": name, "region": "nyc3",
			"size": "s-1vcpu-1gb", "image": "debian-12"}, &s); c != 202 {
			t.Fatalf("create %s: %d", name, c)
		}
		ids = append(ids, s.ID)
	}
	view := func(id string) apitypes.Server {
		var s apitypes.Server
		p.do("GET", servers+"/"+id, nil, &s)
		return s
	}
	waitFor := func(what string, limit time.Duration, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(limit); !ok(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %s (log %s)", what, limit, logf.Name())
			}
		}
	}
	for _, id := range ids {
		waitFor(id+" online", 3*time.Minute, func() bool { s := view(id); return s.State == "online" && s.Agent.Connected })
	}

	var r apitypes.Rollout
	if c := p.do("POST", rollouts, map[string]any{"version": vB, "canary": 1, "max_parallel": 1, "health_window_s": 2}, &r); c != 202 {
		t.Fatalf("create rollout: %d %+v", c, r)
	}
	get := func() apitypes.Rollout {
		var r2 apitypes.Rollout
		p.do("GET", rollouts+"/"+r.ID, nil, &r2)
		return r2
	}
	// Killed while a target past the canary is updating: the canary is
	// done, the rest are not.
	waitFor("a second target updating", 3*time.Minute, func() bool {
		g := get()
		return g.Counts[apitypes.TargetHealthy] >= 1 && g.Counts[apitypes.TargetUpdating] >= 1
	})
	p.kill()
	p.start()
	waitFor("the rollout ended", 4*time.Minute, func() bool {
		r = get()
		return r.State == apitypes.RolloutSucceeded || r.State == apitypes.RolloutFailed
	})
	if r.State != apitypes.RolloutSucceeded || r.Counts[apitypes.TargetHealthy] != len(ids) {
		t.Fatalf("after the kill: %s %q %v", r.State, r.Reason, r.Counts)
	}
	for _, id := range ids {
		var list struct {
			Actions []apitypes.Action `json:"actions"`
		}
		p.do("GET", servers+"/"+id+"/actions", nil, &list)
		var mine []string
		for _, a := range list.Actions {
			if a.Type == apitypes.ActionUpdateAgent {
				mine = append(mine, a.ID)
			}
		}
		s := view(id)
		if len(mine) != 1 {
			t.Errorf("%s has update actions %v, want exactly one", id, mine)
			continue
		}
		if v := strings.Fields(s.Agent.Version + " ")[0]; v != vB {
			t.Errorf("%s runs %q, want %s", id, s.Agent.Version, vB)
		}
		if lu := s.Agent.LastUpdate; lu == nil || lu.ActionID != mine[0] || lu.Result != apitypes.UpdateResultUpdated {
			t.Errorf("%s: the agent's last update %+v, want %s updated", id, lu, mine[0])
		}
	}

	stranger := filepath.Join(dir, "stranger.key")
	cli("agents", "keygen", "--out", stranger)
	const vEvil = "1.2.0-unpinned"
	evil := filepath.Join(dir, "evil", "devpilot-agent")
	if err := os.MkdirAll(filepath.Dir(evil), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(evil, []byte("#!/bin/sh\necho 'not a devpilot agent' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cli("agents", "sign", "--key", stranger, evil, "--version", vEvil, "--arch", runtime.GOARCH)
	cli("agents", "releases", "add", evil, "--version", vEvil, "--data-dir", dataDir, "--agent-release-key", stranger+".pub")
	p.kill()
	p.args = append(p.args, "--agent-release-key", stranger+".pub")
	p.start()
	target := ids[0]
	waitFor(target+" online again", 2*time.Minute, func() bool { s := view(target); return s.State == "online" && s.Agent.Connected })
	instance := view(target).InstanceID
	m, ok := machines.Machine(instance)
	if !ok {
		t.Fatalf("no machine for %s", target)
	}
	var a apitypes.Action
	path := servers + "/" + target + "/actions"
	if c := p.do("POST", path, map[string]any{"type": "update_agent", "version": vEvil}, &a); c != 202 {
		t.Fatalf("update to the unpinned release: %d %+v", c, a)
	}
	waitFor("the unpinned update ended", 2*time.Minute, func() bool {
		p.do("GET", path+"/"+a.ID, nil, &a)
		return a.State == apitypes.ActionSucceeded || a.State == apitypes.ActionFailed
	})
	if a.State != apitypes.ActionFailed || a.Error == nil || a.Error.Code != "update_refused" || !strings.Contains(a.Error.Message, "signature") {
		t.Fatalf("update to a release signed by an unpinned key: %s %+v", a.State, a.Error)
	}
	after, _ := machines.Machine(instance)
	if s := view(target); strings.Fields(s.Agent.Version + " ")[0] != vB || s.State != "online" || after.AgentStarts != m.AgentStarts {
		t.Errorf("after the refusal: %s on %q, %d restarts", s.State, s.Agent.Version, after.AgentStarts-m.AgentStarts)
	}
	if _, err := os.Stat(filepath.Join(after.Root, "usr", "lib", "devpilot-agent", "versions", vEvil)); !os.IsNotExist(err) {
		t.Errorf("the refused binary is on the server: %v", err)
	}
}
