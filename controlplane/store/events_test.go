package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/devpilot/devpilot/controlplane/events"
	"github.com/devpilot/devpilot/controlplane/store"
)

func appendEvent(t *testing.T, st *store.Store, ws, typ, subject string, data any) int64 {
	t.Helper()
	var id int64
	err := st.InTx(context.Background(), func(q *store.Queries) error {
		var err error
		id, err = q.AppendEvent(context.Background(), ws, typ, subject, data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// Events read back as written, per workspace and across all, oldest
// first, from any id on; a rolled-back transaction leaves none; outside a
// transaction AppendEvent refuses.
func TestEventLogReadsBackWhatWasCommitted(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			st := open(t, d)
			start := time.Now().UTC().Add(-time.Second)
			id1 := appendEvent(t, st, "ws_1", events.ServerCreated, "srv_1", map[string]string{"name": "web-1"})
			id2 := appendEvent(t, st, "ws_2", events.ServerCreated, "srv_2", nil)
			id3 := appendEvent(t, st, "ws_1", events.ServerOnline, "srv_1", map[string]any{"name": "web-1", "state": "online", "previous_state": "installing"})
			if id1 >= id2 || id2 >= id3 {
				t.Fatalf("ids %d %d %d not increasing", id1, id2, id3)
			}
			got, err := st.Q().EventsAfter(ctx, "ws_1", 0, 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 2 || got[0].ID != id1 || got[1].ID != id3 {
				t.Fatalf("ws_1 events = %+v, want ids %d and %d", got, id1, id3)
			}
			e := got[1]
			if e.Workspace != "ws_1" || e.Type != events.ServerOnline || e.Subject != "srv_1" || e.Time.Before(start) || e.Time.After(time.Now().Add(time.Second)) || e.Time.Location() != time.UTC {
				t.Errorf("event = %+v", e)
			}
			var data map[string]string
			if err := json.Unmarshal(e.Data, &data); err != nil || data["previous_state"] != "installing" {
				t.Errorf("data = %s (%v)", e.Data, err)
			}
			if got, _ := st.Q().EventsAfter(ctx, "ws_1", id1, 10); len(got) != 1 || got[0].ID != id3 {
				t.Errorf("after %d: %+v", id1, got)
			}
			if got, _ := st.Q().EventsAfter(ctx, "ws_1", 0, 1); len(got) != 1 || got[0].ID != id1 {
				t.Errorf("limit 1: %+v", got)
			}
			all, err := st.Q().EventsSince(ctx, 0, -1)
			if err != nil || len(all) != 3 || all[1].Workspace != "ws_2" || string(all[1].Data) != "{}" {
				t.Errorf("all events = %+v, %v", all, err)
			}
			if got, _ := st.Q().EventsBefore(ctx, "ws_1", 0, 1); len(got) != 1 || got[0].ID != id3 {
				t.Errorf("newest: %+v", got)
			}

			rollback := errors.New("roll back")
			err = st.InTx(ctx, func(q *store.Queries) error {
				if _, err := q.AppendEvent(ctx, "ws_1", events.ServerFailed, "srv_1", nil); err != nil {
					return err
				}
				return rollback
			})
			if !errors.Is(err, rollback) {
				t.Fatal(err)
			}
			if got, _ := st.Q().EventsAfter(ctx, "ws_1", id3, 10); len(got) != 0 {
				t.Errorf("a rolled-back event is visible: %+v", got)
			}
			if _, err := st.Q().AppendEvent(ctx, "ws_1", events.ServerFailed, "srv_1", nil); !errors.Is(err, store.ErrNotInTx) {
				t.Errorf("outside a transaction: %v, want ErrNotInTx", err)
			}
			if id4 := appendEvent(t, st, "ws_1", events.ServerDeleted, "srv_1", nil); id4 <= id3 {
				t.Errorf("id after a rollback %d, want > %d", id4, id3)
			}
		})
	}
}

// A commit that appended events tells TopicEvents once committed, and
// devpilot_events_written_total counts it; a rolled-back one does neither.
func TestAppendedEventsArePublishedAndCountedOnCommit(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			st := open(t, d)
			feed := st.Changes()
			mark := feed.Now()
			_ = st.InTx(ctx, func(q *store.Queries) error {
				_, _ = q.AppendEvent(ctx, "ws_1", events.TaskFailed, "tsk_1", nil)
				return errors.New("roll back")
			})
			if got := topics(t, feed, mark); len(got) != 0 {
				t.Errorf("rolled back, yet published %v", got)
			}
			err := st.InTx(ctx, func(q *store.Queries) error {
				if _, err := q.AppendEvent(ctx, "ws_1", events.TaskFailed, "tsk_1", nil); err != nil {
					return err
				}
				if got := topics(t, feed, mark); len(got) != 0 {
					t.Errorf("published inside the transaction: %v", got)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			got := topics(t, feed, mark)
			if len(got) == 0 || got[len(got)-1] != store.TopicEvents {
				t.Errorf("after commit: %v, want %s", got, store.TopicEvents)
			}
			if n := testutil.ToFloat64(st.EventMetrics().WithLabelValues(events.TaskFailed)); n != 1 {
				t.Errorf("devpilot_events_written_total{type=task.failed} = %v, want 1", n)
			}
		})
	}
}

// Writers committing at once never make an event visible after a reader
// has moved past its id: a follower advancing its cursor as it reads sees
// every event, and the ids have no holes.
func TestConcurrentWritersCommitEventsInIDOrder(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			st := open(t, d)
			const writers, each = 4, 25
			var wg sync.WaitGroup
			errs := make(chan error, writers)
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range each {
						inTx := st.InTx
						if w%2 == 1 {
							inTx = st.InTxRows // no writer lock on PostgreSQL: the event_ids row orders them
						}
						err := inTx(ctx, func(q *store.Queries) error {
							_, err := q.AppendEvent(ctx, "ws_1", events.TaskSucceeded, fmt.Sprintf("tsk_%d_%d", w, i), nil)
							return err
						})
						if err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			done := make(chan struct{})
			go func() { wg.Wait(); close(done) }()
			var seen []int64
			var after int64
			deadline := time.Now().Add(2 * time.Minute)
			for len(seen) < writers*each && time.Now().Before(deadline) {
				evs, err := st.Q().EventsAfter(ctx, "ws_1", after, 7)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range evs {
					seen = append(seen, e.ID)
					after = e.ID
				}
				select {
				case err := <-errs:
					t.Fatal(err)
				default:
				}
			}
			<-done
			if len(seen) != writers*each {
				t.Fatalf("the follower saw %d events, want %d", len(seen), writers*each)
			}
			for i, id := range seen {
				if id != seen[0]+int64(i) {
					t.Fatalf("ids %v have a hole or are out of order at %d", seen, i)
				}
			}
		})
	}
}

