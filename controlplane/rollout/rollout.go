// Package rollout updates a workspace's agents to one version, canaries
// first (issue 13). A rollout is a durable job in the store (migration
// 00021): a controller loop, holding a lease on the rollout row so that
// several control planes on one database never drive it at once, records
// every target's state before and after it starts that server's
// update_agent action, follows the action to its end, watches each canary
// for the health window, and only then updates the rest, max_parallel at
// a time. The first failure stops it: state failed, the reason naming the
// server and why, the untouched targets skipped. A control plane that
// restarts mid-rollout goes on where it was, and never starts a second
// update for a target whose action exists.
//
// The per-server update itself (download, verify, install beside the old
// binary, restart, roll back on its own) is the update_agent lifecycle
// action; this package starts it through Updater and reads its outcome
// from the store.
package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/events"
	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/store"
)

// Updater starts the update_agent lifecycle action of one server under
// an id the caller chose and recorded first; called again with the same
// id (a controller resumed after a crash) it answers the same action and
// never starts a second. The action runs on its own; its outcome is read
// from the store. (*provision.Service).StartAgentUpdateID is the real one.
type Updater interface {
	StartAgentUpdateID(ctx context.Context, id, workspaceID, serverID, version string) (*apitypes.Action, error)
}

// ReleaseOf is the release part of an agent's reported version
// ("1.2.3 (commit …, go…)" → "1.2.3"), what rollouts compare.
func ReleaseOf(agentVersion string) string {
	v, _, _ := strings.Cut(agentVersion, " ")
	return v
}

// Releases lists the agent versions the control plane can serve.
type Releases interface {
	Versions(ctx context.Context) ([]string, error)
}

// Event types this package records in the event log (issue 14), each in
// the transaction of the change it describes.
const (
	EventAgentUpdated    = events.AgentUpdated
	EventAgentRolledBack = events.AgentRolledBack
	EventRolloutFinished = events.RolloutFinished
)

// Defaults and bounds of a rollout request.
const (
	DefaultHealthWindowS = 60
	MaxHealthWindowS     = 86400
	MaxParallel          = 100
	// Lease is how long a control plane's claim on a rollout lasts
	// without renewal; another takes over after it.
	Lease = 30 * time.Second
)

// Options wire a Service.
type Options struct {
	Store    *store.Store
	Updater  Updater  // nil: rollouts are refused (unavailable)
	Releases Releases // nil: rollouts are refused (unavailable)
	Logger   *zap.Logger
	Now      func() time.Time
	Owner    string        // this process, as leases name it
	Tick     time.Duration // how often the controller looks (default 2s)
	Lease    time.Duration // default Lease
	// Registerer gets devpilot_rollouts{state} and
	// devpilot_agent_rollbacks_total; nil: not exported.
	Registerer prometheus.Registerer
}

// Service creates rollouts and runs their controller.
type Service struct {
	o         Options
	store     *store.Store
	log       *zap.Logger
	now       func() time.Time
	rollbacks prometheus.Counter

	runMu  sync.Mutex         // guards cancel: a Start after a Close replaces it
	cancel context.CancelFunc // ends the controller of the current Start
	wg     sync.WaitGroup
	kick   chan struct{}

	mu        sync.Mutex
	converged map[string]bool // update action ids converge asked for (converge.go)
}

// New returns a Service; Start runs its controller.
func New(o Options) *Service {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Owner == "" {
		o.Owner = ids.New("cp")
	}
	if o.Tick <= 0 {
		o.Tick = 2 * time.Second
	}
	if o.Lease <= 0 {
		o.Lease = Lease
	}
	s := &Service{o: o, store: o.Store, log: o.Logger.Named("rollout"), now: o.Now, kick: make(chan struct{}, 1),
		converged: map[string]bool{}}
	s.rollbacks = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "devpilot_agent_rollbacks_total",
		Help: "Agent updates of a rollout that failed with the agent back on its previous version (it rolled itself back).",
	})
	if o.Registerer != nil {
		o.Registerer.MustRegister(s.rollbacks, &stateCollector{s: s})
	}
	return s
}

