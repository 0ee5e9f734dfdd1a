package hub

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/devpilot/devpilot/shared/protocol"
)

func TestMain(m *testing.M) {
	if os.Getenv(benchChildEnv) != "" {
		os.Exit(benchChild())
	}
	goleak.VerifyTestMain(m)
}

// memRegistry is a small in-memory Registry.
type memRegistry struct {
	mu      sync.Mutex
	now     func() time.Time
	servers map[string]*memServer
	events  []string // "connected <id>", "disconnected <id>"
	saved   map[string]HealthSample
	saves   int
	// connectErr, if set, is what Connected returns.
	connectErr error
	hellos     map[string]protocol.Hello // the last hello Connected got, by server
	// failSaves is how many SaveHealth calls fail before they succeed.
	failSaves int
}

type memServer struct {
	token     string
	tokenExp  time.Time
	tokenUsed bool
	key       ed25519.PublicKey
	revoked   ed25519.PublicKey
	conflicts []Conflict // quarantined while non-empty
	deleted   bool
	facts     protocol.Facts
}

func newMemRegistry() *memRegistry {
	return &memRegistry{now: time.Now, servers: map[string]*memServer{}, saved: map[string]HealthSample{}}
}

func (r *memRegistry) addServer(id, token string, exp time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.servers[id] = &memServer{token: token, tokenExp: exp}
}

func (r *memRegistry) Enroll(_ context.Context, serverID, token string, pub ed25519.PublicKey, hello protocol.Hello) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.servers[serverID]
	switch {
	case s == nil:
		return ErrTokenInvalid
	case s.deleted:
		return ErrServerDeleted
	case s.tokenUsed || s.token == "" || s.token != token || !r.now().Before(s.tokenExp):
		return ErrTokenInvalid
	}
	s.tokenUsed = true
	s.key = pub
	s.conflicts = nil
	s.facts = hello.Facts
	return nil
}

func (r *memRegistry) AgentKey(_ context.Context, serverID string) (AgentKeys, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.servers[serverID]
	switch {
	case s == nil || (s.key == nil && s.revoked == nil):
		return AgentKeys{}, ErrAuthFailed
	case s.deleted:
		return AgentKeys{}, ErrServerDeleted
	}
	return AgentKeys{Enrolled: s.key, Revoked: s.revoked, Quarantined: len(s.conflicts) > 0}, nil
}

func (r *memRegistry) IdentityConflict(_ context.Context, serverID string, c Conflict) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, "conflict "+serverID)
	r.servers[serverID].conflicts = append(r.servers[serverID].conflicts, c)
	return nil
}

// rekey retires the enrolled key and issues token, as an admin's rekey does.
func (r *memRegistry) rekey(id, token string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.servers[id]
	s.revoked, s.key = s.key, nil
	s.token, s.tokenUsed, s.tokenExp = token, false, r.now().Add(time.Hour)
}

func (r *memRegistry) conflictsOf(id string) []Conflict {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Conflict(nil), r.servers[id].conflicts...)
}

func (r *memRegistry) Connected(_ context.Context, serverID string, hello protocol.Hello, _ time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.connectErr != nil {
		return r.connectErr
	}
	if r.hellos == nil {
		r.hellos = map[string]protocol.Hello{}
	}
	r.hellos[serverID] = hello
	r.events = append(r.events, "connected "+serverID)
	return nil
}

func (r *memRegistry) lastHello(id string) protocol.Hello {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hellos[id]
}

func (r *memRegistry) Disconnected(_ context.Context, serverID string, _ time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, "disconnected "+serverID)
	return nil
}

func (r *memRegistry) SaveHealth(_ context.Context, latest map[string]HealthSample) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.saves++
	if r.failSaves > 0 {
		r.failSaves--
		return errors.New("database is locked")
	}
	for id, hs := range latest {
		r.saved[id] = hs
	}
	return nil
}

func (r *memRegistry) eventList() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

func (r *memRegistry) savedHealth(id string) (HealthSample, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	hs, ok := r.saved[id]
	return hs, ok
}

func (r *memRegistry) enrolledKey(id string) ed25519.PublicKey {
	r.mu.Lock()
	defer r.mu.Unlock()
	if s := r.servers[id]; s != nil {
		return s.key
	}
	return nil
}

// env is a hub served over real HTTP on loopback.
type env struct {
	hub  *Hub
	reg  *memRegistry
	prom *prometheus.Registry
	url  string
}

func newEnv(t *testing.T, tweak func(*Options)) *env {
	t.Helper()
	reg := newMemRegistry()
	prom := prometheus.NewRegistry()
	o := Options{Registry: reg, Logger: zaptest.NewLogger(t), Registerer: prom, FlushInterval: time.Hour}
	if tweak != nil {
		tweak(&o)
	}
	h := New(o)
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		h.Close()
		srv.Close()
	})
	return &env{hub: h, reg: reg, prom: prom, url: "ws" + strings.TrimPrefix(srv.URL, "http") + protocol.Path}
}

// agent is the test's side of a session.
type agent struct {
	t     *testing.T
	conn  *websocket.Conn
	nonce []byte
}

