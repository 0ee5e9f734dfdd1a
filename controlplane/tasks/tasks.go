// Package tasks sends work to servers' agents and keeps its durable record:
// a task is stored queued, sent when its agent is connected (and again on
// every new session until the agent confirms it), and finished by the first
// final result the agent reports. The agent journals task ids and never
// runs one twice, so delivery is at least once on the wire and execution
// once. Output arrives in numbered chunks stored idempotently by (task,
// seq) and acknowledged with the highest contiguous seq. A background loop
// times out tasks past their deadline, and deployments roll a deploy task
// across servers in batches.
package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"hash/fnv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/hub"
	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/provision"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/shared/protocol"
)

// Sender delivers a message to a server's agent; *hub.Hub implements it.
// It returns an error wrapping hub.ErrNotConnected when the server has no
// live session.
type Sender interface {
	Send(ctx context.Context, serverID, typ string, payload any) error
}

// Defaults for Options.
const (
	DefaultSweepInterval = 5 * time.Second
	DefaultDeadlineGrace = 15 * time.Second
	DefaultMaxLogBytes   = 8 << 20
	DefaultSendTimeout   = 10 * time.Second
	DefaultHeartbeat     = 15 * time.Second
)

// Options configure a Service.
type Options struct {
	Store *store.Store // required
	Hub   Sender       // required
	// Keys encrypts task specs at rest (environment values and file
	// contents may be secrets); required.
	Keys *secrets.Keyring
	// Actions runs a deployment's firewall steps as the server's ports
	// lifecycle action (provision.Service); nil: plans with firewall steps
	// are refused.
	Actions Actions
	// OnChange is told of every change of a task here (output, state), so
	// other control planes' followers can wake (controlplane/cluster).
	OnChange func(taskID string)
	Logger   *zap.Logger
	Now      func() time.Time
	// SweepInterval is how often overdue tasks are looked for.
	SweepInterval time.Duration
	// DeadlineGrace is how long after its deadline an unfinished task is
	// marked timed_out by the control plane (the agent, which kills the
	// work at the deadline, usually reports first).
	DeadlineGrace time.Duration
	// MaxLogBytes bounds the output stored per task; later chunks are
	// counted as received but dropped, and the task is marked truncated.
	MaxLogBytes int64
	// SendTimeout bounds one message write to an agent.
	SendTimeout time.Duration
	// Heartbeat is the interval of keep-alive comments on followed logs.
	Heartbeat time.Duration
	// Workers is how many goroutines deliver tasks, cancels and acks; default 4.
	Workers int
	// OnLogStored, if set, is called after a new output chunk was stored
	// (on the agent session's goroutine: keep it quick).
	OnLogStored func(taskID string, seq int64)
	// Registerer receives the task metrics; nil keeps them unexported.
	Registerer prometheus.Registerer
}

// Service runs tasks and deployments. Create it with New, register
// HandleLog/HandleResult with the hub, call AgentConnected on every agent
// session start, Start it, and Close it on shutdown.
type Service struct {
	o     Options
	store *store.Store
	log   *zap.Logger
	now   func() time.Time
	out   *outbox
	m     *metrics

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	stripes [256]sync.Mutex // per server: dispatch vs cancel

	nmu     sync.Mutex
	waiters map[string]chan struct{} // closed when the task changes

	depMu   sync.Mutex        // one deployment advance at a time
	kmu     sync.Mutex        // guards kicked
	kicked  map[string]bool   // deployments to advance
	waitFor map[string]string // ports action id -> the deployment waiting on it
	kickSig chan struct{}
	started bool
}

// Actions starts lifecycle actions under a chosen id: if an action with
// that id exists on the server, it is returned as it stands.
type Actions interface {
	StartActionID(ctx context.Context, id, actor, workspaceID, serverID string, req apitypes.ActionRequest) (*apitypes.Action, error)
}