// Start runs the controller until Close (and again after a later Start).
func (s *Service) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.runMu.Lock()
	s.cancel = cancel
	s.runMu.Unlock()
	s.wg.Add(1)
	go s.loop(ctx)
}

// Close stops the controller; rollouts go on at the next Start (here or
// on another control plane once the lease expires).
func (s *Service) Close() {
	s.runMu.Lock()
	if s.cancel != nil {
		s.cancel()
	}
	s.runMu.Unlock()
	s.wg.Wait()
}

func (s *Service) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// TargetVersion is the workspace's agent target version: its last
// succeeded rollout's version, "" before one succeeded. New servers
// install it.
func (s *Service) TargetVersion(ctx context.Context, workspaceID string) (string, error) {
	return s.store.Q().WorkspaceAgentTarget(ctx, workspaceID)
}

// --- requests

type selector struct {
	Servers []string `json:"servers,omitempty"`
	Tag     string   `json:"tag,omitempty"`
}

func unprocessable(hint, format string, args ...any) *problem.Error {
	return &problem.Error{Status: 422, Code: "validation_failed", Message: fmt.Sprintf(format, args...), Hint: hint}
}

func unavailable() *problem.Error {
	return &problem.Error{Status: 503, Code: "unavailable", Message: "agent updates are not available on this control plane",
		Hint: "Add agent releases (devpilot agents releases add FILE) on a control plane built with agent updates."}
}

// serverTags are the tags a server carries (provision's cloud tags).
func serverTags(wsSlug, id string) []string {
	return []string{"devpilot", "devpilot-ws-" + wsSlug, "devpilot-srv-" + id}
}

