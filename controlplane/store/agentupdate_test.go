package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/store"
)

// The last agent update's outcome is kept per server on both databases.
func TestAgentLastUpdate(t *testing.T) {
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
			if got, err := q.AgentLastUpdate(ctx, "srv_1"); got != "" || err != nil {
				t.Errorf("before any update: %q, %v", got, err)
			}
			const lu = `{"id":"act_1","result":"rolled_back","from":"1.0.0","to":"1.1.0"}`
			if err := q.SetAgentLastUpdate(ctx, "srv_1", lu, now); err != nil {
				t.Fatal(err)
			}
			if got, err := q.AgentLastUpdate(ctx, "srv_1"); got != lu || err != nil {
				t.Errorf("after: %q, %v", got, err)
			}
			// The agent repeats it in each hello until acknowledged: the
			// first time is kept; another outcome gets its own.
			if err := q.SetAgentLastUpdate(ctx, "srv_1", lu, now.Add(time.Minute)); err != nil {
				t.Fatal(err)
			}
			got, err := q.GetServer(ctx, "", "srv_1")
			if err != nil || got.AgentLastUpdate != lu || got.AgentLastUpdateAt == nil || !got.AgentLastUpdateAt.Equal(now) {
				t.Errorf("repeated: %q at %v, %v; want %v", got.AgentLastUpdate, got.AgentLastUpdateAt, err, now)
			}
			const lu2 = `{"id":"act_2","result":"updated","from":"1.0.0","to":"1.2.0"}`
			if err := q.SetAgentLastUpdate(ctx, "srv_1", lu2, now.Add(2*time.Minute)); err != nil {
				t.Fatal(err)
			}
			list, err := q.ListServers(ctx, "ws_1")
			if err != nil || len(list) != 1 || list[0].AgentLastUpdate != lu2 || list[0].AgentLastUpdateAt == nil ||
				!list[0].AgentLastUpdateAt.Equal(now.Add(2*time.Minute)) {
				t.Errorf("next update, listed: %+v, %v", list, err)
			}
			if _, err := q.AgentLastUpdate(ctx, "srv_nope"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("unknown server: %v", err)
			}
		})
	}
}

// The latest update_status is kept per server on both databases, read
// together with the last outcome.
func TestAgentUpdateStatus(t *testing.T) {
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
			if lu, st, err := q.AgentUpdateState(ctx, "srv_1"); lu != "" || st != "" || err != nil {
				t.Errorf("before any update: %q %q, %v", lu, st, err)
			}
			for _, st := range []string{`{"id":"act_1","state":"downloading"}`, `{"id":"act_1","state":"refused","error":"bad signature"}`} {
				if err := q.SetAgentUpdateStatus(ctx, "srv_1", st); err != nil {
					t.Fatal(err)
				}
				if lu, got, err := q.AgentUpdateState(ctx, "srv_1"); got != st || lu != "" || err != nil {
					t.Errorf("after %s: %q %q, %v", st, lu, got, err)
				}
			}
			if _, _, err := q.AgentUpdateState(ctx, "srv_nope"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("unknown server: %v", err)
			}
		})
	}
}
