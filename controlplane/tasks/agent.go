package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/hub"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/shared/protocol"
)

// HandleLog is the hub handler for task_log: it stores the chunk (once per
// seq) and acknowledges the highest contiguous seq received. It runs on
// the session's reader goroutine: it writes to the store and queues the
// ack, never waiting on the network.
func (s *Service) HandleLog(_ context.Context, serverID string, env protocol.Envelope) {
	var l protocol.TaskLog
	if err := protocol.DecodeData(env, &l); err != nil || l.TaskID == "" || l.Seq < 1 || len(l.Data) > protocol.MaxLogChunkBytes {
		s.log.Debug("bad task_log", zap.String("server", serverID), zap.Error(err))
		return
	}
	switch l.Stream {
	case protocol.StreamStdout, protocol.StreamStderr, protocol.StreamSystem:
	default:
		l.Stream = protocol.StreamSystem
	}
	var p store.LogProgress
	// Not the session's context: a chunk read off the wire is stored even
	// if the session ends meanwhile.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := s.store.InTxRows(ctx, func(q *store.Queries) error {
		var err error
		p, err = q.AddTaskLog(ctx, serverID, l.TaskID, store.TaskLog{Seq: l.Seq, Stream: l.Stream, Step: l.Step, Data: l.Data, At: s.now()}, s.o.MaxLogBytes)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		s.log.Debug("task_log for an unknown task", zap.String("server", serverID), zap.String("task", l.TaskID))
		return
	}
	if err != nil {
		// No ack: the agent resends from its last acknowledged seq.
		s.log.Warn("store task log", zap.String("task", l.TaskID), zap.Error(err))
		return
	}
	if p.Stored {
		s.notify(l.TaskID)
		if s.o.OnLogStored != nil {
			s.o.OnLogStored(l.TaskID, l.Seq)
		}
	}
	s.out.ack(serverID, protocol.TaskAck{TaskID: l.TaskID, LogSeq: p.LogSeq})
}

// HandleResult is the hub handler for task_result: running records the
// start; the first final result is recorded and later ones ignored; a
// final result is acknowledged (Final once every chunk up to its
// LastLogSeq is stored) so the agent can forget it.
func (s *Service) HandleResult(_ context.Context, serverID string, env protocol.Envelope) {
	var r protocol.TaskResult
	if err := protocol.DecodeData(env, &r); err != nil || r.TaskID == "" {
		s.log.Debug("bad task_result", zap.String("server", serverID), zap.Error(err))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	t, err := s.store.Q().GetTask(ctx, "", r.TaskID)
	if errors.Is(err, store.ErrNotFound) {
		// Nothing to record it in (e.g. a restored older database): let
		// the agent forget it.
		s.log.Info("result for an unknown task", zap.String("server", serverID), zap.String("task", r.TaskID))
		s.out.ack(serverID, protocol.TaskAck{TaskID: r.TaskID, Final: true})
		return
	}
	if err != nil {
		s.log.Warn("load task for result", zap.String("task", r.TaskID), zap.Error(err))
		return
	}
	if t.ServerID != serverID {
		s.log.Warn("agent reported on another server's task", zap.String("server", serverID), zap.String("task", r.TaskID))
		return
	}
	now := s.now().UTC()
	switch {
	case r.State == protocol.TaskRunning:
		started := r.StartedAt
		if started.IsZero() {
			started = now
		}
		ok, err := s.store.Q().MarkTaskRunning(ctx, r.TaskID, started, now)
		if err != nil {
			s.log.Warn("record task running", zap.String("task", r.TaskID), zap.Error(err))
			return
		}
		if ok {
			s.m.start.Observe(now.Sub(t.CreatedAt).Seconds())
			s.notify(r.TaskID)
		}
	case protocol.Final(r.State):
		res, _ := json.Marshal(result{SHA256: r.SHA256, Unit: r.Unit, Steps: r.Steps})
		if string(res) == "{}" {
			res = nil
		}
		fin := r.FinishedAt
		if fin == nil {
			fin = &now
		}
		var started *time.Time
		if !r.StartedAt.IsZero() {
			started = &r.StartedAt
		}
		ok, err := s.store.Q().FinishTask(ctx, store.Task{ID: r.TaskID, State: r.State, Reason: r.Reason, Error: trim(r.Error, 4096),
			ExitCode: r.ExitCode, ResultJSON: string(res), LastLogSeq: r.LastLogSeq, StartedAt: started, FinishedAt: fin, UpdatedAt: now})
		if err != nil {
			s.log.Warn("record task result", zap.String("task", r.TaskID), zap.Error(err))
			return // no ack: the agent resends it
		}
		if ok {
			s.log.Info("task finished", zap.String("task", r.TaskID), zap.String("server", serverID), zap.String("state", r.State),
				zap.String("reason", r.Reason))
			s.notify(r.TaskID)
			s.finished(t)
		}
		// Logs arrive before the result on the same session, so t's log
		// bookkeeping is current.
		complete := t.LogSeq >= r.LastLogSeq || t.LogTruncated
		s.out.ack(serverID, protocol.TaskAck{TaskID: r.TaskID, LogSeq: t.LogSeq, Final: complete})
	default:
		s.log.Debug("task_result with an unknown state", zap.String("task", r.TaskID), zap.String("state", r.State))
	}
}

func trim(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// --- outbox

// outbox delivers what the hub handlers and the sweeper must not wait for:
// acks (coalesced per task), cancels, and resends on a new session. Work
// for one server is done by one worker at a time, in order.
type outbox struct {
	s      *Service
	mu     sync.Mutex
	cond   *sync.Cond
	boxes  map[string]*box
	queue  []string
	closed bool
	wg     sync.WaitGroup
}

type box struct {
	resend  bool
	since   time.Time // the latest session start asking for a resend
	acks    map[string]protocol.TaskAck
	order   []string // ack task ids in arrival order
	cancels []string
	deliver []string
	queued  bool
	busy    bool
}

func newOutbox(s *Service) *outbox {
	o := &outbox{s: s, boxes: map[string]*box{}}
	o.cond = sync.NewCond(&o.mu)
	return o
}

func (o *outbox) start(n int) {
	for range n {
		o.wg.Add(1)
		go o.work()
	}
}

func (o *outbox) close() {
	o.mu.Lock()
	o.closed = true
	o.cond.Broadcast()
	o.mu.Unlock()
	o.wg.Wait()
}

// with runs fn on serverID's box and schedules it.
func (o *outbox) with(serverID string, fn func(b *box)) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return
	}
	b := o.boxes[serverID]
	if b == nil {
		b = &box{acks: map[string]protocol.TaskAck{}}
		o.boxes[serverID] = b
	}
	fn(b)
	if !b.queued && !b.busy {
		b.queued = true
		o.queue = append(o.queue, serverID)
		o.cond.Signal()
	}
}

