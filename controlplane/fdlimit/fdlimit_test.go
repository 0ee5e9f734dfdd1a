package fdlimit

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestAgents(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		soft    uint64
		reserve int
		want    int
	}{
		{20_000, DefaultReserve, 20_000 - DefaultReserve - Slack},
		{1024, DefaultReserve, 1024 - DefaultReserve - Slack},
		{100, DefaultReserve, 1}, // never 0 or negative
		{1 << 62, 0, 1<<30 - Slack},
	} {
		if got := Agents(tc.soft, tc.reserve); got != tc.want {
			t.Errorf("Agents(%d, %d) = %d, want %d", tc.soft, tc.reserve, got, tc.want)
		}
	}
}

func TestRaiseReportsTheLimit(t *testing.T) {
	l, err := Raise()
	if err != nil {
		t.Fatalf("Raise: %v", err)
	}
	if l.Soft == 0 || l.Soft != l.Hard {
		t.Errorf("Raise() = %+v, want the soft limit at the hard limit", l)
	}
}

// Past n open connections the listener closes new ones at once; a
// closed one frees its place.
func TestListenerBoundsOpenConnections(t *testing.T) {
	t.Parallel()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := make(chan struct{}, 8)
	ln := Listener(raw, 2, func() { refused <- struct{}{} })
	t.Cleanup(func() { _ = ln.Close() })
	accepted := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", raw.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	dial()
	dial()
	first, second := <-accepted, <-accepted
	t.Cleanup(func() { _ = second.Close() })
	if n, _ := Open(ln); n != 2 {
		t.Errorf("Open = %d, want 2", n)
	}
	third := dial()
	select {
	case <-refused:
	case <-time.After(30 * time.Second):
		t.Fatal("the third connection was not refused")
	}
	_ = third.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := third.Read(make([]byte, 1)); !errors.Is(err, io.EOF) && !isReset(err) {
		t.Errorf("third connection read: %v, want it closed by the listener", err)
	}
	_ = first.Close()
	dial()
	select {
	case c := <-accepted:
		_ = c.Close()
	case <-time.After(30 * time.Second):
		t.Fatal("a freed place was not taken again")
	}
}

func isReset(err error) bool {
	var ne *net.OpError
	return errors.As(err, &ne)
}
