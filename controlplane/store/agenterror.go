package store

import (
	"context"
	"database/sql"
	"errors"
)

// SetAgentLastError records what ended a server's last agent session, or
// the hub's last refusal of it (migration 00014).
func (q *Queries) SetAgentLastError(ctx context.Context, id, reason string) error {
	_, err := q.x.ExecContext(ctx, `UPDATE servers SET agent_last_error = ? WHERE id = ?`, reason, id)
	return err
}

// AgentLastError returns what SetAgentLastError recorded ("" if nothing).
func (q *Queries) AgentLastError(ctx context.Context, id string) (string, error) {
	var r string
	err := q.x.QueryRowContext(ctx, `SELECT agent_last_error FROM servers WHERE id = ?`, id).Scan(&r)
	if errors.Is(err, sql.ErrNoRows) {
		return "", ErrNotFound
	}
	return r, err
}
