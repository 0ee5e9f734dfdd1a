package tlsauto

import (
	"github.com/devpilot/devpilot/shared/tlspin"

	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// serve runs a TLS server on 127.0.0.1 that completes handshakes and
// writes "ok"; it is stopped at cleanup.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil {
				_, _ = io.WriteString(tc, "ok")
			}
			_ = tc.Close()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); <-done })
	return ln.Addr().String()
}

// dial handshakes with addr and returns the server's leaf certificate.
func dial(addr string, cfg *tls.Config, serverName string) (*x509.Certificate, error) {
	cfg = cfg.Clone()
	if serverName != "" {
		cfg.ServerName = serverName
	}
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.Close() }()
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "ok" {
		return nil, errors.New("no answer after handshake")
	}
	return c.ConnectionState().PeerCertificates[0], nil
}

func ensure(t *testing.T, dir string, hosts []string, now time.Time) *Bundle {
	t.Helper()
	b, err := Ensure(dir, hosts, now)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHandshakeWithClientConfig(t *testing.T) {
	t.Parallel()
	b := ensure(t, filepath.Join(t.TempDir(), "tls"), []string{"devpilot.example.com", "10.1.2.3"}, time.Now())
	if b.ServerConfig().MinVersion != tls.VersionTLS12 || b.ClientConfig().MinVersion != tls.VersionTLS12 {
		t.Fatal("configs must require TLS 1.2+")
	}
	addr := serve(t, b.ServerConfig())
	other := ensure(t, t.TempDir(), nil, time.Now())

	cases := []struct {
		name       string
		cfg        *tls.Config
		serverName string
		wantErr    string
	}{
		{"by IP", b.ClientConfig(), "", ""},
		{"localhost", b.ClientConfig(), "localhost", ""},
		{"configured DNS name", b.ClientConfig(), "devpilot.example.com", ""},
		{"configured IP", b.ClientConfig(), "10.1.2.3", ""},
		{"name not in certificate", b.ClientConfig(), "evil.example.com", "not evil.example.com"},
		{"client trusting another CA", other.ClientConfig(), "localhost", "unknown authority"},
		{"client with system roots", &tls.Config{}, "localhost", "certificate"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			leaf, err := dial(addr, c.cfg, c.serverName)
			if c.wantErr == "" {
				if err != nil {
					t.Fatalf("handshake failed: %v", err)
				}
				if leaf.SerialNumber.Cmp(b.Certificate().Leaf.SerialNumber) != 0 {
					t.Fatal("served another certificate")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, c.wantErr)
			}
		})
	}
}

func TestHTTPSEndToEnd(t *testing.T) {
	t.Parallel()
	b := ensure(t, t.TempDir(), nil, time.Now())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		TLSConfig: b.ServerConfig(),
		Handler:   http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "hello") }),
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close(); <-done })

	tr := &http.Transport{TLSClientConfig: b.ClientConfig(), ForceAttemptHTTP2: true}
	t.Cleanup(tr.CloseIdleConnections)
	resp, err := (&http.Client{Transport: tr}).Get("https://" + ln.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if string(body) != "hello" || resp.ProtoMajor != 2 {
		t.Fatalf("got %q over %s", body, resp.Proto)
	}
}

