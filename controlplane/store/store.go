// Package store keeps the control plane's state in SQL: SQLite (pure Go,
// no cgo) in the data directory by default, or PostgreSQL for a standby
// control plane that takes over when the active one dies (see Lead). Schema
// changes are goose migrations embedded in the binary, one directory per
// dialect with the same version numbers, applied at open.
//
// Queries are written once, with "?" placeholders and SQL both databases
// accept; on PostgreSQL they are rebound to $1, $2, ... before they run.
package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" driver
	"github.com/prometheus/client_golang/prometheus"
	_ "modernc.org/sqlite" // registers the "sqlite" driver

	"github.com/devpilot/devpilot/controlplane/changefeed"
)

//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var migrations embed.FS

// Errors callers branch on.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("already exists")
)

// Dialect names the database behind a Store.
type Dialect string

// The supported databases.
const (
	SQLite   Dialect = "sqlite"
	Postgres Dialect = "postgres"
)

// Store is the control plane's database.
type Store struct {
	db      *sql.DB
	dialect Dialect
	path    string // SQLite: the file; PostgreSQL: the URL without its password
	feed    *changefeed.Feed
	direct  execer                 // queries outside a transaction: db, or prepared on SQLite
	stmts   *stmtCache             // SQLite only
	written *prometheus.CounterVec // events committed by this process, by type
	// txRetries counts InTxRows transactions run again (see InTxRows).
	txRetries prometheus.Counter

	sessionBatch sessionBatcher // StartAgentSessionBatched
	self         string         // this control plane's name (SetSelf)
}

// IsPostgresURL reports whether dsn names a PostgreSQL database.
func IsPostgresURL(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// Open opens the database dsn names: "" or "sqlite" is the SQLite file at
// sqlitePath, a postgres:// URL a PostgreSQL database. Pending migrations
// are applied.
func Open(ctx context.Context, dsn, sqlitePath string) (*Store, error) {
	return openDSN(ctx, dsn, sqlitePath, true)
}

// OpenAsIs is Open without applying migrations (devpilot migrate status).
func OpenAsIs(ctx context.Context, dsn, sqlitePath string) (*Store, error) {
	return openDSN(ctx, dsn, sqlitePath, false)
}

func openDSN(ctx context.Context, dsn, sqlitePath string, migrate bool) (*Store, error) {
	switch {
	case dsn == "" || dsn == string(SQLite):
		return openSQLite(ctx, sqlitePath, migrate)
	case IsPostgresURL(dsn):
		return openPostgres(ctx, dsn, migrate)
	default:
		return nil, fmt.Errorf("database %q: want empty or \"sqlite\" (SQLite in the data dir) or a postgres:// URL", RedactURL(dsn))
	}
}

// OpenSQLite opens (creating if needed, mode 0600) the SQLite database at
// path and applies pending migrations.
func OpenSQLite(ctx context.Context, path string) (*Store, error) {
	return openSQLite(ctx, path, true)
}

func openSQLite(ctx context.Context, path string, migrate bool) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	_ = f.Close()
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	// One writer at a time is SQLite's model (WAL: readers don't wait
	// for it); 12 connections let the hub's admitted handshakes (8 at
	// most, hub.DefaultAdmissionSlots) read while the API, health
	// flushes and tasks still find a connection. All of them stay open:
	// database/sql keeps 2 idle by default and closes the rest, and a
	// new SQLite connection re-reads the schema and re-prepares every
	// cached statement (a quarter of serve's CPU in a reconnect storm
	// before this).
	db.SetMaxOpenConns(sqlitePool)
	db.SetMaxIdleConns(sqlitePool)
	return open(ctx, db, SQLite, path, migrate)
}

// OpenPostgres connects to the PostgreSQL database at dsn (a postgres://
// URL; a password may also come from PGPASSWORD or ~/.pgpass, as libpq
// reads them) and applies pending migrations. The connection is checked
// before anything else, so a wrong URL fails here with what the server said.
func OpenPostgres(ctx context.Context, dsn string) (*Store, error) {
	return openPostgres(ctx, dsn, true)
}

