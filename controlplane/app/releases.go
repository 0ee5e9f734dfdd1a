package app

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/devpilot/devpilot/controlplane/agentrelease"
	"github.com/devpilot/devpilot/shared/release"
)

// openReleases is the release catalogue: DATA_DIR/agent-releases, and
// AGENT_DIR/releases, trusting the --agent-release-key files.
func openReleases(cfg Config) (*agentrelease.Store, error) {
	keys, err := ReadReleaseKeys(cfg.AgentReleaseKeys)
	if err != nil {
		return nil, err
	}
	var extra []string
	if cfg.AgentDir != "" {
		extra = append(extra, filepath.Join(cfg.AgentDir, "releases"))
	}
	return agentrelease.New(filepath.Join(cfg.DataDir, agentrelease.DirName), keys, extra...), nil
}

// ReadReleaseKeys reads release public key files (one or more keys each).
func ReadReleaseKeys(files []string) ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("agent release key: %w", err)
		}
		ks, err := release.ParsePublicKeys(b)
		if err != nil {
			return nil, fmt.Errorf("agent release key %s: %w", f, err)
		}
		keys = append(keys, ks...)
	}
	return keys, nil
}

// releaseKeysText is the release keys in the form user-data carries.
func (a *App) releaseKeysText() []string {
	var out []string
	for _, k := range a.Releases.Keys() {
		out = append(out, release.EncodePublicKey(k))
	}
	return out
}

// serveRelease is GET agentrelease.DownloadRoute: a release binary, for
// agents updating themselves. Unauthenticated like the install download:
// agents verify the signature they pinned the key of, so the bytes need
// no secrecy and no trust in the channel beyond the pinned TLS.
func (a *App) serveRelease(w http.ResponseWriter, r *http.Request) {
	rel, err := a.Releases.Get(r.PathValue("version"), r.PathValue("os"), r.PathValue("arch"))
	if errors.Is(err, agentrelease.ErrNotFound) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":{"code":"not_found","message":"no such agent release","hint":"GET /v1/agent-releases lists the releases this control plane serves."}}`))
		return
	}
	if err != nil {
		http.Error(w, "agent releases unavailable", http.StatusInternalServerError)
		return
	}
	f, err := rel.Open()
	if err != nil {
		http.Error(w, "agent release unreadable", http.StatusInternalServerError)
		return
	}
	defer func() { _ = f.Close() }()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("X-Checksum-Sha256", rel.SHA256)
	h.Set("ETag", `"`+rel.SHA256+`"`)
	http.ServeContent(w, r, "", time.Time{}, f)
}
