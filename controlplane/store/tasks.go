package store

import (
	"context"
	"database/sql"
	"time"
)

// Task is a unit of work sent to one server's agent.
type Task struct {
	ID                string
	WorkspaceID       string
	ServerID          string
	DeploymentID      string
	Kind              string
	SpecJSON          string
	State             string
	Reason            string
	Error             string
	ExitCode          *int
	ResultJSON        string
	Attempts          int
	LogSeq            int64
	LogBytes          int64
	LogTruncated      bool
	LastLogSeq        int64
	CreatedBy         string
	CreatedAt         time.Time
	Deadline          time.Time
	SentAt            *time.Time // first written to an agent session
	LastSentAt        *time.Time // last written to an agent session
	StartedAt         *time.Time
	FinishedAt        *time.Time
	CancelRequestedAt *time.Time
	UpdatedAt         time.Time
}

// TaskLog is one stored output chunk.
type TaskLog struct {
	Seq    int64
	Stream string
	Step   int
	Data   []byte
	At     time.Time
}

// TaskFilter selects tasks to list.
type TaskFilter struct {
	ServerID     string
	DeploymentID string
	State        string
	After        *Cursor // (At, ID) of the last task of the previous page
	Limit        int
}

const taskCols = `id, workspace_id, server_id, deployment_id, kind, spec_json, state, reason, error, exit_code, result_json,
	attempts, log_seq, log_bytes, log_truncated, last_log_seq, created_by, created_at, deadline, sent_at, started_at,
	finished_at, cancel_requested_at, updated_at, last_sent_at`

func scanTask(sc interface{ Scan(...any) error }) (Task, error) {
	var t Task
	var exit sql.NullInt64
	var sent, lastSent, started, finished, cancel sql.NullTime
	err := sc.Scan(&t.ID, &t.WorkspaceID, &t.ServerID, &t.DeploymentID, &t.Kind, &t.SpecJSON, &t.State, &t.Reason, &t.Error,
		&exit, &t.ResultJSON, &t.Attempts, &t.LogSeq, &t.LogBytes, &t.LogTruncated, &t.LastLogSeq, &t.CreatedBy,
		&t.CreatedAt, &t.Deadline, &sent, &started, &finished, &cancel, &t.UpdatedAt, &lastSent)
	if exit.Valid {
		c := int(exit.Int64)
		t.ExitCode = &c
	}
	t.SentAt, t.StartedAt, t.FinishedAt, t.CancelRequestedAt = timePtr(sent), timePtr(started), timePtr(finished), timePtr(cancel)
	t.LastSentAt = timePtr(lastSent)
	return t, err
}

// CreateTask inserts a task.
func (q *Queries) CreateTask(ctx context.Context, t Task) error {
	_, err := q.x.ExecContext(ctx, `INSERT INTO tasks (`+taskCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		t.ID, t.WorkspaceID, t.ServerID, t.DeploymentID, t.Kind, t.SpecJSON, t.State, t.Reason, t.Error, nullInt(t.ExitCode),
		t.ResultJSON, t.Attempts, t.LogSeq, t.LogBytes, t.LogTruncated, t.LastLogSeq, t.CreatedBy, t.CreatedAt.UTC(),
		t.Deadline.UTC(), nullTime(t.SentAt), nullTime(t.StartedAt), nullTime(t.FinishedAt), nullTime(t.CancelRequestedAt),
		t.UpdatedAt.UTC(), nullTime(t.LastSentAt))
	if isUnique(err) {
		return ErrConflict
	}
	return err
}

func nullInt(p *int) sql.NullInt64 {
	if p == nil {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: int64(*p), Valid: true}
}

// GetTask finds a task (workspaceID "" matches any workspace).
func (q *Queries) GetTask(ctx context.Context, workspaceID, id string) (Task, error) {
	t, err := scanTask(q.x.QueryRowContext(ctx, `SELECT `+taskCols+` FROM tasks WHERE id = ? AND (? = '' OR workspace_id = ?)`,
		id, workspaceID, workspaceID))
	return t, one(err)
}

