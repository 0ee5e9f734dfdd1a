package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"
)

// SealedColumn is a column that holds ciphertexts (secrets.Keyring), with
// the column naming each row: its value is the record id the ciphertext is
// bound to.
type SealedColumn struct{ Table, IDColumn, Column string }

// SealedColumns are every column master key rotation re-encrypts. (Console
// sessions are not among them: rotation signs them out.)
var SealedColumns = []SealedColumn{
	{"integrations", "id", "secret_ciphertext"},
	{"workspace_ssh_keys", "workspace_id", "private_ciphertext"},
	{"tasks", "id", "spec_json"},
	{"deployments", "id", "plan_json"},
	{"webhooks", "id", "secret_ciphertext"},
}

// Sealed is an encrypted column value and the id of its row.
type Sealed struct{ ID, Ciphertext string }

// ListSealed lists every row's ciphertext in c.
func (q *Queries) ListSealed(ctx context.Context, c SealedColumn) ([]Sealed, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT `+c.IDColumn+`, `+c.Column+` FROM `+c.Table+` ORDER BY `+c.IDColumn)
	if err != nil {
		return nil, fmt.Errorf("list %s.%s: %w", c.Table, c.Column, err)
	}
	defer func() { _ = rows.Close() }()
	var out []Sealed
	for rows.Next() {
		var s Sealed
		if err := rows.Scan(&s.ID, &s.Ciphertext); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// GetSealed returns one row's ciphertext in c (ErrNotFound when it is gone).
func (q *Queries) GetSealed(ctx context.Context, c SealedColumn, id string) (string, error) {
	var ct string
	err := q.x.QueryRowContext(ctx, `SELECT `+c.Column+` FROM `+c.Table+` WHERE `+c.IDColumn+` = ?`, id).Scan(&ct)
	return ct, one(err)
}

// Reseal swaps a row's ciphertext in c if it still is old (compare and
// swap); false when the row changed or is gone meanwhile.
func (q *Queries) Reseal(ctx context.Context, c SealedColumn, id, old, updated string) (bool, error) {
	res, err := q.x.ExecContext(ctx, `UPDATE `+c.Table+` SET `+c.Column+` = ? WHERE `+c.IDColumn+` = ? AND `+c.Column+` = ?`,
		updated, id, old)
	if err != nil {
		return false, fmt.Errorf("reseal %s %s: %w", c.Table, id, err)
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// ErrBusy: another holder has the exclusive lock.
var ErrBusy = errors.New("held by another")

// Exclusive locks, by name. The values are PostgreSQL advisory lock keys
// (distinct from leaderLock and writerLock).
const (
	LockKeyRotation int64 = 0x64702d726f746174 // "dp-rotat"
)

// localLocks are SQLite's exclusive locks: the file is served by one
// process, so a lock per file and key in this process is enough.
var localLocks sync.Map // "path\x00key" → *sync.Mutex

// TryExclusive takes the lock key unless someone holds it (ErrBusy): on
// PostgreSQL a session-level advisory lock on a dedicated connection, so it
// excludes every control plane on the database and is released when this
// process dies; on SQLite a lock inside this process. Call release when done.
func (s *Store) TryExclusive(ctx context.Context, key int64) (release func(), err error) {
	if s.dialect != Postgres {
		m, _ := localLocks.LoadOrStore(fmt.Sprintf("%s\x00%d", s.path, key), &sync.Mutex{})
		mu := m.(*sync.Mutex)
		if !mu.TryLock() {
			return nil, ErrBusy
		}
		return mu.Unlock, nil
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	var got bool
	if err := conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1)`, key).Scan(&got); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("lock: %w", err)
	}
	if !got {
		_ = conn.Close()
		return nil, ErrBusy
	}
	return func() { unlockOn(conn, key) }, nil
}

// unlockOn releases an advisory lock with a fresh context (the caller's
// may be cancelled); closing the session releases it too if that fails.
func unlockOn(conn *sql.Conn, key int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _ = conn.ExecContext(ctx, `SELECT pg_advisory_unlock($1)`, key)
	_ = conn.Close()
}
