package provision

import (
	"context"
	"errors"
)

// ErrNoAgentReleases: this control plane has no agent release store.
var ErrNoAgentReleases = errors.New("this control plane serves no agent releases (start it with --agent-release-key and add releases)")

// AgentReleaseVersions lists the versions update_agent can install, for
// agent rollouts (controlplane/rollout) to validate a request at the door.
func (s *Service) AgentReleaseVersions(context.Context) ([]string, error) {
	if s.o.Releases == nil {
		return nil, ErrNoAgentReleases
	}
	return s.o.Releases.Versions()
}
