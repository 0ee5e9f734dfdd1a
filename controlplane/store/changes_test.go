package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/changefeed"
	"github.com/devpilot/devpilot/controlplane/store"
)

// topics reads what the feed got since c.
func topics(t *testing.T, f *changefeed.Feed, c changefeed.Cursor) []string {
	t.Helper()
	evs, _, ok, _, err := f.Since(c)
	if err != nil || !ok {
		t.Fatalf("since: %v %v", ok, err)
	}
	var out []string
	for _, e := range evs {
		out = append(out, e.Topic)
	}
	return out
}

// The change feed tells of a server write once it is committed, not
// before, and not at all when the transaction rolls back; writes to
// tables no page follows (sessions) tell nothing.
func TestChangesArePublishedAfterCommit(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			st := open(t, d)
			now := time.Now().UTC()
			if err := st.Q().CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: now}); err != nil {
				t.Fatal(err)
			}
			feed := st.Changes()
			start := feed.Now()
			srv := store.Server{ID: "srv_1", WorkspaceID: "ws_1", Provider: "digitalocean", Name: "web-1", Region: "nyc3",
				Size: "s-1vcpu-1gb", Image: "debian-12", PortsJSON: "[22]", State: "provisioning", AgentTimeoutS: 900, CreatedAt: now, UpdatedAt: now}
			err := st.InTx(ctx, func(q *store.Queries) error {
				if err := q.CreateServer(ctx, srv, []string{"preflight"}); err != nil {
					return err
				}
				if got := topics(t, feed, start); len(got) != 0 {
					t.Errorf("published inside the transaction: %v", got)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := topics(t, feed, start); len(got) == 0 || got[0] != store.TopicServers {
				t.Fatalf("after commit: %v", got)
			}
			mark := feed.Now()
			rollback := errors.New("roll back")
			err = st.InTx(ctx, func(q *store.Queries) error {
				if _, err := q.SetServerState(ctx, "srv_1", "failed", now, "provisioning"); err != nil {
					return err
				}
				return rollback
			})
			if !errors.Is(err, rollback) {
				t.Fatal(err)
			}
			if got := topics(t, feed, mark); len(got) != 0 {
				t.Errorf("a rolled-back write was published: %v", got)
			}
			if _, err := st.Q().SetServerState(ctx, "srv_1", "installing", now, "provisioning"); err != nil {
				t.Fatal(err)
			}
			if got := topics(t, feed, mark); len(got) != 1 || got[0] != store.TopicServers {
				t.Errorf("a write outside a transaction: %v", got)
			}
		})
	}
}
