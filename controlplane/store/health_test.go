package store_test

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/store"
)

// healthJSON is an agent's health report as the hub stores it (the root
// and a data disk), with %g for the CPU percentage.
const healthJSON = `{"uptime_s":864123,"load1":0.42,"load5":0.37,"load15":0.31,"cpu_percent":%g,"mem_total_mb":1967,` +
	`"mem_used_mb":612,"disks":[{"mount":"/","total_mb":25150,"used_mb":3120},{"mount":"/mnt/data","total_mb":102400,` +
	`"used_mb":20480}],"agent_version":"1.4.0"}`

func healthRows(n int, at time.Time, cpu float64) []store.HealthRow {
	rows := make([]store.HealthRow, n)
	for i := range rows {
		rows[i] = store.HealthRow{ServerID: fmt.Sprintf("srv_%05d", i), HealthJSON: fmt.Sprintf(healthJSON, cpu),
			Point: store.HealthPoint{At: at, CPUPercent: cpu, Load1: 0.5, MemUsedMB: 100, MemTotalMB: 1000, DiskUsedMB: 5, DiskTotalMB: 50}}
	}
	return rows
}

// A batched health save updates every server's latest health and keeps one
// history point per server per resolution (the last sample in it, stamped
// with the bucket's start), over several transactions and statements;
// pruning by age keeps only the recent buckets.
func TestSaveHealthBatchKeepsLatestAndOnePointPerBucket(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			st := open(t, d)
			q := st.Q()
			if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
			const n = 1203 // three transactions of 500, statements of 500 and the rest
			if err := store.SeedServers(ctx, st, "ws_1", n); err != nil {
				t.Fatal(err)
			}
			minute := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
			first, second, next := minute.Add(10*time.Second), minute.Add(40*time.Second), minute.Add(70*time.Second)
			rows := append(healthRows(n, first, 10), store.HealthRow{ServerID: "srv_unknown", HealthJSON: "{}",
				Point: store.HealthPoint{At: first}})
			if err := st.SaveHealthBatch(ctx, rows, time.Minute, 500); err != nil {
				t.Fatal(err)
			}
			if err := st.SaveHealthBatch(ctx, healthRows(n, second, 20), time.Minute, 500); err != nil {
				t.Fatal(err)
			}
			for _, id := range []string{"srv_00000", "srv_00499", "srv_00500", "srv_01202"} {
				s, err := q.GetServer(ctx, "", id)
				if err != nil || s.HealthJSON != fmt.Sprintf(healthJSON, 20.0) || s.HealthAt == nil || !s.HealthAt.Equal(second) ||
					s.LastSeenAt == nil || !s.LastSeenAt.Equal(second) {
					t.Fatalf("%s after two saves: health %q at %v, last seen %v, %v; want cpu 20 at %v", id, s.HealthJSON, s.HealthAt, s.LastSeenAt, err, second)
				}
				hs, err := q.HealthSince(ctx, id, minute.Add(-time.Hour))
				if err != nil || len(hs) != 1 || !hs[0].At.Equal(minute) || hs[0].CPUPercent != 20 || hs[0].DiskTotalMB != 50 {
					t.Fatalf("%s history = %+v, %v; want one point at %v with the later sample (cpu 20)", id, hs, err, minute)
				}
			}
			if err := st.SaveHealthBatch(ctx, healthRows(n, next, 30), time.Minute, 0); err != nil {
				t.Fatal(err)
			}
			hs, err := q.HealthSince(ctx, "srv_01202", minute.Add(-time.Hour))
			if err != nil || len(hs) != 2 || !hs[1].At.Equal(minute.Add(time.Minute)) || hs[1].CPUPercent != 30 {
				t.Fatalf("history after the next minute = %+v, %v; want two points, the second at %v", hs, err, minute.Add(time.Minute))
			}
			if err := q.PruneHealth(ctx, minute.Add(time.Minute)); err != nil {
				t.Fatal(err)
			}
			hs, err = q.HealthSince(ctx, "srv_00007", minute.Add(-time.Hour))
			if err != nil || len(hs) != 1 || !hs[0].At.Equal(minute.Add(time.Minute)) {
				t.Fatalf("history after pruning the first minute = %+v, %v; want only the second minute's point", hs, err)
			}
		})
	}
}

