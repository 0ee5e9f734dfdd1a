package webhooks

import (
	"bytes"
	"context"
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

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/devpilot/devpilot/controlplane/events"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		goleak.IgnoreAnyFunction("database/sql.(*DB).connectionOpener"),
	)
}

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type fixture struct {
	t     *testing.T
	st    *store.Store
	keys  *secrets.Keyring
	clock *clock
	ws    string
	logs  *bytes.Buffer
	dir   string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(dir, "devpilot.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	keys, err := secrets.LoadOrCreateKeyring(filepath.Join(dir, "keyring.json"))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, st: st, keys: keys, clock: &clock{t: time.Now().UTC()}, ws: "ws_1", logs: &bytes.Buffer{}, dir: dir}
	if err := st.Q().CreateWorkspace(context.Background(), store.Workspace{ID: f.ws, Slug: "default", Name: "Default",
		CreatedAt: f.clock.Now().Add(-time.Hour)}); err != nil {
		t.Fatal(err)
	}
	return f
}

var logMu sync.Mutex

type lockedWriter struct{ b *bytes.Buffer }

func (w lockedWriter) Write(p []byte) (int, error) {
	logMu.Lock()
	defer logMu.Unlock()
	return w.b.Write(p)
}

func (f *fixture) service(p Policy, owner string) *Service {
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(lockedWriter{f.logs}), zap.DebugLevel))
	return New(Options{Store: f.st, Keys: f.keys, Logger: log, Policy: p, Now: f.clock.Now, Rand: func() float64 { return 1 },
		Owner: owner, Poll: 20 * time.Millisecond})
}