func openPostgres(ctx context.Context, dsn string, migrate bool) (*Store, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", RedactURL(dsn), err)
	}
	db.SetMaxOpenConns(postgresPool)
	db.SetMaxIdleConns(postgresPool) // pgx prepares per connection too
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open store %s: %w", RedactURL(dsn), err)
	}
	return open(ctx, db, Postgres, RedactURL(dsn), migrate)
}

// The connection pools' sizes, open and idle alike.
const (
	sqlitePool   = 12
	postgresPool = 16
)

func open(ctx context.Context, db *sql.DB, d Dialect, path string, migrate bool) (*Store, error) {
	s := &Store{db: db, dialect: d, path: path, feed: changefeed.New(0), direct: db, written: newEventsWritten(),
		txRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devpilot_store_tx_retries_total",
			Help: "PostgreSQL transactions run again after a deadlock or a serialization failure.",
		})}
	if d == SQLite {
		s.stmts = newStmtCache(db)
		s.direct = s.stmts
	}
	if !migrate {
		return s, nil
	}
	if err := s.migrate(ctx); err != nil {
		_ = db.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) migrate(ctx context.Context) error {
	p, err := s.goose()
	if err != nil {
		return err // says "migrate: …"
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// RedactURL drops the password from a database URL before it is shown.
func RedactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		// Not a URL: perhaps "host=… password=…", which must not be echoed.
		return "(not a URL)"
	}
	return u.Redacted()
}

// Dialect is the database behind the store.
func (s *Store) Dialect() Dialect { return s.dialect }

// Path is the SQLite file, or the PostgreSQL URL without its password, for
// diagnostics.
func (s *Store) Path() string { return s.path }

// Ping reports whether the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// Close closes the database (and ends the change feed's listeners).
func (s *Store) Close() error {
	s.feed.Close()
	if s.stmts != nil {
		s.stmts.close()
	}
	return s.db.Close()
}

// Changes is the feed of this process's committed writes, by topic (see
// changeTopic). Writes by another control plane on the same PostgreSQL
// database do not appear in it.
func (s *Store) Changes() *changefeed.Feed { return s.feed }

// Q returns queries that run outside a transaction.
func (s *Store) Q() *Queries { return s.queries(s.direct, s.feed.Publish, nil) }

// queries wraps x; appended is nil outside a transaction, else where
// AppendEvent records the types it wrote (counted once committed).
func (s *Store) queries(x execer, publish func(...string), appended *[]string) *Queries {
	x = notifier{x, publish}
	if s.dialect == Postgres {
		x = rebinder{x}
	}
	return &Queries{x: x, st: s, appended: appended}
}

// writerLock is the PostgreSQL advisory lock InTx takes first.
// The callers of InTx were written against SQLite, where a write
// transaction excludes every other (_txlock=immediate): read, decide, write.
// Taking one transaction-scoped lock keeps that guarantee on PostgreSQL
// rather than auditing each caller for READ COMMITTED anomalies. The hot
// paths (agent sessions, health, task output) use InTxRows instead, so
// this lock is only ever held by rarer writes: admin requests, jobs.
const writerLock = 0x64657670696c6f74 // "devpilot"

// InTx runs fn in one transaction, committed when fn returns nil.
// InTx transactions run one at a time, on either database; on PostgreSQL
// an InTxRows transaction may run beside one (see InTxRows).
func (s *Store) InTx(ctx context.Context, fn func(q *Queries) error) error {
	return s.inTx(ctx, fn, true)
}

// txAttempts bounds how often InTxRows runs fn when PostgreSQL ends the
// transaction for a deadlock or a serialization failure.
const txAttempts = 5

