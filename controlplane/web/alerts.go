package web

import (
	"net/http"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// alertsData is the Alerts page: what fires now, and the workspace's rules.
type alertsData struct {
	Firing []apitypes.Alert
	Rules  []apitypes.AlertRule
}

// alertsPage lists the firing alerts and the rules behind them.
func (c *Console) alertsPage(w http.ResponseWriter, r *http.Request, s *session) error {
	firing, err := listAll[apitypes.Alert](c, r, s, wsBase(r)+"/alerts?state=firing", "alerts")
	if err != nil {
		return err
	}
	rules, err := listAll[apitypes.AlertRule](c, r, s, wsBase(r)+"/alert-rules", "alert_rules")
	if err != nil {
		return err
	}
	c.render(w, r, http.StatusOK, "alerts", page{Title: "Alerts", S: s, Nav: "alerts", Data: alertsData{Firing: firing, Rules: rules}})
	return nil
}

// firingCount is how many alerts fire now (0 when they cannot be read:
// the servers page must not fail over its badge).
func (c *Console) firingCount(r *http.Request, s *session) int {
	firing, err := listAll[apitypes.Alert](c, r, s, wsBase(r)+"/alerts?state=firing", "alerts")
	if err != nil {
		return 0
	}
	return len(firing)
}
