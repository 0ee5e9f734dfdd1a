package update

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/agent/layout"
	"github.com/devpilot/devpilot/shared/protocol"
	"github.com/devpilot/devpilot/shared/release"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fixture struct {
	t      *testing.T
	p      layout.Paths
	key    ed25519.PrivateKey
	serve  map[string][]byte // path → body the "control plane" serves
	mu     sync.Mutex
	states []string
	gets   int
	armed  []string
}

// newFixture is a server running version A (installed under versions/A,
// current at it) and a control plane serving whatever f.serve holds.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	key, _ := release.GenerateKey()
	f := &fixture{t: t, p: layout.New(t.TempDir()), key: key, serve: map[string][]byte{}}
	if err := os.MkdirAll(filepath.Dir(f.p.VersionBinary("A")), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.p.VersionBinary("A"), []byte("agent A"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(f.p.StateDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := PointCurrent(f.p, "A"); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) updater(version string, keys ...ed25519.PublicKey) *Updater {
	if keys == nil {
		keys = []ed25519.PublicKey{f.key.Public().(ed25519.PublicKey)}
	}
	return New(Options{Paths: f.p, Keys: keys, Version: version, GOOS: "linux", GOARCH: "amd64", Window: time.Minute,
		ArmDeadline: func(_ context.Context, id string, _ time.Duration) error { f.armed = append(f.armed, id); return nil }})
}

// release signs body as version and returns the update message for it.
func (f *fixture) release(id, version string, body []byte) protocol.Update {
	s, err := release.Sign(f.key, bytes.NewReader(body), version, "linux", "amd64")
	if err != nil {
		f.t.Fatal(err)
	}
	path := "/v1/agent/releases/" + version + "/linux/amd64"
	f.serve[path] = body
	return protocol.Update{ID: id, Version: version, URL: path, SHA256: s.SHA256, Signature: s.Signature, Size: s.Size}
}

func (f *fixture) install(u *Updater, up protocol.Update) error {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.gets++
		b, ok := f.serve[r.URL.Path]
		f.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(b)
	}))
	defer srv.Close()
	get := func(ctx context.Context, path string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
		return srv.Client().Do(req)
	}
	return u.Install(context.Background(), up, get, func(st protocol.UpdateStatus) {
		f.mu.Lock()
		defer f.mu.Unlock()
		f.states = append(f.states, st.State+":"+st.Error)
	})
}

func (f *fixture) lastState() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.states) == 0 {
		return ""
	}
	return f.states[len(f.states)-1]
}

func TestInstallFlipsCurrentAndReportsAfterRestart(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	up := f.release("act_1", "B", []byte("agent B"))
	if err := f.install(f.updater("A"), up); err != nil {
		t.Fatal(err)
	}
	if CurrentVersion(f.p) != "B" {
		t.Errorf("current = %q, want B", CurrentVersion(f.p))
	}
	if b, _ := os.ReadFile(f.p.CurrentBinary()); string(b) != "agent B" {
		t.Errorf("current binary = %q", b)
	}
	if b, _ := os.ReadFile(f.p.VersionBinary("A")); string(b) != "agent A" {
		t.Error("the old version was not kept beside the new one")
	}
	m, ok := ReadPending(f.p)
	if !ok || m.ID != "act_1" || m.From != "A" || m.To != "B" || m.Deadline.IsZero() {
		t.Errorf("pending marker = %+v, %v", m, ok)
	}
	if len(f.armed) != 1 || f.armed[0] != "act_1" {
		t.Errorf("deadline armed for %v", f.armed)
	}
	f.mu.Lock()
	if got := strings.Join(f.states, " "); got != "downloading: verified: installing: restarting:" {
		t.Errorf("states = %s", got)
	}
	f.mu.Unlock()
	if b, _ := os.ReadFile(f.p.UpdateGuard()); !strings.Contains(string(b), "update guard") {
		t.Error("guard not installed")
	}

	// The same id again (a resumed control plane job): not installed twice.
	f.gets = 0
	if err := f.install(f.updater("A"), up); !errors.Is(err, ErrAlreadyHandled) || f.gets != 0 {
		t.Errorf("second install of act_1: %v, %d downloads", err, f.gets)
	}

	// The new binary: reports updated in its hello, clears the marker at
	// the welcome that acknowledges it.
	nb := f.updater("B")
	lu := nb.LastUpdate()
	if lu == nil || lu.ID != "act_1" || lu.Result != protocol.UpdateResultUpdated || lu.From != "A" || lu.To != "B" {
		t.Fatalf("new binary's last update = %+v", lu)
	}
	nb.Welcomed("act_1")
	if _, ok := ReadPending(f.p); ok {
		t.Error("marker kept after an authenticated session")
	}
	if lu := nb.LastUpdate(); lu != nil {
		t.Errorf("acknowledged outcome still reported: %+v", lu)
	}
}

