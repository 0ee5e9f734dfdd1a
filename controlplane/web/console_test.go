package web_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
	"github.com/devpilot/devpilot/controlplane/web"
)

// plain is a control plane (no clouds: provider URLs point nowhere) served
// over TLS by httptest, and a browser-like client with a cookie jar that
// does not follow redirects.
type plain struct {
	t     *testing.T
	a     *app.App
	srv   *httptest.Server
	owner string
	once  sync.Once
}

// newPlain starts a control plane on a fresh data dir and the suite's
// database (storetest.Database).
func newPlain(t *testing.T) *plain {
	t.Helper()
	return startPlain(t, t.TempDir(), storetest.Database(t), nil)
}

// startPlain starts a control plane on dir and database. With console, the
// server answers the console's paths with console(a) instead of the App's
// own (for tests that set web.Options the App does not).
func startPlain(t *testing.T, dir, database string, console func(*app.App) http.Handler) *plain {
	t.Helper()
	a, err := app.New(context.Background(), app.Config{DataDir: dir, Database: database, Out: io.Discard,
		DigitalOceanAPIURL: "http://127.0.0.1:1", VultrAPIURL: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	h := a.Handler()
	if console != nil {
		h = web.Route(a.Handler(), console(a))
	}
	p := &plain{t: t, a: a, srv: httptest.NewTLSServer(h)}
	t.Cleanup(p.stop)
	tok, err := os.ReadFile(filepath.Join(dir, app.OwnerTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	p.owner = strings.TrimSpace(string(tok))
	return p
}

// stop shuts the control plane down (once; cleanup calls it too).
func (p *plain) stop() {
	p.once.Do(func() {
		p.srv.Close()
		p.a.Hub.Close()
		p.a.Provision.Close()
		_ = p.a.Close()
	})
}

// browser is one cookie jar.
type browser struct {
	p *plain
	c *http.Client
}

func (p *plain) browser() *browser {
	jar, _ := cookiejar.New(nil)
	c := p.srv.Client()
	c = &http.Client{Transport: c.Transport, Jar: jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &browser{p: p, c: c}
}

type answer struct {
	status int
	header http.Header
	body   string
}

func (b *browser) do(method, path string, form url.Values, header map[string]string) answer {
	b.p.t.Helper()
	var rd io.Reader
	if form != nil {
		rd = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.p.srv.URL+path, rd)
	if err != nil {
		b.p.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.p.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, _ := io.ReadAll(resp.Body)
	return answer{resp.StatusCode, resp.Header, string(raw)}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, body string) string {
	t.Helper()
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no csrf field in page:\n%s", body)
	}
	return m[1]
}

// signIn signs in with token and returns the session's CSRF token.
func (b *browser) signIn(token string) string {
	t := b.p.t
	t.Helper()
	pg := b.do("GET", "/ui/signin", nil, nil)
	if pg.status != 200 {
		t.Fatalf("sign-in page: %d", pg.status)
	}
	a := b.do("POST", "/ui/signin", url.Values{"csrf": {csrfOf(t, pg.body)}, "token": {token}}, nil)
	if a.status != http.StatusSeeOther || a.header.Get("Location") != "/ui/w/default/servers" {
		t.Fatalf("sign in: %d %s\n%s", a.status, a.header.Get("Location"), a.body)
	}
	home := b.do("GET", "/ui/w/default/servers", nil, nil)
	if home.status != 200 {
		t.Fatalf("servers page: %d", home.status)
	}
	return csrfOf(t, home.body)
}

// api calls the JSON API with a bearer token.
func (p *plain) api(token, method, path string, body any, out any) int {
	p.t.Helper()
	var rd io.Reader
	if body != nil {
		raw, _ := json.Marshal(body)
		rd = bytes.NewReader(raw)
	}
	req, _ := http.NewRequest(method, p.srv.URL+path, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := p.srv.Client().Do(req)
	if err != nil {
		p.t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if out != nil {
		_ = json.NewDecoder(resp.Body).Decode(out)
	}
	return resp.StatusCode
}

func (p *plain) newToken(role string) (id, token string) {
	var tok struct {
		ID    string `json:"id"`
		Token string `json:"token"`
	}
	if c := p.api(p.owner, "POST", "/v1/workspaces/default/tokens", map[string]string{"name": role + "-user", "role": role}, &tok); c != 201 {
		p.t.Fatalf("create %s token: %d", role, c)
	}
	return tok.ID, tok.Token
}

func TestSignInSetsAStrictSessionCookieAndNeverShowsTheToken(t *testing.T) {
	t.Parallel()
	p := newPlain(t)
	b := p.browser()
	pg := b.do("GET", "/ui/signin", nil, nil)
	if pg.status != 200 {
		t.Fatalf("sign-in page: %d", pg.status)
	}
	csp := pg.header.Get("Content-Security-Policy")
	if csp == "" || strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("CSP %q", csp)
	}
	if pg.header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("X-Frame-Options %q", pg.header.Get("X-Frame-Options"))
	}
	if strings.Contains(pg.body, "<script>") || strings.Contains(pg.body, "style=") {
		t.Error("inline script or style in the page")
	}
	a := b.do("POST", "/ui/signin", url.Values{"csrf": {csrfOf(t, pg.body)}, "token": {p.owner}}, nil)
	if a.status != http.StatusSeeOther {
		t.Fatalf("sign in: %d\n%s", a.status, a.body)
	}
	var sess *http.Cookie
	for _, raw := range a.header.Values("Set-Cookie") {
		if strings.Contains(raw, p.owner) || strings.Contains(raw, strings.SplitN(p.owner, "_", 3)[2]) {
			t.Errorf("the token is in a cookie: %s", raw)
		}
		if c, err := http.ParseSetCookie(raw); err == nil && c.Name == "__Host-devpilot-session" && c.MaxAge >= 0 {
			sess = c
		}
	}
	if sess == nil {
		t.Fatalf("no session cookie in %q", a.header.Values("Set-Cookie"))
	}
	if !sess.HttpOnly || !sess.Secure || sess.SameSite != http.SameSiteStrictMode || sess.Path != "/" {
		t.Errorf("session cookie attributes: %+v", sess)
	}
	if len(sess.Value) != 43 { // 32 random bytes, base64url
		t.Errorf("session id %q: want 256 bits", sess.Value)
	}
	for _, path := range []string{"/ui/w/default/servers", "/ui/w/default/settings/integrations", "/ui/w/default/servers/new"} {
		pg := b.do("GET", path, nil, nil)
		if pg.status != 200 {
			t.Errorf("%s: %d", path, pg.status)
		}
		if strings.Contains(pg.body, p.owner) {
			t.Errorf("%s shows the token", path)
		}
	}
	// The home page leads signed-in users to their servers.
	if h := b.do("GET", "/", nil, nil); h.status != http.StatusSeeOther || h.header.Get("Location") != "/ui/w/default/servers" {
		t.Errorf("home: %d %s", h.status, h.header.Get("Location"))
	}
}

func TestSignInRefusals(t *testing.T) {
	t.Parallel()
	p := newPlain(t)
	cases := []struct {
		name      string
		token     string
		csrf      func(page string) string
		status    int
		wantInPag string
	}{
		{"unknown token", "dpt_nosuch_secret", func(pg string) string { return csrfOf(t, pg) }, 401, "that token is not valid"},
		{"mangled owner token", p.owner + "x", func(pg string) string { return csrfOf(t, pg) }, 401, "unauthorized"},
		{"not a token", "hello", func(pg string) string { return csrfOf(t, pg) }, 401, "unauthorized"},
		{"no form token", p.owner, func(string) string { return "" }, 403, "the sign-in form expired"},
		{"forged form token", p.owner, func(string) string { return "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" }, 403, "csrf"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := p.browser()
			pg := b.do("GET", "/ui/signin", nil, nil)
			a := b.do("POST", "/ui/signin", url.Values{"csrf": {tc.csrf(pg.body)}, "token": {tc.token}}, nil)
			if a.status != tc.status || !strings.Contains(a.body, tc.wantInPag) {
				t.Fatalf("got %d, want %d with %q:\n%s", a.status, tc.status, tc.wantInPag, a.body)
			}
			if strings.Contains(a.body, tc.token) && tc.token != "hello" {
				t.Error("the refused token is echoed back")
			}
			if r := b.do("GET", "/ui/w/default/servers", nil, nil); r.status != http.StatusSeeOther {
				t.Errorf("after a refused sign-in the console answered %d", r.status)
			}
		})
	}
}

func TestSignedOutRequestsGoToSignIn(t *testing.T) {
	t.Parallel()
	p := newPlain(t)
	b := p.browser()
	for _, path := range []string{"/", "/ui/w/default/servers", "/ui/w/default/settings/integrations"} {
		a := b.do("GET", path, nil, nil)
		if a.status != http.StatusSeeOther || !strings.HasPrefix(a.header.Get("Location"), "/ui/signin") {
			t.Errorf("GET %s: %d %s", path, a.status, a.header.Get("Location"))
		}
	}
	if a := b.do("GET", "/ui/w/default/servers/srv_x/live", nil, nil); a.status != http.StatusUnauthorized {
		t.Errorf("live fragment: %d, want 401", a.status)
	}
	if a := b.do("POST", "/ui/w/default/settings/integrations", url.Values{"provider": {"vultr"}}, nil); a.status != http.StatusUnauthorized {
		t.Errorf("POST signed out: %d, want 401", a.status)
	}
	// A forged session cookie is no session.
	u, _ := url.Parse(p.srv.URL)
	b.c.Jar.SetCookies(u, []*http.Cookie{{Name: "__Host-devpilot-session", Value: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}})
	if a := b.do("GET", "/ui/w/default/servers", nil, nil); a.status != http.StatusSeeOther {
		t.Errorf("forged cookie: %d", a.status)
	}
}

func TestAPIRoutesStayWithTheAPI(t *testing.T) {
	t.Parallel()
	p := newPlain(t)
	b := p.browser()
	cases := []struct {
		path   string
		status int
		ctype  string
	}{
		{"/v1/whoami", 401, "application/json"},
		{"/v1/nothing", 401, "application/json"},
		{"/healthz", 200, "application/json"},
		{"/readyz", 200, "application/json"},
		{"/metrics", 200, "text/plain"},
		{"/static/app.js", 200, "text/javascript"},
		{"/static/app.css", 200, "text/css"},
		{"/ui/signin", 200, "text/html"},
		{"/ui/nothing", 404, "text/html"},
	}
	for _, tc := range cases {
		a := b.do("GET", tc.path, nil, nil)
		if a.status != tc.status || !strings.HasPrefix(a.header.Get("Content-Type"), tc.ctype) {
			t.Errorf("%s: %d %s, want %d %s", tc.path, a.status, a.header.Get("Content-Type"), tc.status, tc.ctype)
		}
	}
}

func TestChangesNeedTheSessionCSRFToken(t *testing.T) {
	t.Parallel()
	p := newPlain(t)
	b := p.browser()
	csrf := b.signIn(p.owner)
	other := p.browser()
	otherCSRF := other.signIn(p.owner)
	if otherCSRF == csrf {
		t.Fatal("two sessions share a CSRF token")
	}
	form := func(tok string) url.Values {
		v := url.Values{"provider": {"nosuchcloud"}, "access_key": {"x"}, "secret_key": {"s3cret-value-123"}}
		if tok != "" {
			v.Set("csrf", tok)
		}
		return v
	}
	cases := []struct {
		name   string
		form   url.Values
		header map[string]string
		status int
		want   string
	}{
		{"missing", form(""), nil, 403, "security token"},
		{"another session's", form(otherCSRF), nil, 403, "security token"},
		{"truncated", form(csrf[:20]), nil, 403, "security token"},
		// With the right token the request reaches the API, whose
		// validation answers.
		{"form field", form(csrf), nil, 400, "unknown provider"},
		{"header", form(""), map[string]string{"X-CSRF-Token": csrf}, 400, "unknown provider"},
	}
	for _, tc := range cases {
		a := b.do("POST", "/ui/w/default/settings/integrations", tc.form, tc.header)
		if a.status != tc.status || !strings.Contains(a.body, tc.want) {
			t.Errorf("%s: %d, want %d with %q:\n%s", tc.name, a.status, tc.status, tc.want, a.body)
		}
		if strings.Contains(a.body, "s3cret-value-123") {
			t.Errorf("%s: the secret is echoed back", tc.name)
		}
	}
	// Signing out also needs it, and ends the session.
	if a := b.do("POST", "/ui/signout", url.Values{}, nil); a.status != 403 {
		t.Errorf("sign out without csrf: %d", a.status)
	}
	if a := b.do("POST", "/ui/signout", url.Values{"csrf": {csrf}}, nil); a.status != http.StatusSeeOther {
		t.Errorf("sign out: %d", a.status)
	}
	if a := b.do("GET", "/ui/w/default/servers", nil, nil); a.status != http.StatusSeeOther {
		t.Errorf("after sign out: %d", a.status)
	}
	if a := other.do("GET", "/ui/w/default/servers", nil, nil); a.status != 200 {
		t.Errorf("the other session ended too: %d", a.status)
	}
}

func TestViewerConsoleIsReadOnly(t *testing.T) {
	t.Parallel()
	p := newPlain(t)
	_, viewer := p.newToken("viewer")
	b := p.browser()
	csrf := b.signIn(viewer)
	for _, path := range []string{"/ui/w/default/servers", "/ui/w/default/settings/integrations"} {
		pg := b.do("GET", path, nil, nil)
		if pg.status != 200 || !strings.Contains(pg.body, "read-only") {
			t.Errorf("%s: %d, no read-only marker", path, pg.status)
		}
		for _, button := range []string{"Create server", "Connect DigitalOcean", "Test credentials", "Rotate", "Remove"} {
			if strings.Contains(pg.body, button) {
				t.Errorf("%s offers %q to a viewer", path, button)
			}
		}
	}
	changes := []struct{ method, path string }{
		{"POST", "/ui/w/default/settings/integrations"},
		{"POST", "/ui/w/default/settings/integrations/int_x/test"},
		{"POST", "/ui/w/default/settings/integrations/int_x/rotate"},
		{"POST", "/ui/w/default/settings/integrations/int_x/remove"},
		{"POST", "/ui/w/default/servers"},
		{"POST", "/ui/w/default/servers/srv_x/delete"},
		{"GET", "/ui/w/default/servers/new"},
	}
	for _, c := range changes {
		a := b.do(c.method, c.path, url.Values{"csrf": {csrf}, "provider": {"vultr"}, "access_key": {"v"}, "secret_key": {"k"}}, nil)
		if a.status != http.StatusForbidden || !strings.Contains(a.body, "forbidden") {
			t.Errorf("viewer %s %s: %d, want 403 forbidden", c.method, c.path, a.status)
		}
	}
	var list struct {
		Integrations []any `json:"integrations"`
	}
	p.api(p.owner, "GET", "/v1/workspaces/default/integrations", nil, &list)
	if len(list.Integrations) != 0 {
		t.Errorf("a viewer changed something: %v", list.Integrations)
	}
}

func TestRevokedTokenEndsTheSession(t *testing.T) {
	t.Parallel()
	p := newPlain(t)
	id, admin := p.newToken("admin")
	b := p.browser()
	b.signIn(admin)
	if c := p.api(p.owner, "DELETE", "/v1/workspaces/default/tokens/"+id, nil, nil); c != 204 {
		t.Fatalf("revoke: %d", c)
	}
	a := b.do("GET", "/ui/w/default/servers", nil, nil)
	if a.status != http.StatusSeeOther || a.header.Get("Location") != "/ui/signin?expired=1" {
		t.Fatalf("after revocation: %d %s", a.status, a.header.Get("Location"))
	}
	if a := b.do("GET", "/ui/w/default/servers", nil, nil); a.status != http.StatusSeeOther || a.header.Get("Location") == "/ui/signin?expired=1" {
		t.Errorf("the session outlived its token: %d %s", a.status, a.header.Get("Location"))
	}
	if n := p.sessionRows(); n != 0 {
		t.Errorf("%d console sessions stored after the token's revocation, want 0", n)
	}
}

// A quarantined server's page says why and names the fix.
func TestQuarantinedServerPageNamesTheFix(t *testing.T) {
	t.Parallel()
	p := newPlain(t)
	ctx := context.Background()
	ws, err := p.a.Store.Q().WorkspaceBySlug(ctx, app.DefaultWS)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	if err := p.a.Store.Q().CreateServer(ctx, store.Server{ID: "srv_q", WorkspaceID: ws.ID, Provider: "digitalocean", Name: "web-q",
		Region: "nyc3", Size: "s-1vcpu-1gb", Image: "debian-12", PortsJSON: "[22]", State: "offline", AgentPublicKey: make([]byte, 32),
		AgentTimeoutS: 900, CreatedAt: now, UpdatedAt: now}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := p.a.Store.Q().Quarantine(ctx, "srv_q", "two agents used this server's identity key: from 192.0.2.1:1, 192.0.2.2:2", now); err != nil {
		t.Fatal(err)
	}
	b := p.browser()
	b.signIn(p.owner)
	pg := b.do("GET", "/ui/w/default/servers/srv_q", nil, nil)
	for _, want := range []string{`id="server-state">quarantined<`, "192.0.2.2:2", "devpilot servers rekey srv_q", "devpilot-agent enroll --token-file -"} {
		if !strings.Contains(pg.body, want) {
			t.Errorf("server page lacks %q:\n%s", want, pg.body)
		}
	}
}
