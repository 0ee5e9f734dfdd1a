package tasks

import (
	"context"
	"errors"
	"fmt"
	"os"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/shared/protocol"
)

// outcome is how one unit of work (a task or a deploy step) ended.
type outcome struct {
	state  string
	reason string
	err    string
	exit   *int
	sha256 string
	unit   *protocol.UnitStatus
}

func failed(reason, format string, args ...any) outcome {
	return outcome{state: protocol.TaskFailed, reason: reason, err: fmt.Sprintf(format, args...)}
}

// ended maps why ctx ended to an outcome; ok is false if it has not.
func ended(ctx context.Context) (outcome, bool) {
	if ctx.Err() == nil {
		return outcome{}, false
	}
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errCanceled):
		return outcome{state: protocol.TaskCanceled, reason: protocol.ReasonCanceled, err: cause.Error()}, true
	case errors.Is(cause, errDeadline):
		return outcome{state: protocol.TaskTimedOut, reason: protocol.ReasonDeadline, err: cause.Error()}, true
	case errors.Is(cause, errTimeout):
		return outcome{state: protocol.TaskTimedOut, err: cause.Error()}, true
	case errors.Is(cause, errShutdown):
		return outcome{state: protocol.TaskFailed, reason: protocol.ReasonAgentRestarted, err: cause.Error()}, true
	default:
		return outcome{state: protocol.TaskFailed, err: fmt.Sprint(cause)}, true
	}
}

// run is a task's goroutine: wait for a slot, journal, execute, journal.
func (r *Runner) run(t *task) {
	defer r.wg.Done()
	defer t.cancel(nil)
	log := r.log.With(zap.String("task", t.id), zap.String("kind", t.spec.Kind))
	ctx := t.ctx
	if !t.spec.Deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadlineCause(ctx, t.spec.Deadline, errDeadline)
		defer cancel()
	}

	// Queued: a cancel or a passed deadline ends it without running; a
	// shutdown drops it unjournaled.
	if o, done := ended(ctx); done {
		r.finishUnrun(t, o)
		return
	}
	select {
	case r.sem <- struct{}{}:
		defer func() { <-r.sem }()
	case <-ctx.Done():
		o, _ := ended(ctx)
		if o.reason == protocol.ReasonAgentRestarted {
			r.drop(t)
			return
		}
		r.finishUnrun(t, o)
		return
	case <-r.closing:
		r.drop(t)
		return
	}
	if o, done := ended(ctx); done {
		r.finishUnrun(t, o)
		return
	}

	now := r.o.Now().UTC()
	if err := r.j.append(event{Ev: evStarted, ID: t.id, At: now, Kind: t.spec.Kind}); err != nil {
		// Not journaled: running it could run it twice. Report, don't run.
		log.Error("cannot journal task start; not running it", zap.Error(err))
		r.finishUnrun(t, failed("", "the agent cannot write its task journal: %v", err))
		return
	}
	sp, err := createSpool(r.j.spoolPath(t.id))
	if err != nil {
		log.Warn("no log spool; output is dropped", zap.Error(err))
	}
	r.mu.Lock()
	r.runs++
	t.started = true
	t.spool = sp
	t.result = protocol.TaskResult{TaskID: t.id, State: protocol.TaskRunning, StartedAt: now}
	r.wake()
	r.mu.Unlock()
	log.Info("task started")

	var o outcome
	var steps []protocol.StepResult
	switch t.spec.Kind {
	case protocol.KindExec:
		o = r.runExec(ctx, t, 0, t.spec.Exec)
	case protocol.KindFile:
		o = r.runFile(ctx, t, 0, t.spec.File)
	case protocol.KindSystemd:
		o = r.runSystemd(ctx, t, 0, t.spec.Systemd)
	case protocol.KindDeploy:
		o, steps = r.runDeploy(ctx, t, t.spec.Deploy)
	default:
		o = failed(protocol.ReasonInvalid, "unknown task kind %q", t.spec.Kind)
	}
	r.finish(t, o, steps)
	log.Info("task finished", zap.String("state", o.state), zap.String("reason", o.reason))
}

