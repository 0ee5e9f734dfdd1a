package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"math"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/tlsauto"
)

// opsMetrics are the control plane's own figures an operator alerts on:
// what the store says at scrape time (servers and tasks by state, agent
// versions), this process's role, the served certificate's expiry and
// the renewal checks.
type opsMetrics struct {
	a        *App
	role     *prometheus.GaugeVec
	jobs     prometheus.Gauge
	renewals *prometheus.CounterVec
	// agentRefused counts connections the agent listener closed at once
	// (more open than the hub may hold plus fdlimit.Slack).
	agentRefused prometheus.Counter
	openFiles    *prometheus.Desc
	handshakes   *prometheus.Desc

	cmu        sync.Mutex // counts
	lastCounts store.Counts
	countsAt   time.Time

	servers  *prometheus.Desc
	tasks    *prometheus.Desc
	versions *prometheus.Desc
	expiry   *prometheus.Desc
	scrapeOK *prometheus.Desc
}

func newOpsMetrics(a *App, reg prometheus.Registerer) *opsMetrics {
	m := &opsMetrics{
		a: a,
		role: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "devpilot_control_plane_role",
			Help: "1 for this process's role: active (holds the database and serves) or standby (waits for the lock).",
		}, []string{"role"}),
		jobs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "devpilot_control_plane_jobs",
			Help: "1 if this process runs the database's jobs (provisioning, lifecycle actions, rollouts, webhooks, reconciliation): always when active in standby mode, one of them in active mode.",
		}),
		renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devpilot_tls_renewal_checks_total",
			Help: "Checks of the --tls auto server certificate while serving, by result (unchanged, reissued, error).",
		}, []string{"result"}),
		servers: prometheus.NewDesc("devpilot_servers", "Servers by state (deleted included).", []string{"state"}, nil),
		tasks:   prometheus.NewDesc("devpilot_tasks", "Tasks by state.", []string{"state"}, nil),
		versions: prometheus.NewDesc("devpilot_agent_versions",
			"Servers not deleted by the agent version they reported (\"\" before the agent enrolled).", []string{"version"}, nil),
		expiry: prometheus.NewDesc("devpilot_tls_cert_expiry_seconds",
			"When the served TLS certificate expires, in seconds since the Unix epoch (--tls auto and files).", nil, nil),
		agentRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devpilot_agent_listener_refused_total",
			Help: "Connections the --agent-listen listener closed unanswered: it held as many as the hub may, plus the slack for busy refusals.",
		}),
		handshakes: prometheus.NewDesc("devpilot_agent_listener_handshakes",
			"Connections of the --agent-listen listener in their handshake now (a waiting accept included); at --agent-handshakes, new ones wait in the kernel's accept queue.", nil, nil),
		openFiles: prometheus.NewDesc("devpilot_open_files_limit", "This process's soft RLIMIT_NOFILE (after raising it to the hard limit).", nil, nil),
		scrapeOK:  prometheus.NewDesc("devpilot_store_scrape_ok", "1 if the last scrape could read the counts from the database.", nil, nil),
	}
	m.role.WithLabelValues("active")
	m.role.WithLabelValues("standby")
	m.renewals.WithLabelValues("unchanged")
	m.renewals.WithLabelValues("reissued")
	m.renewals.WithLabelValues("error")
	reg.MustRegister(m.role, m.jobs, m.renewals, m.agentRefused, m)
	return m
}

func (m *opsMetrics) agentConnRefused() { m.agentRefused.Inc() }

func (m *opsMetrics) setJobs(on bool) {
	v := 0.0
	if on {
		v = 1
	}
	m.jobs.Set(v)
}

func (m *opsMetrics) setRole(role string) {
	for _, r := range []string{"active", "standby"} {
		v := 0.0
		if r == role {
			v = 1
		}
		m.role.WithLabelValues(r).Set(v)
	}
}

// countsFor is how long a scrape's store counts serve later scrapes: the
// counts group every server and task (a few hundred ms of CPU at 100,000
// servers), so a scraper polling every second, or several Prometheus
// replicas, must not multiply that work.
const countsFor = 5 * time.Second

