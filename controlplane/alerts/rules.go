// Package alerts keeps a workspace's alert rules and evaluates them: a
// server offline, or its cpu, memory or disk at or above a threshold, for
// at least a duration, on the servers carrying a tag or on all of them.
//
// The evaluator keeps one state row per (rule, server) in the database:
// pending while the condition holds for less than the rule's duration,
// firing once it held through it, resolved once it stopped holding. The
// condition comes from what is already debounced: the server's state as the
// hub and the reconciler set it (offline only after missed heartbeats,
// agent_offline only after two passes) and the stored health history (every
// sample through the duration at or above the threshold). Each transition
// re-reads the row inside the transaction that changes it and appends its
// alert.firing / alert.resolved event there, so several control planes on
// one database fire an alert once.
package alerts

import (
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/store"
)

// Rule kinds.
const (
	KindOffline = "offline"
	KindCPU     = "cpu"
	KindMemory  = "memory"
	KindDisk    = "disk"
)

// Kinds lists every rule kind.
var Kinds = []string{KindOffline, KindCPU, KindMemory, KindDisk}

// Alert states.
const (
	StatePending  = "pending"
	StateFiring   = "firing"
	StateResolved = "resolved"
)

// States lists every alert state.
var States = []string{StatePending, StateFiring, StateResolved}

// Bounds of a rule.
const (
	MaxForS    = 7 * 24 * 3600
	maxNameLen = 100
)

// Rule is the input of a new rule (see apitypes.CreateAlertRule).
type Rule struct {
	Name             string
	Kind             string
	ThresholdPercent *float64
	ForS             int
	Tag              string
}

// Patch changes some fields of a rule.
type Patch struct {
	Name             *string
	ThresholdPercent *float64
	ForS             *int
	Tag              *string
}

// tagPattern: the tags Devpilot puts on servers (provision.TagAll,
// TagWorkspace, TagServer).
var tagPattern = regexp.MustCompile(`^devpilot(-ws-[a-z0-9][a-z0-9-]{0,62}|-srv-[A-Za-z0-9_]{1,64})?$`)

func check(r store.AlertRule) error {
	switch {
	case strings.TrimSpace(r.Name) == "":
		return problem.Validation("Name the rule, e.g. web-offline.", "name is required")
	case utf8.RuneCountInString(r.Name) > maxNameLen || strings.ContainsFunc(r.Name, func(c rune) bool { return c < 0x20 || c == 0x7f }):
		return problem.Validation("", "name must be at most %d printable characters", maxNameLen)
	case !slices.Contains(Kinds, r.Kind):
		return problem.Validation("Use one of: "+strings.Join(Kinds, ", ")+".", "unknown kind %q", r.Kind)
	case r.ForS < 1 || r.ForS > MaxForS:
		return problem.Validation("for_s is how long the condition must hold before the alert fires, e.g. 300.",
			"for_s must be between 1 and %d seconds", MaxForS)
	case r.Tag != "" && !tagPattern.MatchString(r.Tag):
		return problem.Validation("Use a tag `devpilot servers show` lists: devpilot (every server), devpilot-ws-SLUG or devpilot-srv-ID; or none for every server.",
			"unknown tag %q", r.Tag)
	}
	return nil
}

func checkThreshold(kind string, t *float64) error {
	if kind == KindOffline {
		if t != nil {
			return problem.Validation("Leave threshold_percent out of an offline rule: for_s alone says how long.",
				"threshold_percent does not apply to kind offline")
		}
		return nil
	}
	if t == nil {
		return problem.Validation("Give threshold_percent between 1 and 100, e.g. 90.", "threshold_percent is required for kind %s", kind)
	}
	if math.IsNaN(*t) || *t <= 0 || *t > 100 {
		return problem.Validation("Give threshold_percent between 1 and 100, e.g. 90.", "threshold_percent must be above 0 and at most 100")
	}
	return nil
}

func notFound(err error, id string) error {
	if errors.Is(err, store.ErrNotFound) {
		return problem.NotFound("alert rule " + id)
	}
	return err
}

func conflict(name string) error {
	return problem.Conflict("Pick another name, or update the existing rule.", "an alert rule named %q already exists", name)
}

