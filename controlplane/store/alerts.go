package store

import (
	"context"
	"database/sql"
	"time"
)

// AlertRule is a workspace's alert rule (migration 00018).
type AlertRule struct {
	ID               string
	WorkspaceID      string
	Name             string
	Kind             string // offline, cpu, memory, disk
	ThresholdPercent float64
	ForS             int
	Tag              string // "" selects every server of the workspace
	CreatedAt        time.Time
	UpdatedAt        time.Time
}

// AlertState is the evaluator's state of one rule on one server
// (migration 00019).
type AlertState struct {
	RuleID      string
	ServerID    string
	WorkspaceID string
	State       string // pending, firing, resolved
	Since       time.Time
	Value       float64
	FiredAt     *time.Time
	ResolvedAt  *time.Time
	UpdatedAt   time.Time
}

const alertRuleCols = `id, workspace_id, name, kind, threshold_percent, for_s, tag, created_at, updated_at`

func scanAlertRule(sc interface{ Scan(...any) error }) (AlertRule, error) {
	var r AlertRule
	err := sc.Scan(&r.ID, &r.WorkspaceID, &r.Name, &r.Kind, &r.ThresholdPercent, &r.ForS, &r.Tag, &r.CreatedAt, &r.UpdatedAt)
	return r, err
}

// CreateAlertRule inserts r; a name taken in the workspace is ErrConflict.
func (q *Queries) CreateAlertRule(ctx context.Context, r AlertRule) error {
	_, err := q.x.ExecContext(ctx, `INSERT INTO alert_rules (`+alertRuleCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.ID, r.WorkspaceID, r.Name, r.Kind, r.ThresholdPercent, r.ForS, r.Tag, r.CreatedAt.UTC(), r.UpdatedAt.UTC())
	if isUnique(err) {
		return ErrConflict
	}
	return err
}

// GetAlertRule finds a rule of a workspace.
func (q *Queries) GetAlertRule(ctx context.Context, workspaceID, id string) (AlertRule, error) {
	r, err := scanAlertRule(q.x.QueryRowContext(ctx, `SELECT `+alertRuleCols+` FROM alert_rules WHERE workspace_id = ? AND id = ?`,
		workspaceID, id))
	return r, one(err)
}

