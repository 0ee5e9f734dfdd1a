package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/store"
)

// The handshake's read reports what the hub checks: state, keys,
// quarantine; the session start writes only a live server.
func TestHandshakeQueries(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			st := open(t, d)
			q := st.Q()
			now := time.Now().UTC().Truncate(time.Microsecond)
			if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: now}); err != nil {
				t.Fatal(err)
			}
			if err := store.SeedServers(ctx, st, "ws_1", 2); err != nil {
				t.Fatal(err)
			}
			pub := make([]byte, 32)
			pub[0] = 7
			if err := q.SaveAgentKey(ctx, "srv_00000", pub, now); err != nil {
				t.Fatal(err)
			}
			if _, err := q.Quarantine(ctx, "srv_00001", "test", now); err != nil {
				t.Fatal(err)
			}
			a, err := q.AgentAuthOf(ctx, "srv_00000")
			if err != nil || a.State != "online" || len(a.PublicKey) != 32 || a.PublicKey[0] != 7 || a.RevokedKey != nil || a.Quarantined {
				t.Errorf("srv_00000 auth = %+v, %v; want online, its key, not quarantined", a, err)
			}
			if a, err := q.AgentAuthOf(ctx, "srv_00001"); err != nil || !a.Quarantined || a.PublicKey != nil {
				t.Errorf("srv_00001 auth = %+v, %v; want quarantined, no key", a, err)
			}
			if _, err := q.AgentAuthOf(ctx, "srv_nope"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("unknown server: %v, want ErrNotFound", err)
			}
			if ok, err := q.StartAgentSession(ctx, "srv_00000", "1.2.3", `{"os":"debian"}`, now); !ok || err != nil {
				t.Fatalf("start session: %v, %v", ok, err)
			}
			s, err := q.GetServer(ctx, "", "srv_00000")
			if err != nil || s.AgentVersion != "1.2.3" || s.InstalledAt == nil || !s.InstalledAt.Equal(now) || s.LastSeenAt == nil {
				t.Errorf("after session start: %+v, %v", s, err)
			}
			if err := q.MarkDeleted(ctx, "srv_00000", true, now); err != nil {
				t.Fatal(err)
			}
			if ok, err := q.StartAgentSession(ctx, "srv_00000", "1.2.4", "{}", now); ok || err != nil {
				t.Errorf("session start of a deleting server: %v, %v; want refused", ok, err)
			}
			if ok, err := q.StartAgentSession(ctx, "srv_nope", "1", "{}", now); ok || err != nil {
				t.Errorf("session start of an unknown server: %v, %v; want refused", ok, err)
			}
		})
	}
}

// BenchmarkHandshakeQueries is the store work of one authenticated agent
// handshake on SQLite at 100,000 servers: before (the whole server read
// twice, then the session write, SQL parsed each call) and after (one
// narrow read, one conditional write, prepared statements).
//
//	go test -run '^$' -bench HandshakeQueries ./controlplane/store/
func BenchmarkHandshakeQueries(b *testing.B) {
	ctx := context.Background()
	st := openB(b, store.SQLite)
	if err := st.Q().CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: time.Now()}); err != nil {
		b.Fatal(err)
	}
	const n = 100_000
	if err := store.SeedServers(ctx, st, "ws_1", n); err != nil {
		b.Fatal(err)
	}
	run := func(b *testing.B, handshake func(id string) error) {
		cpu0 := cpuTime()
		i := 0
		for b.Loop() {
			if err := handshake(fmt.Sprintf("srv_%05d", i%n)); err != nil {
				b.Fatal(err)
			}
			i++
		}
		b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(i), "cpu-µs/handshake")
	}
	b.Run("before", func(b *testing.B) {
		q := store.Unprepared(st)
		run(b, func(id string) error {
			for range 2 { // AgentKey's and Connected's live()
				if _, err := q.GetServer(ctx, "", id); err != nil {
					return err
				}
			}
			_, err := q.StartAgentSession(ctx, id, "bench", "{}", time.Now())
			return err
		})
	})
	b.Run("after", func(b *testing.B) {
		q := st.Q()
		run(b, func(id string) error {
			if _, err := q.AgentAuthOf(ctx, id); err != nil {
				return err
			}
			_, err := q.StartAgentSession(ctx, id, "bench", "{}", time.Now())
			return err
		})
	})
}

