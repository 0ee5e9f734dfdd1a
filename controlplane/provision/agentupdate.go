package provision

// Agent updates (issue 13): the lifecycle action update_agent {version}.
//
// Entry points for callers other than the API (agent rollouts):
//
//	(*Service).StartAgentUpdateID(ctx, id, workspaceID, serverID, version) (*apitypes.Action, error)
//	    starts the update under an id the caller recorded first; a caller
//	    resumed after a crash gets the same action back, never a second one.
//	(*Service).StartAgentUpdate(ctx, workspaceID, serverID, version) (actionID string, err error)
//	    the same under a fresh id.
//
// Then GetAction(ctx, workspaceID, serverID, actionID) until its state is
// succeeded or failed (OnActionDone fires at the end). workspaceID is the
// workspace's id (ws_…), as CreateAction takes it.
//
// The job, one durable action with a lease like every lifecycle action:
//
//	send       the agent must be connected and advertise protocol.CapUpdate,
//	           and a release must exist for its os/arch; the hub sends it
//	           update {id: the action id, version, url, sha256, signature,
//	           size}. A resumed job sends again: the agent handles an update
//	           id once, so it never installs twice.
//	verify     the agent's update_status: verified / installing / restarting
//	           go on; refused / failed end the action with the agent's reason.
//	reconnect  the agent back with hello.last_update for this id: updated
//	           (and running the version) succeeds; rolled_back, refused or
//	           failed end the action with the reason; no answer within
//	           UpdateTimeout fails it.
//
// Both of the agent's reports are stored, and the steps read them from the
// store: update_status (servers.agent_update_status) by the control plane
// holding the agent's session, which need not be the one running the
// action (a standby took over, or the session moved to another control
// plane on the same PostgreSQL), and hello.last_update
// (servers.agent_last_update) before the welcome acknowledges it. So the
// action goes on wherever it runs and after a restart. The process that
// receives a report also wakes its own waiting step at once; others see it
// at their next poll (Options.PollInterval).

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/agentrelease"
	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/shared/protocol"
	"github.com/devpilot/devpilot/shared/release"
)

// update_agent steps.
const (
	ActStepSend      = "send"
	ActStepVerify    = "verify"
	ActStepReconnect = "reconnect"
)

// UpdateVerifyTimeout bounds the wait for the agent's verdict on the
// binary it downloads (download and checks).
var UpdateVerifyTimeout = 5 * time.Minute

// UpdateTimeout bounds the wait for the agent to come back after it
// restarted into the update; it is longer than the agent's rollback
// deadline, so a rollback is reported rather than timed out.
var UpdateTimeout = 10 * time.Minute

// Releases is the catalogue update_agent installs from
// (controlplane/agentrelease.Store).
type Releases interface {
	Get(version, goos, arch string) (agentrelease.Release, error)
	Versions() ([]string, error)
}

// StartAgentUpdate starts an update_agent action under a fresh id.
func (s *Service) StartAgentUpdate(ctx context.Context, workspaceID, serverID, version string) (string, error) {
	a, err := s.createAction(ctx, ids.New("act"), "agent-rollout", workspaceID, serverID,
		apitypes.ActionRequest{Type: apitypes.ActionUpdateAgent, Version: version})
	if err != nil {
		return "", err
	}
	return a.ID, nil
}

// StartAgentUpdateID starts an update_agent action under an id the caller
// chose and recorded first (see StartActionID).
func (s *Service) StartAgentUpdateID(ctx context.Context, id, workspaceID, serverID, version string) (*apitypes.Action, error) {
	return s.StartActionID(ctx, id, "agent-rollout", workspaceID, serverID,
		apitypes.ActionRequest{Type: apitypes.ActionUpdateAgent, Version: version})
}

// HandleUpdateStatus takes an agent's update_status (register it with
// hub.Handle(protocol.TypeUpdateStatus, …)) and stores it for the
// update_agent action, which may run on another control plane.
func (s *Service) HandleUpdateStatus(ctx context.Context, serverID string, env protocol.Envelope) {
	var st protocol.UpdateStatus
	if err := protocol.DecodeData(env, &st); err != nil {
		s.log.Debug("bad update_status", zap.String("server", serverID), zap.Error(err))
		return
	}
	st.ID, st.State, st.Error = cutText(st.ID, 128), cutText(st.State, 32), cutText(st.Error, protocol.MaxReasonBytes)
	b, _ := json.Marshal(st)
	// Stored even when the session ends right after ("restarting" is the
	// agent's last word before it exits).
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := s.store.Q().SetAgentUpdateStatus(sctx, serverID, string(b)); err != nil {
		// The action then learns the outcome from hello.last_update, or
		// times out saying so.
		s.log.Warn("store agent update status", zap.String("server", serverID), zap.String("update", st.ID), zap.Error(err))
		return
	}
	s.log.Info("agent update status", zap.String("server", serverID), zap.String("update", st.ID),
		zap.String("state", st.State), zap.String("error", st.Error))
	s.wake(serverID)
}

