package rollout

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"strings"

	"go.uber.org/zap"
)

// New servers get the workspace's agent target version: a server created
// after the workspace's last succeeded rollout finished, online on
// another release, is updated to the target once. The action's id is
// derived from the server and the version, so every pass, every restart
// and every control plane asks for the same action and none is started
// twice; a failed one is not retried (the server stays outside the
// target, shown as such, until the next rollout).

// convergeID is the update action id for serverID and version.
func convergeID(serverID, version string) string {
	sum := sha256.Sum256([]byte("converge/" + serverID + "/" + version))
	return "act_" + strings.ToLower(base32.StdEncoding.EncodeToString(sum[:]))[:16]
}

// converge starts the target version's update on new servers outside it.
func (s *Service) converge(ctx context.Context, open map[string]bool) {
	last, err := s.store.Q().LastSucceededRollouts(ctx)
	if err != nil {
		return
	}
	for _, r := range last {
		if open[r.WorkspaceID] || r.FinishedAt == nil {
			continue // a rollout under way decides the fleet's version
		}
		srvs, err := s.store.Q().ListServers(ctx, r.WorkspaceID)
		if err != nil {
			continue
		}
		for _, srv := range srvs {
			if srv.State != "online" || srv.QuarantinedAt != nil || !srv.CreatedAt.After(*r.FinishedAt) ||
				srv.AgentVersion == "" || ReleaseOf(srv.AgentVersion) == r.Version {
				continue
			}
			id := convergeID(srv.ID, r.Version)
			s.mu.Lock()
			tried := s.converged[id]
			s.converged[id] = true
			s.mu.Unlock()
			if tried {
				continue
			}
			if _, err := s.o.Updater.StartAgentUpdateID(ctx, id, r.WorkspaceID, srv.ID, r.Version); err != nil {
				s.log.Warn("new server not brought to the agent target version", zap.String("server", srv.ID),
					zap.String("version", r.Version), zap.Error(err))
				continue
			}
			s.log.Info("new server updating to the agent target version", zap.String("server", srv.ID),
				zap.String("version", r.Version), zap.String("action", id))
		}
	}
}