func dial(t *testing.T, url string) *agent {
	t.Helper()
	conn, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	a := &agent{t: t, conn: conn}
	e := a.read()
	var ch protocol.Challenge
	if e.Type != protocol.TypeChallenge || protocol.DecodeData(e, &ch) != nil {
		t.Fatalf("first message = %s %s, want challenge", e.Type, e.Data)
	}
	if len(ch.Nonce) != protocol.NonceBytes || ch.Protocol != protocol.Version {
		t.Fatalf("challenge = %+v", ch)
	}
	a.nonce = ch.Nonce
	return a
}

func (a *agent) send(typ string, payload any) {
	a.t.Helper()
	b, err := protocol.Encode(typ, payload)
	if err != nil {
		a.t.Fatal(err)
	}
	a.sendRaw(b)
}

func (a *agent) sendRaw(b []byte) {
	a.t.Helper()
	if err := a.conn.WriteMessage(websocket.TextMessage, b); err != nil {
		a.t.Fatalf("write: %v", err)
	}
}

// read returns the next message (failing the test on a read error).
func (a *agent) read() protocol.Envelope {
	a.t.Helper()
	e, err := a.next()
	if err != nil {
		a.t.Fatalf("read: %v", err)
	}
	return e
}

func (a *agent) next() (protocol.Envelope, error) {
	_ = a.conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, b, err := a.conn.ReadMessage()
	if err != nil {
		return protocol.Envelope{}, err
	}
	return protocol.Decode(b)
}

// hello signs with priv and sends a hello presenting pub.
func (a *agent) hello(id, mode, token string, pub ed25519.PublicKey, priv ed25519.PrivateKey) {
	a.t.Helper()
	a.send(protocol.TypeHello, protocol.Hello{
		ServerID: id, Mode: mode, BootstrapToken: token, PublicKey: pub,
		Signature:    ed25519.Sign(priv, protocol.SignedMessage(a.nonce, id)),
		AgentVersion: "1.2.3",
		Facts:        protocol.Facts{Hostname: "web-1", OS: "linux", Arch: "amd64", CPUs: 2, MemoryMB: 2048, Systemd: true},
	})
}

func (a *agent) expectWelcome(id string) protocol.Welcome {
	a.t.Helper()
	e := a.read()
	var w protocol.Welcome
	if e.Type != protocol.TypeWelcome || protocol.DecodeData(e, &w) != nil {
		a.t.Fatalf("got %s %s, want welcome", e.Type, e.Data)
	}
	if w.ServerID != id || w.Protocol != protocol.Version || w.HeartbeatIntervalS < 1 {
		a.t.Fatalf("welcome = %+v", w)
	}
	return w
}

// expectError reads an error message with code, then the connection's end.
func (a *agent) expectError(code string) {
	a.t.Helper()
	e := a.read()
	var pe protocol.Error
	if e.Type != protocol.TypeError || protocol.DecodeData(e, &pe) != nil || pe.Code != code {
		a.t.Fatalf("got %s %s, want error %s", e.Type, e.Data, code)
	}
	if pe.Message == "" {
		a.t.Errorf("error %s has no message", code)
	}
	_ = a.expectClosed()
}

// expectClosed reads until the connection ends, returning the close error.
func (a *agent) expectClosed() error {
	a.t.Helper()
	for {
		e, err := a.next()
		if err != nil {
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				a.t.Fatalf("connection still open")
			}
			return err
		}
		if e.Type != protocol.TypeError {
			a.t.Fatalf("got %s while waiting for close", e.Type)
		}
	}
}

func newKey(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pub, priv
}

// enroll enrolls server id with a fresh key and returns the open session.
func (e *env) enroll(t *testing.T, id string) (*agent, ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	e.reg.addServer(id, "tok-"+id, time.Now().Add(time.Hour))
	pub, priv := newKey(t)
	a := dial(t, e.url)
	a.hello(id, protocol.ModeEnroll, "tok-"+id, pub, priv)
	a.expectWelcome(id)
	return a, pub, priv
}

