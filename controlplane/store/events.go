package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/devpilot/devpilot/controlplane/events"
)

// maxEventData bounds an event's payload: events are small summaries, and
// a payload that grows past this is a bug in its writer.
const maxEventData = 8 << 10

// ErrNotInTx is AppendEvent called outside Store.InTx.
var ErrNotInTx = errors.New("append event: not in a transaction (call it inside Store.InTx, beside the change it describes)")

// AppendEvent records an event in the caller's transaction (call it inside
// Store.InTx, beside the change it describes); data is marshalled to JSON.
// The id comes from the counter row event_ids, whose lock the transaction
// holds until it commits, so events become visible in id order. Once the
// transaction commits, the change feed tells TopicEvents.
func (q *Queries) AppendEvent(ctx context.Context, workspace, typ, subject string, data any) (int64, error) {
	if q.appended == nil {
		return 0, ErrNotInTx
	}
	if workspace == "" || typ == "" {
		return 0, fmt.Errorf("append event %q: workspace and type are required", typ)
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return 0, fmt.Errorf("append event %s: %w", typ, err)
	}
	if data == nil {
		raw = []byte("{}")
	}
	if len(raw) > maxEventData {
		return 0, fmt.Errorf("append event %s: payload of %d bytes is over %d", typ, len(raw), maxEventData)
	}
	var id int64
	if err := q.x.QueryRowContext(ctx, `UPDATE event_ids SET last_id = last_id + 1 WHERE id = 1 RETURNING last_id`).Scan(&id); err != nil {
		return 0, fmt.Errorf("append event %s: allocate id: %w", typ, err)
	}
	_, err = q.x.ExecContext(ctx, `INSERT INTO events (id, workspace_id, type, subject, at, data_json) VALUES (?, ?, ?, ?, ?, ?)`,
		id, workspace, typ, subject, time.Now().UTC().Truncate(time.Microsecond), string(raw))
	if err != nil {
		return 0, fmt.Errorf("append event %s: %w", typ, err)
	}
	*q.appended = append(*q.appended, typ)
	return id, nil
}

// NewEvent is one event for AppendEvents.
type NewEvent struct {
	Workspace, Type, Subject string
	Data                     any
}

// eventInsertRows is how many events one INSERT of AppendEvents writes
// (6 parameters each: SQLite allows 32,766 per statement).
const eventInsertRows = 500

// AppendEvents appends evs in order, as AppendEvent does each, in one id
// allocation and a multi-row INSERT per eventInsertRows: a start-up that
// turns 20,000 servers offline writes their events in a few statements
// instead of 40,000 round trips (on PostgreSQL, seconds of them).
func (q *Queries) AppendEvents(ctx context.Context, evs []NewEvent) error {
	if q.appended == nil {
		return ErrNotInTx
	}
	if len(evs) == 0 {
		return nil
	}
	raws := make([]string, len(evs))
	for i, e := range evs {
		if e.Workspace == "" || e.Type == "" {
			return fmt.Errorf("append event %q: workspace and type are required", e.Type)
		}
		raw, err := json.Marshal(e.Data)
		if err != nil {
			return fmt.Errorf("append event %s: %w", e.Type, err)
		}
		if e.Data == nil {
			raw = []byte("{}")
		}
		if len(raw) > maxEventData {
			return fmt.Errorf("append event %s: payload of %d bytes is over %d", e.Type, len(raw), maxEventData)
		}
		raws[i] = string(raw)
	}
	var last int64
	if err := q.x.QueryRowContext(ctx, `UPDATE event_ids SET last_id = last_id + ? WHERE id = 1 RETURNING last_id`, len(evs)).Scan(&last); err != nil {
		return fmt.Errorf("append %d events: allocate ids: %w", len(evs), err)
	}
	first := last - int64(len(evs)) + 1
	at := time.Now().UTC().Truncate(time.Microsecond)
	var b strings.Builder
	for start := 0; start < len(evs); start += eventInsertRows {
		chunk := evs[start:min(start+eventInsertRows, len(evs))]
		b.Reset()
		b.WriteString(`INSERT INTO events (id, workspace_id, type, subject, at, data_json) VALUES `)
		args := make([]any, 0, 6*len(chunk))
		for i, e := range chunk {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString("(?, ?, ?, ?, ?, ?)")
			args = append(args, first+int64(start+i), e.Workspace, e.Type, e.Subject, at, raws[start+i])
		}
		if _, err := q.x.ExecContext(ctx, b.String(), args...); err != nil {
			return fmt.Errorf("append %d events: %w", len(chunk), err)
		}
	}
	for _, e := range evs {
		*q.appended = append(*q.appended, e.Type)
	}
	return nil
}

// EventsAfter lists one workspace's events with id > after, oldest first.
// A negative limit means no limit.
func (q *Queries) EventsAfter(ctx context.Context, workspace string, after int64, limit int) ([]events.Event, error) {
	return q.listEvents(ctx, `SELECT id, workspace_id, type, subject, at, data_json FROM events
		WHERE workspace_id = ? AND id > ? ORDER BY id LIMIT ?`, workspace, after, lim(limit))
}

// EventsSince lists every workspace's events with id > after (webhook fan-out).
// A negative limit means no limit.
func (q *Queries) EventsSince(ctx context.Context, after int64, limit int) ([]events.Event, error) {
	return q.listEvents(ctx, `SELECT id, workspace_id, type, subject, at, data_json FROM events
		WHERE id > ? ORDER BY id LIMIT ?`, after, lim(limit))
}

// EventsBefore lists one workspace's events with id < before (0: the
// newest), newest first: the console's page and `devpilot events` without
// --after start from the most recent.
func (q *Queries) EventsBefore(ctx context.Context, workspace string, before int64, limit int) ([]events.Event, error) {
	if before <= 0 {
		before = 1<<63 - 1
	}
	return q.listEvents(ctx, `SELECT id, workspace_id, type, subject, at, data_json FROM events
		WHERE workspace_id = ? AND id < ? ORDER BY id DESC LIMIT ?`, workspace, before, lim(limit))
}

// PruneEvents deletes events written before cutoff and reports how many.
func (q *Queries) PruneEvents(ctx context.Context, cutoff time.Time) (int64, error) {
	res, err := q.x.ExecContext(ctx, `DELETE FROM events WHERE at < ?`, cutoff.UTC())
	if err != nil {
		return 0, fmt.Errorf("prune events: %w", err)
	}
	return res.RowsAffected()
}

func (q *Queries) listEvents(ctx context.Context, query string, args ...any) ([]events.Event, error) {
	rows, err := q.x.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []events.Event
	for rows.Next() {
		var e events.Event
		var data string
		if err := rows.Scan(&e.ID, &e.Workspace, &e.Type, &e.Subject, &e.Time, &data); err != nil {
			return nil, fmt.Errorf("list events: %w", err)
		}
		e.Time = e.Time.UTC()
		e.Data = json.RawMessage(data)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	return out, nil
}

func newEventsWritten() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "devpilot_events_written_total",
		Help: "Events this control plane appended to the event log (committed), by type.",
	}, []string{"type"})
}

// EventMetrics is devpilot_events_written_total, for the control plane's
// registry.
func (s *Store) EventMetrics() *prometheus.CounterVec { return s.written }

// TxMetrics is devpilot_store_tx_retries_total, for the control plane's
// registry.
func (s *Store) TxMetrics() prometheus.Counter { return s.txRetries }
