package web

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/httpguard"
	"github.com/devpilot/devpilot/controlplane/secrets"
)

// handler serves a page for a signed-in session.
type handler func(w http.ResponseWriter, r *http.Request, s *session) error

// Access a console route needs.
const (
	readOnly = false
	changes  = true
)

func (c *Console) routes() {
	c.mux.Handle("GET /static/", c.static)
	c.mux.HandleFunc("GET /{$}", c.home)
	c.mux.HandleFunc("GET /ui/signin", c.signinPage)
	c.mux.HandleFunc("POST /ui/signin", c.signin)
	c.handle("POST /ui/signout", readOnly, c.signout)

	c.handle("GET /ui/w/{ws}/settings/integrations", readOnly, c.integrationsPage)
	c.handle("POST /ui/w/{ws}/settings/integrations", changes, c.connect)
	c.handle("POST /ui/w/{ws}/settings/integrations/{id}/test", changes, c.testIntegration)
	c.handle("POST /ui/w/{ws}/settings/integrations/{id}/rotate", changes, c.rotateIntegration)
	c.handle("GET /ui/w/{ws}/settings/integrations/{id}/remove", changes, c.removeIntegrationPage)
	c.handle("POST /ui/w/{ws}/settings/integrations/{id}/remove", changes, c.removeIntegration)

	c.handle("GET /ui/w/{ws}/events", readOnly, c.events)
	c.handle("GET /ui/w/{ws}/alerts", readOnly, c.alertsPage)
	c.handle("GET /ui/w/{ws}/servers", readOnly, c.serversPage)
	c.handle("GET /ui/w/{ws}/servers/live", readOnly, c.serversLive)
	c.handle("GET /ui/w/{ws}/servers/new", changes, c.newServerPage)
	c.handle("POST /ui/w/{ws}/servers", changes, c.createServer)
	c.handle("GET /ui/w/{ws}/servers/{id}", readOnly, c.serverPage)
	c.handle("GET /ui/w/{ws}/servers/{id}/live", readOnly, c.serverLive)
	c.handle("POST /ui/w/{ws}/servers/{id}/delete", changes, c.deleteServer)
	c.handle("POST /ui/w/{ws}/servers/{id}/actions", changes, c.serverAction)
	c.handle("GET /ui/w/{ws}/servers/{id}/resize", changes, c.resizePage)

	c.taskRoutes()
	c.rolloutRoutes()
	c.eventLogRoutes()

	c.handle("GET /ui/w/{ws}/settings/webhooks", readOnly, c.webhooksPage)
	c.handle("POST /ui/w/{ws}/settings/webhooks", changes, c.createWebhook)
	c.handle("GET /ui/w/{ws}/settings/webhooks/{id}", readOnly, c.webhookPage)
	c.handle("POST /ui/w/{ws}/settings/webhooks/{id}/ping", changes, c.pingWebhook)
	c.handle("POST /ui/w/{ws}/settings/webhooks/{id}", changes, c.updateWebhook)
	c.handle("POST /ui/w/{ws}/settings/webhooks/{id}/deliveries/{delivery}/redeliver", changes, c.redeliverWebhook)

	c.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c.render(w, r, http.StatusNotFound, "error", page{Title: "Not found", S: c.sessionOf(r),
			Err: &apiError{Status: 404, Code: "not_found", Message: "no page at " + r.URL.Path}})
	})
}

// handle registers a page that needs a session; routes that change
// something need a CSRF token (any method but GET) and a token that may
// write.
func (c *Console) handle(pattern string, write bool, h handler) {
	c.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		s, err := c.session(r)
		if err != nil {
			// The store did not answer: not a reason to sign anyone out.
			c.log.Error("console session", zap.String("path", r.URL.Path), zap.Error(err))
			if isFragment(r) {
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			c.render(w, r, http.StatusServiceUnavailable, "error", page{Title: "Error",
				Err: &apiError{Status: 503, Code: "unavailable", Message: "the console could not read your session",
					Hint: "See the control plane log; try again."}})
			return
		}
		if s == nil {
			if r.Method == http.MethodGet && !isFragment(r) {
				http.Redirect(w, r, "/ui/signin?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			c.render(w, r, http.StatusUnauthorized, "error", page{Title: "Signed out",
				Err: &apiError{Status: 401, Code: "unauthorized", Message: "you are not signed in", Hint: "Sign in again."}})
			return
		}
		// A valid session is an authenticated client: its request no longer
		// counts against its address's cap on unauthenticated requests
		// (an event stream holds its request for minutes).
		httpguard.Authenticated(r.Context())
		if r.Method != http.MethodGet && !checkCSRF(r, s) {
			c.render(w, r, http.StatusForbidden, "error", page{Title: "Not allowed", S: s,
				Err: &apiError{Status: 403, Code: "csrf", Message: "the form's security token is missing or stale",
					Hint: "Reload the page and try again."}})
			return
		}
		if write && !s.CanWrite() {
			c.render(w, r, http.StatusForbidden, "error", page{Title: "Read-only", S: s,
				Err: &apiError{Status: 403, Code: "forbidden", Message: "this token (role " + s.role + ") can read but not change anything",
					Hint: "Sign in with an admin token to make changes."}})
			return
		}
		err = h(w, c.withSince(r), s)
		if err == nil {
			return
		}
		var ae *apiError
		switch {
		case errors.As(err, &ae) && ae.Status == http.StatusUnauthorized:
			// The token was revoked while signed in: the session ends too.
			if err := c.sessions.end(r.Context(), s.idHash); err != nil {
				c.log.Error("console session", zap.Error(err))
			}
			setCookie(w, sessionCookie, "", -1)
			if isFragment(r) {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			http.Redirect(w, r, "/ui/signin?expired=1", http.StatusSeeOther)
		case errors.As(err, &ae):
			c.render(w, r, ae.Status, "error", page{Title: ae.Title(), S: s, WS: r.PathValue("ws"), Err: ae})
		default:
			c.log.Error("console request failed", zap.String("path", r.URL.Path), zap.Error(err))
			c.render(w, r, http.StatusInternalServerError, "error", page{Title: "Error", S: s, WS: r.PathValue("ws"),
				Err: &apiError{Status: 500, Code: "internal", Message: "the console failed to handle the request",
					Hint: "See the control plane log; try again."}})
		}
	})
}