// Create validates a rollout request, records the rollout with its
// targets and wakes the controller.
func (s *Service) Create(ctx context.Context, actor, workspaceID string, req apitypes.CreateRollout) (*apitypes.Rollout, error) {
	if s.o.Updater == nil || s.o.Releases == nil {
		return nil, unavailable()
	}
	req.Version = strings.TrimSpace(req.Version)
	versions, err := s.o.Releases.Versions(ctx)
	if err != nil {
		u := unavailable()
		u.Message += ": " + err.Error()
		return nil, u
	}
	if req.Version == "" || !slices.Contains(versions, req.Version) {
		hint := "No agent release is available yet: add one with devpilot agents releases add FILE."
		if len(versions) > 0 {
			hint = "Available releases: " + strings.Join(versions, ", ") + "."
		}
		if req.Version == "" {
			return nil, unprocessable(hint, "version is required")
		}
		return nil, unprocessable(hint, "agent version %q is not an available release", req.Version)
	}
	if len(req.Servers) > 0 && req.Tag != "" {
		return nil, unprocessable("Give servers (ids or names) or tag, not both; neither selects every server.", "both servers and tag given")
	}
	if req.MaxParallel == 0 {
		req.MaxParallel = 1
	}
	if req.MaxParallel < 1 || req.MaxParallel > MaxParallel {
		return nil, unprocessable(fmt.Sprintf("max_parallel is 1 to %d (default 1).", MaxParallel), "invalid max_parallel %d", req.MaxParallel)
	}
	window := DefaultHealthWindowS
	if req.HealthWindowS != nil {
		window = *req.HealthWindowS
	}
	if window < 0 || window > MaxHealthWindowS {
		return nil, unprocessable(fmt.Sprintf("health_window_s is 0 to %d seconds (default %d).", MaxHealthWindowS, DefaultHealthWindowS),
			"invalid health_window_s %d", window)
	}
	if req.Canary.IsZero() {
		req.Canary = apitypes.Canary{N: 1}
	}
	ws, err := s.store.Q().WorkspaceByID(ctx, workspaceID)
	if err != nil {
		return nil, err
	}
	all, err := s.store.Q().ListServers(ctx, workspaceID)
	if err != nil {
		return nil, err
	}
	var live []store.Server
	for _, srv := range all {
		if srv.State != "deleted" && srv.State != "deleting" {
			live = append(live, srv)
		}
	}
	chosen, err := selectServers(live, ws.Slug, req)
	if err != nil {
		return nil, err
	}
	slices.SortFunc(chosen, func(a, b store.Server) int { return strings.Compare(a.Name, b.Name) })
	var eligible, skipped []store.Server
	for _, srv := range chosen {
		if srv.State == "online" && srv.QuarantinedAt == nil && ReleaseOf(srv.AgentVersion) != req.Version {
			eligible = append(eligible, srv)
		} else {
			skipped = append(skipped, srv)
		}
	}
	canaries := 0
	if len(eligible) > 0 {
		canaries = req.Canary.Of(len(eligible))
	}
	now := s.now().UTC()
	sel, _ := json.Marshal(selector{Servers: req.Servers, Tag: req.Tag})
	r := store.Rollout{ID: ids.New("rol"), WorkspaceID: workspaceID, Version: req.Version, SelectorJSON: string(sel),
		Canary: req.Canary.String(), CanaryCount: canaries, MaxParallel: req.MaxParallel, HealthWindowS: window,
		State: apitypes.RolloutPending, CreatedBy: actor, CreatedAt: now, UpdatedAt: now}
	var targets []store.RolloutTarget
	for i, srv := range eligible {
		wave := apitypes.WaveRest
		if i < canaries {
			wave = apitypes.WaveCanary
		}
		targets = append(targets, store.RolloutTarget{ServerID: srv.ID, Seq: len(targets), Wave: wave,
			State: apitypes.TargetPending, FromVersion: ReleaseOf(srv.AgentVersion)})
	}
	for _, srv := range skipped {
		why := "already on " + req.Version
		if ReleaseOf(srv.AgentVersion) != req.Version {
			why = "not updated: the server is " + srv.State + "; updates need an online agent"
			if srv.QuarantinedAt != nil {
				why = "not updated: the server is quarantined"
			}
		}
		targets = append(targets, store.RolloutTarget{ServerID: srv.ID, Seq: len(targets), Wave: apitypes.WaveRest,
			State: apitypes.TargetSkipped, FromVersion: ReleaseOf(srv.AgentVersion), Reason: why, FinishedAt: &now})
	}
	err = s.store.InTx(ctx, func(q *store.Queries) error {
		if err := q.CreateRollout(ctx, r, targets); err != nil {
			return err
		}
		detail, _ := json.Marshal(map[string]any{"rollout": r.ID, "version": r.Version, "servers": len(targets)})
		return q.AddAudit(ctx, store.AuditEntry{WorkspaceID: workspaceID, Actor: actor, Action: "agent.rollout.create",
			Target: r.ID, DetailJSON: string(detail), At: now})
	})
	if errors.Is(err, store.ErrConflict) {
		return nil, problem.Conflict("Wait for it to end, or abort it: devpilot agents rollouts list shows it.",
			"workspace %s has a rollout under way", ws.Slug)
	}
	if err != nil {
		return nil, err
	}
	s.log.Info("rollout created", zap.String("rollout", r.ID), zap.String("version", r.Version),
		zap.Int("targets", len(eligible)), zap.Int("canaries", canaries))
	s.poke()
	return s.Get(ctx, workspaceID, r.ID)
}

