package store

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// Rollout is one agent rollout of a workspace (migration 00021).
type Rollout struct {
	ID            string
	WorkspaceID   string
	Version       string
	SelectorJSON  string
	Canary        string // as asked: "2" or "20%"
	CanaryCount   int
	MaxParallel   int
	HealthWindowS int
	State         string // pending, canary, rolling, paused, succeeded, failed, aborted
	PausedFrom    string // the state a paused rollout resumes to
	Reason        string
	LeaseOwner    string
	LeaseUntil    *time.Time
	CreatedBy     string
	CreatedAt     time.Time
	UpdatedAt     time.Time
	FinishedAt    *time.Time
}

// RolloutTarget is one server of a rollout.
type RolloutTarget struct {
	RolloutID     string
	ServerID      string
	Seq           int
	Wave          string // canary, rest
	State         string // pending, updating, healthy, failed, skipped
	FromVersion   string
	ActionID      string // the update_agent action, recorded as soon as it exists
	BaselineError string // the server's agent_last_error when its update succeeded
	Reason        string
	StartedAt     *time.Time // recorded before the update action is started
	UpdatedAt     *time.Time // the update action succeeded: the health window starts
	FinishedAt    *time.Time
}

// RolloutOpenStates are the states of a rollout still under way.
var RolloutOpenStates = []string{"pending", "canary", "rolling", "paused"}

const rolloutCols = `id, workspace_id, version, selector_json, canary, canary_count, max_parallel, health_window_s, state,
	paused_from, reason, lease_owner, lease_until, created_by, created_at, updated_at, finished_at`

const targetCols = `rollout_id, server_id, seq, wave, state, from_version, action_id, baseline_error, reason,
	started_at, updated_at, finished_at`

func scanRollout(sc interface{ Scan(...any) error }) (Rollout, error) {
	var r Rollout
	var lease, finished sql.NullTime
	err := sc.Scan(&r.ID, &r.WorkspaceID, &r.Version, &r.SelectorJSON, &r.Canary, &r.CanaryCount, &r.MaxParallel,
		&r.HealthWindowS, &r.State, &r.PausedFrom, &r.Reason, &r.LeaseOwner, &lease, &r.CreatedBy, &r.CreatedAt,
		&r.UpdatedAt, &finished)
	r.LeaseUntil, r.FinishedAt = timePtr(lease), timePtr(finished)
	return r, err
}

func scanTarget(sc interface{ Scan(...any) error }) (RolloutTarget, error) {
	var t RolloutTarget
	var started, updated, finished sql.NullTime
	err := sc.Scan(&t.RolloutID, &t.ServerID, &t.Seq, &t.Wave, &t.State, &t.FromVersion, &t.ActionID, &t.BaselineError,
		&t.Reason, &started, &updated, &finished)
	t.StartedAt, t.UpdatedAt, t.FinishedAt = timePtr(started), timePtr(updated), timePtr(finished)
	return t, err
}

// CreateRollout inserts a rollout and its targets; a workspace with an
// unfinished rollout already is ErrConflict.
func (q *Queries) CreateRollout(ctx context.Context, r Rollout, targets []RolloutTarget) error {
	_, err := q.x.ExecContext(ctx, `INSERT INTO agent_rollouts (`+rolloutCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.ID, r.WorkspaceID, r.Version, r.SelectorJSON, r.Canary, r.CanaryCount, r.MaxParallel, r.HealthWindowS, r.State,
		r.PausedFrom, r.Reason, r.LeaseOwner, nullTime(r.LeaseUntil), r.CreatedBy, r.CreatedAt.UTC(), r.UpdatedAt.UTC(),
		nullTime(r.FinishedAt))
	if isUnique(err) {
		return ErrConflict
	}
	if err != nil {
		return err
	}
	for _, t := range targets {
		if _, err := q.x.ExecContext(ctx, `INSERT INTO agent_rollout_targets (`+targetCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			r.ID, t.ServerID, t.Seq, t.Wave, t.State, t.FromVersion, t.ActionID, t.BaselineError, t.Reason,
			nullTime(t.StartedAt), nullTime(t.UpdatedAt), nullTime(t.FinishedAt)); err != nil {
			return err
		}
	}
	return nil
}

// GetRollout returns one rollout of a workspace ("": any workspace).
func (q *Queries) GetRollout(ctx context.Context, workspaceID, id string) (Rollout, error) {
	r, err := scanRollout(q.x.QueryRowContext(ctx, `SELECT `+rolloutCols+` FROM agent_rollouts WHERE id = ? AND (? = '' OR workspace_id = ?)`,
		id, workspaceID, workspaceID))
	if errors.Is(err, sql.ErrNoRows) {
		return r, ErrNotFound
	}
	return r, err
}

// RolloutsPage lists a workspace's rollouts, newest first, after the cursor.
func (q *Queries) RolloutsPage(ctx context.Context, workspaceID string, after *Cursor, limit int) ([]Rollout, error) {
	where, args := keyset([]string{"workspace_id = ?"}, []any{workspaceID}, after, "created_at", "id", true)
	return q.rollouts(ctx, `WHERE `+and(where)+` ORDER BY created_at DESC, id DESC LIMIT ?`, append(args, lim(limit))...)
}

// ActiveRollouts returns the rollouts a controller has work on: those
// under way, and finished ones with a target still updating (its action
// is followed to the end).
func (q *Queries) ActiveRollouts(ctx context.Context) ([]Rollout, error) {
	return q.rollouts(ctx, `WHERE state IN ('pending', 'canary', 'rolling', 'paused')
		OR id IN (SELECT rollout_id FROM agent_rollout_targets WHERE state = 'updating') ORDER BY created_at, id`)
}

