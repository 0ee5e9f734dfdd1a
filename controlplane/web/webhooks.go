package web

import (
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// webhooksData is the Webhooks page: the list, the create form's values
// after a refusal, and a just-created webhook's secret (shown this once).
type webhooksData struct {
	Webhooks []apitypes.Webhook
	Created  *apitypes.CreatedWebhook
	URL      string
	Events   string
	Format   string
}

// webhookData is one webhook's page: its settings and delivery log.
type webhookData struct {
	Webhook    apitypes.Webhook
	Deliveries []apitypes.WebhookDelivery
}

func (c *Console) webhooksPage(w http.ResponseWriter, r *http.Request, s *session) error {
	return c.renderWebhooks(w, r, s, http.StatusOK, webhooksData{Events: "*", Format: "raw"}, nil)
}

func (c *Console) renderWebhooks(w http.ResponseWriter, r *http.Request, s *session, status int, d webhooksData, e *apiError) error {
	list, err := listAll[apitypes.Webhook](c, r, s, wsBase(r)+"/webhooks", "webhooks")
	if err != nil {
		return err
	}
	d.Webhooks = list
	c.render(w, r, status, "webhooks", page{Title: "Webhooks", S: s, Nav: "webhooks", Err: e, Data: d})
	return nil
}

func (c *Console) createWebhook(w http.ResponseWriter, r *http.Request, s *session) error {
	d := webhooksData{URL: r.PostFormValue("url"), Events: r.PostFormValue("events"), Format: r.PostFormValue("format")}
	var evs []string
	for _, p := range strings.Split(d.Events, ",") {
		if p = strings.TrimSpace(p); p != "" {
			evs = append(evs, p)
		}
	}
	req := apitypes.CreateWebhook{URL: d.URL, Events: evs, Format: d.Format, Description: r.PostFormValue("description")}
	var created apitypes.CreatedWebhook
	err := c.call(r, s.token.Reveal(), http.MethodPost, wsBase(r)+"/webhooks", req, &created)
	var ae *apiError
	if errors.As(err, &ae) && ae.Status != http.StatusUnauthorized {
		return c.renderWebhooks(w, r, s, ae.Status, d, ae)
	}
	if err != nil {
		return err
	}
	// Rendered, not redirected: the secret must not travel in a flash or URL.
	return c.renderWebhooks(w, r, s, http.StatusCreated, webhooksData{Created: &created, Events: "*", Format: "raw"}, nil)
}

func (c *Console) webhookPage(w http.ResponseWriter, r *http.Request, s *session) error {
	base := wsBase(r) + "/webhooks/" + url.PathEscape(r.PathValue("id"))
	var d webhookData
	if err := c.call(r, s.token.Reveal(), http.MethodGet, base, nil, &d.Webhook); err != nil {
		return err
	}
	var page1 apitypes.WebhookDeliveryList
	if err := c.call(r, s.token.Reveal(), http.MethodGet, base+"/deliveries?limit=100", nil, &page1); err != nil {
		return err
	}
	d.Deliveries = page1.Deliveries
	c.render(w, r, http.StatusOK, "webhook", page{Title: "Webhook " + d.Webhook.ID, S: s, Nav: "webhooks", Data: d})
	return nil
}

func (c *Console) pingWebhook(w http.ResponseWriter, r *http.Request, s *session) error {
	id := r.PathValue("id")
	var d apitypes.WebhookDelivery
	err := c.call(r, s.token.Reveal(), http.MethodPost, wsBase(r)+"/webhooks/"+url.PathEscape(id)+"/ping", nil, &d)
	var ae *apiError
	if errors.As(err, &ae) && ae.Status != http.StatusUnauthorized {
		return c.done(w, r, s, uiBase(r)+"/settings/webhooks/"+url.PathEscape(id), "", ae)
	}
	if err != nil {
		return err
	}
	return c.done(w, r, s, uiBase(r)+"/settings/webhooks/"+url.PathEscape(id),
		"Test message "+d.ID+" queued; its outcome appears in the delivery log below (reload).", nil)
}
