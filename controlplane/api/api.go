// Package api is the control plane's admin HTTP API: JSON over HTTPS,
// bearer tokens, one error body shape, and a route per verb of DESIGN.md's
// contract. Handlers are thin: they authorise, decode, call a service and
// encode.
package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/devpilot/devpilot/controlplane/agentrelease"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/alerts"
	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/auth"
	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/httpguard"
	"github.com/devpilot/devpilot/controlplane/integrations"
	"github.com/devpilot/devpilot/controlplane/keyrotation"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/provision"
	"github.com/devpilot/devpilot/controlplane/rollout"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/tasks"
	"github.com/devpilot/devpilot/controlplane/webhooks"
)

// KeyRotator re-encrypts every stored secret under a new master key.
type KeyRotator func(ctx context.Context) (RotateResult, error)

// RotateResult reports a master key rotation.
type RotateResult = keyrotation.Result

// Options wire the API to its services.
type Options struct {
	Store        *store.Store
	Integrations *integrations.Service
	Servers      *provision.Service // nil: no server routes
	Tasks        *tasks.Service     // nil: no task and deployment routes
	Rollouts     *rollout.Service   // nil: no agent rollout routes
	Alerts       *alerts.Service    // nil: no alert routes
	Webhooks     *webhooks.Service  // nil: no webhook routes
	Agent        http.Handler       // the hub's WebSocket endpoint and the agent download; public
	RotateKeys   KeyRotator
	Logger       *zap.Logger
	Registry     *prometheus.Registry // where the API registers its metrics; also served at /metrics
	Gatherer     prometheus.Gatherer  // what /metrics serves; default Registry
	// Throttle budgets failed authentications per client address (the
	// console's sign-in included); nil: none.
	Throttle *httpguard.Throttle
	Now      func() time.Time
	// Agents says how many agent connections the hub holds and its bound
	// (0: none), for /readyz; nil: not reported.
	Agents func() (conns, capacity int)
	// Releases is the agent release catalogue (GET /v1/agent-releases);
	// nil: an empty list.
	Releases *agentrelease.Store
	// EventsPoll is how often a follower of the event log reads the table
	// for events another control plane wrote (default 1s); EventsHeartbeat
	// how often an idle stream sends a keep-alive comment (default 15s).
	EventsPoll      time.Duration
	EventsHeartbeat time.Duration
}

// API is the admin HTTP handler.
type API struct {
	o          Options
	log        *zap.Logger
	mux        *http.ServeMux
	metrics    *metrics
	registered []Route
}

// Route is a registered route: its mux pattern and what it requires of
// the caller.
type Route struct {
	Pattern string // "GET /v1/workspaces/{ws}/servers"
	Access  string // "none", "read", "write" or "owner"
}

// Routes lists the registered routes in registration order (the
// not-found fallback excluded); the OpenAPI and auth tests start from it.
func (a *API) Routes() []Route { return append([]Route(nil), a.registered...) }

func (n access) String() string {
	return [...]string{"none", "read", "write", "owner"}[n]
}

// public registers a route that needs no token.
func (a *API) public(pattern string, h http.Handler) {
	a.registered = append(a.registered, Route{pattern, public.String()})
	a.mux.Handle(pattern, h)
}

type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	authFail prometheus.Counter
}

// New builds the handler.
func New(o Options) *API {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	if o.Gatherer == nil {
		o.Gatherer = o.Registry
	}
	if o.EventsPoll <= 0 {
		o.EventsPoll = time.Second
	}
	if o.EventsHeartbeat <= 0 {
		o.EventsHeartbeat = 15 * time.Second
	}
	a := &API{o: o, log: o.Logger.Named("api"), mux: http.NewServeMux()}
	a.metrics = &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devpilot_http_requests_total", Help: "Admin API requests by route and status code.",
		}, []string{"route", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "devpilot_http_request_duration_seconds", Help: "Admin API latency by route.",
			Buckets: prometheus.DefBuckets,
		}, []string{"route"}),
		authFail: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devpilot_http_auth_failures_total", Help: "Requests refused for a missing, unknown or revoked token.",
		}),
	}
	o.Registry.MustRegister(a.metrics.requests, a.metrics.duration, a.metrics.authFail)
	a.routes()
	return a
}

