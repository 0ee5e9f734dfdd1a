package api

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/auth"
	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/controlplane/integrations"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
)

// NearCapacity is the share of its agent capacity past which /readyz
// says a control plane is near its ceiling (still ready: it answers, but
// the next agents may be refused busy).
const NearCapacity = 0.9

// readiness is /readyz's answer once the database answered.
func (a *API) readiness() apitypes.Readiness {
	r := apitypes.Readiness{Status: "ready"}
	if a.o.Agents == nil {
		return r
	}
	conns, capacity := a.o.Agents()
	r.Agents = &apitypes.AgentCapacity{Connections: conns, Capacity: capacity,
		NearCeiling: capacity > 0 && float64(conns) >= NearCapacity*float64(capacity)}
	return r
}

func (a *API) routes() {
	a.public("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}))
	a.public("GET /readyz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := a.o.Store.Ping(r.Context()); err != nil {
			_ = writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "database unavailable"})
			return
		}
		_ = writeJSON(w, http.StatusOK, a.readiness())
	}))
	a.public("GET /metrics", promhttp.HandlerFor(a.o.Gatherer, promhttp.HandlerOpts{}))
	a.public("GET /v1/openapi.json", http.HandlerFunc(serveOpenAPI))

	a.handle("GET /v1/whoami", read, a.whoami)
	a.handle("GET /v1/workspaces", read, a.listWorkspaces)
	a.handle("POST /v1/workspaces", ownerOnly, a.createWorkspace)
	a.handle("POST /v1/keys/rotate", ownerOnly, a.rotateKeys)

	a.handle("GET /v1/workspaces/{ws}/tokens", read, a.listTokens)
	a.handle("POST /v1/workspaces/{ws}/tokens", write, a.createToken)
	a.handle("DELETE /v1/workspaces/{ws}/tokens/{id}", write, a.revokeToken)
	a.handle("GET /v1/workspaces/{ws}/audit", read, a.listAudit)

	a.handle("GET /v1/workspaces/{ws}/integrations", read, a.listIntegrations)
	a.handle("POST /v1/workspaces/{ws}/integrations", write, a.connectIntegration)
	a.handle("GET /v1/workspaces/{ws}/integrations/{id}", read, a.getIntegration)
	a.handle("PATCH /v1/workspaces/{ws}/integrations/{id}", write, a.renameIntegration)
	a.handle("DELETE /v1/workspaces/{ws}/integrations/{id}", write, a.removeIntegration)
	a.handle("POST /v1/workspaces/{ws}/integrations/{id}/test", write, a.testIntegration)
	a.handle("PUT /v1/workspaces/{ws}/integrations/{id}/secret", write, a.rotateIntegration)
	a.handle("GET /v1/workspaces/{ws}/integrations/{id}/catalog", read, a.catalog)

	a.serverRoutes()
	a.actionRoutes()
	a.taskRoutes()
	a.rolloutRoutes()
	a.agentReleaseRoutes()
	a.alertRoutes()
	a.eventRoutes()
	a.webhookRoutes()
	if a.o.Agent != nil {
		a.public("GET /v1/agent/", a.o.Agent)
	}

	a.handle("/", read, func(w http.ResponseWriter, r *http.Request, c *call) error {
		return problem.NotFound("route " + r.Method + " " + r.URL.Path)
	})
}

func (a *API) whoami(w http.ResponseWriter, r *http.Request, c *call) error {
	ws, err := a.o.Store.Q().WorkspaceByID(r.Context(), c.p.WorkspaceID)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, apitypes.Whoami{TokenID: c.p.TokenID, Name: c.p.TokenName,
		Role: c.p.Role, Workspace: ws.Slug})
}

func (a *API) listWorkspaces(w http.ResponseWriter, r *http.Request, c *call) error {
	pg, err := pageOf(r)
	if err != nil {
		return err
	}
	all, err := a.o.Store.Q().WorkspacesPage(r.Context(), pg.after, pg.limit+1)
	if err != nil {
		return err
	}
	all, more := trim(all, pg.limit)
	out := apitypes.WorkspaceList{Workspaces: []apitypes.Workspace{}}
	for _, ws := range all {
		if c.p.CanAccess(ws.ID) {
			out.Workspaces = append(out.Workspaces, workspaceOut(ws))
		}
	}
	if more {
		out.Next = nextLink(r, store.Cursor{Key: all[len(all)-1].Slug})
	}
	return writeJSON(w, http.StatusOK, out)
}

