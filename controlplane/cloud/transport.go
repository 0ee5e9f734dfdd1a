package cloud

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/go-retryablehttp"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/devpilot/devpilot/controlplane/secrets"
)

// TransportConfig configures the HTTP client both SDKs are built on.
type TransportConfig struct {
	Token     secrets.Value     // sent as "Authorization: Bearer"; never logged
	UserAgent string            // prepended to the SDK's own User-Agent
	Base      http.RoundTripper // nil: a pooled default transport

	// Client-side limiter, so Devpilot stays under the provider's limit
	// even before the provider says 429.
	RequestsPerSecond float64
	Burst             int

	// Retries: 429, 5xx (not 501) and network errors, MaxRetries times,
	// waiting full-jitter exponential backoff between MinWait and MaxWait,
	// or what Retry-After / ratelimit-reset asks for. A provider asking for
	// a longer wait than MaxWait is not waited out: its 429 is returned.
	MaxRetries int           // default 4
	MinWait    time.Duration // default 500ms
	MaxWait    time.Duration // default 30s

	Logger *zap.Logger

	// Metrics, when set, count every attempt under Provider's name.
	Metrics  *Metrics
	Provider string

	// OnRefused, when set, is called with the status of every final answer
	// that refuses the credential (401 or 403), so the integration's
	// health check runs at once instead of at its next interval.
	OnRefused func(status int)
}

// DigitalOcean allows 250 requests per minute per token; stay at 240.
// Vultr allows 30 per second per IP; stay at 25.
const (
	DigitalOceanRPS = 240.0 / 60
	VultrRPS        = 25.0
)

// NewHTTPClient returns the client to hand to godo/govultr. The SDKs' own
// retries stay off (govultr: SetRetryLimit(0)) so there is exactly one retry
// policy, this one: go-retryablehttp (which both SDKs already use) with
// Devpilot's classifier and backoff.
func NewHTTPClient(cfg TransportConfig) *http.Client {
	if cfg.MaxRetries == 0 {
		cfg.MaxRetries = 4
	}
	if cfg.MinWait == 0 {
		cfg.MinWait = 500 * time.Millisecond
	}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	base := cfg.Base
	if base == nil {
		base = http.DefaultTransport.(*http.Transport).Clone()
	}
	var limiter *rate.Limiter
	if cfg.RequestsPerSecond > 0 {
		burst := max(cfg.Burst, 1)
		limiter = rate.NewLimiter(rate.Limit(cfg.RequestsPerSecond), burst)
	}
	if cfg.Metrics != nil {
		base = &metricsTransport{m: cfg.Metrics, provider: cfg.Provider, next: base}
	}
	log := cfg.Logger
	rc := &retryablehttp.Client{
		HTTPClient:   &http.Client{Transport: &limitTransport{limiter: limiter, next: base}},
		RetryWaitMin: cfg.MinWait,
		RetryWaitMax: cfg.MaxWait,
		RetryMax:     cfg.MaxRetries,
		CheckRetry: func(ctx context.Context, resp *http.Response, err error) (bool, error) {
			retry, _ := Classify(ctx, resp, err, cfg.MaxWait)
			return retry, nil
		},
		Backoff: func(minWait, maxWait time.Duration, attempt int, resp *http.Response) time.Duration {
			d := Backoff(minWait, maxWait, attempt, resp, time.Now())
			cfg.Metrics.retried(cfg.Provider)
			log.Debug("provider request will be retried", zap.Int("attempt", attempt+1), zap.Duration("wait", d), zap.Int("status", statusOf(resp)))
			return d
		},
		ErrorHandler: retryablehttp.PassthroughErrorHandler,
	}
	return &http.Client{
		Transport: &authTransport{
			token:     cfg.Token,
			userAgent: cfg.UserAgent,
			next:      &retryablehttp.RoundTripper{Client: rc},
			onRefused: cfg.OnRefused,
		},
	}
}

func statusOf(resp *http.Response) int {
	if resp == nil {
		return 0
	}
	return resp.StatusCode
}

