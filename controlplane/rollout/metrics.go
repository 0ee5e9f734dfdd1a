package rollout

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var rolloutsDesc = prometheus.NewDesc("devpilot_rollouts",
	"Agent rollouts by state (pending, canary, rolling, paused, succeeded, failed, aborted), read from the store at scrape time.",
	[]string{"state"}, nil)

var agentsDesc = prometheus.NewDesc("devpilot_agents",
	"Online agents by the release they run (the version part of what they report, as rollouts compare it).",
	[]string{"version"}, nil)

// stateCollector reports devpilot_rollouts{state} and
// devpilot_agents{version} from the store.
type stateCollector struct{ s *Service }

// Describe is prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- rolloutsDesc; ch <- agentsDesc }

// Collect is prometheus.Collector; every state is reported, 0 included.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := c.s.store.Q().RolloutsByState(ctx)
	if err != nil {
		return
	}
	for _, st := range []string{"pending", "canary", "rolling", "paused", "succeeded", "failed", "aborted"} {
		ch <- prometheus.MustNewConstMetric(rolloutsDesc, prometheus.GaugeValue, float64(n[st]), st)
	}
	vs, err := c.s.store.Q().OnlineAgentVersions(ctx)
	if err != nil {
		return
	}
	byRelease := map[string]int{}
	for v, k := range vs {
		byRelease[ReleaseOf(v)] += k
	}
	for v, k := range byRelease {
		ch <- prometheus.MustNewConstMetric(agentsDesc, prometheus.GaugeValue, float64(k), v)
	}
}
