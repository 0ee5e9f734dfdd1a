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
	Webhooks    []apitypes.Webhook
	Created     *apitypes.CreatedWebhook
	URL         string
	Events      string
	Format      string
	Description string
}

// webhookData is one webhook's page: its settings and delivery log.
type webhookData struct {
	Webhook    apitypes.Webhook
	Deliveries []apitypes.WebhookDelivery
}

// webhookFields are the values of a webhook form's fields (the
// "webhook-fields" template): the create form's after a refusal, or the
// webhook's own on its page.
type webhookFields struct{ URL, Events, Format, Description string }

func (d webhooksData) Fields() webhookFields {
	return webhookFields{URL: d.URL, Events: d.Events, Format: d.Format, Description: d.Description}
}

func (d webhookData) Fields() webhookFields {
	w := d.Webhook
	return webhookFields{URL: w.URL, Events: strings.Join(w.Events, ", "), Format: w.Format, Description: w.Description}
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
	d := webhooksData{URL: r.PostFormValue("url"), Events: r.PostFormValue("events"), Format: r.PostFormValue("format"),
		Description: r.PostFormValue("description")}
	req := apitypes.CreateWebhook{URL: d.URL, Events: eventList(d.Events), Format: d.Format, Description: d.Description}
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

// eventList is the events field's comma-separated patterns.
func eventList(field string) []string {
	var evs []string
	for _, p := range strings.Split(field, ",") {
		if p = strings.TrimSpace(p); p != "" {
			evs = append(evs, p)
		}
	}
	return evs
}

// updateWebhook is the webhook page's two forms: the settings (URL,
// events, format, description) or, with "enabled" alone, enable/disable.
// Either is one PATCH; a refusal comes back on the page as a flash.
func (c *Console) updateWebhook(w http.ResponseWriter, r *http.Request, s *session) error {
	id := r.PathValue("id")
	var req apitypes.UpdateWebhook
	msg := "Webhook saved."
	if v := r.PostFormValue("enabled"); v != "" {
		on := v == "true"
		req.Enabled = &on
		msg = "Webhook disabled: no deliveries until it is enabled again."
		if on {
			msg = "Webhook enabled: new events are delivered again."
		}
	} else {
		u, f, desc := r.PostFormValue("url"), r.PostFormValue("format"), r.PostFormValue("description")
		req.URL, req.Format, req.Description, req.Events = &u, &f, &desc, eventList(r.PostFormValue("events"))
	}
	to := uiBase(r) + "/settings/webhooks/" + url.PathEscape(id)
	err := c.call(r, s.token.Reveal(), http.MethodPatch, wsBase(r)+"/webhooks/"+url.PathEscape(id), req, nil)
	var ae *apiError
	if errors.As(err, &ae) && ae.Status != http.StatusUnauthorized {
		return c.done(w, r, s, to, "", ae)
	}
	if err != nil {
		return err
	}
	return c.done(w, r, s, to, msg, nil)
}

// redeliverWebhook queues a delivery again (a new attempt series of the
// same message id, so a receiver that deduplicates by it sees it once).
func (c *Console) redeliverWebhook(w http.ResponseWriter, r *http.Request, s *session) error {
	id, dl := r.PathValue("id"), r.PathValue("delivery")
	var d apitypes.WebhookDelivery
	err := c.call(r, s.token.Reveal(), http.MethodPost,
		wsBase(r)+"/webhooks/"+url.PathEscape(id)+"/deliveries/"+url.PathEscape(dl)+"/redeliver", nil, &d)
	to := uiBase(r) + "/settings/webhooks/" + url.PathEscape(id)
	var ae *apiError
	if errors.As(err, &ae) && ae.Status != http.StatusUnauthorized {
		return c.done(w, r, s, to, "", ae)
	}
	if err != nil {
		return err
	}
	return c.done(w, r, s, to, "Message "+d.MessageID+" queued again as delivery "+d.ID+"; its outcome appears below (reload).", nil)
}