// CreateRule validates and stores a rule.
func (s *Service) CreateRule(ctx context.Context, actor, workspaceID string, in Rule) (store.AlertRule, error) {
	now := s.o.Now().UTC()
	r := store.AlertRule{ID: ids.New("alr"), WorkspaceID: workspaceID, Name: in.Name, Kind: in.Kind, ForS: in.ForS,
		Tag: in.Tag, CreatedAt: now, UpdatedAt: now}
	if err := check(r); err != nil {
		return r, err
	}
	if err := checkThreshold(r.Kind, in.ThresholdPercent); err != nil {
		return r, err
	}
	if in.ThresholdPercent != nil {
		r.ThresholdPercent = *in.ThresholdPercent
	}
	err := s.o.Store.InTx(ctx, func(q *store.Queries) error {
		if err := q.CreateAlertRule(ctx, r); err != nil {
			return err
		}
		return audit(ctx, q, actor, workspaceID, "alert_rule.create", r.ID, r, now)
	})
	if errors.Is(err, store.ErrConflict) {
		return r, conflict(r.Name)
	}
	if err != nil {
		return r, fmt.Errorf("save alert rule: %w", err)
	}
	s.Kick()
	return r, nil
}

// GetRule returns a rule of a workspace.
func (s *Service) GetRule(ctx context.Context, workspaceID, id string) (store.AlertRule, error) {
	r, err := s.o.Store.Q().GetAlertRule(ctx, workspaceID, id)
	return r, notFound(err, id)
}

// RulesPage lists a workspace's rules (name "": all).
func (s *Service) RulesPage(ctx context.Context, workspaceID, name string, after *store.Cursor, limit int) ([]store.AlertRule, error) {
	return s.o.Store.Q().AlertRulesPage(ctx, workspaceID, name, after, limit)
}

// UpdateRule changes the fields p gives. A rule whose condition changes
// starts over: its pending states are dropped, its firing ones stay until
// the next evaluation says whether they still hold.
func (s *Service) UpdateRule(ctx context.Context, actor, workspaceID, id string, p Patch) (store.AlertRule, error) {
	var r store.AlertRule
	err := s.o.Store.InTx(ctx, func(q *store.Queries) error {
		var err error
		if r, err = q.GetAlertRule(ctx, workspaceID, id); err != nil {
			return notFound(err, id)
		}
		if p.Name != nil {
			r.Name = *p.Name
		}
		if p.ForS != nil {
			r.ForS = *p.ForS
		}
		if p.Tag != nil {
			r.Tag = *p.Tag
		}
		if err := check(r); err != nil {
			return err
		}
		if p.ThresholdPercent != nil || r.Kind == KindOffline {
			if err := checkThreshold(r.Kind, p.ThresholdPercent); err != nil {
				return err
			}
		}
		if p.ThresholdPercent != nil {
			r.ThresholdPercent = *p.ThresholdPercent
		}
		r.UpdatedAt = s.o.Now().UTC()
		if err := q.UpdateAlertRule(ctx, r); err != nil {
			if errors.Is(err, store.ErrConflict) {
				return conflict(r.Name)
			}
			return err
		}
		return audit(ctx, q, actor, workspaceID, "alert_rule.update", r.ID, r, r.UpdatedAt)
	})
	if err != nil {
		return r, err
	}
	s.Kick()
	return r, nil
}

// DeleteRule removes a rule; its firing alerts resolve (alert.resolved,
// with reason "rule deleted") in the same transaction.
func (s *Service) DeleteRule(ctx context.Context, actor, workspaceID, id string) error {
	now := s.o.Now().UTC()
	err := s.o.Store.InTx(ctx, func(q *store.Queries) error {
		r, err := q.GetAlertRule(ctx, workspaceID, id)
		if err != nil {
			return notFound(err, id)
		}
		states, err := q.AlertStates(ctx, workspaceID, StateFiring, -1)
		if err != nil {
			return err
		}
		for _, st := range states {
			if st.RuleID != id {
				continue
			}
			if err := appendEvent(ctx, q, r, st.ServerID, eventResolved, st.Value, st.Since, now, "rule deleted"); err != nil {
				return err
			}
		}
		if err := q.DeleteAlertRule(ctx, workspaceID, id); err != nil {
			return err
		}
		return audit(ctx, q, actor, workspaceID, "alert_rule.delete", id, map[string]string{"name": r.Name}, now)
	})
	if err != nil {
		return err
	}
	s.refreshGauge(ctx)
	return nil
}
