// Package benchscale is the scale benchmark (`make bench-scale`,
// cmd/devpilot-bench): it seeds a database with many enrolled servers,
// runs a real `devpilot serve` over TLS, starts load-generator processes
// whose agents speak the real protocol (agent/session: challenge, signed
// auth hello, health heartbeats at the hub's interval, the agent's own
// backoff), and measures what an operator of one control plane at its
// limit cares about: agents held, memory and CPU per agent, task dispatch
// latency, and a SIGKILL + restart storm.
//
// Replicas: Run starts one control plane (Config.Replicas is 1); the
// control plane side is a list of procs so a later --replicas N can start
// several on one PostgreSQL and spread the load generators over them.
package benchscale

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"time"

	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/controlplane/store"
)

// ServerID is the id of the i-th seeded server.
func ServerID(i int) string { return fmt.Sprintf("srv_bench%07d", i) }

// Key is the i-th seeded server's agent identity, derived from i so the
// seeder and the load generators agree without sharing files.
func Key(i int) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte(fmt.Sprintf("devpilot-bench-v1:%d", i)))
	return ed25519.NewKeyFromSeed(seed[:])
}

// Seed creates the default workspace (if missing) and servers 0..n-1,
// enrolled (agent key set, install confirmed) and offline, in the
// database of dataDir (SQLite) or dsn (postgres://).
func Seed(ctx context.Context, dataDir, dsn string, n int) error {
	st, err := store.Open(ctx, dsn, filepath.Join(dataDir, "devpilot.db"))
	if err != nil {
		return err
	}
	defer func() { _ = st.Close() }()
	now := time.Now().UTC()
	ws, err := st.Q().WorkspaceBySlug(ctx, "default")
	if err != nil {
		ws = store.Workspace{ID: ids.New("ws"), Slug: "default", Name: "Default", CreatedAt: now}
		if err := st.Q().CreateWorkspace(ctx, ws); err != nil {
			return fmt.Errorf("seed: workspace: %w", err)
		}
	}
	const batch = 2000
	for from := 0; from < n; from += batch {
		err := st.InTx(ctx, func(q *store.Queries) error {
			for i := from; i < min(from+batch, n); i++ {
				installed := now
				s := store.Server{ID: ServerID(i), WorkspaceID: ws.ID, Provider: "digitalocean",
					Name: fmt.Sprintf("bench-%07d", i), Region: "nyc3", Size: "s-1vcpu-1gb", Image: "debian-12",
					PortsJSON: "[]", State: "offline", AgentPublicKey: Key(i).Public().(ed25519.PublicKey),
					AgentVersion: "bench", InstalledAt: &installed, AgentTimeoutS: 900, CreatedAt: now, UpdatedAt: now}
				if err := q.CreateServer(ctx, s, nil); err != nil {
					return fmt.Errorf("seed server %d: %w", i, err)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}
