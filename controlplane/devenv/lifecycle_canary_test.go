package devenv_test

import (
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/store/storetest"
)

// TestCanaryNotInActionsOrLiveness: the new places a cloud error can land
// (an action's step error and error, the reconciler's state_reason, the
// audit details, the logs) never hold the integration's token, even when
// the cloud refuses that very token.
func TestCanaryNotInActionsOrLiveness(t *testing.T) {
	h := startReconciling(t)
	canary := "dop_v1_canary" + strings.Repeat("k", 51)
	h.env.DO.AddToken(canary, true)
	_, do, _ := h.connect("digitalocean", "canary", canary)
	s := h.createServer(do.ID, "canary-life", "nyc3", "s-1vcpu-1gb", "debian-12", nil)
	s = h.waitServer(s.ID, 90*time.Second, "online", online)
	h.act(s, map[string]any{"type": "rename", "name": "canary-life-2"})

	h.env.DO.RemoveToken(canary) // revoked: every call now answers 401
	var a action
	if c := h.call("", "POST", servers+"/"+s.ID+"/actions", map[string]any{"type": "reboot", "hard": true}, &a); c != 202 {
		t.Fatalf("reboot: %d", c)
	}
	deadline := time.Now().Add(time.Minute)
	for a.State != "failed" {
		if a.State == "succeeded" || time.Now().After(deadline) {
			t.Fatalf("reboot with a revoked token: %s", a.State)
		}
		time.Sleep(50 * time.Millisecond)
		h.call("", "GET", servers+"/"+s.ID+"/actions/"+a.ID, nil, &a)
	}
	if a.Error == nil || a.Error.Code != "invalid_credentials" || a.Error.Hint == "" {
		t.Errorf("failed reboot error = %+v, want invalid_credentials with a hint", a.Error)
	}
	got := h.waitState(s.ID, "unknown", time.Minute)
	if !strings.Contains(got.StateReason, "token") {
		t.Errorf("unknown reason %q does not name the token", got.StateReason)
	}
	h.call("", "GET", servers+"/"+s.ID+"/actions", nil, nil)
	h.call("", "GET", "/v1/workspaces/default/audit", nil, nil)

	for _, c := range []string{canary, "canarykkkkkkkkkkkk"} {
		h.mu.Lock()
		for i, r := range h.responses {
			if strings.Contains(r, c) {
				t.Errorf("token found in API response %d", i)
			}
		}
		h.mu.Unlock()
		if strings.Contains(h.logs.String(), c) {
			t.Error("token found in the logs")
		}
		if strings.Contains(storetest.Contents(t, h.env.App.Store), c) {
			t.Error("token found in the database")
		}
	}
}
