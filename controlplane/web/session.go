package web

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"sync"
	"time"

	"github.com/devpilot/devpilot/controlplane/secrets"
)

// Cookie names. The __Host- prefix makes browsers insist on Secure, Path=/
// and no Domain, so no other host or path can plant or read them.
const (
	sessionCookie = "__Host-devpilot-session"
	signinCookie  = "__Host-devpilot-signin" // double-submit token for the sign-in form only
	csrfField     = "csrf"
	csrfHeader    = "X-CSRF-Token"
)

// session is one signed-in browser. It lives only in memory: a restart
// signs everyone out, which is the safe direction.
type session struct {
	id        string
	csrf      string
	token     secrets.Value // the API token; never written to a cookie or page
	tokenName string
	role      string
	workspace string // the token's home workspace slug
	created   time.Time
	expires   time.Time
	flash     string // one-shot notice shown on the next page
	flashErr  *apiError
}

// CanWrite reports whether the session's token may change things.
func (s *session) CanWrite() bool { return s.role == "owner" || s.role == "admin" }

// Name is the token's name, for the page header.
func (s *session) Name() string { return s.tokenName }

// Role is the token's role.
func (s *session) Role() string { return s.role }

type sessions struct {
	mu     sync.Mutex
	byID   map[string]*session
	now    func() time.Time
	ttl    time.Duration
	maxAge time.Duration
}

func newSessions(now func() time.Time, ttl, maxAge time.Duration) *sessions {
	return &sessions{byID: map[string]*session{}, now: now, ttl: ttl, maxAge: maxAge}
}

// randomID returns 256 random bits, base64url.
func randomID() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func (ss *sessions) create(token secrets.Value, name, role, workspace string) *session {
	now := ss.now()
	s := &session{id: randomID(), csrf: randomID(), token: token, tokenName: name, role: role,
		workspace: workspace, created: now, expires: now.Add(ss.ttl)}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for id, o := range ss.byID {
		if !now.Before(o.expires) {
			delete(ss.byID, id)
		}
	}
	ss.byID[s.id] = s
	return s
}

// get returns the live session with id and extends its idle expiry.
func (ss *sessions) get(id string) *session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.byID[id]
	if !ok {
		return nil
	}
	now := ss.now()
	if !now.Before(s.expires) {
		delete(ss.byID, id)
		return nil
	}
	s.expires = now.Add(ss.ttl)
	if limit := s.created.Add(ss.maxAge); s.expires.After(limit) {
		s.expires = limit
	}
	return s
}

func (ss *sessions) delete(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.byID, id)
}

// takeFlash returns and clears the session's one-shot notice.
func (ss *sessions) takeFlash(s *session) (string, *apiError) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	f, e := s.flash, s.flashErr
	s.flash, s.flashErr = "", nil
	return f, e
}

func (ss *sessions) setFlash(s *session, msg string, e *apiError) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s.flash, s.flashErr = msg, e
}

// len is the number of stored sessions (for tests).
func (ss *sessions) len() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.byID)
}

// sessionOf returns the request's session, or nil.
func (c *Console) sessionOf(r *http.Request) *session {
	ck, err := r.Cookie(sessionCookie)
	if err != nil || ck.Value == "" {
		return nil
	}
	return c.sessions.get(ck.Value)
}

func setCookie(w http.ResponseWriter, name, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
}

// equal compares two secrets in constant time.
func equal(a, b string) bool {
	return a != "" && subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// checkCSRF reports whether a state-changing request carries the session's
// CSRF token, as a form field or header.
func checkCSRF(r *http.Request, s *session) bool {
	got := r.Header.Get(csrfHeader)
	if got == "" {
		got = r.PostFormValue(csrfField)
	}
	return equal(got, s.csrf)
}