func (a *API) createWorkspace(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apitypes.CreateWorkspace
	if err := decode(r, &req); err != nil {
		return err
	}
	if !ValidSlug(req.Slug) {
		return problem.Validation("Use 1-40 lowercase letters, digits and dashes, starting with a letter.", "invalid workspace slug %q", req.Slug)
	}
	if req.Name == "" {
		req.Name = req.Slug
	}
	ws := store.Workspace{ID: ids.New("ws"), Slug: req.Slug, Name: req.Name, CreatedAt: a.o.Now().UTC()}
	err := a.o.Store.InTx(r.Context(), func(q *store.Queries) error {
		if err := q.CreateWorkspace(r.Context(), ws); err != nil {
			return err
		}
		return q.AddAudit(r.Context(), store.AuditEntry{WorkspaceID: ws.ID, Actor: c.p.Actor(), Action: "workspace.create",
			Target: ws.Slug, At: ws.CreatedAt})
	})
	if errors.Is(err, store.ErrConflict) {
		return problem.Conflict("", "workspace %q already exists", req.Slug)
	}
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, workspaceOut(ws))
}

// ValidSlug reports whether s can name a workspace (it also becomes a
// cloud tag, devpilot-ws-<slug>, so it stays within both providers' rules).
func ValidSlug(s string) bool {
	if len(s) < 1 || len(s) > 40 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for _, ch := range s {
		if (ch < 'a' || ch > 'z') && (ch < '0' || ch > '9') && ch != '-' {
			return false
		}
	}
	return true
}

func (a *API) rotateKeys(w http.ResponseWriter, r *http.Request, c *call) error {
	if a.o.RotateKeys == nil {
		return problem.Forbidden("", "key rotation is not available")
	}
	res, err := a.o.RotateKeys(r.Context())
	if err != nil {
		return err
	}
	detail, _ := json.Marshal(map[string]any{"reencrypted": res.Reencrypted, "retired_key_ids": res.Retired,
		"kept_key_ids": res.Kept, "skipped": res.Skipped})
	_ = a.o.Store.Q().AddAudit(r.Context(), store.AuditEntry{WorkspaceID: c.p.WorkspaceID, Actor: c.p.Actor(),
		Action: "keys.rotate", Target: res.KeyID, DetailJSON: string(detail), At: a.o.Now()})
	return writeJSON(w, http.StatusOK, keyRotationOut(res))
}

// --- tokens

func (a *API) listTokens(w http.ResponseWriter, r *http.Request, c *call) error {
	pg, err := pageOf(r)
	if err != nil {
		return err
	}
	// Owner tokens are the owner's business: an admin neither sees nor
	// revokes them.
	ts, err := a.o.Store.Q().TokensPage(r.Context(), c.ws.ID, c.p.Role != auth.RoleOwner, pg.after, pg.limit+1)
	if err != nil {
		return err
	}
	ts, more := trim(ts, pg.limit)
	out := apitypes.TokenList{Tokens: make([]apitypes.Token, 0, len(ts))}
	for _, t := range ts {
		out.Tokens = append(out.Tokens, tokenOut(t, c.ws.Slug))
	}
	if more {
		last := ts[len(ts)-1]
		out.Next = nextLink(r, store.Cursor{At: last.CreatedAt, ID: last.ID})
	}
	return writeJSON(w, http.StatusOK, out)
}

func (a *API) createToken(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apitypes.CreateToken
	if err := decode(r, &req); err != nil {
		return err
	}
	if !auth.ValidRole(req.Role) {
		return problem.Validation("Use role admin (read and change) or viewer (read only).", "invalid role %q", req.Role)
	}
	if req.Name == "" || len(req.Name) > 100 {
		return problem.Validation("Name the token after who or what will use it.", "name is required (at most 100 characters)")
	}
	id, secret, hash := auth.NewToken()
	t := store.Token{ID: id, WorkspaceID: c.ws.ID, Name: req.Name, Role: req.Role, SecretHash: hash,
		CreatedBy: c.p.Actor(), CreatedAt: a.o.Now().UTC()}
	err := a.o.Store.InTx(r.Context(), func(q *store.Queries) error {
		if err := q.CreateToken(r.Context(), t); err != nil {
			return err
		}
		return q.AddAudit(r.Context(), store.AuditEntry{WorkspaceID: c.ws.ID, Actor: c.p.Actor(), Action: "token.create",
			Target: id, DetailJSON: `{"role":"` + req.Role + `"}`, At: t.CreatedAt})
	})
	if err != nil {
		return err
	}
	// The only time the token is ever shown.
	return writeJSON(w, http.StatusCreated, apitypes.CreatedToken{Token: tokenOut(t, c.ws.Slug), Secret: secret.Reveal()})
}

