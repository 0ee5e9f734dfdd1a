package session_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/devpilot/devpilot/agent/agenttest"
	"github.com/devpilot/devpilot/agent/config"
	"github.com/devpilot/devpilot/agent/sdnotify"
	"github.com/devpilot/devpilot/agent/session"
	"github.com/devpilot/devpilot/shared/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeHealth reports a fixed snapshot so the test can recognise it at the hub.
type fakeHealth struct{}

func (fakeHealth) Collect() (protocol.Health, error) {
	return protocol.Health{UptimeS: 4242, MemTotalMB: 1024, MemUsedMB: 256, AgentVersion: "test",
		Disks: []protocol.Disk{{Mount: "/", TotalMB: 1000, UsedMB: 10}}}, nil
}
func (fakeHealth) Facts() protocol.Facts { return protocol.Facts{Hostname: "web-1", OS: "linux"} }

// harness runs a client and records what it tells systemd and how long it waits.
type harness struct {
	mu       sync.Mutex
	sd       []string
	sleeps   []time.Duration
	enrolled int
	done     chan struct{} // closed when Run returned
	runErr   error
	cancel   context.CancelFunc
	client   *session.Client
}

func (h *harness) Sent() []string { h.mu.Lock(); defer h.mu.Unlock(); return slices.Clone(h.sd) }
func (h *harness) Sleeps() []time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.sleeps)
}

func (h *harness) statusContains(s string) bool {
	for _, m := range h.Sent() {
		if strings.HasPrefix(m, "STATUS=") && strings.Contains(m, s) {
			return true
		}
	}
	return false
}

// stop cancels the client (first signal) and waits for Run to return.
func (h *harness) stop(t *testing.T) {
	t.Helper()
	h.cancel()
	select {
	case <-h.done:
		if h.runErr != nil {
			t.Errorf("Run after cancel = %v, want nil", h.runErr)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func start(t *testing.T, cfg config.Config, tune func(*session.Options)) *harness {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return startWithKey(t, cfg, key, tune)
}

func startWithKey(t *testing.T, cfg config.Config, key ed25519.PrivateKey, tune func(*session.Options)) *harness {
	t.Helper()
	h := &harness{done: make(chan struct{})}
	o := session.Options{
		Config:   cfg,
		Key:      key,
		Health:   fakeHealth{},
		Log:      zaptest.NewLogger(t),
		Notifier: &sdnotify.Notifier{Send: func(s string) error { h.mu.Lock(); h.sd = append(h.sd, s); h.mu.Unlock(); return nil }},
		Progress: sdnotify.NewProgress(nil),
		OnEnrolled: func() error {
			h.mu.Lock()
			h.enrolled++
			h.mu.Unlock()
			return nil
		},
		BackoffBase:      time.Millisecond,
		BackoffCap:       8 * time.Millisecond,
		RefusedRetry:     time.Hour, // recorded, not waited
		HandshakeTimeout: 5 * time.Second,
		Rand:             func() float64 { return 0.999 },
	}
	o.Sleep = func(ctx context.Context, d time.Duration) error {
		h.mu.Lock()
		h.sleeps = append(h.sleeps, d)
		h.mu.Unlock()
		select { // wait at most a few ms, so refusals don't spin
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(d, 5*time.Millisecond)):
			return nil
		}
	}
	if tune != nil {
		tune(&o)
	}
	c, err := session.New(o)
	if err != nil {
		t.Fatal(err)
	}
	h.client = c
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.runErr = c.Run(ctx); close(h.done) }()
	t.Cleanup(func() {
		cancel()
		<-h.done
	})
	return h
}

func TestEnrollThenAuthOnReconnect(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	boot := hub.Bootstrap("srv-a")
	h := start(t, config.FromBootstrap(boot), nil)

	agenttest.WaitFor(t, "first heartbeat", func() bool { return len(hub.Heartbeats()) >= 1 })
	hb := hub.Heartbeats()[0]
	if hb.ServerID != "srv-a" || hb.Health.UptimeS != 4242 || len(hb.Health.Disks) != 1 || hb.Health.AgentVersion != "test" {
		t.Errorf("heartbeat = %+v, want the agent's health", hb)
	}
	hello := hub.Hellos()[0]
	if hello.Mode != protocol.ModeEnroll || hello.BootstrapToken != boot.BootstrapToken || hello.Facts.Hostname != "web-1" {
		t.Errorf("first hello = %+v, want enroll with the token and facts", hello)
	}
	if !h.client.Enrolled() {
		t.Error("client still holds the token after welcome")
	}
	agenttest.WaitFor(t, "READY=1", func() bool { return slices.Contains(h.Sent(), "READY=1") })
	if !h.statusContains("connected to 127.0.0.1") {
		t.Errorf("no 'connected' status in %q", h.Sent())
	}

	// The hub drops the session; the agent comes back, now with auth.
	hub.Kick()
	agenttest.WaitFor(t, "second hello", func() bool { return len(hub.Hellos()) >= 2 })
	second := hub.Hellos()[1]
	if second.Mode != protocol.ModeAuth || second.BootstrapToken != "" {
		t.Errorf("second hello = mode %q token %q, want auth without token", second.Mode, second.BootstrapToken)
	}
	n := len(hub.Heartbeats())
	agenttest.WaitFor(t, "heartbeat on the new session", func() bool { return len(hub.Heartbeats()) > n })
	if h.enrolled != 1 {
		t.Errorf("OnEnrolled ran %d times, want 1", h.enrolled)
	}
	if c := hub.Connections(); c != 2 {
		t.Errorf("%d connections, want 2", c)
	}

	// First signal: a normal close frame, then Run returns nil.
	h.stop(t)
	agenttest.WaitFor(t, "close frame at hub", func() bool { return len(hub.CloseCodes()) > 0 })
	if got := hub.CloseCodes(); got[len(got)-1] != 1000 {
		t.Errorf("close codes %v, want 1000 (normal closure)", got)
	}
	if !slices.Contains(h.Sent(), "STOPPING=1") {
		t.Error("no STOPPING=1 on shutdown")
	}
}

func TestHeartbeatsKeepComing(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t) // 1 s interval: the second heartbeat proves the ticker
	h := start(t, config.FromBootstrap(hub.Bootstrap("srv-h")), nil)
	agenttest.WaitFor(t, "two heartbeats", func() bool { return len(hub.Heartbeats()) >= 2 })
	if c := hub.Connections(); c != 1 {
		t.Errorf("%d connections for two heartbeats, want 1", c)
	}
	h.stop(t)
}