// ServeHTTP implements http.Handler.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

// access is what a route requires of the caller.
type access int

const (
	public    access = iota
	read             // any valid token with access to the workspace
	write            // owner or admin
	ownerOnly        // instance-wide actions
)

func (a *API) handle(pattern string, need access, h func(w http.ResponseWriter, r *http.Request, c *call) error) {
	route := pattern
	if pattern != "/" {
		a.registered = append(a.registered, Route{pattern, need.String()})
	}
	a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		err := a.serve(sw, r, need, h)
		if err != nil {
			a.writeError(sw, r, err)
		}
		a.metrics.requests.WithLabelValues(route, strconv.Itoa(sw.status)).Inc()
		a.metrics.duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
		lvl := zap.DebugLevel
		if sw.status >= 500 {
			lvl = zap.WarnLevel
		}
		a.log.Check(lvl, "request").Write(zap.String("route", route), zap.String("path", r.URL.Path),
			zap.Int("status", sw.status), zap.Duration("took", time.Since(start)))
	})
}

// call is what a handler knows about the request's caller.
type call struct {
	p  auth.Principal
	ws store.Workspace // zero for routes without {ws}
}

func (c *call) actor() integrations.Actor { return integrations.Actor(c.p.Actor()) }

func (a *API) serve(w http.ResponseWriter, r *http.Request, need access, h func(http.ResponseWriter, *http.Request, *call) error) error {
	c := &call{}
	if need == public {
		return h(w, r, c)
	}
	p, err := a.authenticate(r)
	if err != nil {
		a.metrics.authFail.Inc()
		w.Header().Set("WWW-Authenticate", `Bearer realm="devpilot"`)
		if errors.Is(err, errUnauthorized) && a.o.Throttle != nil {
			if over, after := a.o.Throttle.Fail(httpguard.ClientKey(r)); over {
				w.Header().Set("Retry-After", httpguard.RetryAfter(after))
				return errThrottled
			}
		}
		return err
	}
	httpguard.Authenticated(r.Context())
	c.p = p
	if slug := r.PathValue("ws"); slug != "" {
		ws, err := a.o.Store.Q().WorkspaceBySlug(r.Context(), slug)
		if errors.Is(err, store.ErrNotFound) || (err == nil && !p.CanAccess(ws.ID)) {
			// Another workspace's existence is not revealed: same answer as a missing one.
			return problem.NotFound("workspace " + slug)
		}
		if err != nil {
			return err
		}
		c.ws = ws
	}
	switch {
	case need == write && !p.CanWrite():
		return problem.Forbidden("Ask an admin for a token with the admin role.", "this token (role %s) can read but not change anything", p.Role)
	case need == ownerOnly && p.Role != auth.RoleOwner:
		return problem.Forbidden("Use the owner token (stored in the data directory as owner.token).", "only the owner token may do this")
	}
	return h(w, r, c)
}

var errUnauthorized = &problem.Error{Status: http.StatusUnauthorized, Code: "unauthorized",
	Message: "a valid API token is required", Hint: "Send Authorization: Bearer <token>; `devpilot tokens create` makes one."}

// errThrottled answers a failed authentication from an address over its
// budget of failures (a valid token is never refused).
var errThrottled = &problem.Error{Status: http.StatusTooManyRequests, Code: "rate_limited",
	Message: "too many failed authentications from your address",
	Hint:    "Retry after Retry-After seconds with a valid token; `devpilot tokens create` makes one."}

// Admit reports whether r carries a valid API token (for the door's
// per-address cap, which lets such requests through).
func (a *API) Admit(r *http.Request) bool {
	_, err := a.authenticate(r)
	return err == nil
}

