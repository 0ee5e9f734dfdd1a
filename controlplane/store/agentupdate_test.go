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
			if err := q.SetAgentLastUpdate(ctx, "srv_1", lu); err != nil {
				t.Fatal(err)
			}
			if got, err := q.AgentLastUpdate(ctx, "srv_1"); got != lu || err != nil {
				t.Errorf("after: %q, %v", got, err)
			}
			if _, err := q.AgentLastUpdate(ctx, "srv_nope"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("unknown server: %v", err)
			}
		})
	}
}