func selectServers(live []store.Server, wsSlug string, req apitypes.CreateRollout) ([]store.Server, error) {
	switch {
	case len(req.Servers) > 0:
		var out []store.Server
		var unknown []string
		for _, ref := range req.Servers {
			i := slices.IndexFunc(live, func(s store.Server) bool { return s.ID == ref || s.Name == ref })
			if i < 0 {
				unknown = append(unknown, ref)
				continue
			}
			if !slices.ContainsFunc(out, func(s store.Server) bool { return s.ID == live[i].ID }) {
				out = append(out, live[i])
			}
		}
		if len(unknown) > 0 {
			return nil, unprocessable("Name servers of this workspace by id or name: devpilot servers list shows them.",
				"unknown servers: %s", strings.Join(unknown, ", "))
		}
		return out, nil
	case req.Tag != "":
		var out []store.Server
		for _, srv := range live {
			if slices.Contains(serverTags(wsSlug, srv.ID), req.Tag) {
				out = append(out, srv)
			}
		}
		if len(out) == 0 {
			return nil, unprocessable("Tags servers carry: devpilot (every server), devpilot-ws-"+wsSlug+
				", devpilot-srv-<server id>.", "no server of this workspace carries tag %q", req.Tag)
		}
		return out, nil
	}
	if len(live) == 0 {
		return nil, unprocessable("Create a server first: devpilot servers create.", "the workspace has no servers")
	}
	return live, nil
}

// Get returns one rollout with its targets.
func (s *Service) Get(ctx context.Context, workspaceID, id string) (*apitypes.Rollout, error) {
	r, err := s.store.Q().GetRollout(ctx, workspaceID, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, problem.NotFound("rollout " + id)
	}
	if err != nil {
		return nil, err
	}
	ts, err := s.store.Q().RolloutTargets(ctx, r.ID)
	if err != nil {
		return nil, err
	}
	names := map[string]string{}
	if all, err := s.store.Q().ListServers(ctx, workspaceID); err == nil {
		for _, srv := range all {
			names[srv.ID] = srv.Name
		}
	}
	v := view(r, ts, names, true)
	return &v, nil
}

// List returns one page of a workspace's rollouts, newest first (targets
// counted, not listed), and whether there are more.
func (s *Service) List(ctx context.Context, workspaceID string, after *store.Cursor, limit int) ([]apitypes.Rollout, bool, error) {
	rs, err := s.store.Q().RolloutsPage(ctx, workspaceID, after, limit+1)
	if err != nil {
		return nil, false, err
	}
	more := len(rs) > limit
	if more {
		rs = rs[:limit]
	}
	out := make([]apitypes.Rollout, 0, len(rs))
	for _, r := range rs {
		ts, err := s.store.Q().RolloutTargets(ctx, r.ID)
		if err != nil {
			return nil, false, err
		}
		out = append(out, view(r, ts, nil, false))
	}
	return out, more, nil
}

func view(r store.Rollout, ts []store.RolloutTarget, names map[string]string, withTargets bool) apitypes.Rollout {
	var sel selector
	_ = json.Unmarshal([]byte(r.SelectorJSON), &sel)
	c, _ := apitypes.ParseCanary(r.Canary)
	v := apitypes.Rollout{ID: r.ID, Version: r.Version, Servers: sel.Servers, Tag: sel.Tag, Canary: c, CanaryCount: r.CanaryCount,
		MaxParallel: r.MaxParallel, HealthWindowS: r.HealthWindowS, State: r.State, Reason: r.Reason,
		Counts: map[string]int{}, Targets: []apitypes.RolloutTarget{}, CreatedBy: r.CreatedBy, CreatedAt: r.CreatedAt,
		UpdatedAt: r.UpdatedAt, FinishedAt: r.FinishedAt}
	for _, st := range []string{apitypes.TargetPending, apitypes.TargetUpdating, apitypes.TargetHealthy, apitypes.TargetFailed, apitypes.TargetSkipped} {
		v.Counts[st] = 0
	}
	for _, t := range ts {
		v.Counts[t.State]++
		if withTargets {
			v.Targets = append(v.Targets, apitypes.RolloutTarget{ServerID: t.ServerID, ServerName: names[t.ServerID], Wave: t.Wave,
				State: t.State, FromVersion: t.FromVersion, ActionID: t.ActionID, Reason: t.Reason, StartedAt: t.StartedAt,
				UpdatedAt: t.UpdatedAt, FinishedAt: t.FinishedAt})
		}
	}
	return v
}