// isFragment reports whether the request comes from the console's script
// (live updates) rather than a navigation.
func isFragment(r *http.Request) bool {
	return strings.HasSuffix(r.URL.Path, "/live") || strings.HasSuffix(r.URL.Path, "/logs") || strings.HasSuffix(r.URL.Path, "/events")
}

func (c *Console) home(w http.ResponseWriter, r *http.Request) {
	s := c.sessionOf(r)
	if s == nil {
		http.Redirect(w, r, "/ui/signin", http.StatusSeeOther)
		return
	}
	http.Redirect(w, r, "/ui/w/"+url.PathEscape(s.workspace)+"/servers", http.StatusSeeOther)
}

// --- sign in and out

type signinData struct {
	Next    string
	Expired bool
}

func (c *Console) signinPage(w http.ResponseWriter, r *http.Request) {
	if s := c.sessionOf(r); s != nil {
		http.Redirect(w, r, "/ui/w/"+url.PathEscape(s.workspace)+"/servers", http.StatusSeeOther)
		return
	}
	c.renderSignin(w, r, http.StatusOK, nil)
}

func (c *Console) renderSignin(w http.ResponseWriter, r *http.Request, status int, e *apiError) {
	// Login CSRF: the form carries a value that must match a cookie only
	// this origin could have set.
	tok := randomID()
	setCookie(w, signinCookie, tok, 600)
	c.render(w, r, status, "signin", page{Title: "Sign in", CSRF: tok, Err: e,
		Data: signinData{Next: safeNext(r.FormValue("next")), Expired: r.FormValue("expired") != ""}})
}

// safeNext keeps a post-sign-in redirect inside the console.
func safeNext(next string) string {
	if strings.HasPrefix(next, "/ui/") && !strings.HasPrefix(next, "//") && !strings.Contains(next, `\`) {
		return next
	}
	return ""
}

func (c *Console) signin(w http.ResponseWriter, r *http.Request) {
	ck, err := r.Cookie(signinCookie)
	if err != nil || !equal(r.PostFormValue(csrfField), ck.Value) {
		c.renderSignin(w, r, http.StatusForbidden, &apiError{Status: 403, Code: "csrf",
			Message: "the sign-in form expired", Hint: "Try again; cookies must be enabled."})
		return
	}
	token := secrets.New(strings.TrimSpace(r.PostFormValue("token")))
	// The API verifies the token exactly as it does for every request.
	var who struct {
		Name      string `json:"name"`
		Role      string `json:"role"`
		Workspace string `json:"workspace"`
	}
	if err := c.call(r, token.Reveal(), http.MethodGet, "/v1/whoami", nil, &who); err != nil {
		var ae *apiError
		if !errors.As(err, &ae) {
			c.log.Error("sign in", zap.Error(err))
			ae = &apiError{Status: 500, Code: "internal", Message: "sign-in failed", Hint: "See the control plane log."}
		}
		if ae.RetryAfter != "" {
			w.Header().Set("Retry-After", ae.RetryAfter)
		}
		if ae.Code == "unauthorized" {
			ae.Message = "that token is not valid (unknown, mistyped or revoked)"
			ae.Hint = "Paste the whole token, starting with dpt_. `devpilot tokens create` makes one."
		}
		c.renderSignin(w, r, ae.Status, ae)
		return
	}
	s, err := c.sessions.create(r.Context(), token, who.Name, who.Role, who.Workspace)
	if err != nil {
		c.log.Error("sign in", zap.Error(err))
		c.renderSignin(w, r, http.StatusInternalServerError, &apiError{Status: 500, Code: "internal",
			Message: "sign-in failed", Hint: "See the control plane log."})
		return
	}
	setCookie(w, signinCookie, "", -1)
	setCookie(w, sessionCookie, s.id, 0)
	c.log.Info("console sign in", zap.String("token_name", who.Name), zap.String("role", who.Role))
	next := safeNext(r.PostFormValue("next"))
	if next == "" {
		next = "/ui/w/" + url.PathEscape(who.Workspace) + "/servers"
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Console) signout(w http.ResponseWriter, r *http.Request, s *session) error {
	if err := c.sessions.end(r.Context(), s.idHash); err != nil {
		return fmt.Errorf("sign out: %w", err) // still signed in: say so rather than pretend
	}
	setCookie(w, sessionCookie, "", -1)
	http.Redirect(w, r, "/ui/signin", http.StatusSeeOther)
	return nil
}

// done redirects after a change, leaving a notice for the next page.
func (c *Console) done(w http.ResponseWriter, r *http.Request, s *session, to, msg string, e *apiError) error {
	c.sessions.setFlash(s, msg, e)
	http.Redirect(w, r, to, http.StatusSeeOther)
	return nil
}

func wsBase(r *http.Request) string { return "/v1/workspaces/" + url.PathEscape(r.PathValue("ws")) }
func uiBase(r *http.Request) string { return "/ui/w/" + url.PathEscape(r.PathValue("ws")) }
