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

// SaveHealthBatch stores each row's latest health (server_health_latest:
// the JSON and when it arrived, which is also when the agent was last
// seen) and its history point in the bucket of width resolution the
// sample falls in (stamped with the bucket's start; a later sample in the
// same bucket replaces the earlier one, so history holds at most one
// point per server per resolution; rows marked SameBucket add none). It
// runs one transaction per txServers rows (<= 0: DefaultHealthTxServers)
// of multi-row statements. A row of an unknown server stores no latest
// health; its history point stays until pruned. rows must not repeat a
// server.
func (s *Store) SaveHealthBatch(ctx context.Context, rows []HealthRow, resolution time.Duration, txServers int) error {
	if txServers <= 0 {
		txServers = DefaultHealthTxServers
	}
	if resolution <= 0 {
		resolution = time.Nanosecond
	}
	// Row locks are taken in id order, as by every multi-row writer (see
	// InTxRows); the caller's slice keeps its order.
	rows = slices.Clone(rows)
	slices.SortFunc(rows, func(a, b HealthRow) int { return strings.Compare(a.ServerID, b.ServerID) })
	pg := s.dialect == Postgres
	for from := 0; from < len(rows); from += txServers {
		chunk := rows[from:min(from+txServers, len(rows))]
		// No writer lock on PostgreSQL: these are blind writes (the latest
		// health, a history upsert), decided on nothing they read.
		err := s.InTxRows(ctx, func(q *Queries) error {
			if pg {
				return q.saveHealthRowsPG(ctx, chunk, resolution)
			}
			for i := 0; i < len(chunk); i += healthStmtRows {
				if err := q.saveHealthRows(ctx, chunk[i:min(i+healthStmtRows, len(chunk))], resolution); err != nil {
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

// saveHealthRowsPG is saveHealthRows on PostgreSQL, for a whole
// transaction's rows: each statement takes its columns as arrays
// (unnest), so its text is the same whatever the number of rows (parsed
// and planned once per connection) and the parameters are a few arrays,
// not thousands of values.
func (q *Queries) saveHealthRowsPG(ctx context.Context, rows []HealthRow, resolution time.Duration) error {
	// The statements join the rows with a table of every server by its
	// key: PostgreSQL's planner, seeing a narrow table, may prefer
	// scanning all of it (a hash or merge join) to an index lookup per
	// row, which made a 100,000-server flush 4x slower. Say which.
	if _, err := q.x.ExecContext(ctx, `SET LOCAL enable_hashjoin = off`); err != nil {
		return err
	}
	if _, err := q.x.ExecContext(ctx, `SET LOCAL enable_mergejoin = off`); err != nil {
		return err
	}
	ids, docs, ats := make([]string, len(rows)), make([]string, len(rows)), make([]time.Time, len(rows))
	for i, r := range rows {
		ids[i], docs[i], ats[i] = r.ServerID, r.HealthJSON, r.Point.At.UTC()
	}
	n, err := rowsAffected(q.x.ExecContext(ctx, `UPDATE server_health_latest h SET health_json = v.doc, at = v.at
		FROM unnest(?::text[], ?::text[], ?::timestamptz[]) AS v(id, doc, at) WHERE h.server_id = v.id`, ids, docs, ats))
	if err != nil {
		return err
	}
	if int(n) < len(rows) {
		// First health of some of them (once per server). Only servers
		// that exist (the row of a deleted one is skipped).
		if _, err := q.x.ExecContext(ctx, `INSERT INTO server_health_latest (server_id, health_json, at)
			SELECT v.id, v.doc, v.at FROM unnest(?::text[], ?::text[], ?::timestamptz[]) AS v(id, doc, at)
			WHERE EXISTS (SELECT 1 FROM servers WHERE servers.id = v.id)
			ON CONFLICT (server_id) DO NOTHING`, ids, docs, ats); err != nil {
			return err
		}
	}
	ids, ats = ids[:0], ats[:0]
	var cpu, load []float64
	var memUsed, memTotal, diskUsed, diskTotal []int64
	for _, r := range rows {
		if r.SameBucket {
			continue
		}
		p := r.Point
		ids, ats = append(ids, r.ServerID), append(ats, p.At.UTC().Truncate(resolution))
		cpu, load = append(cpu, p.CPUPercent), append(load, p.Load1)
		memUsed, memTotal = append(memUsed, p.MemUsedMB), append(memTotal, p.MemTotalMB)
		diskUsed, diskTotal = append(diskUsed, p.DiskUsedMB), append(diskTotal, p.DiskTotalMB)
	}
	if len(ids) == 0 {
		return nil
	}
	_, err = q.x.ExecContext(ctx, `INSERT INTO server_health (server_id, at, cpu_percent, load1, mem_used_mb, mem_total_mb,
		disk_used_mb, disk_total_mb)
		SELECT * FROM unnest(?::text[], ?::timestamptz[], ?::float8[], ?::float8[], ?::int8[], ?::int8[], ?::int8[], ?::int8[])
		ON CONFLICT (server_id, at) DO UPDATE SET cpu_percent = excluded.cpu_percent, load1 = excluded.load1,
		mem_used_mb = excluded.mem_used_mb, mem_total_mb = excluded.mem_total_mb,
		disk_used_mb = excluded.disk_used_mb, disk_total_mb = excluded.disk_total_mb`,
		ids, ats, cpu, load, memUsed, memTotal, diskUsed, diskTotal)
	return err
}

// saveHealthRows runs SQLite's multi-row statements of one slice of rows: the
// latest health's update (and, for servers that have none yet, its
// insert) and the history's upsert.
func (q *Queries) saveHealthRows(ctx context.Context, rows []HealthRow, resolution time.Duration) error {
	// Latest: UPDATE … FROM (VALUES …), one statement for every row
	// (SQLite ≥ 3.33; VALUES columns are column1…).
	const tuple = "(?, ?, ?)"
	values := func(rows []HealthRow) (string, []any) {
		var b strings.Builder
		args := make([]any, 0, 3*len(rows))
		b.WriteString(`(VALUES `)
		for i, r := range rows {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(tuple)
			args = append(args, r.ServerID, r.HealthJSON, r.Point.At.UTC())
		}
		b.WriteString(`) AS v`)
		return b.String(), args
	}
	v, args := values(rows)
	n, err := rowsAffected(q.x.ExecContext(ctx, `UPDATE server_health_latest SET health_json = v.column2, at = v.column3 FROM `+
		v+` WHERE server_health_latest.server_id = v.column1`, args...))
	if err != nil {
		return err
	}
	if int(n) < len(rows) {
		// First health of some of them (rarely: once per server). Only
		// servers that exist (the row of a deleted one is skipped).
		if _, err := q.x.ExecContext(ctx, `INSERT INTO server_health_latest (server_id, health_json, at)
			SELECT v.column1, v.column2, v.column3 FROM `+v+` WHERE EXISTS (SELECT 1 FROM servers WHERE servers.id = v.column1)
			ON CONFLICT (server_id) DO NOTHING`, args...); err != nil {
			return err
		}
	}

	// History: one multi-row upsert into the samples' buckets.
	var b strings.Builder
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
	_, err = q.x.ExecContext(ctx, b.String(), args...)
	return err
}
