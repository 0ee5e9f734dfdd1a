package store

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"time"
)

// maxCachedStmts bounds the prepared statements kept: the store's queries
// are a fixed set of texts (a few hundred at most);
// a text beyond the bound runs unprepared.
const maxCachedStmts = 512

// stmtCache runs the store's queries as prepared statements, each text
// prepared once per pooled connection (database/sql does that as needed),
// outside transactions and, through in, inside them. On SQLite (modernc)
// it saves re-parsing the SQL on every call: 14% of a handshake's CPU in
// issue 16's profile, and 8% of a connect phase's even after that, when
// only queries outside transactions were cached. pgx caches statements
// itself, so PostgreSQL does not use it.
type stmtCache struct {
	db     *sql.DB
	writer chan struct{}   // held by this process's writer (see lockWriter)
	ctx    context.Context // background prepares; canceled by close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.RWMutex
	stmts   map[string]*sql.Stmt
	pending map[string]bool // texts being prepared in the background
	closed  bool
}

func newStmtCache(db *sql.DB) *stmtCache {
	ctx, cancel := context.WithCancel(context.Background())
	return &stmtCache{db: db, writer: make(chan struct{}, 1), ctx: ctx, cancel: cancel,
		stmts: map[string]*sql.Stmt{}, pending: map[string]bool{}}
}

// writerWait is how long a write waits for this process's writer slot,
// SQLite's busy_timeout: a write that waited that long fails as it did
// when SQLite's lock was all there was.
const writerWait = 10 * time.Second

// errWriterBusy is a write that waited writerWait for the writer slot.
var errWriterBusy = errors.New("database is locked: another write of this process held it for 10 s")

// lockWriter takes this process's writer slot, which every write
// transaction and every write outside one holds while it runs. SQLite has
// one writer; without the slot, writers that find it taken wait in
// SQLite's busy handler, which polls with sleeps growing to 100 ms, so a
// write behind a 20 ms one could wait 100 ms. Writers queued here are
// woken in order the moment the slot is free.
func (c *stmtCache) lockWriter(ctx context.Context) (unlock func(), err error) {
	t := time.NewTimer(writerWait)
	defer t.Stop()
	select {
	case c.writer <- struct{}{}:
		return func() { <-c.writer }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, errWriterBusy
	}
}

// stmt returns query's prepared statement, nil if it can't be prepared
// (the caller then runs it directly and gets the error from there) or
// the cache is full.
func (c *stmtCache) stmt(ctx context.Context, query string) *sql.Stmt {
	c.mu.RLock()
	st := c.stmts[query]
	n := len(c.stmts)
	c.mu.RUnlock()
	if st != nil || n >= maxCachedStmts {
		return st
	}
	st, err := c.db.PrepareContext(ctx, query)
	if err != nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old := c.stmts[query]; old != nil {
		_ = st.Close()
		return old
	}
	if c.closed || len(c.stmts) >= maxCachedStmts {
		_ = st.Close()
		return nil
	}
	c.stmts[query] = st
	return st
}

func (c *stmtCache) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	unlock, err := c.lockWriter(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if st := c.stmt(ctx, query); st != nil {
		return st.ExecContext(ctx, args...)
	}
	return c.db.ExecContext(ctx, query, args...)
}

func (c *stmtCache) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := c.stmt(ctx, query); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return c.db.QueryContext(ctx, query, args...)
}

func (c *stmtCache) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st := c.stmt(ctx, query); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return c.db.QueryRowContext(ctx, query, args...)
}

// cached returns query's statement if it is prepared already. If not, it
// returns nil and prepares it in the background: a transaction holds a
// connection, and preparing through the pool would wait for a second one,
// which every other transaction may be holding as it waits for this one
// (SQLite's single writer).
func (c *stmtCache) cached(query string) *sql.Stmt {
	c.mu.RLock()
	st := c.stmts[query]
	c.mu.RUnlock()
	if st != nil {
		return st
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if st := c.stmts[query]; st != nil || c.closed || c.pending[query] || len(c.stmts)+len(c.pending) >= maxCachedStmts {
		return st
	}
	c.pending[query] = true
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		c.stmt(c.ctx, query)
		c.mu.Lock()
		delete(c.pending, query)
		c.mu.Unlock()
	}()
	return nil
}

// in returns an execer that runs queries in tx, through the statements
// prepared on tx's connection (tx.StmtContext reuses one prepared there
// before, or prepares it there once, on that connection). Statements are
// only borrowed: the transaction's end releases them, the cache keeps
// them.
func (c *stmtCache) in(tx *sql.Tx) execer { return txStmts{tx: tx, c: c} }

type txStmts struct {
	tx *sql.Tx
	c  *stmtCache
}

func (t txStmts) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st := t.c.cached(query); st != nil {
		return t.tx.StmtContext(ctx, st).ExecContext(ctx, args...)
	}
	return t.tx.ExecContext(ctx, query, args...)
}

func (t txStmts) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := t.c.cached(query); st != nil {
		return t.tx.StmtContext(ctx, st).QueryContext(ctx, args...)
	}
	return t.tx.QueryContext(ctx, query, args...)
}

func (t txStmts) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st := t.c.cached(query); st != nil {
		return t.tx.StmtContext(ctx, st).QueryRowContext(ctx, args...)
	}
	return t.tx.QueryRowContext(ctx, query, args...)
}

// close stops the background prepares and closes every cached statement.
func (c *stmtCache) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	for q, st := range c.stmts {
		_ = st.Close()
		delete(c.stmts, q)
	}
}
