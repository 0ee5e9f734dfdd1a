package web

import (
	"errors"
	"net/http"
	"net/url"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// Agent rollouts (issue 13): the list, and one rollout with every
// server's state, kept live by the "rollouts" change topic.
func (c *Console) rolloutRoutes() {
	c.handle("GET /ui/w/{ws}/rollouts", readOnly, c.rolloutsPage)
	c.handle("GET /ui/w/{ws}/rollouts/live", readOnly, c.rolloutsLive)
	c.handle("GET /ui/w/{ws}/rollouts/{id}", readOnly, c.rolloutPage)
	c.handle("GET /ui/w/{ws}/rollouts/{id}/live", readOnly, c.rolloutLive)
}

// rollout is the API's rollout, with what the templates ask of it.
type rollout struct{ apitypes.Rollout }

// Busy reports whether the rollout is still under way.
func (r rollout) Busy() bool {
	return r.State != apitypes.RolloutSucceeded && r.State != apitypes.RolloutFailed && r.State != apitypes.RolloutAborted
}

type rolloutsData struct {
	Rollouts  []rollout
	Available bool
}

func (c *Console) loadRollouts(r *http.Request, s *session) (rolloutsData, error) {
	var out struct {
		Rollouts []rollout `json:"rollouts"`
	}
	err := c.call(r, s.token.Reveal(), http.MethodGet, wsBase(r)+"/agent-rollouts?limit=50", nil, &out)
	var ae *apiError
	if errors.As(err, &ae) && ae.Status == http.StatusNotFound {
		return rolloutsData{}, nil // this control plane has no rollouts API
	}
	return rolloutsData{Rollouts: out.Rollouts, Available: true}, err
}

func (c *Console) rolloutsPage(w http.ResponseWriter, r *http.Request, s *session) error {
	d, err := c.loadRollouts(r, s)
	if err != nil {
		return err
	}
	c.render(w, r, http.StatusOK, "rollouts", page{Title: "Agent rollouts", S: s, Nav: "rollouts", Data: d})
	return nil
}

func (c *Console) rolloutsLive(w http.ResponseWriter, r *http.Request, s *session) error {
	d, err := c.loadRollouts(r, s)
	if err != nil {
		return err
	}
	c.fragment(w, "rollouts", "live", page{S: s, WS: r.PathValue("ws"), Data: d})
	return nil
}

type rolloutData struct {
	Rollout rollout
	Live    string
}

func (c *Console) loadRollout(r *http.Request, s *session) (rolloutData, error) {
	var d rolloutData
	id := r.PathValue("id")
	err := c.call(r, s.token.Reveal(), http.MethodGet, wsBase(r)+"/agent-rollouts/"+url.PathEscape(id), nil, &d.Rollout)
	d.Live = uiBase(r) + "/rollouts/" + url.PathEscape(id) + "/live"
	return d, err
}

func (c *Console) rolloutPage(w http.ResponseWriter, r *http.Request, s *session) error {
	d, err := c.loadRollout(r, s)
	if err != nil {
		return err
	}
	c.render(w, r, http.StatusOK, "rollout", page{Title: "Rollout " + d.Rollout.ID, S: s, Nav: "rollouts", Data: d})
	return nil
}

func (c *Console) rolloutLive(w http.ResponseWriter, r *http.Request, s *session) error {
	d, err := c.loadRollout(r, s)
	if err != nil {
		return err
	}
	c.fragment(w, "rollout", "live", page{S: s, WS: r.PathValue("ws"), Data: d})
	return nil
}
