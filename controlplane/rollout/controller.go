package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/store"
)

// errLeaseLost stops a step whose rollout another control plane took over.
var errLeaseLost = errors.New("rollout lease lost to another control plane")

func (s *Service) loop(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(s.o.Tick)
	defer t.Stop()
	for {
		s.pass(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.kick:
		}
	}
}

// pass steps every rollout with work this process can lease.
func (s *Service) pass(ctx context.Context) {
	rs, err := s.store.Q().ActiveRollouts(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Error("list active rollouts", zap.Error(err))
		}
		return
	}
	open := map[string]bool{}
	for _, r := range rs {
		if slices.Contains(store.RolloutOpenStates, r.State) {
			open[r.WorkspaceID] = true
		}
	}
	if s.o.Updater != nil {
		defer s.converge(ctx, open)
	}
	for _, r := range rs {
		now := s.now()
		ok, err := s.store.Q().LeaseRollout(ctx, r.ID, s.o.Owner, now, now.Add(s.o.Lease))
		if err != nil || !ok {
			continue // another control plane drives it
		}
		c := &step{s: s, r: r, log: s.log.With(zap.String("rollout", r.ID), zap.String("version", r.Version))}
		if err := c.run(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, errLeaseLost) {
			c.log.Warn("rollout step", zap.Error(err))
		}
	}
}

// step is one look at one rollout: follow the targets under way, then
// start what the rollout's state allows.
type step struct {
	s       *Service
	r       store.Rollout
	targets []store.RolloutTarget
	servers map[string]store.Server
	log     *zap.Logger
}

// tx runs fn in a transaction that first checks this process still holds
// the rollout's lease: every recorded step is its holder's.
func (c *step) tx(ctx context.Context, fn func(q *store.Queries) error) error {
	return c.s.store.InTx(ctx, func(q *store.Queries) error {
		ok, err := q.HoldsRollout(ctx, c.r.ID, c.s.o.Owner, c.s.now())
		if err != nil {
			return err
		}
		if !ok {
			return errLeaseLost
		}
		return fn(q)
	})
}

func (c *step) run(ctx context.Context) error {
	var err error
	if c.targets, err = c.s.store.Q().RolloutTargets(ctx, c.r.ID); err != nil {
		return err
	}
	c.servers = map[string]store.Server{}
	for _, t := range c.targets {
		if srv, err := c.s.store.Q().GetServer(ctx, c.r.WorkspaceID, t.ServerID); err == nil {
			c.servers[t.ServerID] = srv
		}
	}
	for i := range c.targets {
		if c.targets[i].State == apitypes.TargetUpdating {
			if err := c.follow(ctx, i); err != nil {
				return err
			}
		}
	}
	switch c.r.State {
	case apitypes.RolloutPending:
		if err := c.setState(ctx, apitypes.RolloutCanary, ""); err != nil {
			return err
		}
		fallthrough
	case apitypes.RolloutCanary:
		return c.canaries(ctx)
	case apitypes.RolloutRolling:
		return c.rest(ctx)
	}
	return nil // paused, or ended: only its updating targets are followed
}

func (c *step) open() bool { return slices.Contains(store.RolloutOpenStates, c.r.State) }

func (c *step) name(id string) string {
	if srv, ok := c.servers[id]; ok {
		return srv.Name + " (" + id + ")"
	}
	return id
}

// canaries starts every pending canary; once each is healthy (its update
// succeeded and it stayed healthy for the window), the rest may go.
func (c *step) canaries(ctx context.Context) error {
	done := true
	for i, t := range c.targets {
		if t.Wave != apitypes.WaveCanary {
			continue
		}
		if t.State == apitypes.TargetPending {
			if err := c.start(ctx, i); err != nil {
				return err
			}
			if !c.open() {
				return nil
			}
		}
		if s := c.targets[i].State; s != apitypes.TargetHealthy && s != apitypes.TargetSkipped {
			done = false
		}
	}
	if !done {
		return nil
	}
	c.log.Info("canaries healthy: updating the rest")
	if err := c.setState(ctx, apitypes.RolloutRolling, ""); err != nil {
		return err
	}
	return c.rest(ctx)
}

