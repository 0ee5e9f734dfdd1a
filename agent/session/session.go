// Package session keeps the agent's WebSocket session with the control
// plane's hub. It is two loops: the outer one (Client.Run) dials with
// exponential backoff and full jitter, resetting after a stable session; the
// inner one runs the session's routines (reader, heartbeat, closer) in an
// errgroup, so any one failing tears the session down and the outer loop
// redials.
//
// A session: the hub sends a challenge; the agent answers hello, in enroll
// mode (bootstrap token + public key) until the first enrollment succeeded,
// in auth mode afterwards, signed with its ed25519 key; the hub answers
// welcome with the heartbeat interval; the agent sends a heartbeat with the
// host's health right away and then every interval. With Options.Tasks set,
// task messages go to it and a fourth routine sends its task_log and
// task_result messages through the same writer.
package session

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/devpilot/devpilot/agent/backoff"
	"github.com/devpilot/devpilot/agent/config"
	"github.com/devpilot/devpilot/agent/sdnotify"
	"github.com/devpilot/devpilot/agent/update"
	"github.com/devpilot/devpilot/shared/protocol"
	"github.com/devpilot/devpilot/shared/tlspin"
	"github.com/devpilot/devpilot/shared/version"
)

// TaskHandler runs deployment tasks (agent/tasks.Runner).
type TaskHandler interface {
	// HandleMessage gets task, cancel and task_ack messages on the
	// session's reader goroutine; it must not block on work or the network.
	HandleMessage(env protocol.Envelope)
	// Serve runs for the lifetime of each session (after welcome) and
	// sends task_log and task_result with send, which goes through the
	// session's writer; it returns nil when ctx ends and send's error if a
	// write fails, which ends the session.
	Serve(ctx context.Context, send func(typ string, v any) error) error
}

// HealthSource provides what the agent reports about its host.
type HealthSource interface {
	Collect() (protocol.Health, error)
	Facts() protocol.Facts
}

