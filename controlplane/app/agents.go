package app

import (
	"errors"
	"fmt"
	"github.com/devpilot/devpilot/controlplane/agentrelease"
	"net/http"
	"os"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/bootstrap/cloudinit"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/shared/protocol"
)

// agentHandler serves what agents use without an API token: the WebSocket
// hub (agents authenticate in the protocol) and the agent download (the
// binary is public; its sha256 travels in the user-data).
func (a *App) agentHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(protocol.Path, a.Hub)
	mux.HandleFunc("GET "+agentrelease.DownloadRoute, a.serveRelease)
	dir := a.cfg.AgentDir
	if dir == "" {
		if exe, err := os.Executable(); err == nil {
			dir = filepath.Dir(exe)
		}
	}
	dl, sums, err := cloudinit.AgentHandler(dir)
	if err != nil {
		a.log.Warn("no agent builds to serve: new servers cannot install the agent", zap.String("agent_dir", dir), zap.Error(err))
		mux.HandleFunc("/v1/agent/download/", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"error":{"code":"unavailable","message":"this control plane has no agent builds","hint":"Start it with --agent-dir pointing at the output of make build."}}`))
		})
		return mux
	}
	a.agentSums = sums
	mux.Handle("/v1/agent/download/", dl)
	return mux
}

// agentURL is what agents dial and download from.
func (a *App) agentURL() string {
	if a.cfg.PublicURL != "" {
		return a.cfg.PublicURL
	}
	return a.URL
}

// agentCA is the CA certificate agents pin.
func (a *App) agentCA() (string, error) {
	if a.cfg.AgentCAFile != "" {
		b, err := os.ReadFile(a.cfg.AgentCAFile)
		if err != nil {
			return "", fmt.Errorf("agent CA: %w", err)
		}
		return string(b), nil
	}
	if len(a.CACertPEM) > 0 {
		return string(a.CACertPEM), nil
	}
	return "", errors.New("agents need a CA to pin: with --tls files or off, set --agent-ca-file")
}

// userData renders a server's cloud-init user-data.
func (a *App) userData(serverID, hostname string, token secrets.Value) ([]byte, error) {
	if len(a.agentSums) == 0 {
		return nil, errors.New("this control plane has no agent builds to install (start it with --agent-dir pointing at the output of make build)")
	}
	ca, err := a.agentCA()
	if err != nil && a.cfg.TLS != TLSOff {
		return nil, err
	}
	return cloudinit.Render(cloudinit.Params{ControlPlaneURL: a.agentURL(), CACertPEM: ca, AgentSHA256: a.agentSums,
		ServerID: serverID, BootstrapToken: token, Hostname: hostname, ReleaseKeys: a.releaseKeysText()})
}