// The keepalive ping follows its own interval, not the heartbeat's: at
// a short heartbeat interval a ping per heartbeat would double the
// hub's messages (each answered with a pong).
func TestKeepaliveIsNotPerHeartbeat(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t) // 1 s heartbeat interval
	h := start(t, config.FromBootstrap(hub.Bootstrap("srv-k")), nil)
	agenttest.WaitFor(t, "four heartbeats", func() bool { return len(hub.Heartbeats()) >= 4 })
	if p := hub.Pings(); p != 0 {
		t.Errorf("%d keepalive pings in 3 heartbeat intervals, want none (the default keepalive is 25 s)", p)
	}
	h.stop(t)

	hub2 := agenttest.New(t)
	h2 := start(t, config.FromBootstrap(hub2.Bootstrap("srv-k2")), func(o *session.Options) { o.Keepalive = 50 * time.Millisecond })
	agenttest.WaitFor(t, "keepalive pings", func() bool { return hub2.Pings() >= 5 })
	h2.stop(t)
}

// A hub that stops answering (its TCP connection open, nothing coming
// back) is given up after 2 keepalives + the handshake timeout, and the
// agent dials again.
func TestSilentHubIsRedialed(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	hub.SetMute(true)
	h := start(t, config.FromBootstrap(hub.Bootstrap("srv-m")), func(o *session.Options) {
		o.Keepalive = 50 * time.Millisecond
		o.HandshakeTimeout = 500 * time.Millisecond
	})
	agenttest.WaitFor(t, "a second session after the hub went silent", func() bool { return hub.Connections() >= 2 })
	h.stop(t)
}

func TestWrongCAPinRefusedBeforeHello(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	other := agenttest.New(t)
	cfg := config.FromBootstrap(hub.Bootstrap("srv-p"))
	cfg.CAPin, cfg.CACertPEM = other.CAPin, other.CACertPEM // an impostor's CA is what we pinned
	h := start(t, cfg, nil)

	agenttest.WaitFor(t, "three failed attempts", func() bool { return len(h.Sleeps()) >= 3 })
	if n := len(hub.Hellos()); n != 0 {
		t.Fatalf("hub got %d hellos through a server with the wrong CA", n)
	}
	if c := hub.Connections(); c != 0 {
		t.Errorf("%d WebSocket sessions, want none", c)
	}
	if !h.statusContains("cannot reach 127.0.0.1") || !h.statusContains("pinned CA") {
		t.Errorf("status lines %q should say the pinned CA was not presented", h.Sent())
	}
	if slices.Contains(h.Sent(), "READY=1") {
		t.Error("READY=1 without a session")
	}
	h.stop(t)
}

func TestServerClosingRedialsWithBackoff(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	hub.SetCloseAfterWelcome(true)
	h := start(t, config.FromBootstrap(hub.Bootstrap("srv-b")), func(o *session.Options) {
		o.StableAfter = time.Hour // no session is stable: the backoff keeps growing
	})
	agenttest.WaitFor(t, "six sessions", func() bool { return hub.Connections() >= 6 })
	h.stop(t)

	sleeps := h.Sleeps()[:5]
	want := []time.Duration{1, 2, 4, 8, 8} // ms ceilings, capped at 8 ms; rand ≈ 1
	for i, d := range sleeps {
		ceil := want[i] * time.Millisecond
		if d > ceil || d < ceil*99/100 {
			t.Errorf("delay %d = %v, want just under %v (exponential, capped)", i, d, ceil)
		}
	}
	modes := []string{}
	for _, hl := range hub.Hellos() {
		modes = append(modes, hl.Mode)
	}
	if modes[0] != protocol.ModeEnroll || slices.Contains(modes[1:], protocol.ModeEnroll) {
		t.Errorf("hello modes %v, want enroll once then auth", modes)
	}
}

