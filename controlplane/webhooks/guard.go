package webhooks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Policy is where webhooks may send: public https endpoints only, unless
// the operator widens it.
type Policy struct {
	// AllowLoopback admits loopback addresses, and plain http to them
	// (--webhooks-allow-loopback; devpilot dev sets it).
	AllowLoopback bool
	// AllowPrivate admits private (RFC 1918, RFC 6598, fc00::/7),
	// link-local and loopback addresses (--webhooks-allow-private).
	AllowPrivate bool
}

var (
	cgnat       = netip.MustParsePrefix("100.64.0.0/10")
	thisNetwork = netip.MustParsePrefix("0.0.0.0/8")
	broadcast   = netip.MustParseAddr("255.255.255.255")
)

// addrRule names the rule an address falls under ("" for a public
// address): loopback, private, link-local, multicast or unspecified.
func addrRule(a netip.Addr) string {
	a = a.Unmap() // ::ffff:10.0.0.1 is 10.0.0.1
	switch {
	case a.IsUnspecified() || thisNetwork.Contains(a):
		return "unspecified"
	case a.IsLoopback():
		return "loopback"
	case a.IsMulticast() || a == broadcast:
		return "multicast"
	case a.IsLinkLocalUnicast():
		return "link-local"
	case a.IsPrivate() || cgnat.Contains(a):
		return "private"
	}
	return ""
}

// refusal explains why p refuses a (nil: allowed).
func (p Policy) refusal(a netip.Addr) error {
	switch rule := addrRule(a); rule {
	case "":
		return nil
	case "loopback":
		if p.AllowLoopback || p.AllowPrivate {
			return nil
		}
		return fmt.Errorf("%s is a loopback address, refused unless the control plane runs with --webhooks-allow-loopback (or --webhooks-allow-private)", a)
	case "private", "link-local":
		if p.AllowPrivate {
			return nil
		}
		return fmt.Errorf("%s is a %s address, refused unless the control plane runs with --webhooks-allow-private", a, rule)
	default:
		return fmt.Errorf("%s is a %s address, never a webhook receiver", a, rule)
	}
}

// CheckURL validates a webhook URL at the door: https (http only to a
// loopback host under AllowLoopback), no credentials in it, and a literal
// IP address only where the policy admits it. Host names are checked again
// at every dial, after resolution.
func (p Policy) CheckURL(raw string) (*url.URL, error) {
	const hint = "Give the receiver's https URL, e.g. https://hooks.example.com/devpilot"
	if len(raw) > 2048 {
		return nil, invalid(hint, "url must be at most 2048 characters")
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return nil, invalid(hint, "url is not an absolute URL")
	}
	if u.User != nil {
		return nil, invalid("Receivers authenticate deliveries by their signature (the webhook's secret); remove user:password@ from the URL.",
			"url must not hold credentials")
	}
	if u.Fragment != "" {
		return nil, invalid(hint, "url must not have a #fragment")
	}
	host := u.Hostname()
	addr, perr := netip.ParseAddr(host)
	literal := perr == nil
	loopbackHost := (literal && addr.Unmap().IsLoopback()) || strings.EqualFold(host, "localhost") ||
		strings.HasSuffix(strings.ToLower(host), ".localhost")
	loopbackOK := p.AllowLoopback || p.AllowPrivate
	switch u.Scheme {
	case "https":
	case "http":
		if !loopbackHost || !loopbackOK {
			return nil, invalid("Use https; plain http is accepted only to a loopback address when the control plane runs with --webhooks-allow-loopback (devpilot dev does).",
				"url must use https")
		}
	default:
		return nil, invalid(hint, "url scheme %q is not https", u.Scheme)
	}
	if literal {
		if err := p.refusal(addr); err != nil {
			return nil, invalid("Webhooks refuse internal addresses so they cannot reach the cloud's metadata service or your private network (SSRF). An operator can allow private receivers with --webhooks-allow-private.",
				"url refused: %v", err)
		}
	} else if loopbackHost && !loopbackOK {
		return nil, invalid("localhost is refused unless the control plane runs with --webhooks-allow-loopback.",
			"url refused: %s is a loopback host", host)
	}
	return u, nil
}

// errRefusedAddr marks a dial the policy refused (after DNS resolution).
var errRefusedAddr = errors.New("address refused")

// control refuses, at connect time, every address the policy does not
// admit: a host name that resolves (or is rebound) to an internal address
// is refused here even though it passed CheckURL.
func (p Policy) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: %s is not an IP address", errRefusedAddr, address)
	}
	if err := p.refusal(ap.Addr()); err != nil {
		return fmt.Errorf("%w: %w", errRefusedAddr, err)
	}
	return nil
}

// Limits of one attempt.
const (
	AttemptTimeout = 10 * time.Second
	MaxExcerpt     = 4 << 10 // bytes of the response body read and kept
)

// Client is the HTTP client deliveries go through: no proxy (the dial must
// be to the receiver itself), the policy checked on every connection, no
// redirect followed (a 3xx comes back as the response).
func (p Policy) Client() *http.Client {
	d := &net.Dialer{Timeout: AttemptTimeout, KeepAlive: 30 * time.Second, Control: p.control}
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          32,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   AttemptTimeout,
		ResponseHeaderTimeout: AttemptTimeout,
	}
	return &http.Client{
		Transport:     tr,
		Timeout:       AttemptTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
