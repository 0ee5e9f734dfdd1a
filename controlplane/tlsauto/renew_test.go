package tlsauto

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devpilot/devpilot/shared/tlspin"
)

// TestRenewWhileServing moves an injected clock past the renewal point and
// checks that the periodic check replaces the served certificate without a
// restart, while a client pinning the CA (as the agent does) keeps
// connecting before, during and after.
func TestRenewWhileServing(t *testing.T) {
	t.Parallel()
	// Issued 340 days ago: valid now, and 25 days from expiry, past the
	// renewal point. The clock starts at the issue time, so the pinned
	// client (which checks validity at the real time) works throughout.
	start := time.Now().Add(-340 * 24 * time.Hour)
	b := ensure(t, t.TempDir(), nil, start)
	addr := serve(t, b.ServerConfig())
	pinned, err := tlspin.PinnedClientConfig(b.CAPin, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	before, err := dial(addr, pinned, "")
	if err != nil {
		t.Fatal(err)
	}

	var now atomic.Int64
	now.Store(start.Add(24 * time.Hour).UnixNano())
	tick := make(chan time.Time)
	type result struct {
		reissued bool
		err      error
	}
	results := make(chan result)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		b.Renew(ctx, RenewOptions{Tick: tick, Now: func() time.Time { return time.Unix(0, now.Load()) },
			After: func(re bool, err error) { results <- result{re, err} }})
	})
	t.Cleanup(func() { cancel(); wg.Wait() })

	check := func(what string) result {
		t.Helper()
		select {
		case tick <- time.Now():
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: the renewal loop did not take the tick", what)
		}
		select {
		case r := <-results:
			if r.err != nil {
				t.Fatalf("%s: %v", what, r.err)
			}
			return r
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: no check result", what)
		}
		return result{}
	}

	// A day in: nothing due, the same certificate keeps being served.
	if r := check("a day later"); r.reissued {
		t.Fatal("a certificate 364 days from expiry was reissued")
	}
	if c, err := dial(addr, pinned, ""); err != nil || c.SerialNumber.Cmp(before.SerialNumber) != 0 {
		t.Fatalf("after a check that was not due: %v (serial changed: %v)", err, err == nil)
	}

	// Now, past the renewal point (25 days before expiry): reissued and served.
	now.Store(time.Now().UnixNano())
	if r := check("near expiry"); !r.reissued {
		t.Fatal("a certificate 25 days from expiry was not reissued")
	}
	after, err := dial(addr, pinned, "")
	if err != nil {
		t.Fatalf("pinned client after renewal: %v", err)
	}
	if after.SerialNumber.Cmp(before.SerialNumber) == 0 || !after.NotAfter.After(before.NotAfter) {
		t.Fatalf("still serving the old certificate (expires %s)", after.NotAfter)
	}
	if !b.NotAfter().Equal(after.NotAfter) {
		t.Fatalf("NotAfter %s, served %s", b.NotAfter(), after.NotAfter)
	}
}
