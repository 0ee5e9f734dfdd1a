package web

import (
	"errors"
	"net/http"
	"net/url"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// integration is the API's integration.
type integration = apitypes.Integration

// providerCard is one provider's card on the Integrations page.
type providerCard struct {
	Provider     string
	Name         string
	SecretLabel  string
	Integrations []integration
	Err          *apiError // the last connect attempt's refusal
	AccessKey    string    // what was typed as the label (never the secret)
}

var providers = []struct{ id, secretLabel string }{
	{"digitalocean", "Personal access token"},
	{"vultr", "API key"},
}

func (c *Console) listIntegrations(r *http.Request, s *session) ([]integration, error) {
	return listAll[integration](c, r, s, wsBase(r)+"/integrations", "integrations")
}

func (c *Console) integrationsPage(w http.ResponseWriter, r *http.Request, s *session) error {
	return c.renderIntegrations(w, r, s, http.StatusOK, "", nil, "")
}

func (c *Console) renderIntegrations(w http.ResponseWriter, r *http.Request, s *session, status int, errProvider string, e *apiError, label string) error {
	list, err := c.listIntegrations(r, s)
	if err != nil {
		return err
	}
	cards := make([]providerCard, 0, len(providers))
	var top *apiError // a refusal no card can show
	if e != nil {
		top = e
	}
	for _, p := range providers {
		card := providerCard{Provider: p.id, Name: providerName(p.id), SecretLabel: p.secretLabel}
		for _, in := range list {
			if in.Provider == p.id {
				card.Integrations = append(card.Integrations, in)
			}
		}
		if p.id == errProvider {
			card.Err, card.AccessKey, top = e, label, nil
		}
		cards = append(cards, card)
	}
	c.render(w, r, status, "integrations", page{Title: "Integrations", S: s, Nav: "integrations", Err: top, Data: cards})
	return nil
}

func (c *Console) connect(w http.ResponseWriter, r *http.Request, s *session) error {
	provider, label := r.PostFormValue("provider"), r.PostFormValue("access_key")
	req := map[string]string{"provider": provider, "access_key": label, "secret_key": r.PostFormValue("secret_key")}
	var in integration
	err := c.call(r, s.token.Reveal(), http.MethodPost, wsBase(r)+"/integrations", req, &in)
	var ae *apiError
	if errors.As(err, &ae) && ae.Status != http.StatusUnauthorized {
		// Shown on the provider's card; the secret is not echoed back.
		return c.renderIntegrations(w, r, s, ae.Status, provider, ae, label)
	}
	if err != nil {
		return err
	}
	return c.done(w, r, s, uiBase(r)+"/settings/integrations",
		providerName(in.Provider)+" connected as “"+in.AccessKey+"”: credentials valid, write access "+in.WriteAccess+".", nil)
}

func (c *Console) testIntegration(w http.ResponseWriter, r *http.Request, s *session) error {
	var in integration
	err := c.call(r, s.token.Reveal(), http.MethodPost, wsBase(r)+"/integrations/"+url.PathEscape(r.PathValue("id"))+"/test", nil, &in)
	var ae *apiError
	if errors.As(err, &ae) && ae.Status != http.StatusUnauthorized {
		return c.done(w, r, s, uiBase(r)+"/settings/integrations", "Credential test failed.", ae)
	}
	if err != nil {
		return err
	}
	return c.done(w, r, s, uiBase(r)+"/settings/integrations",
		"Credential test passed for “"+in.AccessKey+"” ("+providerName(in.Provider)+"): write access "+in.WriteAccess+".", nil)
}

func (c *Console) rotateIntegration(w http.ResponseWriter, r *http.Request, s *session) error {
	var in integration
	err := c.call(r, s.token.Reveal(), http.MethodPut, wsBase(r)+"/integrations/"+url.PathEscape(r.PathValue("id"))+"/secret",
		map[string]string{"secret_key": r.PostFormValue("secret_key")}, &in)
	var ae *apiError
	if errors.As(err, &ae) && ae.Status != http.StatusUnauthorized {
		return c.done(w, r, s, uiBase(r)+"/settings/integrations", "Rotation refused; the old secret stays in use.", ae)
	}
	if err != nil {
		return err
	}
	return c.done(w, r, s, uiBase(r)+"/settings/integrations",
		"Secret of “"+in.AccessKey+"” rotated; the new one is valid and in use.", nil)
}

func (c *Console) getIntegration(r *http.Request, s *session) (integration, error) {
	var in integration
	err := c.call(r, s.token.Reveal(), http.MethodGet, wsBase(r)+"/integrations/"+url.PathEscape(r.PathValue("id")), nil, &in)
	return in, err
}

func (c *Console) removeIntegrationPage(w http.ResponseWriter, r *http.Request, s *session) error {
	in, err := c.getIntegration(r, s)
	if err != nil {
		return err
	}
	c.render(w, r, http.StatusOK, "remove", page{Title: "Remove integration", S: s, Nav: "integrations", Data: in})
	return nil
}

func (c *Console) removeIntegration(w http.ResponseWriter, r *http.Request, s *session) error {
	in, err := c.getIntegration(r, s)
	if err != nil {
		return err
	}
	if err := c.call(r, s.token.Reveal(), http.MethodDelete, wsBase(r)+"/integrations/"+url.PathEscape(in.ID), nil, nil); err != nil {
		return err
	}
	return c.done(w, r, s, uiBase(r)+"/settings/integrations",
		providerName(in.Provider)+" integration “"+in.AccessKey+"” removed. Its servers were not destroyed.", nil)
}
