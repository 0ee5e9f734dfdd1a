package hub

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"

	"github.com/devpilot/devpilot/shared/protocol"
)

// session is one upgraded connection; kept small, thousands live at once.
type session struct {
	h      *Hub
	conn   *websocket.Conn
	remote string

	// Set once authenticated, read-only afterwards.
	serverID     string
	agentVersion string
	capabilities []string             // hello's (protocol 1.1)
	bootID       string               // hello's facts.boot_id (protocol 1.1)
	lastUpdate   *protocol.LastUpdate // hello's last_update (protocol 1.2), bounded
	since        time.Time
	ctx          context.Context
	cancel       context.CancelFunc

	lastSeen atomic.Int64 // unix nanos, h.now
	health   atomic.Pointer[protocol.Health]

	nonce []byte // the challenge's, until the hello is verified

	wmu       chan struct{} // one data writer at a time; cap 1
	closeOnce sync.Once
	closedBy  atomic.Pointer[string] // why the hub closed it
	goodbye   atomic.Pointer[protocol.Goodbye]
}

// refusal is why a handshake failed: code is sent to the agent (empty: just
// close), reason labels the metric and the log line.
type refusal struct {
	code   string
	reason string
	detail string
	err    error
	retry  time.Duration // sent with protocol.ErrBusy
	cause  string        // busy: busyQueueFull, busyWaited or busyAtCapacity
}

// busy is the refusal of a handshake the hub has no room for now.
func (h *Hub) busy(cause string) *refusal {
	return &refusal{code: protocol.ErrBusy, reason: reasonBusy, cause: cause, detail: cause, retry: h.admit.hint(h.busyRetry)}
}

// ServeHTTP upgrades an agent's request and runs its session until it ends.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		http.Error(w, "control plane shutting down", http.StatusServiceUnavailable)
		return
	}
	h.wg.Add(1)
	h.mu.Unlock()
	handedOff := false
	defer func() {
		if !handedOff {
			h.wg.Done()
		}
	}()

	conn, err := h.upgrader.Upgrade(w, r, nil)
	if err != nil {
		// The upgrader has answered with an HTTP error already.
		h.log.Debug("agent upgrade failed", zap.String("remote", r.RemoteAddr), zap.Error(err))
		return
	}
	s := &session{h: h, conn: conn, remote: r.RemoteAddr, wmu: make(chan struct{}, 1)}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		s.closeWith("", "", websocket.CloseGoingAway, "control plane shutting down", "hub closed")
		return
	}
	if h.maxAgents > 0 && len(h.all) >= h.maxAgents {
		h.mu.Unlock()
		h.refuse(s, "", h.busy(busyAtCapacity))
		_ = conn.Close()
		return
	}
	h.all[s] = struct{}{}
	h.m.conns.Set(float64(len(h.all)))
	h.mu.Unlock()
	forget := func() {
		h.mu.Lock()
		delete(h.all, s)
		h.m.conns.Set(float64(len(h.all)))
		h.mu.Unlock()
		_ = conn.Close()
	}

	hello, admitted, ref := h.authenticate(s)
	if ref != nil {
		h.refuse(s, hello.ServerID, ref)
		forget()
		return
	}
	ref = h.register(s, hello)
	admitted()
	if ref != nil {
		h.refuse(s, hello.ServerID, ref)
		forget()
		return
	}
	// Read on a fresh goroutine and let this one return: net/http then
	// drops its per-connection state (request, 4 KiB bufio reader and
	// writer) and the handshake's deep stack: 31 KB → 8 KB per idle
	// session in BenchmarkIdleConnectionMemory.
	handedOff = true
	go func() {
		defer h.wg.Done()
		defer forget()
		h.unregister(s, h.readLoop(s))
	}()
}

// authenticate sends the challenge and checks the hello. Before its store
// work it takes an admission slot (see admission), which the caller gives
// back with done once the session is registered; refused, done is nil.
func (h *Hub) authenticate(s *session) (_ protocol.Hello, done func(), _ *refusal) {
	hello, ref := h.checkHello(s)
	if ref != nil {
		return hello, nil, ref
	}
	done, cause := h.admit.acquire(h.ctx.Done())
	if done == nil {
		if cause == "" {
			return hello, nil, &refusal{reason: reasonIO, detail: "hub closing"}
		}
		return hello, nil, h.busy(cause)
	}
	if ref := h.verify(s, hello); ref != nil {
		done()
		return hello, nil, ref
	}
	return hello, done, nil
}

