package store_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// open gives each dialect a fresh store.
func open(t *testing.T, d store.Dialect) *store.Store { return openB(t, d) }

func openB(t testing.TB, d store.Dialect) *store.Store {
	t.Helper()
	dsn := ""
	if d == store.Postgres {
		dsn = storetest.PostgresURL(t)
	}
	st, err := store.Open(context.Background(), dsn, filepath.Join(t.TempDir(), "devpilot.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if st.Dialect() != d {
		t.Fatalf("dialect %s, want %s", st.Dialect(), d)
	}
	return st
}

// The queries that differ most between the two databases behave the same
// on both: unique violations, upserts that ignore duplicates, booleans,
// the larger-of-two update, rolled-back transactions.
func TestQueriesBehaveTheSameOnBothDatabases(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			st := open(t, d)
			q := st.Q()
			now := time.Now().UTC().Truncate(time.Microsecond)
			ws := store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: now}
			if err := q.CreateWorkspace(ctx, ws); err != nil {
				t.Fatal(err)
			}
			if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_2", Slug: "default", Name: "Again", CreatedAt: now}); !errors.Is(err, store.ErrConflict) {
				t.Errorf("duplicate slug: %v, want ErrConflict", err)
			}
			got, err := q.WorkspaceBySlug(ctx, "default")
			if err != nil || got.ID != "ws_1" || !got.CreatedAt.Equal(now) {
				t.Errorf("workspace = %+v, %v; want ws_1 created %v", got, err, now)
			}
			if _, err := q.WorkspaceBySlug(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("missing workspace: %v, want ErrNotFound", err)
			}

			srv := store.Server{ID: "srv_1", WorkspaceID: "ws_1", Provider: "digitalocean", Name: "web-1", Region: "nyc3",
				Size: "s-1vcpu-1gb", Image: "debian-12", PortsJSON: "[22]", State: "provisioning", AgentTimeoutS: 60,
				CreatedAt: now, UpdatedAt: now}
			if err := q.CreateServer(ctx, srv, []string{"preflight", "instance"}); err != nil {
				t.Fatal(err)
			}
			if err := q.MarkDeleted(ctx, "srv_1", true, now); err != nil {
				t.Fatal(err)
			}
			if s, err := q.GetServer(ctx, "ws_1", "srv_1"); err != nil || !s.Destroy || s.State != "deleting" {
				t.Errorf("after delete with destroy: %+v, %v", s, err)
			}

			p := store.HealthPoint{At: now, CPUPercent: 12.5, Load1: 0.25, MemUsedMB: 100, MemTotalMB: 1000}
			for range 2 { // the second is a duplicate and is ignored
				if err := q.AddHealthPoint(ctx, "srv_1", p); err != nil {
					t.Fatal(err)
				}
			}
			if hs, err := q.HealthSince(ctx, "srv_1", now.Add(-time.Minute)); err != nil || len(hs) != 1 || hs[0].CPUPercent != 12.5 {
				t.Errorf("health = %+v, %v; want one sample at 12.5%%", hs, err)
			}

			checkTaskResultWinsOnce(t, ctx, q, now)

			boom := errors.New("boom")
			err = st.InTx(ctx, func(q *store.Queries) error {
				if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_3", Slug: "other", Name: "O", CreatedAt: now}); err != nil {
					return err
				}
				return boom
			})
			if !errors.Is(err, boom) {
				t.Fatalf("InTx: %v", err)
			}
			if _, err := q.WorkspaceBySlug(ctx, "other"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("a failed transaction left its workspace behind: %v", err)
			}
		})
	}
}

// checkTaskResultWinsOnce: the first final result of a task is kept, its log
// is cut at the limit.
func checkTaskResultWinsOnce(t *testing.T, ctx context.Context, q *store.Queries, now time.Time) {
	t.Helper()
	task := store.Task{ID: "tsk_1", WorkspaceID: "ws_1", ServerID: "srv_1", Kind: "exec", SpecJSON: "sealed",
		State: "running", CreatedBy: "test", CreatedAt: now, Deadline: now.Add(time.Hour), UpdatedAt: now}
	if err := q.CreateTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	for seq := int64(1); seq <= 3; seq++ {
		if _, err := q.AddTaskLog(ctx, "srv_1", "tsk_1", store.TaskLog{Seq: seq, Stream: "stdout", Data: []byte("0123456789"), At: now}, 25); err != nil {
			t.Fatal(err)
		}
	}
	exit := 3
	task.State, task.ExitCode, task.LastLogSeq, task.FinishedAt = "failed", &exit, 2, &now
	if ok, err := q.FinishTask(ctx, task); !ok || err != nil {
		t.Fatalf("finish: %v, %v", ok, err)
	}
	task.State = "succeeded"
	if ok, err := q.FinishTask(ctx, task); ok || err != nil {
		t.Errorf("a second final result must not win: %v, %v", ok, err)
	}
	v, err := q.GetTask(ctx, "ws_1", "tsk_1")
	if err != nil || v.State != "failed" || v.ExitCode == nil || *v.ExitCode != 3 || !v.LogTruncated || v.LogBytes != 20 || v.LastLogSeq != 2 {
		t.Errorf("task = %+v, %v; want failed, exit 3, log truncated at 20 bytes, last seq 2", v, err)
	}
}

