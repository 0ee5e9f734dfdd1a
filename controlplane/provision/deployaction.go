package provision

import (
	"context"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// StartActionID starts a lifecycle action under an id the caller chose and
// recorded first (a deployment's firewall step), so a caller resumed after
// a crash finds the action it started instead of starting a second one:
// if an action with that id exists on the server it is returned as is.
func (s *Service) StartActionID(ctx context.Context, id, actor, workspaceID, serverID string, req apitypes.ActionRequest) (*apitypes.Action, error) {
	if a, err := s.GetAction(ctx, workspaceID, serverID, id); err == nil {
		return a, nil
	}
	a, err := s.createAction(ctx, id, actor, workspaceID, serverID, req)
	if err != nil {
		// Another control plane may have created it between the look-up
		// and here (the insert then conflicts).
		if a2, err2 := s.GetAction(ctx, workspaceID, serverID, id); err2 == nil {
			return a2, nil
		}
	}
	return a, err
}

func (s *Service) actionDone(id string) {
	if s.o.OnActionDone != nil {
		s.o.OnActionDone(id)
	}
}
