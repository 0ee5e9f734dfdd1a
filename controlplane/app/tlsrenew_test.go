package app_test

import (
	"io"
	"net/http"
	"regexp"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/shared/tlspin"
)

// TestTLSAutoRenewedWhileServing starts a control plane whose clock says
// it is 340 days ago, so its fresh certificate expires 25 days from the
// real now; then the clock moves to now and the daily check (a tick the
// test sends) renews it. Clients pinning the CA, as agents do, connect
// before and after, a connection opened before keeps working, and
// devpilot_tls_cert_expiry_seconds follows.
func TestTLSAutoRenewedWhileServing(t *testing.T) {
	var clock atomic.Int64
	clock.Store(time.Now().Add(-340 * 24 * time.Hour).UnixNano())
	tick := make(chan time.Time)
	checks := make(chan error, 4)
	d := startDoor(t, t.TempDir(), func(c *app.Config) {
		c.Clock = func() time.Time { return time.Unix(0, clock.Load()) }
		c.TLSRenewTick = tick
		c.OnTLSCheck = func(_ bool, err error) { checks <- err }
	})

	pinned, err := tlspin.PinnedClientConfig(d.a.CAPin, "")
	if err != nil {
		t.Fatal(err)
	}
	agentLike := func() *http.Client {
		tr := &http.Transport{TLSClientConfig: pinned.Clone()}
		t.Cleanup(tr.CloseIdleConnections)
		return &http.Client{Transport: tr, Timeout: 30 * time.Second}
	}
	served := func(c *http.Client) (notAfter time.Time, serial string) {
		t.Helper()
		resp, err := c.Get(d.a.URL + "/healthz")
		if err != nil {
			t.Fatalf("pinned client: %v", err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("healthz: %d", resp.StatusCode)
		}
		leaf := resp.TLS.PeerCertificates[0]
		return leaf.NotAfter, leaf.SerialNumber.String()
	}
	expiryMetric := func() int64 {
		t.Helper()
		a := d.do(t, "", "GET", "/metrics", nil)
		m := regexp.MustCompile(`(?m)^devpilot_tls_cert_expiry_seconds ([0-9.e+]+)$`).FindStringSubmatch(a.body)
		if m == nil {
			t.Fatalf("no devpilot_tls_cert_expiry_seconds in /metrics")
		}
		f, err := strconv.ParseFloat(m[1], 64)
		if err != nil {
			t.Fatal(err)
		}
		return int64(f)
	}

	kept := agentLike()
	oldExpiry, oldSerial := served(kept)
	if left := time.Until(oldExpiry); left > 26*24*time.Hour || left < 24*24*time.Hour {
		t.Fatalf("first certificate expires in %s, want about 25 days", left)
	}
	if got := expiryMetric(); got != oldExpiry.Unix() {
		t.Fatalf("expiry metric %d, served certificate %d", got, oldExpiry.Unix())
	}

	clock.Store(time.Now().UnixNano())
	select {
	case tick <- time.Now():
	case <-time.After(60 * time.Second):
		t.Fatal("the renewal loop is not running")
	}
	select {
	case err := <-checks:
		if err != nil {
			t.Fatalf("renewal check: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no renewal check result")
	}

	newExpiry, newSerial := served(agentLike())
	if newSerial == oldSerial || time.Until(newExpiry) < 360*24*time.Hour {
		t.Fatalf("still serving the old certificate: serial %s, expires %s", newSerial, newExpiry)
	}
	if got := expiryMetric(); got != newExpiry.Unix() {
		t.Fatalf("expiry metric %d after renewal, served %d", got, newExpiry.Unix())
	}
	// The connection opened before the renewal was not cut.
	if _, serial := served(kept); serial != oldSerial {
		t.Fatalf("the kept-alive connection was re-established (serial %s)", serial)
	}
	if !regexp.MustCompile(`(?m)^devpilot_tls_renewal_checks_total\{result="reissued"\} 1$`).MatchString(d.do(t, "", "GET", "/metrics", nil).body) {
		t.Fatal("devpilot_tls_renewal_checks_total{result=\"reissued\"} is not 1")
	}
}
