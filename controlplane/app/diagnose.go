package app

import (
	"context"
	"net"
	"path/filepath"
	"strings"

	"github.com/devpilot/devpilot/bootstrap/sshdiag"
	"github.com/devpilot/devpilot/controlplane/provision"
	"github.com/devpilot/devpilot/controlplane/secrets"
)

// KnownHostsFile keeps the SSH host key of every server diagnosed (trusted
// on first contact, checked after).
const KnownHostsFile = "ssh_known_hosts"

// diagnoser logs in to a server whose agent did not confirm its install
// (as root, with the workspace key) and collects cloud-init's status and
// output and the agent's journal. nil when turned off.
func (a *App) diagnoser() func(ctx context.Context, t provision.DiagnoseTarget) (string, error) {
	if a.cfg.NoSSHDiagnostics {
		return nil
	}
	c := sshdiag.New(sshdiag.Options{
		KnownHostsFile: filepath.Join(a.cfg.DataDir, KnownHostsFile),
		Logger:         a.log.Named("sshdiag"),
	})
	return func(ctx context.Context, t provision.DiagnoseTarget) (string, error) {
		addr := net.JoinHostPort(t.PublicIPv4, "22")
		if a.cfg.SSHAddr != nil {
			addr = a.cfg.SSHAddr(t.PublicIPv4)
		}
		signer, err := t.Signer(ctx)
		if err != nil {
			return "", err
		}
		return c.Collect(ctx, sshdiag.Target{ServerID: t.ServerID, Addr: addr, Signer: signer})
	}
}

// enrollOverSSH logs in to a rekeyed server (as root, with the workspace
// key, checking the host key recorded before) and runs `devpilot-agent
// enroll --token-file -` with the token on stdin. nil when SSH is off.
func (a *App) enrollOverSSH() func(ctx context.Context, t provision.DiagnoseTarget, token secrets.Value) error {
	if a.cfg.NoSSHDiagnostics {
		return nil
	}
	c := sshdiag.New(sshdiag.Options{
		KnownHostsFile: filepath.Join(a.cfg.DataDir, KnownHostsFile),
		Logger:         a.log.Named("sshdiag"),
	})
	return func(ctx context.Context, t provision.DiagnoseTarget, token secrets.Value) error {
		addr := net.JoinHostPort(t.PublicIPv4, "22")
		if a.cfg.SSHAddr != nil {
			addr = a.cfg.SSHAddr(t.PublicIPv4)
		}
		signer, err := t.Signer(ctx)
		if err != nil {
			return err
		}
		_, err = c.Run(ctx, sshdiag.Target{ServerID: t.ServerID, Addr: addr, Signer: signer},
			"devpilot-agent enroll --token-file -", strings.NewReader(token.Reveal()+"\n"))
		return err
	}
}
