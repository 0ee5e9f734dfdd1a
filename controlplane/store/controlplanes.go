package store

import (
	"context"
	"database/sql"
	"slices"
	"strings"
	"time"

	"github.com/devpilot/devpilot/controlplane/events"
)

// SetSelf names this process in the agent sessions it starts
// (servers.session_holder) and in control_planes. Call it before the hub
// accepts agents; "" (the default) is a control plane with no name, which
// only a lone one may be.
func (s *Store) SetSelf(id string) { s.self = id }

// Self is the name SetSelf gave this process.
func (s *Store) Self() string { return s.self }

// BeatControlPlane records that control plane id is alive at at (its row
// created with started_at on the first beat).
func (q *Queries) BeatControlPlane(ctx context.Context, id string, at time.Time) error {
	_, err := q.x.ExecContext(ctx, `INSERT INTO control_planes (id, started_at, beat_at) VALUES (?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET beat_at = excluded.beat_at`, id, at.UTC(), at.UTC())
	return err
}

// LeaveControlPlanes deletes control plane id's row (a clean shutdown):
// the others know at once that it holds no session.
func (q *Queries) LeaveControlPlanes(ctx context.Context, id string) error {
	_, err := q.x.ExecContext(ctx, `DELETE FROM control_planes WHERE id = ?`, id)
	return err
}

// ControlPlane is one row of control_planes.
type ControlPlane struct {
	ID        string
	StartedAt time.Time
	BeatAt    time.Time
}

