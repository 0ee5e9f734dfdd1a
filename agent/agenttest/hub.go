// Package agenttest is a small in-process hub for agent tests: a TLS
// WebSocket server (httptest, with its own CA) that speaks the protocol in
// shared/protocol — challenge, hello (enroll with a single-use token, or
// auth with the enrolled key), welcome, heartbeats, and the task messages
// (Send delivers task/cancel/task_ack; task_log and task_result are
// recorded, and final results acknowledged when SetAutoAck is on) — and
// records what it saw.
// It is a fake for tests, not the control plane's hub.
package agenttest

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/devpilot/devpilot/shared/protocol"
	"github.com/devpilot/devpilot/shared/tlspin"
)

// Heartbeat is one heartbeat the hub received.
type Heartbeat struct {
	ServerID string
	Health   protocol.Health
}

// Hub is the fake. Its zero value is not usable; call New.
type Hub struct {
	Server    *httptest.Server
	URL       string // https://127.0.0.1:port
	CAPin     string
	CACertPEM string

	mu         sync.Mutex
	interval   int
	tokens     map[string]string // token → server id
	keys       map[string]ed25519.PublicKey
	refuse     string // error code to answer every hello with
	retryMS    int    // the refusal's retry_after_ms
	closeAfter bool   // close right after welcome
	hellos     []protocol.Hello
	heartbeats []Heartbeat
	pings      int   // keepalive pings received after a welcome
	mute       bool  // no pongs: the hub looks dead to an idle agent
	closes     []int // close codes agents sent
	accepted   int   // WebSocket upgrades
	conns      map[*websocket.Conn]*peer
	autoAck    bool
	logs       map[string][]protocol.TaskLog
	results    map[string][]protocol.TaskResult
	goodbyes   []protocol.Goodbye
	statuses   []protocol.UpdateStatus
	files      map[string][]byte // served over the hub's TLS (agent updates)
	wg         sync.WaitGroup
}

// New starts a hub; t.Cleanup stops it.
func New(t testing.TB) *Hub {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "agenttest CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	h := &Hub{
		interval: 1,
		tokens:   map[string]string{},
		keys:     map[string]ed25519.PublicKey{},
		conns:    map[*websocket.Conn]*peer{},
		logs:     map[string][]protocol.TaskLog{},
		results:  map[string][]protocol.TaskResult{},
		files:    map[string][]byte{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc(protocol.Path, h.serve)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		b, ok := h.files[r.URL.Path]
		h.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(b)
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{
		Certificate: [][]byte{leafDER, caDER}, // auto mode sends its CA along
		PrivateKey:  leafKey,
	}}}
	srv.Config.ErrorLog = nil
	srv.StartTLS()
	h.Server = srv
	h.URL = srv.URL
	h.CAPin = tlspin.PinOf(ca)
	h.CACertPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}))
	t.Cleanup(h.Close)
	return h
}

// Close disconnects every agent and stops the server.
func (h *Hub) Close() {
	h.Kick()
	h.Server.Close()
	h.wg.Wait()
}

// Bootstrap registers a single-use token for serverID and returns the
// install contract an agent would get.
func (h *Hub) Bootstrap(serverID string) protocol.Bootstrap {
	tok := fmt.Sprintf("bt-%s-%d", serverID, time.Now().UnixNano())
	h.mu.Lock()
	h.tokens[tok] = serverID
	h.mu.Unlock()
	return protocol.Bootstrap{URL: h.URL, CAPin: h.CAPin, CACertPEM: h.CACertPEM, ServerID: serverID, BootstrapToken: tok}
}

// SetRefuse makes the hub answer every hello with this error code ("" to stop).
func (h *Hub) SetRefuse(code string) { h.mu.Lock(); h.refuse = code; h.mu.Unlock() }

// SetRefuseRetry makes the refusal suggest a wait (protocol 1.2, busy).
func (h *Hub) SetRefuseRetry(d time.Duration) {
	h.mu.Lock()
	h.retryMS = int(d / time.Millisecond)
	h.mu.Unlock()
}

// SetCloseAfterWelcome makes the hub drop every session right after welcome.
func (h *Hub) SetCloseAfterWelcome(v bool) { h.mu.Lock(); h.closeAfter = v; h.mu.Unlock() }

// Kick closes every open session from the hub's side.
func (h *Hub) Kick() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.conns {
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseGoingAway, "hub going away"), time.Now().Add(time.Second))
		_ = c.Close()
	}
}

// Hellos returns the hellos received so far.
func (h *Hub) Hellos() []protocol.Hello {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]protocol.Hello(nil), h.hellos...)
}

