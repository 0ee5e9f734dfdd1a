package hub

import (
	"context"
	"crypto/ed25519"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/devpilot/devpilot/shared/protocol"
)

// gatedRegistry holds AgentKey (for any server) or Connected (for one)
// until the gate opens, as a store busy with thousands of handshakes does.
type gatedRegistry struct {
	*memRegistry
	mu          sync.Mutex
	keyGate     chan struct{} // nil: open
	connectGate chan struct{} // nil: open
	connectFor  string        // the server whose Connected waits
	entered     chan string   // AgentKey/Connected calls that reached the gate
}

func (g *gatedRegistry) AgentKey(ctx context.Context, id string) (AgentKeys, error) {
	g.mu.Lock()
	gate := g.keyGate
	g.mu.Unlock()
	if gate != nil {
		g.entered <- "key " + id
		select {
		case <-gate:
		case <-ctx.Done():
			return AgentKeys{}, ctx.Err()
		}
	}
	return g.memRegistry.AgentKey(ctx, id)
}

func (g *gatedRegistry) setKeyGate(c chan struct{}) {
	g.mu.Lock()
	g.keyGate = c
	g.mu.Unlock()
}

func (g *gatedRegistry) Connected(ctx context.Context, id string, hello protocol.Hello, at time.Time) error {
	if g.connectGate != nil && id == g.connectFor {
		g.entered <- "connected " + id
		select {
		case <-g.connectGate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.memRegistry.Connected(ctx, id, hello, at)
}

// expectBusy reads a busy refusal: the code, the retry hint and the
// retryable close code.
func expectBusy(t *testing.T, a *agent, retry time.Duration) {
	t.Helper()
	e := a.read()
	var pe protocol.Error
	if e.Type != protocol.TypeError || protocol.DecodeData(e, &pe) != nil || pe.Code != protocol.ErrBusy {
		t.Fatalf("got %s %s, want error busy", e.Type, e.Data)
	}
	// At least the base wait (more when the recent rate says the
	// backlog takes longer: TestBusyHintFollowsTheBacklog).
	if pe.RetryAfterMS < int(retry/time.Millisecond) || pe.RetryAfterMS > int(maxHint/time.Millisecond) || pe.Message == "" {
		t.Errorf("busy refusal = %+v, want retry_after_ms from %d and a message", pe, retry/time.Millisecond)
	}
	var ce *websocket.CloseError
	if err := a.expectClosed(); !errors.As(err, &ce) || ce.Code != protocol.CloseTryAgainLater {
		t.Errorf("closed with %v, want close code %d (try again later)", err, protocol.CloseTryAgainLater)
	}
}

// In a storm a handshake waits for the store at most AdmissionWait behind
// at most AdmissionQueue others; the rest are told to come back later
// (with a hint) instead of waiting for a timeout.
func TestAdmissionRefusesBusyInsteadOfQueueing(t *testing.T) {
	t.Parallel()
	g := &gatedRegistry{entered: make(chan string, 8)}
	e := newEnv(t, func(o *Options) {
		g.memRegistry = o.Registry.(*memRegistry)
		o.Registry = g
		o.AdmissionSlots, o.AdmissionQueue = 1, 1
		o.AdmissionWait = 300 * time.Millisecond
		o.BusyRetry = 1500 * time.Millisecond
	})
	var privs []ed25519.PrivateKey
	for _, id := range []string{"srv-a", "srv-b", "srv-c"} {
		a, _, priv := e.enroll(t, id)
		_ = a.conn.Close()
		privs = append(privs, priv)
	}
	eventually(t, "the enrollment sessions end", func() bool { return e.hub.Connected() == 0 })
	gate := make(chan struct{})
	g.setKeyGate(gate)

	first := dial(t, e.url) // holds the one slot, stuck in AgentKey
	first.hello("srv-a", protocol.ModeAuth, "", privs[0].Public().(ed25519.PublicKey), privs[0])
	if got := <-g.entered; got != "key srv-a" {
		t.Fatalf("store call %q, want srv-a's key lookup", got)
	}
	second := dial(t, e.url) // waits in the queue, then gives up
	second.hello("srv-b", protocol.ModeAuth, "", privs[1].Public().(ed25519.PublicKey), privs[1])
	eventually(t, "srv-b waiting for a slot", func() bool { return e.metric(t, "devpilot_hub_admission_waiting", "") == 1 })
	third := dial(t, e.url) // the queue is full: refused at once
	third.hello("srv-c", protocol.ModeAuth, "", privs[2].Public().(ed25519.PublicKey), privs[2])
	expectBusy(t, third, 1500*time.Millisecond)
	expectBusy(t, second, 1500*time.Millisecond)
	if n := e.metric(t, "devpilot_hub_busy_refusals_total", busyQueueFull); n != 1 {
		t.Errorf("queue_full refusals = %v, want 1", n)
	}
	if n := e.metric(t, "devpilot_hub_busy_refusals_total", busyWaited); n != 1 {
		t.Errorf("wait_expired refusals = %v, want 1", n)
	}
	if n := e.metric(t, "devpilot_hub_auth_failures_total", reasonTimeout); n != 0 {
		t.Errorf("handshake timeouts = %v, want none", n)
	}

	g.setKeyGate(nil)
	close(gate) // the store catches up: the admitted one gets in
	first.expectWelcome("srv-a")
	e.auth(t, "srv-b", privs[1]) // and the refused ones, when they come back
	e.auth(t, "srv-c", privs[2])
}

// A handshake stuck on the store for one server holds up no other
// server's handshake.
func TestSlowServerHoldsUpOnlyItself(t *testing.T) {
	t.Parallel()
	g := &gatedRegistry{entered: make(chan string, 8), connectGate: make(chan struct{}), connectFor: "srv-slow"}
	e := newEnv(t, func(o *Options) {
		g.memRegistry = o.Registry.(*memRegistry)
		o.Registry = g
	})
	slow := make(chan struct{})
	go func() {
		defer close(slow)
		e.reg.addServer("srv-slow", "tok-srv-slow", time.Now().Add(time.Hour))
		pub, priv := newKey(t)
		conn, _, err := websocket.DefaultDialer.Dial(e.url, nil)
		if err != nil {
			t.Errorf("dial: %v", err)
			return
		}
		defer func() { _ = conn.Close() }()
		a := &agent{t: t, conn: conn}
		var ch protocol.Challenge
		if err := protocol.DecodeData(a.read(), &ch); err != nil {
			t.Errorf("challenge: %v", err)
			return
		}
		a.nonce = ch.Nonce
		a.hello("srv-slow", protocol.ModeEnroll, "tok-srv-slow", pub, priv)
		a.expectWelcome("srv-slow")
	}()
	if got := <-g.entered; got != "connected srv-slow" {
		t.Fatalf("store call %q, want srv-slow's Connected", got)
	}
	// 100 servers: with the old 64 lock stripes, some shared srv-slow's.
	for i := range 100 {
		id := "srv-" + string(rune('a'+i/26)) + string(rune('a'+i%26))
		a, _, _ := e.enroll(t, id)
		_ = a.conn.Close()
	}
	close(g.connectGate)
	<-slow
	eventually(t, "no lifecycle lock left behind", func() bool {
		return e.hub.Connected() == 0 && e.hub.lifecycle.held() == 0
	})
}

// A hub at MaxAgents refuses the next connection busy, before the
// challenge, with the retryable close code; a freed place is taken again.
func TestAtCapacityRefusedBusy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *Options) { o.MaxAgents = 2; o.BusyRetry = 2 * time.Second })
	a1, _, _ := e.enroll(t, "srv-1")
	e.enroll(t, "srv-2")
	if conns, limit := e.hub.Capacity(); conns != 2 || limit != 2 {
		t.Errorf("Capacity() = %d, %d; want 2, 2", conns, limit)
	}
	conn, _, err := websocket.DefaultDialer.Dial(e.url, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	expectBusy(t, &agent{t: t, conn: conn}, 2*time.Second)
	if n := e.metric(t, "devpilot_hub_busy_refusals_total", busyAtCapacity); n != 1 {
		t.Errorf("at_capacity refusals = %v, want 1", n)
	}
	if n := e.metric(t, "devpilot_hub_agent_capacity", ""); n != 2 {
		t.Errorf("devpilot_hub_agent_capacity = %v, want 2", n)
	}
	_ = a1.conn.Close()
	eventually(t, "srv-1's place freed", func() bool { c, _ := e.hub.Capacity(); return c == 1 })
	e.enroll(t, "srv-3")
}