// A welcome that does not acknowledge (an older hub) leaves the outcome
// reported at the next hello.
func TestUnacknowledgedOutcomeIsKept(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	if err := f.install(f.updater("A"), f.release("act_2", "B", []byte("agent B"))); err != nil {
		t.Fatal(err)
	}
	nb := f.updater("B")
	nb.Welcomed("")
	if _, ok := ReadPending(f.p); ok {
		t.Error("marker kept after a session")
	}
	if lu := nb.LastUpdate(); lu == nil || lu.ID != "act_2" || lu.Result != protocol.UpdateResultUpdated {
		t.Errorf("outcome lost: %+v", lu)
	}
	nb.Welcomed("act_2")
	if lu := nb.LastUpdate(); lu != nil {
		t.Errorf("still reported after the ack: %+v", lu)
	}
}

// The control plane serves a tampered binary with the real release's
// metadata (version, sha256, signature): the agent refuses it, reports
// it, and the old version stays current.
func TestTamperedBinaryRefused(t *testing.T) {
	t.Parallel()
	for name, tc := range map[string]struct {
		mutate func(f *fixture, up *protocol.Update)
		want   string
	}{
		"other bytes": {func(f *fixture, up *protocol.Update) { f.serve[up.URL] = []byte("evil B!") }, "sha256"},
		"truncated":   {func(f *fixture, up *protocol.Update) { f.serve[up.URL] = []byte("agent") }, "bytes"},
		"relabelled old release": {func(f *fixture, up *protocol.Update) {
			old := f.release("x", "0.9", []byte("agent 0.9"))
			up.SHA256, up.Size, up.Signature = old.SHA256, old.Size, old.Signature
			f.serve[up.URL] = []byte("agent 0.9")
		}, "signature"},
		"checksum swapped with the tampered binary's": {func(f *fixture, up *protocol.Update) {
			f.serve[up.URL] = []byte("evil B!")
			up.SHA256 = "5b7d6d8d3a9a2c9fd2a8b1e3c4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3"
		}, "signature"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			up := f.release("act_t", "B", []byte("agent B"))
			tc.mutate(f, &up)
			err := f.install(f.updater("A"), up)
			if err == nil {
				t.Fatal("tampered update installed")
			}
			if got := f.lastState(); !strings.HasPrefix(got, protocol.UpdateRefused+":") || !strings.Contains(got, tc.want) {
				t.Errorf("last status = %q, want refused mentioning %s", got, tc.want)
			}
			if CurrentVersion(f.p) != "A" {
				t.Errorf("current = %q after a refusal", CurrentVersion(f.p))
			}
			if _, err := os.Stat(filepath.Join(f.p.VersionsDir(), "B")); !os.IsNotExist(err) {
				t.Errorf("refused binary left under versions/: %v", err)
			}
			if _, ok := ReadPending(f.p); ok {
				t.Error("pending marker written for a refused update")
			}
			lu := f.updater("A").LastUpdate()
			if lu == nil || lu.ID != "act_t" || lu.Result != protocol.UpdateResultRefused {
				t.Errorf("refusal not recorded for the next hello: %+v", lu)
			}
		})
	}
}