// Pings returns how many keepalive pings agents sent in sessions.
func (h *Hub) Pings() int { h.mu.Lock(); defer h.mu.Unlock(); return h.pings }

// SetMute stops (or resumes) answering pings: to an idle agent the hub
// then looks like a dead peer whose TCP connection is still open.
func (h *Hub) SetMute(v bool) { h.mu.Lock(); h.mute = v; h.mu.Unlock() }

// Heartbeats returns the heartbeats received so far.
func (h *Hub) Heartbeats() []Heartbeat {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Heartbeat(nil), h.heartbeats...)
}

// CloseCodes returns the close codes agents sent.
func (h *Hub) CloseCodes() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]int(nil), h.closes...)
}

// Connections is how many WebSocket sessions were accepted.
func (h *Hub) Connections() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.accepted
}

// EnrolledKey is the key registered for serverID, if any.
func (h *Hub) EnrolledKey(serverID string) ed25519.PublicKey {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.keys[serverID]
}

// WaitFor polls cond until it holds, failing the test after 15 s.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var upgrader = websocket.Upgrader{}

func send(c *websocket.Conn, typ string, v any) error {
	b, err := protocol.Encode(typ, v)
	if err != nil {
		return err
	}
	return c.WriteMessage(websocket.TextMessage, b)
}

func read(c *websocket.Conn, v any, want string) error {
	_, data, err := c.ReadMessage()
	if err != nil {
		return err
	}
	env, err := protocol.Decode(data)
	if err != nil {
		return err
	}
	if env.Type != want {
		return fmt.Errorf("got %s, want %s", env.Type, want)
	}
	return protocol.DecodeData(env, v)
}

func (h *Hub) serve(w http.ResponseWriter, r *http.Request) {
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	h.mu.Lock()
	h.accepted++
	p := &peer{}
	h.conns[c] = p
	h.wg.Add(1)
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.conns, c)
		h.mu.Unlock()
		_ = c.Close()
		h.wg.Done()
	}()
	c.SetCloseHandler(func(code int, text string) error {
		h.mu.Lock()
		h.closes = append(h.closes, code)
		h.mu.Unlock()
		return c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, ""), time.Now().Add(time.Second))
	})

	nonce := make([]byte, protocol.NonceBytes)
	rand.Read(nonce)
	if send(c, protocol.TypeChallenge, protocol.Challenge{Nonce: nonce, Protocol: protocol.Version}) != nil {
		return
	}
	var hello protocol.Hello
	if err := read(c, &hello, protocol.TypeHello); err != nil {
		return
	}
	h.mu.Lock()
	h.hellos = append(h.hellos, hello)
	code, msg := h.check(hello, nonce)
	interval, closeAfter, retryMS := h.interval, h.closeAfter, h.retryMS
	h.mu.Unlock()
	if code != "" {
		closeCode := websocket.ClosePolicyViolation
		if code == protocol.ErrBusy {
			closeCode = protocol.CloseTryAgainLater
		}
		_ = send(c, protocol.TypeError, protocol.Error{Code: code, Message: msg, RetryAfterMS: retryMS})
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(closeCode, code), time.Now().Add(time.Second))
		return
	}
	ack := ""
	if hello.LastUpdate != nil {
		ack = hello.LastUpdate.ID // recorded in Hellos
	}
	if send(c, protocol.TypeWelcome, protocol.Welcome{ServerID: hello.ServerID, HeartbeatIntervalS: interval, Protocol: protocol.Version,
		LastUpdateAck: ack}) != nil {
		return
	}
	if closeAfter {
		_ = c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseTryAgainLater, "test hub closes"), time.Now().Add(time.Second))
		return
	}
	h.mu.Lock()
	p.serverID = hello.ServerID
	h.mu.Unlock()
	c.SetPingHandler(func(data string) error {
		h.mu.Lock()
		h.pings++
		mute := h.mute
		h.mu.Unlock()
		if mute {
			return nil
		}
		err := c.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		return err
	})
	for {
		_, data, err := c.ReadMessage()
		if err != nil {
			return
		}
		env, err := protocol.Decode(data)
		if err != nil {
			return
		}
		switch env.Type {
		case protocol.TypeHeartbeat:
			var hb protocol.Heartbeat
			if protocol.DecodeData(env, &hb) != nil {
				return
			}
			h.mu.Lock()
			h.heartbeats = append(h.heartbeats, Heartbeat{ServerID: hello.ServerID, Health: hb.Health})
			h.mu.Unlock()
		case protocol.TypeTaskLog:
			var l protocol.TaskLog
			if protocol.DecodeData(env, &l) != nil {
				return
			}
			h.mu.Lock()
			h.logs[l.TaskID] = append(h.logs[l.TaskID], l)
			h.mu.Unlock()
		case protocol.TypeTaskResult:
			var r protocol.TaskResult
			if protocol.DecodeData(env, &r) != nil {
				return
			}
			h.mu.Lock()
			h.results[r.TaskID] = append(h.results[r.TaskID], r)
			ack := h.autoAck && protocol.Final(r.State)
			h.mu.Unlock()
			if ack && p.send(c, protocol.TypeTaskAck, protocol.TaskAck{TaskID: r.TaskID, LogSeq: r.LastLogSeq, Final: true}) != nil {
				return
			}
		case protocol.TypeUpdateStatus:
			var st protocol.UpdateStatus
			if protocol.DecodeData(env, &st) != nil {
				return
			}
			h.mu.Lock()
			h.statuses = append(h.statuses, st)
			h.mu.Unlock()
		case protocol.TypeGoodbye:
			var g protocol.Goodbye
			if protocol.DecodeData(env, &g) != nil {
				return
			}
			h.mu.Lock()
			h.goodbyes = append(h.goodbyes, g)
			h.mu.Unlock()
		default:
			return
		}
	}
}

