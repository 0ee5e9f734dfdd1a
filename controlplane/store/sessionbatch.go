package store

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"
)

// SessionStart is one StartAgentSession call's arguments.
type SessionStart struct {
	ID, Version, FactsJSON string
	Capabilities           string // the hello's, space-separated
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
	was  string // the session's holder before this start ("" none)
	err  error
	done chan struct{}
}

// StartAgentSessionBatched is StartAgentSession committed together with
// the other session starts in flight (see sessionBatcher). A start whose
// batch fails is retried on its own, so one bad start fails only itself.
func (s *Store) StartAgentSessionBatched(ctx context.Context, st SessionStart) (bool, error) {
	ok, _, err := s.StartAgentSessionFrom(ctx, st)
	return ok, err
}

// StartAgentSessionFrom is StartAgentSessionBatched that also says which
// control plane held the server's session before this start took it (""
// none; this one's own id when its hub replaced its own session). Active
// control planes tell a previous holder elsewhere that its session was
// replaced (controlplane/cluster). A start that runs on its own after
// its batch failed reads the holder before its write, not atomically
// with it: a takeover racing it may be reported as none.
func (s *Store) StartAgentSessionFrom(ctx context.Context, st SessionStart) (ok bool, was string, err error) {
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
		return r.ok, r.was, r.err
	case <-ctx.Done():
		return false, "", ctx.Err()
	}
}

func (s *Store) runSessionBatch(batch []*sessionReq) {
	ctx, cancel := context.WithTimeout(context.Background(), sessionBatchTimeout)
	defer cancel()
	starts := make([]SessionStart, len(batch))
	for i, r := range batch {
		starts[i] = r.SessionStart
	}
	var oks []bool
	var was []string
	err := s.InTxRows(ctx, func(q *Queries) error {
		var err error
		oks, was, err = q.startAgentSessions(ctx, starts)
		return err
	})
	if err == nil {
		for i, r := range batch {
			r.ok, r.was = oks[i], was[i]
			close(r.done)
		}
		return
	}
	for _, r := range batch {
		q := s.Q()
		_ = q.x.QueryRowContext(ctx, `SELECT session_holder FROM servers WHERE id = ?`, r.ID).Scan(&r.was)
		r.ok, r.err = q.startAgentSession(ctx, r.SessionStart)
		close(r.done)
	}
}

// StartAgentSessions is StartAgentSession for several servers at once, in
// q's transaction: their states read (and on PostgreSQL locked), one
// UPDATE … FROM (VALUES …) RETURNING for all, and the server.online
// events of those that came back (AppendEvents): four statements for a
// batch, where StartAgentSession takes up to six round trips per
// server. oks[i] says whether starts[i]'s server is live (it exists
// and is neither deleted nor being deleted). The ids must be distinct: the hub
// starts one session per server at a time; a repeated one is refused.
func (q *Queries) StartAgentSessions(ctx context.Context, starts []SessionStart) ([]bool, error) {
	oks, _, err := q.startAgentSessions(ctx, starts)
	return oks, err
}

// startAgentSessions is StartAgentSessions that also returns each
// server's session holder before the start (was[i], "" none).
func (q *Queries) startAgentSessions(ctx context.Context, starts []SessionStart) (oks []bool, was []string, err error) {
	if q.appended == nil {
		return nil, nil, ErrNotInTx
	}
	oks, was = make([]bool, len(starts)), make([]string, len(starts))
	if len(starts) == 0 {
		return oks, was, nil
	}
	pg := q.st != nil && q.st.dialect == Postgres
	ids := make([]any, len(starts))
	seen := make(map[string]bool, len(starts))
	for i, st := range starts {
		if seen[st.ID] {
			return nil, nil, fmt.Errorf("start agent sessions: server %s twice in one batch", st.ID)
		}
		seen[st.ID] = true
		ids[i] = st.ID
	}
	marks := strings.TrimSuffix(strings.Repeat("?, ", len(starts)), ", ")
	// Locked in id order, as every multi-row writer of servers does, so
	// two of them never wait for each other (see InTxRows).
	sel := `SELECT id, state, session_holder FROM servers WHERE id IN (` + marks + `) ORDER BY id` + q.forUpdate()
	prev := make(map[string]string, len(starts))
	holders := make(map[string]string, len(starts))
	rows, err := q.x.QueryContext(ctx, sel, ids...)
	if err != nil {
		return nil, nil, err
	}
	for rows.Next() {
		var id, state, holder string
		if err := rows.Scan(&id, &state, &holder); err != nil {
			_ = rows.Close()
			return nil, nil, err
		}
		prev[id], holders[id] = state, holder
	}
	_ = rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}

	tuple := "(?, ?, ?, ?, ?)"
	if pg {
		tuple = "(?::text, ?::text, ?::text, ?::timestamptz, ?::text)" // VALUES parameters are untyped there
	}
	var b strings.Builder
	b.WriteString(`UPDATE servers SET agent_version = v.column2, facts_json = v.column3, last_seen_at = v.column4,
		installed_at = COALESCE(installed_at, v.column4),
		state = CASE WHEN state IN ('offline', 'agent_offline', 'unknown') THEN 'online' ELSE state END,
		updated_at = v.column4, session_holder = ?, session_started_at = v.column4, agent_capabilities = v.column5 FROM (VALUES `)
	args := make([]any, 0, 1+5*len(starts))
	args = append(args, q.self())
	for i, st := range starts {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(tuple)
		args = append(args, st.ID, st.Version, st.FactsJSON, st.At.UTC(), st.Capabilities)
	}
	b.WriteString(`) AS v WHERE servers.id = v.column1 AND servers.state NOT IN ('deleted', 'deleting')
		RETURNING servers.id, servers.workspace_id, servers.name, servers.state, servers.state_reason`)
	type moved struct{ ws, name, state, reason string }
	now := make(map[string]moved, len(starts))
	rows, err = q.x.QueryContext(ctx, b.String(), args...)
	if err != nil {
		return nil, nil, err
	}
	for rows.Next() {
		var id string
		var m moved
		if err := rows.Scan(&id, &m.ws, &m.name, &m.state, &m.reason); err != nil {
			_ = rows.Close()
			return nil, nil, err
		}
		now[id] = m
	}
	_ = rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}

	var evs []NewEvent
	for i, st := range starts {
		m, ok := now[st.ID]
		if !ok {
			continue // deleted, being deleted, or no such server
		}
		was[i] = holders[st.ID]
		before := prev[st.ID]
		oks[i] = true
		typ, isEvent := serverEventTypes[m.state]
		if isEvent && m.state != before {
			evs = append(evs, NewEvent{Workspace: m.ws, Type: typ, Subject: st.ID,
				Data: ServerEvent{Name: m.name, State: m.state, PreviousState: before, StateReason: m.reason}})
		}
	}
	return oks, was, q.AppendEvents(ctx, evs)
}
