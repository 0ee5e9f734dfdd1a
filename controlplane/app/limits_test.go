package app_test

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/benchscale"
	"github.com/devpilot/devpilot/controlplane/fdlimit"
	"github.com/devpilot/devpilot/shared/protocol"
)

// The file-limit test runs a control plane in a child process (this test
// binary again) whose RLIMIT_NOFILE, soft and hard, is fdTestLimit: set
// by the child itself before it execs again, so the Go runtime can't
// raise it.
const (
	fdChildEnv   = "DEVPILOT_FDTEST_STAGE" // "limit", then "serve"
	fdDirEnv     = "DEVPILOT_FDTEST_DIR"
	fdTestLimit  = 256
	fdTestReserv = 64
)

func fdChild() int {
	dir := os.Getenv(fdDirEnv)
	switch os.Getenv(fdChildEnv) {
	case "limit":
		rl := syscall.Rlimit{Cur: fdTestLimit, Max: fdTestLimit}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			fmt.Fprintln(os.Stderr, "setrlimit:", err)
			return 1
		}
		var env []string
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, fdChildEnv+"=") {
				env = append(env, kv)
			}
		}
		env = append(env, fdChildEnv+"=serve")
		err := syscall.Exec("/proc/self/exe", os.Args, env)
		fmt.Fprintln(os.Stderr, "exec:", err)
		return 1
	case "serve":
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		defer stop()
		if err := benchscale.Seed(ctx, dir, "", 200); err != nil {
			fmt.Fprintln(os.Stderr, "seed:", err)
			return 1
		}
		a, err := app.New(ctx, app.Config{DataDir: dir, Listen: "127.0.0.1:0", AgentListen: "127.0.0.1:0",
			FDReserve: fdTestReserv, AgentDir: dir, Out: io.Discard,
			DigitalOceanAPIURL: "http://127.0.0.1:1", VultrAPIURL: "http://127.0.0.1:1"})
		if err != nil {
			fmt.Fprintln(os.Stderr, "new:", err)
			return 1
		}
		defer func() { _ = a.Close() }()
		if err := a.Listen(); err != nil {
			fmt.Fprintln(os.Stderr, "listen:", err)
			return 1
		}
		fmt.Printf("READY %s %s\n", a.URL, a.AgentURL)
		if err := a.Serve(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "serve:", err)
			return 1
		}
		return 0
	}
	return 2
}

// A control plane at its open file limit refuses the next agents with
// the retryable busy code (and, past the slack, closes their connections
// at once) while /healthz and the admin API keep answering.
func TestFileLimitRefusesAgentsRetryably(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a control plane in a child process")
	}
	dir := t.TempDir()
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), fdChildEnv+"=limit", fdDirEnv+"="+dir)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("control plane child: %v", err)
		}
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "READY ") {
				lines <- sc.Text()
			}
		}
	}()
	var adminURL, agentURL string
	select {
	case l := <-lines:
		f := strings.Fields(l)
		adminURL, agentURL = f[1], f[2]
	case <-time.After(2 * time.Minute):
		t.Fatal("the control plane child did not start")
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, "tls", "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tc}}
	dialer := &websocket.Dialer{TLSClientConfig: tc, HandshakeTimeout: 10 * time.Second}
	wsURL := "wss" + strings.TrimPrefix(agentURL, "https") + protocol.Path

	capacity := fdlimit.Agents(fdTestLimit, fdTestReserv)
	for i := range capacity {
		conn := agentSession(t, dialer, wsURL, i)
		t.Cleanup(func() { _ = conn.Close() })
	}
	// One more: refused busy, with a retry hint and close code 1013.
	conn, _, err := dialer.Dial(wsURL, nil)
	if err != nil {
		t.Fatalf("dial past capacity: %v", err)
	}
	var env protocol.Envelope
	var pe protocol.Error
	if err := conn.ReadJSON(&env); err != nil || env.Type != protocol.TypeError || protocol.DecodeData(env, &pe) != nil {
		t.Fatalf("past capacity: got %+v, %v; want an error message", env, err)
	}
	if pe.Code != protocol.ErrBusy || pe.RetryAfterMS <= 0 {
		t.Errorf("past capacity: error %+v, want busy with retry_after_ms", pe)
	}
	_, _, err = conn.ReadMessage()
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != protocol.CloseTryAgainLater {
		t.Errorf("past capacity: closed with %v, want close code %d", err, protocol.CloseTryAgainLater)
	}
	_ = conn.Close()

	// Past the slack too: idle TCP connections to the agent listener,
	// more than the process has files for.
	for range fdTestLimit {
		c, err := net.DialTimeout("tcp", strings.TrimPrefix(agentURL, "https://"), 5*time.Second)
		if err != nil {
			t.Fatalf("tcp dial: %v", err)
		}
		t.Cleanup(func() { _ = c.Close() })
	}
	resp, err := hc.Get(adminURL + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz with the agent side full: %v %v", resp, err)
	}
	_ = resp.Body.Close()
	resp, err = hc.Get(adminURL + "/readyz")
	if err != nil {
		t.Fatalf("/readyz with the agent side full: %v", err)
	}
	defer func() { _ = resp.Body.Close() }()
	var ready struct {
		Agents struct {
			Connections, Capacity int
			NearCeiling           bool `json:"near_ceiling"`
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&ready); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/readyz: %s %v", resp.Status, err)
	}
	if ready.Agents.Capacity != capacity || !ready.Agents.NearCeiling || ready.Agents.Connections < capacity {
		t.Errorf("/readyz agents = %+v, want %d connections of %d, near the ceiling", ready.Agents, capacity, capacity)
	}
}

// agentSession authenticates seeded server i's agent and returns the
// welcomed connection.
func agentSession(t *testing.T, d *websocket.Dialer, url string, i int) *websocket.Conn {
	t.Helper()
	conn, _, err := d.Dial(url, nil)
	if err != nil {
		t.Fatalf("agent %d: dial: %v", i, err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	var env protocol.Envelope
	var ch protocol.Challenge
	if err := conn.ReadJSON(&env); err != nil || protocol.DecodeData(env, &ch) != nil {
		t.Fatalf("agent %d: challenge: %+v %v", i, env, err)
	}
	key := benchscale.Key(i)
	id := benchscale.ServerID(i)
	b, _ := protocol.Encode(protocol.TypeHello, protocol.Hello{ServerID: id, Mode: protocol.ModeAuth,
		PublicKey: key.Public().(ed25519.PublicKey), Signature: ed25519.Sign(key, protocol.SignedMessage(ch.Nonce, id)),
		AgentVersion: "test"})
	if err := conn.WriteMessage(websocket.TextMessage, b); err != nil {
		t.Fatalf("agent %d: hello: %v", i, err)
	}
	if err := conn.ReadJSON(&env); err != nil || env.Type != protocol.TypeWelcome {
		t.Fatalf("agent %d: got %+v %v, want welcome", i, env, err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	return conn
}
