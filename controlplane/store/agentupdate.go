package store

import (
	"context"
	"database/sql"
	"errors"
)

// SetAgentLastUpdate records the outcome of a server's last agent update
// (protocol.LastUpdate as JSON; migration 00020).
func (q *Queries) SetAgentLastUpdate(ctx context.Context, id, lastUpdateJSON string) error {
	_, err := q.x.ExecContext(ctx, `UPDATE servers SET agent_last_update = ? WHERE id = ?`, lastUpdateJSON, id)
	return err
}

// AgentLastUpdate returns what SetAgentLastUpdate recorded ("" if nothing).
func (q *Queries) AgentLastUpdate(ctx context.Context, id string) (string, error) {
	var r string
	err := q.x.QueryRowContext(ctx, `SELECT agent_last_update FROM servers WHERE id = ?`, id).Scan(&r)
	if errors.Is(err, sql.ErrNoRows) {
		return "", ErrNotFound
	}
	return r, err
}