// checkHello sends the challenge and reads and checks the hello; no store
// work. The nonce is kept on s for verify.
func (h *Hub) checkHello(s *session) (protocol.Hello, *refusal) {
	var hello protocol.Hello
	nonce := make([]byte, protocol.NonceBytes)
	_, _ = rand.Read(nonce) // never fails (crypto/rand)
	s.nonce = nonce
	deadline := time.Now().Add(h.handshake)
	_ = s.conn.SetReadDeadline(deadline)
	s.conn.SetReadLimit(maxHelloBytes)

	b, err := protocol.Encode(protocol.TypeChallenge, protocol.Challenge{Nonce: nonce, Protocol: protocol.Version})
	if err != nil {
		return hello, &refusal{reason: reasonInternal, err: err}
	}
	_ = s.conn.SetWriteDeadline(deadline)
	if err := s.conn.WriteMessage(websocket.TextMessage, b); err != nil {
		return hello, &refusal{reason: reasonIO, err: err}
	}

	typ, b, err := s.conn.ReadMessage()
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return hello, &refusal{reason: reasonTimeout, detail: "no hello before the handshake timeout"}
		}
		if errors.Is(err, websocket.ErrReadLimit) {
			return hello, &refusal{reason: reasonBadRequest, detail: "hello too large"}
		}
		return hello, &refusal{reason: reasonIO, err: err}
	}
	if typ != websocket.TextMessage {
		return hello, &refusal{code: protocol.ErrBadRequest, reason: reasonBadRequest, detail: "binary message"}
	}
	env, err := protocol.Decode(b)
	if err != nil {
		if env.Type != "" && env.V < protocol.MinVersion {
			return hello, &refusal{code: protocol.ErrUnsupported, reason: reasonUnsupported, err: err}
		}
		return hello, &refusal{code: protocol.ErrBadRequest, reason: reasonBadRequest, err: err}
	}
	if env.Type != protocol.TypeHello {
		return hello, &refusal{code: protocol.ErrBadRequest, reason: reasonBadRequest, detail: "expected hello, got " + messageLabel(env.Type)}
	}
	if err := protocol.DecodeData(env, &hello); err != nil {
		return hello, &refusal{code: protocol.ErrBadRequest, reason: reasonBadRequest, err: err}
	}
	if len(hello.ServerID) > maxServerID || !utf8.ValidString(hello.ServerID) {
		hello.ServerID = "" // don't log it
		return hello, &refusal{code: protocol.ErrBadRequest, reason: reasonBadRequest, detail: "bad server_id"}
	}
	switch {
	case hello.ServerID == "":
		return hello, &refusal{code: protocol.ErrBadRequest, reason: reasonBadRequest, detail: "no server_id"}
	case len(hello.Signature) != ed25519.SignatureSize:
		return hello, &refusal{code: protocol.ErrBadRequest, reason: reasonBadRequest, detail: "signature is not an ed25519 signature"}
	case hello.Mode != protocol.ModeEnroll && hello.Mode != protocol.ModeAuth:
		return hello, &refusal{code: protocol.ErrBadRequest, reason: reasonBadRequest, detail: "unknown mode"}
	}
	return hello, nil
}

