package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/provision"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/shared/protocol"
)

// Deployment states.
const (
	DeployRunning   = "running"
	DeploySucceeded = "succeeded"
	DeployFailed    = "failed"
)

// Target states beyond the task states.
const (
	TargetPending = "pending" // its batch has not started
	TargetSkipped = "skipped" // an earlier batch failed
)

// MaxTargets bounds the servers of one deployment.
const MaxTargets = 1000

// DeploymentRequest is what `POST …/deployments` takes.
type DeploymentRequest struct {
	Servers     []string `json:"servers,omitempty"`
	Tag         string   `json:"tag,omitempty"`
	MaxParallel int      `json:"max_parallel,omitempty"` // default 1
	Plan        Plan     `json:"plan"`
	DeadlineS   int      `json:"deadline_s,omitempty"` // each server's task; default 3600
}

// Deployment is what the API shows of a deployment.
type Deployment struct {
	ID          string
	State       string
	Tag         string
	MaxParallel int
	DeadlineS   int
	Error       string
	CreatedBy   string
	CreatedAt   time.Time
	FinishedAt  *time.Time
	Counts      map[string]int // targets by state
	Targets     []Target
	Plan        protocol.Task  // the agent steps of the plan, redacted
	Firewall    []FirewallStep // the plan's firewall steps
}

// FirewallStep is a plan step the control plane runs: the server's ports
// action, to exactly Ports.
type FirewallStep struct {
	Step  int // its index in the plan's steps
	Name  string
	Ports []int
}

// sealedPlan is a deployment's stored plan. Deployments recorded before
// firewall steps existed stored a protocol.DeploySpec (steps only); the
// embedded spec reads those as one deploy phase.
type sealedPlan struct {
	Phases []Phase `json:"phases,omitempty"`
	protocol.DeploySpec
}

// plan reads a deployment's phases.
func (s *Service) plan(d store.Deployment) ([]Phase, error) {
	var sp sealedPlan
	if err := s.unseal(d.PlanJSON, d.ID, &sp); err != nil {
		return nil, err
	}
	if len(sp.Phases) == 0 && len(sp.Steps) > 0 {
		return []Phase{{Deploy: &protocol.DeploySpec{Steps: sp.Steps}}}, nil
	}
	return sp.Phases, nil
}

// Target is one server of a deployment.
type Target struct {
	ServerID   string
	Batch      int    // from 1
	TaskID     string // the deploy task of its current (or last) agent phase
	ActionID   string // the ports action of its current firewall step
	State      string // pending, skipped, or the task's state
	Reason     string
	Error      string
	ExitCode   *int
	Steps      []protocol.StepResult
	FinishedAt *time.Time
}

