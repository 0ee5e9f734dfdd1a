package provision

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the provisioning job's figures: every step attempt's
// outcome and duration, and how jobs end. Without a Registerer they are
// kept but not exported.
type metrics struct {
	steps    *prometheus.CounterVec
	duration *prometheus.HistogramVec
	jobs     *prometheus.CounterVec
	// agentUpdates counts update_agent outcomes (agentupdate.go).
	agentUpdates *prometheus.CounterVec
}

// Step outcomes in devpilot_provisioning_steps_total.
const (
	outcomeDone    = "done"
	outcomeFailed  = "failed"
	outcomeRetried = "retried" // a transient failure, tried again
)

func newMetrics(r prometheus.Registerer) *metrics {
	m := &metrics{
		steps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devpilot_provisioning_steps_total",
			Help: "Provisioning step attempts by step and outcome (done, failed, retried after a transient failure).",
		}, []string{"step", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "devpilot_provisioning_step_duration_seconds",
			Help:    "Time from a provisioning step's start to its end (retries included), by step and outcome (done, failed).",
			Buckets: []float64{.1, .5, 1, 5, 15, 30, 60, 120, 300, 600, 900},
		}, []string{"step", "outcome"}),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devpilot_provisioning_jobs_total",
			Help: "Provisioning jobs that ended, by outcome (online, failed).",
		}, []string{"outcome"}),
		agentUpdates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devpilot_agent_updates_total",
			Help: "Agent updates (update_agent actions) that ended, by result: updated, rolled_back, refused, failed, timeout.",
		}, []string{"result"}),
	}
	for _, r := range []string{"updated", "rolled_back", "refused", "failed", "timeout"} {
		m.agentUpdates.WithLabelValues(r)
	}
	for _, st := range []string{StepPreflight, StepSSHKey, StepFirewall, StepInstance, StepWaitActive, StepWaitAgent} {
		for _, o := range []string{outcomeDone, outcomeFailed, outcomeRetried} {
			m.steps.WithLabelValues(st, o)
		}
	}
	m.jobs.WithLabelValues("online")
	m.jobs.WithLabelValues("failed")
	if r != nil {
		r.MustRegister(m.steps, m.duration, m.jobs, m.agentUpdates)
	}
	return m
}

func (m *metrics) stepEnded(step, outcome string, since time.Time, now time.Time) {
	m.steps.WithLabelValues(step, outcome).Inc()
	if outcome != outcomeRetried {
		m.duration.WithLabelValues(step, outcome).Observe(now.Sub(since).Seconds())
	}
	if outcome == outcomeFailed {
		m.jobs.WithLabelValues("failed").Inc()
	}
}