// ServeFile makes the hub's HTTPS server answer GET path with body (what
// agents download updates from).
func (h *Hub) ServeFile(path string, body []byte) {
	h.mu.Lock()
	h.files[path] = body
	h.mu.Unlock()
}

// UpdateStatuses returns the update_status messages agents sent (1.2).
func (h *Hub) UpdateStatuses() []protocol.UpdateStatus {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]protocol.UpdateStatus(nil), h.statuses...)
}

// Goodbyes returns the goodbye messages agents sent (protocol 1.1).
func (h *Hub) Goodbyes() []protocol.Goodbye {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]protocol.Goodbye(nil), h.goodbyes...)
}

// peer is one accepted session.
type peer struct {
	serverID string // once welcomed
	wmu      sync.Mutex
}

func (p *peer) send(c *websocket.Conn, typ string, v any) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return send(c, typ, v)
}

// Send delivers a message (task, cancel, task_ack) to serverID's session.
func (h *Hub) Send(serverID, typ string, v any) error {
	h.mu.Lock()
	var conn *websocket.Conn
	var p *peer
	for c, x := range h.conns {
		if x.serverID == serverID {
			conn, p = c, x
		}
	}
	h.mu.Unlock()
	if conn == nil {
		return fmt.Errorf("agenttest: %s is not connected", serverID)
	}
	return p.send(conn, typ, v)
}

// SetAutoAck makes the hub acknowledge every final task result (Final,
// with its LastLogSeq) as soon as it arrives.
func (h *Hub) SetAutoAck(v bool) { h.mu.Lock(); h.autoAck = v; h.mu.Unlock() }

// TaskLogs returns the task_log messages received for a task, in order.
func (h *Hub) TaskLogs(taskID string) []protocol.TaskLog {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]protocol.TaskLog(nil), h.logs[taskID]...)
}

// TaskResults returns the task_result messages received for a task, in order.
func (h *Hub) TaskResults(taskID string) []protocol.TaskResult {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]protocol.TaskResult(nil), h.results[taskID]...)
}

// check verifies a hello; it returns an error code and message, or "".
// h.mu is held.
func (h *Hub) check(hello protocol.Hello, nonce []byte) (string, string) {
	if h.refuse != "" {
		return h.refuse, "refused by test hub"
	}
	if len(hello.PublicKey) != ed25519.PublicKeySize ||
		!ed25519.Verify(hello.PublicKey, protocol.SignedMessage(nonce, hello.ServerID), hello.Signature) {
		return protocol.ErrAuthFailed, "bad signature"
	}
	switch hello.Mode {
	case protocol.ModeEnroll:
		if sid, ok := h.tokens[hello.BootstrapToken]; !ok || sid != hello.ServerID {
			return protocol.ErrTokenInvalid, "bootstrap token unknown, used or expired"
		}
		delete(h.tokens, hello.BootstrapToken)
		h.keys[hello.ServerID] = hello.PublicKey
	case protocol.ModeAuth:
		k, ok := h.keys[hello.ServerID]
		if !ok || !k.Equal(ed25519.PublicKey(hello.PublicKey)) {
			return protocol.ErrAuthFailed, "unknown server or key"
		}
	default:
		return protocol.ErrBadRequest, "unknown mode"
	}
	return "", ""
}
