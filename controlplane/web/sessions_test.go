package web_test

import (
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
	"github.com/devpilot/devpilot/controlplane/web"
)

// sessionRows counts the console sessions the database holds.
func (p *plain) sessionRows() int {
	p.t.Helper()
	var n int
	if err := p.a.Store.DB().QueryRow(`SELECT COUNT(*) FROM console_sessions`).Scan(&n); err != nil {
		p.t.Fatal(err)
	}
	return n
}

// sessionCookie is the browser's session cookie for p's server.
func (b *browser) sessionCookie() string {
	b.p.t.Helper()
	u, _ := url.Parse(b.p.srv.URL)
	for _, c := range b.c.Jar.Cookies(u) {
		if c.Name == "__Host-devpilot-session" {
			return c.Value
		}
	}
	b.p.t.Fatal("no session cookie in the jar")
	return ""
}

// on is the same browser (cookie jar) talking to another server.
func (b *browser) on(p *plain) *browser {
	nb := p.browser()
	nb.c.Jar = b.c.Jar
	return nb
}

const signedInAsOwner = "token <strong>owner</strong>"

func TestSessionSurvivesARestart(t *testing.T) {
	t.Parallel()
	dir, database := t.TempDir(), storetest.Database(t)
	first := startPlain(t, dir, database, nil)
	b := first.browser()
	csrf := b.signIn(first.owner)
	first.stop()

	// A new process on the same data dir and database: the cookie the
	// browser kept still signs it in, with the same CSRF token.
	second := startPlain(t, dir, database, nil)
	b = b.on(second)
	pg := b.do("GET", "/ui/w/default/servers", nil, nil)
	if pg.status != 200 || !strings.Contains(pg.body, signedInAsOwner) {
		t.Fatalf("after the restart: %d %s, want the signed-in servers page", pg.status, pg.header.Get("Location"))
	}
	if got := csrfOf(t, pg.body); got != csrf {
		t.Errorf("the page's CSRF token changed across the restart")
	}
	// A change with the old CSRF token reaches the API (whose validation
	// answers), with the session's token; a wrong one is still refused.
	form := url.Values{"provider": {"nosuchcloud"}, "access_key": {"x"}, "secret_key": {"s3cret-value-123"}}
	form.Set("csrf", strings.Repeat("A", len(csrf)))
	if a := b.do("POST", "/ui/w/default/settings/integrations", form, nil); a.status != 403 || !strings.Contains(a.body, "security token") {
		t.Errorf("a wrong CSRF token after the restart: %d, want 403", a.status)
	}
	form.Set("csrf", csrf)
	if a := b.do("POST", "/ui/w/default/settings/integrations", form, nil); a.status != 400 || !strings.Contains(a.body, "unknown provider") {
		t.Errorf("a change with the session's CSRF token after the restart: %d, want the API's 400 unknown provider:\n%s", a.status, a.body)
	}
	// Signing out ends it in the database too: the cookie, replayed, is
	// no session.
	cookie := b.sessionCookie()
	if a := b.do("POST", "/ui/signout", url.Values{"csrf": {csrf}}, nil); a.status != http.StatusSeeOther {
		t.Fatalf("sign out: %d", a.status)
	}
	if n := second.sessionRows(); n != 0 {
		t.Errorf("%d console sessions stored after signing out, want 0", n)
	}
	replay := second.browser()
	u, _ := url.Parse(second.srv.URL)
	replay.c.Jar.SetCookies(u, []*http.Cookie{{Name: "__Host-devpilot-session", Value: cookie, Secure: true, Path: "/"}})
	if a := replay.do("GET", "/ui/w/default/servers", nil, nil); a.status != http.StatusSeeOther {
		t.Errorf("the signed-out cookie, replayed: %d, want a redirect to sign in", a.status)
	}
}

func TestSessionSecretsAreNotStoredInPlaintext(t *testing.T) {
	t.Parallel()
	p := newPlain(t)
	_, admin := p.newToken("admin")
	b := p.browser()
	csrf := b.signIn(admin)
	id := b.sessionCookie()
	if n := p.sessionRows(); n != 1 {
		t.Fatalf("%d console sessions stored, want 1", n)
	}
	var sealed string
	if err := p.a.Store.DB().QueryRow(`SELECT sealed FROM console_sessions`).Scan(&sealed); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(sealed, "v1.") {
		t.Errorf("the session's secrets are not sealed by the keyring: %.8q…", sealed)
	}
	all := storetest.Contents(t, p.a.Store)
	secret := admin[strings.LastIndex(admin, "_")+1:]
	for what, v := range map[string]string{"the session id": id, "the API token": admin,
		"the API token's secret part": secret, "the CSRF token": csrf} {
		if strings.Contains(all, v) {
			t.Errorf("the database holds %s in plaintext", what)
		}
	}
	// And the session works: the store holds what it needs.
	if pg := b.do("GET", "/ui/w/default/servers", nil, nil); pg.status != 200 || !strings.Contains(pg.body, "admin-user") {
		t.Errorf("servers page: %d", pg.status)
	}
}