// BenchmarkHealthFlush100k measures the hub's flushes at 100,000 servers
// (seeded with a provisioned server's ids and facts, health reports of
// the agent's size): every 30 s, every server's latest health and, as
// provision.Registry spreads them over a 1 min bucket's two flushes, a
// history point for half of the servers (SaveHealthBatch at the default
// sizes), then the prune by age, on each database. ms/flush is the mean,
// max-ms/flush the slowest.
//
//	go test -run '^$' -bench HealthFlush -benchtime 5x ./controlplane/store/
//	./scripts/with-postgres.sh env DEVPILOT_TEST_DATABASE=postgres go test -run '^$' -bench HealthFlush -benchtime 5x ./controlplane/store/
func BenchmarkHealthFlush100k(b *testing.B) {
	const n = 100_000
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		b.Run(string(d), func(b *testing.B) {
			ctx := context.Background()
			st := openB(b, d)
			if err := st.Q().CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: time.Now()}); err != nil {
				b.Fatal(err)
			}
			if err := store.SeedServers(ctx, st, "ws_1", n); err != nil {
				b.Fatal(err)
			}
			at := time.Now().UTC().Truncate(time.Minute)
			// Untimed: the first flush ever also creates each server's
			// latest-health row; later flushes (every 30 s) update it.
			if err := st.SaveHealthBatch(ctx, healthRows(n, at.Add(-time.Minute), 1), time.Minute, 0); err != nil {
				b.Fatal(err)
			}
			var slowest time.Duration
			cpu0 := cpuTime()
			b.ResetTimer()
			for i := range b.N {
				// 30 s flushes, two a bucket: each writes every latest
				// health and half of the bucket's history points.
				at := at.Add(time.Duration(i) * 30 * time.Second)
				rows := healthRows(n, at, float64(i%100))
				for j := range rows {
					rows[j].SameBucket = j%2 != i%2
				}
				t0 := time.Now()
				if err := st.SaveHealthBatch(ctx, rows, time.Minute, 0); err != nil {
					b.Fatal(err)
				}
				if err := st.Q().PruneHealth(ctx, at.Add(-24*time.Hour)); err != nil {
					b.Fatal(err)
				}
				slowest = max(slowest, time.Since(t0))
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/flush")
			b.ReportMetric(float64(slowest.Milliseconds()), "max-ms/flush")
			// This process's CPU (SQLite runs in it; PostgreSQL's server
			// is another process, not counted).
			b.ReportMetric(float64((cpuTime()-cpu0).Milliseconds())/float64(b.N), "cpu-ms/flush")
			b.ReportMetric(n, "servers")
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Migration 00026 moves each server's latest health out of the servers
// row into its own table, and its down migration moves it back: a server
// keeps its latest health and last-seen time through both.
func TestLatestHealthSurvivesItsMigration(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			st := open(t, d)
			if err := st.Q().CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
			if err := store.SeedServers(ctx, st, "ws_1", 3); err != nil {
				t.Fatal(err)
			}
			if err := store.MigrateTo(ctx, st, 25); err != nil {
				t.Fatal(err)
			}
			healthAt := time.Date(2026, 12, 4, 6, 0, 30, 0, time.UTC)
			seen := healthAt.Add(-time.Minute) // the session's start, before the sample
			if err := store.Exec(ctx, st, `UPDATE servers SET health_json = ?, health_at = ?, last_seen_at = ? WHERE id = ?`,
				`{"cpu_percent":42}`, healthAt, seen, "srv_00001"); err != nil {
				t.Fatal(err)
			}
			check := func(when string) {
				t.Helper()
				s, err := st.Q().GetServer(ctx, "ws_1", "srv_00001")
				if err != nil {
					t.Fatal(err)
				}
				if s.HealthJSON != `{"cpu_percent":42}` || s.HealthAt == nil || !s.HealthAt.Equal(healthAt) ||
					s.LastSeenAt == nil || !s.LastSeenAt.Equal(healthAt) {
					t.Fatalf("%s: health %q at %v, last seen %v; want the stored sample at %v, seen then", when, s.HealthJSON, s.HealthAt, s.LastSeenAt, healthAt)
				}
				other, err := st.Q().GetServer(ctx, "ws_1", "srv_00002")
				if err != nil || other.HealthJSON != "" || other.HealthAt != nil || other.LastSeenAt != nil {
					t.Fatalf("%s: a server with no health reads %+v, %v; want none", when, other, err)
				}
			}
			if err := store.MigrateTo(ctx, st, 26); err != nil {
				t.Fatal(err)
			}
			check("after 00026")
			if err := store.MigrateTo(ctx, st, 25); err != nil {
				t.Fatal(err)
			}
			if err := store.MigrateTo(ctx, st, 26); err != nil {
				t.Fatal(err)
			}
			check("after 00026 down and up again")
		})
	}
}