// rest keeps max_parallel updates of the rest under way; with none left
// the rollout succeeded.
func (c *step) rest(ctx context.Context) error {
	running := 0
	for _, t := range c.targets {
		if t.State == apitypes.TargetUpdating {
			running++
		}
	}
	left := 0
	for i, t := range c.targets {
		if t.State != apitypes.TargetPending {
			continue
		}
		if running >= c.r.MaxParallel {
			left++
			continue
		}
		if err := c.start(ctx, i); err != nil {
			return err
		}
		if !c.open() {
			return nil
		}
		switch c.targets[i].State {
		case apitypes.TargetUpdating:
			running++
		case apitypes.TargetPending:
			left++
		}
	}
	if running > 0 || left > 0 {
		return nil
	}
	return c.finish(ctx, apitypes.RolloutSucceeded, "")
}

// OfflineGrace is how long a pending target's server may be offline,
// counted from its agent's last sign of life, before the rollout skips it
// rather than waits: a control plane restart leaves every agent offline
// until it reconnects, which is no reason to leave servers behind.
var OfflineGrace = 2 * time.Minute

// start updates one pending target: its action id is chosen and
// recorded first, then the action is started under it. A control plane
// killed in between starts it again under the same id, which answers the
// same action (Updater), so no server is updated twice.
func (c *step) start(ctx context.Context, i int) error {
	t := &c.targets[i]
	srv, ok := c.servers[t.ServerID]
	if ok && srv.State == "offline" && srv.QuarantinedAt == nil && srv.LastSeenAt != nil && c.s.now().Sub(*srv.LastSeenAt) < OfflineGrace {
		// Seen a moment ago: most likely its agent is reconnecting (to a
		// restarted control plane, say). Its turn comes again on a later pass.
		if why := "waiting: the server is offline (its agent was last seen " + srv.LastSeenAt.UTC().Format(time.RFC3339) + ")"; t.Reason != why {
			t.Reason = why
			return c.tx(ctx, func(q *store.Queries) error { return q.SaveRolloutTarget(ctx, *t) })
		}
		return nil
	}
	if !ok || srv.State != "online" || srv.QuarantinedAt != nil {
		state := "gone"
		if ok {
			state = srv.State
		}
		now := c.s.now().UTC()
		t.State, t.FinishedAt = apitypes.TargetSkipped, &now
		t.Reason = "not updated: the server was " + state + " when its turn came; updates need an online agent"
		return c.tx(ctx, func(q *store.Queries) error { return q.SaveRolloutTarget(ctx, *t) })
	}
	if ReleaseOf(srv.AgentVersion) == c.r.Version {
		now := c.s.now().UTC()
		t.State, t.FinishedAt, t.Reason = apitypes.TargetSkipped, &now, "already on "+c.r.Version
		return c.tx(ctx, func(q *store.Queries) error { return q.SaveRolloutTarget(ctx, *t) })
	}
	now := c.s.now().UTC()
	t.State, t.StartedAt, t.Reason, t.ActionID = apitypes.TargetUpdating, &now, "", ids.New("act")
	if err := c.tx(ctx, func(q *store.Queries) error { return q.SaveRolloutTarget(ctx, *t) }); err != nil {
		return err
	}
	return c.launch(ctx, i)
}

