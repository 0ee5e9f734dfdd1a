package store

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// SetAgentLastUpdate records the outcome of a server's last agent update
// (protocol.LastUpdate as JSON; migration 00020) and when it was first
// recorded (00023): an agent repeats the same outcome in each hello until
// it is acknowledged, which keeps the first time.
func (q *Queries) SetAgentLastUpdate(ctx context.Context, id, lastUpdateJSON string, at time.Time) error {
	_, err := q.x.ExecContext(ctx, `UPDATE servers SET
		agent_last_update_at = CASE WHEN agent_last_update = ? AND agent_last_update_at IS NOT NULL THEN agent_last_update_at ELSE ? END,
		agent_last_update = ? WHERE id = ?`, lastUpdateJSON, at.UTC(), lastUpdateJSON, id)
	return err
}

// AgentLastUpdate returns what SetAgentLastUpdate recorded ("" if nothing).
func (q *Queries) AgentLastUpdate(ctx context.Context, id string) (string, error) {
	lu, _, err := q.AgentUpdateState(ctx, id)
	return lu, err
}

// SetAgentUpdateStatus records a server's latest update_status
// (protocol.UpdateStatus as JSON; migration 00023), written by the control
// plane holding the agent's session so that the update_agent action reads
// it on any control plane and after a restart.
func (q *Queries) SetAgentUpdateStatus(ctx context.Context, id, statusJSON string) error {
	_, err := q.x.ExecContext(ctx, `UPDATE servers SET agent_update_status = ? WHERE id = ?`, statusJSON, id)
	return err
}

// AgentUpdateState returns a server's stored hello.last_update and
// update_status in one read ("" for what was never recorded).
func (q *Queries) AgentUpdateState(ctx context.Context, id string) (lastUpdateJSON, statusJSON string, err error) {
	err = q.x.QueryRowContext(ctx, `SELECT agent_last_update, agent_update_status FROM servers WHERE id = ?`, id).
		Scan(&lastUpdateJSON, &statusJSON)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", ErrNotFound
	}
	return lastUpdateJSON, statusJSON, err
}
