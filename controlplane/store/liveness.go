package store

import (
	"context"
	"database/sql"
	"errors"
	"time"
)

// SetServerLiveness moves a server to state with reason if it is in one of
// from; it reports whether it did. The same state with a new reason only
// updates the reason.
func (q *Queries) SetServerLiveness(ctx context.Context, id, state, reason string, at time.Time, from ...string) (bool, error) {
	if len(from) == 0 {
		return false, errors.New("set server liveness: no from states")
	}
	args := []any{state, reason, at.UTC(), id}
	in := ""
	for i, f := range from {
		if i > 0 {
			in += ", "
		}
		in += "?"
		args = append(args, f)
	}
	var ok bool
	err := q.moveServer(ctx, id, func(q *Queries) error {
		var err error
		ok, err = changed(q.x.ExecContext(ctx, `UPDATE servers SET state = ?, state_reason = ?, updated_at = ? WHERE id = ? AND state IN (`+in+`)`, args...))
		return err
	})
	return ok && err == nil, err
}

// ServerStateReason returns why a server is in its state ("" if nothing
// was recorded).
func (q *Queries) ServerStateReason(ctx context.Context, id string) (string, error) {
	var r string
	err := q.x.QueryRowContext(ctx, `SELECT state_reason FROM servers WHERE id = ?`, id).Scan(&r)
	if errors.Is(err, sql.ErrNoRows) {
		return "", ErrNotFound
	}
	return r, err
}
