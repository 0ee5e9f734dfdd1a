package cloud

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the provider-request figures of the shared transport: every
// attempt (a retried request counts once per attempt) by provider and
// status, the retries, the 429s, and the attempts' durations. One Metrics
// serves every provider client of a control plane.
type Metrics struct {
	requests    *prometheus.CounterVec
	retries     *prometheus.CounterVec
	rateLimited *prometheus.CounterVec
	duration    *prometheus.HistogramVec
}

// NewMetrics registers the transport's metrics with r.
func NewMetrics(r prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devpilot_provider_requests_total",
			Help: "Requests to cloud provider APIs, each attempt once, by provider and HTTP status (\"error\": no answer).",
		}, []string{"provider", "status"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devpilot_provider_retries_total",
			Help: "Provider requests tried again (429, 5xx, network errors), by provider.",
		}, []string{"provider"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devpilot_provider_rate_limited_total",
			Help: "429 Too Many Requests answers from provider APIs, by provider.",
		}, []string{"provider"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "devpilot_provider_request_duration_seconds",
			Help:    "Duration of one attempt of a provider request (after the client-side rate limiter), by provider.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"provider"}),
	}
	for _, p := range []string{DigitalOcean, Vultr} {
		m.retries.WithLabelValues(p)
		m.rateLimited.WithLabelValues(p)
		m.duration.WithLabelValues(p)
	}
	r.MustRegister(m.requests, m.retries, m.rateLimited, m.duration)
	return m
}

func (m *Metrics) retried(provider string) {
	if m != nil {
		m.retries.WithLabelValues(provider).Inc()
	}
}

// metricsTransport records each attempt.
type metricsTransport struct {
	m        *Metrics
	provider string
	next     http.RoundTripper
}

func (t *metricsTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	start := time.Now()
	resp, err := t.next.RoundTrip(req)
	t.m.duration.WithLabelValues(t.provider).Observe(time.Since(start).Seconds())
	status := "error"
	if err == nil {
		status = strconv.Itoa(resp.StatusCode)
		if resp.StatusCode == http.StatusTooManyRequests {
			t.m.rateLimited.WithLabelValues(t.provider).Inc()
		}
	}
	t.m.requests.WithLabelValues(t.provider, status).Inc()
	return resp, err
}
