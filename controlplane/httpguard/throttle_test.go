package httpguard_test

import (
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/httpguard"
)

func TestThrottleBudgetsFailuresPerAddress(t *testing.T) {
	t.Parallel()
	now := time.Unix(1e9, 0)
	th := httpguard.NewThrottle(httpguard.ThrottleOptions{Burst: 2, Every: 10 * time.Second, Now: func() time.Time { return now }})
	a, b := netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("2001:db8::/64")
	for i := range 2 {
		if over, _ := th.Fail(a); over {
			t.Fatalf("failure %d within the budget throttled", i+1)
		}
	}
	over, after := th.Fail(a)
	if !over || after <= 0 || after > 10*time.Second {
		t.Errorf("failure 3: throttled %v, retry after %v", over, after)
	}
	if over, _ := th.Fail(b); over {
		t.Error("another address is throttled too")
	}
	now = now.Add(10 * time.Second)
	if over, _ := th.Fail(a); over {
		t.Error("no failure allowed after the refill interval")
	}
}

// TestThrottleTableIsBounded: an attacker with many addresses cannot grow
// the table past MaxClients.
func TestThrottleTableIsBounded(t *testing.T) {
	t.Parallel()
	th := httpguard.NewThrottle(httpguard.ThrottleOptions{MaxClients: 100})
	for i := range 1000 {
		th.Fail(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}), 32))
	}
	if n := th.Clients(); n != 100 {
		t.Errorf("table holds %d addresses, want 100", n)
	}
}

func TestClientKey(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ remote, want string }{
		{"192.0.2.7:4321", "192.0.2.7/32"},
		{"[2001:db8:1:2:3:4:5:6]:443", "2001:db8:1:2::/64"},
		{"[::ffff:192.0.2.7]:1", "192.0.2.7/32"},
	} {
		r := &http.Request{RemoteAddr: c.remote}
		if got := httpguard.ClientKey(r).String(); got != c.want {
			t.Errorf("ClientKey(%s) = %s, want %s", c.remote, got, c.want)
		}
	}
}