// The retry hint grows with the backlog at the recent completion rate:
// agents a slow store turned away are told to come back when there is
// room, not all again after the base wait.
func TestBusyHintFollowsTheBacklog(t *testing.T) {
	t.Parallel()
	a := newAdmission(8, 1024, time.Second, newMetrics(nil))
	clock := time.Unix(0, 0)
	a.now = func() time.Time { return clock }
	if got := a.hint(5 * time.Second); got != 5*time.Second {
		t.Errorf("hint with no rate yet = %v, want the base 5s", got)
	}
	for range 21 { // 10 handshakes a second
		a.completed()
		clock = clock.Add(100 * time.Millisecond)
	}
	a.waiting.Store(142) // + 8 in flight: 150 ahead, 15 s at 10/s
	if got := a.hint(5 * time.Second); got < 13*time.Second || got > 17*time.Second {
		t.Errorf("hint with 150 ahead at 10/s = %v, want about 15s", got)
	}
	a.waiting.Store(100_000)
	if got := a.hint(5 * time.Second); got != maxHint {
		t.Errorf("hint with a huge backlog = %v, want the cap %v", got, maxHint)
	}
	a.waiting.Store(0)
	if got := a.hint(5 * time.Second); got != 5*time.Second {
		t.Errorf("hint with nothing waiting = %v, want the base 5s", got)
	}
}
