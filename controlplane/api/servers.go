package api

import (
	"net/http"

	"github.com/devpilot/devpilot/controlplane/provision"
)

func (a *API) serverRoutes() {
	if a.o.Servers == nil {
		return
	}
	a.handle("GET /v1/workspaces/{ws}/servers", read, a.listServers)
	a.handle("POST /v1/workspaces/{ws}/servers", write, a.createServer)
	a.handle("GET /v1/workspaces/{ws}/servers/{id}", read, a.getServer)
	a.handle("DELETE /v1/workspaces/{ws}/servers/{id}", write, a.deleteServer)
}

func (a *API) listServers(w http.ResponseWriter, r *http.Request, c *call) error {
	list, err := a.o.Servers.List(r.Context(), c.ws.ID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"servers": list})
}

func (a *API) createServer(w http.ResponseWriter, r *http.Request, c *call) error {
	var req provision.CreateRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	srv, err := a.o.Servers.Create(r.Context(), c.p.Actor(), c.ws.ID, req)
	if err != nil {
		return err
	}
	w.Header().Set("Location", r.URL.Path+"/"+srv.ID)
	return writeJSON(w, http.StatusAccepted, srv)
}

func (a *API) getServer(w http.ResponseWriter, r *http.Request, c *call) error {
	srv, err := a.o.Servers.Get(r.Context(), c.ws.ID, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, srv)
}

func (a *API) deleteServer(w http.ResponseWriter, r *http.Request, c *call) error {
	destroy := r.URL.Query().Get("destroy")
	srv, err := a.o.Servers.Delete(r.Context(), c.p.Actor(), c.ws.ID, r.PathValue("id"), destroy == "true" || destroy == "1")
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusAccepted, srv)
}