// New returns a Service; Start runs its background work.
func New(o Options) *Service {
	if o.Store == nil || o.Hub == nil {
		panic("tasks: Options.Store and Options.Hub are required")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.SweepInterval <= 0 {
		o.SweepInterval = DefaultSweepInterval
	}
	if o.DeadlineGrace <= 0 {
		o.DeadlineGrace = DefaultDeadlineGrace
	}
	if o.MaxLogBytes <= 0 {
		o.MaxLogBytes = DefaultMaxLogBytes
	}
	if o.SendTimeout <= 0 {
		o.SendTimeout = DefaultSendTimeout
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.Workers <= 0 {
		o.Workers = 4
	}
	s := &Service{o: o, store: o.Store, log: o.Logger.Named("tasks"), now: o.Now,
		waiters: map[string]chan struct{}{}, kicked: map[string]bool{}, waitFor: map[string]string{}, kickSig: make(chan struct{}, 1)}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.out = newOutbox(s)
	s.m = newMetrics(o.Registerer)
	return s
}

// Start resumes unfinished deployments and starts the delivery workers,
// the deadline sweeper and the deployment runner.
func (s *Service) Start(ctx context.Context) error {
	ds, err := s.store.Q().RunningDeployments(ctx)
	if err != nil {
		return fmt.Errorf("resume deployments: %w", err)
	}
	s.started = true
	s.out.start(s.o.Workers)
	s.wg.Add(2)
	go s.sweepLoop()
	go s.deployLoop()
	for _, d := range ds {
		s.kick(d.ID)
	}
	return nil
}

// Close stops the background work and ends log followers. Tasks in flight
// stay recorded; they are resent when their agents reconnect.
func (s *Service) Close() {
	s.cancel()
	s.out.close()
	s.wg.Wait()
}

// --- views

// Task is what the API shows of a task.
type Task struct {
	ID                string
	ServerID          string
	DeploymentID      string
	Kind              string
	State             string
	Reason            string
	Error             string
	ExitCode          *int
	Attempts          int
	CreatedBy         string
	CreatedAt         time.Time
	Deadline          time.Time
	SentAt            *time.Time
	StartedAt         *time.Time
	FinishedAt        *time.Time
	CancelRequestedAt *time.Time
	SHA256            string
	Unit              *protocol.UnitStatus
	Steps             []protocol.StepResult
	Log               LogInfo
	Spec              protocol.Task // env values and file contents redacted
}

// LogInfo summarises a task's stored output.
type LogInfo struct {
	Seq       int64 // highest contiguous chunk received
	Bytes     int64 // stored
	Truncated bool
}

// result is what result_json keeps.
type result struct {
	SHA256 string                `json:"sha256,omitempty"`
	Unit   *protocol.UnitStatus  `json:"unit,omitempty"`
	Steps  []protocol.StepResult `json:"steps,omitempty"`
}

// seal encrypts a spec for the store, the record id as associated data.
func (s *Service) seal(v any, recordID string) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", err
	}
	ct, err := s.o.Keys.Encrypt(secrets.New(string(b)), recordID)
	if err != nil {
		return "", fmt.Errorf("encrypt spec: %w", err)
	}
	return ct, nil
}

// unseal decrypts a stored spec into v.
func (s *Service) unseal(ct, recordID string, v any) error {
	pt, err := s.o.Keys.Decrypt(ct, recordID)
	if err != nil {
		return fmt.Errorf("decrypt spec of %s: %w", recordID, err)
	}
	return json.Unmarshal([]byte(pt.Reveal()), v)
}

func (s *Service) view(t store.Task) *Task {
	v := &Task{ID: t.ID, ServerID: t.ServerID, DeploymentID: t.DeploymentID, Kind: t.Kind, State: t.State, Reason: t.Reason,
		Error: t.Error, ExitCode: t.ExitCode, Attempts: t.Attempts, CreatedBy: t.CreatedBy, CreatedAt: t.CreatedAt,
		Deadline: t.Deadline, SentAt: t.SentAt, StartedAt: t.StartedAt, FinishedAt: t.FinishedAt,
		CancelRequestedAt: t.CancelRequestedAt, Log: LogInfo{Seq: t.LogSeq, Bytes: t.LogBytes, Truncated: t.LogTruncated}}
	if t.ResultJSON != "" {
		var r result
		_ = json.Unmarshal([]byte(t.ResultJSON), &r)
		v.SHA256, v.Unit, v.Steps = r.SHA256, r.Unit, r.Steps
	}
	if err := s.unseal(t.SpecJSON, t.ID, &v.Spec); err != nil {
		s.log.Error("stored task spec unreadable", zap.String("task", t.ID), zap.Error(err))
	}
	v.Spec = redact(v.Spec)
	return v
}

// redact hides what may be secret in a task's spec: environment values
// and file contents.
func redact(t protocol.Task) protocol.Task {
	rx := func(e *protocol.ExecSpec) {
		if e == nil || len(e.Env) == 0 {
			return
		}
		env := make(map[string]string, len(e.Env))
		for k := range e.Env {
			env[k] = "(redacted)"
		}
		e.Env = env
	}
	rf := func(f *protocol.FileSpec) {
		if f != nil {
			f.ContentBase64 = ""
		}
	}
	rx(t.Exec)
	rf(t.File)
	if t.Deploy != nil {
		for i := range t.Deploy.Steps {
			rx(t.Deploy.Steps[i].Exec)
			rf(t.Deploy.Steps[i].File)
		}
	}
	return t
}