func TestCertificatesAndFiles(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data", "tls")
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	b := ensure(t, dir, []string{"cp.example.com", "192.0.2.7:8443", "[2001:db8::1]:443", "0.0.0.0", " "}, now)
	if !b.CreatedCA || !b.Reissued() {
		t.Fatal("first Ensure should create the CA and issue a certificate")
	}

	modes := map[string]os.FileMode{"": 0o700, CACertFile: 0o644, CAKeyFile: 0o600, ServerCertFile: 0o644, ServerKeyFile: 0o600}
	for name, want := range modes {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != want {
			t.Errorf("%q mode %04o, want %04o", name, st.Mode().Perm(), want)
		}
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 4 {
		t.Errorf("dir holds %d files, want 4 (temp files left?)", len(entries))
	}

	ca := b.CACert
	pub, ok := ca.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() || !ca.IsCA || !ca.NotAfter.Equal(now.Add(CAValidity).Truncate(time.Second)) {
		t.Fatalf("CA: P-256 %v, IsCA %v, NotAfter %v", ok, ca.IsCA, ca.NotAfter)
	}
	if pem, _ := os.ReadFile(filepath.Join(dir, CACertFile)); !bytes.Equal(pem, b.CACertPEM) {
		t.Fatal("CACertPEM differs from ca.crt")
	}
	leaf := b.Certificate().Leaf
	if !leaf.NotAfter.Equal(now.Add(ServerValidity).Truncate(time.Second)) {
		t.Fatalf("server NotAfter %v", leaf.NotAfter)
	}
	if err := leaf.CheckSignatureFrom(ca); err != nil {
		t.Fatalf("server certificate not signed by CA: %v", err)
	}
	wantHosts := []string{"cp.example.com", "localhost", "127.0.0.1", "192.0.2.7", "2001:db8::1", "::1"}
	if got := b.Hosts(); !slices.Equal(got, wantHosts) {
		t.Fatalf("Hosts = %v, want %v", got, wantHosts)
	}
	if !slices.Equal(leaf.DNSNames, []string{"cp.example.com", "localhost"}) || len(leaf.IPAddresses) != 4 {
		t.Fatalf("SANs: %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) {
		t.Fatal("server certificate lacks serverAuth")
	}
}

func TestEnsureKeepsAndReissues(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	now := time.Now()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	first := ensure(t, dir, []string{"a.example.com", "10.0.0.1"}, now)
	caPEM, caKey, srv := read(CACertFile), read(CAKeyFile), read(ServerCertFile)

	// Same hosts, written differently, a week later: nothing changes.
	again := ensure(t, dir, []string{"10.0.0.1:443", "A.Example.COM.", "localhost"}, now.Add(7*24*time.Hour))
	if again.CreatedCA || again.Reissued() {
		t.Fatal("re-running Ensure with the same hosts re-issued something")
	}
	if again.CAPin != first.CAPin || !bytes.Equal(read(CACertFile), caPEM) || !bytes.Equal(read(CAKeyFile), caKey) || !bytes.Equal(read(ServerCertFile), srv) {
		t.Fatal("files changed although nothing needed to")
	}

	// Changed hosts: new server certificate, same CA.
	changed := ensure(t, dir, []string{"b.example.com", "10.0.0.1"}, now)
	if !changed.Reissued() || changed.CreatedCA || changed.CAPin != first.CAPin || !bytes.Equal(read(CACertFile), caPEM) {
		t.Fatal("changed hosts: want a new server certificate under the same CA")
	}
	if slices.Contains(changed.Certificate().Leaf.DNSNames, "a.example.com") || !slices.Contains(changed.Certificate().Leaf.DNSNames, "b.example.com") {
		t.Fatalf("SANs after change: %v", changed.Certificate().Leaf.DNSNames)
	}
	// A client of the first bundle still trusts the new certificate.
	addr := serve(t, changed.ServerConfig())
	if _, err := dial(addr, first.ClientConfig(), "b.example.com"); err != nil {
		t.Fatalf("old client, new certificate: %v", err)
	}

	// Renewal window.
	hosts := []string{"b.example.com", "10.0.0.1"}
	expiry := changed.NotAfter()
	for _, c := range []struct {
		name string
		at   time.Time
		want bool
	}{
		{"31 days before expiry", expiry.Add(-31 * 24 * time.Hour), false},
		{"29 days before expiry", expiry.Add(-29 * 24 * time.Hour), true},
	} {
		got := ensure(t, dir, hosts, c.at)
		if got.Reissued() != c.want {
			t.Fatalf("%s: reissued = %v, want %v", c.name, got.Reissued(), c.want)
		}
		if got.CAPin != first.CAPin {
			t.Fatalf("%s: CA changed", c.name)
		}
	}

	// A corrupted server certificate is replaced.
	if err := os.WriteFile(filepath.Join(dir, ServerCertFile), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if !ensure(t, dir, hosts, now).Reissued() {
		t.Fatal("garbage server.crt was not replaced")
	}
}

func TestRefreshReloadsWhileServing(t *testing.T) {
	t.Parallel()
	now := time.Now()
	b := ensure(t, t.TempDir(), nil, now)
	addr := serve(t, b.ServerConfig())
	before, err := dial(addr, b.ClientConfig(), "localhost")
	if err != nil {
		t.Fatal(err)
	}
	if re, err := b.Refresh(now.Add(24 * time.Hour)); err != nil || re {
		t.Fatalf("Refresh a day later: reissued %v, %v", re, err)
	}
	later := now.Add(ServerValidity - 10*24*time.Hour)
	if re, err := b.Refresh(later); err != nil || !re {
		t.Fatalf("Refresh near expiry: reissued %v, %v", re, err)
	}
	cfg := b.ClientConfig()
	cfg.Time = func() time.Time { return later }
	after, err := dial(addr, cfg, "localhost")
	if err != nil {
		t.Fatal(err)
	}
	if after.SerialNumber.Cmp(before.SerialNumber) == 0 || !after.NotAfter.After(before.NotAfter) {
		t.Fatal("running server did not pick up the renewed certificate")
	}

	// Concurrent refreshes and handshakes leave a consistent pair on disk.
	much := later.Add(ServerValidity - 10*24*time.Hour)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { _, _ = b.Refresh(much) })
		wg.Go(func() { _, _ = dial(addr, cfg, "localhost") })
	}
	wg.Wait()
	if _, err := LoadFiles(filepath.Join(b.Dir, ServerCertFile), filepath.Join(b.Dir, ServerKeyFile)); err != nil {
		t.Fatalf("pair on disk after concurrent refreshes: %v", err)
	}
}

var pinRE = regexp.MustCompile(`^sha256/[A-Za-z0-9+/]{43}=$`)

func TestPins(t *testing.T) {
	t.Parallel()
	b := ensure(t, t.TempDir(), nil, time.Now())
	other := ensure(t, t.TempDir(), nil, time.Now())
	sum := sha256.Sum256(b.CACert.RawSubjectPublicKeyInfo)
	if b.CAPin != "sha256/"+base64.StdEncoding.EncodeToString(sum[:]) || !pinRE.MatchString(b.CAPin) || tlspin.PinOf(b.CACert) != b.CAPin {
		t.Fatalf("CAPin = %q", b.CAPin)
	}
	if other.CAPin == b.CAPin {
		t.Fatal("two CAs, one pin")
	}
	leaf := b.Certificate().Leaf

	// Direct calls.
	if err := tlspin.VerifyPin(b.CAPin)(nil, [][]*x509.Certificate{{leaf, b.CACert}}); err != nil {
		t.Fatalf("right pin refused: %v", err)
	}
	for name, c := range map[string]struct {
		pin    string
		chains [][]*x509.Certificate
	}{
		"other CA's pin":  {other.CAPin, [][]*x509.Certificate{{leaf, b.CACert}}},
		"no chains":       {b.CAPin, nil},
		"malformed pin":   {"sha256/xyz", [][]*x509.Certificate{{leaf, b.CACert}}},
		"hex pin":         {"sha256:" + strings.Repeat("ab", 32), [][]*x509.Certificate{{leaf, b.CACert}}},
		"other CA's tree": {b.CAPin, [][]*x509.Certificate{{other.Certificate().Leaf, other.CACert}}},
	} {
		if err := tlspin.VerifyPin(c.pin)(nil, c.chains); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}

	// In handshakes: RootCAs holding both CAs, so only the pin tells them apart.
	addr := serve(t, b.ServerConfig())
	pool := x509.NewCertPool()
	pool.AddCert(b.CACert)
	pool.AddCert(other.CACert)
	for _, c := range []struct {
		pin string
		ok  bool
	}{{b.CAPin, true}, {other.CAPin, false}} {
		cfg := &tls.Config{RootCAs: pool, VerifyPeerCertificate: tlspin.VerifyPin(c.pin)}
		_, err := dial(addr, cfg, "localhost")
		if (err == nil) != c.ok {
			t.Fatalf("pin %s: err = %v", c.pin, err)
		}
	}
}

func TestPinnedClientConfig(t *testing.T) {
	t.Parallel()
	b := ensure(t, t.TempDir(), []string{"cp.example.com"}, time.Now())
	other := ensure(t, t.TempDir(), []string{"cp.example.com"}, time.Now())
	addr := serve(t, b.ServerConfig())
	otherAddr := serve(t, other.ServerConfig())

	// An impostor that sends the real (public) CA certificate in its chain,
	// behind a leaf signed by its own CA.
	impostor := &tls.Certificate{
		Certificate: [][]byte{other.Certificate().Certificate[0], b.CACert.Raw},
		PrivateKey:  other.Certificate().PrivateKey,
	}
	impAddr := serve(t, &tls.Config{Certificates: []tls.Certificate{*impostor}})

	// A leaf signed by a self-made CA that copies the real CA's subject.
	forgedAddr := serve(t, &tls.Config{Certificates: []tls.Certificate{forge(t, b.CACert)}})

	cases := []struct {
		name, addr, pin, serverName string
		ok                          bool
	}{
		{"right pin, by IP", addr, b.CAPin, "", true},
		{"right pin, by name", addr, b.CAPin, "cp.example.com", true},
		{"right pin, wrong name", addr, b.CAPin, "evil.example.com", false},
		{"wrong pin", addr, other.CAPin, "cp.example.com", false},
		{"other server", otherAddr, b.CAPin, "cp.example.com", false},
		{"impostor with real CA in chain", impAddr, b.CAPin, "cp.example.com", false},
		{"forged CA with same subject", forgedAddr, b.CAPin, "cp.example.com", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := tlspin.PinnedClientConfig(c.pin, c.serverName)
			if err != nil {
				t.Fatal(err)
			}
			_, err = dial(c.addr, cfg, "")
			if (err == nil) != c.ok {
				t.Fatalf("err = %v, want ok=%v", err, c.ok)
			}
		})
	}
	if _, err := tlspin.PinnedClientConfig("not-a-pin", ""); err == nil {
		t.Fatal("malformed pin accepted")
	}
}

