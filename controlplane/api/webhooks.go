package api

import (
	"net/http"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/webhooks"
)

// Webhooks (issue 14):
//
//	POST   /v1/workspaces/{ws}/webhooks                       apitypes.CreateWebhook → 201 apitypes.CreatedWebhook (the secret, once)
//	GET    /v1/workspaces/{ws}/webhooks                       → {"webhooks": [...], "next": ""}
//	GET    /v1/workspaces/{ws}/webhooks/{id}                  → apitypes.Webhook
//	PATCH  /v1/workspaces/{ws}/webhooks/{id}                  apitypes.UpdateWebhook → apitypes.Webhook
//	DELETE /v1/workspaces/{ws}/webhooks/{id}                  → 204
//	GET    /v1/workspaces/{ws}/webhooks/{id}/deliveries       → {"deliveries": [...], "next": ""}, newest first
//	POST   /v1/workspaces/{ws}/webhooks/{id}/deliveries/{delivery}/redeliver → 202 apitypes.WebhookDelivery
//	POST   /v1/workspaces/{ws}/webhooks/{id}/ping             → 202 apitypes.WebhookDelivery
//
// 422 validation_failed for a URL the SSRF guard refuses (the message
// names the rule, the hint the flag that allows it), an unknown event
// pattern or format, a malformed secret.
func (a *API) webhookRoutes() {
	if a.o.Webhooks == nil {
		return
	}
	a.handle("POST /v1/workspaces/{ws}/webhooks", write, a.createWebhook)
	a.handle("GET /v1/workspaces/{ws}/webhooks", read, a.listWebhooks)
	a.handle("GET /v1/workspaces/{ws}/webhooks/{id}", read, a.getWebhook)
	a.handle("PATCH /v1/workspaces/{ws}/webhooks/{id}", write, a.updateWebhook)
	a.handle("DELETE /v1/workspaces/{ws}/webhooks/{id}", write, a.deleteWebhook)
	a.handle("GET /v1/workspaces/{ws}/webhooks/{id}/deliveries", read, a.listDeliveries)
	a.handle("POST /v1/workspaces/{ws}/webhooks/{id}/deliveries/{delivery}/redeliver", write, a.redeliver)
	a.handle("POST /v1/workspaces/{ws}/webhooks/{id}/ping", write, a.pingWebhook)
}

func (a *API) createWebhook(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apitypes.CreateWebhook
	if err := decode(r, &req); err != nil {
		return err
	}
	sp := webhooks.Spec{URL: &req.URL, Events: req.Events, Secret: secrets.New(req.Secret), Enabled: req.Enabled}
	if req.Format != "" {
		sp.Format = &req.Format
	}
	if req.Description != "" {
		sp.Description = &req.Description
	}
	wh, secret, err := a.o.Webhooks.Create(r.Context(), c.p.Actor(), c.ws.ID, sp)
	if err != nil {
		return err
	}
	w.Header().Set("Location", r.URL.Path+"/"+wh.ID)
	// The only time the secret is shown.
	return writeJSON(w, http.StatusCreated, apitypes.CreatedWebhook{Webhook: webhookOut(wh), Secret: secret.Reveal()})
}

func (a *API) listWebhooks(w http.ResponseWriter, r *http.Request, c *call) error {
	pg, err := pageOf(r)
	if err != nil {
		return err
	}
	list, err := a.o.Webhooks.List(r.Context(), c.ws.ID, pg.after, pg.limit+1)
	if err != nil {
		return err
	}
	list, more := trim(list, pg.limit)
	out := apitypes.WebhookList{Webhooks: make([]apitypes.Webhook, 0, len(list))}
	for _, wh := range list {
		out.Webhooks = append(out.Webhooks, webhookOut(wh))
	}
	if more {
		last := list[len(list)-1]
		out.Next = nextLink(r, store.Cursor{At: last.CreatedAt, ID: last.ID})
	}
	return writeJSON(w, http.StatusOK, out)
}

func (a *API) getWebhook(w http.ResponseWriter, r *http.Request, c *call) error {
	wh, err := a.o.Webhooks.Get(r.Context(), c.ws.ID, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, webhookOut(wh))
}

func (a *API) updateWebhook(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apitypes.UpdateWebhook
	if err := decode(r, &req); err != nil {
		return err
	}
	sp := webhooks.Spec{URL: req.URL, Events: req.Events, Format: req.Format, Secret: secrets.New(req.Secret),
		Description: req.Description, Enabled: req.Enabled}
	wh, err := a.o.Webhooks.Update(r.Context(), c.p.Actor(), c.ws.ID, r.PathValue("id"), sp)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, webhookOut(wh))
}

func (a *API) deleteWebhook(w http.ResponseWriter, r *http.Request, c *call) error {
	if err := a.o.Webhooks.Delete(r.Context(), c.p.Actor(), c.ws.ID, r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) listDeliveries(w http.ResponseWriter, r *http.Request, c *call) error {
	pg, err := pageOf(r)
	if err != nil {
		return err
	}
	list, err := a.o.Webhooks.Deliveries(r.Context(), c.ws.ID, r.PathValue("id"), pg.after, pg.limit+1)
	if err != nil {
		return err
	}
	list, more := trim(list, pg.limit)
	out := apitypes.WebhookDeliveryList{Deliveries: make([]apitypes.WebhookDelivery, 0, len(list))}
	for _, d := range list {
		out.Deliveries = append(out.Deliveries, deliveryOut(d))
	}
	if more {
		last := list[len(list)-1]
		out.Next = nextLink(r, store.Cursor{At: last.CreatedAt, ID: last.ID})
	}
	return writeJSON(w, http.StatusOK, out)
}

func (a *API) redeliver(w http.ResponseWriter, r *http.Request, c *call) error {
	d, err := a.o.Webhooks.Redeliver(r.Context(), c.p.Actor(), c.ws.ID, r.PathValue("id"), r.PathValue("delivery"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusAccepted, deliveryOut(d))
}

func (a *API) pingWebhook(w http.ResponseWriter, r *http.Request, c *call) error {
	d, err := a.o.Webhooks.Ping(r.Context(), c.p.Actor(), c.ws.ID, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusAccepted, deliveryOut(d))
}
