package store_test

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/events"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
)

// openPair opens two stores on one database, as two control planes do.
func openPair(t *testing.T, d store.Dialect) (a, b *store.Store) {
	t.Helper()
	dsn, path := "", filepath.Join(t.TempDir(), "devpilot.db")
	if d == store.Postgres {
		dsn = storetest.PostgresURL(t)
	}
	for _, p := range []**store.Store{&a, &b} {
		st, err := store.Open(context.Background(), dsn, path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		*p = st
	}
	a.SetSelf("cp_a")
	b.SetSelf("cp_b")
	return a, b
}

// A session's end on one control plane does not take a server offline
// whose agent is already back on another; a control plane whose beat went
// stale is dead, and the sessions it held end with a server.offline each.
func TestSessionsEndOnlyWhereTheyAreHeld(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) { testSessionsEndOnlyWhereHeld(t, d) })
	}
}

func testSessionsEndOnlyWhereHeld(t *testing.T, d store.Dialect) {
	ctx := context.Background()
	a, b := openPair(t, d)
	if err := a.Q().CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := store.SeedServers(ctx, a, "ws_1", 3); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	for _, st := range []*store.Store{a, b} {
		if err := st.Q().BeatControlPlane(ctx, st.Self(), now); err != nil {
			t.Fatal(err)
		}
	}
	start := func(st *store.Store, id, wantWas string) {
		t.Helper()
		ok, was, err := st.StartAgentSessionFrom(ctx, store.SessionStart{ID: id, Version: "1", FactsJSON: `{"boot_id":"b1"}`,
			Capabilities: "reboot update", At: time.Now()})
		if err != nil || !ok || was != wantWas {
			t.Fatalf("%s starts %s: %v, taken from %q, %v; want it started, taken from %q", st.Self(), id, ok, was, err, wantWas)
		}
	}
	start(a, "srv_00000", "")
	start(b, "srv_00000", "cp_a") // the agent moved to b before a saw it go: b learns a held it
	start(a, "srv_00001", "")
	if _, err := a.Q().StartAgentSession(ctx, "srv_00002", "1", "{}", time.Now()); err != nil {
		t.Fatal(err)
	}
	s, err := a.Q().SessionOf(ctx, "srv_00000", now.Add(-time.Minute))
	if err != nil || s.Holder != "cp_b" || !s.Alive || s.LastSeen == nil || s.Since == nil ||
		strings.Join(s.Capabilities, ",") != "reboot,update" || s.FactsJSON != `{"boot_id":"b1"}` {
		t.Fatalf("SessionOf(srv_00000) = %+v, %v; want held by cp_b, alive, seen, with the hello's capabilities and facts", s, err)
	}
	if ours, err := a.Q().EndAgentSession(ctx, "srv_00000", time.Now()); err != nil || ours {
		t.Fatalf("a ends a session b holds: ours=%v, %v; want false", ours, err)
	}
	if srv, _ := a.Q().GetServer(ctx, "", "srv_00000"); srv.State != "online" {
		t.Fatalf("srv_00000 is %s after the old holder's end; want online (its agent is on cp_b)", srv.State)
	}
	if ours, err := b.Q().EndAgentSession(ctx, "srv_00000", time.Now()); err != nil || !ours {
		t.Fatalf("b ends its own session: ours=%v, %v; want true", ours, err)
	}
	if srv, _ := a.Q().GetServer(ctx, "", "srv_00000"); srv.State != "offline" {
		t.Fatalf("srv_00000 is %s after its holder's end; want offline", srv.State)
	}

	// a stops beating: b finds it dead and ends what it held.
	later := now.Add(time.Minute)
	if err := b.Q().BeatControlPlane(ctx, "cp_b", later); err != nil {
		t.Fatal(err)
	}
	dead, err := b.Q().DeadHolders(ctx, later.Add(-30*time.Second))
	if err != nil || len(dead) != 1 || dead[0] != "cp_a" {
		t.Fatalf("DeadHolders = %v, %v; want [cp_a]", dead, err)
	}
	before, err := b.Q().EventsSince(ctx, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	n, err := b.Q().EndSessionsOf(ctx, dead, later)
	if err != nil || n != 2 {
		t.Fatalf("EndSessionsOf(cp_a) = %d, %v; want its 2 servers offline", n, err)
	}
	after, err := b.Q().EventsSince(ctx, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var offline []string
	for _, e := range after[len(before):] {
		if e.Type == events.ServerOffline {
			offline = append(offline, e.Subject)
		}
	}
	if len(offline) != 2 || offline[0] != "srv_00001" || offline[1] != "srv_00002" {
		t.Errorf("server.offline events for %v; want srv_00001 and srv_00002", offline)
	}
	cps, err := b.Q().ControlPlanes(ctx, time.Time{})
	if err != nil || len(cps) != 1 || cps[0].ID != "cp_b" {
		t.Errorf("control planes left: %+v, %v; want only cp_b", cps, err)
	}
	if dead, err := b.Q().DeadHolders(ctx, later.Add(-30*time.Second)); err != nil || len(dead) != 0 {
		t.Errorf("DeadHolders after ending them = %v, %v; want none", dead, err)
	}
}