// ControlPlanes lists the control planes that beat after since, by id.
func (q *Queries) ControlPlanes(ctx context.Context, since time.Time) ([]ControlPlane, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT id, started_at, beat_at FROM control_planes WHERE beat_at > ? ORDER BY id`, since.UTC())
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []ControlPlane
	for rows.Next() {
		var c ControlPlane
		if err := rows.Scan(&c.ID, &c.StartedAt, &c.BeatAt); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, rows.Err()
}

// Session is where a server's agent session is held, as the database
// knows it, and what its hello said: what a control plane that does not
// hold it shows and decides on.
type Session struct {
	Holder       string     // the control plane holding it; "" none
	Alive        bool       // the holder beat after the cutoff SessionOf was given
	Since        *time.Time // the session's start
	LastSeen     *time.Time // the agent's last session start or health flush
	AgentVersion string
	Capabilities []string // the hello's
	FactsJSON    string   // the hello's facts (protocol.Facts)
	HealthJSON   string   // the latest health flushed ("" none)
}

// SessionOf says which control plane holds server id's agent session and
// whether it beat after alive (ErrNotFound if there is no such server).
func (q *Queries) SessionOf(ctx context.Context, id string, alive time.Time) (Session, error) {
	var s Session
	var since, last, healthAt, beat sql.NullTime
	var caps string
	var health sql.NullString
	err := q.x.QueryRowContext(ctx, `SELECT s.session_holder, s.session_started_at, s.last_seen_at, s.agent_version,
		s.agent_capabilities, s.facts_json, h.health_json, h.at, c.beat_at FROM servers s
		LEFT JOIN server_health_latest h ON h.server_id = s.id
		LEFT JOIN control_planes c ON c.id = s.session_holder WHERE s.id = ?`, id).
		Scan(&s.Holder, &since, &last, &s.AgentVersion, &caps, &s.FactsJSON, &health, &healthAt, &beat)
	if err != nil {
		return Session{}, one(err)
	}
	s.Since, s.LastSeen, s.HealthJSON = timePtr(since), laterOf(last, healthAt), health.String
	s.Capabilities = strings.Fields(caps)
	s.Alive = s.Holder != "" && beat.Valid && beat.Time.After(alive)
	return s, nil
}

// EndAgentSession records the end of this process's session of server
// id: the holder cleared, and an online server offline (with its event),
// unless another control plane took the session meanwhile (a reconnect
// that won the race): then nothing changes. It reports whether the
// session was still this process's.
func (q *Queries) EndAgentSession(ctx context.Context, id string, at time.Time) (bool, error) {
	var ok bool
	err := q.moveServer(ctx, id, func(q *Queries) error {
		var err error
		ok, err = changed(q.x.ExecContext(ctx, `UPDATE servers SET
			state = CASE WHEN state = 'online' THEN 'offline' ELSE state END, session_holder = '',
			updated_at = CASE WHEN state = 'online' THEN ? ELSE updated_at END
			WHERE id = ? AND session_holder = ?`, at.UTC(), id, q.self()))
		return err
	})
	return ok && err == nil, err
}

// self is the store's control plane name ("" outside a Store).
func (q *Queries) self() string {
	if q.st == nil {
		return ""
	}
	return q.st.self
}

// EndSessionsOf turns the online servers whose sessions the given control
// planes held offline (a control plane's own at its start, a dead one's
// after its beat went stale), holders cleared, with a server.offline event
// each; their control_planes rows are deleted, except this process's. It
// returns how many servers went offline.
func (q *Queries) EndSessionsOf(ctx context.Context, holders []string, at time.Time) (int, error) {
	if len(holders) == 0 {
		return 0, nil
	}
	n := 0
	err := q.atomically(ctx, func(q *Queries) error {
		args := []any{at.UTC()}
		for _, h := range holders {
			args = append(args, h)
		}
		marks := strings.TrimSuffix(strings.Repeat("?, ", len(holders)), ", ")
		rows, err := q.x.QueryContext(ctx, `UPDATE servers SET state = CASE WHEN state = 'online' THEN 'offline' ELSE state END,
			session_holder = '', updated_at = ? WHERE session_holder IN (`+marks+`)
			RETURNING id, workspace_id, name, state, state_reason`, args...)
		if err != nil {
			return err
		}
		var evs []NewEvent
		for rows.Next() {
			var id, ws, name, state, reason string
			if err := rows.Scan(&id, &ws, &name, &state, &reason); err != nil {
				_ = rows.Close()
				return err
			}
			if state != "offline" {
				continue // was not online: only the holder is cleared
			}
			evs = append(evs, NewEvent{Workspace: ws, Type: events.ServerOffline, Subject: id,
				Data: ServerEvent{Name: name, State: "offline", PreviousState: "online", StateReason: reason}})
		}
		_ = rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		n = len(evs)
		for _, h := range holders {
			if h == q.self() {
				continue
			}
			if _, err := q.x.ExecContext(ctx, `DELETE FROM control_planes WHERE id = ?`, h); err != nil {
				return err
			}
		}
		slices.SortFunc(evs, func(a, b NewEvent) int { return strings.Compare(a.Subject, b.Subject) })
		return q.AppendEvents(ctx, evs)
	})
	return n, err
}

// DeadHolders lists the control planes that hold agent sessions but beat
// last before cutoff (or have no row at all): their sessions are over.
// Sessions held by "" (none) or by self are not listed.
func (q *Queries) DeadHolders(ctx context.Context, cutoff time.Time) ([]string, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT DISTINCT s.session_holder FROM servers s
		LEFT JOIN control_planes c ON c.id = s.session_holder
		WHERE s.session_holder <> '' AND s.session_holder <> ? AND (c.id IS NULL OR c.beat_at <= ?)
		ORDER BY s.session_holder`, q.self(), cutoff.UTC())
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []string
	for rows.Next() {
		var h string
		if err := rows.Scan(&h); err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, rows.Err()
}

// HeldTask is a queued task of a server whose session a control plane holds.
type HeldTask struct{ ID, ServerID string }

// QueuedTasksHeld lists the tasks still queued, created before before, of
// the servers whose sessions holder holds, oldest first (at most limit):
// what a lost notification left undelivered.
func (q *Queries) QueuedTasksHeld(ctx context.Context, holder string, before time.Time, limit int) ([]HeldTask, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT t.id, t.server_id FROM tasks t JOIN servers s ON s.id = t.server_id
		WHERE s.session_holder = ? AND t.state = 'queued' AND t.created_at < ? ORDER BY t.created_at LIMIT ?`,
		holder, before.UTC(), lim(limit))
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []HeldTask
	for rows.Next() {
		var t HeldTask
		if err := rows.Scan(&t.ID, &t.ServerID); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}
