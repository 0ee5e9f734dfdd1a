package acceptgate_test

import (
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/controlplane/acceptgate"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func listen(t *testing.T, n int) *acceptgate.Listener {
	t.Helper()
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := acceptgate.Wrap(raw, n)
	t.Cleanup(func() { _ = l.Close() })
	return l
}

func dial(t *testing.T, l net.Listener) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// With every token out, the next connection is not accepted until a
// handshake is done (Done) or its connection closes.
func TestAcceptWaitsForAToken(t *testing.T) {
	l := listen(t, 2)
	accept := func() <-chan net.Conn {
		ch := make(chan net.Conn, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				close(ch)
				return
			}
			ch <- c
		}()
		return ch
	}
	dial(t, l)
	dial(t, l)
	dial(t, l)
	a, b := <-accept(), <-accept()
	if a == nil || b == nil {
		t.Fatal("the first two connections were not accepted")
	}
	third := accept()
	select {
	case c := <-third:
		t.Fatalf("a third connection was accepted with both tokens out: %v", c)
	case <-time.After(200 * time.Millisecond):
	}
	if n := l.InHandshake(); n != 2 {
		t.Errorf("InHandshake %d, want 2", n)
	}
	acceptgate.Done(a)
	acceptgate.Done(a) // once only
	c := <-third
	if c == nil {
		t.Fatal("the third connection was not accepted after Done")
	}
	fourth := accept()
	dial(t, l)
	select {
	case c := <-fourth:
		t.Fatalf("a fourth connection was accepted with both tokens out: %v", c)
	case <-time.After(200 * time.Millisecond):
	}
	_ = b.Close()
	if c := <-fourth; c == nil {
		t.Fatal("the fourth connection was not accepted after a close")
	}
	_ = a.Close()
	_ = c.Close()
}

// Close ends an Accept that waits for a token.
func TestCloseEndsAWaitingAccept(t *testing.T) {
	l := listen(t, 1)
	dial(t, l)
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	errc := make(chan error, 1)
	go func() { _, err := l.Accept(); errc <- err }()
	_ = l.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
	}
}

// Behind TLS and net/http, Handler gives the token back when the first
// request's handler returns, so a kept-alive connection does not hold it.
func TestHandlerGivesTheTokenBackOverTLS(t *testing.T) {
	srv := httptest.NewUnstartedServer(acceptgate.Handler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok"))
	})))
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gate := acceptgate.Wrap(raw, 1)
	srv.Listener = gate
	srv.Config.ConnContext = acceptgate.ConnContext
	srv.StartTLS()
	defer srv.Close()

	// Two clients, each keeping its connection open after its request:
	// the second is served only if the first gave its token back.
	for i := range 2 {
		tr := srv.Client().Transport.(*http.Transport).Clone()
		tr.TLSClientConfig = srv.Client().Transport.(*http.Transport).TLSClientConfig.Clone()
		c := &http.Client{Transport: tr, Timeout: time.Minute}
		resp, err := c.Get(srv.URL)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		_ = resp.Body.Close()
		if resp.TLS == nil || resp.TLS.Version != tls.VersionTLS13 {
			t.Errorf("client %d: not TLS 1.3", i)
		}
		defer tr.CloseIdleConnections()
	}
}