// Deploy starts a rolling deployment: the plan's steps as one deploy task
// per server, max_parallel servers at a time; after a batch in which any
// server failed, the remaining servers are skipped.
func (s *Service) Deploy(ctx context.Context, actor, workspaceID string, req DeploymentRequest) (*Deployment, error) {
	phases, err := req.Plan.Build()
	if err != nil {
		return nil, err
	}
	now := s.now().UTC()
	dl, err := deadline(now, req.DeadlineS)
	if err != nil {
		return nil, err
	}
	for _, ph := range phases {
		if ph.Deploy == nil {
			if s.o.Actions == nil {
				return nil, problem.Conflict("Run the plan on a control plane with cloud integrations (devpilot serve).",
					"this control plane cannot run firewall steps")
			}
			continue
		}
		if err := checkWire(protocol.Task{ID: ids.New("task"), Kind: protocol.KindDeploy, Deadline: dl, Deploy: ph.Deploy}); err != nil {
			return nil, err
		}
	}
	if req.MaxParallel == 0 {
		req.MaxParallel = 1
	}
	if req.MaxParallel < 0 || req.MaxParallel > MaxTargets {
		return nil, bad("max_parallel is how many servers deploy at once: 1 to 1000.", "max_parallel %d is out of range", req.MaxParallel)
	}
	if req.DeadlineS == 0 {
		req.DeadlineS = int(DefaultDeadline / time.Second)
	}
	servers, err := s.targets(ctx, workspaceID, req)
	if err != nil {
		return nil, err
	}
	d := store.Deployment{ID: ids.New("dep"), WorkspaceID: workspaceID, State: DeployRunning, Selector: req.Tag,
		MaxParallel: req.MaxParallel, DeadlineS: req.DeadlineS, CreatedBy: actor, CreatedAt: now, UpdatedAt: now}
	if d.PlanJSON, err = s.seal(sealedPlan{Phases: phases}, d.ID); err != nil {
		return nil, err
	}
	targets := make([]store.DeploymentTarget, len(servers))
	for i, id := range servers {
		targets[i] = store.DeploymentTarget{Position: i, ServerID: id, Batch: i / req.MaxParallel}
	}
	err = s.store.InTx(ctx, func(q *store.Queries) error {
		if err := q.CreateDeployment(ctx, d, targets); err != nil {
			return err
		}
		detail, _ := json.Marshal(map[string]any{"servers": servers, "tag": req.Tag, "max_parallel": req.MaxParallel,
			"steps": len(req.Plan.Steps)})
		return q.AddAudit(ctx, store.AuditEntry{WorkspaceID: workspaceID, Actor: actor, Action: "deployment.create",
			Target: d.ID, DetailJSON: string(detail), At: now})
	})
	if err != nil {
		return nil, err
	}
	s.log.Info("deployment started", zap.String("deployment", d.ID), zap.Int("servers", len(servers)), zap.Int("max_parallel", req.MaxParallel))
	if err := s.advance(ctx, d.ID); err != nil {
		s.log.Warn("start deployment", zap.String("deployment", d.ID), zap.Error(err))
		s.kick(d.ID)
	}
	return s.Deployment(ctx, workspaceID, d.ID)
}

// targets resolves a request's servers, in order.
func (s *Service) targets(ctx context.Context, workspaceID string, req DeploymentRequest) ([]string, error) {
	switch {
	case (len(req.Servers) == 0) == (req.Tag == ""):
		return nil, bad("Give either servers (a list of server ids) or tag (e.g. \"devpilot\" for every server of the workspace).",
			"exactly one of servers and tag is required")
	case len(req.Servers) > MaxTargets:
		return nil, bad("", "at most %d servers per deployment", MaxTargets)
	}
	if len(req.Servers) > 0 {
		out := make([]string, 0, len(req.Servers))
		for _, id := range req.Servers {
			if slices.Contains(out, id) {
				return nil, bad("", "server %s is listed twice", id)
			}
			if _, err := s.server(ctx, workspaceID, id); err != nil {
				return nil, err
			}
			out = append(out, id)
		}
		return out, nil
	}
	ws, err := s.store.Q().WorkspaceByID(ctx, workspaceID)
	if err != nil {
		return nil, err
	}
	all, err := s.store.Q().ListServers(ctx, workspaceID)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, srv := range all {
		if srv.State == provision.StateDeleting || srv.State == provision.StateFailed {
			continue
		}
		if slices.Contains(ServerTags(ws.Slug, srv.ID), req.Tag) {
			out = append(out, srv.ID)
		}
	}
	if len(out) == 0 {
		return nil, problem.Validation("Tags are those `devpilot servers show` lists, e.g. devpilot (every server of the workspace).",
			"no server of this workspace carries tag %q", req.Tag)
	}
	if len(out) > MaxTargets {
		return nil, bad("", "tag %q selects %d servers; at most %d per deployment", req.Tag, len(out), MaxTargets)
	}
	return out, nil
}

// ServerTags are the tags a deployment can select a server by (those
// provisioning gives it).
func ServerTags(workspaceSlug, serverID string) []string {
	return []string{provision.TagAll, provision.TagWorkspace(workspaceSlug), provision.TagServer(serverID)}
}

