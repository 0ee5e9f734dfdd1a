package tasks

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the task service's figures: how long a task waits from its
// creation until it is first written to its agent's session (dispatch
// latency), and until the agent reports it running. Counts by state are
// the control plane's devpilot_tasks gauge (read from the store).
type metrics struct {
	dispatch prometheus.Histogram
	start    prometheus.Histogram
}

var latencyBuckets = []float64{.01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800}

func newMetrics(r prometheus.Registerer) *metrics {
	d := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "devpilot_task_dispatch_seconds",
		Help:    "Time from a task's creation until it is first sent to its server's agent (includes waiting for an offline agent).",
		Buckets: latencyBuckets,
	})
	s := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "devpilot_task_start_seconds",
		Help:    "Time from a task's creation until its agent reports it running.",
		Buckets: latencyBuckets,
	})
	if r != nil {
		r.MustRegister(d, s)
	}
	return &metrics{dispatch: d, start: s}
}
