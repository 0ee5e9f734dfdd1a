package webhooks

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/devpilot/devpilot/controlplane/problem"
)

func TestCheckURL(t *testing.T) {
	strict, dev, private := Policy{}, Policy{AllowLoopback: true}, Policy{AllowPrivate: true}
	for _, tc := range []struct {
		url    string
		p      Policy
		refuse string // "" accepted; else a word the message holds
	}{
		{"https://hooks.example.com/devpilot", strict, ""},
		{"https://93.184.216.34:8443/x?y=1", strict, ""},
		{"http://hooks.example.com/devpilot", strict, "https"},
		{"ftp://hooks.example.com/", strict, "https"},
		{"https://169.254.169.254/latest/meta-data/", strict, "link-local"},
		{"https://169.254.169.254/latest/meta-data/", dev, "--webhooks-allow-private"},
		{"https://169.254.169.254/", private, ""},
		{"https://10.0.0.1/hook", strict, "private"},
		{"https://10.0.0.1/hook", strict, "--webhooks-allow-private"},
		{"https://172.16.5.4/", strict, "private"},
		{"https://192.168.1.10/", strict, "private"},
		{"https://100.64.0.1/", strict, "private"},
		{"https://10.0.0.1/hook", private, ""},
		{"https://[::1]/hook", strict, "loopback"},
		{"https://[::1]/hook", dev, ""},
		{"http://[::1]:8080/hook", dev, ""},
		{"https://127.0.0.1/", strict, "--webhooks-allow-loopback"},
		{"http://127.0.0.1:9000/", dev, ""},
		{"http://localhost:9000/", dev, ""},
		{"http://localhost:9000/", strict, "https"},
		{"https://localhost/", strict, "loopback"},
		{"https://0.0.0.0/", strict, "unspecified"},
		{"https://0.0.0.0/", private, "unspecified"},
		{"https://[::]/", strict, "unspecified"},
		{"https://[::ffff:169.254.169.254]/", strict, "link-local"},
		{"https://[::ffff:10.0.0.1]/", strict, "private"},
		{"https://[::ffff:127.0.0.1]/", strict, "loopback"},
		{"https://[fd00::1]/", strict, "private"},
		{"https://[fe80::1]/", strict, "link-local"},
		{"https://224.0.0.1/", strict, "multicast"},
		{"https://[ff02::1]/", strict, "multicast"},
		{"https://255.255.255.255/", strict, "multicast"},
		{"https://user:pass@hooks.example.com/", strict, "credentials"},
		{"hooks.example.com/x", strict, "absolute"},
		{"https:///x", strict, "absolute"},
		{"https://hooks.example.com/#frag", strict, "fragment"},
	} {
		_, err := tc.p.CheckURL(tc.url)
		switch {
		case tc.refuse == "" && err != nil:
			t.Errorf("%s %+v refused: %v", tc.url, tc.p, err)
		case tc.refuse != "" && err == nil:
			t.Errorf("%s %+v accepted", tc.url, tc.p)
		case tc.refuse != "":
			var pe *problem.Error
			if !errors.As(err, &pe) || pe.Code != "validation_failed" || pe.Status != 422 {
				t.Errorf("%s: %T %v, want a validation error", tc.url, err, err)
			} else if !strings.Contains(pe.Message+" "+pe.Hint, tc.refuse) {
				t.Errorf("%s: %q / %q does not say %q", tc.url, pe.Message, pe.Hint, tc.refuse)
			}
		}
	}
}

// The dial-time check sees resolved addresses: a host name rebound to an
// internal address is refused there.
func TestDialControlRefusesInternalAddresses(t *testing.T) {
	for _, tc := range []struct {
		addr string
		p    Policy
		ok   bool
	}{
		{"93.184.216.34:443", Policy{}, true},
		{"[2606:2800:220:1:248:1893:25c8:1946]:443", Policy{}, true},
		{"169.254.169.254:80", Policy{}, false},
		{"10.0.0.1:443", Policy{}, false},
		{"[::1]:443", Policy{}, false},
		{"[::1]:443", Policy{AllowLoopback: true}, true},
		{"127.0.0.1:8080", Policy{AllowLoopback: true}, true},
		{"10.0.0.1:443", Policy{AllowLoopback: true}, false},
		{"0.0.0.0:443", Policy{AllowPrivate: true}, false},
		{"[::ffff:10.0.0.1]:443", Policy{}, false},
		{"[::ffff:169.254.169.254]:443", Policy{}, false},
	} {
		err := tc.p.control("tcp", tc.addr, nil)
		if (err == nil) != tc.ok {
			t.Errorf("%s %+v: %v, want ok=%v", tc.addr, tc.p, err, tc.ok)
		}
	}
}

func TestAddrRule(t *testing.T) {
	for a, want := range map[string]string{"8.8.8.8": "", "169.254.169.254": "link-local", "10.0.0.1": "private",
		"::1": "loopback", "0.0.0.0": "unspecified", "::ffff:192.168.0.1": "private", "239.1.1.1": "multicast"} {
		if got := addrRule(netip.MustParseAddr(a)); got != want {
			t.Errorf("%s: %q, want %q", a, got, want)
		}
	}
}

func FuzzCheckURL(f *testing.F) {
	for _, s := range []string{"https://hooks.example.com/x", "https://[::ffff:10.0.0.1]/", "http://localhost:1/", "https://169.254.169.254/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := Policy{}.CheckURL(s)
		if err != nil {
			return
		}
		if u.Scheme != "https" {
			t.Fatalf("%q accepted with scheme %q", s, u.Scheme)
		}
		if a, perr := netip.ParseAddr(u.Hostname()); perr == nil && addrRule(a) != "" {
			t.Fatalf("%q accepted with internal address %s", s, a)
		}
	})
}