// counts is CountByState, at most once per countsFor (a failed read is
// not kept).
func (m *opsMetrics) counts() (store.Counts, error) {
	m.cmu.Lock()
	defer m.cmu.Unlock()
	if !m.countsAt.IsZero() && time.Since(m.countsAt) < countsFor {
		return m.lastCounts, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := m.a.Store.Q().CountByState(ctx)
	if err != nil {
		return c, err
	}
	m.lastCounts, m.countsAt = c, time.Now()
	return c, nil
}

// Describe is prometheus.Collector.
func (m *opsMetrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{m.servers, m.tasks, m.versions, m.expiry, m.scrapeOK, m.openFiles, m.handshakes} {
		ch <- d
	}
}

// Collect is prometheus.Collector: counts from the store (bounded by a
// short deadline so a slow database does not hang /metrics) and the
// certificate currently served.
func (m *opsMetrics) Collect(ch chan<- prometheus.Metric) {
	ok := 0.0
	if c, err := m.counts(); err == nil {
		ok = 1
		for k, n := range c.ServersByState {
			ch <- prometheus.MustNewConstMetric(m.servers, prometheus.GaugeValue, float64(n), k)
		}
		for k, n := range c.TasksByState {
			ch <- prometheus.MustNewConstMetric(m.tasks, prometheus.GaugeValue, float64(n), k)
		}
		for k, n := range c.AgentVersions {
			ch <- prometheus.MustNewConstMetric(m.versions, prometheus.GaugeValue, float64(n), k)
		}
	}
	ch <- prometheus.MustNewConstMetric(m.scrapeOK, prometheus.GaugeValue, ok)
	if g := m.a.agentGate; g != nil {
		ch <- prometheus.MustNewConstMetric(m.handshakes, prometheus.GaugeValue, float64(g.InHandshake()))
	}
	if m.a.fds.Soft > 0 {
		ch <- prometheus.MustNewConstMetric(m.openFiles, prometheus.GaugeValue, float64(m.a.fds.Soft))
	}
	if exp := m.a.certExpiry(); !math.IsNaN(exp) {
		ch <- prometheus.MustNewConstMetric(m.expiry, prometheus.GaugeValue, exp)
	}
}

// certExpiry is the served certificate's NotAfter as Unix seconds, NaN
// when there is none to report (not listening yet, --tls off or acme).
func (a *App) certExpiry() float64 {
	if a.tlsBundle != nil {
		return float64(a.tlsBundle.NotAfter().Unix())
	}
	if a.cfg.TLS != TLSFiles || a.tlsConfig == nil || a.tlsConfig.GetCertificate == nil {
		return math.NaN()
	}
	c, err := a.tlsConfig.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil || c == nil || len(c.Certificate) == 0 {
		return math.NaN()
	}
	leaf := c.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return math.NaN()
		}
	}
	return float64(leaf.NotAfter.Unix())
}

// now is the configured clock (tests move it), else time.Now.
func (a *App) now() time.Time {
	if a.cfg.Clock != nil {
		return a.cfg.Clock()
	}
	return time.Now()
}

// renewTLS runs the --tls auto renewal check until ctx ends (see
// tlsauto.Bundle.Renew): daily by default, the served certificate swapped
// in place when it was reissued.
func (a *App) renewTLS(ctx context.Context) {
	a.tlsBundle.Renew(ctx, tlsauto.RenewOptions{Every: a.cfg.TLSRenewEvery, Now: a.now, Tick: a.cfg.TLSRenewTick,
		After: func(reissued bool, err error) {
			switch {
			case err != nil:
				a.ops.renewals.WithLabelValues("error").Inc()
				a.log.Error("tls: renewing the server certificate failed; still serving the current one",
					zap.Time("expires", a.tlsBundle.NotAfter()), zap.Error(err))
			case reissued:
				a.ops.renewals.WithLabelValues("reissued").Inc()
				a.log.Info("tls: server certificate renewed while serving", zap.Time("expires", a.tlsBundle.NotAfter()))
			default:
				a.ops.renewals.WithLabelValues("unchanged").Inc()
				a.log.Debug("tls: server certificate not due for renewal", zap.Time("expires", a.tlsBundle.NotAfter()))
			}
			if a.cfg.OnTLSCheck != nil {
				a.cfg.OnTLSCheck(reissued, err)
			}
		}})
}