// Deployment returns a deployment with its targets' states.
func (s *Service) Deployment(ctx context.Context, workspaceID, id string) (*Deployment, error) {
	d, err := s.store.Q().GetDeployment(ctx, workspaceID, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, problem.NotFound("deployment " + id)
	}
	if err != nil {
		return nil, err
	}
	ts, tasks, err := s.deploymentState(ctx, d.ID)
	if err != nil {
		return nil, err
	}
	v := &Deployment{ID: d.ID, State: d.State, Tag: d.Selector, MaxParallel: d.MaxParallel, DeadlineS: d.DeadlineS, Error: d.Error,
		CreatedBy: d.CreatedBy, CreatedAt: d.CreatedAt, FinishedAt: d.FinishedAt, Counts: map[string]int{}, Targets: []Target{}}
	phases, err := s.plan(d)
	if err != nil {
		s.log.Error("stored deployment plan unreadable", zap.String("deployment", d.ID), zap.Error(err))
	}
	spec := protocol.DeploySpec{Steps: []protocol.DeployStep{}}
	for _, ph := range phases {
		if ph.Deploy != nil {
			spec.Steps = append(spec.Steps, ph.Deploy.Steps...)
		} else {
			v.Firewall = append(v.Firewall, FirewallStep{Step: ph.Step, Name: ph.Name, Ports: ph.Ports})
		}
	}
	v.Plan = redact(protocol.Task{Kind: protocol.KindDeploy, Deploy: &spec})
	for _, t := range ts {
		tv := Target{ServerID: t.ServerID, Batch: t.Batch + 1, TaskID: t.TaskID, ActionID: t.ActionID, State: TargetPending}
		switch {
		case t.Skipped:
			tv.State = TargetSkipped
		case t.Error != "":
			tv.State, tv.Error = protocol.TaskFailed, t.Error
		case t.Phase < len(phases) && phases[t.Phase].Deploy == nil && t.ActionID != "":
			tv.State, tv.Reason = protocol.TaskRunning, fmt.Sprintf("firewall step %d: waiting for ports action %s", phases[t.Phase].Step+1, t.ActionID)
		case t.TaskID != "":
			if task, ok := tasks[t.TaskID]; ok {
				tk := s.view(task)
				tv.State, tv.Reason, tv.Error, tv.ExitCode, tv.Steps, tv.FinishedAt = tk.State, tk.Reason, tk.Error, tk.ExitCode, tk.Steps, tk.FinishedAt
				if tk.State == protocol.TaskSucceeded && t.Phase < len(phases) {
					tv.State, tv.FinishedAt = protocol.TaskRunning, nil // more phases to go
				}
			}
		case t.Phase > 0 && t.Phase < len(phases):
			tv.State = protocol.TaskRunning
		}
		v.Counts[tv.State]++
		v.Targets = append(v.Targets, tv)
	}
	return v, nil
}

// ListDeployments returns a workspace's deployments, newest first, without
// their targets: at most limit (at most MaxList; 0: 50) after the cursor
// (nil: from the newest).
func (s *Service) ListDeployments(ctx context.Context, workspaceID string, after *store.Cursor, limit int) ([]*Deployment, error) {
	if limit <= 0 || limit > MaxList {
		limit = 50
	}
	ds, err := s.store.Q().ListDeployments(ctx, workspaceID, after, limit)
	if err != nil {
		return nil, err
	}
	out := make([]*Deployment, 0, len(ds))
	for _, d := range ds {
		v, err := s.Deployment(ctx, workspaceID, d.ID)
		if err != nil {
			return nil, err
		}
		v.Targets = nil
		out = append(out, v)
	}
	return out, nil
}