// Session starts committed together (StartAgentSessionBatched): in a
// storm of concurrent starts after a restart marked every server
// offline, each live server comes back online with its own server.online
// event, and a deleted or unknown server is refused without failing the
// others' batch.
func TestBatchedSessionStartsAfterARestart(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) { batchedStarts(t, d) })
	}
}

func batchedStarts(t *testing.T, d store.Dialect) {
	ctx := context.Background()
	st := open(t, d)
	q := st.Q()
	now := time.Now().UTC().Truncate(time.Microsecond)
	if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	const n = 300
	if err := store.SeedServers(ctx, st, "ws_1", n); err != nil {
		t.Fatal(err)
	}
	if err := q.MarkAllOffline(ctx, now); err != nil {
		t.Fatal(err)
	}
	if err := q.MarkDeleted(ctx, "srv_00007", true, now); err != nil {
		t.Fatal(err)
	}
	before, err := q.EventsSince(ctx, 0, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		id  string
		ok  bool
		err error
	}
	results := make(chan result, n+1)
	var wg sync.WaitGroup
	for i := range n + 1 {
		id := fmt.Sprintf("srv_%05d", i) // srv_00300 does not exist
		wg.Go(func() {
			ok, err := st.StartAgentSessionBatched(ctx, store.SessionStart{ID: id, Version: "2.0.0", FactsJSON: "{}", At: now.Add(time.Second)})
			results <- result{id, ok, err}
		})
	}
	wg.Wait()
	close(results)
	for r := range results {
		want := r.id != "srv_00007" && r.id != "srv_00300"
		if r.err != nil || r.ok != want {
			t.Errorf("%s: %v, %v; want %v", r.id, r.ok, r.err, want)
		}
	}
	for i := range n {
		id := fmt.Sprintf("srv_%05d", i)
		s, err := q.GetServer(ctx, "", id)
		if err != nil {
			t.Fatal(err)
		}
		if id == "srv_00007" {
			if s.State == "online" {
				t.Errorf("the deleted server came back online")
			}
			continue
		}
		if s.State != "online" || s.AgentVersion != "2.0.0" {
			t.Errorf("%s: %s on %q, want online on 2.0.0", id, s.State, s.AgentVersion)
		}
	}
	onlineEventsOnce(t, st, len(before), n-1)
}

// onlineEventsOnce checks the events after the first skip: want servers
// got one server.online event each.
func onlineEventsOnce(t *testing.T, st *store.Store, skip, want int) {
	t.Helper()
	after, err := st.Q().EventsSince(context.Background(), 0, 10_000)
	if err != nil {
		t.Fatal(err)
	}
	online := map[string]int{}
	for _, e := range after[skip:] {
		if e.Type == "server.online" {
			online[e.Subject]++
		}
	}
	if len(online) != want {
		t.Errorf("%d servers got a server.online event, want %d", len(online), want)
	}
	for id, c := range online {
		if c != 1 {
			t.Errorf("%s: %d server.online events", id, c)
		}
	}
}

// After a burst that uses the whole pool, every connection stays open:
// closing and reopening them cost a SQLite connection its schema parse
// and its prepared statements, a quarter of serve's CPU in a reconnect
// storm.
func TestPoolKeepsItsConnections(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			st := open(t, d)
			n := store.PoolSize(d)
			for round := range 3 {
				stats, err := store.Burst(context.Background(), st, n)
				if err != nil {
					t.Fatal(err)
				}
				if stats.OpenConnections != n || stats.Idle != n || stats.MaxIdleClosed != 0 {
					t.Fatalf("round %d: open %d, idle %d, closed as surplus idle %d; want %d open and idle, none closed",
						round, stats.OpenConnections, stats.Idle, stats.MaxIdleClosed, n)
				}
			}
		})
	}
}