func (a *API) authenticate(r *http.Request) (auth.Principal, error) {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return auth.Principal{}, errUnauthorized
	}
	id, secret, ok := auth.Parse(strings.TrimSpace(tok))
	if !ok {
		return auth.Principal{}, errUnauthorized
	}
	t, err := a.o.Store.Q().TokenByID(r.Context(), id)
	if errors.Is(err, store.ErrNotFound) {
		return auth.Principal{}, errUnauthorized
	}
	if err != nil {
		return auth.Principal{}, err
	}
	if !auth.Matches(t.SecretHash, secret) || t.RevokedAt != nil {
		return auth.Principal{}, errUnauthorized
	}
	now := a.o.Now()
	if t.LastUsedAt == nil || now.Sub(*t.LastUsedAt) > time.Minute {
		if err := a.o.Store.Q().TouchToken(r.Context(), t.ID, now); err != nil {
			a.log.Warn("record token use", zap.Error(err))
		}
	}
	return auth.Principal{TokenID: t.ID, TokenName: t.Name, Role: t.Role, WorkspaceID: t.WorkspaceID}, nil
}

// --- encoding

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

const maxBody = 1 << 20

const jsonHint = "Send one JSON object; see the API reference in the README."

// decode reads a JSON body of at most maxBody bytes into v, refusing
// unknown fields and anything after the one JSON value but white space.
// Its messages name fields and byte offsets, never a value.
func decode(r *http.Request, v any) error {
	b, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return problem.Validation("Send at most 1 MiB; large files go to a server with an exec task (e.g. curl).",
				"request body is larger than %d bytes", maxBody)
		}
		if errors.Is(err, httpguard.ErrBodyTimeout) {
			return &problem.Error{Status: http.StatusRequestTimeout, Code: "timeout",
				Message: "the request body did not arrive in time", Hint: "Send the whole body at once; retry."}
		}
		return problem.Validation(jsonHint, "malformed JSON body: cannot be read")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return problem.Validation(jsonHint, "malformed JSON body: %s", jsonErrorText(err))
	}
	if len(bytes.TrimLeft(b[dec.InputOffset():], " \t\r\n")) > 0 {
		return problem.Validation(jsonHint, "malformed JSON body: data after the JSON value")
	}
	return nil
}

// fieldNameRE is what an API field name looks like; an unknown field is
// named in an error only if it looks like one (not, say, a pasted key).
var fieldNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,63}$`)

func jsonErrorText(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %q must be %s", te.Field, te.Type)
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		if n, err := strconv.Unquote(name); err == nil && fieldNameRE.MatchString(n) {
			return "unknown field " + name
		}
		return "an unknown field"
	}
	if errors.Is(err, io.EOF) {
		return "empty body"
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return "the body ends inside the JSON value"
	}
	return "cannot be decoded"
}

// cloudStatus is the HTTP status for a provider failure.
func cloudStatus(c cloud.Code) int {
	switch c {
	case cloud.CodeRateLimited:
		return http.StatusTooManyRequests
	case cloud.CodeProviderError:
		return http.StatusBadGateway
	default:
		// The provider refused: the request was understood but the
		// credential, account or choice cannot serve it.
		return http.StatusUnprocessableEntity
	}
}

func errorBody(code, message, hint string) apitypes.ErrorBody {
	return apitypes.ErrorBody{Error: apitypes.ErrorDetail{Code: code, Message: message, Hint: hint}}
}

func (a *API) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var (
		pe *problem.Error
		ce *cloud.Error
	)
	switch {
	case errors.As(err, &pe):
		_ = writeJSON(w, pe.Status, errorBody(pe.Code, pe.Message, pe.Hint))
	case errors.As(err, &ce):
		if ce.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(ce.RetryAfter.Round(time.Second)/time.Second)))
		}
		_ = writeJSON(w, cloudStatus(ce.Code), errorBody(string(ce.Code), ce.Error(), ce.Hint))
	case errors.Is(err, context.Canceled):
		// The client went away; nobody reads this.
		w.WriteHeader(499)
	default:
		a.log.Error("request failed", zap.String("path", r.URL.Path), zap.Error(err))
		_ = writeJSON(w, http.StatusInternalServerError, errorBody("internal",
			"the control plane failed to handle the request", "See the control plane log; the request may be retried."))
	}
}