// Pruning deletes what is older than the cutoff and keeps the rest; the
// next id still grows.
func TestPruneEvents(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) {
			ctx := context.Background()
			st := open(t, d)
			old := appendEvent(t, st, "ws_1", events.ServerCreated, "srv_1", nil)
			if _, err := st.DB().ExecContext(ctx, rebindFor(st, `UPDATE events SET at = ? WHERE id = ?`), time.Now().UTC().Add(-48*time.Hour), old); err != nil {
				t.Fatal(err)
			}
			recent := appendEvent(t, st, "ws_1", events.ServerOnline, "srv_1", nil)
			n, err := st.Q().PruneEvents(ctx, time.Now().Add(-24*time.Hour))
			if err != nil || n != 1 {
				t.Fatalf("pruned %d, %v; want 1", n, err)
			}
			got, _ := st.Q().EventsAfter(ctx, "ws_1", 0, 10)
			if len(got) != 1 || got[0].ID != recent {
				t.Errorf("left %+v, want only %d", got, recent)
			}
			if next := appendEvent(t, st, "ws_1", events.ServerOffline, "srv_1", nil); next <= recent {
				t.Errorf("id after prune %d, want > %d", next, recent)
			}
		})
	}
}

func rebindFor(st *store.Store, q string) string {
	if st.Dialect() == store.Postgres {
		return `UPDATE events SET at = $1 WHERE id = $2`
	}
	return q
}
