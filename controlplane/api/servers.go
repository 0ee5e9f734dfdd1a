package api

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/provision"
	"github.com/devpilot/devpilot/controlplane/store"
)

func (a *API) serverRoutes() {
	if a.o.Servers == nil {
		return
	}
	a.handle("GET /v1/workspaces/{ws}/servers", read, a.listServers)
	a.handle("POST /v1/workspaces/{ws}/servers", write, a.createServer)
	a.handle("GET /v1/workspaces/{ws}/servers/{id}", read, a.getServer)
	a.handle("DELETE /v1/workspaces/{ws}/servers/{id}", write, a.deleteServer)
	a.handle("GET /v1/workspaces/{ws}/servers/{id}/health", read, a.serverHealth)
	a.handle("POST /v1/workspaces/{ws}/servers/{id}/rekey", write, a.rekeyServer)
}

// rekeyServer revokes the server's agent key and hands the real agent a
// one-time bootstrap token over SSH, or answers it (shown only here) with
// the command to run on the server.
func (a *API) rekeyServer(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apitypes.RekeyRequest
	if r.ContentLength != 0 {
		if err := decode(r, &req); err != nil {
			return err
		}
	}
	rk, err := a.o.Servers.Rekey(r.Context(), c.p.Actor(), c.ws.ID, r.PathValue("id"), provision.RekeyRequest{Print: req.Print})
	if err != nil {
		return err
	}
	w.Header().Set("Cache-Control", "no-store")
	return writeJSON(w, http.StatusOK, rekeyOut(rk))
}

// serverHealth returns stored health samples: ?since=1h (a duration, at
// most the history's retention, default 24h).
func (a *API) serverHealth(w http.ResponseWriter, r *http.Request, c *call) error {
	since := time.Hour
	if v := r.URL.Query().Get("since"); v != "" {
		d, err := time.ParseDuration(v)
		if keep := a.o.Servers.HealthRetention(); err != nil || d <= 0 || d > keep {
			return problem.Validation(fmt.Sprintf("Use a duration such as 15m or 1h, at most %s (--health-history-retention).", keep),
				"invalid since %q", v)
		}
		since = d
	}
	pts, err := a.o.Servers.HealthSince(r.Context(), c.ws.ID, r.PathValue("id"), a.o.Now().Add(-since))
	if err != nil {
		return err
	}
	out := apitypes.HealthSamples{Samples: make([]apitypes.HealthSample, 0, len(pts))}
	for _, p := range pts {
		out.Samples = append(out.Samples, healthOut(p))
	}
	return writeJSON(w, http.StatusOK, out)
}

// listServers pages a workspace's servers, oldest first, filtered by
// ?state=, ?tag=, ?integration= and ?name=.
func (a *API) listServers(w http.ResponseWriter, r *http.Request, c *call) error {
	pg, err := pageOf(r)
	if err != nil {
		return err
	}
	q := r.URL.Query()
	f := store.ServerFilter{State: q.Get("state"), IntegrationID: q.Get("integration"), Name: q.Get("name"),
		After: pg.after, Limit: pg.limit + 1}
	out := apitypes.ServerList{Servers: []apitypes.Server{}}
	// Tags are those Devpilot sets: every server carries TagAll and its
	// workspace's tag; TagServer names one server.
	switch tag := q.Get("tag"); {
	case tag == "" || tag == provision.TagAll || tag == provision.TagWorkspace(c.ws.Slug):
	case strings.HasPrefix(tag, provision.TagServer("")):
		f.ID = strings.TrimPrefix(tag, provision.TagServer(""))
	default:
		return writeJSON(w, http.StatusOK, out)
	}
	list, err := a.o.Servers.List(r.Context(), c.ws.ID, f)
	if err != nil {
		return err
	}
	list, more := trim(list, pg.limit)
	for _, s := range list {
		out.Servers = append(out.Servers, serverOut(s))
	}
	if more {
		last := list[len(list)-1]
		out.Next = nextLink(r, store.Cursor{At: last.CreatedAt, ID: last.ID})
	}
	return writeJSON(w, http.StatusOK, out)
}

func (a *API) createServer(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apitypes.CreateServer
	if err := decode(r, &req); err != nil {
		return err
	}
	srv, err := a.o.Servers.Create(r.Context(), c.p.Actor(), c.ws.ID, createServerIn(req))
	if err != nil {
		return err
	}
	w.Header().Set("Location", r.URL.Path+"/"+srv.ID)
	return writeJSON(w, http.StatusAccepted, serverOut(srv))
}

func (a *API) getServer(w http.ResponseWriter, r *http.Request, c *call) error {
	srv, err := a.o.Servers.Get(r.Context(), c.ws.ID, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, serverOut(srv))
}

func (a *API) deleteServer(w http.ResponseWriter, r *http.Request, c *call) error {
	destroy := r.URL.Query().Get("destroy")
	srv, err := a.o.Servers.Delete(r.Context(), c.p.Actor(), c.ws.ID, r.PathValue("id"), destroy == "true" || destroy == "1")
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusAccepted, serverOut(srv))
}