// verify checks the hello's signature against the store (enrolling the
// key in enroll mode).
func (h *Hub) verify(s *session, hello protocol.Hello) *refusal {
	ctx, cancel := context.WithTimeout(h.ctx, registryWait)
	defer cancel()
	signed := protocol.SignedMessage(s.nonce, hello.ServerID)
	s.nonce = nil
	if hello.Mode == protocol.ModeEnroll {
		if len(hello.PublicKey) != ed25519.PublicKeySize {
			return &refusal{code: protocol.ErrBadRequest, reason: reasonBadRequest, detail: "public_key is not an ed25519 key"}
		}
		if hello.BootstrapToken == "" {
			return &refusal{code: protocol.ErrTokenInvalid, reason: reasonTokenInvalid, detail: "no bootstrap token"}
		}
		// Proof of possession first, so a bad signature can't burn the token.
		pub := ed25519.PublicKey(bytes.Clone(hello.PublicKey))
		if !ed25519.Verify(pub, signed, hello.Signature) {
			return &refusal{code: protocol.ErrAuthFailed, reason: reasonAuthFailed, detail: "signature does not match public_key"}
		}
		if err := h.reg.Enroll(ctx, hello.ServerID, hello.BootstrapToken, pub, hello); err != nil {
			return h.registryRefusal(err)
		}
		h.m.enrollments.Inc()
		h.log.Info("agent enrolled", zap.String("server", hello.ServerID), zap.String("remote", s.remote),
			zap.String("agent_version", hello.AgentVersion))
		return nil
	}
	keys, err := h.reg.AgentKey(ctx, hello.ServerID)
	if err != nil {
		return h.registryRefusal(err)
	}
	// Only a peer holding a key learns the server's quarantine or rekey.
	switch {
	case signedBy(keys.Enrolled, signed, hello.Signature):
		if keys.Quarantined {
			return &refusal{code: protocol.ErrQuarantined, reason: reasonQuarantined}
		}
		return nil
	case signedBy(keys.Revoked, signed, hello.Signature):
		return &refusal{code: protocol.ErrKeyRevoked, reason: reasonKeyRevoked, detail: "signature made with the key a rekey revoked"}
	}
	return &refusal{code: protocol.ErrAuthFailed, reason: reasonAuthFailed, detail: "signature not made with the enrolled key"}
}

func signedBy(pub ed25519.PublicKey, msg, sig []byte) bool {
	return len(pub) == ed25519.PublicKeySize && ed25519.Verify(pub, msg, sig)
}

func (h *Hub) registryRefusal(err error) *refusal {
	switch {
	case errors.Is(err, context.DeadlineExceeded) && h.ctx.Err() == nil:
		// The store is overloaded, not failing: the agent comes back
		// after the hint rather than at its own backoff's whim.
		return h.busy(busyStoreSlow)
	case errors.Is(err, ErrTokenInvalid):
		return &refusal{code: protocol.ErrTokenInvalid, reason: reasonTokenInvalid}
	case errors.Is(err, ErrAuthFailed):
		return &refusal{code: protocol.ErrAuthFailed, reason: reasonAuthFailed}
	case errors.Is(err, ErrServerDeleted):
		return &refusal{code: protocol.ErrServerDeleted, reason: reasonDeleted}
	case errors.Is(err, ErrQuarantined):
		return &refusal{code: protocol.ErrQuarantined, reason: reasonQuarantined}
	}
	// The store failed: no error code, so the agent retries with backoff.
	return &refusal{reason: reasonInternal, err: err}
}

// refuse tells the agent why (when there is a code), closes the connection,
// logs and counts it. Never logs the hello's token.
func (h *Hub) refuse(s *session, serverID string, r *refusal) {
	if by := s.closedBy.Load(); by != nil {
		return // the hub closed it (shutdown); not the agent's failure
	}
	if h.ctx.Err() != nil {
		s.closeWith("", "", websocket.CloseGoingAway, "control plane shutting down", "hub closed")
		return
	}
	h.m.authFailures.WithLabelValues(r.reason).Inc()
	if r.cause != "" {
		h.m.busy.WithLabelValues(r.cause).Inc()
	}
	switch r.reason {
	case reasonQuarantined, reasonKeyRevoked, reasonDeleted:
		// Only refusals of a server that exists: an unknown peer cannot
		// make the hub remember arbitrary ids.
		h.recordError(serverID, "refused by the control plane: "+r.reason)
	}
	fields := []zap.Field{zap.String("server", serverID), zap.String("remote", s.remote), zap.String("reason", r.reason)}
	if r.detail != "" {
		fields = append(fields, zap.String("detail", r.detail))
	}
	if r.err != nil {
		fields = append(fields, zap.Error(r.err))
	}
	closeCode := websocket.ClosePolicyViolation
	switch r.reason {
	case reasonInternal:
		closeCode = websocket.CloseInternalServerErr
		h.log.Warn("agent session failed", fields...)
	case reasonBadRequest, reasonUnsupported:
		closeCode = websocket.CloseProtocolError
		h.log.Info("agent refused", fields...)
	case reasonBusy:
		// Thousands of these in a storm: the metric counts them.
		closeCode = protocol.CloseTryAgainLater
		h.log.Debug("agent refused", fields...)
	default:
		h.log.Info("agent refused", fields...)
	}
	s.closeWithError(protocol.Error{Code: r.code, Message: messageFor(r.code), RetryAfterMS: int(r.retry / time.Millisecond)},
		closeCode, r.reason, r.reason)
}