// ListTasks lists a workspace's tasks, newest first.
func (q *Queries) ListTasks(ctx context.Context, workspaceID string, f TaskFilter) ([]Task, error) {
	where, args := keyset([]string{"workspace_id = ?"}, []any{workspaceID}, f.After, "created_at", "id", true)
	if f.ServerID != "" {
		where, args = append(where, "server_id = ?"), append(args, f.ServerID)
	}
	if f.DeploymentID != "" {
		where, args = append(where, "deployment_id = ?"), append(args, f.DeploymentID)
	}
	if f.State != "" {
		where, args = append(where, "state = ?"), append(args, f.State)
	}
	if f.Limit <= 0 {
		f.Limit = 50
	}
	return q.tasks(ctx, `WHERE `+and(where)+` ORDER BY created_at DESC, id DESC LIMIT ?`, append(args, lim(f.Limit))...)
}

// SessionTasks is what a new agent session of server serverID is owed,
// in one read of its unfinished tasks (a handshake in a reconnect storm
// pays for every query): cancel, the tasks whose cancel was asked for;
// resend, the tasks the agent has not confirmed receiving (queued or
// sent) whose deadline is after now, oldest first, less those last sent
// at or after sentBefore (already delivered on the session that started
// then).
func (q *Queries) SessionTasks(ctx context.Context, serverID string, now, sentBefore time.Time) (cancel, resend []Task, err error) {
	ts, err := q.tasks(ctx, `WHERE server_id = ? AND state IN ('queued', 'sent', 'running') ORDER BY created_at, id`, serverID)
	if err != nil {
		return nil, nil, err
	}
	for _, t := range ts {
		if t.CancelRequestedAt != nil {
			cancel = append(cancel, t)
		}
		if (t.State == "queued" || t.State == "sent") && t.Deadline.After(now) &&
			(t.LastSentAt == nil || t.LastSentAt.Before(sentBefore)) {
			resend = append(resend, t)
		}
	}
	return cancel, resend, nil
}

// OverdueTasks lists unfinished tasks whose deadline is before t.
func (q *Queries) OverdueTasks(ctx context.Context, t time.Time, limit int) ([]Task, error) {
	var out []Task
	for _, st := range []string{"queued", "sent", "running"} {
		ts, err := q.tasks(ctx, `WHERE state = ? AND deadline < ? ORDER BY deadline LIMIT ?`, st, t.UTC(), limit)
		if err != nil {
			return nil, err
		}
		out = append(out, ts...)
	}
	return out, nil
}

