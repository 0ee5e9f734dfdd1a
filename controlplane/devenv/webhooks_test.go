package devenv_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/bootstrap/sandbox"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
)

const webhooksPath = "/v1/workspaces/default/webhooks"

// signatureOK verifies a Standard Webhooks request as a receiver would,
// written from the specification: HMAC-SHA256 with the base64-decoded key
// after "whsec_" over "id.timestamp.body", one of the space-separated
// "v1,<base64>" signatures matching.
func signatureOK(secret string, h http.Header, body []byte) bool {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(h.Get("webhook-id") + "." + h.Get("webhook-timestamp") + "."))
	mac.Write(body)
	want := mac.Sum(nil)
	for _, s := range strings.Fields(h.Get("webhook-signature")) {
		if enc, ok := strings.CutPrefix(s, "v1,"); ok {
			if got, err := base64.StdEncoding.DecodeString(enc); err == nil && hmac.Equal(got, want) {
				return true
			}
		}
	}
	return false
}

type hookMessage struct {
	ID        int64           `json:"id"`
	Type      string          `json:"type"`
	Subject   string          `json:"subject"`
	Workspace string          `json:"workspace"`
	Data      json.RawMessage `json:"data"`
}

// hookReceiver is a webhook receiver over real HTTP: it refuses requests
// whose signature does not verify, answers 500 while failing is set (or to
// the next `failN` requests), and counts what it accepted by webhook-id.
type hookReceiver struct {
	*httptest.Server
	mu       sync.Mutex
	secret   string
	failing  atomic.Bool
	failN    atomic.Int64
	requests atomic.Int64
	badSig   atomic.Int64
	accepted map[string]int
	messages map[string]hookMessage
}

func newHookReceiver(t *testing.T) *hookReceiver {
	r := &hookReceiver{accepted: map[string]int{}, messages: map[string]hookMessage{}}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.requests.Add(1)
		b, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		secret := r.secret
		r.mu.Unlock()
		if !signatureOK(secret, req.Header, b) {
			r.badSig.Add(1)
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		if r.failing.Load() || r.failN.Add(-1) >= 0 {
			http.Error(w, "receiver down", http.StatusInternalServerError)
			return
		}
		var m hookMessage
		_ = json.Unmarshal(b, &m)
		r.mu.Lock()
		r.accepted[req.Header.Get("webhook-id")]++
		r.messages[req.Header.Get("webhook-id")] = m
		r.mu.Unlock()
	}))
	t.Cleanup(r.Close)
	return r
}

// find returns the accepted message of that type and subject.
func (r *hookReceiver) find(typ, subject string) (hookMessage, string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, m := range r.messages {
		if m.Type == typ && m.Subject == subject {
			return m, id, true
		}
	}
	return hookMessage{}, "", false
}