func cutText(v string, n int) string {
	v = strings.ToValidUTF8(v, "\uFFFD")
	if len(v) > n {
		v = v[:n]
		v = strings.ToValidUTF8(v, "")
	}
	return v
}

// updateReports are a server's stored hello.last_update and
// update_status, each nil unless it is update id's.
func (s *Service) updateReports(ctx context.Context, serverID, id string) (*protocol.LastUpdate, *protocol.UpdateStatus, error) {
	luJSON, stJSON, err := s.store.Q().AgentUpdateState(ctx, serverID)
	if err != nil {
		return nil, nil, err
	}
	var lu *protocol.LastUpdate
	var st *protocol.UpdateStatus
	if luJSON != "" {
		var v protocol.LastUpdate
		if json.Unmarshal([]byte(luJSON), &v) == nil && v.ID == id {
			lu = &v
		}
	}
	if stJSON != "" {
		var v protocol.UpdateStatus
		if json.Unmarshal([]byte(stJSON), &v) == nil && v.ID == id {
			st = &v
		}
	}
	return lu, st, nil
}

// agentBack tells whether a server's agent has a session and its version:
// this process's hub knows when the session is here (l), the store when
// it is on another control plane (the hello recorded the version and set
// the server online; the session's end sets it offline).
func (s *Service) agentBack(ctx context.Context, serverID string, l Live) (bool, string, error) {
	if l.Connected {
		return true, l.AgentVersion, nil
	}
	srv, err := s.store.Q().GetServer(ctx, "", serverID)
	if err != nil {
		return false, "", err
	}
	return srv.State == StateOnline, srv.AgentVersion, nil
}

// checkUpdateAtDoor refuses an update that cannot start: unknown version,
// an agent that cannot update, a server that is not online.
func (s *Service) checkUpdateAtDoor(srvState, facts, serverID, version string) error {
	if s.o.Releases == nil {
		return problem.Conflict("Start the control plane with --agent-release-key and add releases (devpilot agents releases add).",
			"this control plane serves no agent releases")
	}
	goos, arch := factsPlatform(facts)
	if _, err := s.o.Releases.Get(version, goos, arch); err != nil {
		vs, _ := s.o.Releases.Versions()
		hint := "No release is added yet: devpilot agents releases add FILE --version V."
		if len(vs) > 0 {
			hint = "Versions with a " + goos + "/" + arch + " build may be among: " + joinMax(vs, 12) + " (GET /v1/agent-releases)."
		}
		return unprocessable(hint, "no agent release %s for %s/%s", version, goos, arch)
	}
	if srvState != StateOnline {
		return problem.Conflict("Wait until the server is online: its agent must be connected to be updated.",
			"server %s is %s", serverID, srvState)
	}
	if s.live != nil {
		if l, ok := s.live(serverID); ok && l.Connected {
			if !slices.Contains(l.Capabilities, protocol.CapUpdate) {
				return problem.Conflict(agentCannotUpdateHint, "the agent of server %s (version %s) cannot install updates", serverID, l.AgentVersion)
			}
			if releaseOf(l.AgentVersion) == version {
				return unprocessable("Choose another version.", "the agent of server %s already runs %s", serverID, version)
			}
		}
	}
	return nil
}

const agentCannotUpdateHint = "Agents older than protocol 1.2 do not update themselves: run `devpilot-agent install` of a newer build on the server once (or re-create it); later versions then arrive by update_agent."

// releaseOf is the version part of an agent's agent_version
// ("v1.2.3 (commit …, go…)" → "v1.2.3").
func releaseOf(agentVersion string) string {
	v, _, _ := strings.Cut(agentVersion, " ")
	return v
}

