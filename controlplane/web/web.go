// Package web is the control plane's browser console, served by the control
// plane itself: server-rendered HTML (html/template) with a little vanilla
// JavaScript, all assets embedded in the binary.
//
// The console holds no powers of its own. A user signs in with an API token;
// the token stays server-side in the session, and every read and change the
// console makes is an in-process request to the admin API carrying that
// token, so authorization, validation and errors are exactly the API's.
package web

import (
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"mime"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/httpguard"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Options configure the console.
type Options struct {
	// API is the admin API handler the console calls in-process.
	API    http.Handler
	Logger *zap.Logger
	// Store keeps the sessions, so they outlive a restart and a standby's
	// takeover; Keys seals their API and CSRF tokens there. Both required.
	Store *store.Store
	Keys  *secrets.Keyring
	// SessionTTL is how long a session lives without use (default 1 h);
	// SessionMaxAge caps its whole life (default 12 h).
	SessionTTL    time.Duration
	SessionMaxAge time.Duration
	Now           func() time.Time
}

// Console is the console's HTTP handler.
type Console struct {
	o        Options
	log      *zap.Logger
	mux      *http.ServeMux
	sessions *sessions
	pages    map[string]*template.Template
	static   http.Handler
}

// New builds the console. It panics without Options.Store or Options.Keys.
func New(o Options) *Console {
	if o.Store == nil || o.Keys == nil {
		panic("web: Options.Store and Options.Keys are required")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = time.Hour
	}
	if o.SessionMaxAge <= 0 {
		o.SessionMaxAge = 12 * time.Hour
	}
	c := &Console{o: o, log: o.Logger.Named("web"), mux: http.NewServeMux()}
	c.sessions = newSessions(o.Store, o.Keys, c.log, o.Now, o.SessionTTL, o.SessionMaxAge)
	c.pages = parsePages()
	sub, err := fs.Sub(staticFS, "static")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	c.static = http.StripPrefix("/static/", http.FileServerFS(sub))
	c.routes()
	return c
}

// IsConsolePath reports whether path belongs to the console rather than the
// API: "/", "/ui/…" and "/static/…".
func IsConsolePath(path string) bool {
	return path == "/" || strings.HasPrefix(path, "/ui/") || path == "/ui" || strings.HasPrefix(path, "/static/")
}

// Route serves the console's paths with console and everything else
// (/v1/…, /healthz, /readyz, /metrics, unknown paths) with api.
func Route(api, console http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if IsConsolePath(r.URL.Path) {
			console.ServeHTTP(w, r)
			return
		}
		api.ServeHTTP(w, r)
	})
}

// csp allows only the console's own files: no inline script or style.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// ServeHTTP implements http.Handler.
func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	if !strings.HasPrefix(r.URL.Path, "/static/") {
		h.Set("Cache-Control", "no-store")
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead && !c.readForm(w, r) {
		return
	}
	c.mux.ServeHTTP(w, r)
}

// MaxFormBytes bounds a console form's body. The console's forms are
// small and URL-encoded; nothing is uploaded.
const MaxFormBytes = 64 << 10

// readForm parses a form before any handler (sign-in included) sees it:
// URL-encoded only, at most MaxFormBytes. Anything else is refused before
// its body is read, and the connection is closed after the answer.
func (c *Console) readForm(w http.ResponseWriter, r *http.Request) bool {
	refuse := func(status int, code, msg, hint string) bool {
		w.Header().Set("Connection", "close")
		e := &apiError{Status: status, Code: code, Message: msg, Hint: hint}
		c.render(w, r, status, "error", page{Title: e.Title(), Err: e})
		return false
	}
	if r.ContentLength != 0 {
		mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
		if mt != "application/x-www-form-urlencoded" {
			return refuse(http.StatusUnsupportedMediaType, "unsupported_media_type",
				"the console accepts only URL-encoded forms", "Submit the console's own form from its page.")
		}
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxFormBytes)
	if err := r.ParseForm(); err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.As(err, &mbe):
			return refuse(http.StatusRequestEntityTooLarge, "too_large",
				fmt.Sprintf("the form is larger than %d KiB", MaxFormBytes>>10), "Shorten what you entered.")
		case errors.Is(err, httpguard.ErrBodyTimeout):
			return refuse(http.StatusRequestTimeout, "timeout", "the form did not arrive in time", "Try again.")
		default:
			return refuse(http.StatusBadRequest, "bad_request", "the form could not be read", "Submit the console's own form from its page.")
		}
	}
	return true
}
