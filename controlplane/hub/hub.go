// Package hub holds the control plane's end of the agent WebSocket sessions
// (protocol.Path): it authenticates agents (enrollment with a bootstrap token,
// then an ed25519 signature over a fresh challenge), keeps one live session
// per server, tracks heartbeats and health, delivers messages to agents and
// routes theirs to registered handlers.
//
// Each connection costs one goroutine (the HTTP handler's, which becomes the
// reader), small buffers, and no timers beyond the socket's read deadline;
// pings and health flushes run on one shared goroutine per hub. Measured
// with bench_test.go (agents in a child process over loopback, 2 shared
// cores): about 7-8 KB of heap+stack per idle authenticated session at
// 2,000 and 10,000 agents, and 2,500-4,400 full handshakes per second.
//
// net/http's Server.Shutdown does not see hijacked connections: call Close
// when the control plane stops.
package hub

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/devpilot/devpilot/shared/protocol"
)

// Registry is the hub's view of the store; the control plane implements it.
// Calls for one server are never concurrent with Connected/Disconnected for
// the same server, and Connected and Disconnected reach it in session order.
type Registry interface {
	// Enroll consumes bootstrap token (single use, bound to serverID,
	// unexpired) and records pub as the server's agent key. Returns
	// ErrTokenInvalid (unknown/used/expired/other server's) or
	// ErrServerDeleted.
	Enroll(ctx context.Context, serverID, token string, pub ed25519.PublicKey, hello protocol.Hello) error
	// AgentKey returns the enrolled key (nil after a rekey, until the
	// agent enrolls again), the key the last rekey revoked, and whether
	// the server is quarantined; ErrAuthFailed if the server is unknown,
	// ErrServerDeleted if deleted.
	AgentKey(ctx context.Context, serverID string) (AgentKeys, error)
	// IdentityConflict records that sessions with one identity key kept
	// replacing each other: the server is quarantined (AgentKey reports
	// it from now on). The hub then ends the server's session and calls
	// Disconnected.
	IdentityConflict(ctx context.Context, serverID string, c Conflict) error
	// Connected records a session start (the first one confirms the
	// install), and hello.LastUpdate durably when set (protocol 1.2): the
	// welcome acknowledges it only after Connected returned nil, so the
	// agent stops reporting an outcome only once it is recorded.
	// Disconnected records a session's end.
	Connected(ctx context.Context, serverID string, hello protocol.Hello, at time.Time) error
	Disconnected(ctx context.Context, serverID string, at time.Time) error
	// SaveHealth persists the latest health of many servers at once (called
	// in batches, not per heartbeat).
	SaveHealth(ctx context.Context, latest map[string]HealthSample) error
}

// ErrorRecorder is an optional extension of Registry: the hub calls it
// with a server's last error (see LastError) when a session ends or is
// refused, so it outlives this hub.
type ErrorRecorder interface {
	AgentError(ctx context.Context, serverID, reason string, at time.Time) error
}

// AgentKeys is what the hub checks a hello's signature against.
type AgentKeys struct {
	Enrolled    ed25519.PublicKey // nil: none (never enrolled, or rekeyed)
	Revoked     ed25519.PublicKey // retired by a rekey: its holder is told so
	Quarantined bool              // sessions refused until a rekey and a new enrollment
}

// Conflict is what the hub saw of two agents sharing an identity: within
// Window, Replacements live sessions were taken over by new connections
// from the remote addresses Remotes (host:port, oldest first).
type Conflict struct {
	Replacements int
	Window       time.Duration
	Remotes      []string
	At           time.Time
}

// HealthSample is the latest health of a server and when it arrived.
type HealthSample struct {
	Health protocol.Health
	At     time.Time
}

// Errors a Registry returns (wrapped or not) to refuse an agent.
var (
	ErrTokenInvalid  = errors.New("bootstrap token invalid")
	ErrAuthFailed    = errors.New("agent authentication failed")
	ErrServerDeleted = errors.New("server deleted")
)

// ErrQuarantined is the refusal of a quarantined server's session.
var ErrQuarantined = errors.New("server quarantined: two agents used its identity key")

// ErrNotConnected is returned by Send when the server has no live session.
var ErrNotConnected = errors.New("agent not connected")

// Defaults for Options.
const (
	DefaultFlushInterval    = 30 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultConflictReplacements in DefaultConflictWindow quarantine a
	// server: an agent that reconnects after a network blip replaces its
	// half-open old session once; two agents with one key take turns
	// every few seconds (each reconnects, with backoff, when replaced).
	DefaultConflictReplacements = 3
	DefaultConflictWindow       = 2 * time.Minute
)

