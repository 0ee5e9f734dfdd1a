package api

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/store"
)

// Lifecycle actions (issue 11):
//
//	POST /v1/workspaces/{ws}/servers/{id}/actions            apitypes.ActionRequest → 202 apitypes.Action
//	GET  /v1/workspaces/{ws}/servers/{id}/actions            ?limit=&cursor= → {"actions": [...], "next": ""}
//	GET  /v1/workspaces/{ws}/servers/{id}/actions/{action}   → apitypes.Action
//
// 409 conflict when the server has an unfinished action; 422
// validation_failed for an unknown type, a size the catalog does not offer,
// bad ports or a bad name (the hint names the valid choices); 400 for a
// malformed body.
func (a *API) actionRoutes() {
	if a.o.Servers == nil {
		return
	}
	a.handle("POST /v1/workspaces/{ws}/servers/{id}/actions", write, a.createAction)
	a.handle("GET /v1/workspaces/{ws}/servers/{id}/actions", read, a.listActions)
	a.handle("GET /v1/workspaces/{ws}/servers/{id}/actions/{action}", read, a.getAction)
}

func (a *API) createAction(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apitypes.ActionRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	act, err := a.o.Servers.CreateAction(r.Context(), c.p.Actor(), c.ws.ID, r.PathValue("id"), req)
	if err != nil {
		return err
	}
	detail, _ := json.Marshal(map[string]any{"action": act.ID, "type": act.Type, "params": act.Params})
	_ = a.o.Store.Q().AddAudit(r.Context(), store.AuditEntry{WorkspaceID: c.ws.ID, Actor: c.p.Actor(),
		Action: "server.action." + act.Type, Target: act.ServerID, DetailJSON: string(detail), At: a.o.Now()})
	w.Header().Set("Location", r.URL.Path+"/"+act.ID)
	return writeJSON(w, http.StatusAccepted, act)
}

func (a *API) listActions(w http.ResponseWriter, r *http.Request, c *call) error {
	q := r.URL.Query()
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return problem.Validation("limit is a number from 1 to 1000 (default 100).", "invalid limit %q", v)
		}
		limit = n
	}
	list, next, err := a.o.Servers.ListActions(r.Context(), c.ws.ID, r.PathValue("id"), q.Get("cursor"), limit)
	if err != nil {
		return err
	}
	out := apitypes.ActionList{Actions: list}
	if next != "" {
		v := url.Values{"cursor": {next}, "limit": {strconv.Itoa(limit)}}
		out.Next = r.URL.Path + "?" + v.Encode()
	}
	return writeJSON(w, http.StatusOK, out)
}

func (a *API) getAction(w http.ResponseWriter, r *http.Request, c *call) error {
	act, err := a.o.Servers.GetAction(r.Context(), c.ws.ID, r.PathValue("id"), r.PathValue("action"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, act)
}
