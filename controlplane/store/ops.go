package store

import (
	"context"
	"fmt"
	"io/fs"
	"time"

	"github.com/pressly/goose/v3"
)

// Counts are the figures the control plane exports as gauges at scrape
// time: servers by state, tasks by state, servers by agent version.
type Counts struct {
	ServersByState map[string]int
	TasksByState   map[string]int
	AgentVersions  map[string]int // servers not deleted, by the agent version they reported ("" never reported)
}

// CountByState reads Counts in three small grouped queries.
func (q *Queries) CountByState(ctx context.Context) (Counts, error) {
	c := Counts{ServersByState: map[string]int{}, TasksByState: map[string]int{}, AgentVersions: map[string]int{}}
	for _, g := range []struct {
		query string
		into  map[string]int
	}{
		{`SELECT state, COUNT(*) FROM servers GROUP BY state`, c.ServersByState},
		{`SELECT state, COUNT(*) FROM tasks GROUP BY state`, c.TasksByState},
		{`SELECT agent_version, COUNT(*) FROM servers WHERE state <> 'deleted' GROUP BY agent_version`, c.AgentVersions},
	} {
		rows, err := q.x.QueryContext(ctx, g.query)
		if err != nil {
			return Counts{}, fmt.Errorf("count: %w", err)
		}
		for rows.Next() {
			var k string
			var n int
			if err := rows.Scan(&k, &n); err != nil {
				_ = rows.Close()
				return Counts{}, fmt.Errorf("count: %w", err)
			}
			g.into[k] = n
		}
		if err := rows.Close(); err != nil {
			return Counts{}, err
		}
		if err := rows.Err(); err != nil {
			return Counts{}, err
		}
	}
	return c, nil
}

// Migration is one schema migration and whether it has been applied.
type Migration struct {
	Version   int64
	Source    string // file name
	Applied   bool
	AppliedAt time.Time // zero when pending
}

// MigrationStatus is the schema version of the database and every
// migration this binary knows, applied or pending. It changes nothing.
func (s *Store) MigrationStatus(ctx context.Context) (current int64, all []Migration, err error) {
	p, err := s.goose()
	if err != nil {
		return 0, nil, err
	}
	current, err = p.GetDBVersion(ctx)
	if err != nil {
		return 0, nil, fmt.Errorf("migrate status: %w", err)
	}
	st, err := p.Status(ctx)
	if err != nil {
		return 0, nil, fmt.Errorf("migrate status: %w", err)
	}
	for _, m := range st {
		all = append(all, Migration{Version: m.Source.Version, Source: m.Source.Path,
			Applied: m.State == goose.StateApplied, AppliedAt: m.AppliedAt})
	}
	return current, all, nil
}

// SchemaVersion is the database's schema version (the last applied migration).
func (s *Store) SchemaVersion(ctx context.Context) (int64, error) {
	p, err := s.goose()
	if err != nil {
		return 0, err
	}
	return p.GetDBVersion(ctx)
}

// LatestSchema is the newest migration this binary carries.
func LatestSchema(d Dialect) (int64, error) {
	sub, err := fs.Sub(migrations, "migrations/"+string(d))
	if err != nil {
		return 0, err
	}
	ms, err := fs.Glob(sub, "*.sql")
	if err != nil || len(ms) == 0 {
		return 0, fmt.Errorf("no migrations for %s", d)
	}
	var v int64
	for _, m := range ms {
		n, err := goose.NumericComponent(m)
		if err != nil {
			return 0, err
		}
		v = max(v, n)
	}
	return v, nil
}

func (s *Store) goose() (*goose.Provider, error) {
	sub, err := fs.Sub(migrations, "migrations/"+string(s.dialect))
	if err != nil {
		return nil, err
	}
	gd := goose.DialectSQLite3
	if s.dialect == Postgres {
		gd = goose.DialectPostgres
	}
	p, err := goose.NewProvider(gd, s.db, sub)
	if err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	return p, nil
}