func (e *env) auth(t *testing.T, id string, priv ed25519.PrivateKey) *agent {
	t.Helper()
	a := dial(t, e.url)
	a.hello(id, protocol.ModeAuth, "", priv.Public().(ed25519.PublicKey), priv)
	a.expectWelcome(id)
	return a
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// failures sums devpilot_hub_auth_failures_total over reasons.
func (e *env) failures(t *testing.T) float64 {
	t.Helper()
	var n float64
	for _, r := range []string{reasonBadRequest, reasonUnsupported, reasonTokenInvalid, reasonAuthFailed,
		reasonDeleted, reasonTimeout, reasonIO, reasonInternal} {
		n += e.metric(t, "devpilot_hub_auth_failures_total", r)
	}
	return n
}

// metric returns a counter or gauge value, 0 if absent.
func (e *env) metric(t *testing.T, name, label string) float64 {
	t.Helper()
	mfs, err := e.prom.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) == 0 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func TestEnrollTokenIsSingleUse(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a, pub, _ := e.enroll(t, "srv-1")
	if got := e.reg.enrolledKey("srv-1"); !got.Equal(pub) {
		t.Fatalf("registry key = %x, want the agent's %x", got, pub)
	}
	st, ok := e.hub.Status("srv-1")
	if !ok || !st.Connected || st.AgentVersion != "1.2.3" || st.RemoteAddr == "" {
		t.Fatalf("Status = %+v, %v", st, ok)
	}
	if got := e.metric(t, "devpilot_hub_enrollments_total", ""); got != 1 {
		t.Errorf("enrollments = %v, want 1", got)
	}
	_ = a.conn.Close()
	eventually(t, "disconnection", func() bool { return e.hub.Connected() == 0 })

	// The same token again, even with a new key, is refused.
	pub2, priv2 := newKey(t)
	b := dial(t, e.url)
	b.hello("srv-1", protocol.ModeEnroll, "tok-srv-1", pub2, priv2)
	b.expectError(protocol.ErrTokenInvalid)
	if got := e.reg.enrolledKey("srv-1"); !got.Equal(pub) {
		t.Errorf("a refused enrollment replaced the key")
	}
	if got := e.metric(t, "devpilot_hub_auth_failures_total", protocol.ErrTokenInvalid); got != 1 {
		t.Errorf("auth failures{bootstrap_token_invalid} = %v, want 1", got)
	}
}

func TestEnrollRefused(t *testing.T) {
	t.Parallel()
	pub, priv := newKey(t)
	_, otherPriv := newKey(t)
	tests := []struct {
		name  string
		setup func(r *memRegistry)
		id    string
		token string
		pub   ed25519.PublicKey
		priv  ed25519.PrivateKey
		code  string
	}{
		{"expired token", func(r *memRegistry) { r.addServer("srv-a", "tok", time.Now().Add(-time.Second)) }, "srv-a", "tok", pub, priv, protocol.ErrTokenInvalid},
		{"other server's token", func(r *memRegistry) {
			r.addServer("srv-a", "tok-a", time.Now().Add(time.Hour))
			r.addServer("srv-b", "tok-b", time.Now().Add(time.Hour))
		}, "srv-a", "tok-b", pub, priv, protocol.ErrTokenInvalid},
		{"unknown server", func(*memRegistry) {}, "srv-x", "tok", pub, priv, protocol.ErrTokenInvalid},
		{"no token", func(r *memRegistry) { r.addServer("srv-a", "tok", time.Now().Add(time.Hour)) }, "srv-a", "", pub, priv, protocol.ErrTokenInvalid},
		{"deleted server", func(r *memRegistry) {
			r.addServer("srv-a", "tok", time.Now().Add(time.Hour))
			r.servers["srv-a"].deleted = true
		}, "srv-a", "tok", pub, priv, protocol.ErrServerDeleted},
		{"signature by another key", func(r *memRegistry) { r.addServer("srv-a", "tok", time.Now().Add(time.Hour)) }, "srv-a", "tok", pub, otherPriv, protocol.ErrAuthFailed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, nil)
			tt.setup(e.reg)
			a := dial(t, e.url)
			a.hello(tt.id, protocol.ModeEnroll, tt.token, tt.pub, tt.priv)
			a.expectError(tt.code)
			if e.hub.Connected() != 0 || e.reg.enrolledKey(tt.id) != nil {
				t.Errorf("refused agent is connected or enrolled")
			}
			if got := e.metric(t, "devpilot_hub_auth_failures_total", tt.code); got != 1 {
				t.Errorf("auth failures{%s} = %v, want 1", tt.code, got)
			}
		})
	}

	t.Run("bad signature does not burn the token", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, nil)
		e.reg.addServer("srv-a", "tok", time.Now().Add(time.Hour))
		a := dial(t, e.url)
		a.hello("srv-a", protocol.ModeEnroll, "tok", pub, otherPriv)
		a.expectError(protocol.ErrAuthFailed)
		b := dial(t, e.url)
		b.hello("srv-a", protocol.ModeEnroll, "tok", pub, priv)
		b.expectWelcome("srv-a")
	})
}

func TestAuth(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a, _, priv := e.enroll(t, "srv-1")
	_ = a.conn.Close()
	eventually(t, "disconnection", func() bool { return e.hub.Connected() == 0 })
	e.reg.addServer("srv-gone", "t", time.Now().Add(time.Hour))
	e.enroll(t, "srv-del")
	e.reg.mu.Lock()
	e.reg.servers["srv-del"].deleted = true
	e.reg.mu.Unlock()
	_, otherPriv := newKey(t)

	t.Run("enrolled key", func(t *testing.T) {
		b := e.auth(t, "srv-1", priv)
		b.send(protocol.TypeHeartbeat, protocol.Heartbeat{})
		eventually(t, "heartbeat", func() bool { return e.metric(t, "devpilot_hub_heartbeats_total", "") == 1 })
	})
	refusals := []struct {
		name, id string
		pub      ed25519.PublicKey
		priv     ed25519.PrivateKey
		code     string
	}{
		{"another key", "srv-1", otherPriv.Public().(ed25519.PublicKey), otherPriv, protocol.ErrAuthFailed},
		{"enrolled public key, signed by another", "srv-1", priv.Public().(ed25519.PublicKey), otherPriv, protocol.ErrAuthFailed},
		{"never enrolled", "srv-gone", priv.Public().(ed25519.PublicKey), priv, protocol.ErrAuthFailed},
		{"unknown server", "srv-nope", priv.Public().(ed25519.PublicKey), priv, protocol.ErrAuthFailed},
		{"deleted server", "srv-del", priv.Public().(ed25519.PublicKey), priv, protocol.ErrServerDeleted},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			b := dial(t, e.url)
			b.hello(tt.id, protocol.ModeAuth, "", tt.pub, tt.priv)
			b.expectError(tt.code)
		})
	}
	if got := e.metric(t, "devpilot_hub_auth_failures_total", protocol.ErrAuthFailed); got != 4 {
		t.Errorf("auth failures{auth_failed} = %v, want 4", got)
	}
}

