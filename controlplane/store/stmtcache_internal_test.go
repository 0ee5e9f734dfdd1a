package store

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func openSQLiteT(t *testing.T) *Store {
	t.Helper()
	st, err := OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "devpilot.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func (c *stmtCache) has(query string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.stmts[query] != nil
}

// A query that only ever runs in transactions gets prepared too (in the
// background, after its first run) and later transactions use it.
func TestTransactionQueriesArePrepared(t *testing.T) {
	st := openSQLiteT(t)
	ctx := context.Background()
	const q = `SELECT COUNT(*) FROM servers WHERE state = ?`
	count := func() int {
		var n int
		err := st.InTx(ctx, func(tq *Queries) error { return tq.x.QueryRowContext(ctx, q, "online").Scan(&n) })
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if count() != 0 {
		t.Fatal("count of an empty table is not 0")
	}
	deadline := time.Now().Add(time.Minute)
	for !st.stmts.has(q) {
		if time.Now().After(deadline) {
			t.Fatal("the transaction's query was never prepared")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if count() != 0 { // through the prepared statement now
		t.Fatal("count through the prepared statement is not 0")
	}
}

// As many transactions as the pool has connections, each with a text not
// prepared yet, all succeed: preparing a text must not wait for a second
// connection while the transaction holds one (with every connection held
// by a transaction waiting for SQLite's write lock, that waited out the
// busy timeout and failed them).
func TestNewTextsInAFullPool(t *testing.T) {
	st := openSQLiteT(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, sqlitePool)
	for i := range sqlitePool {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- st.InTx(ctx, func(q *Queries) error {
				var n int
				if err := q.x.QueryRowContext(ctx, fmt.Sprintf(`SELECT %d + ?`, i), 1).Scan(&n); err != nil {
					return err
				}
				_, err := q.x.ExecContext(ctx, fmt.Sprintf(`UPDATE servers SET name = name WHERE id = 'none-%d'`, i))
				return err
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}
