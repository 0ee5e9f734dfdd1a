package devenv_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/devenv"
	"github.com/devpilot/devpilot/controlplane/events"
)

// waitEvent polls the workspace's event log until pred holds of what it
// holds, and returns them.
func (h *harness) waitEvent(what string, within time.Duration, pred func([]events.Event) bool) []events.Event {
	h.t.Helper()
	ctx := context.Background()
	ws, err := h.env.App.Store.Q().WorkspaceBySlug(ctx, "default")
	if err != nil {
		h.t.Fatal(err)
	}
	deadline := time.Now().Add(within)
	for {
		evs, err := h.env.App.Store.Q().EventsAfter(ctx, ws.ID, 0, 10000)
		if err != nil {
			h.t.Fatal(err)
		}
		if pred(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			var types []string
			for _, e := range evs {
				types = append(types, e.Type+"("+e.Subject+")")
			}
			h.t.Fatalf("no %s within %s; events: %s", what, within, strings.Join(types, " "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func count(evs []events.Event, typ, subject string) int {
	n := 0
	for _, e := range evs {
		if e.Type == typ && e.Subject == subject {
			n++
		}
	}
	return n
}

// TestFrozenAgentFiresThenResolvesAnAlert is issue 14's done-when: a
// sandbox agent frozen (SIGSTOP) past an offline rule's few seconds gives
// alert.firing, thawed (SIGCONT) alert.resolved, once each; then a token
// revoked through the simulator's control API turns its integration
// invalid within one background check, with integration.invalid; a
// webhook receiver gets all three, signed, once each.
func TestFrozenAgentFiresThenResolvesAnAlert(t *testing.T) {
	h := startWith(t, func(c *devenv.Config) {
		c.AlertInterval = 500 * time.Millisecond
		c.IntegrationCheckInterval = 3 * time.Second
	})
	v := h.env.Values
	_, do, _ := h.connect("digitalocean", "do", v["DO_SIM_TOKEN"])
	s := h.createServer(do.ID, "watched", "nyc3", "s-1vcpu-1gb", "debian-12", nil)
	s = h.waitServer(s.ID, 90*time.Second, "online", func(s server) bool { return online(s) && s.Agent.Connected })

	// A webhook receiver (real HTTP) for the alert and integration events.
	rcv := newHookReceiver(t)
	var wh createdWebhook
	if c := h.call("", "POST", webhooksPath, map[string]any{"url": rcv.URL + "/devpilot",
		"events": []string{"alert.*", "integration.*"}}, &wh); c != http.StatusCreated {
		t.Fatalf("create webhook: %d", c)
	}
	rcv.mu.Lock()
	rcv.secret = wh.Secret
	rcv.mu.Unlock()

	var rule struct {
		ID string `json:"id"`
	}
	if code := h.call("", "POST", "/v1/workspaces/default/alert-rules",
		map[string]any{"name": "down", "kind": "offline", "for_s": 3}, &rule); code != http.StatusCreated {
		t.Fatalf("create rule: %d", code)
	}
	// A rule on every server, healthy: nothing fires.
	var list struct {
		Alerts []struct {
			ServerID, State string
		} `json:"alerts"`
	}
	info, ok := h.env.Machines.Machine(s.InstanceID)
	if !ok || info.AgentPID == 0 {
		t.Fatalf("no agent process for %s: %+v", s.InstanceID, info)
	}
	if err := killPID(info.AgentPID, "STOP"); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	h.waitEvent("alert.firing", 60*time.Second, func(evs []events.Event) bool { return count(evs, events.AlertFiring, s.ID) == 1 })
	if d := time.Since(frozen); d < 3*time.Second {
		t.Errorf("fired %s after the freeze, before the rule's 3 s", d)
	}
	if code := h.call("", "GET", "/v1/workspaces/default/alerts", nil, &list); code != 200 || len(list.Alerts) != 1 {
		t.Errorf("GET alerts while firing: %d %+v, want the one alert", code, list)
	}
	if err := killPID(info.AgentPID, "CONT"); err != nil {
		t.Fatal(err)
	}
	evs := h.waitEvent("alert.resolved", 90*time.Second, func(evs []events.Event) bool { return count(evs, events.AlertResolved, s.ID) == 1 })
	if count(evs, events.AlertFiring, s.ID) != 1 {
		t.Errorf("%d alert.firing events, want 1", count(evs, events.AlertFiring, s.ID))
	}
	firing, resolved := -1, -1
	for i, e := range evs {
		switch e.Type {
		case events.AlertFiring:
			firing = i
		case events.AlertResolved:
			resolved = i
		}
	}
	if firing > resolved {
		t.Errorf("alert.resolved before alert.firing")
	}
	if code := h.call("", "GET", "/v1/workspaces/default/alerts", nil, &list); code != 200 || len(list.Alerts) != 0 {
		t.Errorf("GET alerts after the thaw: %d %+v, want none firing", code, list)
	}

	// The token revoked in the provider's panel (the simulator's control API).
	req, _ := http.NewRequest("DELETE", v["DO_SIM_URL"]+"/_sim/tokens", strings.NewReader(`{"token":"`+v["DO_SIM_TOKEN"]+`"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	revoked := time.Now()
	h.waitEvent("integration.invalid", 30*time.Second, func(evs []events.Event) bool {
		return count(evs, events.IntegrationInvalid, do.ID) == 1
	})
	// Within one re-validation (3 s, ±10 %), give or take a poll.
	if d := time.Since(revoked); d > 10*time.Second {
		t.Errorf("invalid %s after the revocation, want within one check interval", d)
	}
	// Each delivered, signed (the receiver verifies), exactly once.
	rcv.waitFor(t, events.AlertFiring, s.ID, time.Minute)
	rcv.waitFor(t, events.AlertResolved, s.ID, time.Minute)
	rcv.waitFor(t, events.IntegrationInvalid, do.ID, time.Minute)
	rcv.mu.Lock()
	for id, n := range rcv.accepted {
		if n != 1 {
			t.Errorf("message %s (%s) accepted %d times, want once", id, rcv.messages[id].Type, n)
		}
	}
	rcv.mu.Unlock()
	if n := rcv.badSig.Load(); n != 0 {
		t.Errorf("%d deliveries failed signature verification", n)
	}
	var in integration
	if code := h.call("", "GET", base+"/"+do.ID, nil, &in); code != 200 || in.Status != "invalid" ||
		in.LastError == nil || in.LastError.Code != "invalid_credentials" {
		t.Errorf("integration after the revocation: %d %+v, want invalid (invalid_credentials)", code, in)
	}
}
