// Package acceptgate bounds how many of a listener's connections are in
// their handshake at once. A connection takes a token before it is
// accepted and gives it back when its handshake is done (Done) or it
// closes; while every token is out, new connections wait in the kernel's
// accept queue, costing neither a file nor CPU.
//
// It is what keeps a reconnect storm short: without it every reconnecting
// agent starts its TLS handshake at once, thousands of handshakes share
// the CPU, the few that reach the store get a sliver of it each, and most
// are refused busy after paying for TLS (README, Scale). With it the
// handshakes in flight are few enough to finish quickly, one after the
// other, at the rate the CPU allows.
package acceptgate

import (
	"context"
	"net"
	"net/http"
	"sync"
)

// Listener is a net.Listener whose Accept waits for a handshake token.
type Listener struct {
	net.Listener
	tokens    chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

// Wrap gates ln to n connections in their handshake at once (n ≥ 1).
func Wrap(ln net.Listener, n int) *Listener {
	return &Listener{Listener: ln, tokens: make(chan struct{}, max(n, 1)), done: make(chan struct{})}
}

// Accept waits for a token, then for a connection.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case l.tokens <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.tokens
		return nil, err
	}
	return &conn{Conn: c, l: l}, nil
}

// Close closes the listener; an Accept waiting for a token returns.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// InHandshake is how many connections hold a token (a waiting Accept
// included).
func (l *Listener) InHandshake() int { return len(l.tokens) }

// Limit is the number of tokens.
func (l *Listener) Limit() int { return cap(l.tokens) }

type conn struct {
	net.Conn
	l    *Listener
	once sync.Once
}

func (c *conn) done() { c.once.Do(func() { <-c.l.tokens }) }

func (c *conn) Close() error {
	err := c.Conn.Close()
	c.done()
	return err
}

// Done gives back c's token: c is a connection this package accepted, or
// one over it (a *tls.Conn, anything with NetConn). Calling it again, or
// on another connection, does nothing.
func Done(c net.Conn) {
	for c != nil {
		if g, ok := c.(*conn); ok {
			g.done()
			return
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return
		}
		c = u.NetConn()
	}
}

type connKey struct{}

// ConnContext is an http.Server's ConnContext that lets Handler find the
// request's connection.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// Handler marks the connection's handshake done when the first request's
// handler returns (a WebSocket handler returns once its session is set up
// and reads on from another goroutine; a download once it is sent). The
// server must set ConnContext.
func Handler(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
				Done(c)
			}
		}()
		h.ServeHTTP(w, r)
	})
}
