package provision

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
)

// workspaceKey returns the workspace's SSH key, creating it on first use:
// one ed25519 key per workspace, the private half encrypted at rest with
// the workspace id as associated data.
func (s *Service) workspaceKey(ctx context.Context, workspaceID string) (store.SSHKey, error) {
	k, err := s.store.Q().GetSSHKey(ctx, workspaceID)
	if err == nil || !errors.Is(err, store.ErrNotFound) {
		return k, err
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return k, err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return k, err
	}
	block, err := ssh.MarshalPrivateKey(priv, "devpilot workspace key")
	if err != nil {
		return k, err
	}
	ct, err := s.keys.Encrypt(secrets.New(string(pem.EncodeToMemory(block))), workspaceID)
	if err != nil {
		return k, fmt.Errorf("encrypt ssh key: %w", err)
	}
	k = store.SSHKey{
		WorkspaceID:       workspaceID,
		PublicKey:         strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " devpilot",
		Fingerprint:       ssh.FingerprintSHA256(sshPub),
		PrivateCiphertext: ct,
		CreatedAt:         s.now().UTC(),
	}
	if err := s.store.Q().CreateSSHKey(ctx, k); errors.Is(err, store.ErrConflict) {
		// Another job made it first; use theirs.
		return s.store.Q().GetSSHKey(ctx, workspaceID)
	} else if err != nil {
		return k, err
	}
	return k, nil
}

// Signer returns the workspace key for SSH logins (diagnostics).
func (s *Service) Signer(ctx context.Context, workspaceID string) (ssh.Signer, error) {
	k, err := s.store.Q().GetSSHKey(ctx, workspaceID)
	if err != nil {
		return nil, err
	}
	v, err := s.keys.Decrypt(k.PrivateCiphertext, workspaceID)
	if err != nil {
		return nil, err
	}
	return ssh.ParsePrivateKey([]byte(v.Reveal()))
}