const (
	// maxHelloBytes is the read limit before authentication: a hello is a
	// few hundred bytes, so an unauthenticated peer can't make the hub
	// buffer protocol.MaxMessageBytes.
	maxHelloBytes = 64 << 10
	maxServerID   = 128
	// writeWait bounds a data message write (Send takes the smaller of it
	// and its context deadline).
	writeWait = 10 * time.Second
	// closeWait bounds the goodbye (error message + close frame) written
	// before a connection is closed.
	closeWait = time.Second
	// registryWait bounds each Registry call.
	registryWait = 10 * time.Second
	stripes      = 64
)

// Options configure a Hub.
type Options struct {
	Registry Registry // required
	Logger   *zap.Logger
	// Registerer receives the hub's metrics; nil keeps them unregistered.
	Registerer prometheus.Registerer
	// HeartbeatInterval is what agents are told (rounded up to whole
	// seconds, at least 1) and how often the hub pings; a session with no
	// message or pong for protocol.MissedHeartbeats intervals is closed.
	// Default protocol.DefaultHeartbeatS seconds.
	HeartbeatInterval time.Duration
	// FlushInterval is how often the latest health is saved. Default 30s.
	FlushInterval time.Duration
	// Now stamps sessions, heartbeats and Registry calls. Default time.Now.
	// Socket deadlines always use the real clock.
	Now func() time.Time
	// HandshakeTimeout bounds upgrade → hello. Default 10s.
	HandshakeTimeout time.Duration
	// ConflictReplacements session takeovers of one server within
	// ConflictWindow mean two agents share its identity key: the hub
	// quarantines the server (Registry.IdentityConflict). Defaults
	// DefaultConflictReplacements and DefaultConflictWindow.
	ConflictReplacements int
	ConflictWindow       time.Duration
}

// Status is the live view of one server's session.
type Status struct {
	Connected    bool
	Since        time.Time // session start
	LastSeen     time.Time // last message or pong
	Health       *protocol.Health
	AgentVersion string
	RemoteAddr   string
	// Capabilities and BootID are what the session's hello advertised
	// (protocol 1.1; empty from older agents).
	Capabilities []string
	BootID       string
	// LastUpdate is the session's hello.last_update (protocol 1.2), nil
	// when it reported none.
	LastUpdate *protocol.LastUpdate
}

// maxLastErrors bounds the remembered last errors (one per server).
const maxLastErrors = 100_000

// Hub serves agent sessions. Create it with New, mount it at protocol.Path,
// and Close it on shutdown.
type Hub struct {
	reg          Registry
	log          *zap.Logger
	now          func() time.Time
	interval     time.Duration
	offlineAfter time.Duration
	flushEvery   time.Duration
	handshake    time.Duration
	conflictN    int
	conflictWin  time.Duration
	upgrader     websocket.Upgrader
	m            *metrics

	ctx    context.Context // cancelled by Close; parent of Registry calls
	cancel context.CancelFunc

	handlers map[string]func(ctx context.Context, serverID string, env protocol.Envelope)

	mu       sync.Mutex
	closed   bool
	sessions map[string]*session   // authenticated, by server id
	all      map[*session]struct{} // every upgraded connection
	// takeovers holds, per server, the recent replacements of a live
	// session (at most conflictN, none older than conflictWin).
	takeovers map[string][]takeover
	wg        sync.WaitGroup // ServeHTTP calls in flight

	// lifecycle serialises registration + Connected and unregistration +
	// Disconnected per server (striped by id hash), so the store sees a
	// server's session starts and ends in order.
	lifecycle [stripes]sync.Mutex

	hmu     sync.Mutex
	pending map[string]HealthSample

	emu       sync.Mutex
	lastError map[string]LastError // by server id

	stop      chan struct{}
	loopDone  chan struct{}
	closeOnce sync.Once
}

