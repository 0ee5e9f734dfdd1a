package store

import (
	"context"
	"time"
)

// ConsoleSession is a signed-in web console session. It is found by the
// sha256 of the session id the browser's cookie holds; the id itself is
// never stored. Sealed holds the session's secrets (its API token and CSRF
// token), encrypted by the keyring; the store never sees them in the clear.
type ConsoleSession struct {
	IDHash    []byte
	Sealed    string
	TokenName string
	Role      string
	Workspace string
	CreatedAt time.Time
	ExpiresAt time.Time // idle expiry, extended on use
}

const consoleSessionCols = `id_hash, sealed, token_name, role, workspace, created_at, expires_at`

// CreateConsoleSession inserts s.
func (q *Queries) CreateConsoleSession(ctx context.Context, s ConsoleSession) error {
	_, err := q.x.ExecContext(ctx, `INSERT INTO console_sessions (`+consoleSessionCols+`) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		s.IDHash, s.Sealed, s.TokenName, s.Role, s.Workspace, s.CreatedAt.UTC(), s.ExpiresAt.UTC())
	if isUnique(err) {
		return ErrConflict
	}
	return err
}

// ConsoleSessionByHash finds a session by the sha256 of its id, expired or
// not (ErrNotFound when there is none).
func (q *Queries) ConsoleSessionByHash(ctx context.Context, idHash []byte) (ConsoleSession, error) {
	var s ConsoleSession
	err := q.x.QueryRowContext(ctx, `SELECT `+consoleSessionCols+` FROM console_sessions WHERE id_hash = ?`, idHash).
		Scan(&s.IDHash, &s.Sealed, &s.TokenName, &s.Role, &s.Workspace, &s.CreatedAt, &s.ExpiresAt)
	return s, one(err)
}

// TouchConsoleSession moves a session's expiry to expires, provided it has
// not expired by now. It reports whether it did: false means the session is
// gone or expired.
func (q *Queries) TouchConsoleSession(ctx context.Context, idHash []byte, expires, now time.Time) (bool, error) {
	res, err := q.x.ExecContext(ctx, `UPDATE console_sessions SET expires_at = ? WHERE id_hash = ? AND expires_at > ?`,
		expires.UTC(), idHash, now.UTC())
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// DeleteConsoleSession ends a session (no error when there is none).
func (q *Queries) DeleteConsoleSession(ctx context.Context, idHash []byte) error {
	_, err := q.x.ExecContext(ctx, `DELETE FROM console_sessions WHERE id_hash = ?`, idHash)
	return err
}

// DeleteExpiredConsoleSessions deletes the sessions expired by now and
// says how many there were.
func (q *Queries) DeleteExpiredConsoleSessions(ctx context.Context, now time.Time) (int64, error) {
	res, err := q.x.ExecContext(ctx, `DELETE FROM console_sessions WHERE expires_at <= ?`, now.UTC())
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
