package cloud

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestTransportMetrics: a request answered 429, then 502, then 200 counts
// three attempts by status, two retries and one 429 for its provider.
func TestTransportMetrics(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch calls.Add(1) {
		case 1:
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusTooManyRequests)
		case 2:
			w.WriteHeader(http.StatusBadGateway)
		default:
			_, _ = w.Write([]byte(`{}`))
		}
	}))
	defer srv.Close()
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	c := NewHTTPClient(TransportConfig{MinWait: time.Millisecond, MaxWait: 10 * time.Millisecond, Metrics: m, Provider: Vultr})
	defer c.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(context.Background(), "GET", srv.URL, nil)
	r, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = r.Body.Close()
	for _, want := range []struct {
		c    prometheus.Collector
		n    float64
		what string
	}{
		{m.requests.WithLabelValues(Vultr, "429"), 1, "429 attempts"},
		{m.requests.WithLabelValues(Vultr, "502"), 1, "502 attempts"},
		{m.requests.WithLabelValues(Vultr, "200"), 1, "200 attempts"},
		{m.retries.WithLabelValues(Vultr), 2, "retries"},
		{m.rateLimited.WithLabelValues(Vultr), 1, "429s"},
		{m.retries.WithLabelValues(DigitalOcean), 0, "other provider's retries"},
	} {
		if got := testutil.ToFloat64(want.c); got != want.n {
			t.Errorf("%s: %v, want %v", want.what, got, want.n)
		}
	}
	if n, err := testutil.GatherAndCount(reg, "devpilot_provider_request_duration_seconds"); err != nil || n != 2 {
		t.Errorf("duration histograms: %d %v", n, err)
	}
}