// register makes s the server's session (replacing any other), records it
// and welcomes the agent. Sends issued meanwhile wait for the welcome.
func (h *Hub) register(s *session, hello protocol.Hello) *refusal {
	id := hello.ServerID
	s.serverID = id
	s.agentVersion = hello.AgentVersion
	for _, c := range hello.Capabilities[:min(len(hello.Capabilities), 16)] {
		s.capabilities = append(s.capabilities, cut(c, 64))
	}
	s.bootID = cut(hello.Facts.BootID, 64)
	if lu := hello.LastUpdate; lu != nil {
		b := BoundLastUpdate(*lu)
		s.lastUpdate, hello.LastUpdate = &b, &b
	}
	s.since = h.now()
	s.lastSeen.Store(s.since.UnixNano())
	// Not a child of h.ctx (that costs an entry in its children map per
	// session): Close ends every session, which cancels this.
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wmu <- struct{}{} // held until the welcome is out

	unlock := h.lifecycle.lock(id)
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		unlock()
		<-s.wmu
		s.cancel()
		s.closeWith("", "", websocket.CloseGoingAway, "control plane shutting down", "hub closed")
		return &refusal{reason: reasonIO}
	}
	old := h.sessions[id]
	h.sessions[id] = s
	var conflict *Conflict
	if old != nil {
		conflict = h.takenOver(id, takeover{at: s.since, from: old.remote, to: s.remote})
		if conflict != nil {
			delete(h.sessions, id)
		}
	}
	h.m.connected.Set(float64(len(h.sessions)))
	h.mu.Unlock()
	if conflict != nil {
		ref := h.quarantine(id, old, conflict)
		unlock()
		<-s.wmu
		s.cancel()
		return ref
	}
	if old != nil {
		old.closeWith(protocol.ErrSessionReplace, messageFor(protocol.ErrSessionReplace),
			websocket.ClosePolicyViolation, protocol.ErrSessionReplace, "replaced by a new session from "+s.remote)
	}
	ctx, cancel := context.WithTimeout(context.WithValue(h.ctx, remoteKey{}, s.remote), registryWait)
	err := h.reg.Connected(ctx, id, hello, s.since)
	cancel()
	if err != nil {
		h.mu.Lock()
		if h.sessions[id] == s {
			delete(h.sessions, id)
			h.m.connected.Set(float64(len(h.sessions)))
		}
		h.mu.Unlock()
		unlock()
		<-s.wmu
		s.cancel()
		return h.registryRefusal(err)
	}
	unlock()
	h.m.sessions.Inc()

	b, err := protocol.Encode(protocol.TypeWelcome, protocol.Welcome{
		ServerID:           id,
		HeartbeatIntervalS: int(max((h.interval+time.Second-1)/time.Second, 1)),
		Protocol:           protocol.Version,
		LastUpdateAck:      ackOf(s.lastUpdate),
	})
	if err == nil {
		_ = s.conn.SetWriteDeadline(time.Now().Add(writeWait))
		err = s.conn.WriteMessage(websocket.TextMessage, b)
	}
	<-s.wmu
	if err != nil {
		// The reader will fail on the broken connection and unregister.
		s.closeWith("", "", websocket.CloseInternalServerErr, "write failed", "welcome write failed")
	}
	h.log.Info("agent connected", zap.String("server", id), zap.String("remote", s.remote),
		zap.String("agent_version", hello.AgentVersion), zap.Bool("replaced", old != nil))
	return nil
}

