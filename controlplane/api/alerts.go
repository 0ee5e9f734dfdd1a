package api

import (
	"net/http"
	"slices"
	"strings"

	"github.com/devpilot/devpilot/controlplane/alerts"
	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/store"
)

func (a *API) alertRoutes() {
	if a.o.Alerts == nil {
		return
	}
	a.handle("POST /v1/workspaces/{ws}/alert-rules", write, a.createAlertRule)
	a.handle("GET /v1/workspaces/{ws}/alert-rules", read, a.listAlertRules)
	a.handle("GET /v1/workspaces/{ws}/alert-rules/{id}", read, a.getAlertRule)
	a.handle("PATCH /v1/workspaces/{ws}/alert-rules/{id}", write, a.updateAlertRule)
	a.handle("DELETE /v1/workspaces/{ws}/alert-rules/{id}", write, a.deleteAlertRule)
	a.handle("GET /v1/workspaces/{ws}/alerts", read, a.listAlerts)
}

func (a *API) createAlertRule(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apitypes.CreateAlertRule
	if err := decode(r, &req); err != nil {
		return err
	}
	rule, err := a.o.Alerts.CreateRule(r.Context(), c.p.Actor(), c.ws.ID, alertRuleIn(req))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusCreated, alertRuleOut(rule))
}

func (a *API) listAlertRules(w http.ResponseWriter, r *http.Request, c *call) error {
	pg, err := pageOf(r)
	if err != nil {
		return err
	}
	rules, err := a.o.Alerts.RulesPage(r.Context(), c.ws.ID, r.URL.Query().Get("name"), pg.after, pg.limit+1)
	if err != nil {
		return err
	}
	rules, more := trim(rules, pg.limit)
	out := apitypes.AlertRuleList{AlertRules: make([]apitypes.AlertRule, 0, len(rules))}
	for _, rule := range rules {
		out.AlertRules = append(out.AlertRules, alertRuleOut(rule))
	}
	if more {
		last := rules[len(rules)-1]
		out.Next = nextLink(r, store.Cursor{At: last.CreatedAt, ID: last.ID})
	}
	return writeJSON(w, http.StatusOK, out)
}

func (a *API) getAlertRule(w http.ResponseWriter, r *http.Request, c *call) error {
	rule, err := a.o.Alerts.GetRule(r.Context(), c.ws.ID, r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, alertRuleOut(rule))
}

func (a *API) updateAlertRule(w http.ResponseWriter, r *http.Request, c *call) error {
	var req apitypes.UpdateAlertRule
	if err := decode(r, &req); err != nil {
		return err
	}
	rule, err := a.o.Alerts.UpdateRule(r.Context(), c.p.Actor(), c.ws.ID, r.PathValue("id"),
		alerts.Patch{Name: req.Name, ThresholdPercent: req.ThresholdPercent, ForS: req.ForS, Tag: req.Tag})
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, alertRuleOut(rule))
}

func (a *API) deleteAlertRule(w http.ResponseWriter, r *http.Request, c *call) error {
	if err := a.o.Alerts.DeleteRule(r.Context(), c.p.Actor(), c.ws.ID, r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// listAlerts is GET …/alerts: the firing ones unless ?state= says
// otherwise (pending, resolved, or all), most recent change first.
func (a *API) listAlerts(w http.ResponseWriter, r *http.Request, c *call) error {
	pg, err := pageOf(r)
	if err != nil {
		return err
	}
	state := r.URL.Query().Get("state")
	switch {
	case state == "":
		state = alerts.StateFiring
	case state == "all":
		state = ""
	case !slices.Contains(alerts.States, state):
		return problem.Validation("Use state="+strings.Join(alerts.States, ", ")+" or all.", "unknown alert state %q", state)
	}
	list, err := a.o.Alerts.Alerts(r.Context(), c.ws.ID, state)
	if err != nil {
		return err
	}
	sel := list[:0]
	for _, al := range list {
		if k := pg.after; k != nil && alertAfter(al, *k) {
			continue
		}
		sel = append(sel, al)
	}
	sel, more := trim(sel, pg.limit)
	out := apitypes.AlertList{Alerts: make([]apitypes.Alert, 0, len(sel))}
	for _, al := range sel {
		out.Alerts = append(out.Alerts, alertOut(al))
	}
	if more {
		last := sel[len(sel)-1]
		out.Next = nextLink(r, store.Cursor{At: last.UpdatedAt, ID: last.RuleID + "/" + last.ServerID})
	}
	return writeJSON(w, http.StatusOK, out)
}

// alertAfter reports whether al sorts at or before the cursor in the list's
// order (updated_at descending, then rule and server ids ascending), i.e.
// was on an earlier page.
func alertAfter(al alerts.Alert, k store.Cursor) bool {
	id := al.RuleID + "/" + al.ServerID
	return al.UpdatedAt.After(k.At) || (al.UpdatedAt.Equal(k.At) && id <= k.ID)
}

// --- conversions

func alertRuleIn(in apitypes.CreateAlertRule) alerts.Rule {
	return alerts.Rule{Name: in.Name, Kind: in.Kind, ThresholdPercent: in.ThresholdPercent, ForS: in.ForS, Tag: in.Tag}
}

func alertRuleOut(r store.AlertRule) apitypes.AlertRule {
	out := apitypes.AlertRule{ID: r.ID, Name: r.Name, Kind: r.Kind, ForS: r.ForS, Tag: r.Tag, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt}
	if r.Kind != alerts.KindOffline {
		t := r.ThresholdPercent
		out.ThresholdPercent = &t
	}
	return out
}

func alertOut(al alerts.Alert) apitypes.Alert {
	return apitypes.Alert{RuleID: al.RuleID, RuleName: al.RuleName, Kind: al.Kind, ServerID: al.ServerID, ServerName: al.ServerName,
		State: al.State, Since: al.Since, Value: al.Value, FiredAt: al.FiredAt, ResolvedAt: al.ResolvedAt, UpdatedAt: al.UpdatedAt,
		Message: al.Message}
}
