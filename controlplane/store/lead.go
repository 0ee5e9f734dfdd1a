package store

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"time"
)

// leaderLock is the PostgreSQL advisory lock the active control plane holds
// for as long as it runs (distinct from writerLock, which each transaction
// takes).
const leaderLock = 0x64702d6c65616472 // "dp-leadr"

// LeadOptions tune Lead.
type LeadOptions struct {
	// Poll is how often a standby asks for the lock and how often the
	// leader checks that its lock connection is alive; default 2 s.
	Poll time.Duration
	// Standby is called once, when another control plane holds the lock
	// and this one starts waiting.
	Standby func()
}

// Leadership is this process's claim to be the database's one active
// control plane.
type Leadership struct {
	conn *sql.Conn // PostgreSQL: the session holding the lock; nil on SQLite
	lost chan struct{}
	stop chan struct{}
	done chan struct{}
	once sync.Once
	err  error // why it was lost; set before lost closes
}

// Lead makes this process the active control plane of the database.
//
// On PostgreSQL several control planes may share one database, but only
// one may run provisioning jobs, agent sessions and tasks at a time (they
// keep in-memory state: who is connected, which job runs where). Lead takes
// a session-level advisory lock on a dedicated connection, waiting as a
// standby while another process holds it, and returns once it holds it.
// PostgreSQL releases the lock when that session ends, whether the leader
// stopped, crashed or lost its network, and a standby takes over.
//
// The leader must stop when Lost closes: its lock session died, so another
// process may already be active. Until then it pings the session every Poll.
//
// On SQLite the database is a local file that only one process serves;
// Lead returns at once and the leadership is never lost.
func (s *Store) Lead(ctx context.Context, o LeadOptions) (*Leadership, error) {
	if o.Poll <= 0 {
		o.Poll = 2 * time.Second
	}
	l := &Leadership{lost: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	if s.dialect != Postgres {
		close(l.done)
		return l, nil
	}
	told := false
	for {
		conn, err := s.db.Conn(ctx)
		if err != nil {
			return nil, fmt.Errorf("lead: %w", err)
		}
		var got bool
		err = conn.QueryRowContext(ctx, `SELECT pg_try_advisory_lock($1)`, int64(leaderLock)).Scan(&got)
		if err == nil && got {
			l.conn = conn
			go l.watch(o.Poll)
			return l, nil
		}
		_ = conn.Close()
		if err != nil {
			return nil, fmt.Errorf("lead: %w", err)
		}
		if !told && o.Standby != nil {
			o.Standby()
		}
		told = true
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("lead: waiting as a standby: %w", ctx.Err())
		case <-time.After(o.Poll):
		}
	}
}

// watch pings the lock session until Release, closing lost if it fails.
func (l *Leadership) watch(poll time.Duration) {
	defer close(l.done)
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), poll)
		// A session-level lock lasts as long as its session: while this
		// session answers, the lock is ours.
		_, err := l.conn.ExecContext(ctx, `SELECT 1`)
		cancel()
		if err != nil {
			l.err = fmt.Errorf("lost the database leadership lock: %w", err)
			close(l.lost)
			return
		}
	}
}

// Lost closes when the leadership is gone (PostgreSQL only).
func (l *Leadership) Lost() <-chan struct{} { return l.lost }

// Err says why the leadership was lost; nil while it is held.
func (l *Leadership) Err() error {
	select {
	case <-l.lost:
		return l.err
	default:
		return nil
	}
}

// Release gives the leadership up, so a standby can take over at once.
func (l *Leadership) Release() {
	l.once.Do(func() {
		close(l.stop)
		<-l.done
		if l.conn == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, _ = l.conn.ExecContext(ctx, `SELECT pg_advisory_unlock($1)`, int64(leaderLock))
		_ = l.conn.Close()
	})
}
