package web

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
)

// Cookie names. The __Host- prefix makes browsers insist on Secure, Path=/
// and no Domain, so no other host or path can plant or read them.
const (
	sessionCookie = "__Host-devpilot-session"
	signinCookie  = "__Host-devpilot-signin" // double-submit token for the sign-in form only
	csrfField     = "csrf"
	csrfHeader    = "X-CSRF-Token"
)

// session is one signed-in browser. It is kept in the store (see
// sessions), so it outlives a restart of the control plane and a standby's
// takeover; the API token and CSRF token are stored only sealed by the
// keyring, and the cookie's session id only as its sha256.
type session struct {
	id        string // the cookie's value; never stored
	idHash    []byte // sha256 of id: the store's key
	csrf      string
	token     secrets.Value // the API token; never written to a cookie or page
	tokenName string
	role      string
	workspace string // the token's home workspace slug
	created   time.Time
	expires   time.Time
}

// CanWrite reports whether the session's token may change things.
func (s *session) CanWrite() bool { return s.role == "owner" || s.role == "admin" }

// Name is the token's name, for the page header.
func (s *session) Name() string { return s.tokenName }

// Role is the token's role.
func (s *session) Role() string { return s.role }

// sealedSession is what a session keeps encrypted at rest.
type sealedSession struct {
	Token string `json:"token"`
	CSRF  string `json:"csrf"`
}

// flash is a one-shot notice shown on a session's next page. Notices live
// in memory only: a restart loses at most one.
type flash struct {
	msg string
	err *apiError
	at  time.Time
}

// sessions keeps console sessions in the store, read on every request (the
// console is low traffic, and nothing cached can outlive a sign-out or a
// revocation seen by another process).
type sessions struct {
	st     *store.Store
	keys   *secrets.Keyring
	log    *zap.Logger
	now    func() time.Time
	ttl    time.Duration
	maxAge time.Duration

	mu      sync.Mutex
	flashes map[string]flash // by hex of the session's id hash
}

func newSessions(st *store.Store, keys *secrets.Keyring, log *zap.Logger, now func() time.Time, ttl, maxAge time.Duration) *sessions {
	return &sessions{st: st, keys: keys, log: log, now: now, ttl: ttl, maxAge: maxAge, flashes: map[string]flash{}}
}