// launch starts (or, resumed, starts again under the same id) the update
// action of a target recorded updating.
func (c *step) launch(ctx context.Context, i int) error {
	t := &c.targets[i]
	_, err := c.s.o.Updater.StartAgentUpdateID(ctx, t.ActionID, c.r.WorkspaceID, t.ServerID, c.r.Version)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var pe *problem.Error
		if errors.As(err, &pe) && pe.Status == 409 && (strings.Contains(pe.Message, "in progress") || strings.HasSuffix(pe.Message, " is offline")) {
			// Another action of the server is under way: its turn comes
			// again on a later pass, under a new id.
			t.State, t.StartedAt, t.ActionID, t.Reason = apitypes.TargetPending, nil, "", "waiting: "+pe.Message
			return c.tx(ctx, func(q *store.Queries) error { return q.SaveRolloutTarget(ctx, *t) })
		}
		return c.failTarget(ctx, i, "its update could not start: "+err.Error(), false)
	}
	c.log.Info("agent update started", zap.String("server", t.ServerID), zap.String("action", t.ActionID), zap.String("wave", t.Wave))
	return nil
}

// follow reads the update action of a target under way.
func (c *step) follow(ctx context.Context, i int) error {
	t := &c.targets[i]
	a, err := c.s.store.Q().GetAction(ctx, c.r.WorkspaceID, t.ActionID)
	switch {
	case errors.Is(err, store.ErrNotFound) && c.open():
		return c.launch(ctx, i) // recorded, never started (a crash in between)
	case errors.Is(err, store.ErrNotFound):
		now := c.s.now().UTC()
		t.State, t.FinishedAt, t.Reason = apitypes.TargetSkipped, &now, "not updated: the rollout ended before its update started"
		return c.tx(ctx, func(q *store.Queries) error { return q.SaveRolloutTarget(ctx, *t) })
	case err != nil:
		return fmt.Errorf("read action %s: %w", t.ActionID, err)
	}
	// The server as it is now, read after the action: an agent that
	// reconnected on the new version before its action succeeded is seen.
	srv, err := c.s.store.Q().GetServer(ctx, c.r.WorkspaceID, t.ServerID)
	if err != nil {
		return fmt.Errorf("read server %s: %w", t.ServerID, err)
	}
	c.servers[t.ServerID] = srv
	switch a.State {
	case apitypes.ActionFailed:
		why := "its update action " + a.ID + " failed"
		var e apitypes.ErrorDetail
		if json.Unmarshal([]byte(a.ErrorJSON), &e) == nil && e.Message != "" {
			why += ": " + e.Message
		}
		rolledBack := t.FromVersion != "" && ReleaseOf(srv.AgentVersion) == t.FromVersion
		switch {
		case rolledBack && (e.Code == "update_refused" || e.Code == "update_failed" || e.Code == "agent_offline"):
			// Never installed (refused, the download or install failed,
			// or never sent): nothing was rolled back.
			rolledBack = false
			why += " (the agent still runs " + t.FromVersion + ")"
		case rolledBack:
			why += " (the agent rolled back to " + t.FromVersion + ")"
		}
		return c.failTarget(ctx, i, why, rolledBack)
	case apitypes.ActionSucceeded:
	default:
		return nil // queued or running
	}
	now := c.s.now().UTC()
	if ReleaseOf(srv.AgentVersion) != c.r.Version {
		return c.failTarget(ctx, i, fmt.Sprintf("its update action %s succeeded but the agent reports version %q, not %s",
			a.ID, srv.AgentVersion, c.r.Version), ReleaseOf(srv.AgentVersion) == t.FromVersion)
	}
	if t.UpdatedAt == nil {
		// The agent is back on the new version: the health window starts,
		// measured against the agent's last error as it is now.
		t.UpdatedAt = &now
		t.BaselineError, _ = c.s.store.Q().AgentLastError(ctx, t.ServerID)
		if err := c.tx(ctx, func(q *store.Queries) error {
			if err := q.SaveRolloutTarget(ctx, *t); err != nil {
				return err
			}
			return c.s.emit(ctx, q, c.r.WorkspaceID, EventAgentUpdated, t.ServerID,
				map[string]any{"rollout": c.r.ID, "action": a.ID, "from_version": t.FromVersion, "version": c.r.Version})
		}); err != nil {
			return err
		}
	}
	if t.Wave == apitypes.WaveCanary && c.open() {
		if srv.State != "online" {
			return c.failTarget(ctx, i, fmt.Sprintf("its agent went %s within the %ds health window after updating to %s",
				srv.State, c.r.HealthWindowS, c.r.Version), false)
		}
		if last, _ := c.s.store.Q().AgentLastError(ctx, t.ServerID); last != t.BaselineError {
			return c.failTarget(ctx, i, fmt.Sprintf("its agent reported an error within the %ds health window after updating to %s: %s",
				c.r.HealthWindowS, c.r.Version, last), false)
		}
		if now.Sub(*t.UpdatedAt) < time.Duration(c.r.HealthWindowS)*time.Second {
			return nil
		}
	}
	t.State, t.FinishedAt = apitypes.TargetHealthy, &now
	c.log.Info("agent updated", zap.String("server", t.ServerID), zap.String("wave", t.Wave))
	return c.tx(ctx, func(q *store.Queries) error { return q.SaveRolloutTarget(ctx, *t) })
}

