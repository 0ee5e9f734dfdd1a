package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/events"
	"github.com/devpilot/devpilot/controlplane/store"
)

// eventsSince returns the types and payloads of ws's events after id.
func eventsSince(t *testing.T, st *store.Store, ws string, after int64) ([]events.Event, int64) {
	t.Helper()
	evs, err := st.Q().EventsAfter(context.Background(), ws, after, -1)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) > 0 {
		after = evs[len(evs)-1].ID
	}
	return evs, after
}

func wantEvent(t *testing.T, evs []events.Event, typ, subject string, data map[string]any) {
	t.Helper()
	if len(evs) != 1 {
		t.Fatalf("events %v, want one %s", evs, typ)
	}
	e := evs[0]
	if e.Type != typ || e.Subject != subject {
		t.Fatalf("event %s %s, want %s %s", e.Type, e.Subject, typ, subject)
	}
	var got map[string]any
	if err := json.Unmarshal(e.Data, &got); err != nil {
		t.Fatal(err)
	}
	for k, v := range data {
		if got[k] != v {
			t.Errorf("%s: %s = %v, want %v (payload %s)", typ, k, got[k], v, e.Data)
		}
	}
}

// Each write of a server's state appends the event of the move, in its
// transaction, only when the state changed; steps on the way
// (installing, deleting) and repeats append none.
func TestServerStateWritesAppendTheirEvents(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			st := open(t, d)
			q := st.Q()
			now := time.Now().UTC()
			if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: now}); err != nil {
				t.Fatal(err)
			}
			srv := store.Server{ID: "srv_1", WorkspaceID: "ws_1", Provider: "digitalocean", Name: "web-1", Region: "nyc3",
				Size: "s-1vcpu-1gb", Image: "debian-12", PortsJSON: "[22]", State: "provisioning", AgentTimeoutS: 60, CreatedAt: now, UpdatedAt: now}
			if err := q.CreateServer(ctx, srv, []string{"preflight"}); err != nil {
				t.Fatal(err)
			}
			evs, last := eventsSince(t, st, "ws_1", 0)
			wantEvent(t, evs, events.ServerCreated, "srv_1", map[string]any{"name": "web-1", "state": "provisioning", "region": "nyc3"})

			if ok, err := q.SetServerState(ctx, "srv_1", "installing", now, "provisioning"); !ok || err != nil {
				t.Fatal(ok, err)
			}
			if evs, _ := eventsSince(t, st, "ws_1", last); len(evs) != 0 {
				t.Errorf("installing appended %v", evs)
			}
			if ok, err := q.SetServerState(ctx, "srv_1", "online", now, "installing"); !ok || err != nil {
				t.Fatal(ok, err)
			}
			evs, last = eventsSince(t, st, "ws_1", last)
			wantEvent(t, evs, events.ServerOnline, "srv_1", map[string]any{"name": "web-1", "state": "online", "previous_state": "installing"})
			if ok, _ := q.SetServerState(ctx, "srv_1", "online", now, "installing"); ok {
				t.Error("a move from a state the server is not in happened")
			}
			if ok, err := q.SetServerLiveness(ctx, "srv_1", "agent_offline", "the agent's last error: boom", now, "online"); !ok || err != nil {
				t.Fatal(ok, err)
			}
			evs, last = eventsSince(t, st, "ws_1", last)
			wantEvent(t, evs, events.ServerAgentOffline, "srv_1", map[string]any{"previous_state": "online", "state_reason": "the agent's last error: boom"})
			// The same state with a new reason is no new event.
			if _, err := q.SetServerLiveness(ctx, "srv_1", "agent_offline", "still", now, "agent_offline"); err != nil {
				t.Fatal(err)
			}
			if evs, _ := eventsSince(t, st, "ws_1", last); len(evs) != 0 {
				t.Errorf("a repeated state appended %v", evs)
			}
			if ok, err := q.StartAgentSession(ctx, "srv_1", "1.2.3", "{}", now); err != nil || !ok {
				t.Fatalf("start agent session: %v, %v", ok, err)
			}
			evs, last = eventsSince(t, st, "ws_1", last)
			wantEvent(t, evs, events.ServerOnline, "srv_1", map[string]any{"previous_state": "agent_offline"})
			if ok, err := q.StartAgentSession(ctx, "srv_1", "1.2.3", "{}", now); err != nil || !ok {
				t.Fatalf("start agent session: %v, %v", ok, err)
			}
			if err := q.MarkAllOffline(ctx, now); err != nil {
				t.Fatal(err)
			}
			evs, last = eventsSince(t, st, "ws_1", last)
			wantEvent(t, evs, events.ServerOffline, "srv_1", map[string]any{"previous_state": "online"})
			if err := q.MarkDeleted(ctx, "srv_1", true, now); err != nil {
				t.Fatal(err)
			}
			if evs, _ := eventsSince(t, st, "ws_1", last); len(evs) != 0 {
				t.Errorf("deleting appended %v", evs)
			}
			if ok, err := q.FailServer(ctx, "srv_1", `{"step":"destroy","code":"provider_error","message":"digitalocean: 500"}`, now); !ok || err != nil {
				t.Fatal(ok, err)
			}
			evs, last = eventsSince(t, st, "ws_1", last)
			wantEvent(t, evs, events.ServerFailed, "srv_1", map[string]any{"previous_state": "deleting", "step": "destroy",
				"error_code": "provider_error", "error": "digitalocean: 500"})

			srv2 := srv
			srv2.ID, srv2.Name, srv2.State = "srv_2", "web-2", "online"
			if err := q.CreateServer(ctx, srv2, nil); err != nil {
				t.Fatal(err)
			}
			_, last = eventsSince(t, st, "ws_1", last)
			if err := q.MarkDeleted(ctx, "srv_2", false, now); err != nil {
				t.Fatal(err)
			}
			evs, _ = eventsSince(t, st, "ws_1", last)
			wantEvent(t, evs, events.ServerDeleted, "srv_2", map[string]any{"name": "web-2", "previous_state": "online"})
		})
	}
}

