// Package dosim is a DigitalOcean API v2 simulator served over real HTTP:
// the endpoints Devpilot uses (account, SSH keys, tags, firewalls, droplets,
// actions, regions, sizes, images) with the real JSON shapes, status codes,
// error bodies, rate-limit headers and pagination, so tests and `devpilot
// dev` can run godo against it unchanged. Faults (read-only tokens, droplet
// limit, sold-out sizes, 429 and 5xx bursts, latency, slow boots) are set
// with Go methods or the JSON control API under /_sim/.
//
// Serve Handler at the root path: godo's firewall paths are absolute.
package dosim

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
)

// Real limits (DO:description.yml "Rate Limit").
const (
	// HourlyLimit is the per-token request limit per hour.
	HourlyLimit = 5000
	// BurstLimit is the per-token request limit per minute.
	BurstLimit = 250
	// KeyListLimit is the special limit on GET /v2/account/keys per minute.
	KeyListLimit = 10
	// DefaultDropletLimit is a new account's droplet limit.
	DefaultDropletLimit = 25
	// MaxUserData is the largest user_data droplet create accepts (64 KiB).
	MaxUserData = 64 << 10
)

// Options configures a Sim.
type Options struct {
	Logger *zap.Logger // nil: no logs

	// Runtime, when set, is told to Boot each droplet when it is created and
	// to Destroy it when it is deleted.
	Runtime simrun.Runtime

	// BootDelay is how long a droplet stays "new" before it turns "active"
	// with a public IPv4 (with a Runtime: at least until Boot returned).
	BootDelay time.Duration

	// Now is the clock for rate limits and boot delays; nil: time.Now.
	Now func() time.Time
}

// Sim is a simulated DigitalOcean account. Safe for concurrent use.
type Sim struct {
	log     *zap.Logger
	runtime simrun.Runtime
	now     func() time.Time

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu           sync.Mutex
	closed       bool
	tokens       map[string]*token
	account      accountState
	faults       faults
	keys         []*sshKey
	tags         []string // canonical capitalisation, creation order
	firewalls    []*firewall
	droplets     []*droplet
	actions      map[int]*action
	delayChanged chan struct{}          // closed and replaced when the action delay changes
	counts       map[int]map[string]int // droplet id -> action type -> actions accepted (never forgotten)
	fwUpdates    map[string]int         // firewall id -> updates (PUT) accepted
	nextKey      int
	nextDrop     int
	nextAct      int
	nextIP       int
}

type token struct {
	readWrite bool
	requests  []time.Time // accepted requests in the last hour, oldest first
	keyLists  []time.Time // accepted GET /v2/account/keys in the last minute
}

type accountState struct {
	dropletLimit  int
	status        string
	statusMessage string
}

type faults struct {
	scopeAfterValidation bool
	soldOut              map[string]map[string]bool // region -> size -> sold out
	next429              int
	retryAfter           time.Duration
	next5xx              int
	status5xx            int
	latency              time.Duration
	bootDelay            time.Duration
	actionDelay          time.Duration // how long a droplet action stays in-progress at least
}

// New returns a simulator with an empty active account and no tokens.
func New(opts Options) *Sim {
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Sim{
		log:     opts.Logger,
		runtime: opts.Runtime,
		now:     opts.Now,
		ctx:     ctx,
		cancel:  cancel,
		tokens:  map[string]*token{},
		account: accountState{dropletLimit: DefaultDropletLimit, status: "active", statusMessage: " "},
		faults: faults{
			soldOut:   map[string]map[string]bool{},
			status5xx: http.StatusInternalServerError,
			bootDelay: opts.BootDelay,
		},
		actions:      map[int]*action{},
		counts:       map[int]map[string]int{},
		delayChanged: make(chan struct{}),
		nextKey:      41208731,
		nextDrop:     502387411,
		nextAct:      2184602217,
	}
}

// Close stops the goroutines the simulator started (droplet boots) and
// waits for them. Requests after Close get 503.
func (s *Sim) Close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

// AddToken registers a token; readWrite false makes it read-only. Adding
// a known token again changes its scope.
func (s *Sim) AddToken(tok string, readWrite bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.tokens[tok]; ok {
		t.readWrite = readWrite
		return
	}
	s.tokens[tok] = &token{readWrite: readWrite}
}

// RemoveToken revokes a token: it then gets 401.
func (s *Sim) RemoveToken(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, tok)
}

// SetDropletLimit sets the account's droplet limit.
func (s *Sim) SetDropletLimit(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.account.dropletLimit = n
}

// SetAccountStatus sets the account status ("active", "warning", "locked")
// and its status message.
func (s *Sim) SetAccountStatus(status, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.account.status = status
	s.account.statusMessage = message
}