// failTarget records a failed target and, while the rollout is under
// way, fails it: no more updates start, the untouched targets are skipped.
func (c *step) failTarget(ctx context.Context, i int, why string, rolledBack bool) error {
	t := &c.targets[i]
	now := c.s.now().UTC()
	t.State, t.FinishedAt, t.Reason = apitypes.TargetFailed, &now, why
	c.log.Warn("agent update failed", zap.String("server", t.ServerID), zap.String("reason", why))
	err := c.tx(ctx, func(q *store.Queries) error {
		if err := q.SaveRolloutTarget(ctx, *t); err != nil {
			return err
		}
		if rolledBack {
			if err := c.s.emit(ctx, q, c.r.WorkspaceID, EventAgentRolledBack, t.ServerID,
				map[string]any{"rollout": c.r.ID, "action": t.ActionID, "version": c.r.Version, "back_on": t.FromVersion, "reason": why}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if rolledBack {
		c.s.rollbacks.Inc()
	}
	if !c.open() {
		return nil
	}
	return c.finish(ctx, apitypes.RolloutFailed, "server "+c.name(t.ServerID)+": "+why)
}

// setState moves an open rollout on; a rollout someone paused or aborted
// meanwhile is read again on the next pass.
func (c *step) setState(ctx context.Context, state, reason string) error {
	r := c.r
	r.State, r.Reason, r.UpdatedAt = state, reason, c.s.now().UTC()
	var moved bool
	err := c.tx(ctx, func(q *store.Queries) error {
		var err error
		moved, err = q.SaveRolloutState(ctx, r, c.r.State)
		return err
	})
	if err != nil {
		return err
	}
	if !moved {
		return errLeaseLost // not ours to change now; the next pass reads it again
	}
	c.r = r
	return nil
}

// finish ends the rollout: untouched targets are skipped, and
// rollout.finished is recorded with it.
func (c *step) finish(ctx context.Context, state, reason string) error {
	now := c.s.now().UTC()
	r := c.r
	r.State, r.Reason, r.UpdatedAt, r.FinishedAt, r.PausedFrom = state, reason, now, &now, ""
	var moved bool
	err := c.tx(ctx, func(q *store.Queries) error {
		var err error
		if moved, err = q.SaveRolloutState(ctx, r, c.r.State); err != nil || !moved {
			return err
		}
		if err := q.SkipPendingTargets(ctx, r.ID, "not updated: the rollout "+state, now); err != nil {
			return err
		}
		return c.s.emit(ctx, q, r.WorkspaceID, EventRolloutFinished, r.ID, finishedData(r))
	})
	if err != nil {
		return err
	}
	if !moved {
		return errLeaseLost
	}
	c.r = r
	for i := range c.targets {
		if c.targets[i].State == apitypes.TargetPending {
			c.targets[i].State = apitypes.TargetSkipped
		}
	}
	c.log.Info("rollout finished", zap.String("state", state), zap.String("reason", reason))
	return nil
}
