package api

import (
	"context"
	"net/http"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/rollout"
	"github.com/devpilot/devpilot/controlplane/store"
)

// Agent rollouts (issue 13):
//
//	POST /v1/workspaces/{ws}/agent-rollouts                 apitypes.CreateRollout → 202 apitypes.Rollout
//	GET  /v1/workspaces/{ws}/agent-rollouts                 ?limit=&cursor= → {"rollouts": [...], "next": ""}
//	GET  /v1/workspaces/{ws}/agent-rollouts/{id}            → apitypes.Rollout with its targets
//	POST /v1/workspaces/{ws}/agent-rollouts/{id}/pause      → 200 apitypes.Rollout
//	POST /v1/workspaces/{ws}/agent-rollouts/{id}/resume     → 200 apitypes.Rollout
//	POST /v1/workspaces/{ws}/agent-rollouts/{id}/abort      → 200 apitypes.Rollout
//
// 422 validation_failed names the valid choices (an unknown version lists
// the available releases); 409 when the workspace has a rollout under
// way, or the rollout's state does not allow the verb; 503 unavailable on
// a control plane without agent releases.
func (a *API) rolloutRoutes() {
	if a.o.Rollouts == nil {
		return
	}
	a.handle("POST /v1/workspaces/{ws}/agent-rollouts", write, a.createRollout)
	a.handle("GET /v1/workspaces/{ws}/agent-rollouts", read, a.listRollouts)
	a.handle("GET /v1/workspaces/{ws}/agent-rollouts/{id}", read, a.getRollout)
	a.handle("POST /v1/workspaces/{ws}/agent-rollouts/{id}/pause", write, a.rolloutVerb((*rollout.Service).Pause))
	a.handle("POST /v1/workspaces/{ws}/agent-rollouts/{id}/resume", write, a.rolloutVerb((*rollout.Service).Resume))
	a.handle("POST /v1/workspaces/{ws}/agent-rollouts/{id}/abort", write, a.rolloutVerb((*rollout.Service).Abort))
}

func (a *API) createRollout(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apitypes.CreateRollout
	if err := decode(r, &req); err != nil {
		return err
	}
	ro, err := a.o.Rollouts.Create(r.Context(), c.p.Actor(), c.ws.ID, req)
	if err != nil {
		return err
	}
	w.Header().Set("Location", r.URL.Path+"/"+ro.ID)
	return writeJSON(w, http.StatusAccepted, ro)
}

func (a *API) listRollouts(w http.ResponseWriter, r *http.Request, c *call) error {
	pg, err := pageOf(r)
	if err != nil {
		return err
	}
	list, more, err := a.o.Rollouts.List(r.Context(), c.ws.ID, pg.after, pg.limit)
	if err != nil {
		return err
	}
	out := apitypes.RolloutList{Rollouts: list}
	if more {
		last := list[len(list)-1]
		out.Next = nextLink(r, store.Cursor{At: last.CreatedAt, ID: last.ID})
	}
	return writeJSON(w, http.StatusOK, out)
}

func (a *API) getRollout(w http.ResponseWriter, r *http.Request, c *call) error {
	ro, err := a.o.Rollouts.Get(r.Context(), c.ws.ID, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, ro)
}

type rolloutVerbFunc func(s *rollout.Service, ctx context.Context, actor, workspaceID, id string) (*apitypes.Rollout, error)

func (a *API) rolloutVerb(fn rolloutVerbFunc) func(http.ResponseWriter, *http.Request, *call) error {
	return func(w http.ResponseWriter, r *http.Request, c *call) error {
		ro, err := fn(a.o.Rollouts, r.Context(), c.p.Actor(), c.ws.ID, r.PathValue("id"))
		if err != nil {
			return err
		}
		return writeJSON(w, http.StatusOK, ro)
	}
}
