package api_test

import (
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/alerts"
	"github.com/devpilot/devpilot/controlplane/api"
	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/events"
	"github.com/devpilot/devpilot/controlplane/provision"
	"github.com/devpilot/devpilot/controlplane/rollout"
	"github.com/devpilot/devpilot/controlplane/tasks"
	"github.com/devpilot/devpilot/controlplane/webhooks"
)

// registered is every route the API registers with all its services
// present (the services are never called here).
func registered(t *testing.T) []api.Route {
	t.Helper()
	a := api.New(api.Options{Servers: &provision.Service{}, Tasks: &tasks.Service{}, Rollouts: &rollout.Service{},
		Alerts: &alerts.Service{}, Webhooks: &webhooks.Service{},
		Agent: http.NotFoundHandler()})
	rs := a.Routes()
	if len(rs) < 30 {
		t.Fatalf("only %d routes registered", len(rs))
	}
	return rs
}

// docOp is the document operation a mux pattern stands for; a subtree
// pattern ("GET /v1/agent/") stands for every operation under it.
func docOps(pattern string, ops []string) []string {
	method, path, _ := strings.Cut(pattern, " ")
	var out []string
	for _, op := range ops {
		m, p, _ := strings.Cut(op, " ")
		if m != method {
			continue
		}
		if p == path || (strings.HasSuffix(path, "/") && strings.HasPrefix(p, path)) {
			out = append(out, op)
		}
	}
	return out
}

// TestEveryRouteIsDocumented fails when a route registered in the mux is
// missing from the OpenAPI document, or the document describes an
// operation no route serves.
func TestEveryRouteIsDocumented(t *testing.T) {
	t.Parallel()
	ops := openSpec(t).operations()
	served := map[string]bool{}
	for _, r := range registered(t) {
		got := docOps(r.Pattern, ops)
		if len(got) == 0 {
			t.Errorf("route %q is registered but not in openapi.yaml", r.Pattern)
		}
		for _, op := range got {
			served[op] = true
		}
	}
	for _, op := range ops {
		if !served[op] {
			t.Errorf("openapi.yaml documents %q but no route serves it", op)
		}
	}
}

// TestServedDocumentIsTheRepositorysOne: GET /v1/openapi.json needs no
// token and answers the embedded document as OpenAPI 3.1 JSON.
func TestServedDocumentIsTheRepositorysOne(t *testing.T) {
	h := start(t)
	r := h.do("-", "GET", "/v1/openapi.json", nil)
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
		t.Fatalf("GET /v1/openapi.json: %d %s", r.status, r.header.Get("Content-Type"))
	}
	var doc struct {
		OpenAPI string         `json:"openapi"`
		Paths   map[string]any `json:"paths"`
	}
	r.decode(t, &doc)
	want, _ := api.OpenAPI()
	if doc.OpenAPI != "3.1.0" || len(doc.Paths) != openSpec(t).doc.Paths.PathItems.Len() || string(r.body) != string(want) {
		t.Errorf("served document: openapi %q, %d paths; differs from the embedded one: %v", doc.OpenAPI, len(doc.Paths), string(r.body) != string(want))
	}
}

// exempt200 are operations the walkthrough cannot bring to a 2xx, and why;
// their refusals are still validated.
var exempt200 = map[string]string{
	"GET /v1/agent/connect":                       "a WebSocket: shared/protocol's golden tests and the hub's own tests hold it",
	"GET /v1/agent/download/{os}/{arch}":          "needs built agent binaries (devenv and e2e tests download them)",
	"POST /v1/workspaces/{ws}/servers/{id}/rekey": "needs an enrolled agent (devenv's identity tests rekey one)",
	"POST /v1/workspaces/{ws}/servers/{id}/actions": "needs a server past provisioning, so an agent: " +
		"TestActionsHoldToTheDocument runs them with a real agent",
	"GET /v1/workspaces/{ws}/servers/{id}/actions/{action}": "as POST …/actions (TestActionsHoldToTheDocument)",
	"POST /v1/workspaces/{ws}/agent-rollouts/{id}/pause": "needs a rollout under way, so online agents (the walkthrough's one " +
		"server is still provisioning: its rollout ends at once); controlplane/rollout's TestPauseResumeAbort drives the verbs",
	"POST /v1/workspaces/{ws}/agent-rollouts/{id}/resume": "as …/pause",
	"POST /v1/workspaces/{ws}/agent-rollouts/{id}/abort":  "as …/pause",
	"GET /v1/agent/releases/{version}/{os}/{arch}":        "needs signed agent builds (devenv's agent update tests download them)",
}

