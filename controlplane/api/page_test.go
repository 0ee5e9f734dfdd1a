package api_test

import (
	"fmt"
	"net/url"
	"strings"
	"testing"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// follow GETs path and every next link after it, decoding each page with
// items, and returns how many pages it took.
func follow(t *testing.T, h *harness, path string, items func(r response) (n int, next string)) int {
	t.Helper()
	pages := 0
	for path != "" {
		r := h.must(200, "GET", path, nil, nil)
		n, next := items(r)
		pages++
		if next != "" && n == 0 {
			t.Fatalf("GET %s: an empty page with a next link", path)
		}
		if pages > 100 {
			t.Fatalf("GET %s: more than 100 pages", path)
		}
		path = next
	}
	return pages
}

// TestListsPageThroughEverythingOnce: each list, read two at a time by
// following next, yields every item exactly once in the list's order, and
// the last page says so with an empty next.
func TestListsPageThroughEverythingOnce(t *testing.T) {
	h := start(t)
	ws := "/v1/workspaces/default"
	for i := range 5 {
		h.must(201, "POST", "/v1/workspaces", apitypes.CreateWorkspace{Slug: fmt.Sprintf("w%d", i)}, nil)
		h.must(201, "POST", ws+"/tokens", apitypes.CreateToken{Name: fmt.Sprintf("t%d", i), Role: "viewer"}, nil)
	}
	in := h.connect("default", "do-a")
	var srvs []string
	for i := range 5 {
		var s apitypes.Server
		h.must(202, "POST", ws+"/servers", apitypes.CreateServer{IntegrationID: in.ID, Name: fmt.Sprintf("web-%d", i),
			Region: "nyc3", Size: "s-1vcpu-1gb", Image: "debian-12"}, &s)
		srvs = append(srvs, s.ID)
		h.must(202, "POST", ws+"/servers/"+s.ID+"/tasks", apitypes.TaskSpec{Kind: "exec",
			StepFields: apitypes.StepFields{Argv: []string{"/bin/true"}}}, nil)
		h.must(202, "POST", ws+"/deployments", apitypes.CreateDeployment{Servers: []string{s.ID},
			Plan: apitypes.Plan{Steps: []apitypes.TaskStep{{Kind: "exec", StepFields: apitypes.StepFields{Argv: []string{"/bin/true"}}}}}}, nil)
	}

	var slugs []string
	if p := follow(t, h, "/v1/workspaces?limit=2", func(r response) (int, string) {
		var l apitypes.WorkspaceList
		r.decode(t, &l)
		for _, w := range l.Workspaces {
			slugs = append(slugs, w.Slug)
		}
		return len(l.Workspaces), l.Next
	}); p != 3 || strings.Join(slugs, ",") != "default,w0,w1,w2,w3,w4" {
		t.Errorf("workspaces in %d pages: %v", p, slugs)
	}

	var names []string
	follow(t, h, ws+"/tokens?limit=2", func(r response) (int, string) {
		var l apitypes.TokenList
		r.decode(t, &l)
		for _, tk := range l.Tokens {
			names = append(names, tk.Name)
		}
		return len(l.Tokens), l.Next
	})
	if got := strings.Join(names, ","); !strings.HasPrefix(got, "t4,t3,t2,t1,t0") || len(names) != 6 {
		t.Errorf("tokens, newest first: %s", got)
	}

	var got []string
	if p := follow(t, h, ws+"/servers?limit=2", func(r response) (int, string) {
		var l apitypes.ServerList
		r.decode(t, &l)
		for _, s := range l.Servers {
			got = append(got, s.ID)
		}
		return len(l.Servers), l.Next
	}); p != 3 || strings.Join(got, ",") != strings.Join(srvs, ",") {
		t.Errorf("servers in %d pages: %v, want %v", p, got, srvs)
	}

	seen := map[string]bool{}
	follow(t, h, ws+"/tasks?limit=2", func(r response) (int, string) {
		var l apitypes.TaskList
		r.decode(t, &l)
		for _, tk := range l.Tasks {
			if seen[tk.ID] {
				t.Errorf("task %s twice", tk.ID)
			}
			seen[tk.ID] = true
		}
		return len(l.Tasks), l.Next
	})
	// 5 exec tasks and 5 deploy tasks.
	if len(seen) != 10 {
		t.Errorf("%d tasks paged, want 10", len(seen))
	}
	deps := 0
	follow(t, h, ws+"/deployments?limit=3", func(r response) (int, string) {
		var l apitypes.DeploymentList
		r.decode(t, &l)
		deps += len(l.Deployments)
		return len(l.Deployments), l.Next
	})
	auditN, prev := 0, int64(1<<62)
	follow(t, h, ws+"/audit?limit=4", func(r response) (int, string) {
		var l apitypes.AuditList
		r.decode(t, &l)
		for _, e := range l.Entries {
			if e.ID >= prev {
				t.Errorf("audit not newest first: %d after %d", e.ID, prev)
			}
			prev = e.ID
		}
		auditN += len(l.Entries)
		return len(l.Entries), l.Next
	})
	if deps != 5 || auditN < 20 {
		t.Errorf("%d deployments (want 5), %d audit entries (want ≥ 20)", deps, auditN)
	}

	// Filters travel in next links.
	var l apitypes.ServerList
	h.must(200, "GET", ws+"/servers?name=web-3", nil, &l)
	if len(l.Servers) != 1 || l.Servers[0].Name != "web-3" || l.Next != "" {
		t.Errorf("?name=web-3: %+v", l)
	}
	h.must(200, "GET", ws+"/servers?integration="+in.ID+"&limit=4", nil, &l)
	if len(l.Servers) != 4 || !strings.Contains(l.Next, "integration="+in.ID) || !strings.Contains(l.Next, "limit=4") {
		t.Errorf("?integration&limit=4: %d servers, next %q", len(l.Servers), l.Next)
	}
	h.must(200, "GET", ws+"/servers?integration=int_nope", nil, &l)
	if len(l.Servers) != 0 {
		t.Errorf("?integration=int_nope: %d servers", len(l.Servers))
	}
	h.must(200, "GET", ws+"/servers?tag=devpilot-srv-"+srvs[2], nil, &l)
	if len(l.Servers) != 1 || l.Servers[0].ID != srvs[2] {
		t.Errorf("?tag=devpilot-srv-…: %+v", l.Servers)
	}
	h.must(200, "GET", ws+"/servers?tag=devpilot", nil, &l)
	if len(l.Servers) != 5 {
		t.Errorf("?tag=devpilot: %d servers, want 5", len(l.Servers))
	}
	h.must(200, "GET", ws+"/servers?tag=nothing-has-this", nil, &l)
	if len(l.Servers) != 0 {
		t.Errorf("?tag=nothing-has-this: %d servers", len(l.Servers))
	}
	var il apitypes.IntegrationList
	h.connect("default", "do-b")
	h.must(200, "GET", ws+"/integrations?name=do-b", nil, &il)
	if len(il.Integrations) != 1 || il.Integrations[0].AccessKey != "do-b" {
		t.Errorf("?name=do-b: %+v", il)
	}
	h.must(200, "GET", ws+"/integrations?limit=1", nil, &il)
	if len(il.Integrations) != 1 || il.Next == "" {
		t.Errorf("integrations ?limit=1: %+v", il)
	}
}

// TestListParametersAreValidatedAtTheDoor: a bad limit, cursor or state
// is a 400 validation_failed that says what is valid.
func TestListParametersAreValidatedAtTheDoor(t *testing.T) {
	h := start(t)
	ws := "/v1/workspaces/default"
	for _, tc := range []struct{ path, hint string }{
		{ws + "/servers?limit=0", "limit=1..1000"},
		{ws + "/servers?limit=1001", "limit=1..1000"},
		{ws + "/tasks?limit=-1", "limit=1..1000"},
		{ws + "/tokens?limit=ten", "limit=1..1000"},
		{ws + "/deployments?limit=+5", "limit=1..1000"},
		{"/v1/workspaces?cursor=bm9wZQ", "cursor"},
		{ws + "/servers?cursor=" + url.QueryEscape("!!"), "cursor"},
		{ws + "/audit?cursor=e30", "cursor"},
		{ws + "/servers?state=sleeping", "online"},
		{ws + "/tasks?state=sleeping", "succeeded"},
	} {
		r := h.do(h.token, "GET", tc.path, nil)
		var e apitypes.ErrorBody
		r.decode(t, &e)
		if r.status != 400 || e.Error.Code != "validation_failed" || !strings.Contains(e.Error.Hint+e.Error.Message, tc.hint) {
			t.Errorf("GET %s: %d %s, want 400 validation_failed naming %q", tc.path, r.status, r.body, tc.hint)
		}
	}
}
