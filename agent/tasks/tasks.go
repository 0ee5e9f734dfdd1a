// Package tasks runs the control plane's deployment tasks on the agent
// (exec, systemd, file, deploy; see shared/protocol/tasks.go), each id at
// most once.
//
// Exactly once: before a task id runs, a "started" line is appended to
// StateDir/tasks/journal.jsonl and fsync'ed; when it ends, its final
// TaskResult goes into a "finished" line (fsync'ed) after its log spool
// (StateDir/tasks/spool/<hash>.log, one TaskLog JSON per line, bounded by
// the output caps) was fsync'ed. A re-delivered id is never run again: a
// finished one gets its stored result (and log chunks after the last
// acked seq) again, a running one is ignored (it will report), and one
// the journal shows started by an earlier process but never finished is
// reported failed with reason agent_restarted as soon as the runner opens
// the journal. Results and unacked log chunks are resent from disk on
// every new session, and on a live session when no ack came for
// AckTimeout (doubling up to AckTimeoutMax: the hub sends no ack for what
// it failed to store), until a TaskAck with Final arrives; then the spool is
// deleted and an "acked" line keeps the id (and its result) for dedup.
// Entries (other than started ones) whose last event is older than
// Options.Retention are dropped when the journal is opened or compacted
// (every few thousand appended lines). The disk is the only buffer: nothing is queued in memory for a
// session that is down.
//
// Behaviour in detail:
//   - exec: argv without a shell, in its own process group, in Dir below
//     Root (default Root); env is the agent's minus DEVPILOT_AGENT_* plus
//     DEVPILOT_TASK_ID and the task's env; User needs an agent running as
//     root (else failed/unsupported). Output is coalesced for
//     FlushInterval into chunks of at most protocol.MaxLogChunkBytes, seq
//     from 1, capped at MaxOutputBytes (default 1 MiB) with a note on the
//     system stream and reason output_capped. Timeout (timeout_s:
//     timed_out, no reason), Deadline (timed_out, reason deadline),
//     cancel (canceled) and shutdown kill the whole group: SIGTERM, then
//     SIGKILL after KillGrace. A zero Deadline means none.
//   - file: Path must be absolute and is taken below Root (HostPath);
//     written atomically (temp file in the same dir, fsync, chmod, chown,
//     rename, fsync of the dir); missing parents are created 0755.
//   - systemd: over D-Bus; unsupported when Root is not "/", when the host
//     was not booted with systemd or D-Bus does not answer.
//   - deploy: steps in order, step boundaries on the system stream (Step
//     set), the first step that does not succeed decides the task's state,
//     later steps are "skipped".
//   - At most MaxConcurrent tasks run; the rest wait (unjournaled).
//
// The session calls HandleMessage for task, cancel and task_ack (on its
// reader goroutine: it never blocks on work or the network) and Serve for
// each session's lifetime; Serve is the only place that sends task_log and
// task_result, through the session's writer.
package tasks

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/agent/backoff"
	"github.com/devpilot/devpilot/shared/protocol"
)

// Defaults for Options.
const (
	DefaultMaxConcurrent  = 4
	DefaultKillGrace      = 5 * time.Second
	DefaultFlushInterval  = 75 * time.Millisecond
	DefaultRetention      = 7 * 24 * time.Hour
	DefaultMaxOutputBytes = 1 << 20
	DefaultAckTimeout     = 10 * time.Second
	DefaultAckTimeoutMax  = 2 * time.Minute
	maxErrorBytes         = 2048
)

