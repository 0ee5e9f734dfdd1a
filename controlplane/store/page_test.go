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
		t.Run(string(d), func(t *testing.T) { keysetPages(t, d) })
	}
}

// pageAll reads every page of at most size rows; page gets the cursor of
// the previous page's last row and returns its rows' (At, ID).
func pageAll(t *testing.T, n int, page func(after *store.Cursor) ([]store.Cursor, error)) []string {
	t.Helper()
	var ids []string
	var after *store.Cursor
	for range n + 1 {
		rows, err := page(after)
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) == 0 {
			break
		}
		for _, r := range rows {
			ids = append(ids, r.ID)
		}
		after = &rows[len(rows)-1]
	}
	return ids
}

func keysetPages(t *testing.T, d store.Dialect) {
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
	toks := pageAll(t, n, func(after *store.Cursor) ([]store.Cursor, error) {
		page, err := q.TokensPage(ctx, "ws_1", false, after, 2)
		var out []store.Cursor
		for _, tk := range page {
			out = append(out, store.Cursor{At: tk.CreatedAt, ID: tk.ID})
		}
		return out, err
	})
	if got := fmt.Sprint(toks); got != "[tok_06 tok_05 tok_04 tok_03 tok_02 tok_01 tok_00]" {
		t.Errorf("tokens newest first, two a page: %s", got)
	}
	srvs := pageAll(t, n, func(after *store.Cursor) ([]store.Cursor, error) {
		page, err := q.ServersPage(ctx, "ws_1", store.ServerFilter{After: after, Limit: 3})
		var out []store.Cursor
		for _, s := range page {
			out = append(out, store.Cursor{At: s.CreatedAt, ID: s.ID})
		}
		return out, err
	})
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
}