func TestHandshakeRefusals(t *testing.T) {
	t.Parallel()
	// A handshake timeout far above any scheduling delay: each case below
	// is refused for what it sent, never for being slow to send it.
	e := newEnv(t, func(o *Options) { o.HandshakeTimeout = time.Minute })
	_, priv := newKey(t)
	e.reg.addServer("srv-1", "tok", time.Now().Add(time.Hour))
	hello := func(a *agent) protocol.Hello {
		return protocol.Hello{ServerID: "srv-1", Mode: protocol.ModeEnroll, BootstrapToken: "tok",
			PublicKey: priv.Public().(ed25519.PublicKey), Signature: ed25519.Sign(priv, protocol.SignedMessage(a.nonce, "srv-1"))}
	}
	tests := []struct {
		name string
		send func(a *agent)
		code string
	}{
		{"old protocol", func(a *agent) {
			data, _ := json.Marshal(hello(a))
			b, _ := json.Marshal(protocol.Envelope{V: protocol.MinVersion - 1, Type: protocol.TypeHello, Data: data})
			a.sendRaw(b)
		}, protocol.ErrUnsupported},
		{"not json", func(a *agent) { a.sendRaw([]byte("{nope")) }, protocol.ErrBadRequest},
		{"heartbeat before hello", func(a *agent) { a.send(protocol.TypeHeartbeat, protocol.Heartbeat{}) }, protocol.ErrBadRequest},
		{"unknown mode", func(a *agent) { h := hello(a); h.Mode = "root"; a.send(protocol.TypeHello, h) }, protocol.ErrBadRequest},
		{"short signature", func(a *agent) { h := hello(a); h.Signature = h.Signature[:10]; a.send(protocol.TypeHello, h) }, protocol.ErrBadRequest},
		{"no server id", func(a *agent) { h := hello(a); h.ServerID = ""; a.send(protocol.TypeHello, h) }, protocol.ErrBadRequest},
	}
	unsupportedBefore := e.metric(t, "devpilot_hub_auth_failures_total", protocol.ErrUnsupported)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := dial(t, e.url)
			tt.send(a)
			a.expectError(tt.code)
		})
	}
	if e.hub.Connected() != 0 {
		t.Errorf("Connected = %d after refusals", e.hub.Connected())
	}
	if got := e.metric(t, "devpilot_hub_auth_failures_total", protocol.ErrUnsupported) - unsupportedBefore; got != 1 {
		t.Errorf("auth failures{unsupported_protocol} grew by %v, want 1", got)
	}
	if got := e.metric(t, "devpilot_hub_auth_failures_total", reasonTimeout); got != 0 {
		t.Errorf("auth failures{timeout} = %v: a refusal above was counted as a timeout", got)
	}
	// The token survived all of that.
	b := dial(t, e.url)
	b.send(protocol.TypeHello, hello(b))
	b.expectWelcome("srv-1")
}

func TestSilentUntilHandshakeTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *Options) { o.HandshakeTimeout = 500 * time.Millisecond })
	before := e.metric(t, "devpilot_hub_auth_failures_total", reasonTimeout)
	a := dial(t, e.url)
	_ = a.expectClosed()
	eventually(t, "timeout metric", func() bool {
		return e.metric(t, "devpilot_hub_auth_failures_total", reasonTimeout)-before == 1
	})
	if e.hub.Connected() != 0 {
		t.Errorf("Connected = %d after a timed-out handshake", e.hub.Connected())
	}
}

func TestOversizeMessageClosesConnection(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a, _, _ := e.enroll(t, "srv-1")
	big, _ := json.Marshal(protocol.Envelope{V: 1, Type: protocol.TypeTaskLog,
		Data: json.RawMessage(`"` + strings.Repeat("x", protocol.MaxMessageBytes) + `"`)})
	_ = a.conn.WriteMessage(websocket.TextMessage, big) // may fail once the hub closes
	err := a.expectClosed()
	if !websocket.IsCloseError(err, websocket.CloseMessageTooBig) && !strings.Contains(err.Error(), "reset") {
		t.Errorf("close = %v, want 1009 message too big", err)
	}
	eventually(t, "disconnected", func() bool {
		ev := e.reg.eventList()
		return len(ev) == 2 && ev[1] == "disconnected srv-1"
	})
	if _, ok := e.hub.Status("srv-1"); ok {
		t.Errorf("Status still connected")
	}
}

