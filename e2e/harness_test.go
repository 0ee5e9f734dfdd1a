//go:build e2e

package e2e_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
	"github.com/devpilot/devpilot/controlplane/devenv"
	"github.com/devpilot/devpilot/e2e/nspawn"
	"github.com/devpilot/devpilot/shared/protocol"
)

// rootFS is the debootstrapped bookworm `make e2e-rootfs` builds.
func rootFS() string {
	if p := os.Getenv("DEVPILOT_E2E_ROOTFS"); p != "" {
		return p
	}
	return "/var/cache/devpilot-e2e/rootfs-bookworm"
}

// agentDir holds the devpilot-agent build the control plane serves.
var agentDir string

func TestMain(m *testing.M) {
	// Never skip: an e2e run that cannot boot containers must fail loudly.
	if err := nspawn.Check(rootFS()); err != nil {
		fmt.Fprintf(os.Stderr, "FAIL e2e: %v\n", err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "devpilot-e2e-build-")
	if err != nil {
		panic(err)
	}
	for _, name := range []string{"devpilot-agent"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), "github.com/devpilot/devpilot/cmd/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL e2e: build %s: %v\n%s", name, err, out)
			os.Exit(1)
		}
	}
	agentDir = dir
	code := m.Run()
	printTimings()
	_ = os.RemoveAll(dir)
	if code == 0 {
		// Everything the environments and containers started has ended.
		if err := goleak.Find(
			goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL e2e: leaked goroutines: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// syncBuffer collects the control plane's log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// harness is a dev environment whose instances are real containers.
type harness struct {
	t      *testing.T
	env    *devenv.Env
	rt     *nspawn.Runtime
	dir    string
	logs   *syncBuffer
	client *http.Client
	caPool *x509.CertPool
}

type envOptions struct {
	agentTimeout time.Duration
	mutate       func(h *harness, m *simrun.Machine)
}

func start(t *testing.T, o envOptions) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), logs: &syncBuffer{}}
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	log := zap.New(zapcore.NewCore(enc, zapcore.AddSync(h.logs), zapcore.DebugLevel))
	ropts := nspawn.Options{RootFS: rootFS(), Dir: filepath.Join(h.dir, "machines"), Logger: log.Named("nspawn")}
	if o.mutate != nil {
		ropts.Mutate = func(m *simrun.Machine) { o.mutate(h, m) }
	}
	rt, err := nspawn.New(ropts)
	if err != nil {
		t.Fatalf("nspawn runtime: %v", err)
	}
	h.rt = rt
	env, err := devenv.Start(context.Background(), devenv.Config{
		DataDir: h.dir, Listen: "127.0.0.1:0", Logger: log, Out: io.Discard, BootDelay: 100 * time.Millisecond,
		AgentDir: agentDir, AgentTimeout: o.agentTimeout, HeartbeatInterval: 2 * time.Second,
		PollInterval: 200 * time.Millisecond, Runtime: rt, SSHAddr: rt.SSHAddr,
	})
	if err != nil {
		_ = rt.Close()
		t.Fatalf("start dev environment: %v", err)
	}
	h.env = env
	t.Cleanup(func() {
		if t.Failed() {
			h.dumpOnFailure()
		}
		if err := env.Close(); err != nil {
			t.Errorf("close dev environment: %v", err)
		}
		if err := rt.Close(); err != nil {
			t.Errorf("close containers: %v", err)
		}
		h.client.CloseIdleConnections()
	})
	h.caPool = x509.NewCertPool()
	if !h.caPool.AppendCertsFromPEM(env.App.CACertPEM) {
		t.Fatal("no CA certificate")
	}
	h.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: h.caPool}}}
	return h
}

// dumpOnFailure logs what helps to understand a failure: the control
// plane's log tail and each container's cloud-init output and agent
// journal. With DEVPILOT_E2E_LOGS=DIR (.ci/run sets it) the whole of each
// is also kept there, one directory per test, since the containers and
// their directories are removed when the test ends.
func (h *harness) dumpOnFailure() {
	keep := ""
	if dir := os.Getenv("DEVPILOT_E2E_LOGS"); dir != "" {
		keep = filepath.Join(dir, strings.ReplaceAll(h.t.Name(), "/", "_"))
		if err := os.MkdirAll(keep, 0o755); err != nil {
			h.t.Logf("keep e2e logs: %v", err)
			keep = ""
		}
	}
	save := func(name, content string) {
		if keep == "" {
			return
		}
		if err := os.WriteFile(filepath.Join(keep, name), []byte(content), 0o644); err != nil {
			h.t.Logf("keep e2e logs: %v", err)
		}
	}
	logs := h.logs.String()
	save("control-plane.log", logs)
	if len(logs) > 20000 {
		logs = logs[len(logs)-20000:]
	}
	h.t.Logf("control plane log (tail):\n%s", logs)
	for _, m := range h.rt.Machines() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, _ := m.Exec(ctx, "sh", "-c", "cloud-init status --long; tail -n 40 /var/log/cloud-init-output.log; "+
			"journalctl -u devpilot-agent --no-pager -n 60; systemctl --failed --no-pager")
		full, _ := m.Exec(ctx, "sh", "-c", "cloud-init status --long; cat /var/log/cloud-init-output.log; "+
			"journalctl --no-pager -b; systemctl --failed --no-pager")
		cancel()
		h.t.Logf("container %s (%s):\n%s", m.Name, m.ID, out)
		save(m.Name+".journal.txt", string(full))
		if console, err := os.ReadFile(filepath.Join(m.Dir, "console.log")); err == nil {
			save(m.Name+".console.log", string(console))
		}
	}
	if keep != "" {
		h.t.Logf("whole logs kept in %s", keep)
	}
}