// Options configure a Client. Zero durations take the defaults noted.
type Options struct {
	Config config.Config
	Key    ed25519.PrivateKey
	Health HealthSource
	Log    *zap.Logger
	// Notifier gets READY=1 after the first welcome and STATUS= lines; may be nil.
	Notifier *sdnotify.Notifier
	// Progress is stamped whenever a loop gets something done; may be nil.
	Progress *sdnotify.Progress
	// OnEnrolled runs once the hub accepted the enrollment, to drop the
	// bootstrap token from the config on disk. An error is logged; the
	// session continues (a later enroll refusal falls back to auth).
	OnEnrolled func() error
	// Tasks runs deployment tasks; nil: task messages are logged and ignored.
	Tasks TaskHandler
	// Reboot reboots the host when the hub asks (protocol 1.1, reboot).
	// Set, the agent advertises protocol.CapReboot; on a reboot message it
	// sends goodbye {reason: reboot}, closes the session normally, calls
	// Reboot and, when that succeeded, Run returns ErrRebooting. A failed
	// Reboot is logged and the agent reconnects (the control plane falls
	// back to the cloud's reboot). nil: not advertised.
	Reboot func(ctx context.Context) error
	// Update installs agent releases (protocol 1.2; agent/update.Updater).
	// Set, the agent advertises protocol.CapUpdate and reports its
	// LastUpdate in every hello; an update message runs Install in the
	// background (not on the session, so a dropped session does not abort
	// a download); when it installed, the agent says goodbye {reason:
	// update} and Run returns ErrUpdating, so the supervisor starts the
	// new version. nil: not advertised.
	Update Updater

	BackoffBase time.Duration // default 1s
	BackoffCap  time.Duration // default 60s
	// RefusedRetry is the wait after a refusal that retrying will not fix
	// (token spent, server deleted, key unknown); default 10m.
	RefusedRetry time.Duration
	// StableAfter is how long a session must last to reset the backoff; default 30s.
	StableAfter time.Duration
	// HandshakeTimeout bounds dialing (TCP+TLS+upgrade) and each step of the
	// challenge/hello/welcome exchange; default 20s.
	HandshakeTimeout time.Duration
	// Keepalive is how often the agent pings the hub, whatever the
	// heartbeat interval; a session that hears nothing from the hub for
	// 2 keepalives + HandshakeTimeout is dropped (70 s by default).
	// Default 25s.
	Keepalive time.Duration
	// Sleep waits between attempts; default a timer that stamps Progress.
	Sleep func(ctx context.Context, d time.Duration) error
	// Rand feeds the jitter; default math/rand.
	Rand func() float64
	// NetDialContext dials the TCP connection; default net.Dialer (the
	// scale benchmark spreads its agents over loopback source addresses).
	NetDialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Updater installs updates (agent/update.Updater).
type Updater interface {
	LastUpdate() *protocol.LastUpdate
	Welcomed(ack string)
	Install(ctx context.Context, u protocol.Update, get update.Get, status func(protocol.UpdateStatus)) error
}

// ErrUpdating is what Run returns once an update is installed: the caller
// exits so the supervisor starts the new version.
var ErrUpdating = errors.New("session: restarting into an installed agent update")

// updateRestart ends a session: an update is installed.
type updateRestart struct{ id string }

func (r *updateRestart) Error() string { return "restarting into update " + r.id }

// ErrRebooting is what Run returns after the host's reboot was started.
var ErrRebooting = errors.New("session: rebooting the host, as the control plane asked")

// rebootRequest ends a session: the hub asked for a reboot.
type rebootRequest struct{ id string }

func (r *rebootRequest) Error() string { return "the control plane asked for a reboot (" + r.id + ")" }

// Client is the agent's connection to the hub.
type Client struct {
	o      Options
	log    *zap.Logger
	url    *url.URL
	host   string // for messages
	dialer *websocket.Dialer

	mu      sync.Mutex
	token   string // bootstrap token until enrolled
	tryAuth bool   // the last enroll was refused: the welcome may have been lost, try auth

	http     *http.Client       // downloads from the control plane, same pinned TLS
	runCtx   context.Context    // Run's, for installs that outlive a session
	updating bool               // an Install runs (under mu)
	write    func([]byte) error // the current session's writer, nil between sessions (under mu)
	restart  chan string        // an installed update's id, cap 1
	// restarting is the update id awaitRestart took from restart: the
	// session ends to restart into it, whichever of its loops' errors
	// errgroup reports first (the hub closing on the goodbye can win).
	restarting string
}

// New checks the options and prepares the dialer.
func New(o Options) (*Client, error) {
	if err := o.Config.Validate(); err != nil {
		return nil, fmt.Errorf("session: %w", err)
	}
	if len(o.Key) != ed25519.PrivateKeySize {
		return nil, errors.New("session: no ed25519 identity key")
	}
	if o.Health == nil {
		return nil, errors.New("session: no health source")
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.BackoffBase, time.Second)
	def(&o.BackoffCap, 60*time.Second)
	def(&o.RefusedRetry, 10*time.Minute)
	def(&o.StableAfter, 30*time.Second)
	def(&o.HandshakeTimeout, 20*time.Second)
	def(&o.Keepalive, 25*time.Second)
	u, err := config.ConnectURL(o.Config.URL)
	if err != nil {
		return nil, fmt.Errorf("session: %w", err)
	}
	tc, err := pinnedTLS(o.Config.CAPin, u.Hostname(), o.Config.CACertPEM)
	if err != nil {
		return nil, fmt.Errorf("session: %w", err)
	}
	c := &Client{
		o:     o,
		log:   o.Log,
		url:   u,
		host:  u.Host,
		token: o.Config.BootstrapToken,
		dialer: &websocket.Dialer{
			Proxy:            http.ProxyFromEnvironment,
			TLSClientConfig:  tc,
			HandshakeTimeout: o.HandshakeTimeout,
			NetDialContext:   o.NetDialContext,
		},
	}
	if o.Sleep == nil {
		c.o.Sleep = c.sleep
	}
	c.restart = make(chan string, 1)
	c.http = &http.Client{Timeout: 30 * time.Minute, Transport: &http.Transport{
		Proxy: http.ProxyFromEnvironment, TLSClientConfig: tc, TLSHandshakeTimeout: o.HandshakeTimeout,
		ResponseHeaderTimeout: 2 * o.HandshakeTimeout,
	}}
	return c, nil
}

// pinnedTLS is tlspin.PinnedClientConfig, plus the CA certificate from the
// config appended to the peer's chain when the server does not send it
// (a control plane with its own certificate files may not): the pin still
// decides, since the appended CA must match it.
func pinnedTLS(pin, host, caPEM string) (*tls.Config, error) {
	tc, err := tlspin.PinnedClientConfig(pin, host)
	if err != nil {
		return nil, err
	}
	if caPEM == "" {
		return tc, nil
	}
	ca, err := config.ParseCA(caPEM)
	if err != nil {
		return nil, err
	}
	verify := tc.VerifyConnection
	tc.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) > 0 && !hasCert(cs.PeerCertificates, ca) {
			cs.PeerCertificates = append(append([]*x509.Certificate(nil), cs.PeerCertificates...), ca)
		}
		return verify(cs)
	}
	return tc, nil
}

func hasCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range certs {
		if x.Equal(c) {
			return true
		}
	}
	return false
}

// Refusal is an error message from the hub that ended a session.
type Refusal struct {
	Code    string
	Message string
	Mode    string // hello mode that was refused, if during hello
	// RetryAfter is the hub's suggested wait (protocol.ErrBusy).
	RetryAfter time.Duration
}

func (r *Refusal) Error() string {
	return fmt.Sprintf("hub refused: %s: %s", r.Code, r.Message)
}

// Permanent reports whether retrying soon cannot help.
func (r *Refusal) Permanent() bool {
	switch r.Code {
	case protocol.ErrTokenInvalid, protocol.ErrAuthFailed, protocol.ErrServerDeleted, protocol.ErrUnsupported,
		protocol.ErrQuarantined, protocol.ErrKeyRevoked:
		return true
	}
	return false
}

// Advice is what a person should do about the refusal.
func (r *Refusal) Advice() string {
	switch r.Code {
	case protocol.ErrTokenInvalid:
		return "enrollment refused: bootstrap token used or expired — reinstall the agent with a new bootstrap file from the control plane"
	case protocol.ErrAuthFailed:
		return "authentication refused: the control plane does not know this server's key (server re-created, or identity.key replaced) — reinstall the agent with a new bootstrap file"
	case protocol.ErrServerDeleted:
		return "this server was deleted in the control plane — remove the agent (devpilot-agent uninstall)"
	case protocol.ErrUnsupported:
		return fmt.Sprintf("the control plane does not accept agent protocol %d — upgrade the agent", protocol.Version)
	case protocol.ErrSessionReplace:
		return "another agent with this server id took over the session (cloned server?)"
	case protocol.ErrQuarantined:
		return "quarantined: another agent uses this server's identity key — an admin runs `devpilot servers rekey`, then enroll this agent with `devpilot-agent enroll --token-file FILE`"
	case protocol.ErrKeyRevoked:
		return "this identity key was revoked by `devpilot servers rekey` — enroll with the new token: `devpilot-agent enroll --token-file FILE`"
	case protocol.ErrBusy:
		return "the control plane is at capacity (many agents reconnecting at once)"
	}
	return r.Code + ": " + r.Message
}