func TestHeartbeatUpdatesStatusAndIsFlushed(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	clock := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	e := newEnv(t, func(o *Options) { o.Now = now; o.FlushInterval = 20 * time.Millisecond })
	a, _, _ := e.enroll(t, "srv-1")
	st, _ := e.hub.Status("srv-1")
	if !st.Since.Equal(clock) || st.Health != nil {
		t.Fatalf("Status before heartbeat = %+v", st)
	}
	mu.Lock()
	clock = clock.Add(time.Minute)
	mu.Unlock()
	health := protocol.Health{UptimeS: 99, Load1: 0.5, MemTotalMB: 2048, MemUsedMB: 512,
		Disks: []protocol.Disk{{Mount: "/", TotalMB: 1000, UsedMB: 10}}, AgentVersion: "1.2.3"}
	a.send(protocol.TypeHeartbeat, protocol.Heartbeat{Health: health})

	eventually(t, "status health", func() bool { st, _ := e.hub.Status("srv-1"); return st.Health != nil })
	st, _ = e.hub.Status("srv-1")
	if st.Health.UptimeS != 99 || len(st.Health.Disks) != 1 || !st.LastSeen.Equal(clock) {
		t.Errorf("Status after heartbeat = %+v (health %+v)", st, st.Health)
	}
	eventually(t, "SaveHealth", func() bool { _, ok := e.reg.savedHealth("srv-1"); return ok })
	hs, _ := e.reg.savedHealth("srv-1")
	if hs.Health.MemUsedMB != 512 || hs.Health.Disks[0].Mount != "/" || !hs.At.Equal(clock) {
		t.Errorf("saved = %+v", hs)
	}
	if got := e.metric(t, "devpilot_hub_messages_total", protocol.TypeHeartbeat); got != 1 {
		t.Errorf("messages{heartbeat} = %v, want 1", got)
	}
}

// An authenticated agent can send almost 1 MiB of health; what the hub
// keeps (and GET servers shows) is small and sane.
func TestHostileHealthIsBounded(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *Options) { o.FlushInterval = 20 * time.Millisecond })
	a, _, _ := e.enroll(t, "srv-1")
	long := strings.Repeat("é", 400) // 800 bytes; cut inside a rune at 256
	disks := make([]protocol.Disk, 7000)
	for i := range disks {
		disks[i] = protocol.Disk{Mount: "/mnt/" + strconv.Itoa(i), TotalMB: -5, UsedMB: 1 << 62}
	}
	disks[0].Mount = "/" + long
	disks[1] = protocol.Disk{Mount: "/data", TotalMB: 1000, UsedMB: 4000}
	hostile := protocol.Health{UptimeS: -1, Load1: -3, Load5: 1e300, Load15: 2, CPUPercent: 1e9,
		MemTotalMB: -10, MemUsedMB: 1 << 62, Disks: disks, AgentVersion: long}
	b, err := protocol.Encode(protocol.TypeHeartbeat, protocol.Heartbeat{Health: hostile})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("hostile heartbeat: %d bytes", len(b))
	a.sendRaw(b)

	eventually(t, "SaveHealth", func() bool { _, ok := e.reg.savedHealth("srv-1"); return ok })
	saved, _ := e.reg.savedHealth("srv-1")
	st, _ := e.hub.Status("srv-1")
	for name, h := range map[string]protocol.Health{"saved": saved.Health, "status": *st.Health} {
		j, _ := json.Marshal(h)
		if len(j) > 16<<10 {
			t.Errorf("%s health is %d bytes encoded, want at most 16 KiB", name, len(j))
		}
		if len(h.Disks) != MaxDisks {
			t.Errorf("%s health has %d disks, want the first %d", name, len(h.Disks), MaxDisks)
		}
		for _, d := range h.Disks {
			if len(d.Mount) > MaxMountBytes || !utf8.ValidString(d.Mount) || d.TotalMB < 0 || d.UsedMB < 0 || d.UsedMB > d.TotalMB {
				t.Errorf("%s disk %q total %d used %d is out of bounds", name, d.Mount, d.TotalMB, d.UsedMB)
				break
			}
		}
		if h.Disks[1] != (protocol.Disk{Mount: "/data", TotalMB: 1000, UsedMB: 1000}) {
			t.Errorf("%s disk 1 = %+v, want /data with used clamped to its total", name, h.Disks[1])
		}
		if !strings.HasPrefix(h.Disks[0].Mount, "/é") {
			t.Errorf("%s disk 0 mount %q lost its start", name, h.Disks[0].Mount)
		}
		if h.UptimeS != 0 || h.Load1 != 0 || h.Load5 > MaxLoad || h.Load15 != 2 || h.CPUPercent != 100 ||
			h.MemTotalMB != 0 || h.MemUsedMB != 0 || len(h.AgentVersion) > MaxVersionBytes || !utf8.ValidString(h.AgentVersion) {
			t.Errorf("%s health values out of bounds: %+v", name, protocol.Health{UptimeS: h.UptimeS, Load1: h.Load1, Load5: h.Load5,
				Load15: h.Load15, CPUPercent: h.CPUPercent, MemTotalMB: h.MemTotalMB, MemUsedMB: h.MemUsedMB, AgentVersion: h.AgentVersion})
		}
	}
}

