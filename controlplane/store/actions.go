package store

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// ServerAction is one lifecycle action of a server, a durable job.
type ServerAction struct {
	ID          string
	WorkspaceID string
	ServerID    string
	Type        string
	ParamsJSON  string
	State       string // queued, running, succeeded, failed
	StepsJSON   string
	ErrorJSON   string
	LeaseOwner  string
	LeaseUntil  *time.Time
	CreatedBy   string
	CreatedAt   time.Time
	UpdatedAt   time.Time
	FinishedAt  *time.Time
}

const actionCols = `id, workspace_id, server_id, type, params_json, state, steps_json, error_json, lease_owner, lease_until,
	created_by, created_at, updated_at, finished_at`

func scanAction(sc interface{ Scan(...any) error }) (ServerAction, error) {
	var a ServerAction
	var lease, finished sql.NullTime
	err := sc.Scan(&a.ID, &a.WorkspaceID, &a.ServerID, &a.Type, &a.ParamsJSON, &a.State, &a.StepsJSON, &a.ErrorJSON,
		&a.LeaseOwner, &lease, &a.CreatedBy, &a.CreatedAt, &a.UpdatedAt, &finished)
	a.LeaseUntil, a.FinishedAt = timePtr(lease), timePtr(finished)
	return a, err
}

// CreateAction inserts a queued action; a server that has an unfinished
// action already is ErrConflict.
func (q *Queries) CreateAction(ctx context.Context, a ServerAction) error {
	_, err := q.x.ExecContext(ctx, `INSERT INTO server_actions (`+actionCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		a.ID, a.WorkspaceID, a.ServerID, a.Type, a.ParamsJSON, a.State, a.StepsJSON, a.ErrorJSON, a.LeaseOwner,
		nullTime(a.LeaseUntil), a.CreatedBy, a.CreatedAt.UTC(), a.UpdatedAt.UTC(), nullTime(a.FinishedAt))
	if isUnique(err) {
		return ErrConflict
	}
	return err
}

// GetAction returns one action of a workspace ("": any workspace).
func (q *Queries) GetAction(ctx context.Context, workspaceID, id string) (ServerAction, error) {
	row := q.x.QueryRowContext(ctx, `SELECT `+actionCols+` FROM server_actions WHERE id = ? AND (? = '' OR workspace_id = ?)`,
		id, workspaceID, workspaceID)
	a, err := scanAction(row)
	if errors.Is(err, sql.ErrNoRows) {
		return a, ErrNotFound
	}
	return a, err
}

// ListActions returns a server's actions, newest first, at most limit,
// created before the cursor action (cursor "" starts at the newest).
func (q *Queries) ListActions(ctx context.Context, serverID, beforeID string, limit int) ([]ServerAction, error) {
	return q.actions(ctx, `WHERE server_id = ? AND (? = '' OR (created_at, id) < (SELECT created_at, id FROM server_actions WHERE id = ?))
		ORDER BY created_at DESC, id DESC LIMIT ?`, serverID, beforeID, beforeID, limit)
}

// OpenActions returns unfinished actions (queued or running).
func (q *Queries) OpenActions(ctx context.Context) ([]ServerAction, error) {
	return q.actions(ctx, `WHERE state IN ('queued', 'running') ORDER BY created_at`)
}

func (q *Queries) actions(ctx context.Context, where string, args ...any) ([]ServerAction, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT `+actionCols+` FROM server_actions `+where, args...)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []ServerAction
	for rows.Next() {
		a, err := scanAction(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// LeaseAction takes (or renews) the lease of an unfinished action for
// owner until until: it succeeds when nobody holds it, the holder's lease
// expired, or owner holds it already. Several control planes on one
// database therefore never work on one action at once.
func (q *Queries) LeaseAction(ctx context.Context, id, owner string, now, until time.Time) (bool, error) {
	res, err := q.x.ExecContext(ctx, `UPDATE server_actions SET lease_owner = ?, lease_until = ?
		WHERE id = ? AND state IN ('queued', 'running') AND (lease_owner = '' OR lease_owner = ? OR lease_until IS NULL OR lease_until < ?)`,
		owner, until.UTC(), id, owner, now.UTC())
	return changed(res, err)
}

// SaveAction records an action's state, steps and error while owner holds
// its lease; false when the lease was lost (another control plane took
// over) or the action finished.
func (q *Queries) SaveAction(ctx context.Context, a ServerAction, owner string) (bool, error) {
	res, err := q.x.ExecContext(ctx, `UPDATE server_actions SET state = ?, steps_json = ?, error_json = ?, params_json = ?,
		updated_at = ?, finished_at = ? WHERE id = ? AND lease_owner = ? AND state IN ('queued', 'running')`,
		a.State, a.StepsJSON, a.ErrorJSON, a.ParamsJSON, a.UpdatedAt.UTC(), nullTime(a.FinishedAt), a.ID, owner)
	return changed(res, err)
}

// SetServerSize records a resized server's size.
func (q *Queries) SetServerSize(ctx context.Context, id, size string, at time.Time) error {
	_, err := q.x.ExecContext(ctx, `UPDATE servers SET size = ?, updated_at = ? WHERE id = ?`, size, at.UTC(), id)
	return err
}

// SetServerName records a renamed server's name; a name taken in the
// workspace is ErrConflict.
func (q *Queries) SetServerName(ctx context.Context, id, name string, at time.Time) error {
	_, err := q.x.ExecContext(ctx, `UPDATE servers SET name = ?, updated_at = ? WHERE id = ?`, name, at.UTC(), id)
	if isUnique(err) {
		return ErrConflict
	}
	return err
}

// SetServerPorts records a server's inbound ports (JSON array).
func (q *Queries) SetServerPorts(ctx context.Context, id, portsJSON string, at time.Time) error {
	_, err := q.x.ExecContext(ctx, `UPDATE servers SET ports_json = ?, updated_at = ? WHERE id = ?`, portsJSON, at.UTC(), id)
	return err
}