// randomID returns 256 random bits, base64url.
func randomID() string {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// hashID is the store's key for a session id.
func hashID(id string) []byte {
	h := sha256.Sum256([]byte(id))
	return h[:]
}

// recordID is the associated data a session's secrets are sealed with, so
// a sealed value copied to another row does not open.
func recordID(idHash []byte) string { return hex.EncodeToString(idHash) }

// create stores a new session, first pruning the expired ones.
func (ss *sessions) create(ctx context.Context, token secrets.Value, name, role, workspace string) (*session, error) {
	now := ss.now()
	if _, err := ss.st.Q().DeleteExpiredConsoleSessions(ctx, now); err != nil {
		return nil, fmt.Errorf("prune console sessions: %w", err)
	}
	ss.pruneFlashes(now)
	s := &session{id: randomID(), csrf: randomID(), token: token, tokenName: name, role: role,
		workspace: workspace, created: now, expires: now.Add(ss.ttl)}
	s.idHash = hashID(s.id)
	raw, err := json.Marshal(sealedSession{Token: token.Reveal(), CSRF: s.csrf})
	if err != nil {
		return nil, fmt.Errorf("seal console session: %w", err)
	}
	sealed, err := ss.keys.Encrypt(secrets.New(string(raw)), recordID(s.idHash))
	clear(raw)
	if err != nil {
		return nil, fmt.Errorf("seal console session: %w", err)
	}
	if err := ss.st.Q().CreateConsoleSession(ctx, store.ConsoleSession{IDHash: s.idHash, Sealed: sealed,
		TokenName: name, Role: role, Workspace: workspace, CreatedAt: now, ExpiresAt: s.expires}); err != nil {
		return nil, fmt.Errorf("store console session: %w", err)
	}
	return s, nil
}

// get returns the live session with id, or nil, and extends its idle
// expiry (never past its maximum age). An expired session, or one whose
// secrets no longer open (sealed under a key since retired by `devpilot
// keys rotate`, or by another keyring), is deleted: it is signed out. An
// error means the store could not answer; the session is left alone.
func (ss *sessions) get(ctx context.Context, id string) (*session, error) {
	if id == "" {
		return nil, nil
	}
	h := hashID(id)
	q := ss.st.Q()
	row, err := q.ConsoleSessionByHash(ctx, h)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read console session: %w", err)
	}
	now := ss.now()
	if !now.Before(row.ExpiresAt) {
		ss.refuse(ctx, h)
		return nil, nil
	}
	v, err := ss.keys.Decrypt(row.Sealed, recordID(h))
	if err != nil {
		// Decrypt's errors name the key id at most, never a secret.
		ss.log.Info("console session no longer opens; signing it out", zap.Error(err))
		ss.refuse(ctx, h)
		return nil, nil
	}
	var sealed sealedSession
	if err := json.Unmarshal([]byte(v.Reveal()), &sealed); err != nil || sealed.Token == "" || sealed.CSRF == "" {
		ss.log.Warn("console session holds no token; signing it out")
		ss.refuse(ctx, h)
		return nil, nil
	}
	expires := now.Add(ss.ttl)
	if limit := row.CreatedAt.Add(ss.maxAge); expires.After(limit) {
		expires = limit
	}
	ok, err := q.TouchConsoleSession(ctx, h, expires, now)
	if err != nil {
		return nil, fmt.Errorf("extend console session: %w", err)
	}
	if !ok {
		return nil, nil // signed out or expired meanwhile
	}
	return &session{id: id, idHash: h, csrf: sealed.CSRF, token: secrets.New(sealed.Token), tokenName: row.TokenName,
		role: row.Role, workspace: row.Workspace, created: row.CreatedAt, expires: expires}, nil
}

// end deletes a session (sign-out, revoked token, expiry), even when the
// request that asked is gone.
func (ss *sessions) end(ctx context.Context, idHash []byte) error {
	ss.mu.Lock()
	delete(ss.flashes, recordID(idHash))
	ss.mu.Unlock()
	if err := ss.st.Q().DeleteConsoleSession(context.WithoutCancel(ctx), idHash); err != nil {
		return fmt.Errorf("delete console session: %w", err)
	}
	return nil
}

// refuse ends a session found unusable; it is refused either way, so a
// failure to delete it is only logged (the next look or prune retries).
func (ss *sessions) refuse(ctx context.Context, idHash []byte) {
	if err := ss.end(ctx, idHash); err != nil {
		ss.log.Error("console session", zap.Error(err))
	}
}

// takeFlash returns and clears the session's one-shot notice.
func (ss *sessions) takeFlash(s *session) (string, *apiError) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	k := recordID(s.idHash)
	f := ss.flashes[k]
	delete(ss.flashes, k)
	return f.msg, f.err
}

func (ss *sessions) setFlash(s *session, msg string, e *apiError) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.flashes[recordID(s.idHash)] = flash{msg: msg, err: e, at: ss.now()}
}

// pruneFlashes drops notices no session can still show.
func (ss *sessions) pruneFlashes(now time.Time) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for k, f := range ss.flashes {
		if !now.Before(f.at.Add(ss.maxAge)) {
			delete(ss.flashes, k)
		}
	}
}

// sessionOf returns the request's session, or nil when it has none. A
// store failure is logged and counts as none; pages that need a session
// use session, which reports it.
func (c *Console) sessionOf(r *http.Request) *session {
	s, err := c.session(r)
	if err != nil {
		c.log.Error("console session", zap.Error(err))
		return nil
	}
	return s
}

// session returns the request's session, nil when it has none, or the
// store's error.
func (c *Console) session(r *http.Request) (*session, error) {
	ck, err := r.Cookie(sessionCookie)
	if err != nil || ck.Value == "" {
		return nil, nil
	}
	return c.sessions.get(r.Context(), ck.Value)
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