func TestSilentAgentGoesOffline(t *testing.T) {
	t.Parallel()
	// Offline after 3 missed heartbeats, i.e. 3 s of silence; the chatty
	// agent sends one every 50 ms, so only a 3 s stall of this process
	// could drop it.
	e := newEnv(t, func(o *Options) { o.HeartbeatInterval = time.Second })
	_, _, _ = e.enroll(t, "silent") // never reads, so never answers pings
	chatty, _, _ := e.enroll(t, "chatty")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				b, _ := protocol.Encode(protocol.TypeHeartbeat, protocol.Heartbeat{})
				if chatty.conn.WriteMessage(websocket.TextMessage, b) != nil {
					return
				}
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-done })

	eventually(t, "silent agent offline", func() bool {
		for _, ev := range e.reg.eventList() {
			if ev == "disconnected silent" {
				return true
			}
		}
		return false
	})
	if _, ok := e.hub.Status("silent"); ok {
		t.Errorf("silent agent still has a Status")
	}
	if _, ok := e.hub.Status("chatty"); !ok {
		t.Errorf("an agent sending heartbeats was dropped")
	}
}

func TestSessionReplaced(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	first, _, priv := e.enroll(t, "srv-1")
	second := e.auth(t, "srv-1", priv)
	first.expectError(protocol.ErrSessionReplace)

	st, ok := e.hub.Status("srv-1")
	if !ok || st.RemoteAddr != second.conn.LocalAddr().String() {
		t.Errorf("Status remote = %q, want the second session's %s", st.RemoteAddr, second.conn.LocalAddr())
	}
	if got := e.reg.eventList(); len(got) != 2 || got[0] != "connected srv-1" || got[1] != "connected srv-1" {
		t.Errorf("events = %v, want two connections and no disconnection", got)
	}
	if err := e.hub.Send(context.Background(), "srv-1", protocol.TypeCancel, map[string]string{"id": "t1"}); err != nil {
		t.Fatal(err)
	}
	if got := second.read(); got.Type != protocol.TypeCancel {
		t.Errorf("second session got %s", got.Type)
	}
	_ = second.conn.Close()
	eventually(t, "disconnection", func() bool { return len(e.reg.eventList()) == 3 })
	if got := e.reg.eventList()[2]; got != "disconnected srv-1" {
		t.Errorf("last event = %q", got)
	}
	if e.metric(t, "devpilot_hub_agents_connected", "") != 0 {
		t.Errorf("gauge not back to 0")
	}
}

func TestSendAndHandle(t *testing.T) {
	t.Parallel()
	got := make(chan string, 1)
	e := newEnv(t, nil)
	e.hub.Handle(protocol.TypeTaskResult, func(ctx context.Context, serverID string, env protocol.Envelope) {
		got <- serverID + " " + string(env.Data)
	})
	a, _, _ := e.enroll(t, "srv-1")

	task := map[string]any{"id": "t-1", "kind": "exec", "argv": []string{"uptime"}}
	if err := e.hub.Send(context.Background(), "srv-1", protocol.TypeTask, task); err != nil {
		t.Fatal(err)
	}
	env := a.read()
	var back map[string]any
	if env.Type != protocol.TypeTask || protocol.DecodeData(env, &back) != nil || back["id"] != "t-1" {
		t.Fatalf("agent got %s %s", env.Type, env.Data)
	}
	a.send(protocol.TypeTaskResult, map[string]any{"id": "t-1", "exit": 0})
	select {
	case s := <-got:
		if s != `srv-1 {"exit":0,"id":"t-1"}` {
			t.Errorf("handler got %q", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("handler not called")
	}

	a.send("from_the_future", map[string]int{"x": 1})
	if env := a.read(); env.Type != protocol.TypeError {
		t.Errorf("unknown type answered with %s, want error", env.Type)
	}
	a.send(protocol.TypeHeartbeat, protocol.Heartbeat{}) // session survived it
	eventually(t, "heartbeat", func() bool { return e.metric(t, "devpilot_hub_heartbeats_total", "") == 1 })

	if err := e.hub.Send(context.Background(), "srv-nope", protocol.TypeTask, task); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Send to unknown server = %v, want ErrNotConnected", err)
	}
}

func TestDisconnectServerDeleted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	a, _, _ := e.enroll(t, "srv-1")
	e.hub.Disconnect("srv-1", protocol.ErrServerDeleted)
	a.expectError(protocol.ErrServerDeleted)
	eventually(t, "disconnection", func() bool { return len(e.reg.eventList()) == 2 })
}