// Pause stops a rollout from starting more updates (those under way
// finish, and canaries stay watched); Resume goes on where it was.
func (s *Service) Pause(ctx context.Context, actor, workspaceID, id string) (*apitypes.Rollout, error) {
	return s.change(ctx, actor, workspaceID, id, "pause", func(r *store.Rollout) error {
		if r.State != apitypes.RolloutPending && r.State != apitypes.RolloutCanary && r.State != apitypes.RolloutRolling {
			return problem.Conflict("Only a pending, canary or rolling rollout can be paused.", "rollout %s is %s", r.ID, r.State)
		}
		r.PausedFrom, r.State = r.State, apitypes.RolloutPaused
		return nil
	})
}

// Resume continues a paused rollout.
func (s *Service) Resume(ctx context.Context, actor, workspaceID, id string) (*apitypes.Rollout, error) {
	return s.change(ctx, actor, workspaceID, id, "resume", func(r *store.Rollout) error {
		if r.State != apitypes.RolloutPaused {
			return problem.Conflict("Only a paused rollout can be resumed.", "rollout %s is %s", r.ID, r.State)
		}
		r.State, r.PausedFrom = r.PausedFrom, ""
		if r.State == "" {
			r.State = apitypes.RolloutPending
		}
		return nil
	})
}

// Abort ends a rollout: no more updates start (those under way finish and
// are followed), the untouched targets are skipped.
func (s *Service) Abort(ctx context.Context, actor, workspaceID, id string) (*apitypes.Rollout, error) {
	return s.change(ctx, actor, workspaceID, id, "abort", func(r *store.Rollout) error {
		if !slices.Contains(store.RolloutOpenStates, r.State) {
			return problem.Conflict("The rollout has ended already.", "rollout %s is %s", r.ID, r.State)
		}
		now := s.now().UTC()
		r.State, r.PausedFrom, r.FinishedAt = apitypes.RolloutAborted, "", &now
		r.Reason = "aborted by " + actor
		return nil
	})
}

func (s *Service) change(ctx context.Context, actor, workspaceID, id, verb string, fn func(*store.Rollout) error) (*apitypes.Rollout, error) {
	err := s.store.InTx(ctx, func(q *store.Queries) error {
		r, err := q.GetRollout(ctx, workspaceID, id)
		if errors.Is(err, store.ErrNotFound) {
			return problem.NotFound("rollout " + id)
		}
		if err != nil {
			return err
		}
		from := r.State
		if err := fn(&r); err != nil {
			return err
		}
		now := s.now().UTC()
		r.UpdatedAt = now
		if ok, err := q.SaveRolloutState(ctx, r, from); err != nil || !ok {
			return errors.Join(err, errors.New("rollout changed meanwhile"))
		}
		if r.State == apitypes.RolloutAborted {
			if err := q.SkipPendingTargets(ctx, r.ID, "not updated: the rollout was aborted", now); err != nil {
				return err
			}
			if err := s.emit(ctx, q, r.WorkspaceID, EventRolloutFinished, r.ID, finishedData(r)); err != nil {
				return err
			}
		}
		return q.AddAudit(ctx, store.AuditEntry{WorkspaceID: workspaceID, Actor: actor, Action: "agent.rollout." + verb,
			Target: r.ID, At: now})
	})
	if err != nil {
		return nil, err
	}
	s.poke()
	return s.Get(ctx, workspaceID, id)
}

func finishedData(r store.Rollout) map[string]any {
	return map[string]any{"state": r.State, "version": r.Version, "reason": r.Reason}
}

func (s *Service) emit(ctx context.Context, q *store.Queries, ws, typ, subject string, data any) error {
	_, err := q.AppendEvent(ctx, ws, typ, subject, data)
	return err
}
