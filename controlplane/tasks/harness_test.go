package tasks_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
	"github.com/devpilot/devpilot/controlplane/tcplb"
	"github.com/devpilot/devpilot/shared/protocol"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// cp is a control plane (app.App on a temp dir, plain HTTP on loopback)
// with an API client.
type cp struct {
	t        testing.TB
	app      *app.App // the first control plane (with replicas, one of them)
	url      string   // where the API and the agents reach it (with replicas, the balancer)
	replicas int
	token    string
	wsID     string
	client   *http.Client
}

func startCP(t testing.TB) *cp { return startCPWith(t, nil) }

// startCPWith is startCP with the configuration changed by tweak.
func startCPWith(t testing.TB, tweak func(*app.Config)) *cp {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cfg := app.Config{DataDir: dir, Database: storetest.Database(t), Listen: "127.0.0.1:0", TLS: app.TLSOff, Out: io.Discard,
		AgentDir: t.TempDir(), HeartbeatInterval: time.Second,
		TaskSweepInterval: 20 * time.Millisecond, TaskDeadlineGrace: 10 * time.Millisecond}
	if tweak != nil {
		tweak(&cfg)
	}
	n := storetest.Replicas(t) // make test-postgres-active
	if n > 1 {
		cfg.Mode = app.ModeActive
	}
	var apps []*app.App
	var backends []string
	for i := range n {
		ci := cfg
		if i > 0 {
			// Every control plane of a database shares its keyring and
			// its TLS certificate (agents pin the CA).
			ci.DataDir = t.TempDir()
			files := []string{"keyring.json"}
			if cfg.TLS != app.TLSOff {
				files = append(files, "tls/ca.crt", "tls/ca.key", "tls/server.crt", "tls/server.key")
			}
			for _, f := range files {
				b, err := os.ReadFile(filepath.Join(dir, f))
				if err != nil {
					t.Fatal(err)
				}
				if err := os.MkdirAll(filepath.Dir(filepath.Join(ci.DataDir, f)), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(ci.DataDir, f), b, 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
		a, err := app.New(ctx, ci)
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Listen(); err != nil {
			t.Fatal(err)
		}
		apps = append(apps, a)
		backends = append(backends, strings.TrimPrefix(strings.TrimPrefix(a.URL, "http://"), "https://"))
	}
	a := apps[0]
	url := a.URL
	if n > 1 {
		lb, err := tcplb.Listen("127.0.0.1:0", backends)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = lb.Close() })
		url = strings.SplitN(a.URL, "://", 2)[0] + "://" + lb.Addr()
	}
	dones := make([]chan error, n)
	for i, ai := range apps {
		dones[i] = make(chan error, 1)
		go func() { dones[i] <- ai.Serve(ctx) }()
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	if cfg.TLS != app.TLSOff {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(a.CACertPEM)
		tr.TLSClientConfig = &tls.Config{RootCAs: pool}
	}
	c := &cp{t: t, app: a, url: url, replicas: n, client: &http.Client{Transport: tr}}
	t.Cleanup(func() {
		cancel()
		for i, ai := range apps {
			if err := <-dones[i]; err != nil {
				t.Errorf("serve: %v", err)
			}
			_ = ai.Close()
		}
		c.client.CloseIdleConnections()
	})
	b, err := os.ReadFile(filepath.Join(dir, app.OwnerTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	c.token = strings.TrimSpace(string(b))
	ws, err := a.Store.Q().WorkspaceBySlug(ctx, app.DefaultWS)
	if err != nil {
		t.Fatal(err)
	}
	c.wsID = ws.ID
	return c
}

const wsBase = "/v1/workspaces/default"

// call sends a request with token (the owner's if "") and decodes the answer.
func (c *cp) call(token, method, path string, body, out any) int {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.url+path, rd)
	if err != nil {
		c.t.Fatal(err)
	}
	if token == "" {
		token = c.token
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.client.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			c.t.Fatalf("%s %s: decode %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode
}

// server inserts a server whose agent is enrolled with a fresh key, as
// provisioning would have left it (offline until its agent connects).
func (c *cp) server(name string) *fakeAgent {
	c.t.Helper()
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Now().UTC()
	id := ids.New("srv")
	ctx := context.Background()
	err := c.app.Store.InTx(ctx, func(q *store.Queries) error {
		if err := q.CreateServer(ctx, store.Server{ID: id, WorkspaceID: c.wsID, Provider: "digitalocean", Name: name,
			Region: "nyc3", Size: "s-1vcpu-1gb", Image: "debian-12", PortsJSON: "[22]", State: "offline",
			AgentTimeoutS: 900, CreatedAt: now, UpdatedAt: now}, nil); err != nil {
			return err
		}
		return q.SaveAgentKey(ctx, id, pub, now)
	})
	if err != nil {
		c.t.Fatal(err)
	}
	return &fakeAgent{t: c.t, id: id, priv: priv, url: "ws" + strings.TrimPrefix(c.url, "http") + protocol.Path}
}

type taskView struct {
	ID                string                `json:"id"`
	ServerID          string                `json:"server_id"`
	DeploymentID      string                `json:"deployment_id"`
	Kind              string                `json:"kind"`
	State             string                `json:"state"`
	Reason            string                `json:"reason"`
	ExitCode          *int                  `json:"exit_code"`
	Attempts          int                   `json:"attempts"`
	SentAt            *time.Time            `json:"sent_at"`
	StartedAt         *time.Time            `json:"started_at"`
	FinishedAt        *time.Time            `json:"finished_at"`
	CancelRequestedAt *time.Time            `json:"cancel_requested_at"`
	Steps             []protocol.StepResult `json:"steps"`
	SHA256            string                `json:"sha256"`
	Log               struct {
		Seq       int64 `json:"seq"`
		Truncated bool  `json:"truncated"`
	} `json:"log"`
	Spec protocol.Task `json:"spec"`
}

type apiError struct {
	Error struct{ Code, Message, Hint string } `json:"error"`
}

func (c *cp) createTask(serverID string, spec any) taskView {
	c.t.Helper()
	var v taskView
	var e apiError
	var raw json.RawMessage
	if code := c.call("", "POST", wsBase+"/servers/"+serverID+"/tasks", spec, &raw); code != http.StatusAccepted {
		_ = json.Unmarshal(raw, &e)
		c.t.Fatalf("create task: %d %+v", code, e)
	}
	_ = json.Unmarshal(raw, &v)
	return v
}

func (c *cp) task(id string) taskView {
	c.t.Helper()
	var v taskView
	if code := c.call("", "GET", wsBase+"/tasks/"+id, nil, &v); code != http.StatusOK {
		c.t.Fatalf("get task %s: %d", id, code)
	}
	return v
}

// waitTask polls the API until cond holds (or fails the test after a
// minute: generous, so a busy machine is slow, not failing).
func (c *cp) waitTask(id, what string, cond func(taskView) bool) taskView {
	c.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		v := c.task(id)
		if cond(v) {
			return v
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("task %s: gave up waiting for %s; last %+v", id, what, v)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// fakeAgent speaks shared/protocol like devpilot-agent would, with its
// task behaviour scripted by the test.
type fakeAgent struct {
	t    testing.TB
	id   string
	priv ed25519.PrivateKey
	url  string

	// onTask, if set, runs for every task message (on the reader goroutine).
	onTask   func(a *fakeAgent, t protocol.Task)
	onCancel func(a *fakeAgent, c protocol.Cancel)

	wmu  sync.Mutex
	conn *websocket.Conn
	done chan struct{}

	mu      sync.Mutex
	changed chan struct{}
	tasks   []protocol.Task
	cancels []string
	acks    []protocol.TaskAck
}

// connect runs the handshake (auth mode) and starts reading.
func (a *fakeAgent) connect() {
	a.t.Helper()
	if err := a.dial(); err != nil {
		a.t.Fatalf("agent %s: %v", a.id, err)
	}
}

func (a *fakeAgent) dial() error {
	conn, _, err := websocket.DefaultDialer.Dial(a.url, nil)
	if err != nil {
		return err
	}
	var ch protocol.Challenge
	if err := readData(conn, protocol.TypeChallenge, &ch); err != nil {
		_ = conn.Close()
		return err
	}
	hello := protocol.Hello{ServerID: a.id, Mode: protocol.ModeAuth, PublicKey: a.priv.Public().(ed25519.PublicKey),
		Signature: ed25519.Sign(a.priv, protocol.SignedMessage(ch.Nonce, a.id)), AgentVersion: "fake"}
	b, _ := protocol.Encode(protocol.TypeHello, hello)
	if err := conn.WriteMessage(websocket.TextMessage, b); err != nil {
		_ = conn.Close()
		return err
	}
	var w protocol.Welcome
	if err := readData(conn, protocol.TypeWelcome, &w); err != nil {
		_ = conn.Close()
		return err
	}
	a.mu.Lock()
	if a.changed == nil {
		a.changed = make(chan struct{})
	}
	a.mu.Unlock()
	a.wmu.Lock()
	a.conn = conn
	a.wmu.Unlock()
	a.done = make(chan struct{})
	go a.read(conn, a.done)
	return nil
}

func readData(conn *websocket.Conn, typ string, v any) error {
	_ = conn.SetReadDeadline(time.Now().Add(time.Minute))
	_, b, err := conn.ReadMessage()
	if err != nil {
		return err
	}
	_ = conn.SetReadDeadline(time.Time{})
	env, err := protocol.Decode(b)
	if err != nil {
		return err
	}
	if env.Type != typ {
		return fmt.Errorf("expected %s, got %s: %s", typ, env.Type, env.Data)
	}
	return protocol.DecodeData(env, v)
}

func (a *fakeAgent) read(conn *websocket.Conn, done chan struct{}) {
	defer close(done)
	for {
		_, b, err := conn.ReadMessage()
		if err != nil {
			return
		}
		env, err := protocol.Decode(b)
		if err != nil {
			continue
		}
		switch env.Type {
		case protocol.TypeTask:
			var t protocol.Task
			if protocol.DecodeData(env, &t) == nil {
				a.record(func() { a.tasks = append(a.tasks, t) })
				if a.onTask != nil {
					a.onTask(a, t)
				}
			}
		case protocol.TypeCancel:
			var c protocol.Cancel
			if protocol.DecodeData(env, &c) == nil {
				a.record(func() { a.cancels = append(a.cancels, c.TaskID) })
				if a.onCancel != nil {
					a.onCancel(a, c)
				}
			}
		case protocol.TypeTaskAck:
			var ack protocol.TaskAck
			if protocol.DecodeData(env, &ack) == nil {
				a.record(func() { a.acks = append(a.acks, ack) })
			}
		}
	}
}

func (a *fakeAgent) record(fn func()) {
	a.mu.Lock()
	fn()
	close(a.changed)
	a.changed = make(chan struct{})
	a.mu.Unlock()
}

// send writes one message to the hub.
func (a *fakeAgent) send(typ string, payload any) {
	b, err := protocol.Encode(typ, payload)
	if err != nil {
		a.t.Errorf("encode: %v", err)
		return
	}
	a.wmu.Lock()
	defer a.wmu.Unlock()
	if a.conn == nil {
		return
	}
	_ = a.conn.WriteMessage(websocket.TextMessage, b)
}

// disconnect drops the connection (like a network failure) and waits for
// the reader to stop.
func (a *fakeAgent) disconnect() {
	a.wmu.Lock()
	conn := a.conn
	a.conn = nil
	a.wmu.Unlock()
	if conn != nil {
		_ = conn.Close()
		<-a.done
	}
}

// wait blocks until cond holds over the agent's records (a minute at most).
func (a *fakeAgent) wait(what string, cond func() bool) {
	a.t.Helper()
	timeout := time.After(time.Minute)
	for {
		a.mu.Lock()
		ok, ch := cond(), a.changed
		a.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-timeout:
			a.t.Fatalf("agent %s: gave up waiting for %s", a.id, what)
		}
	}
}

// received returns a copy of the tasks received so far.
func (a *fakeAgent) received() []protocol.Task {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.tasks)
}

// ackCount is how many acks arrived.
func (a *fakeAgent) ackCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.acks)
}

// count is taskCount under the lock.
func (a *fakeAgent) count(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.taskCount(id)
}

func (a *fakeAgent) taskCount(id string) int {
	n := 0
	for _, t := range a.tasks {
		if t.ID == id {
			n++
		}
	}
	return n
}

func (a *fakeAgent) lastAck(id string) (protocol.TaskAck, bool) {
	for i := len(a.acks) - 1; i >= 0; i-- {
		if a.acks[i].TaskID == id {
			return a.acks[i], true
		}
	}
	return protocol.TaskAck{}, false
}

// ---- agent behaviours

func intp(n int) *int { return &n }

// runs answers every task: running, one output line, then the final state
// (failed with exit 1 if fail(t) says so).
func runs(fail func(a *fakeAgent, t protocol.Task) bool) func(a *fakeAgent, t protocol.Task) {
	return func(a *fakeAgent, t protocol.Task) {
		now := time.Now()
		a.send(protocol.TypeTaskResult, protocol.TaskResult{TaskID: t.ID, State: protocol.TaskRunning, StartedAt: now})
		a.send(protocol.TypeTaskLog, protocol.TaskLog{TaskID: t.ID, Seq: 1, Stream: protocol.StreamStdout, Data: []byte("hello from " + a.id + "\n")})
		r := protocol.TaskResult{TaskID: t.ID, State: protocol.TaskSucceeded, ExitCode: intp(0), StartedAt: now, FinishedAt: &now, LastLogSeq: 1}
		if fail != nil && fail(a, t) {
			r.State, r.ExitCode = protocol.TaskFailed, intp(1)
		}
		a.send(protocol.TypeTaskResult, r)
	}
}
