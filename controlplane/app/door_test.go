package app_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/auth"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
)

// door is a control plane served on loopback with TLS auto, and a client
// that trusts it.
type door struct {
	a     *app.App
	dir   string
	db    string // Config.Database
	out   *bytes.Buffer
	logs  *observer.ObservedLogs
	c     *http.Client
	tls   *tls.Config
	owner string
}

func startDoor(t *testing.T, dir string, tune func(*app.Config)) *door {
	t.Helper()
	core, logs := observer.New(zap.InfoLevel)
	d := &door{dir: dir, out: &bytes.Buffer{}, logs: logs}
	cfg := app.Config{DataDir: dir, Database: storetest.Database(t), Listen: "127.0.0.1:0", TLS: app.TLSAuto, Out: d.out, Logger: zap.New(core),
		AgentDir: t.TempDir(), DigitalOceanAPIURL: "http://127.0.0.1:1", VultrAPIURL: "http://127.0.0.1:1"}
	if tune != nil {
		tune(&cfg)
	}
	d.db = cfg.Database
	a, err := app.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Listen(); err != nil {
		_ = a.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		_ = a.Close()
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(a.CACertPEM)
	d.a, d.tls = a, &tls.Config{RootCAs: pool}
	tr := &http.Transport{TLSClientConfig: d.tls}
	t.Cleanup(tr.CloseIdleConnections)
	d.c = &http.Client{Transport: tr, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if b, err := os.ReadFile(filepath.Join(dir, app.OwnerTokenFile)); err == nil {
		d.owner = strings.TrimSpace(string(b))
	}
	return d
}

type answer struct {
	code   int
	header http.Header
	body   string
	err    struct {
		Code, Message, Hint string
	}
}

func (d *door) do(t *testing.T, token, method, path string, in any) answer {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, d.a.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := d.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	a := answer{code: resp.StatusCode, header: resp.Header, body: string(b)}
	var eb struct {
		Error struct{ Code, Message, Hint string }
	}
	if json.Unmarshal(b, &eb) == nil {
		a.err = eb.Error
	}
	return a
}

// TestFirstStartSaysWhereTheOwnerTokenIsNotWhatItIs: under systemd stdout
// is the journal, so the token must not be printed.
func TestFirstStartSaysWhereTheOwnerTokenIsNotWhatItIs(t *testing.T) {
	t.Parallel()
	d := startDoor(t, t.TempDir(), nil)
	path := filepath.Join(d.dir, app.OwnerTokenFile)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("owner token file: %v %v", fi, err)
	}
	if !strings.HasPrefix(d.owner, "dpt_") {
		t.Fatalf("owner token file holds %q…", d.owner[:min(4, len(d.owner))])
	}
	out := d.out.String()
	if strings.Contains(out, d.owner) || regexp.MustCompile(`dpt_\w+`).MatchString(out) {
		t.Error("the first start printed the owner token")
	}
	if !strings.Contains(out, path) {
		t.Errorf("the first start does not say where the token is: %q", out)
	}
	for _, e := range d.logs.All() {
		if strings.Contains(fmt.Sprint(e.Message, e.ContextMap()), d.owner) {
			t.Error("the log holds the owner token")
		}
	}
	if a := d.do(t, d.owner, "GET", "/v1/whoami", nil); a.code != 200 {
		t.Errorf("owner token from the file: %d %s", a.code, a.body)
	}
}

// TestOwnerTokensAreTheOwnersOnly: an admin can neither see nor revoke
// the owner token, and the owner cannot revoke the last one.
func TestOwnerTokensAreTheOwnersOnly(t *testing.T) {
	t.Parallel()
	d := startDoor(t, t.TempDir(), nil)
	ownerID, _, _ := auth.Parse(d.owner)
	a := d.do(t, d.owner, "POST", "/v1/workspaces/default/tokens", map[string]string{"name": "ops", "role": "admin"})
	if a.code != 201 {
		t.Fatalf("create admin token: %d %s", a.code, a.body)
	}
	var admin struct{ ID, Token string }
	_ = json.Unmarshal([]byte(a.body), &admin)

	listed := func(token string) []string {
		a := d.do(t, token, "GET", "/v1/workspaces/default/tokens", nil)
		var l struct{ Tokens []struct{ ID, Role string } }
		if err := json.Unmarshal([]byte(a.body), &l); a.code != 200 || err != nil {
			t.Fatalf("list tokens: %d %v", a.code, err)
		}
		var out []string
		for _, t := range l.Tokens {
			out = append(out, t.Role+":"+t.ID)
		}
		return out
	}
	if got := listed(admin.Token); len(got) != 1 || got[0] != "admin:"+admin.ID {
		t.Errorf("the admin lists %v", got)
	}
	if got := listed(d.owner); len(got) != 2 {
		t.Errorf("the owner lists %v", got)
	}
	if a := d.do(t, admin.Token, "DELETE", "/v1/workspaces/default/tokens/"+ownerID, nil); a.code != 404 {
		t.Errorf("admin revokes the owner token: %d %s", a.code, a.body)
	}
	if a := d.do(t, d.owner, "POST", "/v1/keys/rotate", nil); a.code != 200 {
		t.Errorf("owner after the admin's attempt: keys rotate %d %s", a.code, a.body)
	}
	a = d.do(t, d.owner, "DELETE", "/v1/workspaces/default/tokens/"+ownerID, nil)
	if a.code != 409 || a.err.Code != "conflict" || !strings.Contains(a.err.Hint, "devpilot tokens recover") {
		t.Errorf("owner revokes the last owner token: %d %+v", a.code, a.err)
	}
	if a := d.do(t, d.owner, "GET", "/v1/whoami", nil); a.code != 200 {
		t.Errorf("owner token after refused revocation: %d", a.code)
	}
	// The admin still manages its own kind.
	if a := d.do(t, admin.Token, "DELETE", "/v1/workspaces/default/tokens/"+admin.ID, nil); a.code != 204 {
		t.Errorf("admin revokes an admin token: %d %s", a.code, a.body)
	}
}

// TestRecoverOwnerToken: a data dir left without a live owner token (as
// an admin could leave one before owner tokens were protected) says how
// to recover at start, and `tokens recover` makes one that works at once,
// with the control plane running.
func TestRecoverOwnerToken(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first, err := app.New(context.Background(), app.Config{DataDir: dir, Out: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, app.OwnerTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	ownerID, _, _ := auth.Parse(strings.TrimSpace(string(b)))
	ws, err := first.Store.Q().WorkspaceBySlug(context.Background(), app.DefaultWS)
	if err == nil {
		err = first.Store.Q().RevokeToken(context.Background(), ws.ID, ownerID, time.Now())
	}
	if err != nil {
		t.Fatal(err)
	}
	_ = first.Close()
	d := startDoor(t, dir, func(c *app.Config) { c.Database = "" }) // SQLite in dir, as recover opens it
	if a := d.do(t, d.owner, "GET", "/v1/whoami", nil); a.code != 401 {
		t.Fatalf("revoked owner token: %d", a.code)
	}
	if n := d.logs.FilterMessageSnippet("no live owner token").FilterField(
		zap.String("run", "devpilot tokens recover --data-dir "+dir)).Len(); n != 1 {
		t.Errorf("start without a live owner token: %d log lines naming the recovery command; logs: %v", n, d.logs.All())
	}
	rec, err := app.RecoverOwnerToken(context.Background(), dir, "")
	if err != nil {
		t.Fatal(err)
	}
	b, err = os.ReadFile(rec.File)
	fi, _ := os.Stat(rec.File)
	if err != nil || fi.Mode().Perm() != 0o600 || rec.File != filepath.Join(dir, app.OwnerTokenFile) {
		t.Fatalf("recovered token file %s: %v %v", rec.File, fi.Mode(), err)
	}
	tok := strings.TrimSpace(string(b))
	if a := d.do(t, tok, "POST", "/v1/keys/rotate", nil); a.code != 200 {
		t.Errorf("recovered owner token, no restart: keys rotate %d %s", a.code, a.body)
	}
	if rec.LiveOwner != 1 {
		t.Errorf("live owner tokens after recovery: %d", rec.LiveOwner)
	}
	if _, err := app.RecoverOwnerToken(context.Background(), t.TempDir(), ""); err == nil || !strings.Contains(err.Error(), "no control plane database") {
		t.Errorf("recover in an empty directory: %v", err)
	}
}

// TestRecoverBesideARunningControlPlane, on the suite's database (SQLite
// in the data dir, or PostgreSQL): the recovered token works at once and
// the older owner token stays live.
func TestRecoverBesideARunningControlPlane(t *testing.T) {
	t.Parallel()
	d := startDoor(t, t.TempDir(), nil)
	rec, err := app.RecoverOwnerToken(context.Background(), d.dir, d.db)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(rec.File)
	if err != nil {
		t.Fatal(err)
	}
	if a := d.do(t, strings.TrimSpace(string(b)), "POST", "/v1/keys/rotate", nil); a.code != 200 {
		t.Errorf("recovered owner token: keys rotate %d %s", a.code, a.body)
	}
	if a := d.do(t, d.owner, "GET", "/v1/whoami", nil); a.code != 200 || rec.LiveOwner != 2 {
		t.Errorf("older owner token: %d; live owner tokens %d", a.code, rec.LiveOwner)
	}
}

// TestHeaders: HSTS when serving TLS, nosniff on API and console answers,
// refusals included.
func TestHeaders(t *testing.T) {
	t.Parallel()
	d := startDoor(t, t.TempDir(), nil)
	for _, path := range []string{"/healthz", "/v1/whoami", "/ui/signin", "/nowhere"} {
		a := d.do(t, "", "GET", path, nil)
		if got := a.header.Get("Strict-Transport-Security"); got != "max-age=31536000" {
			t.Errorf("%s (%d): Strict-Transport-Security %q", path, a.code, got)
		}
		if got := a.header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s (%d): X-Content-Type-Options %q", path, a.code, got)
		}
	}
}

func TestNoHSTSWithoutTLS(t *testing.T) {
	t.Parallel()
	a, err := app.New(context.Background(), app.Config{DataDir: t.TempDir(), TLS: app.TLSOff, Out: io.Discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	rec := &headerRecorder{h: http.Header{}}
	a.Handler().ServeHTTP(rec, must(http.NewRequest("GET", "/healthz", nil)))
	if rec.h.Get("Strict-Transport-Security") != "" || rec.h.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("--tls off: headers %v", rec.h)
	}
}

type headerRecorder struct{ h http.Header }

func (r *headerRecorder) Header() http.Header         { return r.h }
func (r *headerRecorder) Write(p []byte) (int, error) { return len(p), nil }
func (r *headerRecorder) WriteHeader(int)             {}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// rawConn opens a TLS connection to the control plane and sends a request
// head; the body is left to the caller.
func (d *door) rawConn(t *testing.T, head string) *tls.Conn {
	t.Helper()
	u, _ := url.Parse(d.a.URL)
	c, err := tls.Dial("tcp", u.Host, d.tls)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTrickledBodyIsCut: a sign-in body sent a byte at a time is cut off
// at the body timeout, long before it would have finished.
func TestTrickledBodyIsCut(t *testing.T) {
	t.Parallel()
	d := startDoor(t, t.TempDir(), func(c *app.Config) { c.BodyTimeout = time.Second })
	const n, size, every = 3, 1000, 100 * time.Millisecond // the whole body would take 100 s
	start := time.Now()
	closed := make(chan time.Duration, n)
	for range n {
		c := d.rawConn(t, fmt.Sprintf("POST /ui/signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n", size))
		stop := make(chan struct{})
		t.Cleanup(func() { close(stop) })
		go func() {
			tick := time.NewTicker(every)
			defer tick.Stop()
			for range size {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				if _, err := c.Write([]byte("a")); err != nil {
					return
				}
			}
		}()
		go func() {
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			_, _ = io.Copy(io.Discard, c) // until the server closes
			closed <- time.Since(start)
		}()
	}
	for range n {
		if took := <-closed; took > 20*time.Second {
			t.Errorf("a trickling connection stayed open %v (body timeout 1 s)", took)
		}
	}
	// An API request whose JSON body stalls is answered 408.
	c := d.rawConn(t, "POST /v1/workspaces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "+d.owner+
		"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"slug\":")
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("stalled API body: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusRequestTimeout {
		t.Errorf("stalled API body: %d", resp.StatusCode)
	}
}

// TestConsoleFormsAreBounded: a multipart sign-in is refused before its
// body is read, and a form over the limit is refused.
func TestConsoleFormsAreBounded(t *testing.T) {
	t.Parallel()
	d := startDoor(t, t.TempDir(), nil)
	// Announces 1 GiB and sends none of it: the answer comes anyway.
	c := d.rawConn(t, "POST /ui/signin HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: 1073741824\r\n\r\n--x\r\n")
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("multipart sign-in: no answer before the body: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("multipart sign-in: %d", resp.StatusCode)
	}
	form := url.Values{"token": {strings.Repeat("a", 70<<10)}}.Encode()
	resp, err = d.c.Post(d.a.URL+"/ui/signin", "application/x-www-form-urlencoded", strings.NewReader(form))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("70 KiB sign-in form: %d", resp.StatusCode)
	}
}

// TestUnauthenticatedRequestsPerAddressAreCapped: beyond the cap an
// address gets 429 with Retry-After, a valid token still passes, and the
// slots come back when the requests end.
func TestUnauthenticatedRequestsPerAddressAreCapped(t *testing.T) {
	t.Parallel()
	d := startDoor(t, t.TempDir(), func(c *app.Config) { c.MaxUnauthenticated, c.BodyTimeout = 2, 2*time.Minute })
	var slow []*tls.Conn
	for range 2 {
		slow = append(slow, d.rawConn(t, "POST /ui/signin HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nto"))
	}
	deadline := time.Now().Add(20 * time.Second)
	var a answer
	for {
		a = d.do(t, "", "GET", "/healthz", nil)
		if a.code == 429 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if a.code != 429 || a.header.Get("Retry-After") == "" || a.err.Code != "rate_limited" {
		t.Fatalf("third unauthenticated request: %d Retry-After %q %s", a.code, a.header.Get("Retry-After"), a.body)
	}
	if a := d.do(t, d.owner, "GET", "/v1/whoami", nil); a.code != 200 {
		t.Errorf("valid token over the cap: %d %s", a.code, a.body)
	}
	if a := d.do(t, "dpt_nope_nope", "GET", "/v1/whoami", nil); a.code != 429 {
		t.Errorf("invalid token over the cap: %d", a.code)
	}
	for _, c := range slow {
		_ = c.Close()
	}
	for {
		a = d.do(t, "", "GET", "/healthz", nil)
		if a.code == 200 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if a.code != 200 {
		t.Errorf("after the slow requests ended: %d", a.code)
	}
}

// TestFailedAuthenticationsAreThrottled: beyond the budget, failures get
// 429 with Retry-After, on the API and the console's sign-in alike; a
// valid token from the same address still works.
func TestFailedAuthenticationsAreThrottled(t *testing.T) {
	t.Parallel()
	d := startDoor(t, t.TempDir(), func(c *app.Config) { c.AuthFailureBurst, c.AuthFailureEvery = 3, time.Hour })
	for i := range 3 {
		if a := d.do(t, "dpt_guess_"+fmt.Sprint(i), "GET", "/v1/whoami", nil); a.code != 401 {
			t.Fatalf("failure %d: %d", i+1, a.code)
		}
	}
	a := d.do(t, "dpt_guess_4", "GET", "/v1/whoami", nil)
	if a.code != 429 || a.err.Code != "rate_limited" || a.header.Get("Retry-After") == "" {
		t.Errorf("failure 4: %d Retry-After %q %s", a.code, a.header.Get("Retry-After"), a.body)
	}
	if a := d.do(t, d.owner, "GET", "/v1/whoami", nil); a.code != 200 {
		t.Errorf("valid token from the throttled address: %d", a.code)
	}
	// The console's sign-in goes through the same check.
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Transport: d.c.Transport, Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	csrfRE := regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	resp, err := c.Get(d.a.URL + "/ui/signin")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	signin := func(token string) *http.Response {
		m := csrfRE.FindSubmatch(page)
		if m == nil {
			t.Fatalf("no csrf field on the sign-in page: %s", page)
		}
		resp, err := c.PostForm(d.a.URL+"/ui/signin", url.Values{"csrf": {string(m[1])}, "token": {token}})
		if err != nil {
			t.Fatal(err)
		}
		page, _ = io.ReadAll(resp.Body) // a refusal renders the form again, with a new csrf value
		_ = resp.Body.Close()
		return resp
	}
	if resp := signin("dpt_guess_5"); resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("throttled console sign-in: %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if resp := signin(d.owner); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("console sign-in with the valid token from the throttled address: %d", resp.StatusCode)
	}
}