func (a *API) revokeToken(w http.ResponseWriter, r *http.Request, c *call) error {
	id := r.PathValue("id")
	err := a.o.Store.InTx(r.Context(), func(q *store.Queries) error {
		t, err := q.TokenByID(r.Context(), id)
		if err != nil {
			return err
		}
		if t.WorkspaceID != c.ws.ID || t.RevokedAt != nil || (t.Role == auth.RoleOwner && c.p.Role != auth.RoleOwner) {
			return store.ErrNotFound
		}
		if t.Role == auth.RoleOwner {
			// Counted inside the write transaction (serialised on both
			// dialects), so two revocations cannot both take the last.
			n, err := q.CountLiveTokens(r.Context(), auth.RoleOwner)
			if err != nil {
				return err
			}
			if n <= 1 {
				return errLastOwner
			}
		}
		if err := q.RevokeToken(r.Context(), c.ws.ID, id, a.o.Now()); err != nil {
			return err
		}
		return q.AddAudit(r.Context(), store.AuditEntry{WorkspaceID: c.ws.ID, Actor: c.p.Actor(), Action: "token.revoke",
			Target: id, At: a.o.Now()})
	})
	if errors.Is(err, store.ErrNotFound) {
		return problem.NotFound("token " + id)
	}
	if err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// errLastOwner refuses to revoke the only live owner token: nothing could
// do the owner's work (workspaces, keys rotate) any more.
var errLastOwner = problem.Conflict("Make a new owner token first with `devpilot tokens recover --data-dir D` "+
	"on the control plane's machine, then revoke this one.", "this is the last live owner token")

// listAudit pages the audit log newest first; ?before=ID (the older
// interface) still starts below an entry id.
func (a *API) listAudit(w http.ResponseWriter, r *http.Request, c *call) error {
	pg, err := pageOf(r)
	if err != nil {
		return err
	}
	var before int64
	if pg.after != nil {
		before = pg.after.N
	} else if v := r.URL.Query().Get("before"); v != "" {
		if before, err = intParam(v, "before"); err != nil {
			return err
		}
	}
	es, err := a.o.Store.Q().ListAudit(r.Context(), c.ws.ID, before, pg.limit+1)
	if err != nil {
		return err
	}
	es, more := trim(es, pg.limit)
	out := apitypes.AuditList{Entries: make([]apitypes.AuditEntry, 0, len(es))}
	for _, e := range es {
		out.Entries = append(out.Entries, auditOut(e))
	}
	if more {
		out.Next = nextLink(r, store.Cursor{N: es[len(es)-1].ID})
	}
	return writeJSON(w, http.StatusOK, out)
}

// --- integrations

// listIntegrations pages a workspace's integrations, oldest first
// (?name= only the one with that access key). A workspace has a handful:
// the page is cut from the service's whole list.
func (a *API) listIntegrations(w http.ResponseWriter, r *http.Request, c *call) error {
	pg, err := pageOf(r)
	if err != nil {
		return err
	}
	list, err := a.o.Integrations.List(r.Context(), c.ws.ID)
	if err != nil {
		return err
	}
	name := r.URL.Query().Get("name")
	var sel []*integrations.Integration
	for _, in := range list {
		if name != "" && in.AccessKey != name {
			continue
		}
		if k := pg.after; k != nil && (in.CreatedAt.Before(k.At) || (in.CreatedAt.Equal(k.At) && in.ID <= k.ID)) {
			continue
		}
		sel = append(sel, in)
	}
	sel, more := trim(sel, pg.limit)
	out := apitypes.IntegrationList{Integrations: make([]apitypes.Integration, 0, len(sel))}
	for _, in := range sel {
		out.Integrations = append(out.Integrations, integrationOut(in))
	}
	if more {
		last := sel[len(sel)-1]
		out.Next = nextLink(r, store.Cursor{At: last.CreatedAt, ID: last.ID})
	}
	return writeJSON(w, http.StatusOK, out)
}

func (a *API) connectIntegration(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apitypes.ConnectIntegration
	if err := decode(r, &req); err != nil {
		return err
	}
	in, err := a.o.Integrations.Connect(r.Context(), c.actor(), c.ws.ID, req.Provider, req.AccessKey, secrets.New(req.SecretKey))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, integrationOut(in))
}

func (a *API) getIntegration(w http.ResponseWriter, r *http.Request, c *call) error {
	in, err := a.o.Integrations.Get(r.Context(), c.ws.ID, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, integrationOut(in))
}

func (a *API) renameIntegration(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apitypes.RenameIntegration
	if err := decode(r, &req); err != nil {
		return err
	}
	in, err := a.o.Integrations.Rename(r.Context(), c.actor(), c.ws.ID, r.PathValue("id"), req.AccessKey)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, integrationOut(in))
}

func (a *API) removeIntegration(w http.ResponseWriter, r *http.Request, c *call) error {
	if err := a.o.Integrations.Remove(r.Context(), c.actor(), c.ws.ID, r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) testIntegration(w http.ResponseWriter, r *http.Request, c *call) error {
	in, err := a.o.Integrations.Test(r.Context(), c.actor(), c.ws.ID, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, integrationOut(in))
}

func (a *API) rotateIntegration(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apitypes.RotateIntegrationSecret
	if err := decode(r, &req); err != nil {
		return err
	}
	in, err := a.o.Integrations.Rotate(r.Context(), c.actor(), c.ws.ID, r.PathValue("id"), secrets.New(req.SecretKey))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, integrationOut(in))
}

func (a *API) catalog(w http.ResponseWriter, r *http.Request, c *call) error {
	cat, err := a.o.Integrations.Catalog(r.Context(), c.ws.ID, r.PathValue("id"), r.URL.Query().Get("refresh") == "1")
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, catalogOut(cat))
}