func TestCloseDisconnectsAllAndFlushes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil) // FlushInterval 1h: only Close flushes
	ids := []string{"srv-1", "srv-2", "srv-3"}
	var agents []*agent
	for i, id := range ids {
		a, _, _ := e.enroll(t, id)
		a.send(protocol.TypeHeartbeat, protocol.Heartbeat{Health: protocol.Health{UptimeS: int64(i + 1)}})
		agents = append(agents, a)
	}
	eventually(t, "heartbeats", func() bool { return e.metric(t, "devpilot_hub_heartbeats_total", "") == 3 })
	pending := dial(t, e.url) // mid-handshake: Close must not wait for its timeout

	e.hub.Close()
	e.hub.Close() // idempotent
	for _, a := range agents {
		if err := a.expectClosed(); !websocket.IsCloseError(err, websocket.CloseGoingAway) {
			t.Errorf("close = %v, want going away", err)
		}
	}
	_ = pending.expectClosed()
	if n := e.failures(t); n != 0 {
		t.Errorf("shutdown counted %v auth failures", n)
	}
	if n := len(e.reg.eventList()); n != 6 {
		t.Errorf("events = %v, want 3 connected + 3 disconnected", e.reg.eventList())
	}
	for i, id := range ids {
		if hs, ok := e.reg.savedHealth(id); !ok || hs.Health.UptimeS != int64(i+1) {
			t.Errorf("health of %s not flushed on Close: %+v", id, hs)
		}
	}
	if e.hub.Connected() != 0 {
		t.Errorf("Connected = %d after Close", e.hub.Connected())
	}
	_, resp, err := websocket.DefaultDialer.Dial(e.url, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("dial after Close: %v, want 503", err)
	}
}

func TestConnectedRefusedByRegistry(t *testing.T) {
	t.Parallel()
	tests := []struct {
		err    error
		code   string // "" = closed without an error message (agent retries)
		reason string
	}{
		{fmt.Errorf("record session: %w", ErrServerDeleted), protocol.ErrServerDeleted, reasonDeleted},
		{errors.New("database is locked"), "", reasonInternal},
	}
	for _, tt := range tests {
		t.Run(tt.reason, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, nil)
			e.reg.addServer("srv-1", "tok", time.Now().Add(time.Hour))
			e.reg.connectErr = tt.err
			pub, priv := newKey(t)
			a := dial(t, e.url)
			a.hello("srv-1", protocol.ModeEnroll, "tok", pub, priv)
			if tt.code != "" {
				a.expectError(tt.code)
			} else if err := a.expectClosed(); !websocket.IsCloseError(err, websocket.CloseInternalServerErr) {
				t.Errorf("close = %v, want 1011", err)
			}
			if _, ok := e.hub.Status("srv-1"); ok || e.hub.Connected() != 0 {
				t.Errorf("session kept after Connected failed")
			}
			if got := e.metric(t, "devpilot_hub_auth_failures_total", tt.reason); got != 1 {
				t.Errorf("auth failures{%s} = %v, want 1", tt.reason, got)
			}
		})
	}
}

func TestHealthKeptWhenSaveFails(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *Options) { o.FlushInterval = 10 * time.Millisecond })
	e.reg.failSaves = 2
	a, _, _ := e.enroll(t, "srv-1")
	a.send(protocol.TypeHeartbeat, protocol.Heartbeat{Health: protocol.Health{UptimeS: 7}})
	eventually(t, "health saved after failures", func() bool {
		hs, ok := e.reg.savedHealth("srv-1")
		return ok && hs.Health.UptimeS == 7
	})
	e.reg.mu.Lock()
	defer e.reg.mu.Unlock()
	if e.reg.saves < 3 {
		t.Errorf("SaveHealth called %d times, want the 2 failures then a success", e.reg.saves)
	}
}

// Two agents holding one identity key take the session from each other:
// the third takeover within the window quarantines the server, both are
// told why, the store hears of it with every remote address, and neither
// key-holder gets a session or a message afterwards.
func TestIdentityConflictQuarantines(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	real, _, priv := e.enroll(t, "srv-1")
	impostor := e.auth(t, "srv-1", priv)
	real.expectError(protocol.ErrSessionReplace)
	real2 := e.auth(t, "srv-1", priv)
	impostor.expectError(protocol.ErrSessionReplace)
	if n := len(e.reg.conflictsOf("srv-1")); n != 0 {
		t.Fatalf("quarantined after two takeovers (%d conflicts)", n)
	}

	impostor2 := dial(t, e.url)
	impostor2.hello("srv-1", protocol.ModeAuth, "", priv.Public().(ed25519.PublicKey), priv)
	impostor2.expectError(protocol.ErrQuarantined)
	real2.expectError(protocol.ErrQuarantined)

	cs := e.reg.conflictsOf("srv-1")
	if len(cs) != 1 {
		t.Fatalf("conflicts recorded = %d, want 1", len(cs))
	}
	c := cs[0]
	if c.Replacements != DefaultConflictReplacements || c.Window != DefaultConflictWindow {
		t.Errorf("conflict = %+v", c)
	}
	for _, a := range []*agent{real, impostor, real2, impostor2} {
		if !slices.Contains(c.Remotes, a.conn.LocalAddr().String()) {
			t.Errorf("remotes %v lack %s", c.Remotes, a.conn.LocalAddr())
		}
	}
	eventually(t, "server recorded offline", func() bool {
		ev := e.reg.eventList()
		return len(ev) > 0 && ev[len(ev)-1] == "disconnected srv-1"
	})
	if _, ok := e.hub.Status("srv-1"); ok {
		t.Errorf("quarantined server still has a session")
	}
	if err := e.hub.Send(context.Background(), "srv-1", protocol.TypeCancel, protocol.Cancel{TaskID: "t1"}); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Send to a quarantined server = %v, want ErrNotConnected", err)
	}
	if got := e.metric(t, "devpilot_hub_identity_conflicts_total", ""); got != 1 {
		t.Errorf("conflicts metric = %v", got)
	}

	// Either holder of the key, coming back, is refused with the reason.
	again := dial(t, e.url)
	again.hello("srv-1", protocol.ModeAuth, "", priv.Public().(ed25519.PublicKey), priv)
	again.expectError(protocol.ErrQuarantined)
	// Someone without the key learns nothing about the quarantine.
	_, other := newKey(t)
	stranger := dial(t, e.url)
	stranger.hello("srv-1", protocol.ModeAuth, "", other.Public().(ed25519.PublicKey), other)
	stranger.expectError(protocol.ErrAuthFailed)
}