// forge makes a CA with the same subject as real but its own key, and a
// localhost leaf under it, served with the forged CA in the chain.
func forge(t *testing.T, real *x509.Certificate) tls.Certificate {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: real.Subject, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leafT := &x509.Certificate{
		SerialNumber: big.NewInt(8), Subject: pkix.Name{CommonName: "cp.example.com"}, DNSNames: []string{"cp.example.com"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, leafT, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, caDER}, PrivateKey: key}
}

func TestCAFileProblems(t *testing.T) {
	t.Parallel()
	t.Run("key readable by others", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		ensure(t, dir, nil, time.Now())
		if err := os.Chmod(filepath.Join(dir, CAKeyFile), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Ensure(dir, nil, time.Now())
		if !errors.Is(err, ErrKeyPerms) || !strings.Contains(err.Error(), "chmod 600") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("server key readable by others", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		ensure(t, dir, nil, time.Now())
		if err := os.Chmod(filepath.Join(dir, ServerKeyFile), 0o640); err != nil {
			t.Fatal(err)
		}
		if _, err := Ensure(dir, nil, time.Now()); !errors.Is(err, ErrKeyPerms) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("lost ca.crt is re-issued with the same pin", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		first := ensure(t, dir, nil, time.Now())
		if err := os.Remove(filepath.Join(dir, CACertFile)); err != nil {
			t.Fatal(err)
		}
		again := ensure(t, dir, nil, time.Now())
		if again.CAPin != first.CAPin || again.CreatedCA {
			t.Fatal("pin changed after re-issuing ca.crt from ca.key")
		}
		if !again.Reissued() {
			t.Fatal("server certificate under the old CA certificate should be re-issued")
		}
		if _, err := dial(serve(t, again.ServerConfig()), again.ClientConfig(), "localhost"); err != nil {
			t.Fatalf("handshake after re-issuing ca.crt: %v", err)
		}
	})
	t.Run("lost ca.key is an error, not a new CA", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		first := ensure(t, dir, nil, time.Now())
		_ = os.Remove(filepath.Join(dir, CAKeyFile))
		_, err := Ensure(dir, nil, time.Now())
		if err == nil || !strings.Contains(err.Error(), "ca.key is missing") {
			t.Fatalf("err = %v", err)
		}
		if pem, _ := os.ReadFile(filepath.Join(dir, CACertFile)); !bytes.Equal(pem, first.CACertPEM) {
			t.Fatal("ca.crt was replaced")
		}
	})
	t.Run("mismatched CA pair", func(t *testing.T) {
		t.Parallel()
		a, b := t.TempDir(), t.TempDir()
		ensure(t, a, nil, time.Now())
		ensure(t, b, nil, time.Now())
		key, _ := os.ReadFile(filepath.Join(b, CAKeyFile))
		if err := os.WriteFile(filepath.Join(a, CAKeyFile), key, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Ensure(a, nil, time.Now()); err == nil || !strings.Contains(err.Error(), "does not belong") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("expired CA", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		ensure(t, dir, nil, time.Now())
		if _, err := Ensure(dir, nil, time.Now().Add(CAValidity+time.Hour)); err == nil || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("invalid host", func(t *testing.T) {
		t.Parallel()
		if _, err := Ensure(t.TempDir(), []string{"bad host!"}, time.Now()); err == nil {
			t.Fatal("accepted")
		}
	})
}

func TestLoadFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b := ensure(t, dir, nil, time.Now())
	certFile, keyFile := filepath.Join(dir, ServerCertFile), filepath.Join(dir, ServerKeyFile)
	cfg, err := LoadFiles(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MinVersion != tls.VersionTLS12 {
		t.Fatal("MinVersion")
	}
	addr := serve(t, cfg)
	first, err := dial(addr, b.ClientConfig(), "localhost")
	if err != nil {
		t.Fatal(err)
	}

	// Renewal on disk (new names, so new size): next handshake serves it.
	renewed := ensure(t, dir, []string{"a-much-longer-name.devpilot.example.com"}, time.Now())
	second, err := dial(addr, b.ClientConfig(), "a-much-longer-name.devpilot.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 || second.SerialNumber.Cmp(renewed.Certificate().Leaf.SerialNumber) != 0 {
		t.Fatal("renewed files not picked up")
	}

	// A half-written renewal (key of another pair) keeps the old pair serving.
	otherDir := t.TempDir()
	ensure(t, otherDir, nil, time.Now())
	otherKey, _ := os.ReadFile(filepath.Join(otherDir, ServerKeyFile))
	if err := os.WriteFile(keyFile, otherKey, 0o600); err != nil {
		t.Fatal(err)
	}
	if third, err := dial(addr, b.ClientConfig(), "localhost"); err != nil || third.SerialNumber.Cmp(second.SerialNumber) != 0 {
		t.Fatalf("mismatched pair on disk broke serving: %v", err)
	}

	if _, err := LoadFiles(certFile, keyFile); err == nil {
		t.Fatal("mismatched pair accepted")
	}
	if _, err := LoadFiles(filepath.Join(dir, "nope.crt"), keyFile); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}