// call sends an API request with the owner token and decodes the answer.
func (h *harness) call(method, path string, body, out any) int {
	h.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, h.env.App.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+h.env.Values["DEVPILOT_TOKEN"])
	resp, err := h.client.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			h.t.Fatalf("%s %s: decode %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode
}

const (
	integrations = "/v1/workspaces/default/integrations"
	servers      = "/v1/workspaces/default/servers"
)

func (h *harness) connect(provider, secret string) string {
	h.t.Helper()
	var in struct{ ID, Status string }
	code := h.call("POST", integrations, map[string]string{"provider": provider, "access_key": provider + " e2e", "secret_key": secret}, &in)
	if code != http.StatusCreated || in.Status != "valid" {
		h.t.Fatalf("connect %s: %d %+v", provider, code, in)
	}
	return in.ID
}

func (h *harness) createServer(integrationID, name, region, size, image string) apitypes.Server {
	h.t.Helper()
	var s apitypes.Server
	body := map[string]any{"integration_id": integrationID, "name": name, "region": region, "size": size, "image": image}
	if c := h.call("POST", servers, body, &s); c != http.StatusAccepted {
		h.t.Fatalf("create server %s: %d %+v", name, c, s)
	}
	return s
}

func (h *harness) server(id string) apitypes.Server {
	h.t.Helper()
	var s apitypes.Server
	if c := h.call("GET", servers+"/"+id, nil, &s); c != http.StatusOK {
		h.t.Fatalf("get server %s: %d", id, c)
	}
	return s
}

// waitServer polls until cond holds, failing the test after limit.
func (h *harness) waitServer(t *testing.T, id string, limit time.Duration, what string, cond func(apitypes.Server) bool) apitypes.Server {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		s := h.server(id)
		if cond(s) {
			return s
		}
		if errs := h.rt.Failures(); len(errs) > 0 {
			t.Fatalf("server %s: a container failed to boot: %v", id, errs)
		}
		if time.Now().After(deadline) {
			b, _ := json.MarshalIndent(s, "", "  ")
			t.Fatalf("server %s: not %s after %v: %s", id, what, limit, b)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// waitFor polls cond every 250 ms until it returns "" (success) or limit
// passes; the last message explains the failure.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() string) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	for time.Since(start) < limit {
		if last = cond(); last == "" {
			return time.Since(start)
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("%s: not after %v: %s", what, limit, last)
	return 0
}

// sh runs a shell command in the container, failing the test if it cannot
// be run at all; it returns the output and exit code.
func sh(t *testing.T, m *nspawn.Machine, script string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := m.Exec(ctx, "sh", "-c", script)
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("%s: run %q: %v: %s", m.Name, script, err, out)
		}
		code = ee.ExitCode()
	}
	return strings.TrimSpace(string(out)), code
}

var tokenRE = regexp.MustCompile(`dpt_[A-Za-z0-9_-]+`)

// seedToken is the bootstrap token in the user-data the machine got.
func seedToken(t *testing.T, m *nspawn.Machine) string {
	t.Helper()
	tok := tokenRE.FindString(string(m.UserData))
	if tok == "" {
		t.Fatalf("%s: no bootstrap token in user-data", m.Name)
	}
	return tok
}

// enrollWith tries to enroll a fresh key as serverID with token over the
// hub's WebSocket and returns the hub's answer type and error code.
func (h *harness) enrollWith(t *testing.T, serverID, token string) (string, string) {
	t.Helper()
	url := "wss" + strings.TrimPrefix(h.env.App.URL, "https") + protocol.Path
	d := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: h.caPool}, HandshakeTimeout: 10 * time.Second}
	conn, resp, err := d.Dial(url, nil)
	if err != nil {
		t.Fatalf("dial hub: %v", err)
	}
	if resp != nil && resp.Body != nil {
		_ = resp.Body.Close()
	}
	defer func() { _ = conn.Close() }()
	_ = conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	var env protocol.Envelope
	if err := conn.ReadJSON(&env); err != nil || env.Type != protocol.TypeChallenge {
		t.Fatalf("hub: want challenge, got %+v (%v)", env, err)
	}
	var ch protocol.Challenge
	if err := json.Unmarshal(env.Data, &ch); err != nil {
		t.Fatal(err)
	}
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	hello := protocol.Hello{ServerID: serverID, Mode: protocol.ModeEnroll, BootstrapToken: token, PublicKey: pub,
		Signature: ed25519.Sign(priv, protocol.SignedMessage(ch.Nonce, serverID)), AgentVersion: "e2e-replay",
		Facts: protocol.Facts{Hostname: "attacker", OS: "linux", Arch: "amd64"}}
	msg, err := protocol.Encode(protocol.TypeHello, hello)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.WriteMessage(websocket.TextMessage, msg); err != nil {
		t.Fatalf("send hello: %v", err)
	}
	if err := conn.ReadJSON(&env); err != nil {
		return "closed", err.Error()
	}
	if env.Type != protocol.TypeError {
		return env.Type, ""
	}
	var pe protocol.Error
	_ = json.Unmarshal(env.Data, &pe)
	return env.Type, pe.Code
}