func factsPlatform(factsJSON string) (string, string) {
	var f protocol.Facts
	_ = json.Unmarshal([]byte(factsJSON), &f)
	if f.OS == "" {
		f.OS = "linux"
	}
	if f.Arch == "" {
		f.Arch = "amd64"
	}
	return f.OS, f.Arch
}

// sendUpdate is the send step.
func (j *actionJob) sendUpdate(ctx context.Context, resumed bool) (string, error) {
	s := j.s
	if s.live == nil || s.o.SendUpdate == nil || s.o.Releases == nil {
		return "", problem.Conflict("Start the control plane with --agent-release-key and add releases.", "this control plane cannot send agent updates")
	}
	l, ok := s.live(j.srv.ID)
	if (!ok || !l.Connected) && (resumed || time.Since(s.started) < UpdateResumeWait) {
		// Resumed, or started by a control plane that just started (a
		// rollout going on after a restart): the agents' sessions went
		// with the old process and they are reconnecting (with backoff);
		// wait for this one.
		limit := UpdateResumeWait - time.Since(s.started)
		if resumed {
			limit = UpdateResumeWait
		}
		l, ok = j.awaitAgent(ctx, limit)
	}
	if !ok || !l.Connected {
		return "", &problem.Error{Status: 409, Code: "agent_offline", Message: "the agent of server " + j.srv.ID + " is not connected",
			Hint: "An update is sent to a connected agent: look at the agent on the server (journalctl -u devpilot-agent), then start the update again."}
	}
	if resumed && releaseOf(l.AgentVersion) == j.p.Version {
		return "the agent already runs " + j.p.Version + " (sent before a restart)", nil
	}
	if !slices.Contains(l.Capabilities, protocol.CapUpdate) {
		return "", &problem.Error{Status: 409, Code: "conflict", Message: "the agent (version " + l.AgentVersion + ") cannot install updates",
			Hint: agentCannotUpdateHint}
	}
	goos, arch := factsPlatform(j.srv.FactsJSON)
	r, err := s.o.Releases.Get(j.p.Version, goos, arch)
	if err != nil {
		return "", unprocessable("Add it first: devpilot agents releases add FILE --version "+j.p.Version+".", "no agent release %s for %s/%s", j.p.Version, goos, arch)
	}
	if j.p.FromVersion == "" {
		j.p.FromVersion = releaseOf(l.AgentVersion)
		if err := j.save(ctx); err != nil {
			return "", err
		}
	}
	u := protocol.Update{ID: j.a.ID, Version: r.Version, URL: agentrelease.DownloadPath(r.Version, r.OS, r.Arch),
		SHA256: r.SHA256, Signature: r.Signature, Size: r.Size}
	if err := release.CheckVersion(u.Version); err != nil {
		return "", err
	}
	if err := s.o.SendUpdate(ctx, j.srv.ID, u); err != nil {
		return "", &problem.Error{Status: 409, Code: "agent_offline", Message: "sending the update failed: " + err.Error(),
			Hint: "The agent's session ended; start the update again once the server is online."}
	}
	return "sent " + r.Version + " (" + goos + "/" + arch + ", sha256 " + r.SHA256[:12] + "…, key " + r.KeyID + ") to the agent on " + releaseOf(l.AgentVersion), nil
}

// recordOutcome stores a refusal or failed install the agent reported in
// update_status as the server's last update, unless its outcome for this
// update is stored already: the agent keeps running and reports it in a
// hello only at its next session, and the server view should say so now.
func (j *actionJob) recordOutcome(ctx context.Context, stored *protocol.LastUpdate, result, reason string) {
	if stored != nil {
		return
	}
	b, _ := json.Marshal(protocol.LastUpdate{ID: j.a.ID, Result: result, From: j.p.FromVersion, To: j.p.Version, Reason: reason})
	if err := j.s.store.Q().SetAgentLastUpdate(ctx, j.srv.ID, string(b), j.s.now()); err != nil {
		j.log.Warn("record the update's outcome", zap.Error(err))
	}
}

// UpdateResumeWait bounds how long a send step resumed after a restart
// (or started within this long of the control plane starting) waits for
// the agent to reconnect before it fails as agent_offline.
var UpdateResumeWait = 2 * time.Minute

