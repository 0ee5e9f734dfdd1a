package provision

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/devpilot/devpilot/controlplane/auth"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/shared/protocol"
)

// Rekey is what `POST …/servers/{id}/rekey` answers. Delivered "ssh":
// the token reached the agent over SSH and is not shown. Otherwise the
// one-time bootstrap token (shown once, only its hash is stored) and the
// command that enrolls a new identity with it on the server; DeliveryError
// says why SSH did not do it.
type Rekey struct {
	Server         *Server
	Delivered      string
	DeliveryError  string
	BootstrapToken string
	ExpiresAt      time.Time
	Command        string
}

// RekeyRequest is the optional body of `POST …/servers/{id}/rekey`.
type RekeyRequest struct {
	// Print skips SSH delivery: the token is answered for the operator.
	Print bool
}

// DeliverTimeout bounds a rekey's SSH delivery.
const DeliverTimeout = 45 * time.Second

// EnrollCommand is what an operator runs on the server with a rekey's
// token: the token travels on stdin, never in a process argument.
func EnrollCommand(token string) string {
	return fmt.Sprintf("printf '%%s\\n' '%s' | sudo devpilot-agent enroll --token-file -", token)
}

// Rekey retires a server's agent identity key (its holder is refused from
// now on, told the key was revoked), ends its session and issues a new
// bootstrap token for the real agent. It is how a quarantine ends: the
// enrollment with the token records the new key and lifts it. ref is the
// server's id or name. The token goes to the agent over SSH unless
// req.Print or SSH is not possible; then it is answered.
func (s *Service) Rekey(ctx context.Context, actor, workspaceID, ref string, req RekeyRequest) (*Rekey, error) {
	srv, err := s.find(ctx, workspaceID, ref)
	if err != nil {
		return nil, err
	}
	switch {
	case srv.State == StateDeleting:
		return nil, problem.Conflict("", "server %s is being deleted", srv.ID)
	case len(srv.AgentPublicKey) == 0 && len(srv.RevokedAgentKey) == 0 && srv.InstalledAt == nil:
		// (A rekeyed server can be rekeyed again: its token may have expired.)
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
	rk := &Rekey{ExpiresAt: exp}
	switch {
	case req.Print:
	case s.o.EnrollOverSSH == nil:
		rk.DeliveryError = "SSH delivery is off on this control plane"
	case srv.PublicIPv4 == "":
		rk.DeliveryError = "the server has no public IPv4 to reach over SSH"
	default:
		dctx, cancel := context.WithTimeout(ctx, DeliverTimeout)
		err := s.o.EnrollOverSSH(dctx, DiagnoseTarget{ServerID: srv.ID, WorkspaceID: srv.WorkspaceID, PublicIPv4: srv.PublicIPv4,
			Signer: func(ctx context.Context) (ssh.Signer, error) { return s.Signer(ctx, srv.WorkspaceID) }}, token)
		cancel()
		if err == nil {
			rk.Delivered = "ssh"
			break
		}
		rk.DeliveryError = "SSH delivery failed: " + err.Error()
		s.log.Info("rekey token not delivered over SSH; answered for the operator", zap.String("server", srv.ID), zap.Error(err))
	}
	if rk.Delivered == "" {
		rk.BootstrapToken, rk.Command = token.Reveal(), EnrollCommand(token.Reveal())
	}
	if rk.Server, err = s.Get(ctx, workspaceID, srv.ID); err != nil {
		return nil, err
	}
	return rk, nil
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
