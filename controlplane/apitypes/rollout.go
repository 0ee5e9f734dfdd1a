package apitypes

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Rollout states: pending until the controller takes it, canary while the
// canaries update and are watched for the health window, rolling while
// the rest update max_parallel at a time; paused by request; it ends
// succeeded, failed (Reason names the server and why) or aborted.
const (
	RolloutPending   = "pending"
	RolloutCanary    = "canary"
	RolloutRolling   = "rolling"
	RolloutPaused    = "paused"
	RolloutSucceeded = "succeeded"
	RolloutFailed    = "failed"
	RolloutAborted   = "aborted"
)

// Rollout target states and waves.
const (
	TargetPending  = "pending"
	TargetUpdating = "updating" // its update_agent action runs, or (canaries) the health window does
	TargetHealthy  = "healthy"
	TargetFailed   = "failed"
	TargetSkipped  = "skipped" // not updated: already on the version, not online, or the rollout stopped first

	WaveCanary = "canary"
	WaveRest   = "rest"
)

// Canary is how many servers update first: a number ("canary": 2) or a
// percentage of the selected servers, rounded up ("canary": "20%").
type Canary struct {
	N       int
	Percent int // set instead of N for "N%"
}

// ParseCanary reads "2" or "20%".
func ParseCanary(s string) (Canary, error) {
	s = strings.TrimSpace(s)
	if p, ok := strings.CutSuffix(s, "%"); ok {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 100 {
			return Canary{}, errors.New(`canary percentage must be "1%" to "100%"`)
		}
		return Canary{Percent: n}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return Canary{}, errors.New(`canary must be a number of servers (at least 1) or a percentage such as "20%"`)
	}
	return Canary{N: n}, nil
}

// String is "2" or "20%".
func (c Canary) String() string {
	if c.Percent > 0 {
		return strconv.Itoa(c.Percent) + "%"
	}
	return strconv.Itoa(c.N)
}

// IsZero reports an absent canary (the default applies).
func (c Canary) IsZero() bool { return c.N == 0 && c.Percent == 0 }

// Of is the number of canaries among total servers (at least 1, at most total).
func (c Canary) Of(total int) int {
	n := c.N
	if c.Percent > 0 {
		n = (total*c.Percent + 99) / 100
	}
	return max(1, min(n, total))
}

// MarshalJSON is a number, or a string for a percentage.
func (c Canary) MarshalJSON() ([]byte, error) {
	if c.Percent > 0 {
		return json.Marshal(c.String())
	}
	return json.Marshal(c.N)
}

// UnmarshalJSON takes 2 or "2" or "20%".
func (c *Canary) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, []byte("null")) {
		*c = Canary{}
		return nil
	}
	var s string
	if len(b) > 0 && b[0] == '"' {
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
	} else {
		s = string(b)
	}
	v, err := ParseCanary(s)
	if err != nil {
		return err
	}
	*c = v
	return nil
}

// CreateRollout is POST /v1/workspaces/{ws}/agent-rollouts; answered 202
// with the Rollout while its controller works. Servers (ids or names) or
// Tag select the servers, at most one of them; neither selects every
// server of the workspace. Defaults: canary 1, max_parallel 1,
// health_window_s 60.
type CreateRollout struct {
	Version       string   `json:"version"`
	Servers       []string `json:"servers,omitempty"`
	Tag           string   `json:"tag,omitempty"` // a tag the servers carry: devpilot, devpilot-ws-<slug>, devpilot-srv-<id>
	Canary        Canary   `json:"canary,omitzero"`
	MaxParallel   int      `json:"max_parallel,omitempty"`    // 1..100
	HealthWindowS *int     `json:"health_window_s,omitempty"` // 0..86400
}

// Rollout is one agent rollout.
type Rollout struct {
	ID            string          `json:"id"` // rol_…
	Version       string          `json:"version"`
	Servers       []string        `json:"servers,omitempty"` // the selector, as asked
	Tag           string          `json:"tag,omitempty"`
	Canary        Canary          `json:"canary"`
	CanaryCount   int             `json:"canary_count"` // what canary came to
	MaxParallel   int             `json:"max_parallel"`
	HealthWindowS int             `json:"health_window_s"`
	State         string          `json:"state"`
	Reason        string          `json:"reason,omitempty"` // why it failed or was aborted
	Counts        map[string]int  `json:"counts"`           // targets by state
	Targets       []RolloutTarget `json:"targets"`
	CreatedBy     string          `json:"created_by"`
	CreatedAt     time.Time       `json:"created_at"`
	UpdatedAt     time.Time       `json:"updated_at"`
	FinishedAt    *time.Time      `json:"finished_at"`
}

// RolloutTarget is one server of a rollout.
type RolloutTarget struct {
	ServerID    string     `json:"server_id"`
	ServerName  string     `json:"server_name"`
	Wave        string     `json:"wave"`  // canary, rest
	State       string     `json:"state"` // pending, updating, healthy, failed, skipped
	FromVersion string     `json:"from_version"`
	ActionID    string     `json:"action_id,omitempty"` // the server's update_agent action
	Reason      string     `json:"reason,omitempty"`
	StartedAt   *time.Time `json:"started_at"`
	UpdatedAt   *time.Time `json:"updated_at"` // the update succeeded (a canary's health window starts)
	FinishedAt  *time.Time `json:"finished_at"`
}

// RolloutList is GET /v1/workspaces/{ws}/agent-rollouts, newest first
// (targets left out: GET one rollout for them).
type RolloutList struct {
	Rollouts []Rollout `json:"rollouts"`
	Next     string    `json:"next"`
}