func (f *fixture) emit(typ, subject string) int64 {
	f.t.Helper()
	var id int64
	err := f.st.InTx(context.Background(), func(q *store.Queries) error {
		var err error
		id, err = q.AppendEvent(context.Background(), f.ws, typ, subject, map[string]string{"name": "web-1"})
		return err
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return id
}

// receiver is a real HTTP webhook receiver that verifies every request's
// signature and records the message ids it accepted.
type receiver struct {
	*httptest.Server
	secret   string
	fail     atomic.Int64 // answer 500 to this many more requests
	mu       sync.Mutex
	got      map[string]int // webhook-id → 2xx answers given
	bodies   map[string]Message
	requests atomic.Int64
	badSigs  atomic.Int64
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{got: map[string]int{}, bodies: map[string]Message{}}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.requests.Add(1)
		b, _ := io.ReadAll(req.Body)
		if !verify(r.secret, req.Header, b, time.Now()) && !verify(r.secret, req.Header, b, time.Unix(tsOf(req), 0)) {
			r.badSigs.Add(1)
			http.Error(w, "bad signature", http.StatusUnauthorized)
			return
		}
		if r.fail.Add(-1) >= 0 {
			http.Error(w, "down for maintenance", http.StatusInternalServerError)
			return
		}
		var m Message
		_ = json.Unmarshal(b, &m)
		r.mu.Lock()
		r.got[req.Header.Get(HeaderID)]++
		r.bodies[req.Header.Get(HeaderID)] = m
		r.mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(r.Close)
	return r
}

func tsOf(req *http.Request) int64 {
	var n int64
	_ = json.Unmarshal([]byte(req.Header.Get(HeaderTimestamp)), &n)
	return n
}

func (r *receiver) accepted() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for k, v := range r.got {
		out[k] = v
	}
	return out
}

func (f *fixture) create(s *Service, url string, pats ...string) (*Webhook, string) {
	f.t.Helper()
	if pats == nil {
		pats = []string{"*"}
	}
	w, secret, err := s.Create(context.Background(), "owner", f.ws, Spec{URL: &url, Events: pats})
	if err != nil {
		f.t.Fatal(err)
	}
	return w, secret.Reveal()
}

// A receiver answering 500 for a while, then 200, gets every event
// exactly once by id, each verified against its signature; the failed
// attempts are in the delivery log with their response codes.
func TestRetriesDeliverEveryEventOnceByID(t *testing.T) {
	f := newFixture(t)
	s := f.service(Policy{AllowLoopback: true}, "cp_a")
	rcv := newReceiver(t)
	w, secret := f.create(s, rcv.URL+"/hook", "server.*", "task.failed")
	rcv.secret = secret
	rcv.fail.Store(7)
	want := map[string]bool{}
	for _, typ := range []string{events.ServerOnline, events.TaskFailed, events.ServerCreated} {
		want[msgID(f.emit(typ, "srv_1"))] = true
	}
	f.emit(events.TaskSucceeded, "task_1") // not subscribed

	ctx := context.Background()
	for i := 0; i < 50 && len(rcv.accepted()) < len(want); i++ {
		if err := s.Step(ctx); err != nil {
			t.Fatal(err)
		}
		f.clock.Add(10 * time.Minute) // past every backoff so far
	}
	got := rcv.accepted()
	if len(got) != len(want) {
		t.Fatalf("receiver accepted %v, want ids %v", got, want)
	}
	for id, n := range got {
		if !want[id] || n != 1 {
			t.Errorf("message %s accepted %d times (want each subscribed event once)", id, n)
		}
	}
	if rcv.badSigs.Load() != 0 {
		t.Errorf("%d requests failed signature verification", rcv.badSigs.Load())
	}
	if n := rcv.requests.Load(); n != 7+3 {
		t.Errorf("%d requests, want 7 refused + 3 accepted", n)
	}
	ds, err := s.Deliveries(ctx, f.ws, w.ID, nil, 10)
	if err != nil || len(ds) != 3 {
		t.Fatalf("deliveries: %d %v", len(ds), err)
	}
	retried := 0
	for _, d := range ds {
		if d.State != store.DeliverySucceeded || d.ResponseCode != 200 || d.DeliveredAt == nil || d.ResponseExcerpt != "ok" {
			t.Errorf("delivery %+v", d)
		}
		if d.Attempts > 1 {
			retried++
		}
	}
	if retried == 0 {
		t.Error("no delivery shows its retries")
	}
	if depth, _, _ := f.st.Q().OutboxStats(ctx); depth != 0 {
		t.Errorf("outbox depth %d after delivery", depth)
	}
	if wh, _ := s.Get(ctx, f.ws, w.ID); wh.FailingSince != nil || !wh.Enabled {
		t.Errorf("after recovery: enabled=%v failing_since=%v", wh.Enabled, wh.FailingSince)
	}
}

// Run wakes on this process's event commits: an event appended is
// delivered without waiting for a poll (and the payload is the raw event).
func TestRunDeliversNewEvents(t *testing.T) {
	f := newFixture(t)
	f.clock = nil
	s := New(Options{Store: f.st, Keys: f.keys, Policy: Policy{AllowLoopback: true}, Poll: time.Hour})
	rcv := newReceiver(t)
	url := rcv.URL
	w, secret, err := s.Create(context.Background(), "owner", f.ws, Spec{URL: &url})
	if err != nil {
		t.Fatal(err)
	}
	rcv.secret = secret.Reveal()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	var id int64
	if err := f.st.InTx(ctx, func(q *store.Queries) error {
		id, err = q.AppendEvent(ctx, f.ws, events.ServerOnline, "srv_9", map[string]string{"name": "web-9"})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for rcv.accepted()[msgID(id)] == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("event %d not delivered within 30s (poll is 1h: the feed must wake the worker)", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
	rcv.mu.Lock()
	m := rcv.bodies[msgID(id)]
	rcv.mu.Unlock()
	if m.ID != id || m.Type != events.ServerOnline || m.Subject != "srv_9" || m.Workspace != f.ws || !strings.Contains(string(m.Data), "web-9") {
		t.Errorf("payload %+v", m)
	}
	_ = w
}

// A day of failures disables the webhook with a webhook.disabled event,
// and its undelivered deliveries end dead.
func TestADayOfFailuresDisablesTheWebhook(t *testing.T) {
	f := newFixture(t)
	s := f.service(Policy{AllowLoopback: true}, "cp_a")
	rcv := newReceiver(t)
	w, secret := f.create(s, rcv.URL)
	rcv.secret = secret
	rcv.fail.Store(1 << 30)
	f.emit(events.ServerOnline, "srv_1")
	ctx := context.Background()
	for i := 0; i < 40; i++ {
		if err := s.Step(ctx); err != nil {
			t.Fatal(err)
		}
		f.clock.Add(time.Hour)
	}
	wh, err := s.Get(ctx, f.ws, w.ID)
	if err != nil || wh.Enabled || !strings.Contains(wh.DisabledReason, "failed for 24h") {
		t.Fatalf("after 40h of 500s: enabled=%v reason=%q %v", wh.Enabled, wh.DisabledReason, err)
	}
	evs, err := f.st.Q().EventsAfter(ctx, f.ws, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var disabled *events.Event
	for i := range evs {
		if evs[i].Type == events.WebhookDisabled {
			disabled = &evs[i]
		}
	}
	if disabled == nil || disabled.Subject != w.ID || !strings.Contains(string(disabled.Data), "failed for 24h") {
		t.Fatalf("webhook.disabled event: %+v", disabled)
	}
	ds, _ := s.Deliveries(ctx, f.ws, w.ID, nil, 10)
	if len(ds) != 1 || ds[0].State != store.DeliveryDead || ds[0].ResponseCode != 500 || ds[0].Attempts < 5 {
		t.Errorf("delivery after disable: %+v", ds)
	}
	// Re-enabled, a redelivery goes through.
	rcv.fail.Store(0)
	on := true
	if _, err := s.Update(ctx, "owner", f.ws, w.ID, Spec{Enabled: &on}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Redeliver(ctx, "owner", f.ws, w.ID, ds[0].ID); err != nil {
		t.Fatal(err)
	}
	if err := s.Step(ctx); err != nil {
		t.Fatal(err)
	}
	if got := rcv.accepted()[ds[0].MessageID]; got != 1 {
		t.Errorf("redelivered message accepted %d times", got)
	}
}

// A 3xx is a failed attempt that says so; the redirect target is never
// contacted.
func TestRedirectsAreNotFollowed(t *testing.T) {
	f := newFixture(t)
	s := f.service(Policy{AllowLoopback: true}, "cp_a")
	var hit atomic.Int64
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { hit.Add(1) }))
	defer target.Close()
	redirector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.URL+"/elsewhere", http.StatusFound)
	}))
	defer redirector.Close()
	w, _ := f.create(s, redirector.URL)
	f.emit(events.ServerOnline, "srv_1")
	if err := s.Step(context.Background()); err != nil {
		t.Fatal(err)
	}
	ds, _ := s.Deliveries(context.Background(), f.ws, w.ID, nil, 10)
	if len(ds) != 1 || ds[0].State != store.DeliveryFailed || ds[0].ResponseCode != 302 ||
		!strings.Contains(ds[0].Error, "redirects are not followed") || ds[0].NextAttemptAt == nil {
		t.Fatalf("delivery: %+v", ds)
	}
	if hit.Load() != 0 {
		t.Error("the redirect target was contacted")
	}
}