// BoundLastUpdate cuts an agent's hello.last_update to sane sizes before
// it is kept or recorded. A result this protocol does not define is taken
// as failed, the agent's word kept in the reason: the API promises one of
// the four, and an update that did not say it worked did not.
func BoundLastUpdate(lu protocol.LastUpdate) protocol.LastUpdate {
	result, reason := lu.Result, lu.Reason
	switch result {
	case protocol.UpdateResultUpdated, protocol.UpdateResultRolledBack, protocol.UpdateResultRefused, protocol.UpdateResultFailed:
	default:
		result, reason = protocol.UpdateResultFailed, fmt.Sprintf("the agent reported result %q", cut(result, 32))
		if lu.Reason != "" {
			reason += ": " + lu.Reason
		}
	}
	return protocol.LastUpdate{ID: cut(lu.ID, maxServerID), Result: result, From: cut(lu.From, 64), To: cut(lu.To, 64),
		Reason: cut(reason, protocol.MaxReasonBytes)}
}

func ackOf(lu *protocol.LastUpdate) string {
	if lu == nil {
		return ""
	}
	return lu.ID
}

type remoteKey struct{}

// RemoteOf is the new session's remote address in the context of a
// Registry.Connected call ("" in any other context).
func RemoteOf(ctx context.Context) string {
	r, _ := ctx.Value(remoteKey{}).(string)
	return r
}

// TakenOver ends this hub's session of server id, which a session from
// remote on another control plane replaced at at (active mode: the new
// holder says so, controlplane/cluster). It counts as a takeover here:
// sessions of one identity key that keep replacing each other across
// control planes quarantine the server as they do on one. The reported
// takeover is counted on the control plane whose session it replaced,
// so with several control planes a conflict may take a few more
// takeovers to be seen.
func (h *Hub) TakenOver(id, remote string, at time.Time) {
	defer h.lifecycle.lock(id)()
	h.mu.Lock()
	old := h.sessions[id]
	if old == nil {
		h.mu.Unlock()
		return
	}
	// No longer this server's session: its end records nothing (the
	// store's holder is the other control plane).
	delete(h.sessions, id)
	h.m.connected.Set(float64(len(h.sessions)))
	conflict := h.takenOver(id, takeover{at: at, from: old.remote, to: remote})
	h.mu.Unlock()
	if conflict != nil {
		_ = h.quarantine(id, old, conflict)
		return
	}
	old.closeWith(protocol.ErrSessionReplace, messageFor(protocol.ErrSessionReplace),
		websocket.ClosePolicyViolation, protocol.ErrSessionReplace, "replaced by a new session from "+remote+" on another control plane")
}

// takeover is one replacement of a server's live session.
type takeover struct {
	at       time.Time
	from, to string // remote addresses of the replaced and the new session
}

// takenOver records t and returns the conflict if the server's session
// was now taken over conflictN times within conflictWin. Holds h.mu.
func (h *Hub) takenOver(id string, t takeover) *Conflict {
	recent := h.takeovers[id][:0:0]
	for _, old := range h.takeovers[id] {
		if t.at.Sub(old.at) < h.conflictWin {
			recent = append(recent, old)
		}
	}
	recent = append(recent, t)
	if len(recent) > h.conflictN {
		recent = recent[len(recent)-h.conflictN:]
	}
	if len(recent) < h.conflictN {
		h.takeovers[id] = recent
		return nil
	}
	delete(h.takeovers, id)
	c := &Conflict{Replacements: len(recent), Window: h.conflictWin, At: t.at}
	for _, r := range recent {
		for _, addr := range []string{r.from, r.to} {
			if !slices.Contains(c.Remotes, addr) {
				c.Remotes = append(c.Remotes, addr)
			}
		}
	}
	return c
}