// New returns a Hub and starts its ping/flush goroutine; Close stops it.
func New(o Options) *Hub {
	if o.Registry == nil {
		panic("hub: Options.Registry is required")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = protocol.DefaultHeartbeatS * time.Second
	}
	if o.FlushInterval <= 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.ConflictReplacements <= 0 {
		o.ConflictReplacements = DefaultConflictReplacements
	}
	if o.ConflictWindow <= 0 {
		o.ConflictWindow = DefaultConflictWindow
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &Hub{
		reg:          o.Registry,
		log:          o.Logger.Named("hub"),
		now:          o.Now,
		interval:     o.HeartbeatInterval,
		offlineAfter: protocol.MissedHeartbeats * o.HeartbeatInterval,
		flushEvery:   o.FlushInterval,
		handshake:    o.HandshakeTimeout,
		conflictN:    o.ConflictReplacements,
		conflictWin:  o.ConflictWindow,
		upgrader: websocket.Upgrader{
			HandshakeTimeout: o.HandshakeTimeout,
			ReadBufferSize:   1024,
			WriteBufferSize:  1024,
			WriteBufferPool:  &sync.Pool{},
		},
		m:         newMetrics(o.Registerer),
		ctx:       ctx,
		cancel:    cancel,
		handlers:  map[string]func(context.Context, string, protocol.Envelope){},
		sessions:  map[string]*session{},
		all:       map[*session]struct{}{},
		takeovers: map[string][]takeover{},
		pending:   map[string]HealthSample{},
		lastError: map[string]LastError{},
		stop:      make(chan struct{}),
		loopDone:  make(chan struct{}),
	}
	go h.loop()
	return h
}

// Handle registers fn for agent→hub messages of type typ (task_log,
// task_result, …). fn runs on the session's reader goroutine, in message
// order, so it must not block for long; ctx ends with the session. Call
// Handle before serving. Heartbeats are the hub's own and can't be handled.
func (h *Hub) Handle(typ string, fn func(ctx context.Context, serverID string, env protocol.Envelope)) {
	if typ == protocol.TypeHeartbeat || typ == protocol.TypeHello {
		panic("hub: " + typ + " is handled by the hub itself")
	}
	h.handlers[typ] = fn
}

// Connected returns how many servers have a live session.
func (h *Hub) Connected() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sessions)
}

// Status returns the live view of serverID's session; false if it has none.
func (h *Hub) Status(serverID string) (Status, bool) {
	h.mu.Lock()
	s := h.sessions[serverID]
	h.mu.Unlock()
	if s == nil {
		return Status{}, false
	}
	st := Status{
		Connected:    true,
		Since:        s.since,
		LastSeen:     time.Unix(0, s.lastSeen.Load()),
		AgentVersion: s.agentVersion,
		RemoteAddr:   s.remote,
		Capabilities: s.capabilities,
		BootID:       s.bootID,
		LastUpdate:   s.lastUpdate,
	}
	if hp := s.health.Load(); hp != nil {
		c := *hp
		c.Disks = append([]protocol.Disk(nil), hp.Disks...)
		st.Health = &c
	}
	return st, true
}

// LastError is why a server's last session ended (its goodbye, the read
// error, or the hub closing it) or the hub's last refusal of it.
type LastError struct {
	Reason string
	At     time.Time
}

// LastError returns what ended serverID's last session, or refused it; false
// when this hub saw none.
func (h *Hub) LastError(serverID string) (LastError, bool) {
	h.emu.Lock()
	defer h.emu.Unlock()
	e, ok := h.lastError[serverID]
	return e, ok
}

func (h *Hub) noteError(serverID, reason string) {
	if serverID == "" || reason == "" {
		return
	}
	h.emu.Lock()
	defer h.emu.Unlock()
	if _, ok := h.lastError[serverID]; !ok && len(h.lastError) >= maxLastErrors {
		return
	}
	h.lastError[serverID] = LastError{Reason: cut(reason, protocol.MaxReasonBytes), At: h.now()}
}

// recordError notes the last error and hands it to the Registry when it
// is an ErrorRecorder. Not with a lifecycle stripe held for long: one
// bounded store call.
func (h *Hub) recordError(serverID, reason string) {
	h.noteError(serverID, reason)
	rec, ok := h.reg.(ErrorRecorder)
	if !ok || serverID == "" || reason == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(h.ctx), registryWait)
	defer cancel()
	if err := rec.AgentError(ctx, serverID, cut(reason, protocol.MaxReasonBytes), h.now()); err != nil {
		h.log.Warn("record agent error failed", zap.String("server", serverID), zap.Error(err))
	}
}

// Send delivers one message to serverID's agent. It returns ErrNotConnected
// if the server has no live session; a failed write closes the session.
func (h *Hub) Send(ctx context.Context, serverID, typ string, payload any) error {
	b, err := protocol.Encode(typ, payload)
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	h.mu.Lock()
	s := h.sessions[serverID]
	h.mu.Unlock()
	if s == nil {
		return fmt.Errorf("send %s: %w", typ, ErrNotConnected)
	}
	if err := s.write(ctx, b); err != nil {
		if ctx.Err() == nil {
			s.closeWith("", "", websocket.CloseInternalServerErr, "write failed", "write failed")
		}
		return fmt.Errorf("send %s: %w", typ, err)
	}
	return nil
}