// Options configure a Runner.
type Options struct {
	// StateDir is the agent's state directory; the journal and spools go
	// in StateDir/tasks (0700).
	StateDir string
	// Root is the agent's root dir ("" or "/": the host). File task paths
	// are taken below it, exec tasks without a dir start in it, and
	// systemd tasks are refused ("unsupported") unless it is "/".
	Root string
	Log  *zap.Logger
	// MaxConcurrent tasks run at once; more wait for a slot. Default 4.
	MaxConcurrent int
	// KillGrace is the wait between SIGTERM and SIGKILL to a process
	// group (timeout, deadline, cancel, shutdown). Default 5s.
	KillGrace time.Duration
	// FlushInterval coalesces small writes into one log chunk. Default 75ms.
	FlushInterval time.Duration
	// Retention drops finished journal entries older than this when the
	// journal is opened. Default 7 days.
	Retention time.Duration
	// Systemd connects to the system manager; default DBusSystemd (which
	// is ErrUnsupported when systemd or its D-Bus is absent).
	Systemd func(ctx context.Context) (UnitManager, error)
	// AckTimeout is how long the runner waits on a live session for the
	// hub to acknowledge what it sent (log chunks, a final result) before
	// it sends the unacknowledged part again; each further try waits twice
	// as long (with jitter), up to AckTimeoutMax. Default 10s and 2m.
	AckTimeout    time.Duration
	AckTimeoutMax time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Causes a task's context ends with.
var (
	errCanceled = errors.New("canceled by the control plane")
	errDeadline = errors.New("task deadline passed")
	errShutdown = errors.New("the agent stopped while the task was running")
	errTimeout  = errors.New("exec timeout")
)

// task is one id the runner knows and the hub has not finished with.
type task struct {
	id     string
	n      uint64 // arrival order
	spec   protocol.Task
	ctx    context.Context
	cancel context.CancelCauseFunc

	started bool // journaled as started (or finished without starting)
	final   bool
	result  protocol.TaskResult
	spool   *spool // nil when there are no logs to send
	acked   int64  // highest log seq the hub acknowledged

	// This session's send cursor.
	sentSeq   int64
	sentOff   int64
	sentState string

	// When the unacknowledged part is sent again on this session (zero:
	// nothing is outstanding), and how often that happened meanwhile.
	retryAt time.Time
	retries backoff.Backoff
}

func (t *task) resetCursor() {
	t.sentSeq, t.sentOff, t.sentState = t.acked, 0, ""
	t.retryAt = time.Time{}
}

// outstanding reports whether t sent something on this session the hub
// has not acknowledged: log chunks after acked, or its final result (a
// final task leaves the runner once acknowledged).
func (t *task) outstanding() bool {
	return t.sentSeq > t.acked || t.final && t.sentState == t.result.State
}

// armRetry schedules the next resend of t's unacknowledged part; r.mu is
// held. The wait doubles with each resend (equal jitter: at least half of
// it, so agents hit by one outage spread out but never retry at once).
func (r *Runner) armRetry(t *task) {
	t.retries.Base, t.retries.Cap = r.o.AckTimeout, r.o.AckTimeoutMax
	c := t.retries.Ceiling()
	t.retryAt = r.o.Now().Add(c/2 + time.Duration(rand.Float64()*float64(c/2)))
}

// Runner runs tasks. Create it with New, hand it to the session, and call
// Shutdown when the agent stops.
type Runner struct {
	o    Options
	log  *zap.Logger
	j    *journal
	sem  chan struct{}
	base context.Context
	stop context.CancelCauseFunc

	closing chan struct{}
	wg      sync.WaitGroup
	notify  chan struct{}

	mu     sync.Mutex
	closed bool
	n      uint64
	live   map[string]*task
	runs   int // executions started by this runner (tests)
}

// New opens the journal, reports tasks an earlier process left unfinished
// as failed (agent_restarted), and loads the results still to be sent.
func New(o Options) (*Runner, error) {
	if o.StateDir == "" {
		return nil, errors.New("tasks: no state dir")
	}
	if o.Root == "" {
		o.Root = "/"
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.MaxConcurrent <= 0 {
		o.MaxConcurrent = DefaultMaxConcurrent
	}
	if o.KillGrace <= 0 {
		o.KillGrace = DefaultKillGrace
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.Retention <= 0 {
		o.Retention = DefaultRetention
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = DefaultAckTimeout
	}
	if o.AckTimeoutMax < o.AckTimeout {
		o.AckTimeoutMax = max(DefaultAckTimeoutMax, o.AckTimeout)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	r := &Runner{
		o:       o,
		log:     o.Log,
		sem:     make(chan struct{}, o.MaxConcurrent),
		closing: make(chan struct{}),
		notify:  make(chan struct{}, 1),
		live:    map[string]*task{},
	}
	if r.o.Systemd == nil {
		r.o.Systemd = r.defaultSystemd
	}
	r.base, r.stop = context.WithCancelCause(context.Background())
	j, err := openJournal(StateDirTasks(o.StateDir), o.Now(), o.Retention)
	if err != nil {
		return nil, fmt.Errorf("tasks: %w", err)
	}
	r.j = j
	for _, id := range j.pending() {
		e, _ := j.get(id)
		t := &task{id: id, started: true, final: true}
		t.spool = recoverSpool(j.spoolPath(id))
		switch e.state {
		case evStarted:
			now := o.Now().UTC()
			t.result = protocol.TaskResult{TaskID: id, State: protocol.TaskFailed, Reason: protocol.ReasonAgentRestarted,
				Error: "the agent restarted while the task was running; it was not run again", StartedAt: e.at,
				FinishedAt: &now, LastLogSeq: t.spool.seq}
			if err := j.append(event{Ev: evFinished, ID: id, At: now, Kind: e.kind, Result: &t.result}); err != nil {
				j.close()
				return nil, fmt.Errorf("tasks: %w", err)
			}
			r.log.Warn("task was running when the agent stopped; reporting it failed", zap.String("task", id))
		case evFinished:
			t.result = *e.result
		}
		r.n++
		t.n = r.n
		r.live[id] = t
	}
	return r, nil
}

// StateDirTasks is where the runner keeps its files below a state dir.
func StateDirTasks(stateDir string) string { return stateDir + "/tasks" }

// Executions is how many tasks this runner started executing (for tests).
func (r *Runner) Executions() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.runs
}

// HandleMessage acts on a task, cancel or task_ack message. It does not
// block on the work or the network; it may fsync the journal (task_ack).
func (r *Runner) HandleMessage(env protocol.Envelope) {
	switch env.Type {
	case protocol.TypeTask:
		var t protocol.Task
		if err := protocol.DecodeData(env, &t); err != nil || t.ID == "" {
			r.log.Warn("ignoring undecodable task", zap.Error(err))
			return
		}
		r.accept(t)
	case protocol.TypeCancel:
		var c protocol.Cancel
		if err := protocol.DecodeData(env, &c); err != nil || c.TaskID == "" {
			r.log.Warn("ignoring undecodable cancel", zap.Error(err))
			return
		}
		r.cancelTask(c.TaskID)
	case protocol.TypeTaskAck:
		var a protocol.TaskAck
		if err := protocol.DecodeData(env, &a); err != nil || a.TaskID == "" {
			r.log.Warn("ignoring undecodable task_ack", zap.Error(err))
			return
		}
		r.ack(a)
	}
}

func (r *Runner) wake() {
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// accept starts a new task id, or answers a known one from the journal.
func (r *Runner) accept(spec protocol.Task) {
	r.mu.Lock()
	defer r.mu.Unlock()
	log := r.log.With(zap.String("task", spec.ID))
	if t, ok := r.live[spec.ID]; ok {
		if t.final {
			log.Info("task delivered again after it finished: resending its result")
			t.resetCursor()
			r.wake()
		} else {
			log.Info("task delivered again while it runs: ignored")
		}
		return
	}
	if e, ok := r.j.get(spec.ID); ok && e.result != nil {
		// Acked before (the spool is gone): its result again, no logs.
		log.Info("task delivered again after it was acknowledged: resending its result")
		r.n++
		r.live[spec.ID] = &task{id: spec.ID, n: r.n, started: true, final: true, result: *e.result}
		r.wake()
		return
	}
	if r.closed {
		log.Info("agent stopping: not taking the task (the control plane delivers it again)")
		return
	}
	r.start(spec, nil)
}

// start registers spec and starts its goroutine; r.mu is held. A non-nil
// cause ends the task before it runs.
func (r *Runner) start(spec protocol.Task, cause error) {
	ctx, cancel := context.WithCancelCause(r.base)
	if cause != nil {
		cancel(cause)
	}
	r.n++
	t := &task{id: spec.ID, n: r.n, spec: spec, ctx: ctx, cancel: cancel}
	r.live[spec.ID] = t
	r.wg.Add(1)
	go r.run(t)
}

func (r *Runner) cancelTask(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t, ok := r.live[id]; ok {
		if !t.final && t.cancel != nil {
			r.log.Info("canceling task", zap.String("task", id))
			t.cancel(errCanceled)
		}
		return
	}
	if _, ok := r.j.get(id); ok || r.closed {
		return
	}
	// Canceled before it arrived (lost with a session): record it
	// canceled so a late delivery does not run it.
	r.start(protocol.Task{ID: id}, errCanceled)
}

func (r *Runner) ack(a protocol.TaskAck) {
	r.mu.Lock()
	t, ok := r.live[a.TaskID]
	if !ok {
		r.mu.Unlock()
		return
	}
	if a.LogSeq > t.acked {
		t.acked = a.LogSeq
		t.retries.Reset() // the hub makes progress: wait afresh
		t.retryAt = time.Time{}
		if t.outstanding() {
			r.armRetry(t)
		}
	}
	if !a.Final {
		r.mu.Unlock()
		return
	}
	if !t.final {
		r.mu.Unlock()
		r.log.Warn("final ack for a task that is still running: ignored", zap.String("task", a.TaskID))
		return
	}
	delete(r.live, a.TaskID)
	sp := t.spool
	r.mu.Unlock()
	if e, ok := r.j.get(a.TaskID); ok && e.state == evAcked {
		return
	}
	if err := r.j.append(event{Ev: evAcked, ID: a.TaskID, At: r.o.Now().UTC()}); err != nil {
		r.log.Error("journal task ack", zap.String("task", a.TaskID), zap.Error(err))
	}
	if sp != nil {
		removeQuiet(sp.path)
	}
}

// Shutdown stops taking tasks, drops queued ones (never journaled, so the
// control plane delivers them again), and waits for running ones until ctx
// ends; then it kills what still runs (recorded failed, agent_restarted)
// and waits for that to be journaled. The runner is unusable afterwards.
func (r *Runner) Shutdown(ctx context.Context) {
	r.mu.Lock()
	if !r.closed {
		r.closed = true
		close(r.closing)
	}
	running := 0
	for _, t := range r.live {
		if !t.final {
			running++
		}
	}
	r.mu.Unlock()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	if running > 0 {
		r.log.Info("waiting for running tasks before stopping", zap.Int("tasks", running))
	}
	select {
	case <-done:
	case <-ctx.Done():
		r.log.Warn("tasks still running at shutdown: killing them")
		r.stop(errShutdown)
		<-done
	}
	r.stop(errShutdown)
	r.j.close()
}

// Serve sends, for one session, every result and log chunk the hub has not
// acknowledged, then new ones as they come, until ctx ends (nil) or send
// fails (its error). Per task the order is: running result, log chunks in
// seq order, final result.
func (r *Runner) Serve(ctx context.Context, send func(typ string, v any) error) error {
	r.mu.Lock()
	for _, t := range r.live {
		t.resetCursor()
	}
	r.mu.Unlock()
	for {
		r.mu.Lock()
		ts := make([]*task, 0, len(r.live))
		for _, t := range r.live {
			ts = append(ts, t)
		}
		r.mu.Unlock()
		slices.SortFunc(ts, func(a, b *task) int { return int(a.n) - int(b.n) })
		for _, t := range ts {
			if ctx.Err() != nil {
				return nil
			}
			if err := r.sendTask(ctx, t, send); err != nil {
				return err
			}
		}
		var timer <-chan time.Time
		var tm *time.Timer
		if d, ok := r.resendDue(); ok {
			tm = time.NewTimer(d)
			timer = tm.C
		}
		select {
		case <-ctx.Done():
		case <-r.notify:
		case <-timer:
		}
		if tm != nil {
			tm.Stop()
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// resendDue rewinds the send cursor of every task whose unacknowledged
// part waited its turn, so the next round sends it again on this session
// (the hub may have failed to store it: no ack came), and returns how long
// until the next task is due (false: none waits for an ack).
func (r *Runner) resendDue() (time.Duration, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.o.Now()
	var next time.Time
	for _, t := range r.live {
		if t.retryAt.IsZero() || !t.outstanding() {
			continue
		}
		if !now.Before(t.retryAt) {
			r.log.Info("no acknowledgement from the control plane: sending the task's unacknowledged output and result again",
				zap.String("task", t.id), zap.Int64("acked_seq", t.acked), zap.Int64("sent_seq", t.sentSeq),
				zap.Int("resends", t.retries.Attempt()+1))
			t.sentSeq, t.sentOff = t.acked, 0
			if t.final {
				t.sentState = ""
			}
			t.retries.Next()
			r.armRetry(t)
			r.wake()
		}
		if next.IsZero() || t.retryAt.Before(next) {
			next = t.retryAt
		}
	}
	if next.IsZero() {
		return 0, false
	}
	return max(next.Sub(now), 0), true
}

func (r *Runner) sendTask(ctx context.Context, t *task, send func(string, any) error) error {
	for ctx.Err() == nil {
		r.mu.Lock()
		if r.live[t.id] != t || !t.started {
			r.mu.Unlock()
			return nil
		}
		res, final, sentState, sentSeq, sentOff := t.result, t.final, t.sentState, t.sentSeq, t.sentOff
		var path string
		var size, seq int64
		if t.spool != nil {
			path, size, seq = t.spool.path, t.spool.size, t.spool.seq
		}
		r.mu.Unlock()

		switch {
		case !final && sentState == "":
			if err := send(protocol.TypeTaskResult, res); err != nil {
				return err
			}
			r.mu.Lock()
			t.sentState = res.State
			r.mu.Unlock()
		case sentSeq < seq:
			logs, ends, err := readChunks(path, sentOff, size, 16)
			if err != nil || len(logs) == 0 {
				if err != nil {
					r.log.Warn("cannot read task log spool", zap.String("task", t.id), zap.Error(err))
				}
				r.mu.Lock()
				t.sentSeq, t.sentOff = seq, size // skip what cannot be read
				r.mu.Unlock()
				continue
			}
			for i, l := range logs {
				if l.Seq > sentSeq {
					if err := send(protocol.TypeTaskLog, l); err != nil {
						return err
					}
					sentSeq = l.Seq
				}
				r.mu.Lock()
				t.sentSeq, t.sentOff = max(t.sentSeq, sentSeq), ends[i]
				if t.retryAt.IsZero() && t.outstanding() {
					r.armRetry(t)
				}
				r.mu.Unlock()
			}
		case final && sentState != res.State:
			if err := send(protocol.TypeTaskResult, res); err != nil {
				return err
			}
			r.mu.Lock()
			t.sentState = res.State
			if t.retryAt.IsZero() {
				r.armRetry(t)
			}
			r.mu.Unlock()
		default:
			return nil
		}
	}
	return nil
}

// appendLog adds a chunk to t's spool and wakes the sender.
func (r *Runner) appendLog(t *task, stream string, step int, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t.spool == nil {
		return
	}
	seq, err := t.spool.add(stream, step, data, t.id)
	if err != nil {
		r.log.Warn("cannot write task log spool", zap.String("task", t.id), zap.Error(err))
		return
	}
	t.result.LastLogSeq = seq
	r.wake()
}

// note adds a line on the system stream.
func (r *Runner) note(t *task, step int, format string, args ...any) {
	r.appendLog(t, protocol.StreamSystem, step, []byte(fmt.Sprintf(format, args...)+"\n"))
}

func trimError(s string) string {
	if len(s) > maxErrorBytes {
		return s[:maxErrorBytes] + "…"
	}
	return s
}
