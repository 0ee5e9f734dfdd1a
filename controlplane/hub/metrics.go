package hub

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/devpilot/devpilot/shared/protocol"
)

type metrics struct {
	connected    prometheus.Gauge
	sessions     prometheus.Counter
	enrollments  prometheus.Counter
	heartbeats   prometheus.Counter
	authFailures *prometheus.CounterVec // reason
	messages     *prometheus.CounterVec // type, agent → hub
	hbMessages   prometheus.Counter     // messages{type="heartbeat"}, resolved once (the hot path)
	conflicts    prometheus.Counter

	conns             prometheus.Gauge
	capacity          prometheus.Gauge
	admissionWaiting  prometheus.Gauge
	admissionInFlight prometheus.Gauge
	admissionWait     prometheus.Histogram
	busy              *prometheus.CounterVec // cause
}

// Auth failure reasons (label values of devpilot_hub_auth_failures_total).
const (
	reasonBadRequest   = protocol.ErrBadRequest
	reasonUnsupported  = protocol.ErrUnsupported
	reasonTokenInvalid = protocol.ErrTokenInvalid
	reasonAuthFailed   = protocol.ErrAuthFailed
	reasonDeleted      = protocol.ErrServerDeleted
	reasonQuarantined  = protocol.ErrQuarantined
	reasonKeyRevoked   = protocol.ErrKeyRevoked
	reasonTimeout      = "handshake_timeout"
	reasonIO           = "io"
	reasonInternal     = "internal"
	reasonBusy         = protocol.ErrBusy
)

func newMetrics(r prometheus.Registerer) *metrics {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "devpilot_hub_agents_connected",
			Help: "Agents with a live, authenticated session.",
		}),
		sessions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devpilot_hub_sessions_total",
			Help: "Agent sessions welcomed (authenticated and registered).",
		}),
		enrollments: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devpilot_hub_enrollments_total",
			Help: "Agents enrolled with a bootstrap token.",
		}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devpilot_hub_heartbeats_total",
			Help: "Heartbeats received from agents.",
		}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devpilot_hub_auth_failures_total",
			Help: "Agent sessions refused before welcome, by reason.",
		}, []string{"reason"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devpilot_hub_messages_total",
			Help: "Messages received from authenticated agents, by type (unknown types count as \"other\").",
		}, []string{"type"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "devpilot_hub_identity_conflicts_total",
			Help: "Servers quarantined because sessions with one identity key kept replacing each other.",
		}),
		conns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "devpilot_hub_connections",
			Help: "Agent connections held, authenticated or still in their handshake.",
		}),
		capacity: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "devpilot_hub_agent_capacity",
			Help: "Agent connections this control plane holds at most (from its open file limit, or --max-agents); 0: no bound.",
		}),
		admissionWaiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "devpilot_hub_admission_waiting",
			Help: "Handshakes waiting for an admission slot (store work).",
		}),
		admissionInFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "devpilot_hub_admission_in_flight",
			Help: "Handshakes holding an admission slot (doing their store work).",
		}),
		admissionWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "devpilot_hub_admission_wait_seconds",
			Help:    "How long admitted handshakes waited for a slot.",
			Buckets: []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5},
		}),
		busy: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "devpilot_hub_busy_refusals_total",
			Help: "Agents refused busy (told to retry later), by cause: queue_full, wait_expired, at_capacity, store_slow.",
		}, []string{"cause"}),
	}
	if r == nil {
		m.hbMessages = m.messages.WithLabelValues(protocol.TypeHeartbeat)
		return m
	}
	m.connected = register(r, m.connected)
	m.sessions = register(r, m.sessions)
	m.enrollments = register(r, m.enrollments)
	m.heartbeats = register(r, m.heartbeats)
	m.authFailures = register(r, m.authFailures)
	// Every reason from the start, at 0, so alerts on a rate see the series.
	for _, reason := range []string{reasonBadRequest, reasonUnsupported, reasonTokenInvalid, reasonAuthFailed, reasonDeleted,
		reasonQuarantined, reasonKeyRevoked, reasonTimeout, reasonIO, reasonInternal, reasonBusy} {
		m.authFailures.WithLabelValues(reason)
	}
	m.messages = register(r, m.messages)
	m.hbMessages = m.messages.WithLabelValues(protocol.TypeHeartbeat)
	m.conflicts = register(r, m.conflicts)
	m.conns = register(r, m.conns)
	m.capacity = register(r, m.capacity)
	m.admissionWaiting = register(r, m.admissionWaiting)
	m.admissionInFlight = register(r, m.admissionInFlight)
	m.admissionWait = register(r, m.admissionWait)
	m.busy = register(r, m.busy)
	for _, cause := range []string{busyQueueFull, busyWaited, busyAtCapacity, busyStoreSlow} {
		m.busy.WithLabelValues(cause)
	}
	return m
}

// register adds c to r, reusing the collector already there (a second hub
// on the same registerer shares the series).
func register[C prometheus.Collector](r prometheus.Registerer, c C) C {
	if err := r.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic("hub: register metrics: " + err.Error())
	}
	return c
}

// messageLabel keeps the type label's cardinality bounded: agents choose it.
func messageLabel(typ string) string {
	switch typ {
	case protocol.TypeHeartbeat, protocol.TypeTaskLog, protocol.TypeTaskResult, protocol.TypeTaskAck,
		protocol.TypeHello, protocol.TypeChallenge, protocol.TypeWelcome, protocol.TypeError,
		protocol.TypeTask, protocol.TypeCancel:
		return typ
	}
	return "other"
}