// --- requests

// Create stores a task for a server and, if its agent is connected, sends
// it. A task for an offline server waits until its agent returns (or its
// deadline passes).
func (s *Service) Create(ctx context.Context, actor, workspaceID, serverID string, spec Spec) (*Task, error) {
	if _, err := s.server(ctx, workspaceID, serverID); err != nil {
		return nil, err
	}
	pt, err := spec.Build()
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	dl, err := deadline(now, spec.DeadlineS)
	if err != nil {
		return nil, err
	}
	pt.ID, pt.Deadline = ids.New("task"), dl
	if err := checkWire(pt); err != nil {
		return nil, err
	}
	t, err := s.newTask(pt, workspaceID, serverID, "", actor, now)
	if err != nil {
		return nil, err
	}
	// Two inserts, decided on nothing they read: no writer lock needed.
	err = s.store.InTxRows(ctx, func(q *store.Queries) error {
		if err := q.CreateTask(ctx, t); err != nil {
			return err
		}
		detail, _ := json.Marshal(map[string]any{"server_id": serverID, "kind": pt.Kind, "deadline": dl})
		return q.AddAudit(ctx, store.AuditEntry{WorkspaceID: workspaceID, Actor: actor, Action: "task.create",
			Target: t.ID, DetailJSON: string(detail), At: now})
	})
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.o.SendTimeout)
	s.dispatch(sctx, serverID, t.ID, time.Time{})
	cancel()
	return s.Get(ctx, workspaceID, t.ID)
}

func (s *Service) newTask(pt protocol.Task, workspaceID, serverID, deploymentID, actor string, now time.Time) (store.Task, error) {
	spec, err := s.seal(pt, pt.ID)
	if err != nil {
		return store.Task{}, err
	}
	return store.Task{ID: pt.ID, WorkspaceID: workspaceID, ServerID: serverID, DeploymentID: deploymentID, Kind: pt.Kind,
		SpecJSON: spec, State: protocol.TaskQueued, CreatedBy: actor, CreatedAt: now, Deadline: pt.Deadline, UpdatedAt: now}, nil
}

// server finds a server that can take tasks.
func (s *Service) server(ctx context.Context, workspaceID, id string) (store.Server, error) {
	srv, err := s.store.Q().GetServer(ctx, workspaceID, id)
	if errors.Is(err, store.ErrNotFound) || srv.State == provision.StateDeleted {
		return srv, problem.NotFound("server " + id)
	}
	if err != nil {
		return srv, err
	}
	switch srv.State {
	case provision.StateDeleting:
		return srv, problem.Conflict("", "server %s is being deleted", id)
	case provision.StateFailed:
		return srv, problem.Conflict("See `devpilot servers show "+id+"` for why; create a new server.", "server %s failed to provision; its agent will never run tasks", id)
	}
	return srv, nil
}

// Get returns a task.
func (s *Service) Get(ctx context.Context, workspaceID, id string) (*Task, error) {
	t, err := s.store.Q().GetTask(ctx, workspaceID, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, problem.NotFound("task " + id)
	}
	if err != nil {
		return nil, err
	}
	return s.view(t), nil
}

// MaxList bounds one page of a list (the API's 1000 and one to tell
// whether more follow).
const MaxList = 1001

// List returns a workspace's tasks, newest first: at most f.Limit (at most
// MaxList; 0: 50) after f.After.
func (s *Service) List(ctx context.Context, workspaceID string, f store.TaskFilter) ([]*Task, error) {
	if f.Limit <= 0 || f.Limit > MaxList {
		f.Limit = 50
	}
	if f.State != "" && !validState(f.State) {
		return nil, bad("States: queued, sent, running, succeeded, failed, timed_out, canceled.", "unknown state %q", f.State)
	}
	ts, err := s.store.Q().ListTasks(ctx, workspaceID, f)
	if err != nil {
		return nil, err
	}
	out := make([]*Task, 0, len(ts))
	for _, t := range ts {
		out = append(out, s.view(t))
	}
	return out, nil
}

func validState(st string) bool {
	return st == protocol.TaskQueued || st == protocol.TaskSent || st == protocol.TaskRunning || protocol.Final(st)
}

