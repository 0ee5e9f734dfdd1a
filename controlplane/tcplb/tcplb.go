// Package tcplb is a small round-robin TCP load balancer on loopback, for
// the tests and the scale benchmark of several active control planes
// (README "Several active control planes" documents HAProxy and nginx
// for production). A connection goes to the next backend that accepts it;
// one that refuses is skipped, as a balancer's health check would. When
// either end of a forwarded connection closes, both are closed.
package tcplb

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Balancer forwards the connections it accepts to its backends.
type Balancer struct {
	ln       net.Listener
	backends []string
	next     atomic.Uint64
	wg       sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
	done  bool
}

// Listen starts a balancer on addr (e.g. "127.0.0.1:0") in front of
// backends (host:port each).
func Listen(addr string, backends []string) (*Balancer, error) {
	if len(backends) == 0 {
		return nil, errors.New("tcplb: no backends")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	b := &Balancer{ln: ln, backends: backends, conns: map[net.Conn]struct{}{}}
	b.wg.Add(1)
	go b.serve()
	return b, nil
}

// Addr is where the balancer listens.
func (b *Balancer) Addr() string { return b.ln.Addr().String() }

func (b *Balancer) serve() {
	defer b.wg.Done()
	wait := 5 * time.Millisecond
	for {
		c, err := b.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			// Out of files (EMFILE) or another passing error: wait and
			// accept again, as net/http's server does.
			time.Sleep(wait)
			wait = min(2*wait, time.Second)
			continue
		}
		wait = 5 * time.Millisecond
		b.wg.Add(1)
		go b.forward(c)
	}
}

func (b *Balancer) track(c net.Conn, on bool) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if on {
		if b.done {
			return false
		}
		b.conns[c] = struct{}{}
	} else {
		delete(b.conns, c)
	}
	return true
}

func (b *Balancer) forward(c net.Conn) {
	defer b.wg.Done()
	defer func() { _ = c.Close() }()
	if !b.track(c, true) {
		return
	}
	defer b.track(c, false)
	start := b.next.Add(1)
	var up net.Conn
	for i := range len(b.backends) {
		addr := b.backends[(int(start)+i)%len(b.backends)]
		var err error
		if up, err = net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
			break
		}
	}
	if up == nil {
		return // every backend refused
	}
	defer func() { _ = up.Close() }()
	if !b.track(up, true) {
		return
	}
	defer b.track(up, false)
	// Either side's end ends both (no half-close: TLS and WebSocket do
	// not use it), so a client that gave up frees its backend connection
	// at once, even one the backend has not accepted yet.
	done := make(chan struct{})
	go func() {
		copyConn(up, c)
		_ = up.Close()
		_ = c.Close()
		close(done)
	}()
	copyConn(c, up)
	_ = c.Close()
	_ = up.Close()
	<-done
}

// copyConn copies src to dst through a small buffer of its own. Not
// io.Copy: between two TCP connections it splices through a kernel pipe,
// two more open files per direction for as long as the connection lives,
// which would put a balancer of 5,000 agents at 30,000 files (measured:
// 6 files per agent, the process stuck at its 20,000-file limit).
func copyConn(dst, src net.Conn) {
	buf := make([]byte, 4<<10)
	_, _ = io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, buf)
}

// Close stops accepting and ends every forwarded connection.
func (b *Balancer) Close() error {
	err := b.ln.Close()
	b.mu.Lock()
	b.done = true
	for c := range b.conns {
		_ = c.Close()
	}
	b.mu.Unlock()
	b.wg.Wait()
	return err
}