// Run keeps a session until ctx ends, then closes the session with a
// normal close frame and returns nil. It returns an error only if it cannot
// run at all.
func (c *Client) Run(ctx context.Context) error {
	b := &backoff.Backoff{Base: c.o.BackoffBase, Cap: c.o.BackoffCap, Rand: c.o.Rand}
	failures := 0
	c.mu.Lock()
	c.runCtx = ctx
	c.mu.Unlock()
	defer c.http.CloseIdleConnections()
	for {
		select {
		case id := <-c.restart: // installed while there was no session
			c.log.Info("restarting into the installed update", zap.String("update", id))
			c.o.Notifier.Stopping()
			return ErrUpdating
		default:
		}
		c.o.Progress.Beat()
		c.status(fmt.Sprintf("connecting to %s", c.host))
		welcomedAt, err := c.session(ctx)
		if ctx.Err() != nil {
			c.o.Notifier.Stopping()
			c.status("stopped")
			c.log.Info("session closed, stopping")
			return nil
		}
		var ur *updateRestart
		c.mu.Lock()
		if id := c.restarting; id != "" && !errors.As(err, &ur) {
			ur = &updateRestart{id: id}
		}
		c.restarting = ""
		c.mu.Unlock()
		if ur != nil || errors.As(err, &ur) {
			c.status("restarting into the installed update (" + ur.id + ")")
			c.log.Info("restarting into the installed update", zap.String("update", ur.id))
			c.o.Notifier.Stopping()
			return ErrUpdating
		}
		var rr *rebootRequest
		if errors.As(err, &rr) {
			c.status("rebooting the host (" + rr.id + ")")
			rerr := c.o.Reboot(ctx)
			if rerr == nil {
				c.log.Info("reboot started", zap.String("id", rr.id))
				c.o.Notifier.Stopping()
				return ErrRebooting
			}
			c.log.Error("reboot failed; reconnecting", zap.String("id", rr.id), zap.Error(rerr))
		}
		connected := !welcomedAt.IsZero()
		if connected && time.Since(welcomedAt) >= c.o.StableAfter {
			b.Reset()
			failures = 0
		}
		failures++

		var delay time.Duration
		var msg string
		var ref *Refusal
		if errors.As(err, &ref) && ref.Permanent() {
			delay = c.o.RefusedRetry
			msg = fmt.Sprintf("%s; trying again in %s", ref.Advice(), delay)
			c.log.Error("hub refused the agent", zap.String("code", ref.Code), zap.String("message", ref.Message),
				zap.String("advice", ref.Advice()), zap.Duration("retry_in", delay))
		} else {
			delay = b.Next()
			if ref != nil && ref.Code == protocol.ErrBusy && ref.RetryAfter > 0 {
				delay = max(delay, busyDelay(ref.RetryAfter, c.o.Rand))
			}
			verb := "cannot reach"
			if connected {
				verb = "disconnected from"
			}
			msg = fmt.Sprintf("%s %s: %v; retrying in %s", verb, c.host, err, roundDelay(delay))
			if ref != nil && ref.Code == protocol.ErrBusy {
				msg = fmt.Sprintf("%s %s: %s; retrying in %s", verb, c.host, ref.Advice(), roundDelay(delay))
			}
			lvl := zap.DebugLevel
			if failures == 1 || failures%10 == 0 || connected {
				lvl = zap.WarnLevel
			}
			c.log.Check(lvl, verb+" hub").Write(zap.String("url", c.url.String()), zap.Error(err),
				zap.Int("attempt", failures), zap.Duration("retry_in", delay))
		}
		c.status(msg)
		if err := c.o.Sleep(ctx, delay); err != nil {
			c.o.Notifier.Stopping()
			c.status("stopped")
			return nil
		}
	}
}

// maxBusyWait caps the hub's suggested wait, whatever it says.
const maxBusyWait = 5 * time.Minute

// busyDelay is the wait after a busy refusal: the hub's hint plus up to
// half of it again, so the agents it turned away don't return together.
func busyDelay(hint time.Duration, rnd func() float64) time.Duration {
	if rnd == nil {
		rnd = rand.Float64
	}
	hint = min(hint, maxBusyWait)
	return hint + time.Duration(rnd()*float64(hint)/2)
}

func roundDelay(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(time.Second)
	}
	return d.Round(time.Millisecond)
}

func (c *Client) status(s string) { c.o.Notifier.Status(s) }

// sleep waits d, stamping progress so the watchdog knows the loop is alive.
func (c *Client) sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		case <-tick.C:
			c.o.Progress.Beat()
		}
	}
}