// SetSoldOut marks size as sold out (or back in stock) in region: creating
// it there answers 422 "Size is not available in this region." and the
// region's "sizes" list omits it. The size's own "regions" list keeps the
// region, since the size is still offered there.
func (s *Sim) SetSoldOut(region, size string, soldOut bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if soldOut {
		if s.faults.soldOut[region] == nil {
			s.faults.soldOut[region] = map[string]bool{}
		}
		s.faults.soldOut[region][size] = true
		return
	}
	delete(s.faults.soldOut[region], size)
}

// FailNext429 makes the next n API requests answer 429 with retry-after.
func (s *Sim) FailNext429(n int, retryAfter time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.next429 = n
	s.faults.retryAfter = retryAfter
}

// FailNext5xx makes the next n API requests answer status (0: 500).
func (s *Sim) FailNext5xx(n, status int) {
	if status == 0 {
		status = http.StatusInternalServerError
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.next5xx = n
	s.faults.status5xx = status
}

// SetLatency delays every API answer by d.
func (s *Sim) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.latency = d
}

// SetBootDelay sets how long droplets created from now on stay "new".
func (s *Sim) SetBootDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.bootDelay = d
}

// SetActionDelay sets how long droplet actions stay "in-progress" at least
// (a Runtime may take longer), counted from each action's start; it
// applies to actions in progress too, so a test can hold actions with a
// long delay and release them with 0.
func (s *Sim) SetActionDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.actionDelay = d
	close(s.delayChanged)
	s.delayChanged = make(chan struct{})
}

// SetScopeCheckAfterValidation chooses when a read-only token's write is
// refused with 403: false (the default) before the request body is
// validated, true after it (a malformed write then gets its 400/422 even
// from a read-only token). Which order the real API uses is unverified.
func (s *Sim) SetScopeCheckAfterValidation(after bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults.scopeAfterValidation = after
}

// ResetFaults clears every fault: no sold-out sizes, no pending 429/5xx, no
// latency, scope checked first. The droplet limit, account status, boot
// delay and tokens stay as they are.
func (s *Sim) ResetFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	bd, ad := s.faults.bootDelay, s.faults.actionDelay
	s.faults = faults{soldOut: map[string]map[string]bool{}, status5xx: http.StatusInternalServerError, bootDelay: bd, actionDelay: ad}
}

// call is one API request being answered.
type call struct {
	s       *Sim
	w       http.ResponseWriter
	r       *http.Request
	reqID   string
	tok     *token
	checked bool // write scope already checked
}

// Handler returns the HTTP handler serving the API at /v2/ and the control
// API at /_sim/.
func (s *Sim) Handler() http.Handler {
	mux := http.NewServeMux()
	s.routes(mux)
	ctl := http.NewServeMux()
	s.controlRoutes(ctl)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/_sim/") {
			ctl.ServeHTTP(w, r)
			return
		}
		s.serveAPI(w, r, mux)
	})
}

type callKey struct{}

func callOf(r *http.Request) *call { return r.Context().Value(callKey{}).(*call) }

func (s *Sim) serveAPI(w http.ResponseWriter, r *http.Request, mux *http.ServeMux) {
	c := &call{s: s, w: w, r: r, reqID: uuid.NewString()}
	w.Header().Set("X-Request-Id", c.reqID)

	s.mu.Lock()
	closed, latency := s.closed, s.faults.latency
	s.mu.Unlock()
	if closed {
		c.error(http.StatusServiceUnavailable, "service_unavailable", "The simulator is shut down.")
		return
	}
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return
		case <-s.ctx.Done():
			t.Stop()
		}
	}

	s.mu.Lock()
	now := s.now()
	tokStr, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	tok := s.tokens[strings.TrimSpace(tokStr)]
	s.setRateHeaders(w.Header(), tok, now)

	// Injected faults come first: they model the API's edge failing.
	if s.faults.next429 > 0 {
		s.faults.next429--
		ra := s.faults.retryAfter
		s.mu.Unlock()
		secs := int((ra + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		c.error(http.StatusTooManyRequests, "too_many_requests", "API Rate limit exceeded.")
		return
	}
	if s.faults.next5xx > 0 {
		s.faults.next5xx--
		st := s.faults.status5xx
		s.mu.Unlock()
		c.error(st, errorID(st), "Server was unable to give you a response.")
		return
	}
	if tok == nil {
		s.mu.Unlock()
		c.error(http.StatusUnauthorized, "unauthorized", "Unable to authenticate you")
		return
	}
	if wait, limited := s.admit(tok, r, now); limited {
		s.setRateHeaders(w.Header(), tok, now)
		s.mu.Unlock()
		if wait > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
		}
		c.error(http.StatusTooManyRequests, "too_many_requests", "API Rate limit exceeded.")
		return
	}
	s.setRateHeaders(w.Header(), tok, now)
	scopeFirst := !s.faults.scopeAfterValidation
	s.mu.Unlock()

	c.tok = tok
	if scopeFirst && !c.writeAllowed() {
		return
	}
	mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callKey{}, c)))
}

