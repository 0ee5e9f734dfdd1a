package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"

	"github.com/devpilot/devpilot/controlplane/events"
)

// The store is where every server, task and deployment state is written,
// so it is where their events are appended: in the transaction of the
// write (a write made outside one gets its own), and only when the state
// actually changed.

// atomically runs fn in q's transaction, or in a new one when q runs
// outside any (Store.Q).
func (q *Queries) atomically(ctx context.Context, fn func(q *Queries) error) error {
	if q.appended != nil || q.st == nil {
		return fn(q)
	}
	// Each fn here is a conditional write (or a read locked with
	// forUpdate) and the events of what it wrote: row locks suffice.
	return q.st.InTxRows(ctx, fn)
}

// serverEventTypes maps the server states that are events to their type;
// provisioning, installing and deleting are steps on the way, not events.
var serverEventTypes = map[string]string{
	"online":        events.ServerOnline,
	"offline":       events.ServerOffline,
	"agent_offline": events.ServerAgentOffline,
	"stopped":       events.ServerStopped,
	"lost":          events.ServerLost,
	"unknown":       events.ServerUnknown,
	"failed":        events.ServerFailed,
	"deleted":       events.ServerDeleted,
}

// ServerEvent is the payload of a server.* event.
type ServerEvent struct {
	Name          string `json:"name"`
	State         string `json:"state"`
	PreviousState string `json:"previous_state,omitempty"`
	StateReason   string `json:"state_reason,omitempty"`
	// For server.failed: the failing step and its error (code, message).
	Step      string `json:"step,omitempty"`
	ErrorCode string `json:"error_code,omitempty"`
	Error     string `json:"error,omitempty"`
	// For server.created.
	Provider string `json:"provider,omitempty"`
	Region   string `json:"region,omitempty"`
	Size     string `json:"size,omitempty"`
}

// serverState reads a server's state ("" if there is no such server),
// locking its row until the transaction ends on PostgreSQL: a move decided
// on it cannot interleave with an InTxRows writer of the same row.
func (q *Queries) serverState(ctx context.Context, id string) (string, error) {
	var s string
	err := q.x.QueryRowContext(ctx, `SELECT state FROM servers WHERE id = ?`+q.forUpdate(), id).Scan(&s)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return s, err
}

// moveServer runs update (a write to server id's state) and appends the
// event of the move it made, if any: the state after differs from before
// and is one of serverEventTypes.
func (q *Queries) moveServer(ctx context.Context, id string, update func(q *Queries) error) error {
	return q.atomically(ctx, func(q *Queries) error {
		prev, err := q.serverState(ctx, id)
		if err != nil {
			return err
		}
		if err := update(q); err != nil {
			return err
		}
		return q.serverMoved(ctx, id, prev)
	})
}

// serverMoved appends the event of server id's move from prev to its
// current state, when that is a move to an event state.
func (q *Queries) serverMoved(ctx context.Context, id, prev string) error {
	var ws, name, state, reason, errJSON string
	err := q.x.QueryRowContext(ctx, `SELECT workspace_id, name, state, state_reason, error_json FROM servers WHERE id = ?`, id).
		Scan(&ws, &name, &state, &reason, &errJSON)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	typ, ok := serverEventTypes[state]
	if !ok || state == prev {
		return nil
	}
	e := ServerEvent{Name: name, State: state, PreviousState: prev, StateReason: reason}
	if state == "failed" {
		var se struct{ Step, Code, Message string }
		if json.Unmarshal([]byte(errJSON), &se) == nil {
			e.Step, e.ErrorCode, e.Error = se.Step, se.Code, se.Message
		}
	}
	_, err = q.AppendEvent(ctx, ws, typ, id, e)
	return err
}

// TaskEvent is the payload of a task.* event.
type TaskEvent struct {
	ServerID     string `json:"server_id"`
	Kind         string `json:"kind"`
	State        string `json:"state"`
	ExitCode     *int   `json:"exit_code"`
	Reason       string `json:"reason,omitempty"`
	DeploymentID string `json:"deployment_id,omitempty"`
}

var taskEventTypes = map[string]string{
	"succeeded": events.TaskSucceeded,
	"failed":    events.TaskFailed,
	"timed_out": events.TaskTimedOut,
	"canceled":  events.TaskCanceled,
}

func (q *Queries) taskFinished(ctx context.Context, id string) error {
	t, err := q.GetTask(ctx, "", id)
	if err != nil {
		return err
	}
	typ, ok := taskEventTypes[t.State]
	if !ok {
		return nil
	}
	_, err = q.AppendEvent(ctx, t.WorkspaceID, typ, t.ID, TaskEvent{ServerID: t.ServerID, Kind: t.Kind, State: t.State,
		ExitCode: t.ExitCode, Reason: t.Reason, DeploymentID: t.DeploymentID})
	return err
}

// DeploymentEvent is the payload of a deployment.* event.
type DeploymentEvent struct {
	State    string `json:"state"`
	Selector string `json:"selector,omitempty"`
	Targets  int    `json:"targets"`
}

func (q *Queries) deploymentFinished(ctx context.Context, id string) error {
	d, err := q.GetDeployment(ctx, "", id)
	if err != nil {
		return err
	}
	typ := events.DeploymentFinished
	if d.State != "succeeded" {
		typ = events.DeploymentFailed
	}
	var n int
	if err := q.x.QueryRowContext(ctx, `SELECT COUNT(*) FROM deployment_targets WHERE deployment_id = ?`, id).Scan(&n); err != nil {
		return err
	}
	_, err = q.AppendEvent(ctx, d.WorkspaceID, typ, d.ID, DeploymentEvent{State: d.State, Selector: d.Selector, Targets: n})
	return err
}