var errShutdown = errors.New("agent shutting down")

// session runs one connection. welcomedAt is zero if the hub never welcomed it.
func (c *Client) session(ctx context.Context) (welcomedAt time.Time, err error) {
	conn, resp, err := c.dialer.DialContext(ctx, c.url.String(), nil)
	if err != nil {
		if resp != nil {
			return welcomedAt, fmt.Errorf("dial: %s: %w", resp.Status, err)
		}
		return welcomedAt, fmt.Errorf("dial: %w", err)
	}
	defer func() { _ = conn.Close() }()
	conn.SetReadLimit(protocol.MaxMessageBytes)
	c.o.Progress.Beat()

	interval, err := c.handshake(conn)
	if err != nil {
		return welcomedAt, err
	}
	welcomedAt = time.Now()
	c.o.Progress.Beat()
	c.o.Notifier.Ready()
	c.status(fmt.Sprintf("connected to %s as server %s", c.host, c.o.Config.ServerID))
	c.log.Info("connected", zap.String("url", c.url.String()), zap.Duration("heartbeat_interval", interval))

	return welcomedAt, c.loops(ctx, conn, interval)
}

// handshake reads the challenge, sends hello and reads welcome.
func (c *Client) handshake(conn *websocket.Conn) (time.Duration, error) {
	deadline := func() time.Time { return time.Now().Add(c.o.HandshakeTimeout) }
	_ = conn.SetReadDeadline(deadline())
	env, err := readEnvelope(conn)
	if err != nil {
		return 0, fmt.Errorf("read challenge: %w", err)
	}
	var ch protocol.Challenge
	switch env.Type {
	case protocol.TypeChallenge:
		if err := protocol.DecodeData(env, &ch); err != nil {
			return 0, err
		}
	case protocol.TypeError:
		return 0, decodeRefusal(env, "")
	default:
		return 0, fmt.Errorf("hub sent %q, want challenge", env.Type)
	}
	if len(ch.Nonce) != protocol.NonceBytes {
		return 0, fmt.Errorf("challenge nonce has %d bytes, want %d", len(ch.Nonce), protocol.NonceBytes)
	}

	c.mu.Lock()
	token, tryAuth := c.token, c.tryAuth
	c.mu.Unlock()
	hello := protocol.Hello{
		ServerID:     c.o.Config.ServerID,
		Mode:         protocol.ModeAuth,
		PublicKey:    c.o.Key.Public().(ed25519.PublicKey),
		Signature:    ed25519.Sign(c.o.Key, protocol.SignedMessage(ch.Nonce, c.o.Config.ServerID)),
		AgentVersion: version.String(),
		Facts:        c.o.Health.Facts(),
	}
	if c.o.Reboot != nil {
		hello.Capabilities = append(hello.Capabilities, protocol.CapReboot)
	}
	if c.o.Update != nil {
		hello.Capabilities = append(hello.Capabilities, protocol.CapUpdate)
		hello.LastUpdate = c.o.Update.LastUpdate()
	}
	if token != "" && !tryAuth {
		hello.Mode = protocol.ModeEnroll
		hello.BootstrapToken = token
	}
	b, err := protocol.Encode(protocol.TypeHello, hello)
	if err != nil {
		return 0, err
	}
	_ = conn.SetWriteDeadline(deadline())
	if err := conn.WriteMessage(websocket.TextMessage, b); err != nil {
		return 0, fmt.Errorf("send hello: %w", err)
	}

	_ = conn.SetReadDeadline(deadline())
	env, err = readEnvelope(conn)
	if err != nil {
		return 0, fmt.Errorf("read welcome: %w", err)
	}
	switch env.Type {
	case protocol.TypeWelcome:
	case protocol.TypeError:
		ref := decodeRefusal(env, hello.Mode)
		c.mu.Lock()
		switch {
		case token != "" && hello.Mode == protocol.ModeEnroll && ref.Code == protocol.ErrTokenInvalid:
			c.tryAuth = true // perhaps enrolled already and the welcome got lost
		case token != "" && hello.Mode == protocol.ModeAuth:
			c.tryAuth = false
		}
		c.mu.Unlock()
		return 0, ref
	default:
		return 0, fmt.Errorf("hub sent %q, want welcome", env.Type)
	}
	var w protocol.Welcome
	if err := protocol.DecodeData(env, &w); err != nil {
		return 0, err
	}
	if c.o.Update != nil {
		c.o.Update.Welcomed(w.LastUpdateAck)
	}
	interval := time.Duration(w.HeartbeatIntervalS) * time.Second
	if interval <= 0 {
		interval = protocol.DefaultHeartbeatS * time.Second
	}
	if token != "" {
		c.mu.Lock()
		c.token, c.tryAuth = "", false
		c.mu.Unlock()
		c.log.Info("enrolled", zap.String("server_id", c.o.Config.ServerID), zap.String("mode", hello.Mode))
		if c.o.OnEnrolled != nil {
			if err := c.o.OnEnrolled(); err != nil {
				c.log.Error("could not remove the bootstrap token from the config", zap.Error(err))
			}
		}
	}
	return interval, nil
}

