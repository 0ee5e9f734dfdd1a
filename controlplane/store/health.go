package store

import (
	"context"
	"slices"
	"strings"
	"time"
)

// HealthRow is one server's latest health as the hub flushes it: the JSON
// kept on the server's row and the point added to its history.
type HealthRow struct {
	ServerID   string
	HealthJSON string
	Point      HealthPoint // Point.At is when the sample arrived
	// SameBucket: the server's history has a point in Point's bucket
	// already (the caller saved one): only the latest health is written.
	SameBucket bool
}

// Health flush sizes: DefaultHealthTxServers servers per transaction (so a
// flush of 100,000 servers never holds SQLite's write lock, or
// PostgreSQL's writer lock, for the whole flush), healthStmtRows rows per
// statement (8 parameters a history row: far below either database's
// parameter limit).
const (
	DefaultHealthTxServers = 2000
	healthStmtRows         = 500
)

// SaveHealthBatch stores each row's latest health on its server (health_json,
// health_at, last_seen_at) and its history point in the bucket of width
// resolution the sample falls in (stamped with the bucket's start; a later
// sample in the same bucket replaces the earlier one, so history holds at
// most one point per server per resolution; rows marked SameBucket add
// none). It runs one transaction per
// txServers rows (<= 0: DefaultHealthTxServers) of multi-row statements.
// A row of an unknown server updates no server; its history point stays
// until pruned. rows must not repeat a server.
func (s *Store) SaveHealthBatch(ctx context.Context, rows []HealthRow, resolution time.Duration, txServers int) error {
	if txServers <= 0 {
		txServers = DefaultHealthTxServers
	}
	if resolution <= 0 {
		resolution = time.Nanosecond
	}
	// Row locks are taken in id order, as by every multi-row writer of
	// servers (see InTxRows); the caller's slice keeps its order.
	rows = slices.Clone(rows)
	slices.SortFunc(rows, func(a, b HealthRow) int { return strings.Compare(a.ServerID, b.ServerID) })
	for from := 0; from < len(rows); from += txServers {
		chunk := rows[from:min(from+txServers, len(rows))]
		// No writer lock on PostgreSQL: these are blind writes (the latest
		// health, a history upsert), decided on nothing they read.
		err := s.InTxRows(ctx, func(q *Queries) error {
			for i := 0; i < len(chunk); i += healthStmtRows {
				if err := q.saveHealthRows(ctx, chunk[i:min(i+healthStmtRows, len(chunk))], resolution, s.dialect == Postgres); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// saveHealthRows runs the two multi-row statements of one slice of rows.
func (q *Queries) saveHealthRows(ctx context.Context, rows []HealthRow, resolution time.Duration, pg bool) error {
	// Latest: UPDATE … FROM (VALUES …), one statement for every row
	// (SQLite ≥ 3.33 and PostgreSQL; VALUES columns are column1…).
	tuple := "(?, ?, ?)"
	if pg {
		// VALUES parameters are untyped on PostgreSQL: say what they are.
		tuple = "(?::text, ?::text, ?::timestamptz)"
	}
	var b strings.Builder
	b.WriteString(`UPDATE servers SET health_json = v.column2, health_at = v.column3, last_seen_at = v.column3 FROM (VALUES `)
	args := make([]any, 0, 8*len(rows))
	for i, r := range rows {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(tuple)
		at := r.Point.At.UTC()
		args = append(args, r.ServerID, r.HealthJSON, at)
	}
	b.WriteString(`) AS v WHERE servers.id = v.column1`)
	if _, err := q.x.ExecContext(ctx, b.String(), args...); err != nil {
		return err
	}

	// History: one multi-row upsert into the samples' buckets.
	b.Reset()
	args = args[:0]
	b.WriteString(`INSERT INTO server_health (server_id, at, cpu_percent, load1, mem_used_mb, mem_total_mb, disk_used_mb, disk_total_mb) VALUES `)
	for _, r := range rows {
		if r.SameBucket {
			continue
		}
		if len(args) > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?, ?, ?, ?, ?, ?)")
		p := r.Point
		args = append(args, r.ServerID, p.At.UTC().Truncate(resolution), p.CPUPercent, p.Load1, p.MemUsedMB, p.MemTotalMB,
			p.DiskUsedMB, p.DiskTotalMB)
	}
	b.WriteString(` ON CONFLICT (server_id, at) DO UPDATE SET cpu_percent = excluded.cpu_percent, load1 = excluded.load1,
		mem_used_mb = excluded.mem_used_mb, mem_total_mb = excluded.mem_total_mb,
		disk_used_mb = excluded.disk_used_mb, disk_total_mb = excluded.disk_total_mb`)
	if len(args) == 0 {
		return nil
	}
	_, err := q.x.ExecContext(ctx, b.String(), args...)
	return err
}
