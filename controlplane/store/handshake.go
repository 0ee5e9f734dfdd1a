package store

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// AgentAuth is what an agent's authenticated handshake needs of its server:
// one narrow row, not the whole server.
type AgentAuth struct {
	State       string
	PublicKey   []byte // enrolled key; nil: none
	RevokedKey  []byte // retired by the last rekey
	Quarantined bool
}

// AgentAuthOf reads a server's agent keys and state (ErrNotFound if there
// is no such server): the one read of an authenticated handshake.
func (q *Queries) AgentAuthOf(ctx context.Context, id string) (AgentAuth, error) {
	var a AgentAuth
	var quarantined int
	err := q.x.QueryRowContext(ctx, `SELECT state, agent_public_key, revoked_agent_key,
		CASE WHEN quarantined_at IS NULL THEN 0 ELSE 1 END FROM servers WHERE id = ?`, id).
		Scan(&a.State, &a.PublicKey, &a.RevokedKey, &quarantined)
	a.Quarantined = quarantined == 1
	return a, one(err)
}

// StartAgentSession records a session start of a live server (not deleted
// or deleting): agent version and facts, last seen, the install confirmed
// (first session), an offline server online again. It reports whether it
// did: false means the server is gone, deleted or being deleted. This
// control plane (Store.SetSelf) becomes the session's holder.
//
// A server that is already online (or installing) costs one write, the
// handshake's only one. A server coming back (offline, agent_offline,
// unknown) moves state, so that write runs in a transaction that appends
// its server.online event (moveServer).
func (q *Queries) StartAgentSession(ctx context.Context, id, version, factsJSON string, at time.Time) (bool, error) {
	return q.startAgentSession(ctx, SessionStart{ID: id, Version: version, FactsJSON: factsJSON, At: at})
}

func (q *Queries) startAgentSession(ctx context.Context, st SessionStart) (bool, error) {
	at := st.At.UTC()
	n, err := rowsAffected(q.x.ExecContext(ctx, `UPDATE servers SET agent_version = ?, facts_json = ?, last_seen_at = ?,
		installed_at = COALESCE(installed_at, ?), updated_at = ?, session_holder = ?, session_started_at = ?, agent_capabilities = ?
		WHERE id = ? AND state NOT IN ('deleted', 'deleting', 'offline', 'agent_offline', 'unknown')`,
		st.Version, st.FactsJSON, at, at, at, q.self(), at, st.Capabilities, st.ID))
	if err != nil || n == 1 {
		return n == 1, err
	}
	err = q.moveServer(ctx, st.ID, func(q *Queries) error {
		return affected(q.x.ExecContext(ctx, `UPDATE servers SET agent_version = ?, facts_json = ?, last_seen_at = ?,
			installed_at = COALESCE(installed_at, ?), state = CASE WHEN state IN ('offline', 'agent_offline', 'unknown') THEN 'online' ELSE state END,
			updated_at = ?, session_holder = ?, session_started_at = ?, agent_capabilities = ? WHERE id = ? AND state NOT IN ('deleted', 'deleting')`,
			st.Version, st.FactsJSON, at, at, at, q.self(), at, st.Capabilities, st.ID))
	})
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

func rowsAffected(res sql.Result, err error) (int64, error) {
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