// RolloutsByState counts rollouts by state (metrics).
func (q *Queries) RolloutsByState(ctx context.Context) (map[string]int, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT state, COUNT(*) FROM agent_rollouts GROUP BY state`)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	out := map[string]int{}
	for rows.Next() {
		var k string
		var n int
		if err := rows.Scan(&k, &n); err != nil {
			return nil, err
		}
		out[k] = n
	}
	return out, rows.Err()
}

// WorkspaceAgentTarget is a workspace's agent target version: the version
// of its last succeeded rollout ("" when none succeeded yet).
func (q *Queries) WorkspaceAgentTarget(ctx context.Context, workspaceID string) (string, error) {
	var v string
	err := q.x.QueryRowContext(ctx, `SELECT version FROM agent_rollouts WHERE workspace_id = ? AND state = 'succeeded'
		ORDER BY finished_at DESC, id DESC LIMIT 1`, workspaceID).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return v, err
}

func (q *Queries) rollouts(ctx context.Context, where string, args ...any) ([]Rollout, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT `+rolloutCols+` FROM agent_rollouts `+where, args...)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []Rollout
	for rows.Next() {
		r, err := scanRollout(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// RolloutTargets returns a rollout's targets in order (canaries first).
func (q *Queries) RolloutTargets(ctx context.Context, rolloutID string) ([]RolloutTarget, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT `+targetCols+` FROM agent_rollout_targets WHERE rollout_id = ? ORDER BY seq`, rolloutID)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []RolloutTarget
	for rows.Next() {
		t, err := scanTarget(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// LeaseRollout takes (or renews) the lease of a rollout for owner until
// until: it succeeds when nobody holds it, the holder's lease expired, or
// owner holds it already.
func (q *Queries) LeaseRollout(ctx context.Context, id, owner string, now, until time.Time) (bool, error) {
	res, err := q.x.ExecContext(ctx, `UPDATE agent_rollouts SET lease_owner = ?, lease_until = ?
		WHERE id = ? AND (lease_owner = '' OR lease_owner = ? OR lease_until IS NULL OR lease_until < ?)`,
		owner, until.UTC(), id, owner, now.UTC())
	return changed(res, err)
}

// HoldsRollout reports whether owner holds the rollout's lease at now;
// the controller checks it inside each transaction that records a step.
func (q *Queries) HoldsRollout(ctx context.Context, id, owner string, now time.Time) (bool, error) {
	var n int
	err := q.x.QueryRowContext(ctx, `SELECT COUNT(*) FROM agent_rollouts WHERE id = ? AND lease_owner = ? AND lease_until >= ?`,
		id, owner, now.UTC()).Scan(&n)
	return n > 0, err
}

// SaveRolloutState records a rollout's state and reason if it is still
// in state from (false otherwise: someone paused, resumed or aborted it
// meanwhile, and the caller reads it again).
func (q *Queries) SaveRolloutState(ctx context.Context, r Rollout, from string) (bool, error) {
	res, err := q.x.ExecContext(ctx, `UPDATE agent_rollouts SET state = ?, paused_from = ?, reason = ?, updated_at = ?,
		finished_at = ? WHERE id = ? AND state = ?`, r.State, r.PausedFrom, r.Reason, r.UpdatedAt.UTC(), nullTime(r.FinishedAt), r.ID, from)
	return changed(res, err)
}

// SaveRolloutTarget records one target's progress.
func (q *Queries) SaveRolloutTarget(ctx context.Context, t RolloutTarget) error {
	return affected(q.x.ExecContext(ctx, `UPDATE agent_rollout_targets SET state = ?, action_id = ?, baseline_error = ?,
		reason = ?, started_at = ?, updated_at = ?, finished_at = ? WHERE rollout_id = ? AND server_id = ?`,
		t.State, t.ActionID, t.BaselineError, t.Reason, nullTime(t.StartedAt), nullTime(t.UpdatedAt), nullTime(t.FinishedAt),
		t.RolloutID, t.ServerID))
}

// SkipPendingTargets marks a rollout's pending targets skipped with reason.
func (q *Queries) SkipPendingTargets(ctx context.Context, rolloutID, reason string, at time.Time) error {
	_, err := q.x.ExecContext(ctx, `UPDATE agent_rollout_targets SET state = 'skipped', reason = ?, finished_at = ?
		WHERE rollout_id = ? AND state = 'pending'`, reason, at.UTC(), rolloutID)
	return err
}

// OnlineAgentVersions counts online servers by the agent version they
// reported (metrics: devpilot_agents).
func (q *Queries) OnlineAgentVersions(ctx context.Context) (map[string]int, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT agent_version, COUNT(*) FROM servers WHERE state = 'online' GROUP BY agent_version`)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	out := map[string]int{}
	for rows.Next() {
		var k string
		var n int
		if err := rows.Scan(&k, &n); err != nil {
			return nil, err
		}
		out[k] = n
	}
	return out, rows.Err()
}

// LastSucceededRollouts returns each workspace's last succeeded rollout
// (the one that set its agent target version).
func (q *Queries) LastSucceededRollouts(ctx context.Context) ([]Rollout, error) {
	rs, err := q.rollouts(ctx, `WHERE state = 'succeeded' ORDER BY finished_at, id`)
	if err != nil {
		return nil, err
	}
	last := map[string]int{}
	var out []Rollout
	for _, r := range rs {
		if i, ok := last[r.WorkspaceID]; ok {
			out[i] = r
			continue
		}
		last[r.WorkspaceID] = len(out)
		out = append(out, r)
	}
	return out, nil
}
