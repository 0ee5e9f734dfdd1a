package store_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/store"
)

// Console sessions behave the same on both databases: found by hash,
// extended only while live, expired ones pruned, deleted one by one or all.
func TestConsoleSessionQueries(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			q := open(t, d).Q()
			now := time.Now().UTC().Truncate(time.Microsecond)
			hash := func(id string) []byte { h := sha256.Sum256([]byte(id)); return h[:] }
			mk := func(id string, expires time.Time) store.ConsoleSession {
				return store.ConsoleSession{IDHash: hash(id), Sealed: "v1.k." + id, TokenName: "owner", Role: "owner",
					Workspace: "default", CreatedAt: now, ExpiresAt: expires}
			}
			for _, s := range []store.ConsoleSession{mk("a", now.Add(time.Hour)), mk("b", now.Add(time.Minute)), mk("c", now.Add(-time.Second))} {
				if err := q.CreateConsoleSession(ctx, s); err != nil {
					t.Fatal(err)
				}
			}
			if err := q.CreateConsoleSession(ctx, mk("a", now)); !errors.Is(err, store.ErrConflict) {
				t.Errorf("duplicate id hash: %v, want ErrConflict", err)
			}
			got, err := q.ConsoleSessionByHash(ctx, hash("a"))
			if err != nil || !bytes.Equal(got.IDHash, hash("a")) || got.Sealed != "v1.k.a" || got.Workspace != "default" ||
				!got.CreatedAt.Equal(now) || !got.ExpiresAt.Equal(now.Add(time.Hour)) {
				t.Errorf("session a = %+v, %v", got, err)
			}
			if _, err := q.ConsoleSessionByHash(ctx, hash("nope")); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("unknown session: %v, want ErrNotFound", err)
			}
			// Touch extends a live session, not an expired one.
			later := now.Add(2 * time.Hour)
			if ok, err := q.TouchConsoleSession(ctx, hash("a"), later, now); !ok || err != nil {
				t.Errorf("touch a live session: %v, %v", ok, err)
			}
			if got, _ := q.ConsoleSessionByHash(ctx, hash("a")); !got.ExpiresAt.Equal(later) {
				t.Errorf("a expires %v after touch, want %v", got.ExpiresAt, later)
			}
			if ok, err := q.TouchConsoleSession(ctx, hash("c"), later, now); ok || err != nil {
				t.Errorf("touch an expired session: %v, %v; want false", ok, err)
			}
			if n, err := q.DeleteExpiredConsoleSessions(ctx, now); n != 1 || err != nil {
				t.Errorf("delete expired: %d, %v; want 1 (c)", n, err)
			}
			if _, err := q.ConsoleSessionByHash(ctx, hash("c")); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("expired session c after pruning: %v, want ErrNotFound", err)
			}
			if err := q.DeleteConsoleSession(ctx, hash("b")); err != nil {
				t.Fatal(err)
			}
			if ok, err := q.TouchConsoleSession(ctx, hash("b"), later, now); ok || err != nil {
				t.Errorf("touch a deleted session: %v, %v; want false", ok, err)
			}
		})
	}
}
