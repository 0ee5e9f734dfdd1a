// Package httpguard is what every request meets at the control plane's
// door, before the API or the console sees it: security headers, a read
// deadline for request bodies, a per-address cap on requests that have not
// (yet) authenticated, and a throttle for failed authentications.
//
// None of it can lock out a valid token: a request that authenticates
// gives its unauthenticated slot back at once (Authenticated), a request
// over the cap is still admitted when its bearer token is valid (Admit),
// and the throttle refuses only failures.
package httpguard

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults.
const (
	DefaultBodyTimeout        = 30 * time.Second
	DefaultMaxUnauthenticated = 32
	// HSTSValue is sent on every response when serving TLS: a year.
	HSTSValue = "max-age=31536000"
)

// Options configure a Guard.
type Options struct {
	// BodyTimeout bounds how long a request may take to send its body,
	// counted from when its handler starts (headers are bounded by the
	// http.Server's ReadHeaderTimeout). Requests without a body (the
	// agents' WebSocket, log and event follows) have no deadline.
	BodyTimeout time.Duration
	// MaxUnauthenticated is how many requests one client address (IPv6:
	// its /64) may have in flight before they authenticate; beyond it
	// requests get 429 with Retry-After.
	MaxUnauthenticated int
	// Admit is asked about a request over the cap; true (its bearer token
	// is valid) lets it through anyway. Nil: none is.
	Admit func(r *http.Request) bool
	// HSTS sends Strict-Transport-Security (serving TLS).
	HSTS bool
	// Registerer gets the refusal counter; nil: none.
	Registerer prometheus.Registerer
}

// Guard is the door's middleware.
type Guard struct {
	o       Options
	refused *prometheus.CounterVec

	mu       sync.Mutex
	inflight map[netip.Prefix]int // unauthenticated requests per client
}

// New builds a Guard.
func New(o Options) *Guard {
	if o.BodyTimeout <= 0 {
		o.BodyTimeout = DefaultBodyTimeout
	}
	if o.MaxUnauthenticated <= 0 {
		o.MaxUnauthenticated = DefaultMaxUnauthenticated
	}
	g := &Guard{o: o, inflight: map[netip.Prefix]int{},
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devpilot_http_refused_total",
			Help: "Requests refused at the door: too many unauthenticated in flight from one address, body too slow.",
		}, []string{"reason"})}
	if o.Registerer != nil {
		o.Registerer.MustRegister(g.refused)
	}
	return g
}

type slotKey struct{}

// slot is a request's place in its client's unauthenticated count.
type slot struct {
	once    sync.Once
	release func()
}

// Authenticated gives the request's unauthenticated slot back: the API
// calls it once a token checked out. Safe to call more than once, and on
// a context that has no slot.
func Authenticated(ctx context.Context) {
	if s, ok := ctx.Value(slotKey{}).(*slot); ok {
		s.once.Do(s.release)
	}
}

// Wrap guards h.
func (g *Guard) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("X-Content-Type-Options", "nosniff")
		if g.o.HSTS {
			hd.Set("Strict-Transport-Security", HSTSValue)
		}
		if r.ContentLength != 0 && r.Body != nil && r.Body != http.NoBody {
			g.bodyDeadline(w, r)
		}
		key := ClientKey(r)
		s := &slot{release: func() {}}
		if g.acquire(key) {
			s.release = func() { g.releaseSlot(key) }
			defer s.once.Do(s.release)
		} else if g.o.Admit == nil || !g.o.Admit(r) {
			g.refused.WithLabelValues("unauthenticated_cap").Inc()
			refuse(w, http.StatusTooManyRequests, "rate_limited",
				"too many requests from your address are waiting to authenticate",
				"Retry after Retry-After seconds; requests with a valid API token are not limited.", time.Second)
			return
		}
		ctx := context.WithValue(r.Context(), slotKey{}, s)
		h.ServeHTTP(&writer{ResponseWriter: w, s: s}, r.WithContext(ctx))
	})
}

func (g *Guard) acquire(key netip.Prefix) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.inflight[key] >= g.o.MaxUnauthenticated {
		return false
	}
	g.inflight[key]++
	return true
}

func (g *Guard) releaseSlot(key netip.Prefix) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.inflight[key]--; g.inflight[key] <= 0 {
		delete(g.inflight, key)
	}
}

// bodyDeadline sets a read deadline for the body. net/http lifts it when
// the body has been read to its end (its background read of the
// connection starts then), so a handler working longer keeps its context.
// Only requests with a body get one: for the others that background read
// runs already, and a deadline would cut them (streams, the WebSocket).
func (g *Guard) bodyDeadline(w http.ResponseWriter, r *http.Request) {
	if err := http.NewResponseController(w).SetReadDeadline(time.Now().Add(g.o.BodyTimeout)); err != nil {
		return // not a connection with deadlines (an in-process recorder)
	}
	r.Body = &deadlineBody{ReadCloser: r.Body, refused: g.refused}
}

type deadlineBody struct {
	io.ReadCloser
	refused *prometheus.CounterVec
	counted bool
}

// ErrBodyTimeout is what reading a body that came too slowly returns.
var ErrBodyTimeout = errors.New("request body not received in time")

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	var ne net.Error
	if err != nil && errors.As(err, &ne) && ne.Timeout() {
		if !b.counted {
			b.counted = true
			b.refused.WithLabelValues("body_timeout").Inc()
		}
		return n, ErrBodyTimeout
	}
	return n, err
}

// writer releases the slot when a handler takes the connection over (the
// agents' WebSocket: the hub's handshake timeout bounds it from there).
type writer struct {
	http.ResponseWriter
	s *slot
}

func (w *writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *writer) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *writer) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.s.once.Do(w.s.release)
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

// refuse answers with the API's error body and closes the connection, so
// whatever the client still sends is not read.
func refuse(w http.ResponseWriter, status int, code, msg, hint string, retry time.Duration) {
	h := w.Header()
	if retry > 0 {
		h.Set("Retry-After", RetryAfter(retry))
	}
	h.Set("Connection", "close")
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(`{"error":{"code":` + strconv.Quote(code) + `,"message":` + strconv.Quote(msg) +
		`,"hint":` + strconv.Quote(hint) + "}}\n"))
}

// RetryAfter is a Retry-After value: whole seconds, at least 1.
func RetryAfter(d time.Duration) string {
	s := int((d + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return strconv.Itoa(s)
}

// ClientKey is who a request comes from for the guard's counts: its
// remote IP, an IPv6 one widened to its /64 (what one host gets).
func ClientKey(r *http.Request) netip.Prefix {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	var ip netip.Addr
	if err == nil {
		ip = ap.Addr()
	} else if ip, err = netip.ParseAddr(r.RemoteAddr); err != nil {
		return netip.Prefix{} // unknown: all such requests share one key
	}
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}
