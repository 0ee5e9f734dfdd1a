package devenv_test

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/agentrelease"
	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/devenv"
	"github.com/devpilot/devpilot/shared/release"
)

// releaseFleet builds agent A (installed by new servers), signs a real
// agent B and a broken B' (exits at once) as releases in the agent dir,
// and starts a dev environment trusting the signing key.
func releaseFleet(t *testing.T, a, b, broken string) *harness {
	t.Helper()
	dir := t.TempDir()
	build := func(version, out string) {
		cmd := exec.Command("go", "build", "-ldflags", "-X github.com/devpilot/devpilot/shared/version.Version="+version,
			"-o", out, "github.com/devpilot/devpilot/cmd/devpilot-agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if o, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build agent %s: %v\n%s", version, err, o)
		}
	}
	build(a, filepath.Join(dir, "devpilot-agent"))
	key, err := release.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pubFile := filepath.Join(dir, "release.pub")
	if err := os.WriteFile(pubFile, []byte(release.EncodePublicKey(key.Public().(ed25519.PublicKey))+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	store := agentrelease.New(filepath.Join(dir, "releases"), []ed25519.PublicKey{key.Public().(ed25519.PublicKey)})
	add := func(version, bin string) {
		f, err := os.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		sig, err := release.Sign(key, f, version, "linux", runtime.GOARCH)
		_ = f.Close()
		if err != nil {
			t.Fatal(err)
		}
		sj, _ := json.Marshal(sig)
		if err := os.WriteFile(bin+".sig", sj, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := store.Add(bin, version); err != nil {
			t.Fatalf("add release %s: %v", version, err)
		}
	}
	bBin := filepath.Join(t.TempDir(), "devpilot-agent")
	build(b, bBin)
	add(b, bBin)
	brokenBin := filepath.Join(t.TempDir(), "devpilot-agent")
	if err := os.WriteFile(brokenBin, []byte("#!/bin/sh\necho 'broken build: exiting' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	add(broken, brokenBin)
	return startWith(t, func(c *devenv.Config) {
		c.AgentDir, c.AgentReleaseKeys = dir, []string{pubFile}
	})
}

type rolloutView = apitypes.Rollout

const rollouts = "/v1/workspaces/default/agent-rollouts"

func (h *harness) waitRollout(id string, limit time.Duration, what string, cond func(rolloutView) bool) rolloutView {
	h.t.Helper()
	deadline := time.Now().Add(limit)
	var r rolloutView
	for {
		h.call("", "GET", rollouts+"/"+id, nil, &r)
		if cond(r) {
			return r
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("rollout %s: not %s after %v: %s %q %v", id, what, limit, r.State, r.Reason, r.Counts)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type agentOf struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	State string `json:"state"`
	Agent struct {
		Version       string `json:"version"`
		OutsideTarget bool   `json:"outside_target"`
		TargetVersion string `json:"target_version"`
	} `json:"agent"`
}

func (h *harness) agents(ids []string) map[string]agentOf {
	out := map[string]agentOf{}
	for _, id := range ids {
		var s agentOf
		h.call("", "GET", servers+"/"+id, nil, &s)
		out[id] = s
	}
	return out
}

func release0(v string) string { r, _, _ := strings.Cut(v, " "); return r }

// Issue 13's "done when" in devpilot dev: over 10 agents on A, a rollout
// of a broken B' (exits at once) with 2 canaries stops after the canaries,
// both roll back to A by themselves, and the other 8 are never touched;
// then a rollout of B with 2 canaries ends with all 10 on B, each updated
// once (the two canaries right after their rollback).
func TestRolloutOverTenAgents(t *testing.T) {
	const vA, vB, vBroken = "1.0.0", "1.1.0", "1.1.1-broken"
	h := releaseFleet(t, vA, vB, vBroken)
	_, do, _ := h.connect("digitalocean", "do", h.env.Values["DO_SIM_TOKEN"])
	var ids []string
	for i := range 10 {
		ids = append(ids, h.createServer(do.ID, fmt.Sprintf("web-%02d", i), "nyc3", "s-1vcpu-1gb", "debian-12", nil).ID)
	}
	for _, id := range ids {
		h.waitServer(id, 3*time.Minute, "online", online)
	}
	for id, s := range h.agents(ids) {
		if release0(s.Agent.Version) != vA {
			t.Fatalf("%s runs %q, want %s", id, s.Agent.Version, vA)
		}
	}

	var r rolloutView
	if c := h.call("", "POST", rollouts, map[string]any{"version": vBroken, "canary": 2, "max_parallel": 3, "health_window_s": 2}, &r); c != http.StatusAccepted {
		t.Fatalf("create rollout of %s: %d %+v", vBroken, c, r)
	}
	r = h.waitRollout(r.ID, 5*time.Minute, "failed with the canaries done", func(r rolloutView) bool {
		return r.State == apitypes.RolloutFailed && r.Counts[apitypes.TargetUpdating] == 0
	})
	if r.Counts[apitypes.TargetFailed] != 2 || r.Counts[apitypes.TargetSkipped] != 8 || !strings.Contains(r.Reason, "rolled back to "+vA) {
		t.Errorf("broken rollout: %v %q, want 2 canaries failed (rolled back to %s) and 8 skipped", r.Counts, r.Reason, vA)
	}
	for _, tg := range r.Targets {
		if tg.Wave == apitypes.WaveRest && tg.ActionID != "" {
			t.Errorf("%s was touched by the broken rollout: %+v", tg.ServerName, tg)
		}
	}
	for id, s := range h.agents(ids) {
		if release0(s.Agent.Version) != vA || s.State != "online" {
			t.Errorf("%s after the broken rollout: %+v, want online on %s", id, s, vA)
		}
	}

	if c := h.call("", "POST", rollouts, map[string]any{"version": vB, "canary": 2, "max_parallel": 3, "health_window_s": 2}, &r); c != http.StatusAccepted {
		t.Fatalf("create rollout of %s: %d %+v", vB, c, r)
	}
	r = h.waitRollout(r.ID, 8*time.Minute, "ended", func(r rolloutView) bool {
		return r.State == apitypes.RolloutSucceeded || r.State == apitypes.RolloutFailed
	})
	if r.State != apitypes.RolloutSucceeded || r.Counts[apitypes.TargetHealthy] != 10 {
		t.Fatalf("rollout of %s: %s %q %v", vB, r.State, r.Reason, r.Counts)
	}
	for id, s := range h.agents(ids) {
		if release0(s.Agent.Version) != vB || s.State != "online" || s.Agent.OutsideTarget || s.Agent.TargetVersion != vB {
			t.Errorf("%s after the rollout: %+v", id, s)
		}
	}

	// Each server: one update action per rollout it was part of.
	for _, id := range ids {
		var list struct {
			Actions []struct {
				Type   string         `json:"type"`
				Params map[string]any `json:"params"`
			} `json:"actions"`
		}
		h.call("", "GET", servers+"/"+id+"/actions", nil, &list)
		n := map[string]int{}
		for _, a := range list.Actions {
			if a.Type == "update_agent" {
				n[fmt.Sprint(a.Params["version"])]++
			}
		}
		if n[vB] != 1 || n[vBroken] > 1 {
			t.Errorf("%s update actions by version: %v, want one of %s", id, n, vB)
		}
	}
}