// Cancel stops a task: one never sent is canceled at once; otherwise the
// agent is asked to stop it (now if connected, else when it reconnects)
// and reports canceled.
func (s *Service) Cancel(ctx context.Context, actor, workspaceID, id string) (*Task, error) {
	t, err := s.store.Q().GetTask(ctx, workspaceID, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, problem.NotFound("task " + id)
	}
	if err != nil {
		return nil, err
	}
	mu := s.stripe(t.ServerID)
	mu.Lock()
	defer mu.Unlock()
	if t, err = s.store.Q().GetTask(ctx, workspaceID, id); err != nil {
		return nil, err
	}
	if protocol.Final(t.State) {
		return nil, problem.Conflict("", "task %s already finished (%s)", id, t.State)
	}
	now := s.now().UTC()
	local := t.State == protocol.TaskQueued && t.Attempts == 0
	err = s.store.InTx(ctx, func(q *store.Queries) error {
		if local {
			if _, err := q.FinishTask(ctx, store.Task{ID: id, State: protocol.TaskCanceled, Reason: protocol.ReasonCanceled,
				Error: "canceled before it was sent", FinishedAt: &now, UpdatedAt: now}); err != nil {
				return err
			}
		} else if _, err := q.RequestCancel(ctx, id, now); err != nil {
			return err
		}
		detail, _ := json.Marshal(map[string]any{"server_id": t.ServerID, "state": t.State})
		return q.AddAudit(ctx, store.AuditEntry{WorkspaceID: workspaceID, Actor: actor, Action: "task.cancel",
			Target: id, DetailJSON: string(detail), At: now})
	})
	if err != nil {
		return nil, err
	}
	s.notify(id)
	if local {
		s.finished(t)
	} else {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.o.SendTimeout)
		err := s.o.Hub.Send(sctx, t.ServerID, protocol.TypeCancel, protocol.Cancel{TaskID: id})
		cancel()
		if err != nil && !errors.Is(err, hub.ErrNotConnected) {
			s.log.Debug("send cancel", zap.String("task", id), zap.Error(err))
		}
	}
	return s.Get(ctx, workspaceID, id)
}

// --- delivery

func (s *Service) stripe(serverID string) *sync.Mutex {
	f := fnv.New32a()
	_, _ = f.Write([]byte(serverID))
	return &s.stripes[f.Sum32()%uint32(len(s.stripes))]
}

// dispatch sends a queued or sent task to its agent if it is connected,
// and records the attempt. Safe to repeat: the agent runs an id once.
// dispatch writes a task to its server's session unless it is no longer
// deliverable, or was already written on the session that started at
// `since` (zero: send regardless).
func (s *Service) dispatch(ctx context.Context, serverID, taskID string, since time.Time) {
	s.dispatchIf(ctx, serverID, taskID, since, false)
}

// dispatchIf is dispatch; queuedOnly sends the task only if it was never
// sent (a task another control plane handed over, or the sweep found
// queued, may have been sent by this session's resend meanwhile).
func (s *Service) dispatchIf(ctx context.Context, serverID, taskID string, since time.Time, queuedOnly bool) {
	mu := s.stripe(serverID)
	mu.Lock()
	defer mu.Unlock()
	t, err := s.store.Q().GetTask(ctx, "", taskID)
	if err != nil {
		s.log.Warn("load task to send", zap.String("task", taskID), zap.Error(err))
		return
	}
	if (t.State != protocol.TaskQueued && t.State != protocol.TaskSent) || t.CancelRequestedAt != nil || !s.now().Before(t.Deadline) {
		return
	}
	if queuedOnly && (t.State != protocol.TaskQueued || t.LastSentAt != nil) {
		return
	}
	if !since.IsZero() && t.LastSentAt != nil && !t.LastSentAt.Before(since) {
		return
	}
	// A quarantined server's session may belong to an impostor holding its
	// key: its tasks wait, queued, for the rekeyed agent.
	if srv, err := s.store.Q().GetServer(ctx, "", serverID); err != nil || srv.QuarantinedAt != nil {
		if err != nil {
			s.log.Warn("load server to send to", zap.String("server", serverID), zap.Error(err))
		}
		return
	}
	var pt protocol.Task
	if err := s.unseal(t.SpecJSON, t.ID, &pt); err != nil {
		s.log.Error("stored task spec unreadable", zap.String("task", taskID), zap.Error(err))
		return
	}
	if err := s.o.Hub.Send(ctx, serverID, protocol.TypeTask, pt); err != nil {
		if !errors.Is(err, hub.ErrNotConnected) {
			s.log.Info("send task failed; resent when the agent reconnects", zap.String("task", taskID), zap.Error(err))
		}
		return
	}
	if t.LastSentAt == nil {
		s.m.dispatch.Observe(s.now().Sub(t.CreatedAt).Seconds())
	}
	if _, err := s.store.Q().MarkTaskSent(ctx, taskID, s.now()); err != nil {
		s.log.Warn("record task sent", zap.String("task", taskID), zap.Error(err))
	}
	s.notify(taskID)
}