// Enrolled reports whether this client has no bootstrap token left.
func (c *Client) Enrolled() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token == ""
}

func decodeRefusal(env protocol.Envelope, mode string) *Refusal {
	var e protocol.Error
	if err := protocol.DecodeData(env, &e); err != nil {
		return &Refusal{Code: "unknown", Message: err.Error(), Mode: mode}
	}
	r := &Refusal{Code: e.Code, Message: e.Message, Mode: mode}
	if e.RetryAfterMS > 0 {
		r.RetryAfter = time.Duration(e.RetryAfterMS) * time.Millisecond
	}
	return r
}

func readEnvelope(conn *websocket.Conn) (protocol.Envelope, error) {
	typ, data, err := conn.ReadMessage()
	if err != nil {
		return protocol.Envelope{}, err
	}
	if typ != websocket.TextMessage {
		return protocol.Envelope{}, fmt.Errorf("hub sent a binary message")
	}
	return protocol.Decode(data)
}

// loops runs the session's routines until one fails or ctx ends.
func (c *Client) loops(ctx context.Context, conn *websocket.Conn, interval time.Duration) error {
	// The heartbeats are the hub's sign of life from the agent; the
	// keepalive ping is the agent's way to hear from an idle hub (the
	// pong), so it need not follow the heartbeat interval: at a 3 s
	// interval a ping per heartbeat would double the hub's messages.
	// 25 s keeps a hub → agent frame flowing under the 60 s idle
	// timeout of common proxies (nginx's proxy_read_timeout, AWS ALB).
	keepalive := c.o.Keepalive
	readTimeout := 2*keepalive + c.o.HandshakeTimeout
	writeTimeout := c.o.HandshakeTimeout
	extend := func() { _ = conn.SetReadDeadline(time.Now().Add(readTimeout)) }
	conn.SetPongHandler(func(string) error {
		c.o.Progress.Beat()
		extend()
		return nil
	})
	conn.SetPingHandler(func(data string) error {
		extend()
		err := conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(writeTimeout))
		if errors.Is(err, websocket.ErrCloseSent) {
			return nil
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return nil
		}
		return err
	})

	var wmu sync.Mutex
	write := func(b []byte) error {
		wmu.Lock()
		defer wmu.Unlock()
		_ = conn.SetWriteDeadline(time.Now().Add(writeTimeout))
		return conn.WriteMessage(websocket.TextMessage, b)
	}

	c.mu.Lock()
	c.write = write
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.write = nil
		c.mu.Unlock()
	}()

	g, gctx := errgroup.WithContext(ctx)
	if c.o.Update != nil {
		g.Go(func() error { return c.awaitRestart(gctx, conn, write, writeTimeout) })
	}
	g.Go(func() error { // reader
		for {
			extend()
			typ, data, err := conn.ReadMessage()
			if err != nil {
				if ctx.Err() != nil {
					return errShutdown
				}
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					return fmt.Errorf("hub closed the session (%d %s)", ce.Code, ce.Text)
				}
				return fmt.Errorf("read: %w", err)
			}
			c.o.Progress.Beat()
			if typ != websocket.TextMessage {
				c.log.Warn("ignoring binary message from hub")
				continue
			}
			if err := c.handle(data); err != nil {
				var rr *rebootRequest
				if errors.As(err, &rr) {
					c.goodbye(conn, write, writeTimeout, rr.id)
				}
				return err
			}
		}
	})
	g.Go(func() error { // heartbeat
		hb := time.NewTicker(interval)
		defer hb.Stop()
		ka := time.NewTicker(keepalive)
		defer ka.Stop()
		send := true // first heartbeat right after welcome
		for {
			if send {
				if err := c.heartbeat(write); err != nil {
					return err
				}
				c.o.Progress.Beat()
			}
			select {
			case <-gctx.Done():
				return nil
			case <-ka.C:
				send = false
				if err := conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeTimeout)); err != nil {
					return fmt.Errorf("ping: %w", err)
				}
			case <-hb.C:
				send = true
			}
		}
	})
	if c.o.Tasks != nil {
		g.Go(func() error { // task results and logs, resent from disk on each session
			send := func(typ string, v any) error {
				b, err := protocol.Encode(typ, v)
				if err != nil {
					c.log.Error("dropping a task message that cannot be encoded", zap.String("type", typ), zap.Error(err))
					return nil
				}
				if err := write(b); err != nil {
					return fmt.Errorf("send %s: %w", typ, err)
				}
				c.o.Progress.Beat()
				return nil
			}
			return c.o.Tasks.Serve(gctx, send)
		})
	}
	g.Go(func() error { // closer
		<-gctx.Done()
		if ctx.Err() != nil {
			// First signal: say goodbye with a normal close and give the
			// hub a moment to echo it; the reader returns on the echo.
			msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "agent shutting down")
			if err := conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(2*time.Second)); err != nil {
				_ = conn.Close()
				return nil
			}
			_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			return nil
		}
		_ = conn.Close() // unblock the reader
		return nil
	})
	err := g.Wait()
	if ctx.Err() != nil {
		return errShutdown
	}
	return err
}

