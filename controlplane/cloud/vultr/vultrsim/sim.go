// Package vultrsim is a loopback simulator of the Vultr API v2: the
// endpoints Devpilot uses (account, SSH keys, firewall groups and rules,
// instances, regions, plans, availability, os) with the real paths, JSON
// shapes, status codes, error bodies and cursor pagination, plus the failure
// modes a user meets (unknown key, IP allowlist, API disabled, sub-user ACLs,
// rate limit, instance limit, sold-out plans, 5xx, slowness). Faults are set
// with Go methods or the JSON control API under /_sim/ (control.go).
//
// Texts marked UNVERIFIED below are guesses: no public source shows the
// real API's answer for that case.
package vultrsim

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
)

// Options configures a simulator.
type Options struct {
	Logger  *zap.Logger    // nil: no logs
	Runtime simrun.Runtime // nil: instances simply turn active

	// BootDelay is how long a new instance stays "pending" before it turns
	// "active" (and before Runtime.Boot is called). Zero boots at once,
	// but the create answer is always "pending".
	BootDelay time.Duration

	// Now is the clock for dates and the rate limiter; nil is time.Now.
	Now func() time.Time

	// RateLimit is requests per second per source IP before 429; 0 means
	// Vultr's documented 30, negative switches the limit off.
	RateLimit int
}

// KeyOptions describes an API key registered with AddKey.
type KeyOptions struct {
	// AllowedIPs is the key's access-control allowlist (addresses or
	// CIDRs). Empty allows every caller.
	AllowedIPs []string `json:"allowed_ips,omitempty"`
	// APIDisabled makes every authenticated call fail as if API access
	// were switched off for the account.
	APIDisabled bool `json:"api_disabled,omitempty"`
	// ACLs are the user's permissions as GET /v2/account reports them. nil
	// means the account owner (every ACL); an empty non-nil slice a
	// sub-user with none.
	ACLs []string `json:"acls"`
	// Name and Email are reported by GET /v2/account.
	Name  string `json:"name,omitempty"`
	Email string `json:"email,omitempty"`
}

// Sim is a running simulator. Serve Handler() over HTTP (httptest.NewServer
// is fine); call Close when done. All methods are safe for concurrent use.
type Sim struct {
	log     *zap.Logger
	runtime simrun.Runtime
	now     func() time.Time
	rps     int

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu        sync.Mutex
	closed    bool
	keys      map[string]KeyOptions
	plans     []plan
	soldOut   map[string]map[string]bool // region → plan → sold out
	limit     int                        // instance limit, 0 = none
	bootDelay time.Duration
	latency   time.Duration
	next429   int
	retryAft  time.Duration
	next5xx   int
	status5xx int
	window    map[string]*ipWindow

	sshKeys   []*sshKey
	firewalls []*firewallGroup
	instances []*instance
	snapshots []*snapshot
	counts    map[string]map[string]int // instance id -> action type -> accepted API actions
	fwChanges map[string]int            // firewall group id -> rules created or deleted through the API
	ipSeq     int
	requests  int
	throttled int // answers refused by the real per-IP limit
}

type ipWindow struct {
	second int64
	count  int
}

// New returns a simulator with an empty account (no keys: add some with
// AddKey) and the default catalog.
func New(opts Options) *Sim {
	log := opts.Logger
	if log == nil {
		log = zap.NewNop()
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	rps := opts.RateLimit
	if rps == 0 {
		rps = 30
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Sim{
		log:       log.Named("vultrsim"),
		runtime:   opts.Runtime,
		now:       now,
		rps:       rps,
		ctx:       ctx,
		cancel:    cancel,
		keys:      map[string]KeyOptions{},
		plans:     defaultPlans(),
		soldOut:   map[string]map[string]bool{},
		bootDelay: opts.BootDelay,
		window:    map[string]*ipWindow{},
	}
}

// Close stops boot goroutines, destroys every machine the Runtime booted
// and waits for all of it.
func (s *Sim) Close() {
	s.mu.Lock()
	s.closed = true // no boot goroutine starts after this
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	var booted []string
	for _, in := range s.instances {
		if in.bootCalled {
			booted = append(booted, in.ID)
		}
	}
	s.instances = nil
	s.mu.Unlock()
	if s.runtime == nil {
		return
	}
	for _, id := range booted {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if err := s.runtime.Destroy(ctx, id); err != nil {
			s.log.Warn("destroy simulated instance", zap.String("instance", id), zap.Error(err))
		}
		cancel()
	}
}

// AddKey registers (or replaces) an API key.
func (s *Sim) AddKey(key string, opts KeyOptions) {
	s.mu.Lock()
	defer s.mu.Unlock()
	opts.AllowedIPs = slices.Clone(opts.AllowedIPs)
	if opts.ACLs != nil {
		opts.ACLs = slices.Clone(opts.ACLs)
	}
	s.keys[key] = opts
}

// RemoveKey forgets an API key; it then answers "Invalid API token.".
func (s *Sim) RemoveKey(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.keys, key)
}

// SetInstanceLimit caps the number of instances the account may hold;
// creating one more fails with 400. Zero removes the cap.
func (s *Sim) SetInstanceLimit(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limit = max(n, 0)
}

// SetSoldOut marks plan as sold out (or back in stock) in region: the plan
// still lists region in its locations, but the region's availability omits
// it and creating it there fails with 400.
func (s *Sim) SetSoldOut(region, plan string, soldOut bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.soldOut[region] == nil {
		s.soldOut[region] = map[string]bool{}
	}
	if soldOut {
		s.soldOut[region][plan] = true
	} else {
		delete(s.soldOut[region], plan)
	}
}

// RateLimitNext makes the next n API requests answer 429. A positive
// retryAfter adds a Retry-After header (whole seconds, rounded up) — Vultr
// documents no such header, so keep it zero to be faithful.
func (s *Sim) RateLimitNext(n int, retryAfter time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next429 = max(n, 0)
	s.retryAft = retryAfter
}

// FailNext makes the next n API requests answer status (a 5xx; 0 means 500).
func (s *Sim) FailNext(n, status int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if status == 0 {
		status = http.StatusInternalServerError
	}
	s.next5xx = max(n, 0)
	s.status5xx = status
}

// SetLatency delays every API answer by d.
func (s *Sim) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = max(d, 0)
}

