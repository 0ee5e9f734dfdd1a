package provision

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/auth"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/shared/protocol"
)

// Rekey is what `POST …/servers/{id}/rekey` answers: a one-time bootstrap
// token for the real agent (shown once, only its hash is stored) and the
// command that enrolls a new identity with it on the server.
type Rekey struct {
	Server         *Server   `json:"server"`
	BootstrapToken string    `json:"bootstrap_token"`
	ExpiresAt      time.Time `json:"expires_at"`
	Command        string    `json:"command"`
}

// EnrollCommand is what an operator runs on the server with a rekey's
// token: the token travels on stdin, never in a process argument.
func EnrollCommand(token string) string {
	return fmt.Sprintf("printf '%%s\\n' '%s' | sudo devpilot-agent enroll --token-file -", token)
}

// Rekey retires a server's agent identity key (its holder is refused from
// now on, told the key was revoked), ends its session and issues a new
// bootstrap token for the real agent. It is how a quarantine ends: the
// enrollment with the token records the new key and lifts it. ref is the
// server's id or name.
func (s *Service) Rekey(ctx context.Context, actor, workspaceID, ref string) (*Rekey, error) {
	srv, err := s.find(ctx, workspaceID, ref)
	if err != nil {
		return nil, err
	}
	switch {
	case srv.State == StateDeleting:
		return nil, problem.Conflict("", "server %s is being deleted", srv.ID)
	case len(srv.AgentPublicKey) == 0 && srv.InstalledAt == nil:
		return nil, problem.Conflict("Wait for the install to finish (devpilot servers show "+srv.ID+"), or delete and re-create the server.",
			"server %s has no enrolled agent to rekey", srv.ID)
	}
	_, token, hash := auth.NewToken()
	now := s.now().UTC()
	exp := now.Add(s.o.TokenTTL)
	err = s.store.InTx(ctx, func(q *store.Queries) error {
		if err := q.RevokeAgentKey(ctx, srv.ID, now); err != nil {
			return err
		}
		if err := q.CreateBootstrapToken(ctx, hash, srv.ID, exp); err != nil {
			return err
		}
		detail, _ := json.Marshal(map[string]any{"quarantined": srv.QuarantinedAt != nil, "token_expires_at": exp})
		return q.AddAudit(ctx, store.AuditEntry{WorkspaceID: workspaceID, Actor: actor, Action: "server.rekey",
			Target: srv.ID, DetailJSON: string(detail), At: now})
	})
	if err != nil {
		return nil, fmt.Errorf("rekey server: %w", err)
	}
	s.disconnect(srv.ID, protocol.ErrKeyRevoked)
	s.log.Info("server rekeyed: agent key revoked, bootstrap token issued", zap.String("server", srv.ID),
		zap.Bool("quarantined", srv.QuarantinedAt != nil))
	v, err := s.Get(ctx, workspaceID, srv.ID)
	if err != nil {
		return nil, err
	}
	return &Rekey{Server: v, BootstrapToken: token.Reveal(), ExpiresAt: exp, Command: EnrollCommand(token.Reveal())}, nil
}

// find looks a live server up by id, then by name.
func (s *Service) find(ctx context.Context, workspaceID, ref string) (store.Server, error) {
	srv, err := s.store.Q().GetServer(ctx, workspaceID, ref)
	if err == nil && srv.State != StateDeleted {
		return srv, nil
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return srv, err
	}
	list, err := s.store.Q().ListServers(ctx, workspaceID)
	if err != nil {
		return srv, err
	}
	for _, l := range list {
		if l.Name == ref {
			return l, nil
		}
	}
	return store.Server{}, problem.NotFound("server " + ref)
}