// goodbye tells the hub the agent is going away to reboot, then closes the
// session with a normal close frame.
func (c *Client) goodbye(conn *websocket.Conn, write func([]byte) error, wait time.Duration, id string) {
	if b, err := protocol.Encode(protocol.TypeGoodbye, protocol.Goodbye{Reason: protocol.GoodbyeReboot, RebootID: id}); err == nil {
		if err := write(b); err != nil {
			c.log.Warn("could not say goodbye", zap.Error(err))
		}
	}
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "agent rebooting")
	_ = conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(wait))
}

// awaitRestart ends the session once an update is installed, saying
// goodbye first.
func (c *Client) awaitRestart(ctx context.Context, conn *websocket.Conn, write func([]byte) error, wait time.Duration) error {
	select {
	case <-ctx.Done():
		return nil
	case id := <-c.restart:
		c.mu.Lock()
		c.restarting = id
		c.mu.Unlock()
		c.goodbyeUpdate(conn, write, wait, id)
		return &updateRestart{id: id}
	}
}

// goodbyeUpdate tells the hub the agent restarts into an update, then
// closes the session normally.
func (c *Client) goodbyeUpdate(conn *websocket.Conn, write func([]byte) error, wait time.Duration, id string) {
	if b, err := protocol.Encode(protocol.TypeGoodbye, protocol.Goodbye{Reason: protocol.GoodbyeUpdate, UpdateID: id}); err == nil {
		if err := write(b); err != nil {
			c.log.Warn("could not say goodbye", zap.Error(err))
		}
	}
	msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "agent restarting into an update")
	_ = conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(wait))
}