func (r *hookReceiver) waitFor(t *testing.T, typ, subject string, limit time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		if _, id, ok := r.find(typ, subject); ok {
			return id
		}
		if time.Now().After(deadline) {
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("receiver never accepted %s for %s within %s (accepted %v, %d requests, %d bad signatures)",
				typ, subject, limit, r.messages, r.requests.Load(), r.badSig.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type createdWebhook struct {
	ID     string `json:"id"`
	Secret string `json:"secret"`
}

// A receiver gets server.online for a new server and task.failed for a
// failing task, each verified against its signature; it answered 500 to
// the first attempts and still got every event exactly once by id.
func TestWebhooksDeliverServerAndTaskEvents(t *testing.T) {
	h := start(t)
	rcv := newHookReceiver(t)
	rcv.failN.Store(2)
	var wh createdWebhook
	if c := h.api("POST", webhooksPath, map[string]any{"url": rcv.URL + "/devpilot", "events": []string{"server.online", "task.failed"}}, &wh); c != 201 {
		t.Fatalf("create webhook: %d", c)
	}
	rcv.mu.Lock()
	rcv.secret = wh.Secret
	rcv.mu.Unlock()

	srv := onlineServers(t, h, 1)[0]
	task := runTask(t, h.api, srv.ID, map[string]any{"kind": "exec", "argv": []string{"/bin/false"}})
	waitTask(t, h.api, task.ID, time.Minute, "final", final)

	rcv.waitFor(t, "server.online", srv.ID, 2*time.Minute)
	rcv.waitFor(t, "task.failed", task.ID, 2*time.Minute)
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	for id, n := range rcv.accepted {
		if n != 1 {
			t.Errorf("message %s (%s) accepted %d times, want once", id, rcv.messages[id].Type, n)
		}
		if m := rcv.messages[id]; m.Type != "server.online" && m.Type != "task.failed" {
			t.Errorf("unsubscribed %s delivered", m.Type)
		}
	}
	if rcv.badSig.Load() != 0 {
		t.Errorf("%d deliveries failed signature verification", rcv.badSig.Load())
	}
	if rcv.requests.Load() < int64(len(rcv.accepted))+2 {
		t.Errorf("%d requests for %d messages: the two 500s were not retried", rcv.requests.Load(), len(rcv.accepted))
	}
}

// A control plane SIGKILLed while deliveries are pending (the receiver
// answered 500) delivers them after it restarts.
func TestWebhookDeliveriesSurviveSIGKILL(t *testing.T) {
	machines := sandbox.New(sandbox.Options{Dir: filepath.Join(t.TempDir(), "machines"), Logger: zap.NewNop()})
	t.Cleanup(func() { _ = machines.Close() })
	do := dosim.New(dosim.Options{Runtime: machines, BootDelay: 100 * time.Millisecond})
	t.Cleanup(do.Close)
	sim := httptest.NewServer(do.Handler())
	t.Cleanup(sim.Close)
	token := "dop_v1_" + strings.Repeat("8", 64)
	do.AddToken(token, true)

	dataDir := t.TempDir()
	addr := freeAddr(t)
	logf, err := os.Create(filepath.Join(t.TempDir(), "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = logf.Close() }()
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("serve log (last 4 KiB):\n%s", b[max(0, len(b)-4096):])
		}
	})
	p := &serveProc{t: t, dataDir: dataDir, url: "https://" + addr, log: logf, env: databaseEnv(t), args: []string{"serve",
		"--data-dir", dataDir, "--listen", addr, "--digitalocean-api-url", sim.URL, "--agent-dir", agentDir,
		"--webhooks-allow-loopback", "--log-level", "debug"}}
	p.start()
	t.Cleanup(p.kill)

	rcv := newHookReceiver(t)
	rcv.failing.Store(true)
	var wh createdWebhook
	if c := p.do("POST", webhooksPath, map[string]any{"url": rcv.URL, "events": []string{"server.created"}}, &wh); c != 201 {
		t.Fatalf("create webhook: %d", c)
	}
	rcv.mu.Lock()
	rcv.secret = wh.Secret
	rcv.mu.Unlock()
	var in integration
	if c := p.do("POST", base, map[string]string{"provider": "digitalocean", "access_key": "do", "secret_key": token}, &in); c != 201 {
		t.Fatalf("connect: %d", c)
	}
	var s server
	if c := p.do("POST", servers, map[string]any{"integration_id": in.ID, "name": "hooked", "region": "nyc3",
		"size": "s-1vcpu-1gb", "image": "debian-12"}, &s); c != 202 {
		t.Fatalf("create server: %d", c)
	}
	// Wait for the first (refused) attempt: the delivery is now pending a retry.
	deadline := time.Now().Add(time.Minute)
	for rcv.requests.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no delivery attempt within a minute; see %s", logf.Name())
		}
		time.Sleep(10 * time.Millisecond)
	}
	var ds struct {
		Deliveries []struct {
			Status   string `json:"status"`
			Attempts int    `json:"attempts"`
		} `json:"deliveries"`
	}
	for {
		p.do("GET", webhooksPath+"/"+wh.ID+"/deliveries", nil, &ds)
		if len(ds.Deliveries) == 1 && ds.Deliveries[0].Status == "failed" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("delivery log %+v, want one failed delivery awaiting its retry", ds)
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.kill()
	rcv.failing.Store(false)
	p.start()

	id := rcv.waitFor(t, "server.created", s.ID, 2*time.Minute)
	deadline = time.Now().Add(time.Minute)
	for {
		p.do("GET", webhooksPath+"/"+wh.ID+"/deliveries", nil, &ds)
		if len(ds.Deliveries) == 1 && ds.Deliveries[0].Status == "succeeded" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after restart the log shows %+v", ds)
		}
		time.Sleep(20 * time.Millisecond)
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	if rcv.accepted[id] != 1 || ds.Deliveries[0].Attempts < 2 {
		t.Errorf("message %s accepted %d times after %d attempts", id, rcv.accepted[id], ds.Deliveries[0].Attempts)
	}
}