// SetBootDelay changes how long instances created from now on stay pending.
func (s *Sim) SetBootDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bootDelay = max(d, 0)
}

// ResetFaults clears the instance limit, sold-out plans, pending 429s and
// 5xx answers and latency. Keys and resources stay.
func (s *Sim) ResetFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.limit = 0
	s.soldOut = map[string]map[string]bool{}
	s.next429, s.retryAft, s.next5xx, s.latency = 0, 0, 0, 0
}

// Requests returns how many /v2/ requests the simulator has answered.
func (s *Sim) Requests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests
}

// Handler serves the Vultr API under /v2/ and the control API under /_sim/.
func (s *Sim) Handler() http.Handler {
	api := s.apiMux()
	control := s.controlMux()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/_sim/") {
			control.ServeHTTP(w, r)
			return
		}
		s.serveAPI(w, r, api)
	})
}

func (s *Sim) serveAPI(w http.ResponseWriter, r *http.Request, api http.Handler) {
	ip := callerIP(r)
	s.mu.Lock()
	s.requests++
	latency := s.latency
	s.mu.Unlock()
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
	limited := s.overLimit(ip)
	if limited {
		s.throttled++
	}
	var retryAfter time.Duration
	if !limited && s.next429 > 0 {
		s.next429--
		limited, retryAfter = true, s.retryAft
	}
	fail := 0
	if !limited && s.next5xx > 0 {
		s.next5xx--
		fail = s.status5xx
	}
	s.mu.Unlock()

	switch {
	case limited:
		if retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int((retryAfter+time.Second-1)/time.Second)))
		}
		// UNVERIFIED: Vultr documents the 429 but not its body; this is the
		// text API-NOTES saw in an SDK run against a stand-in.
		writeError(w, http.StatusTooManyRequests, "Rate limit reached")
	case fail != 0:
		// UNVERIFIED 5xx body.
		writeError(w, fail, "An internal error occurred. Please try again later.")
	default:
		api.ServeHTTP(w, r)
	}
	s.log.Debug("request", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.String("caller", ip))
}

// overLimit counts a request against ip's one-second window. Caller holds mu.
func (s *Sim) overLimit(ip string) bool {
	if s.rps < 0 {
		return false
	}
	sec := s.now().Unix()
	wdw := s.window[ip]
	if wdw == nil || wdw.second != sec {
		wdw = &ipWindow{second: sec}
		s.window[ip] = wdw
	}
	wdw.count++
	return wdw.count > s.rps
}

func callerIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// caller is the authenticated user of a request.
type caller struct {
	key  string
	opts KeyOptions
}

func (c caller) acls() []string {
	if c.opts.ACLs == nil {
		return allACLs
	}
	return c.opts.ACLs
}

// authenticate checks the bearer key, its IP allowlist and the account's
// API switch, answering the error itself when it fails.
func (s *Sim) authenticate(w http.ResponseWriter, r *http.Request) (caller, bool) {
	auth := r.Header.Get("Authorization")
	key, ok := strings.CutPrefix(auth, "Bearer ")
	key = strings.TrimSpace(key)
	s.mu.Lock()
	opts, known := s.keys[key]
	s.mu.Unlock()
	if !ok || key == "" || !known {
		// The text is a third-party fixture's (API-NOTES §1), UNVERIFIED live.
		writeError(w, http.StatusUnauthorized, "Invalid API token.")
		return caller{}, false
	}
	ip := callerIP(r)
	if len(opts.AllowedIPs) > 0 && !ipAllowed(ip, opts.AllowedIPs) {
		// OBSERVED (vultr/vultr-csi#97).
		writeError(w, http.StatusUnauthorized, "Unauthorized IP address: "+ip)
		return caller{}, false
	}
	if opts.APIDisabled {
		// UNVERIFIED: status and text are guesses.
		writeError(w, http.StatusUnauthorized, "API access is disabled for this account. Enable it under Account > API.")
		return caller{}, false
	}
	return caller{key: key, opts: opts}, true
}

func ipAllowed(ip string, allowed []string) bool {
	addr := net.ParseIP(ip)
	for _, a := range allowed {
		if strings.Contains(a, "/") {
			if _, n, err := net.ParseCIDR(a); err == nil && addr != nil && n.Contains(addr) {
				return true
			}
			continue
		}
		if p := net.ParseIP(a); p != nil && addr != nil && p.Equal(addr) {
			return true
		}
	}
	return false
}

// requireACL answers 403 unless the caller has acl.
func requireACL(w http.ResponseWriter, c caller, acl string) bool {
	if slices.Contains(c.acls(), acl) {
		return true
	}
	// The text is the spec's description of 403 (VU:info.description).
	writeError(w, http.StatusForbidden, "You are not allowed to perform that action.")
	return false
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":"internal error","status":500}`)
	}
	// govultr decodes a body only when Content-Type is exactly this.
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"error": msg, "status": status})
}

func noContent(w http.ResponseWriter) {
	w.WriteHeader(http.StatusNoContent)
}
