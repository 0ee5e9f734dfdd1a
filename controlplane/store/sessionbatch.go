package store

import (
	"context"
	"sync"
	"time"
)

// SessionStart is one StartAgentSession call's arguments.
type SessionStart struct {
	ID, Version, FactsJSON string
	At                     time.Time
}

// maxSessionBatch bounds one batch's transaction.
const maxSessionBatch = 256

// sessionBatchTimeout bounds one batch's transaction; a caller stops
// waiting when its own context ends.
const sessionBatchTimeout = 10 * time.Second

// sessionBatcher commits concurrent session starts together (group
// commit): while one transaction runs, the starts that arrive queue up,
// and the next transaction takes them all. In a reconnect storm after a
// restart every server was marked offline, so each start is a state move
// with its event (a read, an update, an event row): one transaction each
// made the store's single writer the limit of how fast agents came back.
// There is no goroutine of its own: the caller that finds no batch
// running runs them until none are left.
type sessionBatcher struct {
	mu      sync.Mutex
	running bool
	pending []*sessionReq
}

type sessionReq struct {
	SessionStart
	ok   bool
	err  error
	done chan struct{}
}

// StartAgentSessionBatched is StartAgentSession committed together with
// the other session starts in flight (see sessionBatcher). A start whose
// batch fails is retried on its own, so one bad start fails only itself.
func (s *Store) StartAgentSessionBatched(ctx context.Context, st SessionStart) (bool, error) {
	r := &sessionReq{SessionStart: st, done: make(chan struct{})}
	b := &s.sessionBatch
	b.mu.Lock()
	b.pending = append(b.pending, r)
	lead := !b.running
	b.running = true
	b.mu.Unlock()
	if lead {
		for {
			b.mu.Lock()
			n := min(len(b.pending), maxSessionBatch)
			if n == 0 {
				b.running = false
				b.mu.Unlock()
				break
			}
			batch := b.pending[:n:n]
			b.pending = append([]*sessionReq(nil), b.pending[n:]...)
			b.mu.Unlock()
			s.runSessionBatch(batch)
		}
	}
	select {
	case <-r.done:
		return r.ok, r.err
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

func (s *Store) runSessionBatch(batch []*sessionReq) {
	ctx, cancel := context.WithTimeout(context.Background(), sessionBatchTimeout)
	defer cancel()
	oks := make([]bool, len(batch))
	err := s.InTx(ctx, func(q *Queries) error {
		for i, r := range batch {
			ok, err := q.StartAgentSession(ctx, r.ID, r.Version, r.FactsJSON, r.At)
			if err != nil {
				return err
			}
			oks[i] = ok
		}
		return nil
	})
	if err == nil {
		for i, r := range batch {
			r.ok = oks[i]
			close(r.done)
		}
		return
	}
	for _, r := range batch {
		r.ok, r.err = s.Q().StartAgentSession(ctx, r.ID, r.Version, r.FactsJSON, r.At)
		close(r.done)
	}
}