// The reconciler's list holds the servers with a cloud instance only:
// enrolled servers (no integration) and ones not created yet are not read.
func TestCloudServersInStates(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			st := open(t, d)
			q := st.Q()
			now := time.Now().UTC()
			if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: now}); err != nil {
				t.Fatal(err)
			}
			if err := q.CreateIntegration(ctx, store.Integration{ID: "int_1", WorkspaceID: "ws_1", Provider: "vultr", AccessKey: "k",
				SecretCiphertext: "v1.a.x", SecretHint: "abcd", Status: "valid", AccountJSON: "{}", CreatedAt: now, UpdatedAt: now}); err != nil {
				t.Fatal(err)
			}
			for _, s := range []store.Server{
				{ID: "srv_cloud", IntegrationID: "int_1", InstanceID: "i-1", State: "online"},
				{ID: "srv_cloudoff", IntegrationID: "int_1", InstanceID: "i-2", State: "offline"},
				{ID: "srv_noinst", IntegrationID: "int_1", State: "online"},
				{ID: "srv_enrolled", State: "online"},
				{ID: "srv_other", IntegrationID: "int_1", InstanceID: "i-3", State: "provisioning"},
			} {
				s.WorkspaceID, s.Provider, s.Name, s.Region, s.Size, s.Image = "ws_1", "vultr", s.ID, "ewr", "vc2-1c-1gb", "debian-12"
				s.PortsJSON, s.AgentTimeoutS, s.CreatedAt, s.UpdatedAt = "[]", 60, now, now
				if err := q.CreateServer(ctx, s, nil); err != nil {
					t.Fatalf("create %s: %v", s.ID, err)
				}
			}
			got, err := q.CloudServersInStates(ctx, "online", "offline")
			if err != nil {
				t.Fatal(err)
			}
			var ids []string
			for _, s := range got {
				ids = append(ids, s.ID)
			}
			if fmt.Sprint(ids) != "[srv_cloud srv_cloudoff]" {
				t.Errorf("cloud servers online or offline = %v, want [srv_cloud srv_cloudoff]", ids)
			}
		})
	}
}

// A new session is owed the cancels asked for and the tasks not yet
// confirmed, less those past their deadline or sent on this session.
func TestSessionTasks(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			st := open(t, d)
			q := st.Q()
			now := time.Now().UTC().Truncate(time.Millisecond)
			since := now.Add(-time.Minute) // the session started then
			if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: now}); err != nil {
				t.Fatal(err)
			}
			if err := store.SeedServers(ctx, st, "ws_1", 2); err != nil {
				t.Fatal(err)
			}
			before, after := since.Add(-time.Second), since.Add(time.Second)
			for i, tk := range []store.Task{
				{ID: "tsk_queued", State: "queued"},
				{ID: "tsk_sent_before", State: "sent", LastSentAt: &before},
				{ID: "tsk_sent_on_this_session", State: "sent", LastSentAt: &after},
				{ID: "tsk_running", State: "running"},
				{ID: "tsk_overdue", State: "queued", Deadline: now.Add(-time.Second)},
				{ID: "tsk_cancel_running", State: "running", CancelRequestedAt: &before},
				{ID: "tsk_cancel_queued", State: "queued", CancelRequestedAt: &before},
				{ID: "tsk_done", State: "succeeded", CancelRequestedAt: &before},
				{ID: "tsk_other_server", State: "queued", ServerID: "srv_00001"},
			} {
				tk.WorkspaceID, tk.Kind, tk.SpecJSON, tk.CreatedBy = "ws_1", "exec", "sealed", "test"
				tk.CreatedAt, tk.UpdatedAt = now.Add(time.Duration(i)*time.Millisecond), now
				if tk.ServerID == "" {
					tk.ServerID = "srv_00000"
				}
				if tk.Deadline.IsZero() {
					tk.Deadline = now.Add(time.Hour)
				}
				if err := q.CreateTask(ctx, tk); err != nil {
					t.Fatalf("create %s: %v", tk.ID, err)
				}
			}
			cancel, resend, err := q.SessionTasks(ctx, "srv_00000", now, since)
			if err != nil {
				t.Fatal(err)
			}
			ids := func(ts []store.Task) string {
				var out []string
				for _, t := range ts {
					out = append(out, t.ID)
				}
				return fmt.Sprint(out)
			}
			if got := ids(cancel); got != "[tsk_cancel_running tsk_cancel_queued]" {
				t.Errorf("cancel = %s, want [tsk_cancel_running tsk_cancel_queued]", got)
			}
			if got := ids(resend); got != "[tsk_queued tsk_sent_before tsk_cancel_queued]" {
				t.Errorf("resend = %s, want [tsk_queued tsk_sent_before tsk_cancel_queued]", got)
			}
		})
	}
}