// drop forgets a task that never started (shutdown while queued).
func (r *Runner) drop(t *task) {
	r.mu.Lock()
	if r.live[t.id] == t {
		delete(r.live, t.id)
	}
	r.mu.Unlock()
}

// finishUnrun records a final result for a task that never ran.
func (r *Runner) finishUnrun(t *task, o outcome) {
	r.mu.Lock()
	t.result = protocol.TaskResult{TaskID: t.id, StartedAt: r.o.Now().UTC()}
	r.mu.Unlock()
	r.finish(t, o, nil)
}

// finish fsyncs the spool, journals the final result and hands it to Serve.
func (r *Runner) finish(t *task, o outcome, steps []protocol.StepResult) {
	r.mu.Lock()
	if t.spool != nil {
		if err := t.spool.finish(); err != nil {
			r.log.Warn("task log spool", zap.String("task", t.id), zap.Error(err))
		}
	}
	now := r.o.Now().UTC()
	res := t.result
	res.State, res.Reason, res.Error = o.state, o.reason, trimError(o.err)
	res.ExitCode, res.SHA256, res.Unit, res.Steps = o.exit, o.sha256, o.unit, steps
	res.FinishedAt = &now
	if t.spool != nil {
		res.LastLogSeq = t.spool.seq
	}
	r.mu.Unlock()
	if err := r.j.append(event{Ev: evFinished, ID: t.id, At: now, Kind: t.spec.Kind, Result: &res}); err != nil {
		r.log.Error("cannot journal task result; it is sent but lost if the agent restarts", zap.String("task", t.id), zap.Error(err))
	}
	r.mu.Lock()
	t.result, t.final, t.started = res, true, true
	r.wake()
	r.mu.Unlock()
}

// runDeploy runs the steps in order, stopping at the first that does not
// succeed; the rest are skipped.
func (r *Runner) runDeploy(ctx context.Context, t *task, d *protocol.DeploySpec) (outcome, []protocol.StepResult) {
	if d == nil || len(d.Steps) == 0 {
		return failed(protocol.ReasonInvalid, "deploy task without steps"), nil
	}
	steps := make([]protocol.StepResult, len(d.Steps))
	var res outcome
	res.state = protocol.TaskSucceeded
	n := len(d.Steps)
	for i, s := range d.Steps {
		idx := i + 1
		steps[i] = protocol.StepResult{Name: s.Name, Kind: s.Kind, State: "skipped"}
		if res.state != protocol.TaskSucceeded {
			continue
		}
		label := fmt.Sprintf("step %d/%d", idx, n)
		if s.Name != "" {
			label += " (" + s.Name + ")"
		}
		r.note(t, idx, "%s: %s", label, s.Kind)
		var o outcome
		if done, ok := ended(ctx); ok {
			o = done
		} else {
			switch s.Kind {
			case protocol.KindExec:
				o = r.runExec(ctx, t, idx, s.Exec)
			case protocol.KindFile:
				o = r.runFile(ctx, t, idx, s.File)
			case protocol.KindSystemd:
				o = r.runSystemd(ctx, t, idx, s.Systemd)
			default:
				o = failed(protocol.ReasonInvalid, "step kind %q: want exec, systemd or file", s.Kind)
			}
		}
		steps[i] = protocol.StepResult{Name: s.Name, Kind: s.Kind, State: o.state, ExitCode: o.exit,
			Error: trimError(o.err), SHA256: o.sha256, Unit: o.unit}
		if o.state == protocol.TaskSucceeded {
			r.note(t, idx, "%s: succeeded", label)
			continue
		}
		r.note(t, idx, "%s: %s: %s", label, o.state, o.err)
		res = outcome{state: o.state, reason: o.reason, exit: o.exit,
			err: fmt.Sprintf("%s failed: %s", label, o.err)}
	}
	return res, steps
}

func removeQuiet(path string) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		_ = err
	}
}
