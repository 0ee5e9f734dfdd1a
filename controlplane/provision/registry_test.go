package provision

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/auth"
	"github.com/devpilot/devpilot/controlplane/hub"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
	"github.com/devpilot/devpilot/shared/protocol"
)

// fixture is a store with a workspace and two servers waiting for their agents.
func fixture(t *testing.T, now *time.Time) (*Service, *Registry) {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, storetest.Database(t), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	keys, err := secrets.LoadOrCreateKeyring(filepath.Join(t.TempDir(), "keys"))
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{Store: st, Keys: keys, Now: func() time.Time { return *now }})
	if err := st.Q().CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "d", CreatedAt: *now}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"srv_a", "srv_b"} {
		if err := st.Q().CreateServer(ctx, store.Server{ID: id, WorkspaceID: "ws_1", Provider: "digitalocean", Name: id[4:],
			Region: "nyc3", Size: "s", Image: "debian-12", PortsJSON: "[22]", State: StateInstalling, AgentTimeoutS: 60,
			CreatedAt: *now, UpdatedAt: *now}, Steps); err != nil {
			t.Fatal(err)
		}
	}
	return s, s.Registry()
}

func mint(t *testing.T, s *Service, serverID string, ttl time.Duration) string {
	t.Helper()
	_, tok, hash := auth.NewToken()
	if err := s.store.Q().CreateBootstrapToken(context.Background(), hash, serverID, s.now().Add(ttl)); err != nil {
		t.Fatal(err)
	}
	return tok.Reveal()
}

func TestBootstrapTokenIsSingleUseBoundAndExpiring(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	s, r := fixture(t, &now)
	ctx := context.Background()
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	hello := protocol.Hello{AgentVersion: "1.0"}

	tokA := mint(t, s, "srv_a", time.Hour)
	// Another server's token is refused, and is not used up by the attempt.
	if err := r.Enroll(ctx, "srv_b", tokA, pub, hello); !errors.Is(err, hub.ErrTokenInvalid) {
		t.Errorf("srv_a's token for srv_b: %v, want ErrTokenInvalid", err)
	}
	if err := r.Enroll(ctx, "srv_a", tokA, pub, hello); err != nil {
		t.Fatalf("first use: %v", err)
	}
	if k, err := r.AgentKey(ctx, "srv_a"); err != nil || !k.Equal(pub) {
		t.Errorf("enrolled key: %v %v", k, err)
	}
	// Replay.
	if err := r.Enroll(ctx, "srv_a", tokA, pub, hello); !errors.Is(err, hub.ErrTokenInvalid) {
		t.Errorf("replay: %v, want ErrTokenInvalid", err)
	}
	// Expired.
	tokB := mint(t, s, "srv_b", time.Hour)
	now = now.Add(time.Hour + time.Second)
	if err := r.Enroll(ctx, "srv_b", tokB, pub, hello); !errors.Is(err, hub.ErrTokenInvalid) {
		t.Errorf("expired: %v, want ErrTokenInvalid", err)
	}
	// Garbage and unknown servers.
	if err := r.Enroll(ctx, "srv_b", "not-a-token", pub, hello); !errors.Is(err, hub.ErrTokenInvalid) {
		t.Errorf("garbage: %v", err)
	}
	if err := r.Enroll(ctx, "srv_nope", mint(t, s, "srv_b", time.Hour), pub, hello); !errors.Is(err, hub.ErrTokenInvalid) {
		t.Errorf("unknown server: %v", err)
	}
	// Nothing of srv_b was enrolled by all that.
	if _, err := r.AgentKey(ctx, "srv_b"); !errors.Is(err, hub.ErrAuthFailed) {
		t.Errorf("srv_b must not be enrolled: %v", err)
	}
	// A deleted server's agent is told so.
	if _, err := s.store.Q().SetServerState(ctx, "srv_a", StateDeleted, now, StateInstalling); err != nil {
		t.Fatal(err)
	}
	if _, err := r.AgentKey(ctx, "srv_a"); !errors.Is(err, hub.ErrServerDeleted) {
		t.Errorf("deleted server: %v, want ErrServerDeleted", err)
	}
}

func TestSessionsMoveServersOnlineAndOffline(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	s, r := fixture(t, &now)
	ctx := context.Background()
	// An installing server stays installing until its job records the
	// confirmation; the first session records when that happened.
	if err := r.Connected(ctx, "srv_a", protocol.Hello{AgentVersion: "1.2"}, now); err != nil {
		t.Fatal(err)
	}
	srv, _ := s.store.Q().GetServer(ctx, "", "srv_a")
	if srv.State != StateInstalling || srv.InstalledAt == nil || srv.AgentVersion != "1.2" {
		t.Errorf("after first session: %s installed %v version %q", srv.State, srv.InstalledAt, srv.AgentVersion)
	}
	first := *srv.InstalledAt
	_, _ = s.store.Q().SetServerState(ctx, "srv_a", StateOnline, now, StateInstalling)
	if err := r.Disconnected(ctx, "srv_a", now); err != nil {
		t.Fatal(err)
	}
	if srv, _ = s.store.Q().GetServer(ctx, "", "srv_a"); srv.State != StateOffline {
		t.Errorf("after disconnect: %s", srv.State)
	}
	now = now.Add(time.Minute)
	if err := r.Connected(ctx, "srv_a", protocol.Hello{AgentVersion: "1.3"}, now); err != nil {
		t.Fatal(err)
	}
	if srv, _ = s.store.Q().GetServer(ctx, "", "srv_a"); srv.State != StateOnline || !srv.InstalledAt.Equal(first) {
		t.Errorf("after reconnect: %s, installed %v (first %v)", srv.State, srv.InstalledAt, first)
	}
	// Health is saved in batches and kept as history.
	err := r.SaveHealth(ctx, map[string]hub.HealthSample{"srv_a": {At: now, Health: protocol.Health{CPUPercent: 42,
		MemUsedMB: 100, MemTotalMB: 1000, Disks: []protocol.Disk{{Mount: "/", UsedMB: 5, TotalMB: 10}}}}})
	if err != nil {
		t.Fatal(err)
	}
	pts, err := s.store.Q().HealthSince(ctx, "srv_a", now.Add(-time.Hour))
	if err != nil || len(pts) != 1 || pts[0].CPUPercent != 42 || pts[0].DiskTotalMB != 10 {
		t.Errorf("health history: %+v %v", pts, err)
	}
}