// TestEveryOperationHoldsToTheDocument walks the whole API the way a user
// would (connect, catalog, servers, tasks with logs followed to the end,
// deployments, tokens, audit, key rotation, removal) with every exchange
// validated against openapi.yaml, and fails if an operation of the
// document was never answered with a 2xx.
func TestEveryOperationHoldsToTheDocument(t *testing.T) {
	h := start(t)
	ws := "/v1/workspaces/default"
	h.must(200, "GET", "/healthz", nil, nil)
	h.must(200, "GET", "/readyz", nil, nil)
	h.must(200, "GET", "/metrics", nil, nil)
	h.must(200, "GET", "/v1/openapi.json", nil, nil)
	h.must(200, "GET", "/v1/whoami", nil, nil)
	h.must(200, "GET", "/v1/agent-releases", nil, nil)
	h.must(201, "POST", "/v1/workspaces", apitypes.CreateWorkspace{Slug: "team-b"}, nil)
	h.must(200, "GET", "/v1/workspaces", nil, nil)

	in := h.connect("default", "do-main")
	h.must(200, "GET", ws+"/integrations", nil, nil)
	h.must(200, "GET", ws+"/integrations/"+in.ID, nil, nil)
	h.must(200, "PATCH", ws+"/integrations/"+in.ID, apitypes.RenameIntegration{AccessKey: "do-renamed"}, nil)
	h.must(200, "POST", ws+"/integrations/"+in.ID+"/test", nil, nil)
	h.must(200, "PUT", ws+"/integrations/"+in.ID+"/secret", apitypes.RotateIntegrationSecret{SecretKey: h.env.Values["DO_SIM_TOKEN"]}, nil)
	h.must(200, "GET", ws+"/integrations/"+in.ID+"/catalog", nil, nil)
	h.must(200, "GET", ws+"/integrations/"+in.ID+"/catalog?refresh=1", nil, nil)

	var srv apitypes.Server
	h.must(202, "POST", ws+"/servers", apitypes.CreateServer{IntegrationID: in.ID, Name: "web-1", Region: "nyc3",
		Size: "s-1vcpu-1gb", Image: "debian-12", Ports: []int{22, 80}}, &srv)
	h.must(200, "GET", ws+"/servers", nil, nil)
	h.must(200, "GET", ws+"/servers/"+srv.ID, nil, nil)
	h.must(200, "GET", ws+"/servers/"+srv.ID+"/health?since=2h", nil, nil)
	if r := h.do(h.token, "POST", ws+"/servers/"+srv.ID+"/rekey", apitypes.RekeyRequest{Print: true}); r.status != 409 {
		t.Errorf("rekey before the agent enrolled: %d %s, want 409", r.status, r.body)
	}
	if r := h.do(h.token, "POST", ws+"/servers/"+srv.ID+"/actions", apitypes.ActionRequest{Type: "explode"}); r.status != 422 {
		t.Errorf("action of an unknown type: %d %s, want 422", r.status, r.body)
	}
	if r := h.do(h.token, "POST", ws+"/servers/"+srv.ID+"/actions", apitypes.ActionRequest{Type: "rename", Name: "web-one"}); r.status != 409 {
		t.Errorf("action while provisioning: %d %s, want 409", r.status, r.body)
	}
	h.must(200, "GET", ws+"/servers/"+srv.ID+"/actions", nil, nil)
	if r := h.do(h.token, "GET", ws+"/servers/"+srv.ID+"/actions/act_aaaaaaaaaaaaaaaa", nil); r.status != 404 {
		t.Errorf("an unknown action: %d %s, want 404", r.status, r.body)
	}

	var task apitypes.Task
	h.must(202, "POST", ws+"/servers/"+srv.ID+"/tasks", apitypes.TaskSpec{Kind: "exec",
		StepFields: apitypes.StepFields{Argv: []string{"/bin/echo", "hi"}, Env: map[string]string{"A": "b"}}}, &task)
	h.must(200, "GET", ws+"/tasks", nil, nil)
	h.must(200, "GET", ws+"/tasks?server="+srv.ID+"&state=queued&limit=5", nil, nil)
	h.must(200, "GET", ws+"/tasks/"+task.ID, nil, nil)
	h.must(202, "POST", ws+"/tasks/"+task.ID+"/cancel", nil, nil)
	h.must(200, "GET", ws+"/tasks/"+task.ID+"/logs", nil, nil)
	// The canceled task is final: the stream ends with its "end" event.
	if r := h.must(200, "GET", ws+"/tasks/"+task.ID+"/logs?follow=1", nil, nil); !strings.Contains(string(r.body), "event: end") {
		t.Errorf("follow of a final task: %q, want an end event", r.body)
	}

	var dep apitypes.Deployment
	h.must(202, "POST", ws+"/deployments", apitypes.CreateDeployment{Servers: []string{srv.ID},
		Plan: apitypes.Plan{Steps: []apitypes.TaskStep{{Name: "hi", Kind: "exec", StepFields: apitypes.StepFields{Argv: []string{"/bin/true"}}}}}}, &dep)
	h.must(200, "GET", ws+"/deployments", nil, nil)
	h.must(200, "GET", ws+"/deployments/"+dep.ID, nil, nil)

	h.must(200, "GET", ws+"/agent-rollouts", nil, nil)
	if r := h.do(h.token, "POST", ws+"/agent-rollouts", apitypes.CreateRollout{Version: "9.9.9"}); r.status != 422 && r.status != 503 {
		t.Errorf("rollout of an unknown version: %d %s, want 422 (or 503 without releases)", r.status, r.body)
	}
	// A signed release: a rollout of it over the still provisioning
	// server is recorded, the server skipped.
	bin := filepath.Join(t.TempDir(), "devpilot-agent")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := h.env.AddRelease(bin, "9.1.0"); err != nil {
		t.Fatal(err)
	}
	var ro apitypes.Rollout
	h.must(202, "POST", ws+"/agent-rollouts", apitypes.CreateRollout{Version: "9.1.0", Servers: []string{srv.ID}}, &ro)
	h.must(200, "GET", ws+"/agent-rollouts/"+ro.ID, nil, nil)
	if r := h.do(h.token, "GET", ws+"/agent-rollouts/rol_aaaaaaaaaaaaaaaa", nil); r.status != 404 {
		t.Errorf("an unknown rollout: %d %s, want 404", r.status, r.body)
	}
	if r := h.do(h.token, "POST", ws+"/agent-rollouts/rol_aaaaaaaaaaaaaaaa/pause", nil); r.status != 404 {
		t.Errorf("pause of an unknown rollout: %d %s, want 404", r.status, r.body)
	}
	var rule apitypes.AlertRule
	ninety, forS, renamed := 90.0, 120, "disk-full"
	h.must(201, "POST", ws+"/alert-rules", apitypes.CreateAlertRule{Name: "disk", Kind: "disk", ThresholdPercent: &ninety, ForS: 300}, &rule)
	h.must(201, "POST", ws+"/alert-rules", apitypes.CreateAlertRule{Name: "down", Kind: "offline", ForS: 60, Tag: "devpilot"}, nil)
	h.must(200, "GET", ws+"/alert-rules", nil, nil)
	h.must(200, "GET", ws+"/alert-rules?name=down&limit=1", nil, nil)
	h.must(200, "GET", ws+"/alert-rules/"+rule.ID, nil, nil)
	h.must(200, "PATCH", ws+"/alert-rules/"+rule.ID, apitypes.UpdateAlertRule{Name: &renamed, ForS: &forS}, nil)
	h.must(200, "GET", ws+"/alerts", nil, nil)
	h.must(200, "GET", ws+"/alerts?state=all", nil, nil)
	h.must(204, "DELETE", ws+"/alert-rules/"+rule.ID, nil, nil)

	var tok apitypes.CreatedToken
	h.must(201, "POST", ws+"/tokens", apitypes.CreateToken{Name: "ci", Role: "viewer"}, &tok)
	h.must(200, "GET", ws+"/tokens", nil, nil)
	h.must(204, "DELETE", ws+"/tokens/"+tok.ID, nil, nil)
	h.must(200, "GET", ws+"/audit", nil, nil)
	h.must(200, "GET", ws+"/events?type=server.*&limit=5", nil, nil)
	if e := nextEvent(t, followEvents(t, h, ws+"/events?follow=1&type=task.canceled&last=1", ""), events.TaskCanceled); e.ev.Subject != task.ID {
		t.Errorf("follow: %+v, want the canceled task's event", e)
	}
	webhookWalkthrough(t, h, ws)
	h.must(200, "POST", "/v1/keys/rotate", nil, nil)

	h.must(202, "DELETE", ws+"/servers/"+srv.ID+"?destroy=true", nil, nil)
	h.must(204, "DELETE", ws+"/integrations/"+in.ID, nil, nil)
	for _, p := range []string{"/v1/agent/connect", "/v1/agent/download/linux/amd64"} {
		if r := h.do("-", "GET", p, nil); r.status < 400 {
			t.Errorf("GET %s: %d", p, r.status)
		}
	}

	ok := map[string]bool{}
	for _, e := range h.check.exchanges() {
		if e.status < 300 {
			ok[e.op] = true
		}
	}
	var missing []string
	for _, op := range openSpec(t).operations() {
		if _, exempt := exempt200[op]; !ok[op] && !exempt {
			missing = append(missing, op)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("operations never answered 2xx in the walkthrough: %s", strings.Join(missing, ", "))
	}
}

// TestErrorsHaveOneShape: refusals of every kind carry the documented
// error body with a code, a message and a hint where one helps, and a
// route that does not exist is a JSON not_found too.
func TestErrorsHaveOneShape(t *testing.T) {
	h := start(t)
	ws := "/v1/workspaces/default"
	for _, tc := range []struct {
		name, method, path string
		body               any
		status             int
		code, inMessage    string
	}{
		{"unknown field", "POST", ws + "/tokens", `{"name":"a","role":"viewer","colour":"red"}`, 400, "validation_failed", `unknown field "colour"`},
		{"syntax", "POST", ws + "/tokens", `{"name":`, 400, "validation_failed", "malformed JSON body"},
		{"trailing data", "POST", ws + "/tokens", `{"name":"a","role":"viewer"} {}`, 400, "validation_failed", "data after the JSON value"},
		{"too large", "POST", ws + "/tokens", `{"name":"` + strings.Repeat("a", 1<<20) + `"}`, 400, "validation_failed", "larger than 1048576 bytes"},
		{"bad role", "POST", ws + "/tokens", apitypes.CreateToken{Name: "a", Role: "root"}, 400, "validation_failed", `invalid role "root"`},
		{"no such workspace", "GET", "/v1/workspaces/nope/servers", nil, 404, "not_found", "workspace nope"},
		{"no such server", "GET", ws + "/servers/srv_aaaaaaaaaaaaaaaa", nil, 404, "not_found", ""},
		{"no such task", "GET", ws + "/tasks/task_aaaaaaaaaaaaaaaa", nil, 404, "not_found", ""},
		{"bad since", "GET", ws + "/servers/srv_aaaaaaaaaaaaaaaa/health?since=1y", nil, 400, "validation_failed", "invalid since"},
	} {
		r := h.do(h.token, tc.method, tc.path, tc.body)
		var e apitypes.ErrorBody
		_ = json.Unmarshal(r.body, &e)
		if r.status != tc.status || e.Error.Code != tc.code || !strings.Contains(e.Error.Message, tc.inMessage) {
			t.Errorf("%s: %d %s, want %d %s containing %q", tc.name, r.status, r.body, tc.status, tc.code, tc.inMessage)
		}
	}
	// A path outside the document: the answer is still the error shape.
	r := h.doClient(&http.Client{Transport: h.base}, h.token, "GET", "/v1/nothing-here", nil)
	if r.status != 404 || r.errorCode() != "not_found" {
		t.Errorf("unknown route: %d %s", r.status, r.body)
	}
}

// TestActionsHoldToTheDocument: with a real (sandboxed) agent online, a
// lifecycle action's 202, its progress and the list all hold to the
// document, and the action ends with every step done.
func TestActionsHoldToTheDocument(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent and waits for a simulated server to come online (make test runs it)")
	}
	h := startWithAgents(t)
	ws := "/v1/workspaces/default"
	in := h.connect("default", "do-main")
	var srv apitypes.Server
	h.must(202, "POST", ws+"/servers", apitypes.CreateServer{IntegrationID: in.ID, Name: "web-1", Region: "nyc3",
		Size: "s-1vcpu-1gb", Image: "debian-12", Ports: []int{22, 80}}, &srv)
	deadline := time.Now().Add(3 * time.Minute)
	for srv.State != "online" {
		if srv.State == "failed" || time.Now().After(deadline) {
			t.Fatalf("server %s: %s %+v", srv.Name, srv.State, srv.Error)
		}
		time.Sleep(100 * time.Millisecond)
		h.must(200, "GET", ws+"/servers/"+srv.ID, nil, &srv)
	}
	var act apitypes.Action
	h.must(202, "POST", ws+"/servers/"+srv.ID+"/actions", apitypes.ActionRequest{Type: "rename", Name: "web-one"}, &act)
	if r := h.do(h.token, "POST", ws+"/servers/"+srv.ID+"/actions", apitypes.ActionRequest{Type: "reboot"}); r.status != 409 && r.status != 202 {
		t.Errorf("a second action: %d %s, want 409 while the first runs (or 202 once it ended)", r.status, r.body)
	}
	for act.State != "succeeded" {
		if act.State == "failed" || time.Now().After(deadline) {
			t.Fatalf("rename: %s %+v steps %+v", act.State, act.Error, act.Steps)
		}
		time.Sleep(100 * time.Millisecond)
		h.must(200, "GET", ws+"/servers/"+srv.ID+"/actions/"+act.ID, nil, &act)
	}
	var list apitypes.ActionList
	h.must(200, "GET", ws+"/servers/"+srv.ID+"/actions?limit=1", nil, &list)
	if len(list.Actions) != 1 {
		t.Errorf("actions?limit=1: %d actions", len(list.Actions))
	}
	h.must(200, "GET", ws+"/servers/"+srv.ID, nil, &srv)
	if srv.Name != "web-one" {
		t.Errorf("after rename: name %q", srv.Name)
	}
}
