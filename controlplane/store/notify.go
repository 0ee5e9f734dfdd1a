package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// ErrNoNotify is Notify's and Listen's answer on SQLite, which has no
// LISTEN/NOTIFY (and only one control plane).
var ErrNoNotify = errors.New("LISTEN/NOTIFY needs PostgreSQL")

// MaxNotifyPayload is the largest payload Notify sends (PostgreSQL's limit
// is 8,000 bytes).
const MaxNotifyPayload = 7900

// Notify sends payload on channel to every session listening on it,
// delivered once the statement commits (at once, outside a transaction).
// Notifications are a hint, not a record: a listener that was not
// connected never gets it, so what matters is also in a table.
func (q *Queries) Notify(ctx context.Context, channel, payload string) error {
	if q.st == nil || q.st.dialect != Postgres {
		return ErrNoNotify
	}
	if len(payload) > MaxNotifyPayload {
		return fmt.Errorf("notify %s: payload of %d bytes is over %d", channel, len(payload), MaxNotifyPayload)
	}
	_, err := q.x.ExecContext(ctx, `SELECT pg_notify(?, ?)`, channel, payload)
	return err
}

// ListenMany calls fn with each payload sent on any of channels, on a
// connection of its own, until ctx ends or the connection fails (then it returns the
// error; the caller listens again, and looks in the tables for what it may
// have missed). ready is called once the LISTEN took effect.
func (s *Store) ListenMany(ctx context.Context, channels []string, ready func(), fn func(payload string)) error {
	if s.dialect != Postgres {
		return ErrNoNotify
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer func() {
		// A connection that was LISTENing goes back to the pool clean.
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = conn.ExecContext(uctx, `UNLISTEN *`)
		_ = conn.Close()
	}()
	return conn.Raw(func(dc any) error {
		pc := dc.(*stdlib.Conn).Conn()
		for _, ch := range channels {
			if _, err := pc.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
				return fmt.Errorf("listen %s: %w", ch, err)
			}
		}
		if ready != nil {
			ready()
		}
		for {
			n, err := pc.WaitForNotification(ctx)
			if err != nil {
				return fmt.Errorf("listen: %w", err)
			}
			fn(n.Payload)
		}
	})
}
