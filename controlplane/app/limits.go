package app

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/acceptgate"
	"github.com/devpilot/devpilot/controlplane/fdlimit"
)

// agentCapacity raises the open file limit, logs the ceiling and returns
// how many agent connections the hub may hold (Config.MaxAgents, or what
// the file limit allows with Config.FDReserve kept back).
func (a *App) agentCapacity() int {
	reserve := a.cfg.FDReserve
	if reserve <= 0 {
		reserve = fdlimit.DefaultReserve
	}
	l, err := fdlimit.Raise()
	a.fds = l
	fit := fdlimit.Agents(l.Soft, reserve)
	fields := []zap.Field{zap.Uint64("soft", l.Soft), zap.Uint64("hard", l.Hard), zap.Bool("raised", l.Raised),
		zap.Int("reserved", reserve), zap.Int("agents_max", fit)}
	if err != nil {
		a.log.Warn("could not raise the open file limit to the hard limit", append(fields, zap.Error(err))...)
	}
	n := fit
	if a.cfg.MaxAgents > 0 {
		n = a.cfg.MaxAgents
		if n > fit {
			a.log.Warn("--max-agents is more than the open file limit allows: agents past it will be refused "+
				"when the process runs out of files (raise LimitNOFILE)", zap.Int("max_agents", n), zap.Int("fit", fit))
		}
	}
	a.log.Info("open file limit", append(fields, zap.Int("max_agents", n))...)
	return n
}

// DefaultAgentHandshakes is Config.AgentHandshakes's default: far more
// than the CPU needs to stay busy on loopback, enough for handshakes that
// spend most of their time waiting on a 100–300 ms round trip (about 4
// round trips each), few enough that a reconnect storm's handshakes each
// get a useful share of the CPU instead of all starting at once.
const DefaultAgentHandshakes = 512

// listenAgents binds Config.AgentListen: TLS as the main listener,
// bounded to the hub's capacity plus fdlimit.Slack open connections, with
// at most Config.AgentHandshakes of them in their handshake at once.
func (a *App) listenAgents(scheme, host string) error {
	raw, err := net.Listen("tcp", a.cfg.AgentListen)
	if err != nil {
		return fmt.Errorf("agent listen: %w", err)
	}
	_, most := a.Hub.Capacity()
	ln := net.Listener(raw)
	if most > 0 {
		ln = fdlimit.Listener(raw, most+fdlimit.Slack, a.ops.agentConnRefused)
	}
	hs := a.cfg.AgentHandshakes
	if hs <= 0 {
		hs = DefaultAgentHandshakes
	}
	a.agentGate = acceptgate.Wrap(ln, hs)
	ln = a.agentGate
	if a.tlsConfig != nil {
		ln = tls.NewListener(ln, a.tlsConfig)
	}
	addr := raw.Addr().(*net.TCPAddr)
	if !addr.IP.IsUnspecified() {
		host = addr.IP.String()
	}
	a.agentLn = ln
	a.AgentURL = scheme + "://" + net.JoinHostPort(host, fmt.Sprint(addr.Port))
	a.log.Info("agent listener", zap.String("url", a.AgentURL), zap.Int("max_connections", most+fdlimit.Slack),
		zap.Int("handshakes_at_once", hs))
	return nil
}

// agentOnly is what the agent listener serves: the agent endpoints, and
// /healthz for load balancer checks.
func (a *App) agentOnly() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/v1/agent/", a.agentH)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"status":"ok"}` + "\n"))
	})
	return mux
}
