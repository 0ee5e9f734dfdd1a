package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/store"
)

// Rollout queries behave the same on both databases: one rollout under
// way per workspace, leases exclusive until they expire, state changes
// only from the state read, and the workspace's target version is its
// last succeeded rollout's.
func TestRolloutQueries(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) { rolloutQueries(t, open(t, d).Q()) })
	}
}

func rolloutQueries(t *testing.T, q *store.Queries) {
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)
	if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"srv_1", "srv_2"} {
		srv := store.Server{ID: id, WorkspaceID: "ws_1", Provider: "digitalocean", Name: "web-" + id, Region: "nyc3",
			Size: "s-1vcpu-1gb", Image: "debian-12", PortsJSON: "[22]", State: "online", AgentVersion: "1.0.0 (commit abc)",
			AgentTimeoutS: 60, CreatedAt: now, UpdatedAt: now}
		if err := q.CreateServer(ctx, srv, nil); err != nil {
			t.Fatal(err)
		}
	}
	mk := func(id, version string, at time.Time) store.Rollout {
		return store.Rollout{ID: id, WorkspaceID: "ws_1", Version: version, SelectorJSON: "{}", Canary: "1", CanaryCount: 1,
			MaxParallel: 1, HealthWindowS: 60, State: "pending", CreatedBy: "owner", CreatedAt: at, UpdatedAt: at}
	}
	targets := []store.RolloutTarget{{ServerID: "srv_1", Seq: 0, Wave: "canary", State: "pending", FromVersion: "1.0.0"},
		{ServerID: "srv_2", Seq: 1, Wave: "rest", State: "pending", FromVersion: "1.0.0"}}
	r := mk("rol_1", "1.1.0", now)
	if err := q.CreateRollout(ctx, r, targets); err != nil {
		t.Fatal(err)
	}
	if err := q.CreateRollout(ctx, mk("rol_2", "1.2.0", now), nil); !errors.Is(err, store.ErrConflict) {
		t.Errorf("second open rollout: %v, want ErrConflict", err)
	}
	if ok, err := q.LeaseRollout(ctx, "rol_1", "cp_a", now, now.Add(time.Minute)); !ok || err != nil {
		t.Fatalf("first lease: %v %v", ok, err)
	}
	if ok, _ := q.LeaseRollout(ctx, "rol_1", "cp_b", now.Add(30*time.Second), now.Add(2*time.Minute)); ok {
		t.Error("a live lease was taken by another control plane")
	}
	if ok, _ := q.HoldsRollout(ctx, "rol_1", "cp_a", now.Add(30*time.Second)); !ok {
		t.Error("the holder does not hold its lease")
	}
	if ok, err := q.LeaseRollout(ctx, "rol_1", "cp_b", now.Add(2*time.Minute), now.Add(3*time.Minute)); !ok || err != nil {
		t.Errorf("expired lease not taken over: %v %v", ok, err)
	}
	if ok, _ := q.HoldsRollout(ctx, "rol_1", "cp_a", now.Add(2*time.Minute)); ok {
		t.Error("the old holder still holds the lease")
	}
	rolloutLifecycle(ctx, t, q, r, now)
}

func rolloutLifecycle(ctx context.Context, t *testing.T, q *store.Queries, r store.Rollout, now time.Time) {
	mk := func(id, version string, at time.Time) store.Rollout {
		return store.Rollout{ID: id, WorkspaceID: "ws_1", Version: version, SelectorJSON: "{}", Canary: "1", CanaryCount: 1,
			MaxParallel: 1, HealthWindowS: 60, State: "pending", CreatedBy: "owner", CreatedAt: at, UpdatedAt: at}
	}
	act, err := q.ActiveRollouts(ctx)
	if err != nil || len(act) != 1 || act[0].ID != "rol_1" {
		t.Fatalf("active: %+v %v", act, err)
	}
	r.State, r.UpdatedAt = "canary", now
	if ok, err := q.SaveRolloutState(ctx, r, "pending"); !ok || err != nil {
		t.Fatalf("pending → canary: %v %v", ok, err)
	}
	if ok, _ := q.SaveRolloutState(ctx, r, "pending"); ok {
		t.Error("a change from a state the rollout left was saved")
	}
	ts, err := q.RolloutTargets(ctx, "rol_1")
	if err != nil || len(ts) != 2 || ts[0].Wave != "canary" {
		t.Fatalf("targets: %+v %v", ts, err)
	}
	ts[0].State, ts[0].ActionID, ts[0].StartedAt = "updating", "act_1", &now
	if err := q.SaveRolloutTarget(ctx, ts[0]); err != nil {
		t.Fatal(err)
	}
	if got, _ := q.WorkspaceAgentTarget(ctx, "ws_1"); got != "" {
		t.Errorf("target before any rollout succeeded: %q", got)
	}
	fin := now.Add(time.Minute)
	r.State, r.FinishedAt = "succeeded", &fin
	if ok, err := q.SaveRolloutState(ctx, r, "canary"); !ok || err != nil {
		t.Fatal(ok, err)
	}
	if err := q.SkipPendingTargets(ctx, "rol_1", "not updated", fin); err != nil {
		t.Fatal(err)
	}
	if ts, _ = q.RolloutTargets(ctx, "rol_1"); ts[1].State != "skipped" || ts[0].State != "updating" {
		t.Errorf("after skip: %+v", ts)
	}
	// Finished, but a target still updating: the controller follows it.
	if act, _ := q.ActiveRollouts(ctx); len(act) != 1 {
		t.Errorf("a finished rollout with an updating target is not active: %+v", act)
	}
	if got, _ := q.WorkspaceAgentTarget(ctx, "ws_1"); got != "1.1.0" {
		t.Errorf("target %q, want 1.1.0", got)
	}
	if err := q.CreateRollout(ctx, mk("rol_3", "1.2.0", now.Add(time.Second)), nil); err != nil {
		t.Errorf("a rollout after the first ended: %v", err)
	}
	page, err := q.RolloutsPage(ctx, "ws_1", nil, 10)
	if err != nil || len(page) != 2 || page[0].ID != "rol_3" {
		t.Errorf("page: %+v %v", page, err)
	}
	counts, _ := q.RolloutsByState(ctx)
	if counts["succeeded"] != 1 || counts["pending"] != 1 {
		t.Errorf("by state: %v", counts)
	}
	if vs, _ := q.OnlineAgentVersions(ctx); vs["1.0.0 (commit abc)"] != 2 {
		t.Errorf("online agents: %v", vs)
	}
}