// Classify is the one retry classifier: it says whether a request should be
// tried again. 429 and 5xx (except 501 Not Implemented) and network errors
// are retryable; every other status, 401/403 included, is final. A 429 or
// 503 whose Retry-After (or DigitalOcean ratelimit-reset) lies beyond
// maxWait is final too: the caller gets a rate_limited error with the wait.
func Classify(ctx context.Context, resp *http.Response, err error, maxWait time.Duration) (retry bool, wait time.Duration) {
	if ctx.Err() != nil {
		return false, 0
	}
	if err != nil {
		// Reuse retryablehttp's judgement of transport errors (it refuses
		// to retry TLS verification failures, bad schemes, redirect loops).
		ok, _ := retryablehttp.DefaultRetryPolicy(ctx, nil, err)
		return ok, 0
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode == http.StatusServiceUnavailable:
		if d, ok := ServerWait(resp, time.Now()); ok {
			return d <= maxWait, d
		}
		return true, 0
	case resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented:
		return true, 0
	}
	return false, 0
}

// ServerWait reads how long the provider asked us to wait: Retry-After in
// seconds or as an HTTP date, else, when ratelimit-remaining is 0,
// DigitalOcean's ratelimit-reset (Unix seconds).
func ServerWait(resp *http.Response, now time.Time) (time.Duration, bool) {
	if resp == nil {
		return 0, false
	}
	if v := resp.Header.Get("Retry-After"); v != "" {
		if s, err := strconv.Atoi(v); err == nil && s >= 0 {
			return time.Duration(s) * time.Second, true
		}
		if t, err := http.ParseTime(v); err == nil {
			return max(t.Sub(now), 0), true
		}
	}
	if resp.Header.Get("Ratelimit-Remaining") == "0" {
		if s, err := strconv.ParseInt(resp.Header.Get("Ratelimit-Reset"), 10, 64); err == nil {
			return max(time.Unix(s, 0).Sub(now), 0), true
		}
	}
	return 0, false
}

// Backoff returns the wait before retry number attempt+1: what the server
// asked for (plus up to 10% jitter so a fleet of workers does not return in
// step), else full jitter: a uniform random wait in [0, min(max, min·2^attempt)].
func Backoff(minWait, maxWait time.Duration, attempt int, resp *http.Response, now time.Time) time.Duration {
	if d, ok := ServerWait(resp, now); ok {
		return d + rand.N(d/10+time.Millisecond)
	}
	ceiling := minWait << min(attempt, 20)
	if ceiling <= 0 || ceiling > maxWait {
		ceiling = maxWait
	}
	return rand.N(ceiling + 1)
}

type limitTransport struct {
	limiter *rate.Limiter
	next    http.RoundTripper
}

func (t *limitTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.limiter != nil {
		if err := t.limiter.Wait(req.Context()); err != nil {
			return nil, err
		}
	}
	return t.next.RoundTrip(req)
}

// authTransport adds the bearer token and records the final answer in a
// Capture when the request's context carries one.
type authTransport struct {
	token     secrets.Value
	userAgent string
	next      http.RoundTripper
	onRefused func(status int)
}

func (t *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	r := req.Clone(req.Context())
	if !t.token.IsZero() {
		r.Header.Set("Authorization", "Bearer "+t.token.Reveal())
	}
	if t.userAgent != "" {
		r.Header.Set("User-Agent", t.userAgent+" "+r.Header.Get("User-Agent"))
	}
	resp, err := t.next.RoundTrip(r)
	if t.onRefused != nil && resp != nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
		t.onRefused(resp.StatusCode)
	}
	if c, ok := req.Context().Value(captureKey{}).(*Capture); ok && resp != nil {
		c.Status = resp.StatusCode
		c.Header = resp.Header.Clone()
		if resp.StatusCode >= 400 {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			_ = resp.Body.Close()
			c.Body = body
			resp.Body = io.NopCloser(bytes.NewReader(body))
		}
	}
	return resp, err
}

// Capture records the status, headers and (for errors) body of the last
// provider answer to a request. govultr turns error answers into bare
// strings without the status; a Capture lets the provider map them exactly.
type Capture struct {
	Status int
	Header http.Header
	Body   []byte
}

type captureKey struct{}

// WithCapture returns a context whose provider requests record their last
// answer in the returned Capture. Use a fresh one per SDK call.
func WithCapture(ctx context.Context) (context.Context, *Capture) {
	c := &Capture{}
	return context.WithValue(ctx, captureKey{}, c), c
}
