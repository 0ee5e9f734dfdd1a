package rollout

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var rolloutsDesc = prometheus.NewDesc("devpilot_rollouts",
	"Agent rollouts by state (pending, canary, rolling, paused, succeeded, failed, aborted), read from the store at most every 5 s.",
	[]string{"state"}, nil)

var agentsDesc = prometheus.NewDesc("devpilot_agents",
	"Online agents by the release they run (the version part of what they report, as rollouts compare it).",
	[]string{"version"}, nil)

// stateCollector reports devpilot_rollouts{state} and
// devpilot_agents{version} from the store.
type stateCollector struct {
	s *Service

	mu       sync.Mutex
	at       time.Time // of the last read; zero: none kept
	rollouts map[string]int
	versions map[string]int
}

// countsFor is how long a scrape's reads serve later scrapes: the agent
// versions group every online server (tens of ms at 100,000 servers), and
// a scraper polling every second, or several Prometheus replicas, must
// not multiply that work (as app's store counts).
const countsFor = 5 * time.Second

// read returns the counts, read at most once per countsFor (a failed read
// is not kept).
func (c *stateCollector) read() (rollouts, versions map[string]int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() && time.Since(c.at) < countsFor {
		return c.rollouts, c.versions, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if rollouts, err = c.s.store.Q().RolloutsByState(ctx); err != nil {
		return nil, nil, err
	}
	if versions, err = c.s.store.Q().OnlineAgentVersions(ctx); err != nil {
		return nil, nil, err
	}
	c.rollouts, c.versions, c.at = rollouts, versions, time.Now()
	return rollouts, versions, nil
}

// Describe is prometheus.Collector.
func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) { ch <- rolloutsDesc; ch <- agentsDesc }

// Collect is prometheus.Collector; every state is reported, 0 included.
func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	n, vs, err := c.read()
	if err != nil {
		return
	}
	for _, st := range []string{"pending", "canary", "rolling", "paused", "succeeded", "failed", "aborted"} {
		ch <- prometheus.MustNewConstMetric(rolloutsDesc, prometheus.GaugeValue, float64(n[st]), st)
	}
	byRelease := map[string]int{}
	for v, k := range vs {
		byRelease[ReleaseOf(v)] += k
	}
	for v, k := range byRelease {
		ch <- prometheus.MustNewConstMetric(agentsDesc, prometheus.GaugeValue, float64(k), v)
	}
}