// A release signed by a key the agent did not pin is refused before any
// download, even though the control plane vouches for it.
func TestUnpinnedKeyRefusedBeforeDownload(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	up := f.release("act_k", "B", []byte("agent B"))
	other, _ := release.GenerateKey()
	err := f.install(f.updater("A", other.Public().(ed25519.PublicKey)), up)
	if !errors.Is(err, release.ErrBadSignature) || f.gets != 0 {
		t.Errorf("unpinned key: %v after %d downloads", err, f.gets)
	}
	if err := f.install(New(Options{Paths: f.p, Version: "A"}), f.release("act_n", "B", []byte("agent B"))); !errors.Is(err, release.ErrBadSignature) {
		t.Errorf("no pinned key at all: %v", err)
	}
}

func TestInstallRefusesHostileMessage(t *testing.T) {
	t.Parallel()
	for name, mut := range map[string]func(*protocol.Update){
		"path in version": func(u *protocol.Update) { u.Version = "../../etc" },
		"foreign url":     func(u *protocol.Update) { u.URL = "//evil.example/x" },
		"huge":            func(u *protocol.Update) { u.Size = MaxBinaryBytes + 1 },
		"running version": func(u *protocol.Update) { u.Version = "A" },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t)
			up := f.release("act_h", "B", []byte("agent B"))
			mut(&up)
			if err := f.install(f.updater("A"), up); err == nil || f.gets != 0 || CurrentVersion(f.p) != "A" {
				t.Errorf("%s: %v, %d downloads, current %s", name, err, f.gets, CurrentVersion(f.p))
			}
		})
	}
	f := newFixture(t)
	up := f.release("bad id;rm", "B", []byte("agent B"))
	if err := f.install(f.updater("A"), up); err == nil {
		t.Error("bad id accepted")
	}
}

// The guard's rollback result is what the old binary reports.
func TestRolledBackResultReported(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	lu := protocol.LastUpdate{ID: "act_r", Result: protocol.UpdateResultRolledBack, From: "A", To: "B", Reason: "version B failed to start 3 times"}
	b, _ := json.Marshal(lu)
	if err := os.WriteFile(f.p.UpdateResult(), b, 0o600); err != nil {
		t.Fatal(err)
	}
	u := f.updater("A")
	if got := u.LastUpdate(); got == nil || *got != lu {
		t.Errorf("reported %+v, want %+v", got, lu)
	}
	u.Welcomed("act_other")
	if u.LastUpdate() == nil {
		t.Error("dropped on an ack for another id")
	}
	u.Welcomed("act_r")
	if u.LastUpdate() != nil {
		t.Error("kept after its ack")
	}
}

// A download cut short (the control plane killed mid-transfer) is tried
// again, and the update installs; a 404 is not retried.
func TestCutDownloadIsRetried(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	body := bytes.Repeat([]byte("agent B "), 4096)
	up := f.release("act_cut", "B", body)
	var mu sync.Mutex
	cuts := 2
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		f.gets++
		cut := cuts > 0
		cuts--
		mu.Unlock()
		if r.URL.Path != up.URL {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		if cut { // half the body, then the connection drops
			_, _ = w.Write(body[:len(body)/2])
			conn, _, _ := w.(http.Hijacker).Hijack()
			_ = conn.Close()
			return
		}
		_, _ = w.Write(body)
	}))
	defer srv.Close()
	get := func(ctx context.Context, path string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path, nil)
		return srv.Client().Do(req)
	}
	u := f.updater("A")
	u.o.DownloadRetry = time.Millisecond
	if err := u.Install(context.Background(), up, get, func(protocol.UpdateStatus) {}); err != nil {
		t.Fatalf("install after two cut downloads: %v", err)
	}
	if f.gets != 3 || CurrentVersion(f.p) != "B" {
		t.Errorf("%d downloads, current %q; want 3 and B", f.gets, CurrentVersion(f.p))
	}

	f.gets = 0
	missing := up
	missing.ID, missing.Version, missing.URL = "act_404", "C", "/v1/agent/releases/C/linux/amd64"
	s, _ := release.Sign(f.key, bytes.NewReader(body), "C", "linux", "amd64")
	missing.SHA256, missing.Signature = s.SHA256, s.Signature
	if err := f.updater("B").Install(context.Background(), missing, get, func(protocol.UpdateStatus) {}); err == nil || f.gets != 1 {
		t.Errorf("a 404: %v after %d downloads, want an error after 1", err, f.gets)
	}
}
