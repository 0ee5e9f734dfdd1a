package store_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
)

// Key rotation's queries: a compare-and-swap that loses against a
// concurrent write says so, and one rotation lock across every store on
// the database (PostgreSQL: every control plane).
func TestResealAndTheRotationLock(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			dsn, path := "", filepath.Join(t.TempDir(), "devpilot.db")
			if d == store.Postgres {
				dsn = storetest.PostgresURL(t)
			}
			openOne := func() *store.Store {
				st, err := store.Open(ctx, dsn, path)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = st.Close() })
				return st
			}
			st, other := openOne(), openOne()
			q := st.Q()
			now := time.Now().UTC()
			if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: now}); err != nil {
				t.Fatal(err)
			}
			if err := q.CreateIntegration(ctx, store.Integration{ID: "int_1", WorkspaceID: "ws_1", Provider: "vultr", AccessKey: "k",
				SecretCiphertext: "v1.a.old", SecretHint: "abcd", Status: "valid", AccountJSON: "{}", CreatedAt: now, UpdatedAt: now}); err != nil {
				t.Fatal(err)
			}
			col := store.SealedColumns[0]
			rows, err := q.ListSealed(ctx, col)
			if err != nil || len(rows) != 1 || rows[0] != (store.Sealed{ID: "int_1", Ciphertext: "v1.a.old"}) {
				t.Fatalf("list sealed: %+v %v", rows, err)
			}
			for _, c := range store.SealedColumns[1:] {
				if _, err := q.ListSealed(ctx, c); err != nil {
					t.Errorf("list %s.%s: %v", c.Table, c.Column, err)
				}
			}
			if ok, err := q.Reseal(ctx, col, "int_1", "v1.a.stale", "v1.b.new"); ok || err != nil {
				t.Errorf("reseal from a stale value: %v %v, want false", ok, err)
			}
			if ok, err := q.Reseal(ctx, col, "int_1", "v1.a.old", "v1.b.new"); !ok || err != nil {
				t.Errorf("reseal: %v %v, want true", ok, err)
			}
			if ct, err := q.GetSealed(ctx, col, "int_1"); ct != "v1.b.new" || err != nil {
				t.Errorf("get sealed: %q %v", ct, err)
			}
			if _, err := q.GetSealed(ctx, col, "int_gone"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("get sealed of a missing row: %v, want ErrNotFound", err)
			}

			release, err := st.TryExclusive(ctx, store.LockKeyRotation)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := other.TryExclusive(ctx, store.LockKeyRotation); !errors.Is(err, store.ErrBusy) {
				t.Errorf("second holder: %v, want ErrBusy", err)
			}
			release()
			release2, err := other.TryExclusive(ctx, store.LockKeyRotation)
			if err != nil {
				t.Fatalf("after release: %v", err)
			}
			release2()
		})
	}
}
