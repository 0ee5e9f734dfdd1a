package webhooks

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the outbox's figures: attempts by outcome (counted here) and
// the undelivered backlog (read from the database at each scrape, so every
// control plane reports the shared outbox).
type metrics struct {
	deliveries *prometheus.CounterVec
	depth      *prometheus.Desc
	oldest     *prometheus.Desc
	s          *Service
}

func newMetrics(r prometheus.Registerer, s *Service) *metrics {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devpilot_webhook_deliveries_total",
			Help: "Webhook delivery attempts recorded by this control plane, by outcome: succeeded, failed (retry scheduled) or dead (given up).",
		}, []string{"outcome"}),
		depth: prometheus.NewDesc("devpilot_webhook_outbox_depth",
			"Webhook deliveries not yet delivered (pending or failed awaiting a retry).", nil, nil),
		oldest: prometheus.NewDesc("devpilot_webhook_oldest_undelivered_seconds",
			"Age of the oldest undelivered webhook delivery (0 when none).", nil, nil),
		s: s,
	}
	for _, o := range []string{"succeeded", "failed", "dead"} {
		m.deliveries.WithLabelValues(o)
	}
	if r != nil {
		r.MustRegister(m.deliveries, m)
	}
	return m
}

func (m *metrics) outcome(state string) { m.deliveries.WithLabelValues(state).Inc() }

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.depth
	ch <- m.oldest
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	depth, oldest, err := m.s.o.Store.Q().OutboxStats(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(m.depth, err)
		return
	}
	age := 0.0
	if oldest != nil {
		age = max(0, m.s.o.Now().Sub(*oldest).Seconds())
	}
	ch <- prometheus.MustNewConstMetric(m.depth, prometheus.GaugeValue, float64(depth))
	ch <- prometheus.MustNewConstMetric(m.oldest, prometheus.GaugeValue, age)
}