func (q *Queries) tasks(ctx context.Context, where string, args ...any) ([]Task, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT `+taskCols+` FROM tasks `+where, args...)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []Task
	for rows.Next() {
		t, err := scanTask(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// MarkTaskSent records a delivery: attempts+1, and queued → sent. It
// reports false if the task is no longer queued, sent or running.
func (q *Queries) MarkTaskSent(ctx context.Context, id string, at time.Time) (bool, error) {
	res, err := q.x.ExecContext(ctx, `UPDATE tasks SET attempts = attempts + 1, sent_at = COALESCE(sent_at, ?), last_sent_at = ?,
		state = CASE WHEN state = 'queued' THEN 'sent' ELSE state END, updated_at = ?
		WHERE id = ? AND state IN ('queued', 'sent', 'running')`, at.UTC(), at.UTC(), at.UTC(), id)
	return changed(res, err)
}

// MarkTaskRunning records the agent's start: queued/sent → running.
func (q *Queries) MarkTaskRunning(ctx context.Context, id string, started, at time.Time) (bool, error) {
	res, err := q.x.ExecContext(ctx, `UPDATE tasks SET state = 'running', started_at = COALESCE(started_at, ?), updated_at = ?
		WHERE id = ? AND state IN ('queued', 'sent')`, started.UTC(), at.UTC(), id)
	return changed(res, err)
}

// FinishTask records a final state if the task has none yet (the first
// final result wins); it reports whether it did.
// Its task.* event is appended in the same transaction.
func (q *Queries) FinishTask(ctx context.Context, t Task) (bool, error) {
	var ok bool
	err := q.atomically(ctx, func(q *Queries) error {
		var err error
		ok, err = changed(q.x.ExecContext(ctx, `UPDATE tasks SET state = ?, reason = ?, error = ?, exit_code = ?, result_json = ?,
		last_log_seq = CASE WHEN last_log_seq > ? THEN last_log_seq ELSE ? END, started_at = COALESCE(started_at, ?), finished_at = ?, updated_at = ?
		WHERE id = ? AND state IN ('queued', 'sent', 'running')`,
			t.State, t.Reason, t.Error, nullInt(t.ExitCode), t.ResultJSON, t.LastLogSeq, t.LastLogSeq, nullTime(t.StartedAt),
			nullTime(t.FinishedAt), t.UpdatedAt.UTC(), t.ID))
		if err != nil || !ok {
			return err
		}
		return q.taskFinished(ctx, t.ID)
	})
	return ok && err == nil, err
}

// RequestCancel records that a cancel was asked for an unfinished task.
func (q *Queries) RequestCancel(ctx context.Context, id string, at time.Time) (bool, error) {
	res, err := q.x.ExecContext(ctx, `UPDATE tasks SET cancel_requested_at = COALESCE(cancel_requested_at, ?), updated_at = ?
		WHERE id = ? AND state IN ('queued', 'sent', 'running')`, at.UTC(), at.UTC(), id)
	return changed(res, err)
}

func changed(res sql.Result, err error) (bool, error) {
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// LogProgress is a task's log bookkeeping after a chunk.
type LogProgress struct {
	ServerID  string
	LogSeq    int64 // highest contiguous seq received
	Truncated bool
	Stored    bool // this chunk was new and kept
}

// AddTaskLog stores a chunk idempotently by (task, seq) unless the task's
// stored output would pass maxBytes (then it only counts as received and
// the task is marked truncated), and advances the contiguous seq. Run it
// in a transaction (InTxRows will do: it locks the task's row). ErrNotFound if the task does not exist or is not
// serverID's.
func (q *Queries) AddTaskLog(ctx context.Context, serverID, taskID string, l TaskLog, maxBytes int64) (LogProgress, error) {
	var p LogProgress
	var bytes int64
	err := q.x.QueryRowContext(ctx, `SELECT server_id, log_seq, log_bytes, log_truncated FROM tasks WHERE id = ? AND server_id = ?`+q.forUpdate(),
		taskID, serverID).Scan(&p.ServerID, &p.LogSeq, &bytes, &p.Truncated)
	if err != nil {
		return p, one(err)
	}
	if l.Seq <= p.LogSeq {
		return p, nil // a duplicate of what is stored (or counted) already
	}
	if bytes+int64(len(l.Data)) > maxBytes {
		if !p.Truncated {
			p.Truncated = true
			if _, err := q.x.ExecContext(ctx, `UPDATE tasks SET log_truncated = TRUE WHERE id = ?`, taskID); err != nil {
				return p, err
			}
		}
		if l.Seq != p.LogSeq+1 {
			return p, nil // out of order and not kept: the agent resends it after our ack
		}
	} else {
		res, err := q.x.ExecContext(ctx, `INSERT INTO task_logs (task_id, seq, stream, step, data, at) VALUES (?, ?, ?, ?, ?, ?)
			ON CONFLICT (task_id, seq) DO NOTHING`, taskID, l.Seq, l.Stream, l.Step, l.Data, l.At.UTC())
		if p.Stored, err = changed(res, err); err != nil {
			return p, err
		}
		if p.Stored {
			bytes += int64(len(l.Data))
		}
	}
	if l.Seq == p.LogSeq+1 {
		p.LogSeq = l.Seq
		// Chunks that arrived ahead of a gap now follow on.
		rows, err := q.x.QueryContext(ctx, `SELECT seq FROM task_logs WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT 10000`, taskID, p.LogSeq)
		if err != nil {
			return p, err
		}
		for rows.Next() {
			var s int64
			if err := rows.Scan(&s); err != nil {
				_ = rows.Close()
				return p, err
			}
			if s != p.LogSeq+1 {
				break
			}
			p.LogSeq = s
		}
		_ = rows.Close()
		if err := rows.Err(); err != nil {
			return p, err
		}
	}
	_, err = q.x.ExecContext(ctx, `UPDATE tasks SET log_seq = ?, log_bytes = ? WHERE id = ?`, p.LogSeq, bytes, taskID)
	return p, err
}

// TaskLogs returns a task's stored chunks after seq `after`, in order, at
// most limit chunks and (beyond the first) about maxBytes of data.
func (q *Queries) TaskLogs(ctx context.Context, taskID string, after int64, limit int, maxBytes int) ([]TaskLog, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT seq, stream, step, data, at FROM task_logs WHERE task_id = ? AND seq > ?
		ORDER BY seq LIMIT ?`, taskID, after, limit)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []TaskLog
	size := 0
	for rows.Next() {
		var l TaskLog
		if err := rows.Scan(&l.Seq, &l.Stream, &l.Step, &l.Data, &l.At); err != nil {
			return nil, err
		}
		out = append(out, l)
		if size += len(l.Data); size >= maxBytes {
			break
		}
	}
	return out, rows.Err()
}

