package tcplb_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/controlplane/tcplb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echo serves lines back prefixed with its name until closed.
func echo(t *testing.T, name string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer func() { _ = c.Close() }()
				r := bufio.NewReader(c)
				for {
					l, err := r.ReadString('\n')
					if err != nil {
						return
					}
					_, _ = fmt.Fprintf(c, "%s %s", name, l)
				}
			}()
		}
	}()
	return ln
}

func ask(t *testing.T, addr string) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	if _, err := io.WriteString(c, "hi\n"); err != nil {
		t.Fatal(err)
	}
	l, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// Connections alternate between the backends; one that stopped listening
// is skipped; Close ends the connections in flight.
func TestRoundRobinSkipsADeadBackend(t *testing.T) {
	a, b := echo(t, "a"), echo(t, "b")
	defer func() { _ = a.Close() }()
	lb, err := tcplb.Listen("127.0.0.1:0", []string{a.Addr().String(), b.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for range 4 {
		seen[ask(t, lb.Addr())]++
	}
	if seen["a hi\n"] != 2 || seen["b hi\n"] != 2 {
		t.Fatalf("answers %v; want two from each backend", seen)
	}
	_ = b.Close()
	for range 3 {
		if got := ask(t, lb.Addr()); got != "a hi\n" {
			t.Fatalf("with b gone: %q, want a's answer", got)
		}
	}
	open, err := net.Dial("tcp", lb.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = open.Close() }()
	if _, err := io.WriteString(open, "hi\n"); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(open)
	if _, err := r.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	if err := lb.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.ReadString('\n'); err == nil {
		t.Fatal("a connection outlived the balancer's Close")
	}
}

func openFiles(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(fds)
}

// A forwarded connection costs the balancer its two sockets, no more: at
// 5,000 agents a balancer process stays well under the 20,000-file limit.
func TestForwardedConnectionsCostTwoFiles(t *testing.T) {
	a := echo(t, "a")
	defer func() { _ = a.Close() }()
	lb, err := tcplb.Listen("127.0.0.1:0", []string{a.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lb.Close() }()
	before := openFiles(t)
	const n = 50
	var conns []net.Conn
	for range n {
		c, err := net.Dial("tcp", lb.Addr())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if _, err := io.WriteString(c, "hi\n"); err != nil {
			t.Fatal(err)
		}
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			t.Fatal(err)
		}
	}
	// Each: the client's socket, the balancer's two, the echo server's one.
	if got := openFiles(t) - before; got > 4*n {
		t.Errorf("%d connections through the balancer hold %d more open files, want at most %d (4 each)", n, got, 4*n)
	}
	for _, c := range conns {
		_ = c.Close()
	}
}