func TestStableSessionResetsBackoff(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	hub.SetCloseAfterWelcome(true)
	h := start(t, config.FromBootstrap(hub.Bootstrap("srv-r")), func(o *session.Options) {
		o.StableAfter = time.Nanosecond // every welcomed session counts as healthy
	})
	agenttest.WaitFor(t, "four sessions", func() bool { return hub.Connections() >= 4 })
	h.stop(t)
	for i, d := range h.Sleeps()[:3] {
		if d > time.Millisecond {
			t.Errorf("delay %d = %v: backoff not reset after a healthy session", i, d)
		}
	}
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		code, status string
	}{
		{protocol.ErrServerDeleted, "deleted in the control plane"},
		{protocol.ErrAuthFailed, "reinstall the agent"},
		{protocol.ErrUnsupported, "upgrade the agent"},
	} {
		t.Run(tc.code, func(t *testing.T) {
			t.Parallel()
			hub := agenttest.New(t)
			hub.SetRefuse(tc.code)
			h := start(t, config.FromBootstrap(hub.Bootstrap("srv-x")), nil)
			agenttest.WaitFor(t, "a refusal", func() bool { return len(h.Sleeps()) >= 1 })
			h.stop(t)
			if d := h.Sleeps()[0]; d != time.Hour {
				t.Errorf("waited %v after %s, want the long RefusedRetry", d, tc.code)
			}
			if !h.statusContains(tc.status) {
				t.Errorf("status %q should contain %q", h.Sent(), tc.status)
			}
		})
	}
}

// A busy hub's suggested wait is honoured (plus jitter, never the long
// wait of a permanent refusal); without a hint the agent's own backoff.
func TestBusyRefusalWaitsTheHint(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		hint     time.Duration
		min, max time.Duration
	}{
		{"hint", 2 * time.Second, 2 * time.Second, 3 * time.Second},
		{"old hub, no hint", 0, 0, 8 * time.Millisecond}, // the backoff's cap
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			hub := agenttest.New(t)
			hub.SetRefuse(protocol.ErrBusy)
			hub.SetRefuseRetry(tc.hint)
			h := start(t, config.FromBootstrap(hub.Bootstrap("srv-busy")), nil)
			agenttest.WaitFor(t, "two refusals", func() bool { return len(h.Sleeps()) >= 2 })
			h.stop(t)
			for i, d := range h.Sleeps()[:2] {
				if d < tc.min || d > tc.max {
					t.Errorf("wait %d after a busy refusal = %v, want within [%v, %v]", i, d, tc.min, tc.max)
				}
			}
			if !h.statusContains("at capacity") {
				t.Errorf("status %q should say the control plane is at capacity", h.Sent())
			}
		})
	}
}

func TestSpentTokenFallsBackToAuth(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	boot := hub.Bootstrap("srv-t")
	_, key, _ := ed25519.GenerateKey(rand.Reader)

	// First agent process enrolls, then "crashes" before saving the config.
	h1 := startWithKey(t, config.FromBootstrap(boot), key, nil)
	agenttest.WaitFor(t, "enrollment", func() bool { return hub.EnrolledKey("srv-t") != nil })
	h1.stop(t)

	// Restarted with the spent token still in its config: refused once,
	// then it tries auth with its key and gets in.
	h2 := startWithKey(t, config.FromBootstrap(boot), key, nil)
	agenttest.WaitFor(t, "auth session", func() bool {
		hs := hub.Hellos()
		return len(hs) >= 3 && hs[2].Mode == protocol.ModeAuth
	})
	agenttest.WaitFor(t, "enrolled", h2.client.Enrolled)
	if !h2.statusContains("bootstrap token used or expired") {
		t.Errorf("status %q should explain the spent token", h2.Sent())
	}
	h2.stop(t)

	// A token nobody issued, with an unknown key: both modes refused, long waits.
	h3 := start(t, config.Config{URL: hub.URL, CAPin: hub.CAPin, CACertPEM: hub.CACertPEM, ServerID: "srv-t", BootstrapToken: "bt-forged"}, nil)
	agenttest.WaitFor(t, "two refusals", func() bool { return len(h3.Sleeps()) >= 2 })
	h3.stop(t)
	for _, d := range h3.Sleeps()[:2] {
		if d != time.Hour {
			t.Errorf("waited %v after a refusal, want RefusedRetry", d)
		}
	}
}
