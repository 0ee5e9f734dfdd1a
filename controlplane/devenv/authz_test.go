package devenv_test

import (
	"fmt"
	"net/http"
	"testing"
)

func TestEveryAdminRouteNeedsAToken(t *testing.T) {
	h := start(t)
	routes := []struct{ method, path string }{
		{"GET", "/v1/whoami"}, {"GET", "/v1/workspaces"}, {"POST", "/v1/workspaces"}, {"POST", "/v1/keys/rotate"},
		{"GET", "/v1/workspaces/default/tokens"}, {"POST", "/v1/workspaces/default/tokens"},
		{"DELETE", "/v1/workspaces/default/tokens/x"}, {"GET", "/v1/workspaces/default/audit"},
		{"GET", base}, {"POST", base}, {"GET", base + "/x"}, {"PATCH", base + "/x"}, {"DELETE", base + "/x"},
		{"POST", base + "/x/test"}, {"PUT", base + "/x/secret"}, {"GET", base + "/x/catalog"},
		{"GET", "/v1/nothing-here"},
	}
	// Each bad token from an address of its own: more failures than the
	// per-address budget from one address get 429 (TestFailedAuthentications-
	// AreThrottled in controlplane/app), and this test is about the routes.
	for i, tok := range []string{"-", "garbage", "dpt_abc_def", h.token + "x"} {
		restore := h.from(fmt.Sprintf("127.0.0.%d", 20+i))
		for _, r := range routes {
			var ae apiError
			if c := h.call(tok, r.method, r.path, nil, &ae); c != http.StatusUnauthorized || ae.Error.Code != "unauthorized" {
				t.Errorf("%s %s with token %q: %d %+v, want 401 unauthorized", r.method, r.path, tok, c, ae)
			}
		}
		restore()
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		if c := h.call("-", "GET", p, nil, nil); c != 200 {
			t.Errorf("%s: %d", p, c)
		}
	}
}

func TestViewerReadsButCannotChange(t *testing.T) {
	h := start(t)
	v := h.env.Values
	_, in, _ := h.connect("digitalocean", "do", v["DO_SIM_TOKEN"])
	var tok struct {
		ID    string `json:"id"`
		Token string `json:"token"`
	}
	if c := h.call("", "POST", "/v1/workspaces/default/tokens", map[string]string{"name": "ci", "role": "viewer"}, &tok); c != 201 || tok.Token == "" {
		t.Fatalf("create viewer token: %d", c)
	}
	for _, r := range []struct{ method, path string }{
		{"GET", base}, {"GET", base + "/" + in.ID}, {"GET", base + "/" + in.ID + "/catalog"},
		{"GET", "/v1/workspaces/default/audit"}, {"GET", "/v1/workspaces/default/tokens"},
	} {
		if c := h.call(tok.Token, r.method, r.path, nil, nil); c != 200 {
			t.Errorf("viewer %s %s: %d, want 200", r.method, r.path, c)
		}
	}
	writes := []struct {
		method, path string
		body         any
	}{
		{"POST", base, map[string]string{"provider": "digitalocean", "access_key": "x", "secret_key": v["DO_SIM_TOKEN"]}},
		{"POST", base + "/" + in.ID + "/test", nil},
		{"PUT", base + "/" + in.ID + "/secret", map[string]string{"secret_key": v["DO_SIM_TOKEN"]}},
		{"PATCH", base + "/" + in.ID, map[string]string{"access_key": "renamed"}},
		{"DELETE", base + "/" + in.ID, nil},
		{"POST", "/v1/workspaces/default/tokens", map[string]string{"name": "x", "role": "admin"}},
		{"DELETE", "/v1/workspaces/default/tokens/" + tok.ID, nil},
		{"POST", "/v1/workspaces", map[string]string{"slug": "other"}},
		{"POST", "/v1/keys/rotate", nil},
	}
	for _, w := range writes {
		var ae apiError
		if c := h.call(tok.Token, w.method, w.path, w.body, &ae); c != http.StatusForbidden || ae.Error.Code != "forbidden" {
			t.Errorf("viewer %s %s: %d %+v, want 403", w.method, w.path, c, ae)
		}
	}
	var got integration
	h.call("", "GET", base+"/"+in.ID, nil, &got)
	if got.AccessKey != "do" {
		t.Errorf("viewer changed the integration: %+v", got)
	}
	// Revoked tokens stop working at once.
	if c := h.call("", "DELETE", "/v1/workspaces/default/tokens/"+tok.ID, nil, nil); c != 204 {
		t.Fatalf("revoke: %d", c)
	}
	if c := h.call(tok.Token, "GET", base, nil, nil); c != http.StatusUnauthorized {
		t.Errorf("revoked token: %d, want 401", c)
	}
}

func TestOtherWorkspacesAreInvisible(t *testing.T) {
	h := start(t)
	v := h.env.Values
	_, doDefault, _ := h.connect("digitalocean", "do", v["DO_SIM_TOKEN"])
	if c := h.call("", "POST", "/v1/workspaces", map[string]string{"slug": "team-b"}, nil); c != 201 {
		t.Fatalf("create workspace: %d", c)
	}
	var admB struct{ Token string }
	if c := h.call("", "POST", "/v1/workspaces/team-b/tokens", map[string]string{"name": "b", "role": "admin"}, &admB); c != 201 {
		t.Fatalf("token for team-b: %d", c)
	}
	// team-b's admin sees its own workspace and nothing of default's.
	if c := h.call(admB.Token, "GET", "/v1/workspaces/team-b/integrations", nil, nil); c != 200 {
		t.Errorf("own workspace: %d", c)
	}
	for _, r := range []struct{ method, path string }{
		{"GET", base}, {"GET", base + "/" + doDefault.ID}, {"DELETE", base + "/" + doDefault.ID},
		{"GET", "/v1/workspaces/default/audit"}, {"GET", "/v1/workspaces/default/tokens"},
		{"GET", "/v1/workspaces/no-such/integrations"},
	} {
		var ae apiError
		if c := h.call(admB.Token, r.method, r.path, nil, &ae); c != http.StatusNotFound || ae.Error.Code != "not_found" {
			t.Errorf("team-b token %s %s: %d %+v, want 404", r.method, r.path, c, ae)
		}
	}
	// The integration id of default, asked through team-b's own path, is not found either.
	if c := h.call(admB.Token, "GET", "/v1/workspaces/team-b/integrations/"+doDefault.ID, nil, nil); c != http.StatusNotFound {
		t.Errorf("foreign integration id via own workspace: %d", c)
	}
	var ws struct{ Workspaces []struct{ Slug string } }
	h.call(admB.Token, "GET", "/v1/workspaces", nil, &ws)
	if len(ws.Workspaces) != 1 || ws.Workspaces[0].Slug != "team-b" {
		t.Errorf("team-b lists workspaces %+v", ws.Workspaces)
	}
}