// admit applies the real per-token limits and records an accepted request.
// It returns limited and, for the burst limits, how long until a request
// would be accepted. Caller holds s.mu.
func (s *Sim) admit(t *token, r *http.Request, now time.Time) (time.Duration, bool) {
	t.requests = pruneBefore(t.requests, now.Add(-time.Hour))
	t.keyLists = pruneBefore(t.keyLists, now.Add(-time.Minute))
	if len(t.requests) >= HourlyLimit {
		return 0, true
	}
	minuteAgo := now.Add(-time.Minute)
	inMinute := 0
	var oldestInMinute time.Time
	for i := len(t.requests) - 1; i >= 0 && t.requests[i].After(minuteAgo); i-- {
		inMinute++
		oldestInMinute = t.requests[i]
	}
	if inMinute >= BurstLimit {
		return oldestInMinute.Add(time.Minute).Sub(now), true
	}
	keyList := r.Method == http.MethodGet && strings.TrimSuffix(r.URL.Path, "/") == "/v2/account/keys"
	if keyList && len(t.keyLists) >= KeyListLimit {
		return t.keyLists[0].Add(time.Minute).Sub(now), true
	}
	t.requests = append(t.requests, now)
	if keyList {
		t.keyLists = append(t.keyLists, now)
	}
	return 0, false
}

func pruneBefore(ts []time.Time, cutoff time.Time) []time.Time {
	i := 0
	for i < len(ts) && !ts[i].After(cutoff) {
		i++
	}
	return ts[i:]
}

// setRateHeaders writes ratelimit-limit/remaining/reset. Caller holds s.mu.
func (s *Sim) setRateHeaders(h http.Header, t *token, now time.Time) {
	remaining, reset := HourlyLimit, now
	if t != nil {
		reqs := pruneBefore(t.requests, now.Add(-time.Hour))
		remaining = HourlyLimit - len(reqs)
		if len(reqs) > 0 {
			reset = reqs[0].Add(time.Hour)
		}
	}
	h.Set("Ratelimit-Limit", strconv.Itoa(HourlyLimit))
	h.Set("Ratelimit-Remaining", strconv.Itoa(max(remaining, 0)))
	h.Set("Ratelimit-Reset", strconv.FormatInt(reset.Unix(), 10))
}

// writeAllowed refuses a non-GET request from a read-only token with 403.
// It runs once per call: before routing (scope first) or from a handler
// once the body validated (scope after validation).
func (c *call) writeAllowed() bool {
	if c.checked {
		return true
	}
	c.checked = true
	if c.r.Method == http.MethodGet || c.r.Method == http.MethodHead {
		return true
	}
	c.s.mu.Lock()
	rw := c.tok.readWrite
	c.s.mu.Unlock()
	if !rw {
		c.error(http.StatusForbidden, "forbidden", "You do not have access for the attempted action.")
		return false
	}
	return true
}

func errorID(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "bad_request"
	case http.StatusUnauthorized:
		return "unauthorized"
	case http.StatusForbidden:
		return "forbidden"
	case http.StatusNotFound:
		return "not_found"
	case http.StatusConflict:
		return "conflict"
	case http.StatusUnprocessableEntity:
		return "unprocessable_entity"
	case http.StatusTooManyRequests:
		return "too_many_requests"
	case http.StatusServiceUnavailable:
		return "service_unavailable"
	default:
		if status >= 500 {
			return "server_error"
		}
		return strings.ReplaceAll(strings.ToLower(http.StatusText(status)), " ", "_")
	}
}

type errorBody struct {
	ID        string `json:"id"`
	Message   string `json:"message"`
	RequestID string `json:"request_id,omitempty"`
}

func (c *call) error(status int, id, msg string) {
	c.json(status, errorBody{ID: id, Message: msg, RequestID: c.reqID})
}

func (c *call) fail(status int, msg string) { c.error(status, errorID(status), msg) }

func (c *call) json(status int, v any) {
	writeJSON(c.w, status, v)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	_ = enc.Encode(v)
}

func (c *call) noContent() {
	c.w.Header().Set("Content-Type", "application/json; charset=utf-8")
	c.w.WriteHeader(http.StatusNoContent)
}

// decode reads a JSON body into v; a malformed body answers 400.
func (c *call) decode(v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(c.w, c.r.Body, 1<<20))
	if err := dec.Decode(v); err != nil {
		c.fail(http.StatusBadRequest, "unable to parse request body: malformed JSON")
		return false
	}
	return true
}
