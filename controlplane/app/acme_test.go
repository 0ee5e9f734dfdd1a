package app_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/devpilot/devpilot/controlplane/app"
)

func TestMain(m *testing.M) {
	if os.Getenv(fdChildEnv) != "" {
		os.Exit(fdChild())
	}
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().(*net.TCPAddr).Port
}

// pebble is Let's Encrypt's ACME test server (a go.mod tool), run as a
// process: a real ACME CA that really validates TLS-ALPN-01 challenges by
// connecting to the control plane's port.
type pebble struct {
	dir      string // its directory URL
	apiRoots string // file: the roots of pebble's own API certificate
	rootPEM  []byte // the root it issues under
	cmd      *exec.Cmd
}

// testDomain is the name certified in the tests: autocert wants a dotted
// name, and pebble-challtestsrv answers every A query with 127.0.0.1 (and
// no AAAA), standing in for public DNS.
const testDomain = "devpilot.test"

// buildTool builds one of go.mod's tools.
func buildTool(t *testing.T, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	if out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// run starts a helper process, killed when t ends.
func run(t *testing.T, logs *bytes.Buffer, bin string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, args...)
	// pebble: no random sleeps before validating, no random nonce rejections.
	cmd.Env = append(os.Environ(), "PEBBLE_VA_NOSLEEP=1", "PEBBLE_WFE_NONCEREJECT=0")
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd
}