// --- deployments

// Deployment is a rolling deploy across servers.
type Deployment struct {
	ID          string
	WorkspaceID string
	State       string
	Selector    string
	MaxParallel int
	DeadlineS   int
	PlanJSON    string
	Error       string
	CreatedBy   string
	CreatedAt   time.Time
	FinishedAt  *time.Time
	UpdatedAt   time.Time
}

// DeploymentTarget is one server of a deployment.
type DeploymentTarget struct {
	Position int
	ServerID string
	Batch    int
	TaskID   string
	Skipped  bool
	Phase    int    // index of the plan phase it is in
	ActionID string // the ports action of its current firewall phase
	Error    string // why a firewall phase failed
}

const deploymentCols = `id, workspace_id, state, selector, max_parallel, deadline_s, plan_json, error, created_by, created_at, finished_at, updated_at`

func scanDeployment(sc interface{ Scan(...any) error }) (Deployment, error) {
	var d Deployment
	var fin sql.NullTime
	err := sc.Scan(&d.ID, &d.WorkspaceID, &d.State, &d.Selector, &d.MaxParallel, &d.DeadlineS, &d.PlanJSON, &d.Error,
		&d.CreatedBy, &d.CreatedAt, &fin, &d.UpdatedAt)
	d.FinishedAt = timePtr(fin)
	return d, err
}

// CreateDeployment inserts a deployment and its targets.
func (q *Queries) CreateDeployment(ctx context.Context, d Deployment, targets []DeploymentTarget) error {
	_, err := q.x.ExecContext(ctx, `INSERT INTO deployments (`+deploymentCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		d.ID, d.WorkspaceID, d.State, d.Selector, d.MaxParallel, d.DeadlineS, d.PlanJSON, d.Error, d.CreatedBy,
		d.CreatedAt.UTC(), nullTime(d.FinishedAt), d.UpdatedAt.UTC())
	if err != nil {
		return err
	}
	for _, t := range targets {
		if _, err := q.x.ExecContext(ctx, `INSERT INTO deployment_targets (deployment_id, position, server_id, batch, task_id, skipped)
			VALUES (?, ?, ?, ?, ?, ?)`, d.ID, t.Position, t.ServerID, t.Batch, t.TaskID, t.Skipped); err != nil {
			return err
		}
	}
	return nil
}

// GetDeployment finds a deployment (workspaceID "" matches any).
func (q *Queries) GetDeployment(ctx context.Context, workspaceID, id string) (Deployment, error) {
	d, err := scanDeployment(q.x.QueryRowContext(ctx, `SELECT `+deploymentCols+` FROM deployments WHERE id = ? AND (? = '' OR workspace_id = ?)`,
		id, workspaceID, workspaceID))
	return d, one(err)
}

// ListDeployments lists a workspace's deployments, newest first, after
// the cursor (At, ID; nil: from the newest).
func (q *Queries) ListDeployments(ctx context.Context, workspaceID string, after *Cursor, limit int) ([]Deployment, error) {
	where, args := keyset([]string{"workspace_id = ?"}, []any{workspaceID}, after, "created_at", "id", true)
	return q.deployments(ctx, `WHERE `+and(where)+` ORDER BY created_at DESC, id DESC LIMIT ?`, append(args, lim(limit))...)
}