// AlertRulesPage lists at most limit (-1: all) rules of a workspace
// (workspaceID "": every workspace's), oldest first, after the cursor
// (At, ID); name "" or only the rule of that name.
func (q *Queries) AlertRulesPage(ctx context.Context, workspaceID, name string, after *Cursor, limit int) ([]AlertRule, error) {
	where, args := keyset([]string{"(? = '' OR workspace_id = ?)"}, []any{workspaceID, workspaceID}, after, "created_at", "id", false)
	if name != "" {
		where, args = append(where, "name = ?"), append(args, name)
	}
	rows, err := q.x.QueryContext(ctx, `SELECT `+alertRuleCols+` FROM alert_rules WHERE `+and(where)+` ORDER BY created_at, id LIMIT ?`,
		append(args, lim(limit))...)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	out := []AlertRule{}
	for rows.Next() {
		r, err := scanAlertRule(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// UpdateAlertRule writes every mutable field of r; a taken name is ErrConflict.
func (q *Queries) UpdateAlertRule(ctx context.Context, r AlertRule) error {
	res, err := q.x.ExecContext(ctx, `UPDATE alert_rules SET name = ?, kind = ?, threshold_percent = ?, for_s = ?, tag = ?,
		updated_at = ? WHERE workspace_id = ? AND id = ?`,
		r.Name, r.Kind, r.ThresholdPercent, r.ForS, r.Tag, r.UpdatedAt.UTC(), r.WorkspaceID, r.ID)
	if isUnique(err) {
		return ErrConflict
	}
	return affected(res, err)
}

// DeleteAlertRule removes a rule and its states.
func (q *Queries) DeleteAlertRule(ctx context.Context, workspaceID, id string) error {
	if _, err := q.x.ExecContext(ctx, `DELETE FROM alert_states WHERE rule_id = ? AND workspace_id = ?`, id, workspaceID); err != nil {
		return err
	}
	return affected(q.x.ExecContext(ctx, `DELETE FROM alert_rules WHERE workspace_id = ? AND id = ?`, workspaceID, id))
}

const alertStateCols = `rule_id, server_id, workspace_id, state, since, value, fired_at, resolved_at, updated_at`

func scanAlertState(sc interface{ Scan(...any) error }) (AlertState, error) {
	var s AlertState
	var fired, resolved sql.NullTime
	err := sc.Scan(&s.RuleID, &s.ServerID, &s.WorkspaceID, &s.State, &s.Since, &s.Value, &fired, &resolved, &s.UpdatedAt)
	s.FiredAt, s.ResolvedAt = timePtr(fired), timePtr(resolved)
	return s, err
}

// AlertState reads the state of a rule on a server.
func (q *Queries) AlertState(ctx context.Context, ruleID, serverID string) (AlertState, error) {
	s, err := scanAlertState(q.x.QueryRowContext(ctx, `SELECT `+alertStateCols+` FROM alert_states WHERE rule_id = ? AND server_id = ?`,
		ruleID, serverID))
	return s, one(err)
}

// PutAlertState inserts or replaces the state of a rule on a server.
func (q *Queries) PutAlertState(ctx context.Context, s AlertState) error {
	_, err := q.x.ExecContext(ctx, `INSERT INTO alert_states (`+alertStateCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (rule_id, server_id) DO UPDATE SET state = excluded.state, since = excluded.since, value = excluded.value,
		fired_at = excluded.fired_at, resolved_at = excluded.resolved_at, updated_at = excluded.updated_at`,
		s.RuleID, s.ServerID, s.WorkspaceID, s.State, s.Since.UTC(), s.Value, nullTime(s.FiredAt), nullTime(s.ResolvedAt), s.UpdatedAt.UTC())
	return err
}

// DeleteAlertState forgets the state of a rule on a server.
func (q *Queries) DeleteAlertState(ctx context.Context, ruleID, serverID string) error {
	_, err := q.x.ExecContext(ctx, `DELETE FROM alert_states WHERE rule_id = ? AND server_id = ?`, ruleID, serverID)
	return err
}

// AlertStates lists a workspace's alert states (workspaceID "": all),
// in state "" (any) or the given one, the most recent change first.
func (q *Queries) AlertStates(ctx context.Context, workspaceID, state string, limit int) ([]AlertState, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT `+alertStateCols+` FROM alert_states
		WHERE (? = '' OR workspace_id = ?) AND (? = '' OR state = ?) ORDER BY updated_at DESC, rule_id, server_id LIMIT ?`,
		workspaceID, workspaceID, state, state, lim(limit))
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	out := []AlertState{}
	for rows.Next() {
		s, err := scanAlertState(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// --- integration health checks (migration 00019)

// DueIntegrations lists up to limit integrations whose next background
// check is due at now (never checked counts as due).
func (q *Queries) DueIntegrations(ctx context.Context, now time.Time, limit int) ([]Integration, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT `+integrationCols+` FROM integrations
		WHERE next_check_at IS NULL OR next_check_at <= ? ORDER BY next_check_at, id LIMIT ?`, now.UTC(), lim(limit))
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []Integration
	for rows.Next() {
		in, err := scanIntegration(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, in)
	}
	return out, rows.Err()
}

// ClaimIntegrationCheck takes a due integration's check for this control
// plane by moving its next check to until (the claim's expiry: a control
// plane that dies mid-check leaves it due again then). It reports false
// when the check is not due (another control plane claimed it first).
// force claims it even when not due (a check right after a 401/403).
func (q *Queries) ClaimIntegrationCheck(ctx context.Context, id string, now, until time.Time, force bool) (bool, error) {
	res, err := q.x.ExecContext(ctx, `UPDATE integrations SET next_check_at = ?
		WHERE id = ? AND (? OR next_check_at IS NULL OR next_check_at <= ?)`, until.UTC(), id, force, now.UTC())
	return changed(res, err)
}

// ScheduleIntegrationCheck sets when an integration is next checked.
func (q *Queries) ScheduleIntegrationCheck(ctx context.Context, id string, at time.Time) error {
	_, err := q.x.ExecContext(ctx, `UPDATE integrations SET next_check_at = ? WHERE id = ?`, at.UTC(), id)
	return err
}
