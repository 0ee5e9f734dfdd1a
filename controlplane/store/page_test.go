package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/store"
)

// Keyset pages cover every row exactly once, in order, on both databases,
// also when rows share a creation time (the id breaks the tie), and a
// failed server's name can be taken by a new one while a live name cannot.
func TestKeysetPagesOnBothDatabases(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			st := open(t, d)
			q := st.Q()
			now := time.Now().UTC().Truncate(time.Microsecond)
			if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "D", CreatedAt: now}); err != nil {
				t.Fatal(err)
			}
			const n = 7
			for i := range n {
				at := now.Add(time.Duration(i/3) * time.Second) // three rows per instant
				if err := q.CreateToken(ctx, store.Token{ID: fmt.Sprintf("tok_%02d", i), WorkspaceID: "ws_1", Name: "t",
					Role: "viewer", SecretHash: []byte{byte(i)}, CreatedBy: "test", CreatedAt: at}); err != nil {
					t.Fatal(err)
				}
				if err := q.CreateServer(ctx, store.Server{ID: fmt.Sprintf("srv_%02d", i), WorkspaceID: "ws_1", Provider: "digitalocean",
					Name: fmt.Sprintf("s%d", i), State: "provisioning", PortsJSON: "[]", CreatedAt: at, UpdatedAt: at}, nil); err != nil {
					t.Fatal(err)
				}
			}
			var toks []string
			var after *store.Cursor
			for range n + 1 {
				page, err := q.TokensPage(ctx, "ws_1", false, after, 2)
				if err != nil {
					t.Fatal(err)
				}
				if len(page) == 0 {
					break
				}
				for _, tk := range page {
					toks = append(toks, tk.ID)
				}
				last := page[len(page)-1]
				after = &store.Cursor{At: last.CreatedAt, ID: last.ID}
			}
			if got := fmt.Sprint(toks); got != "[tok_06 tok_05 tok_04 tok_03 tok_02 tok_01 tok_00]" {
				t.Errorf("tokens newest first, two a page: %s", got)
			}
			var srvs []string
			f := store.ServerFilter{Limit: 3}
			for range n + 1 {
				page, err := q.ServersPage(ctx, "ws_1", f)
				if err != nil {
					t.Fatal(err)
				}
				if len(page) == 0 {
					break
				}
				for _, s := range page {
					srvs = append(srvs, s.ID)
				}
				last := page[len(page)-1]
				f.After = &store.Cursor{At: last.CreatedAt, ID: last.ID}
			}
			if got := fmt.Sprint(srvs); got != "[srv_00 srv_01 srv_02 srv_03 srv_04 srv_05 srv_06]" {
				t.Errorf("servers oldest first, three a page: %s", got)
			}
			if page, err := q.ServersPage(ctx, "ws_1", store.ServerFilter{Name: "s4", Limit: -1}); err != nil || len(page) != 1 || page[0].ID != "srv_04" {
				t.Errorf("name filter: %+v %v", page, err)
			}

			// Names: a live one is taken, a failed one is free again.
			dup := store.Server{ID: "srv_dup", WorkspaceID: "ws_1", Provider: "digitalocean", Name: "s1", State: "provisioning",
				PortsJSON: "[]", CreatedAt: now, UpdatedAt: now}
			if err := q.CreateServer(ctx, dup, nil); err == nil {
				t.Error("a second live server named s1 was stored")
			}
			if _, err := q.FailServer(ctx, "srv_01", `{"code":"unavailable","message":"x"}`, now); err != nil {
				t.Fatal(err)
			}
			if err := q.CreateServer(ctx, dup, nil); err != nil {
				t.Errorf("a failed server's name: %v", err)
			}
			if page, _ := q.ServersPage(ctx, "ws_1", store.ServerFilter{State: "failed", Limit: -1}); len(page) != 1 || page[0].ID != "srv_01" {
				t.Errorf("state filter: %+v", page)
			}
		})
	}
}