func (o *outbox) ack(serverID string, a protocol.TaskAck) {
	o.with(serverID, func(b *box) {
		old, ok := b.acks[a.TaskID]
		if !ok {
			b.order = append(b.order, a.TaskID)
		}
		a.LogSeq = max(a.LogSeq, old.LogSeq)
		a.Final = a.Final || old.Final
		b.acks[a.TaskID] = a
	})
}

func (o *outbox) resend(serverID string, since time.Time) {
	o.with(serverID, func(b *box) {
		b.resend = true
		if since.After(b.since) {
			b.since = since
		}
	})
}

func (o *outbox) cancel(serverID, taskID string) {
	o.with(serverID, func(b *box) { b.cancels = append(b.cancels, taskID) })
}

func (o *outbox) send(serverID, taskID string) {
	o.with(serverID, func(b *box) { b.deliver = append(b.deliver, taskID) })
}

func (o *outbox) work() {
	defer o.wg.Done()
	for {
		o.mu.Lock()
		for len(o.queue) == 0 && !o.closed {
			o.cond.Wait()
		}
		if o.closed {
			o.mu.Unlock()
			return
		}
		id := o.queue[0]
		o.queue = o.queue[1:]
		b := o.boxes[id]
		b.queued, b.busy = false, true
		resend, since, cancels, deliver := b.resend, b.since, b.cancels, b.deliver
		acks := make([]protocol.TaskAck, 0, len(b.order))
		for _, t := range b.order {
			acks = append(acks, b.acks[t])
		}
		b.resend, b.cancels, b.deliver, b.order = false, nil, nil, nil
		clear(b.acks)
		o.mu.Unlock()

		o.run(id, resend, since, cancels, deliver, acks)

		o.mu.Lock()
		b.busy = false
		if b.resend || len(b.cancels) > 0 || len(b.deliver) > 0 || len(b.order) > 0 {
			b.queued = true
			o.queue = append(o.queue, id)
			o.cond.Signal()
		} else {
			delete(o.boxes, id)
		}
		o.mu.Unlock()
	}
}

func (o *outbox) run(serverID string, resend bool, since time.Time, cancels, deliver []string, acks []protocol.TaskAck) {
	s := o.s
	ctx := s.ctx
	for _, a := range acks {
		sctx, cancel := context.WithTimeout(ctx, s.o.SendTimeout)
		err := s.o.Hub.Send(sctx, serverID, protocol.TypeTaskAck, a)
		cancel()
		if errors.Is(err, hub.ErrNotConnected) {
			break // the agent resends; we ack then
		}
	}
	for _, id := range cancels {
		sctx, cancel := context.WithTimeout(ctx, s.o.SendTimeout)
		s.sendCancel(sctx, serverID, id)
		cancel()
	}
	if resend {
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		s.resendAll(sctx, serverID, since)
		cancel()
	}
	for _, id := range deliver {
		sctx, cancel := context.WithTimeout(ctx, s.o.SendTimeout)
		s.dispatch(sctx, serverID, id, time.Time{})
		cancel()
	}
}
