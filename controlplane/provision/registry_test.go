package provision

import (
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
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
	if k, err := r.AgentKey(ctx, "srv_a"); err != nil || !k.Enrolled.Equal(pub) {
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

// An identity conflict quarantines the server (shown with the fix, audited
// with the remote addresses) until a rekey's token enrolls a new key; the
// old key stays refused as revoked.
func TestIdentityConflictQuarantineAndRekey(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	s, r := fixture(t, &now)
	ctx := context.Background()
	oldPub, _, _ := ed25519.GenerateKey(rand.Reader)
	if err := r.Enroll(ctx, "srv_a", mint(t, s, "srv_a", time.Hour), oldPub, protocol.Hello{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Connected(ctx, "srv_a", protocol.Hello{}, now); err != nil {
		t.Fatal(err)
	}
	if _, err := s.store.Q().SetServerState(ctx, "srv_a", StateOnline, now, StateInstalling); err != nil {
		t.Fatal(err)
	}

	c := hub.Conflict{Replacements: 3, Window: 2 * time.Minute, Remotes: []string{"198.51.100.7:40001", "203.0.113.9:50002"}, At: now}
	if err := r.IdentityConflict(ctx, "srv_a", c); err != nil {
		t.Fatal(err)
	}
	if err := r.IdentityConflict(ctx, "srv_a", c); err != nil { // a second report: one audit entry
		t.Fatal(err)
	}
	v, err := s.Get(ctx, "ws_1", "srv_a")
	if err != nil {
		t.Fatal(err)
	}
	if v.State != StateQuarantined || v.QuarantinedAt == nil || !strings.Contains(v.StateReason, "devpilot servers rekey srv_a") ||
		!strings.Contains(v.StateReason, "203.0.113.9:50002") {
		t.Errorf("quarantined view: state %q reason %q", v.State, v.StateReason)
	}
	audit, err := s.store.Q().ListAudit(ctx, "ws_1", 0, 50)
	if err != nil {
		t.Fatal(err)
	}
	var conflicts []store.AuditEntry
	for _, a := range audit {
		if a.Action == "agent.identity_conflict" {
			conflicts = append(conflicts, a)
		}
	}
	if len(conflicts) != 1 || !strings.Contains(conflicts[0].DetailJSON, "198.51.100.7:40001") ||
		!strings.Contains(conflicts[0].DetailJSON, "203.0.113.9:50002") || conflicts[0].Target != "srv_a" {
		t.Errorf("identity_conflict audit entries: %+v", conflicts)
	}
	if k, err := r.AgentKey(ctx, "srv_a"); err != nil || !k.Quarantined || !k.Enrolled.Equal(oldPub) {
		t.Errorf("quarantined keys: %+v %v", k, err)
	}

	now = now.Add(time.Minute)
	rk, err := s.Rekey(ctx, "user:admin", "ws_1", "a", RekeyRequest{}) // by name
	if err != nil {
		t.Fatal(err)
	}
	if rk.Server.ID != "srv_a" || rk.BootstrapToken == "" || !strings.Contains(rk.Command, "devpilot-agent enroll --token-file -") ||
		!strings.Contains(rk.Command, rk.BootstrapToken) || rk.Server.State != StateQuarantined {
		t.Errorf("rekey = %+v", rk)
	}
	if k, err := r.AgentKey(ctx, "srv_a"); err != nil || k.Enrolled != nil || !k.Revoked.Equal(oldPub) || !k.Quarantined {
		t.Errorf("keys after rekey: %+v %v", k, err)
	}
	newPub, _, _ := ed25519.GenerateKey(rand.Reader)
	if err := r.Enroll(ctx, "srv_a", rk.BootstrapToken, newPub, protocol.Hello{}); err != nil {
		t.Fatalf("enroll with the rekey token: %v", err)
	}
	k, err := r.AgentKey(ctx, "srv_a")
	if err != nil || !k.Enrolled.Equal(newPub) || !k.Revoked.Equal(oldPub) || k.Quarantined {
		t.Errorf("keys after re-enrollment: %+v %v", k, err)
	}
	if v, _ := s.Get(ctx, "ws_1", "srv_a"); v.State == StateQuarantined || v.StateReason != "" {
		t.Errorf("still quarantined after re-enrollment: %q %q", v.State, v.StateReason)
	}
	// The token is single-use, and a rekey of a server without an agent is refused.
	if err := r.Enroll(ctx, "srv_a", rk.BootstrapToken, oldPub, protocol.Hello{}); !errors.Is(err, hub.ErrTokenInvalid) {
		t.Errorf("replayed rekey token: %v", err)
	}
	if _, err := s.Rekey(ctx, "user:admin", "ws_1", "srv_b", RekeyRequest{}); err == nil {
		t.Errorf("rekey of a server whose agent never enrolled succeeded")
	}
}

// A rekey hands the token to the agent over SSH when it can (and then
// never shows it), else answers it with the command; --print skips SSH.
func TestRekeyDeliversOverSSHOrPrints(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	s, r := fixture(t, &now)
	ctx := context.Background()
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	if err := r.Enroll(ctx, "srv_a", mint(t, s, "srv_a", time.Hour), pub, protocol.Hello{}); err != nil {
		t.Fatal(err)
	}
	if err := s.store.Q().SaveProvisioning(ctx, store.Server{ID: "srv_a", PublicIPv4: "192.0.2.10"}, now); err != nil {
		t.Fatal(err)
	}
	var delivered []string
	var fail error
	s.o.EnrollOverSSH = func(_ context.Context, tg DiagnoseTarget, token secrets.Value) error {
		if tg.ServerID != "srv_a" || tg.PublicIPv4 != "192.0.2.10" {
			t.Errorf("delivery target %+v", tg)
		}
		if fail != nil {
			return fail
		}
		delivered = append(delivered, token.Reveal())
		return nil
	}

	rk, err := s.Rekey(ctx, "user:admin", "ws_1", "srv_a", RekeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if rk.Delivered != "ssh" || rk.BootstrapToken != "" || rk.Command != "" || len(delivered) != 1 {
		t.Fatalf("delivered rekey = %+v (delivered %d)", rk, len(delivered))
	}
	// The delivered token is the live one: it enrolls.
	newPub, _, _ := ed25519.GenerateKey(rand.Reader)
	if err := r.Enroll(ctx, "srv_a", delivered[0], newPub, protocol.Hello{}); err != nil {
		t.Errorf("enroll with the delivered token: %v", err)
	}

	fail = errors.New("sshdiag: dial 192.0.2.10:22: connection refused")
	rk, err = s.Rekey(ctx, "user:admin", "ws_1", "srv_a", RekeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if rk.Delivered != "" || rk.BootstrapToken == "" || !strings.Contains(rk.DeliveryError, "connection refused") ||
		!strings.Contains(rk.Command, rk.BootstrapToken) {
		t.Errorf("rekey with SSH down = %+v", rk)
	}
	fail = nil
	rk, err = s.Rekey(ctx, "user:admin", "ws_1", "srv_a", RekeyRequest{Print: true})
	if err != nil {
		t.Fatal(err)
	}
	if rk.BootstrapToken == "" || len(delivered) != 1 {
		t.Errorf("--print rekey = %+v, SSH deliveries %d", rk, len(delivered))
	}
}

// With two health flushes per history bucket (30 s and 1 min, the
// defaults), half of the servers take their point from the bucket's first
// flush and half from its second, so no flush writes every server's
// history; still each bucket gets exactly one point per server. With one
// flush per bucket, every server's point is written at once.
func TestHealthHistoryWritesSpreadOverTheBucketsFlushes(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	s, r := fixture(t, &now)
	ctx := context.Background()
	var early, late string // one server of each half
	for i := 0; early == "" || late == ""; i++ {
		id := fmt.Sprintf("srv_h%d", i)
		if err := s.store.Q().CreateServer(ctx, store.Server{ID: id, WorkspaceID: "ws_1", Provider: "digitalocean", Name: fmt.Sprintf("h%d", i),
			Region: "nyc3", Size: "s", Image: "debian-12", PortsJSON: "[22]", State: StateOnline, AgentTimeoutS: 60,
			CreatedAt: now, UpdatedAt: now}, nil); err != nil {
			t.Fatal(err)
		}
		if laterHalf(id) {
			late = cmp.Or(late, id)
		} else {
			early = cmp.Or(early, id)
		}
	}
	flush := func(at time.Time, cpu float64) {
		t.Helper()
		batch := map[string]hub.HealthSample{}
		for _, id := range []string{early, late} {
			batch[id] = hub.HealthSample{At: at, Health: protocol.Health{CPUPercent: cpu}}
		}
		if err := r.SaveHealth(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	points := func(id string) []float64 {
		t.Helper()
		pts, err := s.store.Q().HealthSince(ctx, id, now.Add(-time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		var cpus []float64
		for _, p := range pts {
			cpus = append(cpus, p.CPUPercent)
		}
		return cpus
	}
	check := func(when string, wantEarly, wantLate []float64) {
		t.Helper()
		if got := points(early); !slices.Equal(got, wantEarly) {
			t.Errorf("%s: %s's history (cpu by bucket) = %v, want %v", when, early, got, wantEarly)
		}
		if got := points(late); !slices.Equal(got, wantLate) {
			t.Errorf("%s: %s's history (cpu by bucket) = %v, want %v", when, late, got, wantLate)
		}
	}
	minute := now
	flush(minute.Add(10*time.Second), 1)
	check("first flush of the first bucket", []float64{1}, nil)
	flush(minute.Add(40*time.Second), 2)
	check("second flush of the first bucket", []float64{1}, []float64{2})
	flush(minute.Add(70*time.Second), 3)
	check("first flush of the second bucket", []float64{1, 3}, []float64{2})
	flush(minute.Add(100*time.Second), 4)
	check("second flush of the second bucket", []float64{1, 3}, []float64{2, 4})

	// One flush per bucket: nothing waits for a later flush.
	s.o.HealthFlushInterval = time.Minute
	flush(minute.Add(130*time.Second), 5)
	check("a flush per bucket", []float64{1, 3, 5}, []float64{2, 4, 5})
}
