package apitypes

import "time"

// AlertRule is a workspace's alert rule: a server offline, or its cpu,
// memory or disk at or above threshold_percent, for at least for_s seconds,
// on the servers carrying tag (all of the workspace's when empty).
type AlertRule struct {
	ID               string    `json:"id"`                          // alr_…
	Name             string    `json:"name"`                        // unique in the workspace
	Kind             string    `json:"kind"`                        // offline, cpu, memory or disk
	ThresholdPercent *float64  `json:"threshold_percent,omitempty"` // cpu, memory, disk: 1..100; absent for offline
	ForS             int       `json:"for_s"`                       // how long the condition must hold before it fires
	Tag              string    `json:"tag"`                         // "" for every server
	CreatedAt        time.Time `json:"created_at"`
	UpdatedAt        time.Time `json:"updated_at"`
}

// CreateAlertRule is POST /v1/workspaces/{ws}/alert-rules.
type CreateAlertRule struct {
	Name             string   `json:"name"`
	Kind             string   `json:"kind"`
	ThresholdPercent *float64 `json:"threshold_percent,omitempty"`
	ForS             int      `json:"for_s"`
	Tag              string   `json:"tag,omitempty"`
}

// UpdateAlertRule is PATCH /v1/workspaces/{ws}/alert-rules/{id}: the
// fields given change, the others stay.
type UpdateAlertRule struct {
	Name             *string  `json:"name,omitempty"`
	ThresholdPercent *float64 `json:"threshold_percent,omitempty"`
	ForS             *int     `json:"for_s,omitempty"`
	Tag              *string  `json:"tag,omitempty"`
}

// AlertRuleList is GET /v1/workspaces/{ws}/alert-rules.
type AlertRuleList struct {
	AlertRules []AlertRule `json:"alert_rules"`
	Next       string      `json:"next"`
}

// Alert is one rule's state on one server: pending (the condition holds,
// not yet for for_s), firing, or resolved.
type Alert struct {
	RuleID     string     `json:"rule_id"`
	RuleName   string     `json:"rule_name"`
	Kind       string     `json:"kind"`
	ServerID   string     `json:"server_id"`
	ServerName string     `json:"server_name"`
	State      string     `json:"state"`       // pending, firing or resolved
	Since      time.Time  `json:"since"`       // when the condition started to hold
	Value      float64    `json:"value"`       // the last value seen: percent, or seconds offline
	FiredAt    *time.Time `json:"fired_at"`    // when it started firing
	ResolvedAt *time.Time `json:"resolved_at"` // when it resolved
	UpdatedAt  time.Time  `json:"updated_at"`  // its last change
	Message    string     `json:"message"`     // one line a human reads
}

// AlertList is GET /v1/workspaces/{ws}/alerts (firing ones unless ?state=).
type AlertList struct {
	Alerts []Alert `json:"alerts"`
	Next   string  `json:"next"`
}
