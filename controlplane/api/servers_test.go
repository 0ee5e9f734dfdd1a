package api_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// TestCreateServerIsCheckedAtTheDoor: a region, size or image the
// integration's catalog lacks is refused with 422 before anything is
// recorded, naming the valid choices (for a size, those of the region);
// bad ports are refused with 400.
func TestCreateServerIsCheckedAtTheDoor(t *testing.T) {
	h := start(t)
	ws := "/v1/workspaces/default"
	in := h.connect("default", "do")
	for _, tc := range []struct {
		name, region, size, image string
		ports                     []int
		status                    int
		code, message, hint       string
	}{
		{"bad-region", "atlantis1", "s-1vcpu-1gb", "debian-12", nil, 422, "validation_failed", `region "atlantis1" is unknown`, "nyc3"},
		{"bad-size", "nyc3", "s-64vcpu-1tb", "debian-12", nil, 422, "validation_failed", `size "s-64vcpu-1tb" is unknown`, "Sizes available in nyc3: s-1vcpu-1gb"},
		{"bad-image", "nyc3", "s-1vcpu-1gb", "windows-95", nil, 422, "validation_failed", `image "windows-95" is unknown`, "debian-12"},
		{"port-zero", "nyc3", "s-1vcpu-1gb", "debian-12", []int{0}, 400, "validation_failed", "port 0 is not between 1 and 65535", "65535"},
		{"port-high", "nyc3", "s-1vcpu-1gb", "debian-12", []int{22, 65536}, 400, "validation_failed", "port 65536", "65535"},
		{"port-twice", "nyc3", "s-1vcpu-1gb", "debian-12", []int{22, 80, 22}, 400, "validation_failed", "port 22 is listed twice", "once"},
	} {
		r := h.do(h.token, "POST", ws+"/servers", apitypes.CreateServer{IntegrationID: in.ID, Name: tc.name, Region: tc.region,
			Size: tc.size, Image: tc.image, Ports: tc.ports})
		var e apitypes.ErrorBody
		r.decode(t, &e)
		if r.status != tc.status || e.Error.Code != tc.code || !strings.Contains(e.Error.Message, tc.message) ||
			!strings.Contains(e.Error.Hint, tc.hint) || strings.Contains(e.Error.Message, "preflight") {
			t.Errorf("%s: %d %s, want %d %s %q with a hint naming %q", tc.name, r.status, r.body, tc.status, tc.code, tc.message, tc.hint)
		}
	}
	var l apitypes.ServerList
	h.must(200, "GET", ws+"/servers", nil, &l)
	if len(l.Servers) != 0 {
		t.Errorf("refused requests recorded %d servers", len(l.Servers))
	}
	// A provider that cannot answer for now (503, no catalog cached yet)
	// does not refuse the request: it is accepted and the job's preflight
	// asks again with its retries.
	other := h.connect("default", "do-2")
	h.env.DO.FailNext5xx(1000, 503)
	r := h.do(h.token, "POST", ws+"/servers", apitypes.CreateServer{IntegrationID: other.ID, Name: "web", Region: "nyc3",
		Size: "s-1vcpu-1gb", Image: "debian-12"})
	h.env.DO.FailNext5xx(0, 503)
	if r.status != 202 {
		t.Errorf("catalog unavailable for now: %d %s, want 202 (preflight checks later)", r.status, r.body)
	}
	// A refusal that lasts (the token revoked at the provider) is answered
	// at the door with its typed error, and nothing is recorded.
	third := h.connect("default", "do-3")
	h.env.DO.RemoveToken(h.env.Values["DO_SIM_TOKEN"])
	r = h.do(h.token, "POST", ws+"/servers", apitypes.CreateServer{IntegrationID: third.ID, Name: "web-3", Region: "nyc3",
		Size: "s-1vcpu-1gb", Image: "debian-12"})
	if r.status < 400 || r.errorCode() != "invalid_credentials" {
		t.Errorf("token revoked: %d %s, want invalid_credentials", r.status, r.body)
	}
	h.must(200, "GET", ws+"/servers?name=web-3", nil, &l)
	if len(l.Servers) != 0 {
		t.Errorf("a refused request recorded %d servers", len(l.Servers))
	}
}

