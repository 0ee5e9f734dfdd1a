package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/store"
)

// Server actions behave the same on both databases: one open action per
// server, leases exclusive until they expire, saves only by the holder.
func TestServerActionQueries(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			q := open(t, d).Q()
			now := time.Now().UTC().Truncate(time.Microsecond)
			if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: now}); err != nil {
				t.Fatal(err)
			}
			srv := store.Server{ID: "srv_1", WorkspaceID: "ws_1", Provider: "digitalocean", Name: "web-1", Region: "nyc3",
				Size: "s-1vcpu-1gb", Image: "debian-12", PortsJSON: "[22]", State: "online", AgentTimeoutS: 60, CreatedAt: now, UpdatedAt: now}
			if err := q.CreateServer(ctx, srv, nil); err != nil {
				t.Fatal(err)
			}
			mk := func(id string) store.ServerAction {
				return store.ServerAction{ID: id, WorkspaceID: "ws_1", ServerID: "srv_1", Type: "reboot", ParamsJSON: "{}",
					State: "queued", StepsJSON: "[]", CreatedBy: "owner", CreatedAt: now, UpdatedAt: now}
			}
			if err := q.CreateAction(ctx, mk("act_1")); err != nil {
				t.Fatal(err)
			}
			if err := q.CreateAction(ctx, mk("act_2")); !errors.Is(err, store.ErrConflict) {
				t.Errorf("second open action: %v, want ErrConflict", err)
			}
			if ok, err := q.LeaseAction(ctx, "act_1", "cp_a", now, now.Add(time.Minute)); !ok || err != nil {
				t.Fatalf("first lease: %v %v", ok, err)
			}
			if ok, _ := q.LeaseAction(ctx, "act_1", "cp_b", now.Add(30*time.Second), now.Add(2*time.Minute)); ok {
				t.Error("a live lease was taken by another control plane")
			}
			a, err := q.GetAction(ctx, "ws_1", "act_1")
			if err != nil || a.LeaseOwner != "cp_a" || a.Type != "reboot" || !a.CreatedAt.Equal(now) {
				t.Fatalf("get: %+v %v", a, err)
			}
			a.State, a.StepsJSON = "running", `[{"name":"reboot"}]`
			if ok, err := q.SaveAction(ctx, a, "cp_b"); ok || err != nil {
				t.Errorf("save by a non-holder: %v %v", ok, err)
			}
			if ok, err := q.LeaseAction(ctx, "act_1", "cp_b", now.Add(2*time.Minute), now.Add(3*time.Minute)); !ok || err != nil {
				t.Errorf("expired lease not taken over: %v %v", ok, err)
			}
			if ok, err := q.SaveAction(ctx, a, "cp_a"); ok || err != nil {
				t.Errorf("save after losing the lease: %v %v", ok, err)
			}
			fin := now.Add(time.Minute)
			a.State, a.FinishedAt = "succeeded", &fin
			if ok, err := q.SaveAction(ctx, a, "cp_b"); !ok || err != nil {
				t.Fatalf("save by the holder: %v %v", ok, err)
			}
			a2 := mk("act_2")
			a2.CreatedAt = now.Add(time.Second)
			if err := q.CreateAction(ctx, a2); err != nil {
				t.Errorf("action after the first finished: %v", err)
			}
			list, err := q.ListActions(ctx, "srv_1", "", 1)
			if err != nil || len(list) != 1 || list[0].ID != "act_2" {
				t.Errorf("newest first: %+v %v", list, err)
			}
			list, _ = q.ListActions(ctx, "srv_1", "act_2", 10)
			if len(list) != 1 || list[0].ID != "act_1" || list[0].State != "succeeded" {
				t.Errorf("second page: %+v", list)
			}
			open, _ := q.OpenActions(ctx)
			if len(open) != 1 || open[0].ID != "act_2" {
				t.Errorf("open actions: %+v", open)
			}
		})
	}
}