// StartAgentSessions (a batch in four statements) does what
// StartAgentSession does for each server, from every state: the same
// answer, the same state and agent version afterwards, the same events.
func TestStartAgentSessionsMatchesOneByOne(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			now := time.Now().UTC().Truncate(time.Microsecond)
			states := []string{"online", "offline", "agent_offline", "unknown", "installing", "provisioning", "stopped", "lost",
				"failed", "deleting", "deleted"}
			setup := func() *store.Store {
				st := open(t, d)
				if err := st.Q().CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: now}); err != nil {
					t.Fatal(err)
				}
				if err := store.SeedServers(ctx, st, "ws_1", len(states)); err != nil {
					t.Fatal(err)
				}
				for i, s := range states {
					if err := store.ForceState(ctx, st, fmt.Sprintf("srv_%05d", i), s); err != nil {
						t.Fatal(err)
					}
				}
				return st
			}
			starts := make([]store.SessionStart, 0, len(states)+1)
			for i := range len(states) + 1 { // srv_000NN past the states does not exist
				starts = append(starts, store.SessionStart{ID: fmt.Sprintf("srv_%05d", i), Version: "2.0.0", FactsJSON: `{"os":"linux"}`, At: now})
			}

			one, batch := setup(), setup()
			var wantOK []bool
			for _, s := range starts {
				ok, err := one.Q().StartAgentSession(ctx, s.ID, s.Version, s.FactsJSON, s.At)
				if err != nil {
					t.Fatalf("StartAgentSession %s: %v", s.ID, err)
				}
				wantOK = append(wantOK, ok)
			}
			var gotOK []bool
			if err := batch.InTx(ctx, func(q *store.Queries) error {
				var err error
				gotOK, err = q.StartAgentSessions(ctx, starts)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			for i, s := range starts {
				if gotOK[i] != wantOK[i] {
					t.Errorf("%s (%s): batch ok %v, one by one %v", s.ID, stateOf(states, i), gotOK[i], wantOK[i])
				}
				if i == len(states) {
					continue
				}
				a, errA := one.Q().GetServer(ctx, "", s.ID)
				b, errB := batch.Q().GetServer(ctx, "", s.ID)
				if errA != nil || errB != nil || a.State != b.State || a.AgentVersion != b.AgentVersion || a.FactsJSON != b.FactsJSON ||
					!sameTime(a.LastSeenAt, b.LastSeenAt) || (a.InstalledAt == nil) != (b.InstalledAt == nil) {
					t.Errorf("%s (%s): one by one %s/%s seen %v, batch %s/%s seen %v (%v, %v)", s.ID, stateOf(states, i),
						a.State, a.AgentVersion, a.LastSeenAt, b.State, b.AgentVersion, b.LastSeenAt, errA, errB)
				}
			}
			evA, _ := eventsSince(t, one, "ws_1", 0)
			evB, _ := eventsSince(t, batch, "ws_1", 0)
			if len(evA) == 0 || len(evA) != len(evB) {
				t.Fatalf("events: one by one %d, batch %d", len(evA), len(evB))
			}
			for i := range evA {
				if evA[i].Type != evB[i].Type || evA[i].Subject != evB[i].Subject || string(evA[i].Data) != string(evB[i].Data) {
					t.Errorf("event %d: one by one %s %s %s, batch %s %s %s", i, evA[i].Type, evA[i].Subject, evA[i].Data,
						evB[i].Type, evB[i].Subject, evB[i].Data)
				}
			}
		})
	}
}

func stateOf(states []string, i int) string {
	if i < len(states) {
		return states[i]
	}
	return "no such server"
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}