func startPebble(t *testing.T, challengePort int) *pebble {
	t.Helper()
	bin := buildTool(t, "github.com/letsencrypt/pebble/v2/cmd/pebble")
	dnsBin := buildTool(t, "github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv")
	dns := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	var dnsLogs bytes.Buffer
	run(t, &dnsLogs, dnsBin, "-dnsserver", dns, "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "",
		"-http01", "", "-https01", "", "-doh", "", "-tlsalpn01", "", "-management", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/letsencrypt/pebble/v2").Output()
	if err != nil {
		t.Fatalf("find pebble's module: %v", err)
	}
	mod := strings.TrimSpace(string(out))
	api, mgmt := freePort(t), freePort(t)
	cfg := map[string]any{"pebble": map[string]any{
		"listenAddress":                  fmt.Sprintf("127.0.0.1:%d", api),
		"managementListenAddress":        fmt.Sprintf("127.0.0.1:%d", mgmt),
		"certificate":                    filepath.Join(mod, "test/certs/localhost/cert.pem"),
		"privateKey":                     filepath.Join(mod, "test/certs/localhost/key.pem"),
		"httpPort":                       freePort(t),
		"tlsPort":                        challengePort,
		"ocspResponderURL":               "",
		"externalAccountBindingRequired": false,
	}}
	b, _ := json.Marshal(cfg)
	cfgFile := filepath.Join(t.TempDir(), "pebble.json")
	if err := os.WriteFile(cfgFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	p := &pebble{dir: fmt.Sprintf("https://localhost:%d/dir", api), apiRoots: filepath.Join(mod, "test/certs/pebble.minica.pem")}
	var logs bytes.Buffer
	p.cmd = run(t, &logs, bin, "-config", cfgFile, "-dnsserver", dns)

	ca, err := os.ReadFile(p.apiRoots)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer c.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := c.Get(fmt.Sprintf("https://localhost:%d/roots/0", mgmt))
		if err == nil {
			p.rootPEM, _ = io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pebble did not start: %v\n%s\n%s", err, logs.String(), dnsLogs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return p
}

func (p *pebble) stop() {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	}
}

// serving is a control plane serving in the background.
type serving struct {
	a      *app.App
	cancel context.CancelFunc
	done   chan error
}

func serve(t *testing.T, cfg app.Config) *serving {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := a.Listen(); err != nil {
		cancel()
		_ = a.Close()
		t.Fatal(err)
	}
	s := &serving{a: a, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- a.Serve(ctx) }()
	return s
}

func (s *serving) stop(t *testing.T) {
	t.Helper()
	s.cancel()
	if err := <-s.done; err != nil {
		t.Errorf("serve: %v", err)
	}
	_ = s.a.Close()
}

// TestACMECertificateFromARealACMEServer: with --tls acme the control plane
// gets its certificate from an ACME CA (pebble), proving the name with a
// TLS-ALPN-01 challenge the CA checks against its port, serves it to
// clients that trust only that CA, and after a restart serves it from the
// data dir's cache with the CA gone.
func TestACMECertificateFromARealACMEServer(t *testing.T) {
	if testing.Short() {
		t.Skip("ACME: builds and runs pebble; skipped under -short (make test runs it)")
	}
	port := freePort(t)
	p := startPebble(t, port)
	rootFile := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(rootFile, p.rootPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zapcore.DebugLevel)
	log := zap.New(core)
	logText := func() string {
		var b strings.Builder
		for _, e := range logs.All() {
			fmt.Fprintf(&b, "%s %s %v\n", e.Level, e.Message, e.ContextMap())
		}
		return b.String()
	}
	dataDir := t.TempDir()
	cfg := app.Config{
		DataDir: dataDir, Listen: fmt.Sprintf("127.0.0.1:%d", port), PublicURL: fmt.Sprintf("https://%s:%d", testDomain, port),
		TLS: app.TLSACME, ACMEDirectory: p.dir, ACMECAFile: p.apiRoots, ACMEEmail: "ops@example.com",
		AgentCAFile: rootFile, AgentDir: t.TempDir(), Out: io.Discard, Logger: log,
	}
	s := serve(t, cfg)

	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(p.rootPEM) {
		t.Fatalf("pebble's root: %q", p.rootPEM)
	}
	// The client resolves testDomain as the CA did: to this machine.
	dial := func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, fmt.Sprintf("127.0.0.1:%d", port))
	}
	client := &http.Client{Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: dial, TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer client.CloseIdleConnections()
	get := func(limit time.Duration) *http.Response {
		t.Helper()
		deadline := time.Now().Add(limit)
		for {
			resp, err := client.Get(cfg.PublicURL + "/healthz")
			if err == nil {
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				return resp
			}
			if time.Now().After(deadline) {
				t.Fatalf("no TLS connection by name after %v: %v\nlogs:\n%s", limit, err, logText())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	resp := get(60 * time.Second)
	leaf := resp.TLS.PeerCertificates[0]
	if resp.StatusCode != 200 || len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != testDomain ||
		!strings.Contains(leaf.Issuer.CommonName, "Pebble Intermediate") {
		t.Fatalf("status %d, certificate for %v issued by %q; want 200 and pebble's certificate for localhost",
			resp.StatusCode, leaf.DNSNames, leaf.Issuer.CommonName)
	}
	deadline := time.Now().Add(10 * time.Second)
	for logs.FilterMessage("acme: certificate ready").Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the log does not say the certificate is ready:\n%s", logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The local CLI dials the name the certificate holds.
	if b, _ := os.ReadFile(filepath.Join(dataDir, app.URLFile)); strings.TrimSpace(string(b)) != cfg.PublicURL {
		t.Errorf("URL file holds %q, want %q", b, cfg.PublicURL)
	}
	s.stop(t)

	// The CA is gone; the certificate comes from the cache in the data dir.
	p.stop()
	client.CloseIdleConnections()
	s = serve(t, cfg)
	defer s.stop(t)
	if resp := get(10 * time.Second); resp.TLS.PeerCertificates[0].SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Errorf("after a restart a different certificate is served")
	}
}

// TestACMEConfigurationErrors: what --tls acme cannot do without is said
// at start, with what to set.
func TestACMEConfigurationErrors(t *testing.T) {
	for _, c := range []struct {
		name string
		cfg  app.Config
		want string
	}{
		{"no name", app.Config{AgentCAFile: "/dev/null"}, "--public-url"},
		{"no agent CA", app.Config{PublicURL: "https://devpilot.example.com"}, "ISRG Root X1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := c.cfg
			cfg.DataDir, cfg.Listen, cfg.TLS, cfg.Out = t.TempDir(), "127.0.0.1:0", app.TLSACME, io.Discard
			a, err := app.New(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = a.Close() }()
			if err := a.Listen(); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("Listen = %v; want an error naming %s", err, c.want)
			}
		})
	}
}
