package benchscale

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"path/filepath"
	"testing"

	"github.com/devpilot/devpilot/controlplane/store"
)

// The seeder and the load generators derive the same identities from
// the index, and different servers get different keys.
func TestSeededServersCarryTheDerivedKeys(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := context.Background()
	if err := Seed(ctx, dir, "", 5); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, "", filepath.Join(dir, "devpilot.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	for i := range 5 {
		srv, err := st.Q().GetServer(ctx, "", ServerID(i))
		if err != nil {
			t.Fatalf("server %d: %v", i, err)
		}
		if want := Key(i).Public().(ed25519.PublicKey); !bytes.Equal(srv.AgentPublicKey, want) || srv.InstalledAt == nil {
			t.Errorf("server %d: key %x installed %v, want the derived key %x and an install", i, srv.AgentPublicKey, srv.InstalledAt, want)
		}
	}
	if bytes.Equal(Key(0), Key(1)) {
		t.Error("servers 0 and 1 share a key")
	}
}

func TestLatencyQuantiles(t *testing.T) {
	t.Parallel()
	ms := make([]float64, 0, 100)
	for i := 100; i >= 1; i-- {
		ms = append(ms, float64(i))
	}
	l := latency(ms, 3)
	if l.N != 100 || l.Lost != 3 || l.P50 != 51 || l.P99 != 100 || l.Max != 100 {
		t.Errorf("latency = %+v, want N 100, lost 3, p50 51, p99 100, max 100", l)
	}
	if got := latency(nil, 2); got.N != 0 || got.Lost != 2 {
		t.Errorf("latency(nil) = %+v", got)
	}
}

// The agents' failed attempts are sorted by what they saw, from the
// status lines agent/session writes.
func TestFailureKind(t *testing.T) {
	t.Parallel()
	for status, want := range map[string]string{
		"STATUS=connected to 127.0.0.1:8443": "",
		"STATUS=cannot reach 127.0.0.1:8443: the control plane is at capacity (many agents reconnecting at once); retrying in 7s": "busy",
		"STATUS=cannot reach 127.0.0.1:8443: dial: net/http: TLS handshake timeout; retrying in 12s":                              "timeout",
		"STATUS=cannot reach 127.0.0.1:8443: read hello: i/o timeout; retrying in 3s":                                             "timeout",
		"STATUS=cannot reach 127.0.0.1:8443: dial tcp 127.0.0.1:8443: connect: connection refused; retrying in 1s":                "refused",
		"STATUS=disconnected from 127.0.0.1:8443: read: read tcp: connection reset by peer; retrying in 2s":                       "reset",
		"STATUS=cannot reach 127.0.0.1:8443: websocket: bad handshake; retrying in 2s":                                            "other",
	} {
		if got := failureKind(status); got != want {
			t.Errorf("failureKind(%q) = %q, want %q", status, got, want)
		}
	}
}