// Opening a PostgreSQL URL with a wrong password fails at once and says
// what the server said, without the password.
func TestPostgresOpenErrorsHideThePassword(t *testing.T) {
	dsn := storetest.PostgresURL(t)
	const canary = "canary-Pa55w0rd-7f3c9"
	bad := strings.Replace(dsn, "devpilot:", "devpilot:x", 1) // same user, wrong password
	bad = strings.Replace(bad, "@", canary+"@", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := store.Open(ctx, bad, "")
	if err == nil {
		t.Fatal("a wrong password opened the database")
	}
	if strings.Contains(err.Error(), canary) || !strings.Contains(err.Error(), "password authentication failed") {
		t.Errorf("error = %v; want the server's reason without the password", err)
	}
	if _, err := store.Open(ctx, "mysql://root@db/devpilot", ""); err == nil || !strings.Contains(err.Error(), "postgres://") {
		t.Errorf("unknown database: %v", err)
	}
	if _, err := store.Open(ctx, "host=db user=devpilot password="+canary, ""); err == nil || strings.Contains(err.Error(), canary) {
		t.Errorf("a keyword/value connection string: %v; want refused without its password", err)
	}
}

// Two control planes on one PostgreSQL database: the second waits as a
// standby and takes over when the first releases, or when the first's
// session dies (which the first notices, and must stop).
func TestLeadershipMovesToTheStandby(t *testing.T) {
	dsn := storetest.PostgresURL(t)
	ctx := context.Background()
	a, err := store.Open(ctx, dsn, "")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Close() }()
	b, err := store.Open(ctx, dsn, "")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.Close() }()
	poll := 50 * time.Millisecond

	la, err := a.Lead(ctx, store.LeadOptions{Poll: poll})
	if err != nil {
		t.Fatal(err)
	}
	standby := make(chan struct{})
	type result struct {
		l   *store.Leadership
		err error
	}
	got := make(chan result, 1)
	go func() {
		l, err := b.Lead(ctx, store.LeadOptions{Poll: poll, Standby: func() { close(standby) }})
		got <- result{l, err}
	}()
	<-standby // b found the lock taken
	select {
	case r := <-got:
		t.Fatalf("b became leader while a holds the lock: %+v", r)
	case <-time.After(10 * poll):
	}
	la.Release()
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	lb := r.l

	// a asks again: it waits, until b's lock session is killed from outside
	// (what a crashed host or a cut network amounts to).
	got2 := make(chan result, 1)
	go func() {
		l, err := a.Lead(ctx, store.LeadOptions{Poll: poll})
		got2 <- result{l, err}
	}()
	admin, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = admin.Close() }()
	var killed bool
	err = admin.QueryRow(`SELECT pg_terminate_backend(pid) FROM pg_locks
		WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&killed)
	if err != nil || !killed {
		t.Fatalf("terminate the leader's session: %v, %v", killed, err)
	}
	select {
	case <-lb.Lost():
		if lb.Err() == nil || !strings.Contains(lb.Err().Error(), "lost the database leadership") {
			t.Errorf("lost leadership says %v", lb.Err())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("b did not notice its lock session died")
	}
	r = <-got2
	if r.err != nil {
		t.Fatal(r.err)
	}
	select {
	case <-r.l.Lost():
		t.Error("the new leader's leadership is lost already")
	default:
	}
	r.l.Release()
	lb.Release()
}

// On SQLite there is one process per database file: Lead returns at once.
func TestSQLiteLeadsAtOnce(t *testing.T) {
	st := open(t, store.SQLite)
	l, err := st.Lead(context.Background(), store.LeadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Lost():
		t.Error("lost")
	default:
	}
	l.Release()
}