// A host name that passed the door but resolves to an address the policy
// refuses (DNS rebinding) is refused at dial time: nothing is sent.
func TestDialTimeGuardRefusesResolvedInternalAddresses(t *testing.T) {
	f := newFixture(t)
	rcv := newReceiver(t)
	lenient := f.service(Policy{AllowLoopback: true}, "cp_a")
	url := strings.Replace(rcv.URL, "127.0.0.1", "localhost", 1)
	w, _ := f.create(lenient, url)
	strict := f.service(Policy{}, "cp_b") // the same store, without the loopback allowance
	f.emit(events.ServerOnline, "srv_1")
	if err := strict.Step(context.Background()); err != nil {
		t.Fatal(err)
	}
	ds, _ := strict.Deliveries(context.Background(), f.ws, w.ID, nil, 10)
	if len(ds) != 1 || ds[0].State != store.DeliveryFailed || !strings.Contains(ds[0].Error, "loopback address, refused") {
		t.Fatalf("delivery: %+v", ds)
	}
	if rcv.requests.Load() != 0 {
		t.Error("the refused address was sent a request")
	}
}

// Two control planes working one outbox never make the same attempt: each
// event reaches the receiver once.
func TestTwoWorkersShareTheOutbox(t *testing.T) {
	f := newFixture(t)
	a, b := f.service(Policy{AllowLoopback: true}, "cp_a"), f.service(Policy{AllowLoopback: true}, "cp_b")
	rcv := newReceiver(t)
	_, secret := f.create(a, rcv.URL)
	rcv.secret = secret
	for i := 0; i < 40; i++ {
		f.emit(events.TaskFailed, "task_x")
	}
	var wg sync.WaitGroup
	for _, s := range []*Service{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Step(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	got := rcv.accepted()
	if len(got) != 40 || rcv.requests.Load() != 40 {
		t.Fatalf("%d ids, %d requests; want 40 and 40", len(got), rcv.requests.Load())
	}
}

// The signing secret is shown once at creation and nowhere else: not in
// the webhook's view, logs, error text, or the database file.
func TestSecretCanary(t *testing.T) {
	f := newFixture(t)
	s := f.service(Policy{AllowLoopback: true}, "cp_a")
	rcv := newReceiver(t)
	canary := "whsec_" + "Y2FuYXJ5LWNhbmFyeS1jYW5hcnktY2FuYXJ5LWNhbmFyeQ=="
	url := rcv.URL
	w, shown, err := s.Create(context.Background(), "owner", f.ws, Spec{URL: &url, Secret: secrets.New(canary)})
	if err != nil || shown.Reveal() != canary {
		t.Fatalf("create: %v", err)
	}
	rcv.secret = canary
	rcv.fail.Store(1)
	f.emit(events.ServerOnline, "srv_1")
	for i := 0; i < 3; i++ {
		_ = s.Step(context.Background())
		f.clock.Add(time.Hour)
	}
	if len(rcv.accepted()) != 1 {
		t.Fatal("the canary webhook's event was not delivered")
	}
	view, _ := s.Get(context.Background(), f.ws, w.ID)
	ds, _ := s.Deliveries(context.Background(), f.ws, w.ID, nil, 10)
	blob, _ := json.Marshal([]any{view, ds})
	bad := "whsec_" + "bm90LWJhc2U2NA!!"
	_, _, errBad := s.Create(context.Background(), "owner", f.ws, Spec{URL: &url, Secret: secrets.New(bad)})
	if errBad == nil {
		t.Fatal("a malformed secret was accepted")
	}
	_ = f.st.Close()
	var db []byte
	for _, suffix := range []string{"", "-wal", "-shm"} {
		b, _ := os.ReadFile(filepath.Join(f.dir, "devpilot.db") + suffix)
		db = append(db, b...)
	}
	logMu.Lock()
	logs := f.logs.String()
	logMu.Unlock()
	for what, text := range map[string]string{"view": string(blob), "logs": logs, "database": string(db), "error": errBad.Error()} {
		for _, sec := range []string{canary, canary[6:], bad[6:]} {
			if strings.Contains(text, sec) {
				t.Errorf("the secret appears in the %s", what)
			}
		}
	}
}

func TestBackoffIsExponentialWithFullJitter(t *testing.T) {
	s := New(Options{Rand: func() float64 { return 1 }})
	prev := time.Duration(0)
	for n := 1; n <= 20; n++ {
		d := s.backoff(n)
		if d < prev || d > DefaultRetryCap {
			t.Errorf("attempt %d: %s after %s", n, d, prev)
		}
		prev = d
	}
	if s.backoff(1) != DefaultRetryBase || s.backoff(3) != 4*DefaultRetryBase || s.backoff(30) != DefaultRetryCap {
		t.Errorf("ceilings: %s %s %s", s.backoff(1), s.backoff(3), s.backoff(30))
	}
	s.o.Rand = func() float64 { return 0.25 }
	if s.backoff(3) != DefaultRetryBase {
		t.Errorf("jitter: %s, want a quarter of the ceiling", s.backoff(3))
	}
}

func TestSlackFormatIsOneReadableLine(t *testing.T) {
	m := Message{ID: 7, Type: events.ServerOnline, Subject: "srv_1", Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Data: json.RawMessage(`{"name":"<web-1>","state":"online"}`)}
	b, err := body(FormatSlack, m)
	if err != nil {
		t.Fatal(err)
	}
	var out map[string]string
	if err := json.Unmarshal(b, &out); err != nil || len(out) != 1 {
		t.Fatalf("%s: %v", b, err)
	}
	want := "*server.online* srv_1 (name=&lt;web-1&gt;, state=online) · 2026-01-02T03:04:05Z"
	if out["text"] != want {
		t.Errorf("text %q, want %q", out["text"], want)
	}
}