// startUpdate runs an update message's install in the background, one at
// a time; its status goes to whichever session is up.
func (c *Client) startUpdate(u protocol.Update) {
	c.mu.Lock()
	if c.updating {
		c.mu.Unlock()
		c.log.Info("an update is being installed already; ignoring another", zap.String("update", u.ID))
		return
	}
	c.updating = true
	ctx := c.runCtx
	c.mu.Unlock()
	if ctx == nil {
		ctx = context.Background()
	}
	go func() {
		defer func() {
			c.mu.Lock()
			c.updating = false
			c.mu.Unlock()
		}()
		err := c.o.Update.Install(ctx, u, c.get, c.sendStatus)
		if err == nil {
			select {
			case c.restart <- u.ID:
			default:
			}
		}
	}()
}

// get fetches a path from the control plane over the pinned channel.
func (c *Client) get(ctx context.Context, path string) (*http.Response, error) {
	base := *c.url
	base.Scheme = "https"
	if c.url.Scheme == "ws" {
		base.Scheme = "http"
	}
	base.Path, base.RawQuery = path, ""
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base.String(), nil)
	if err != nil {
		return nil, err
	}
	return c.http.Do(req)
}

func (c *Client) sendStatus(st protocol.UpdateStatus) {
	b, err := protocol.Encode(protocol.TypeUpdateStatus, st)
	if err != nil {
		return
	}
	c.mu.Lock()
	w := c.write
	c.mu.Unlock()
	if w == nil {
		return
	}
	if err := w(b); err != nil {
		c.log.Debug("could not send update status", zap.Error(err))
	}
}

func (c *Client) heartbeat(write func([]byte) error) error {
	h, err := c.o.Health.Collect()
	if err != nil {
		c.log.Debug("health partly unavailable", zap.Error(err))
	}
	b, err := protocol.Encode(protocol.TypeHeartbeat, protocol.Heartbeat{Health: h})
	if err != nil {
		return err
	}
	if err := write(b); err != nil {
		return fmt.Errorf("send heartbeat: %w", err)
	}
	return nil
}

// handle acts on one message from the hub after welcome.
func (c *Client) handle(data []byte) error {
	env, err := protocol.Decode(data)
	if err != nil {
		c.log.Warn("ignoring undecodable message from hub", zap.Error(err))
		return nil
	}
	switch env.Type {
	case protocol.TypeError:
		ref := decodeRefusal(env, "")
		c.log.Warn("hub error", zap.String("code", ref.Code), zap.String("message", ref.Message))
		if ref.Permanent() || ref.Code == protocol.ErrSessionReplace {
			return ref
		}
	case protocol.TypeReboot:
		var r protocol.Reboot
		if err := protocol.DecodeData(env, &r); err != nil {
			c.log.Warn("ignoring a malformed reboot request", zap.Error(err))
			return nil
		}
		if c.o.Reboot == nil {
			c.log.Warn("ignoring reboot request: this agent does not reboot its host", zap.String("id", r.ID))
			return nil
		}
		c.log.Info("the control plane asked for a reboot", zap.String("id", r.ID))
		return &rebootRequest{id: r.ID}
	case protocol.TypeUpdate:
		var u protocol.Update
		if err := protocol.DecodeData(env, &u); err != nil {
			c.log.Warn("ignoring a malformed update", zap.Error(err))
			return nil
		}
		if c.o.Update == nil {
			c.log.Warn("ignoring update: this agent does not update itself", zap.String("id", u.ID))
			return nil
		}
		c.log.Info("the control plane sent an update", zap.String("id", u.ID), zap.String("version", u.Version))
		c.startUpdate(u)
	case protocol.TypeTask, protocol.TypeCancel, protocol.TypeTaskAck:
		if c.o.Tasks == nil {
			c.log.Warn("ignoring task message: this agent runs no tasks", zap.String("type", env.Type))
			return nil
		}
		c.o.Tasks.HandleMessage(env)
	default:
		c.log.Info("ignoring unknown message type", zap.String("type", env.Type), zap.Int("v", env.V))
	}
	return nil
}
