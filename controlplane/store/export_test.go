package store

import (
	"context"
	"database/sql"
)

// SeedServers inserts n bare servers srv_00000… of workspace ws (n < 900,000; ws must
// exist) in one statement, for tests and benchmarks at scale.
func SeedServers(ctx context.Context, s *Store, ws string, n int) error {
	_, err := s.Q().x.ExecContext(ctx, `INSERT INTO servers (id, workspace_id, provider, name, region, size, image,
		ports_json, state, agent_timeout_s, created_at, updated_at)
		WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?)
		SELECT 'srv_' || substr(CAST(100000 + i AS TEXT), 2), ?, 'digitalocean', 'web-' || i, 'nyc3', 's-1vcpu-1gb', 'debian-12',
		'[22]', 'online', 60, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP FROM n`, n, ws)
	if err != nil {
		return err
	}
	// Table statistics, as a database of that size has (PostgreSQL's
	// autovacuum gathers them): without, the planner guesses row counts.
	_, err = s.db.ExecContext(ctx, `ANALYZE`)
	return err
}

// Unprepared returns queries outside a transaction that skip the prepared
// statement cache (the before of BenchmarkHandshakeQueries).
func Unprepared(s *Store) *Queries { return s.queries(s.db, s.feed.Publish, nil) }

// Burst takes n of the pool's connections at once and gives them back,
// returning the pool's statistics afterwards.
func Burst(ctx context.Context, s *Store, n int) (sql.DBStats, error) {
	var conns []*sql.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range n {
		c, err := s.db.Conn(ctx)
		if err != nil {
			return sql.DBStats{}, err
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		_ = c.Close()
	}
	conns = nil
	return s.db.Stats(), nil
}

// PoolSize is the connection pool's size for dialect d.
func PoolSize(d Dialect) int {
	if d == Postgres {
		return postgresPool
	}
	return sqlitePool
}

// ForceState sets a server's state with no event, for tests.
func ForceState(ctx context.Context, s *Store, id, state string) error {
	_, err := s.Q().x.ExecContext(ctx, `UPDATE servers SET state = ? WHERE id = ?`, state, id)
	return err
}

// SetReason sets a server's state_reason in q's transaction, for tests of row locks.
func SetReason(ctx context.Context, q *Queries, id, reason string) error {
	_, err := q.x.ExecContext(ctx, `UPDATE servers SET state_reason = ? WHERE id = ?`, reason, id)
	return err
}
