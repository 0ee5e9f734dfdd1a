package api_test

import (
	"strings"
	"testing"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// authTable says what each route requires: "none" (public), "read" (any
// token of the workspace), "write" (owner or admin) or "owner" (the owner
// token only). A route registered without a row here fails
// TestAuthPerRoute, and so does a row whose route is gone.
var authTable = map[string]string{
	"GET /healthz":                           "none",
	"GET /readyz":                            "none",
	"GET /metrics":                           "none",
	"GET /v1/openapi.json":                   "none",
	"GET /v1/agent/":                         "none",
	"GET /v1/whoami":                         "read",
	"GET /v1/workspaces":                     "read",
	"POST /v1/workspaces":                    "owner",
	"POST /v1/keys/rotate":                   "owner",
	"GET /v1/workspaces/{ws}/tokens":         "read",
	"POST /v1/workspaces/{ws}/tokens":        "write",
	"DELETE /v1/workspaces/{ws}/tokens/{id}": "write",
	"GET /v1/workspaces/{ws}/audit":          "read",

	"GET /v1/workspaces/{ws}/integrations":              "read",
	"POST /v1/workspaces/{ws}/integrations":             "write",
	"GET /v1/workspaces/{ws}/integrations/{id}":         "read",
	"PATCH /v1/workspaces/{ws}/integrations/{id}":       "write",
	"DELETE /v1/workspaces/{ws}/integrations/{id}":      "write",
	"POST /v1/workspaces/{ws}/integrations/{id}/test":   "write",
	"PUT /v1/workspaces/{ws}/integrations/{id}/secret":  "write",
	"GET /v1/workspaces/{ws}/integrations/{id}/catalog": "read",

	"GET /v1/workspaces/{ws}/servers":                       "read",
	"POST /v1/workspaces/{ws}/servers":                      "write",
	"GET /v1/workspaces/{ws}/servers/{id}":                  "read",
	"DELETE /v1/workspaces/{ws}/servers/{id}":               "write",
	"GET /v1/workspaces/{ws}/servers/{id}/health":           "read",
	"POST /v1/workspaces/{ws}/servers/{id}/rekey":           "write",
	"POST /v1/workspaces/{ws}/servers/{id}/actions":         "write",
	"GET /v1/workspaces/{ws}/servers/{id}/actions":          "read",
	"GET /v1/workspaces/{ws}/servers/{id}/actions/{action}": "read",

	"POST /v1/workspaces/{ws}/servers/{id}/tasks": "write",
	"GET /v1/workspaces/{ws}/tasks":               "read",
	"GET /v1/workspaces/{ws}/tasks/{id}":          "read",
	"POST /v1/workspaces/{ws}/tasks/{id}/cancel":  "write",
	"GET /v1/workspaces/{ws}/tasks/{id}/logs":     "read",
	"POST /v1/workspaces/{ws}/deployments":        "write",
	"GET /v1/workspaces/{ws}/deployments":         "read",
	"GET /v1/workspaces/{ws}/deployments/{id}":    "read",

	"GET /v1/agent-releases":                              "read",
	"POST /v1/workspaces/{ws}/agent-rollouts":             "write",
	"GET /v1/workspaces/{ws}/agent-rollouts":              "read",
	"GET /v1/workspaces/{ws}/agent-rollouts/{id}":         "read",
	"POST /v1/workspaces/{ws}/agent-rollouts/{id}/pause":  "write",
	"POST /v1/workspaces/{ws}/agent-rollouts/{id}/resume": "write",
	"POST /v1/workspaces/{ws}/agent-rollouts/{id}/abort":  "write",

	// Alert rules and alerts (issue 14).
	"POST /v1/workspaces/{ws}/alert-rules":        "write",
	"GET /v1/workspaces/{ws}/alert-rules":         "read",
	"GET /v1/workspaces/{ws}/alert-rules/{id}":    "read",
	"PATCH /v1/workspaces/{ws}/alert-rules/{id}":  "write",
	"DELETE /v1/workspaces/{ws}/alert-rules/{id}": "write",
	"GET /v1/workspaces/{ws}/alerts":              "read",

	"GET /v1/workspaces/{ws}/events": "read",

	"POST /v1/workspaces/{ws}/webhooks":                                      "write",
	"GET /v1/workspaces/{ws}/webhooks":                                       "read",
	"GET /v1/workspaces/{ws}/webhooks/{id}":                                  "read",
	"PATCH /v1/workspaces/{ws}/webhooks/{id}":                                "write",
	"DELETE /v1/workspaces/{ws}/webhooks/{id}":                               "write",
	"GET /v1/workspaces/{ws}/webhooks/{id}/deliveries":                       "read",
	"POST /v1/workspaces/{ws}/webhooks/{id}/deliveries/{delivery}/redeliver": "write",
	"POST /v1/workspaces/{ws}/webhooks/{id}/ping":                            "write",
}

// concrete turns a mux pattern into a request path in workspace ws.
func concrete(pattern, ws string) (method, path string) {
	method, path, _ = strings.Cut(pattern, " ")
	if strings.HasSuffix(path, "/") && path != "/" {
		path += "download/linux/amd64"
	}
	r := strings.NewReplacer("{ws}", ws, "{id}", "x_aaaaaaaaaaaaaaaa", "{delivery}", "dl_aaaaaaaaaaaaaaaa")
	return method, r.Replace(path)
}

// TestAuthPerRoute sends every registered route's request with no token,
// a viewer's, an admin's and the owner's, and an admin token of another
// workspace, and checks each answer against authTable: 401 without a
// token, 403 for a role below the route's, 404 (the workspace's existence
// is not revealed) from another workspace, and past the door otherwise.
func TestAuthPerRoute(t *testing.T) {
	routes := registered(t)
	for _, r := range routes {
		want, ok := authTable[r.Pattern]
		switch {
		case !ok:
			t.Errorf("route %q has no row in authTable", r.Pattern)
		case want != r.Access:
			t.Errorf("route %q requires %q, authTable says %q", r.Pattern, r.Access, want)
		}
	}
	have := map[string]bool{}
	for _, r := range routes {
		have[r.Pattern] = true
	}
	for p := range authTable {
		if !have[p] {
			t.Errorf("authTable row %q: no such route", p)
		}
	}
	if t.Failed() {
		return
	}

	h := start(t)
	h.must(201, "POST", "/v1/workspaces", apitypes.CreateWorkspace{Slug: "team-b"}, nil)
	tokens := map[string]string{
		"viewer": h.newToken("default", "viewer"),
		"admin":  h.newToken("default", "admin"),
		"owner":  h.token,
	}
	other := h.newToken("team-b", "admin")
	rank := map[string]int{"none": 0, "read": 1, "write": 2, "owner": 3}
	roleRank := map[string]int{"viewer": 1, "admin": 2, "owner": 3}
	for _, r := range routes {
		need := authTable[r.Pattern]
		method, path := concrete(r.Pattern, "default")
		// No token.
		res := h.do("-", method, path, nil)
		if need == "none" {
			if res.status == 401 || res.status == 403 {
				t.Errorf("%s without a token: %d, want it served", r.Pattern, res.status)
			}
		} else if res.status != 401 || res.errorCode() != "unauthorized" || res.header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s without a token: %d %s, want 401 unauthorized with WWW-Authenticate", r.Pattern, res.status, res.body)
		}
		if need == "none" {
			continue
		}
		for _, role := range []string{"viewer", "admin", "owner"} {
			res := h.do(tokens[role], method, path, nil)
			if roleRank[role] < rank[need] {
				if res.status != 403 || res.errorCode() != "forbidden" {
					t.Errorf("%s as %s: %d %s, want 403 forbidden", r.Pattern, role, res.status, res.body)
				}
			} else if res.status == 401 || res.status == 403 {
				t.Errorf("%s as %s: %d %s, want it past the door", r.Pattern, role, res.status, res.body)
			}
		}
		if strings.Contains(r.Pattern, "{ws}") {
			if res := h.do(other, method, path, nil); res.status != 404 || res.errorCode() != "not_found" ||
				!strings.Contains(string(res.body), "workspace default") {
				t.Errorf("%s from another workspace: %d %s, want 404 not_found for the workspace", r.Pattern, res.status, res.body)
			}
		}
	}
}
