package hub

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/devpilot/devpilot/shared/protocol"
)

type metrics struct {
	connected    prometheus.Gauge
	enrollments  prometheus.Counter
	heartbeats   prometheus.Counter
	authFailures *prometheus.CounterVec // reason
	messages     *prometheus.CounterVec // type, agent → hub
	conflicts    prometheus.Counter
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
)

func newMetrics(r prometheus.Registerer) *metrics {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "devpilot_hub_agents_connected",
			Help: "Agents with a live, authenticated session.",
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
	}
	if r == nil {
		return m
	}
	m.connected = register(r, m.connected)
	m.enrollments = register(r, m.enrollments)
	m.heartbeats = register(r, m.heartbeats)
	m.authFailures = register(r, m.authFailures)
	// Every reason from the start, at 0, so alerts on a rate see the series.
	for _, reason := range []string{reasonBadRequest, reasonUnsupported, reasonTokenInvalid, reasonAuthFailed, reasonDeleted,
		reasonQuarantined, reasonKeyRevoked, reasonTimeout, reasonIO, reasonInternal} {
		m.authFailures.WithLabelValues(reason)
	}
	m.messages = register(r, m.messages)
	m.conflicts = register(r, m.conflicts)
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