// awaitAgent waits up to limit for the server's agent to be connected.
func (j *actionJob) awaitAgent(ctx context.Context, limit time.Duration) (Live, bool) {
	s := j.s
	wake := s.waiter(j.srv.ID)
	deadline := time.NewTimer(limit)
	defer deadline.Stop()
	for {
		if l, ok := s.live(j.srv.ID); ok && l.Connected {
			return l, true
		}
		t := time.NewTimer(s.o.PollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return Live{}, false
		case <-deadline.C:
			t.Stop()
			return s.live(j.srv.ID)
		case <-wake:
			t.Stop()
		case <-t.C:
		}
	}
}

// waitUpdate waits on the agent's status (verify: until it checked the
// binary; reconnect: until it is back and reported the outcome).
func (j *actionJob) waitUpdate(ctx context.Context, step string) (string, error) {
	s := j.s
	timeout := UpdateVerifyTimeout
	if step == ActStepReconnect {
		timeout = UpdateTimeout
	}
	wake := s.waiter(j.srv.ID)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		lu, st, err := s.updateReports(ctx, j.srv.ID, j.a.ID)
		if err != nil {
			return "", err
		}
		var l Live
		if s.live != nil {
			l, _ = s.live(j.srv.ID)
		}
		if lu != nil {
			switch lu.Result {
			case protocol.UpdateResultUpdated:
				if step == ActStepVerify {
					return "the agent installed the update and restarted (reported after a restart)", nil
				}
				back, version, err := s.agentBack(ctx, j.srv.ID, l)
				if err != nil {
					return "", err
				}
				if back {
					s.m.agentUpdates.WithLabelValues("updated").Inc()
					d := "the agent is back on " + j.p.Version + " (updated from " + lu.From + ")"
					if got := releaseOf(version); got != j.p.Version {
						d += "; it reports version " + got + ": the release was labelled unlike its build"
					}
					return d, nil
				}
			case protocol.UpdateResultRolledBack:
				s.m.agentUpdates.WithLabelValues("rolled_back").Inc()
				return "", &problem.Error{Status: 409, Code: "update_rolled_back",
					Message: "the agent rolled back from " + lu.To + " to " + lu.From + ": " + lu.Reason,
					Hint:    "The previous version runs again. Look at the new version's log on the server (journalctl -u devpilot-agent) before trying it again."}
			default:
				s.m.agentUpdates.WithLabelValues("failed").Inc()
				return "", &problem.Error{Status: 409, Code: "update_" + lu.Result, Message: "the agent reports the update " + lu.Result + ": " + lu.Reason,
					Hint: "The previous version keeps running; the reason says what to fix."}
			}
		}
		if st != nil {
			switch st.State {
			case protocol.UpdateRefused:
				s.m.agentUpdates.WithLabelValues("refused").Inc()
				j.recordOutcome(ctx, lu, protocol.UpdateResultRefused, st.Error)
				return "", &problem.Error{Status: 409, Code: "update_refused", Message: "the agent refused the update: " + st.Error,
					Hint: "The agent verifies each release against the release keys it pinned at install; a binary whose signature does not verify is never installed. Check the release's .sig and the key it was signed with."}
			case protocol.UpdateFailed:
				s.m.agentUpdates.WithLabelValues("failed").Inc()
				j.recordOutcome(ctx, lu, protocol.UpdateResultFailed, st.Error)
				return "", &problem.Error{Status: 409, Code: "update_failed", Message: "the agent could not install the update: " + st.Error,
					Hint: "The previous version keeps running; the message says what to fix on the server."}
			case protocol.UpdateVerified, protocol.UpdateInstalling, protocol.UpdateRestarting:
				if step == ActStepVerify {
					return "the agent verified the release (" + st.State + ")", nil
				}
			}
		}
		if step == ActStepVerify && l.Connected && releaseOf(l.AgentVersion) == j.p.Version {
			return "the agent already runs " + j.p.Version, nil
		}
		t := time.NewTimer(s.o.PollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", ctx.Err()
		case <-deadline.C:
			t.Stop()
			s.m.agentUpdates.WithLabelValues("timeout").Inc()
			what := "report on the download within " + timeout.String()
			if step == ActStepReconnect {
				what = "come back on " + j.p.Version + " within " + timeout.String()
			}
			return "", &problem.Error{Status: 504, Code: "timeout", Message: "the agent did not " + what,
				Hint: "Look at the agent on the server (journalctl -u devpilot-agent); a new version that does not come up is rolled back by the server itself."}
		case <-wake:
			t.Stop()
		case <-t.C:
		}
	}
}