// quarantine records the conflict, ends the replaced session (old) and
// the server's session in the store, and refuses the new one. The
// server's lifecycle lock is held.
func (h *Hub) quarantine(id string, old *session, c *Conflict) *refusal {
	h.m.conflicts.Inc()
	h.log.Warn("two agents use one identity key; server quarantined", zap.String("server", id),
		zap.Int("replacements", c.Replacements), zap.Duration("window", c.Window), zap.Strings("remotes", c.Remotes))
	ctx, cancel := context.WithTimeout(context.WithoutCancel(h.ctx), registryWait)
	defer cancel()
	recErr := h.reg.IdentityConflict(ctx, id, *c)
	if recErr != nil {
		h.log.Warn("record identity conflict failed", zap.String("server", id), zap.Error(recErr))
	}
	old.closeWith(protocol.ErrQuarantined, messageFor(protocol.ErrQuarantined),
		websocket.ClosePolicyViolation, protocol.ErrQuarantined, "server quarantined: identity conflict")
	if err := h.reg.Disconnected(ctx, id, h.now()); err != nil {
		h.log.Warn("record disconnection failed", zap.String("server", id), zap.Error(err))
	}
	if recErr != nil {
		// Not recorded: no code, so the agent retries and the next
		// takeovers report the conflict again.
		return &refusal{reason: reasonInternal, err: recErr}
	}
	return &refusal{code: protocol.ErrQuarantined, reason: reasonQuarantined}
}

// unregister ends s: if it is still the server's session the store records
// the disconnection.
func (h *Hub) unregister(s *session, reason string) {
	s.cancel()
	defer h.lifecycle.lock(s.serverID)()
	h.mu.Lock()
	mine := h.sessions[s.serverID] == s
	if mine {
		delete(h.sessions, s.serverID)
		h.m.connected.Set(float64(len(h.sessions)))
	}
	h.mu.Unlock()
	if by := s.closedBy.Load(); by != nil {
		reason = *by
	}
	if g := s.goodbye.Load(); g != nil {
		reason = "agent said goodbye: " + g.Reason
		if g.RebootID != "" {
			reason += " (" + g.RebootID + ")"
		}
		if g.Error != "" {
			reason += ": " + g.Error
		}
	}
	if mine && h.ctx.Err() == nil {
		// Not when the hub itself is closing: that is no agent error, and
		// it would cost a store write per session on shutdown.
		h.recordError(s.serverID, reason)
	}
	h.log.Info("agent disconnected", zap.String("server", s.serverID), zap.String("remote", s.remote),
		zap.String("reason", reason), zap.Duration("session", h.now().Sub(s.since)))
	if !mine {
		return // replaced: the server is still connected
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(h.ctx), registryWait)
	defer cancel()
	if err := h.reg.Disconnected(ctx, s.serverID, h.now()); err != nil {
		h.log.Warn("record disconnection failed", zap.String("server", s.serverID), zap.Error(err))
	}
}

// readLoop reads until the connection fails and says why.
func (h *Hub) readLoop(s *session) string {
	s.conn.SetReadLimit(protocol.MaxMessageBytes)
	alive := func(string) error {
		s.lastSeen.Store(h.now().UnixNano())
		return s.conn.SetReadDeadline(time.Now().Add(h.offlineAfter))
	}
	s.conn.SetPongHandler(alive)
	// An agent's keepalive ping: it is alive, and it wants a pong (its
	// read deadline waits for one). Written with WriteControl, which is
	// safe alongside the data writer.
	s.conn.SetPingHandler(func(data string) error {
		_ = alive(data)
		err := s.conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(closeWait))
		if err != nil && !errors.Is(err, websocket.ErrCloseSent) {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil
			}
			return err
		}
		return nil
	})
	for {
		_ = s.conn.SetReadDeadline(time.Now().Add(h.offlineAfter))
		typ, b, err := s.conn.ReadMessage()
		if err != nil {
			var ne net.Error
			var ce *websocket.CloseError
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				return "missed heartbeats"
			case errors.Is(err, websocket.ErrReadLimit):
				return "message too large"
			case errors.As(err, &ce):
				return "agent closed: " + ce.Error()
			}
			return "connection lost: " + err.Error()
		}
		s.lastSeen.Store(h.now().UnixNano())
		if typ != websocket.TextMessage {
			h.complain(s, "binary message")
			continue
		}
		if h.heartbeat(s, b) {
			continue
		}
		env, err := protocol.Decode(b)
		if err != nil {
			h.complain(s, err.Error())
			continue
		}
		h.m.messages.WithLabelValues(messageLabel(env.Type)).Inc()
		h.dispatch(s, env)
	}
}