// AgentConnected is provision's OnAgentConnected hook: it resends, in the
// background, every task of serverID the agent has not confirmed and
// whose deadline has not passed, and any cancel asked while it was away.
//
// It runs before the hub welcomes the agent, so anything sent from now on
// reaches the new session; resendAll skips those (the agent would only
// drop the duplicate, but there is no point sending it).
func (s *Service) AgentConnected(serverID string) { s.out.resend(serverID, s.now()) }

// resendAll is the outbox's work for a new session that started at since.
func (s *Service) resendAll(ctx context.Context, serverID string, since time.Time) {
	cs, ts, err := s.store.Q().SessionTasks(ctx, serverID, s.now(), since)
	if err != nil {
		s.log.Warn("list tasks to cancel and resend", zap.String("server", serverID), zap.Error(err))
		return
	}
	for _, t := range cs {
		s.sendCancel(ctx, serverID, t.ID)
	}
	for _, t := range ts {
		if ctx.Err() != nil {
			return
		}
		s.dispatch(ctx, serverID, t.ID, since)
	}
}

func (s *Service) sendCancel(ctx context.Context, serverID, taskID string) {
	if err := s.o.Hub.Send(ctx, serverID, protocol.TypeCancel, protocol.Cancel{TaskID: taskID}); err != nil && !errors.Is(err, hub.ErrNotConnected) {
		s.log.Debug("send cancel", zap.String("task", taskID), zap.Error(err))
	}
}

// --- notifications

// Changed returns a channel closed at the task's next change (new output,
// state). Take it before reading, so no change is missed.
func (s *Service) Changed(taskID string) <-chan struct{} {
	s.nmu.Lock()
	defer s.nmu.Unlock()
	ch := s.waiters[taskID]
	if ch == nil {
		ch = make(chan struct{})
		s.waiters[taskID] = ch
	}
	return ch
}

// Dispatch sends a queued task to its server's agent if this control
// plane holds the session (and records it sent): a task created on
// another control plane of the database (controlplane/cluster). A task
// sent already (by the new session's resend) is left to that.
func (s *Service) Dispatch(serverID, taskID string) {
	ctx, cancel := context.WithTimeout(s.ctx, s.o.SendTimeout)
	defer cancel()
	s.dispatchIf(ctx, serverID, taskID, time.Time{}, true)
}

// Wake wakes this control plane's followers of a task another one
// changed (controlplane/cluster).
func (s *Service) Wake(taskID string) { s.wake(taskID) }

// notify wakes the task's followers here and tells Options.OnChange.
func (s *Service) notify(taskID string) {
	s.wake(taskID)
	if s.o.OnChange != nil {
		s.o.OnChange(taskID)
	}
}

func (s *Service) wake(taskID string) {
	s.nmu.Lock()
	ch := s.waiters[taskID]
	delete(s.waiters, taskID)
	s.nmu.Unlock()
	if ch != nil {
		close(ch)
	}
}

// finished runs what follows a task's final state: its deployment moves on.
func (s *Service) finished(t store.Task) {
	if t.DeploymentID != "" {
		s.kick(t.DeploymentID)
	}
}

// --- deadlines

func (s *Service) sweepLoop() {
	defer s.wg.Done()
	tick := time.NewTicker(s.o.SweepInterval)
	defer tick.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-tick.C:
			s.sweep(s.ctx)
		}
	}
}

// sweep marks tasks past deadline+grace timed_out and asks their agents to
// stop them.
func (s *Service) sweep(ctx context.Context) {
	now := s.now().UTC()
	ts, err := s.store.Q().OverdueTasks(ctx, now.Add(-s.o.DeadlineGrace), 500)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("list overdue tasks", zap.Error(err))
		}
		return
	}
	for _, t := range ts {
		ok, err := s.store.Q().FinishTask(ctx, store.Task{ID: t.ID, State: protocol.TaskTimedOut, Reason: protocol.ReasonDeadline,
			Error: "the deadline passed before the agent reported a result", FinishedAt: &now, UpdatedAt: now})
		if err != nil {
			s.log.Warn("time out task", zap.String("task", t.ID), zap.Error(err))
			continue
		}
		if !ok {
			continue
		}
		s.log.Info("task timed out", zap.String("task", t.ID), zap.String("server", t.ServerID), zap.String("was", t.State))
		s.notify(t.ID)
		s.finished(t)
		if t.State != protocol.TaskQueued || t.Attempts > 0 {
			s.out.cancel(t.ServerID, t.ID)
		}
	}
}
