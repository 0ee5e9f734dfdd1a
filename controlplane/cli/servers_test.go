package cli

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// TestServersShowTheAgentsVersionTargetAndLastUpdate: `servers list` marks
// an agent outside the workspace's rollout target in its AGENT column;
// `servers show` says so too and how the agent's last update ended.
func TestServersShowTheAgentsVersionTargetAndLastUpdate(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	behind := apitypes.Server{ID: "srv_aaaaaaaaaaaaaaaa", Name: "web-1", State: "online", Steps: []apitypes.Step{},
		Agent: apitypes.Agent{Connected: true, Version: "1.0.0 (commit abc, go1.23)", InstalledAt: &at, LastSeenAt: &at,
			TargetVersion: "1.1.0", OutsideTarget: true,
			LastUpdate: &apitypes.AgentLastUpdate{ActionID: "act_1", Result: apitypes.UpdateResultRolledBack, FromVersion: "1.0.0",
				ToVersion: "1.1.0", Reason: "1.1.0 did not reconnect within 2m0s", ReportedAt: &at}}}
	current := apitypes.Server{ID: "srv_bbbbbbbbbbbbbbbb", Name: "web-2", State: "online", Steps: []apitypes.Step{},
		Agent: apitypes.Agent{Connected: true, Version: "1.1.0", InstalledAt: &at, LastSeenAt: &at, TargetVersion: "1.1.0",
			LastUpdate: &apitypes.AgentLastUpdate{ActionID: "act_2", Result: apitypes.UpdateResultUpdated, FromVersion: "1.0.0",
				ToVersion: "1.1.0", ReportedAt: &at}}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var v any
		switch r.URL.Path {
		case "/v1/workspaces/default/servers":
			v = apitypes.ServerList{Servers: []apitypes.Server{behind, current}}
		case "/v1/workspaces/default/servers/" + behind.ID:
			v = behind
		case "/v1/workspaces/default/servers/" + current.ID:
			v = current
		default:
			w.WriteHeader(404)
			return
		}
		_ = json.NewEncoder(w).Encode(v)
	}))
	defer srv.Close()
	v := map[string]string{"DEVPILOT_URL": srv.URL, "DEVPILOT_TOKEN": "t0k"}

	r := cli(t, v, "", "servers", "list")
	if r.code != 0 {
		t.Fatalf("servers list: %+v", r)
	}
	for _, want := range []string{"1.0.0 (target 1.1.0)", "1.1.0"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("servers list:\n%s\nwant an AGENT column with %q", r.stdout, want)
		}
	}
	if strings.Count(r.stdout, "(target") != 1 {
		t.Errorf("servers list:\n%s\nwant only web-1 marked outside the target", r.stdout)
	}

	r = cli(t, v, "", "servers", "show", "web-1")
	for _, want := range []string{"outside the rollout target 1.1.0",
		"rolled back 1.1.0 → 1.0.0: 1.1.0 did not reconnect within 2m0s (act_1, "} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("servers show web-1 (%d):\n%s\nwant %q", r.code, r.stdout, want)
		}
	}
	r = cli(t, v, "", "servers", "show", "web-2")
	if r.code != 0 || !strings.Contains(r.stdout, "updated 1.0.0 → 1.1.0 (act_2, ") || strings.Contains(r.stdout, "outside") {
		t.Errorf("servers show web-2 (%d):\n%s\nwant the update, no outside-target mark", r.code, r.stdout)
	}
}