// InTxRows runs fn in one transaction that takes no writer lock on
// PostgreSQL: it runs at READ COMMITTED beside every other transaction, so
// fn must lock what it reads to decide a write (q.forUpdate on the
// SELECT: a row lock that every other writer of that row waits for, as
// moveServer's read of a server's state does), or write only
// statements whose outcome does not depend on what it read (blind or
// conditional UPDATEs, inserts). Events may be appended: their ids are
// allocated under the event_ids row's lock, so they commit in id order.
// A transaction PostgreSQL ends for a deadlock (40P01) or a
// serialization failure (40001) is run again, up to txAttempts times, so
// fn must touch only the database and variables it sets afresh. On
// SQLite it is InTx.
func (s *Store) InTxRows(ctx context.Context, fn func(q *Queries) error) error {
	if s.dialect != Postgres {
		return s.inTx(ctx, fn, true)
	}
	var err error
	for range txAttempts {
		if err = s.inTx(ctx, fn, false); !retryable(err) || ctx.Err() != nil {
			return err
		}
		s.txRetries.Inc()
	}
	return err
}

// retryable reports a PostgreSQL error that a fresh attempt may not meet.
func retryable(err error) bool {
	var pg *pgconn.PgError
	return errors.As(err, &pg) && (pg.Code == "40P01" || pg.Code == "40001")
}

func (s *Store) inTx(ctx context.Context, fn func(q *Queries) error, writer bool) error {
	if s.stmts != nil { // SQLite: this process's writers queue in order
		unlock, err := s.stmts.lockWriter(ctx)
		if err != nil {
			return fmt.Errorf("begin: %w", err)
		}
		defer unlock()
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if writer && s.dialect == Postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(writerLock)); err != nil {
			_ = tx.Rollback()
			return fmt.Errorf("begin: %w", err)
		}
	}
	var changed, appended []string
	var x execer = tx
	if s.stmts != nil {
		x = s.stmts.in(tx)
	}
	if err := fn(s.queries(x, func(t ...string) { changed = append(changed, t...) }, &appended)); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	s.feed.Publish(changed...) // after the commit: a listener reads what changed
	for _, t := range appended {
		s.written.WithLabelValues(t).Inc()
	}
	return nil
}

// forUpdate is the clause that row-locks what a SELECT reads for a write
// on PostgreSQL ("" on SQLite, whose writer excludes every other). NO KEY:
// inserts whose foreign keys point at the row do not wait for it.
func (q *Queries) forUpdate() string {
	if q.st != nil && q.st.dialect == Postgres {
		return " FOR NO KEY UPDATE"
	}
	return ""
}

type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Queries are the store's operations, on the database or in a transaction.
type Queries struct {
	x        execer
	st       *Store
	appended *[]string // in a transaction: event types appended (see AppendEvent)
}

// isUnique reports a unique-constraint violation on either database.
func isUnique(err error) bool {
	var pg *pgconn.PgError
	if errors.As(err, &pg) {
		return pg.Code == "23505" // unique_violation
	}
	return err != nil && strings.Contains(err.Error(), "UNIQUE constraint failed")
}

// rebinder runs queries written with "?" placeholders on PostgreSQL, which
// numbers them. The store's queries hold no "?" inside string literals;
// rebind still skips quoted text so that stays true by construction.
type rebinder struct{ x execer }

func (r rebinder) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return r.x.ExecContext(ctx, rebind(query), args...)
}

func (r rebinder) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return r.x.QueryContext(ctx, rebind(query), args...)
}

func (r rebinder) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return r.x.QueryRowContext(ctx, rebind(query), args...)
}

func rebind(query string) string {
	var b strings.Builder
	b.Grow(len(query) + 16)
	n, quoted := 0, false
	for i := 0; i < len(query); i++ {
		c := query[i]
		switch {
		case c == '\'':
			quoted = !quoted
		case c == '?' && !quoted:
			n++
			fmt.Fprintf(&b, "$%d", n)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func one(err error) error {
	if errors.Is(err, sql.ErrNoRows) {
		return ErrNotFound
	}
	return err
}

func affected(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}

// DB exposes the database handle for diagnostics and tests.
func (s *Store) DB() *sql.DB { return s.db }