// A reconnect after a network blip replaces the half-open old session
// once; that, and takeovers spread wider than the window, are not a
// conflict.
func TestReconnectsAreNotAConflict(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	advance := func(d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(d)
	}
	e := newEnv(t, func(o *Options) { o.Now = clock })
	prev, _, priv := e.enroll(t, "srv-1")
	for i := range 2 * DefaultConflictReplacements {
		advance(DefaultConflictWindow/time.Duration(DefaultConflictReplacements-1) + time.Second)
		next := e.auth(t, "srv-1", priv) // fails the test unless welcomed
		prev.expectError(protocol.ErrSessionReplace)
		prev = next
		if n := len(e.reg.conflictsOf("srv-1")); n != 0 {
			t.Fatalf("takeover %d: quarantined", i+1)
		}
	}
}

// After a rekey the old key is refused as revoked, and the agent that
// enrolls with the new token and a new key gets its session back.
func TestRekeyRevokesOldKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(o *Options) { o.ConflictReplacements = 1 })
	first, _, oldPriv := e.enroll(t, "srv-1")
	second := dial(t, e.url)
	second.hello("srv-1", protocol.ModeAuth, "", oldPriv.Public().(ed25519.PublicKey), oldPriv)
	second.expectError(protocol.ErrQuarantined)
	first.expectError(protocol.ErrQuarantined)

	e.reg.rekey("srv-1", "tok-new")
	stale := dial(t, e.url)
	stale.hello("srv-1", protocol.ModeAuth, "", oldPriv.Public().(ed25519.PublicKey), oldPriv)
	stale.expectError(protocol.ErrKeyRevoked)

	pub, priv := newKey(t)
	fresh := dial(t, e.url)
	fresh.hello("srv-1", protocol.ModeEnroll, "tok-new", pub, priv)
	fresh.expectWelcome("srv-1")

	stale = dial(t, e.url)
	stale.hello("srv-1", protocol.ModeAuth, "", oldPriv.Public().(ed25519.PublicKey), oldPriv)
	stale.expectError(protocol.ErrKeyRevoked)
	if st, ok := e.hub.Status("srv-1"); !ok || st.RemoteAddr != fresh.conn.LocalAddr().String() {
		t.Errorf("the re-enrolled agent lost its session to the revoked key: %+v %v", st, ok)
	}
}

// A session replaced by one on another control plane (TakenOver, as the
// new holder reports it) ends here with session_replaced; such takeovers
// count toward an identity conflict like local ones, and the
// third within the window quarantines the server.
func TestTakeoversFromAnotherControlPlaneQuarantine(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	real, _, priv := e.enroll(t, "srv-1")
	eventually(t, "connected", func() bool { _, ok := e.hub.Status("srv-1"); return ok })
	e.hub.TakenOver("srv-1", "198.51.100.7:40001", time.Now())
	real.expectError(protocol.ErrSessionReplace)
	if _, ok := e.hub.Status("srv-1"); ok {
		t.Fatal("the replaced session is still this hub's")
	}
	e.hub.TakenOver("srv-9", "198.51.100.7:40001", time.Now()) // no session here: nothing happens
	if n := len(e.reg.conflictsOf("srv-1")); n != 0 {
		t.Fatalf("quarantined after one takeover (%d conflicts)", n)
	}

	again := e.auth(t, "srv-1", priv) // the agent comes back here
	e.hub.TakenOver("srv-1", "198.51.100.7:40002", time.Now())
	again.expectError(protocol.ErrSessionReplace)
	third := e.auth(t, "srv-1", priv)
	e.hub.TakenOver("srv-1", "198.51.100.7:40003", time.Now())
	third.expectError(protocol.ErrQuarantined)

	cs := e.reg.conflictsOf("srv-1")
	if len(cs) != 1 || cs[0].Replacements != DefaultConflictReplacements {
		t.Fatalf("conflicts recorded = %+v, want one of %d takeovers", cs, DefaultConflictReplacements)
	}
	for _, r := range []string{"198.51.100.7:40001", "198.51.100.7:40003", third.conn.LocalAddr().String()} {
		if !slices.Contains(cs[0].Remotes, r) {
			t.Errorf("conflict remotes %v lack %s", cs[0].Remotes, r)
		}
	}
}