func (s *Service) deploymentState(ctx context.Context, id string) ([]store.DeploymentTarget, map[string]store.Task, error) {
	ts, err := s.store.Q().DeploymentTargets(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	d, err := s.store.Q().GetDeployment(ctx, "", id)
	if err != nil {
		return nil, nil, err
	}
	list, err := s.store.Q().ListTasks(ctx, d.WorkspaceID, store.TaskFilter{DeploymentID: id, Limit: MaxTargets + 1})
	if err != nil {
		return nil, nil, err
	}
	tasks := make(map[string]store.Task, len(list))
	for _, t := range list {
		tasks[t.ID] = t
	}
	return ts, tasks, nil
}

// advance moves a running deployment on: starts its next batch's tasks,
// or finishes it.
func (s *Service) advance(ctx context.Context, id string) error {
	s.depMu.Lock()
	defer s.depMu.Unlock()
	d, err := s.store.Q().GetDeployment(ctx, "", id)
	if err != nil {
		return err
	}
	if d.State != DeployRunning {
		return nil
	}
	ts, tasks, err := s.deploymentState(ctx, id)
	if err != nil {
		return err
	}
	phases, err := s.plan(d)
	if err != nil {
		return fmt.Errorf("deployment plan: %w", err)
	}
	batches := 0
	for _, t := range ts {
		batches = max(batches, t.Batch+1)
	}
	now := s.now().UTC()
	for b := range batches {
		var missing []store.DeploymentTarget
		done, failed := true, 0
		for i := range ts {
			t := &ts[i]
			if t.Batch != b {
				continue
			}
			st, err := s.stepTarget(ctx, d, phases, t, tasks)
			if err != nil {
				return err
			}
			switch st {
			case targetNeedsTask:
				missing = append(missing, *t)
				done = false
			case targetBusy:
				done = false
			case targetFailed:
				failed++
			}
		}
		if len(missing) > 0 {
			return s.startBatch(ctx, d, phases, missing, now)
		}
		if !done {
			return nil
		}
		if failed > 0 {
			skipped := 0
			for _, t := range ts {
				if t.Batch > b {
					skipped++
				}
			}
			msg := fmt.Sprintf("%d server(s) failed in batch %d of %d; %d server(s) skipped", failed, b+1, batches, skipped)
			err := s.store.InTx(ctx, func(q *store.Queries) error {
				if err := q.SkipTargets(ctx, id); err != nil {
					return err
				}
				_, err := q.FinishDeployment(ctx, id, DeployFailed, msg, now)
				return err
			})
			if err == nil {
				s.log.Info("deployment failed", zap.String("deployment", id), zap.String("why", msg))
			}
			return err
		}
	}
	_, err = s.store.Q().FinishDeployment(ctx, id, DeploySucceeded, "", now)
	if err == nil {
		s.log.Info("deployment succeeded", zap.String("deployment", id))
	}
	return err
}

type targetStatus int

const (
	targetBusy      targetStatus = iota // its task or action is under way
	targetNeedsTask                     // its current phase's deploy task is to be created
	targetSucceeded
	targetFailed
)

// stepTarget moves a target through the phases that are done and says
// where it stands. A firewall phase records its ports action's id on the
// target before it starts the action, so a control plane resumed after a
// crash waits on that action rather than starting a second one. It
// updates t as it moves it on.
func (s *Service) stepTarget(ctx context.Context, d store.Deployment, phases []Phase, t *store.DeploymentTarget, tasks map[string]store.Task) (targetStatus, error) {
	for {
		switch {
		case t.Skipped || t.Error != "":
			return targetFailed, nil
		case t.Phase >= len(phases):
			return targetSucceeded, nil
		}
		ph := phases[t.Phase]
		if ph.Deploy != nil {
			if t.TaskID == "" {
				return targetNeedsTask, nil
			}
			task, ok := tasks[t.TaskID]
			switch {
			case !ok || !protocol.Final(task.State):
				return targetBusy, nil
			case task.State != protocol.TaskSucceeded:
				return targetFailed, nil
			}
		} else {
			if s.o.Actions == nil {
				return targetBusy, errors.New("firewall step: this control plane has no lifecycle actions")
			}
			if t.ActionID == "" {
				id := ids.New("act")
				ok, err := s.store.Q().ClaimTargetAction(ctx, d.ID, t.Position, t.Phase, id)
				if err != nil || !ok {
					return targetBusy, err // another control plane claimed it: the next advance sees its id
				}
				t.ActionID = id
			}
			a, err := s.o.Actions.StartActionID(ctx, t.ActionID, d.CreatedBy, d.WorkspaceID, t.ServerID,
				apitypes.ActionRequest{Type: apitypes.ActionPorts, Ports: ph.Ports})
			var pe *problem.Error
			if errors.As(err, &pe) && pe.Status >= 400 && pe.Status < 500 {
				return targetFailed, s.failTarget(ctx, d, t, ph, pe.Message)
			}
			if err != nil {
				return targetBusy, err // retried
			}
			switch a.State {
			case apitypes.ActionSucceeded:
			case apitypes.ActionFailed:
				msg := "the ports action failed"
				if a.Error != nil {
					msg = a.Error.Message
				}
				return targetFailed, s.failTarget(ctx, d, t, ph, msg)
			default:
				s.await(d.ID, t.ActionID)
				return targetBusy, nil
			}
		}
		// The phase is done: on to the next.
		next, task := t.Phase+1, t.TaskID
		if next < len(phases) && phases[next].Deploy != nil {
			task = ""
		}
		ok, err := s.store.Q().SetTargetPhase(ctx, d.ID, t.Position, t.Phase, next, task)
		if err != nil || !ok {
			return targetBusy, err
		}
		if ph.Deploy == nil {
			s.log.Info("deployment firewall step done", zap.String("deployment", d.ID), zap.String("server", t.ServerID),
				zap.String("action", t.ActionID), zap.Ints("ports", ph.Ports))
		}
		t.Phase, t.TaskID, t.ActionID = next, task, ""
	}
}

func (s *Service) failTarget(ctx context.Context, d store.Deployment, t *store.DeploymentTarget, ph Phase, msg string) error {
	msg = fmt.Sprintf("firewall step %d (ports %v): %s", ph.Step+1, ph.Ports, msg)
	s.log.Info("deployment firewall step failed", zap.String("deployment", d.ID), zap.String("server", t.ServerID), zap.String("why", msg))
	return s.store.Q().FailTarget(ctx, d.ID, t.Position, msg)
}

// await has the deployment runner look at a deployment again when the
// firewall step's action it waits on is done (ActionDone), or at its next
// tick at the latest (the action may run on another control plane).
func (s *Service) await(id, actionID string) {
	s.kmu.Lock()
	s.kicked[id] = true
	s.waitFor[actionID] = id
	s.kmu.Unlock()
}

// ActionDone is told that a lifecycle action finished: a deployment
// waiting on it advances at once.
func (s *Service) ActionDone(actionID string) {
	s.kmu.Lock()
	id, ok := s.waitFor[actionID]
	delete(s.waitFor, actionID)
	s.kmu.Unlock()
	if ok {
		s.kick(id)
	}
}

// startBatch creates the deploy tasks of a batch and queues their delivery.
func (s *Service) startBatch(ctx context.Context, d store.Deployment, phases []Phase, targets []store.DeploymentTarget, now time.Time) error {
	var created []store.Task
	err := s.store.InTx(ctx, func(q *store.Queries) error {
		created = make([]store.Task, 0, len(targets))
		for _, t := range targets {
			if t.Phase >= len(phases) || phases[t.Phase].Deploy == nil {
				return fmt.Errorf("target %d of deployment %s is not in a deploy phase", t.Position, d.ID)
			}
			pt := protocol.Task{ID: ids.New("task"), Kind: protocol.KindDeploy, Deadline: now.Add(time.Duration(d.DeadlineS) * time.Second),
				Deploy: phases[t.Phase].Deploy}
			task, err := s.newTask(pt, d.WorkspaceID, t.ServerID, d.ID, d.CreatedBy, now)
			if err != nil {
				return err
			}
			if err := q.CreateTask(ctx, task); err != nil {
				return err
			}
			if err := q.SetTargetTask(ctx, d.ID, t.Position, task.ID); err != nil {
				if errors.Is(err, store.ErrConflict) {
					return fmt.Errorf("target %d of deployment %s was started meanwhile (by another control plane)", t.Position, d.ID)
				}
				return err
			}
			created = append(created, task)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, t := range created {
		s.out.send(t.ServerID, t.ID)
	}
	return nil
}

// kick asks the deployment runner to advance a deployment.
func (s *Service) kick(id string) {
	s.kmu.Lock()
	s.kicked[id] = true
	s.kmu.Unlock()
	select {
	case s.kickSig <- struct{}{}:
	default:
	}
}

func (s *Service) deployLoop() {
	defer s.wg.Done()
	retry := time.NewTicker(max(s.o.SweepInterval, time.Second))
	defer retry.Stop()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-s.kickSig:
		case <-retry.C:
		}
		s.kmu.Lock()
		ids := make([]string, 0, len(s.kicked))
		for id := range s.kicked {
			ids = append(ids, id)
		}
		clear(s.kicked)
		s.kmu.Unlock()
		for _, id := range ids {
			if err := s.advance(s.ctx, id); err != nil && s.ctx.Err() == nil {
				s.log.Warn("advance deployment; will retry", zap.String("deployment", id), zap.Error(err))
				s.kmu.Lock()
				s.kicked[id] = true
				s.kmu.Unlock()
			}
		}
	}
}