// A task's final result and a deployment's end append their events once.
func TestTaskAndDeploymentEndsAppendTheirEvents(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			st := open(t, d)
			q := st.Q()
			now := time.Now().UTC()
			if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: now}); err != nil {
				t.Fatal(err)
			}
			srv := store.Server{ID: "srv_1", WorkspaceID: "ws_1", Provider: "digitalocean", Name: "web-1", Region: "nyc3",
				Size: "s-1vcpu-1gb", Image: "debian-12", PortsJSON: "[22]", State: "online", AgentTimeoutS: 60, CreatedAt: now, UpdatedAt: now}
			if err := q.CreateServer(ctx, srv, nil); err != nil {
				t.Fatal(err)
			}
			_, last := eventsSince(t, st, "ws_1", 0)
			if err := q.CreateDeployment(ctx, store.Deployment{ID: "dep_1", WorkspaceID: "ws_1", State: "running", Selector: "tag:web",
				MaxParallel: 1, DeadlineS: 60, PlanJSON: "{}", CreatedBy: "test", CreatedAt: now, UpdatedAt: now},
				[]store.DeploymentTarget{{Position: 0, ServerID: "srv_1"}}); err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				state, typ string
				exit       any
			}{{"failed", events.TaskFailed, 3.0}, {"succeeded", events.TaskSucceeded, 0.0}, {"timed_out", events.TaskTimedOut, nil}, {"canceled", events.TaskCanceled, nil}} {
				id := "tsk_" + c.state
				task := store.Task{ID: id, WorkspaceID: "ws_1", ServerID: "srv_1", DeploymentID: "dep_1", Kind: "exec", SpecJSON: "sealed",
					State: "running", CreatedBy: "test", CreatedAt: now, Deadline: now.Add(time.Hour), UpdatedAt: now}
				if err := q.CreateTask(ctx, task); err != nil {
					t.Fatal(err)
				}
				task.State, task.FinishedAt = c.state, &now
				if f, ok := c.exit.(float64); ok {
					n := int(f)
					task.ExitCode = &n
				}
				for range 2 { // the second result is ignored
					if _, err := q.FinishTask(ctx, task); err != nil {
						t.Fatal(err)
					}
				}
				var evs []events.Event
				evs, last = eventsSince(t, st, "ws_1", last)
				wantEvent(t, evs, c.typ, id, map[string]any{"server_id": "srv_1", "kind": "exec", "exit_code": c.exit, "deployment_id": "dep_1"})
			}
			if ok, err := q.FinishDeployment(ctx, "dep_1", "failed", "target 1 failed", now); !ok || err != nil {
				t.Fatal(ok, err)
			}
			if ok, _ := q.FinishDeployment(ctx, "dep_1", "succeeded", "", now); ok {
				t.Error("a finished deployment finished again")
			}
			evs, _ := eventsSince(t, st, "ws_1", last)
			wantEvent(t, evs, events.DeploymentFailed, "dep_1", map[string]any{"state": "failed", "targets": 1.0})
		})
	}
}