// clock is a settable time for Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func TestExpiredSessionsAreRefusedAndDeleted(t *testing.T) {
	t.Parallel()
	t0 := time.Now()
	clk := &clock{t: t0}
	p := startPlain(t, t.TempDir(), storetest.Database(t), func(a *app.App) http.Handler {
		return web.New(web.Options{API: a.Handler(), Store: a.Store, Keys: a.Keys, Now: clk.Now,
			SessionTTL: time.Hour, SessionMaxAge: 2 * time.Hour})
	})
	used, idle := p.browser(), p.browser()
	used.signIn(p.owner)
	idle.signIn(p.owner)
	if n := p.sessionRows(); n != 2 {
		t.Fatalf("%d sessions stored, want 2", n)
	}
	page := func(b *browser) answer { return b.do("GET", "/ui/w/default/servers", nil, nil) }

	// Use extends the idle expiry: past the first hour, the used session
	// still works.
	clk.set(t0.Add(50 * time.Minute))
	if a := page(used); a.status != 200 {
		t.Fatalf("at 50 min: %d", a.status)
	}
	clk.set(t0.Add(105 * time.Minute))
	if a := page(used); a.status != 200 {
		t.Fatalf("at 105 min, used 55 min ago: %d, want 200", a.status)
	}
	// The idle one expired at 60 min: refused, and its row is gone.
	if a := page(idle); a.status != http.StatusSeeOther || !strings.HasPrefix(a.header.Get("Location"), "/ui/signin") {
		t.Errorf("idle session at 105 min: %d %s, want a redirect to sign in", a.status, a.header.Get("Location"))
	}
	if n := p.sessionRows(); n != 1 {
		t.Errorf("%d sessions stored after the idle one was refused, want 1", n)
	}
	// Use never extends a session past its maximum age (2 h), though it
	// was used 16 minutes ago.
	clk.set(t0.Add(121 * time.Minute))
	if a := page(used); a.status != http.StatusSeeOther || !strings.HasPrefix(a.header.Get("Location"), "/ui/signin") {
		t.Errorf("session past its maximum age: %d %s, want a redirect to sign in", a.status, a.header.Get("Location"))
	}
	if n := p.sessionRows(); n != 0 {
		t.Errorf("%d sessions stored after the old one was refused, want 0", n)
	}
	// Nor does a POST with its CSRF token get through.
	if a := used.do("POST", "/ui/signout", url.Values{}, nil); a.status != http.StatusUnauthorized {
		t.Errorf("POST with an expired session: %d, want 401", a.status)
	}
}

func TestExpiredSessionsArePrunedAtSignIn(t *testing.T) {
	t.Parallel()
	t0 := time.Now()
	clk := &clock{t: t0}
	p := startPlain(t, t.TempDir(), storetest.Database(t), func(a *app.App) http.Handler {
		return web.New(web.Options{API: a.Handler(), Store: a.Store, Keys: a.Keys, Now: clk.Now, SessionTTL: time.Hour})
	})
	for range 3 {
		p.browser().signIn(p.owner) // never used again
	}
	clk.set(t0.Add(61 * time.Minute))
	p.browser().signIn(p.owner)
	if n := p.sessionRows(); n != 1 {
		t.Errorf("%d sessions stored, want only the new one", n)
	}
}

func TestKeyRotationSignsConsoleUsersOut(t *testing.T) {
	t.Parallel()
	p := newPlain(t)
	b := p.browser()
	b.signIn(p.owner)
	if c := p.api(p.owner, "POST", "/v1/keys/rotate", nil, nil); c != 200 {
		t.Fatalf("rotate: %d", c)
	}
	// The session was sealed under a key rotation retired: signed out,
	// and its row deleted on sight.
	if a := b.do("GET", "/ui/w/default/servers", nil, nil); a.status != http.StatusSeeOther || !strings.HasPrefix(a.header.Get("Location"), "/ui/signin") {
		t.Errorf("after key rotation: %d %s, want a redirect to sign in", a.status, a.header.Get("Location"))
	}
	if n := p.sessionRows(); n != 0 {
		t.Errorf("%d sessions stored, want 0", n)
	}
	// Signing in again works, under the new key.
	b.signIn(p.owner)
}