// Disconnect closes serverID's session, telling the agent why with an
// error message of the given code (protocol.Err*, e.g. ErrServerDeleted).
func (h *Hub) Disconnect(serverID string, code string) {
	h.mu.Lock()
	s := h.sessions[serverID]
	h.mu.Unlock()
	if s == nil {
		return
	}
	s.closeWith(code, messageFor(code), websocket.ClosePolicyViolation, code, "disconnected by control plane: "+code)
}

// Close closes every session with a "going away" close frame, waits for
// their ends to be recorded, flushes health and stops the hub's goroutine.
// It is idempotent; ServeHTTP answers 503 afterwards.
func (h *Hub) Close() {
	h.closeOnce.Do(func() {
		h.mu.Lock()
		h.closed = true
		all := make([]*session, 0, len(h.all))
		for s := range h.all {
			all = append(all, s)
		}
		h.mu.Unlock()
		h.cancel()

		// Goodbyes in parallel: one stuck peer costs closeWait, not N×.
		work := make(chan *session)
		var wg sync.WaitGroup
		for range min(16, len(all)) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for s := range work {
					s.closeWith("", "", websocket.CloseGoingAway, "control plane shutting down", "hub closed")
				}
			}()
		}
		for _, s := range all {
			work <- s
		}
		close(work)
		wg.Wait()

		h.wg.Wait()
		close(h.stop)
		<-h.loopDone
		h.flush()
	})
}

// loop pings every live session each interval and flushes health.
func (h *Hub) loop() {
	defer close(h.loopDone)
	ping := time.NewTicker(h.interval)
	defer ping.Stop()
	flush := time.NewTicker(h.flushEvery)
	defer flush.Stop()
	var batch []*session
	for {
		select {
		case <-h.stop:
			return
		case <-ping.C:
			batch = h.snapshot(batch[:0])
			wait := min(max(h.interval/4, 10*time.Millisecond), closeWait)
			for _, s := range batch {
				// WriteControl is safe alongside other writers; an error
				// means the connection is dying and its reader will notice.
				_ = s.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(wait))
			}
			clear(batch)
		case <-flush.C:
			h.flush()
		}
	}
}

func (h *Hub) snapshot(dst []*session) []*session {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, s := range h.sessions {
		dst = append(dst, s)
	}
	return dst
}

// flush saves the latest health of every server heard from since the last
// flush; on failure the samples are kept for the next one (unless newer
// ones arrived meanwhile).
func (h *Hub) flush() {
	h.hmu.Lock()
	batch := h.pending
	if len(batch) == 0 {
		h.hmu.Unlock()
		return
	}
	h.pending = make(map[string]HealthSample, len(batch))
	h.hmu.Unlock()

	ctx, cancel := context.WithTimeout(context.WithoutCancel(h.ctx), registryWait)
	defer cancel()
	if err := h.reg.SaveHealth(ctx, batch); err != nil {
		h.log.Warn("save health failed; will retry", zap.Int("servers", len(batch)), zap.Error(err))
		h.hmu.Lock()
		for id, hs := range batch {
			if _, newer := h.pending[id]; !newer {
				h.pending[id] = hs
			}
		}
		h.hmu.Unlock()
	}
}

func (h *Hub) stripe(serverID string) *sync.Mutex {
	f := fnv.New32a()
	_, _ = f.Write([]byte(serverID))
	return &h.lifecycle[f.Sum32()%stripes]
}

// messageFor is the human text sent with an error code.
func messageFor(code string) string {
	switch code {
	case protocol.ErrBadRequest:
		return "malformed or unexpected message"
	case protocol.ErrUnsupported:
		return "this agent's protocol is too old for the control plane; upgrade devpilot-agent"
	case protocol.ErrTokenInvalid:
		return "the bootstrap token is unknown, already used, expired or for another server; reinstall the agent with a fresh install command"
	case protocol.ErrAuthFailed:
		return "unknown server or signature not made with its enrolled key; re-enroll the agent with a fresh install command"
	case protocol.ErrServerDeleted:
		return "this server was deleted from the control plane; stop and uninstall the agent"
	case protocol.ErrSessionReplace:
		return "another session for this server took over"
	case protocol.ErrQuarantined:
		return "two agents used this server's identity key, so the control plane quarantined the server; an admin runs `devpilot servers rekey` and this agent enrolls again with `devpilot-agent enroll --token-file FILE`"
	case protocol.ErrKeyRevoked:
		return "this identity key was revoked by `devpilot servers rekey`; enroll with the new token: `devpilot-agent enroll --token-file FILE`"
	}
	return code
}