// At start-up every online server turns offline with its own
// server.offline event, in server order and with consecutive ids, in a
// few statements (AppendEvents writes 500 per INSERT; 1,234 servers
// take three); the next event's id follows them.
func TestMarkAllOfflineAtScale(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			st := open(t, d)
			q := st.Q()
			now := time.Now().UTC().Truncate(time.Microsecond)
			if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: now}); err != nil {
				t.Fatal(err)
			}
			const n = 1234
			if err := store.SeedServers(ctx, st, "ws_1", n); err != nil {
				t.Fatal(err)
			}
			if err := q.MarkAllOffline(ctx, now); err != nil {
				t.Fatal(err)
			}
			evs, last := eventsSince(t, st, "ws_1", 0)
			if len(evs) != n {
				t.Fatalf("%d events for %d servers", len(evs), n)
			}
			for i, e := range evs {
				if want := fmt.Sprintf("srv_%05d", i); e.Type != events.ServerOffline || e.Subject != want || e.ID != evs[0].ID+int64(i) {
					t.Fatalf("event %d: %d %s %s, want id %d, %s %s", i, e.ID, e.Type, e.Subject, evs[0].ID+int64(i), events.ServerOffline, want)
				}
				var data map[string]any
				if err := json.Unmarshal(e.Data, &data); err != nil || data["previous_state"] != "online" || data["state"] != "offline" {
					t.Fatalf("event %d data %s (%v)", i, e.Data, err)
				}
			}
			srv, err := q.GetServer(ctx, "", "srv_01233")
			if err != nil || srv.State != "offline" {
				t.Fatalf("srv_01233 after MarkAllOffline: %+v, %v", srv, err)
			}
			if ok, err := q.StartAgentSession(ctx, "srv_00001", "1.2.3", "{}", now); err != nil || !ok {
				t.Fatalf("start agent session: %v, %v", ok, err)
			}
			evs, _ = eventsSince(t, st, "ws_1", last)
			if len(evs) != 1 || evs[0].ID != last+1 || evs[0].Type != events.ServerOnline {
				t.Fatalf("after the batch: %+v, want one server.online with id %d", evs, last+1)
			}
			if err := q.MarkAllOffline(ctx, now); err != nil {
				t.Fatal(err)
			}
			if evs, _ = eventsSince(t, st, "ws_1", last+1); len(evs) != 1 || evs[0].Subject != "srv_00001" {
				t.Fatalf("second MarkAllOffline: %+v, want only srv_00001's", evs)
			}
		})
	}
}