// RunningDeployments lists every unfinished deployment.
func (q *Queries) RunningDeployments(ctx context.Context) ([]Deployment, error) {
	return q.deployments(ctx, `WHERE state = 'running' ORDER BY created_at`)
}

func (q *Queries) deployments(ctx context.Context, where string, args ...any) ([]Deployment, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT `+deploymentCols+` FROM deployments `+where, args...)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []Deployment
	for rows.Next() {
		d, err := scanDeployment(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// DeploymentTargets lists a deployment's targets in order.
func (q *Queries) DeploymentTargets(ctx context.Context, deploymentID string) ([]DeploymentTarget, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT position, server_id, batch, task_id, skipped, phase, action_id, error FROM deployment_targets
		WHERE deployment_id = ? ORDER BY position`, deploymentID)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []DeploymentTarget
	for rows.Next() {
		var t DeploymentTarget
		if err := rows.Scan(&t.Position, &t.ServerID, &t.Batch, &t.TaskID, &t.Skipped, &t.Phase, &t.ActionID, &t.Error); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, rows.Err()
}

// SetTargetTask records the task started for a target in its phase;
// ErrConflict if the phase has one already (another control plane started
// the batch: the caller's transaction must roll back).
func (q *Queries) SetTargetTask(ctx context.Context, deploymentID string, position int, taskID string) error {
	n, err := rowsAffected(q.x.ExecContext(ctx, `UPDATE deployment_targets SET task_id = ? WHERE deployment_id = ? AND position = ? AND task_id = ''`,
		taskID, deploymentID, position))
	if err == nil && n == 0 {
		return ErrConflict
	}
	return err
}

// SetTargetPhase moves a target from phase `from` to phase `to`, with its
// task id (kept, or ” for a new deploy phase); false if it was not in
// phase from (another control plane moved it).
func (q *Queries) SetTargetPhase(ctx context.Context, deploymentID string, position, from, to int, taskID string) (bool, error) {
	res, err := q.x.ExecContext(ctx, `UPDATE deployment_targets SET phase = ?, task_id = ?, action_id = ''
		WHERE deployment_id = ? AND position = ? AND phase = ?`, to, taskID, deploymentID, position, from)
	return changed(res, err)
}

// ClaimTargetAction records the ports action id a target's firewall phase
// will start, before it is started; false if the phase already has one.
func (q *Queries) ClaimTargetAction(ctx context.Context, deploymentID string, position, phase int, actionID string) (bool, error) {
	res, err := q.x.ExecContext(ctx, `UPDATE deployment_targets SET action_id = ?
		WHERE deployment_id = ? AND position = ? AND phase = ? AND action_id = ''`, actionID, deploymentID, position, phase)
	return changed(res, err)
}

// FailTarget records why a target's firewall phase failed.
func (q *Queries) FailTarget(ctx context.Context, deploymentID string, position int, errText string) error {
	return affected(q.x.ExecContext(ctx, `UPDATE deployment_targets SET error = ? WHERE deployment_id = ? AND position = ?`,
		errText, deploymentID, position))
}

// SkipTargets marks every target that has not started skipped.
func (q *Queries) SkipTargets(ctx context.Context, deploymentID string) error {
	_, err := q.x.ExecContext(ctx, `UPDATE deployment_targets SET skipped = TRUE
		WHERE deployment_id = ? AND task_id = '' AND phase = 0 AND action_id = '' AND error = ''`, deploymentID)
	return err
}

// FinishDeployment moves a running deployment to a final state, with its
// deployment.finished or deployment.failed event.
func (q *Queries) FinishDeployment(ctx context.Context, id, state, errText string, at time.Time) (bool, error) {
	var ok bool
	err := q.atomically(ctx, func(q *Queries) error {
		var err error
		ok, err = changed(q.x.ExecContext(ctx, `UPDATE deployments SET state = ?, error = ?, finished_at = ?, updated_at = ?
		WHERE id = ? AND state = 'running'`, state, errText, at.UTC(), at.UTC(), id))
		if err != nil || !ok {
			return err
		}
		return q.deploymentFinished(ctx, id)
	})
	return ok && err == nil, err
}