func (h *Hub) dispatch(s *session, env protocol.Envelope) {
	if env.Type == protocol.TypeGoodbye {
		var g protocol.Goodbye
		if err := protocol.DecodeData(env, &g); err != nil {
			h.complain(s, err.Error())
			return
		}
		g.Reason, g.RebootID, g.Error = cut(g.Reason, 64), cut(g.RebootID, maxServerID), cut(g.Error, protocol.MaxReasonBytes)
		g.UpdateID = cut(g.UpdateID, maxServerID)
		s.goodbye.Store(&g)
		return
	}
	if env.Type == protocol.TypeHeartbeat {
		var hb protocol.Heartbeat
		if err := protocol.DecodeData(env, &hb); err != nil {
			h.complain(s, err.Error())
			return
		}
		h.keepHealth(s, hb.Health)
		return
	}
	if fn := h.handlers[env.Type]; fn != nil {
		fn(s.ctx, s.serverID, env)
		return
	}
	h.complain(s, "unexpected message type "+messageLabel(env.Type))
}

// heartbeat handles b if it is a well-formed heartbeat (the bulk of what
// agents send) and says whether it did; anything else, malformed
// heartbeats included, takes the general path (Decode, dispatch), which
// answers errors.
func (h *Hub) heartbeat(s *session, b []byte) bool {
	hb, ok := decodeHeartbeat(b)
	if !ok {
		return false
	}
	h.m.hbMessages.Inc()
	h.keepHealth(s, hb.Health)
	return true
}

// keepHealth records a heartbeat's health: the session's live view and the
// next flush.
func (h *Hub) keepHealth(s *session, reported protocol.Health) {
	at := h.now()
	health := boundHealth(reported)
	s.health.Store(&health)
	h.hmu.Lock()
	h.pending[s.serverID] = HealthSample{Health: health, At: at}
	h.hmu.Unlock()
	h.m.heartbeats.Inc()
}

// complain answers a bad message with a bad_request error and keeps the
// session: a newer agent may send something this hub doesn't know yet.
func (h *Hub) complain(s *session, detail string) {
	h.log.Debug("bad message from agent", zap.String("server", s.serverID), zap.String("detail", detail))
	b, err := protocol.Encode(protocol.TypeError, protocol.Error{Code: protocol.ErrBadRequest, Message: detail})
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(s.ctx, writeWait)
	defer cancel()
	_ = s.write(ctx, b)
}

// write sends one data message; one writer at a time, bounded by ctx and
// writeWait.
func (s *session) write(ctx context.Context, b []byte) error {
	select {
	case s.wmu <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-s.wmu }()
	dl := time.Now().Add(writeWait)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	_ = s.conn.SetWriteDeadline(dl)
	return s.conn.WriteMessage(websocket.TextMessage, b)
}

// closeWith says goodbye (an error message with code, if any, then a close
// frame) within closeWait and closes the connection; the reader then ends
// the session. Only the first call counts.
func (s *session) closeWith(code, message string, closeCode int, closeText, why string) {
	s.closeWithError(protocol.Error{Code: code, Message: message}, closeCode, closeText, why)
}

// closeWithError is closeWith with the whole error message (e.g. a busy
// refusal's retry hint); none is sent when e.Code is empty.
func (s *session) closeWithError(e protocol.Error, closeCode int, closeText, why string) {
	s.closeOnce.Do(func() {
		s.closedBy.Store(&why)
		deadline := time.Now().Add(closeWait)
		if e.Code != "" {
			if b, err := protocol.Encode(protocol.TypeError, e); err == nil {
				ctx, cancel := context.WithDeadline(context.Background(), deadline)
				_ = s.write(ctx, b)
				cancel()
			}
		}
		_ = s.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(closeCode, closeText), deadline)
		_ = s.conn.Close()
	})
}