// TestAFailedServersNameCanBeReused: once a server failed (here: its size
// sold out between the door's cached catalog and preflight), a new server
// may take its name; a live server's name stays taken (409). The failure
// names its step once, not "preflight: … preflight: …".
func TestAFailedServersNameCanBeReused(t *testing.T) {
	h := start(t)
	ws := "/v1/workspaces/default"
	in := h.connect("default", "do")
	h.must(200, "GET", ws+"/integrations/"+in.ID+"/catalog", nil, nil) // the door's cache
	h.env.DO.SetSoldOut("nyc3", "s-2vcpu-2gb", true)
	var s apitypes.Server
	h.must(202, "POST", ws+"/servers", apitypes.CreateServer{IntegrationID: in.ID, Name: "web", Region: "nyc3",
		Size: "s-2vcpu-2gb", Image: "debian-12"}, &s)
	deadline := time.Now().Add(60 * time.Second)
	for s.State != "failed" {
		if time.Now().After(deadline) {
			t.Fatalf("server still %s after 60 s", s.State)
		}
		time.Sleep(20 * time.Millisecond)
		h.must(200, "GET", ws+"/servers/"+s.ID, nil, &s)
	}
	if s.Error == nil || s.Error.Step != "preflight" || s.Error.Code != "unavailable" || strings.Count(s.Error.Step+": "+s.Error.Message, "preflight") != 1 {
		t.Errorf("failure: %+v, want preflight unavailable with the step named once", s.Error)
	}
	h.env.DO.SetSoldOut("nyc3", "s-2vcpu-2gb", false)
	var again apitypes.Server
	h.must(202, "POST", ws+"/servers", apitypes.CreateServer{IntegrationID: in.ID, Name: "web", Region: "nyc3",
		Size: "s-1vcpu-1gb", Image: "debian-12"}, &again)
	r := h.do(h.token, "POST", ws+"/servers", apitypes.CreateServer{IntegrationID: in.ID, Name: "web", Region: "nyc3",
		Size: "s-1vcpu-1gb", Image: "debian-12"})
	if r.status != 409 || r.errorCode() != "conflict" {
		t.Errorf("a live server's name: %d %s, want 409 conflict", r.status, r.body)
	}
	var l apitypes.ServerList
	h.must(200, "GET", ws+"/servers?name=web", nil, &l)
	if len(l.Servers) != 2 {
		t.Errorf("?name=web: %d servers, want the failed one and the new one", len(l.Servers))
	}
}

// TestServerViewShowsTheAgentsLastUpdate: the outcome the agent reported
// in its hello (here a rollback) is in GET server and in the list, with
// when it was recorded; a server without one answers null.
func TestServerViewShowsTheAgentsLastUpdate(t *testing.T) {
	h := start(t)
	ws := "/v1/workspaces/default"
	in := h.connect("default", "do")
	var a, b apitypes.Server
	h.must(202, "POST", ws+"/servers", apitypes.CreateServer{IntegrationID: in.ID, Name: "web-1", Region: "nyc3",
		Size: "s-1vcpu-1gb", Image: "debian-12"}, &a)
	h.must(202, "POST", ws+"/servers", apitypes.CreateServer{IntegrationID: in.ID, Name: "web-2", Region: "nyc3",
		Size: "s-1vcpu-1gb", Image: "debian-12"}, &b)
	if a.Agent.LastUpdate != nil {
		t.Errorf("a new server: last update %+v, want none", a.Agent.LastUpdate)
	}
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	// What the hub records from hello.last_update (provision.Registry.Connected).
	if err := h.env.App.Store.Q().SetAgentLastUpdate(context.Background(), a.ID,
		`{"id":"act_1","result":"rolled_back","from":"1.0.0","to":"1.1.0","reason":"1.1.0 did not reconnect within 2m0s"}`, at); err != nil {
		t.Fatal(err)
	}
	want := apitypes.AgentLastUpdate{ActionID: "act_1", Result: apitypes.UpdateResultRolledBack, FromVersion: "1.0.0",
		ToVersion: "1.1.0", Reason: "1.1.0 did not reconnect within 2m0s", ReportedAt: &at}
	same := func(got *apitypes.AgentLastUpdate) bool {
		return got != nil && got.ReportedAt != nil && got.ReportedAt.Equal(at) && got.ActionID == want.ActionID &&
			got.Result == want.Result && got.FromVersion == want.FromVersion && got.ToVersion == want.ToVersion && got.Reason == want.Reason
	}
	var s apitypes.Server
	h.must(200, "GET", ws+"/servers/"+a.ID, nil, &s)
	if !same(s.Agent.LastUpdate) {
		t.Errorf("GET server: last update %+v, want %+v", s.Agent.LastUpdate, want)
	}
	var l apitypes.ServerList
	h.must(200, "GET", ws+"/servers", nil, &l)
	if len(l.Servers) != 2 {
		t.Fatalf("list: %d servers, want 2", len(l.Servers))
	}
	for _, s := range l.Servers {
		switch {
		case s.ID == a.ID && !same(s.Agent.LastUpdate):
			t.Errorf("list, %s: last update %+v, want %+v", s.Name, s.Agent.LastUpdate, want)
		case s.ID == b.ID && s.Agent.LastUpdate != nil:
			t.Errorf("list, %s: last update %+v, want none", s.Name, s.Agent.LastUpdate)
		}
	}
	var raw struct {
		Agent map[string]any `json:"agent"`
	}
	h.must(200, "GET", ws+"/servers/"+b.ID, nil, &raw)
	if v, ok := raw.Agent["last_update"]; !ok || v != nil {
		t.Errorf("a server without an update: agent %v, want last_update null", raw.Agent)
	}
}
