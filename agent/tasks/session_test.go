package tasks_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/devpilot/devpilot/agent/agenttest"
	"github.com/devpilot/devpilot/agent/config"
	"github.com/devpilot/devpilot/agent/session"
	"github.com/devpilot/devpilot/agent/tasks"
	"github.com/devpilot/devpilot/shared/protocol"
)

type health struct{}

func (health) Collect() (protocol.Health, error) { return protocol.Health{}, nil }
func (health) Facts() protocol.Facts             { return protocol.Facts{} }

// Through a real session with the fake hub: the task runs once, its result
// comes again on every new session until the hub acknowledges it, then
// never again.
func TestThroughSessionResentUntilAcked(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	e := newEnv(t)
	// Resends on the live session are TestUnackedOutputIsResentOnTheLiveSession's.
	r := newRunner(t, e, func(o *tasks.Options) { o.AckTimeout = time.Hour })
	runSession(t, hub, r, "srv-t")

	agenttest.WaitFor(t, "session", func() bool { return len(hub.Heartbeats()) > 0 })
	marker := filepath.Join(e.root, "runs")
	if err := hub.Send("srv-t", protocol.TypeTask, sh("t1", "echo run >> "+marker+"; echo hi")); err != nil {
		t.Fatal(err)
	}
	finals := func() int {
		n := 0
		for _, res := range hub.TaskResults("t1") {
			if protocol.Final(res.State) {
				n++
			}
		}
		return n
	}
	agenttest.WaitFor(t, "final result", func() bool { return finals() == 1 })
	if res := hub.TaskResults("t1"); res[0].State != protocol.TaskRunning || len(hub.TaskLogs("t1")) != 1 {
		t.Errorf("results %+v logs %+v, want running, one chunk, final", res, hub.TaskLogs("t1"))
	}

	for i := 2; i <= 3; i++ { // not acked: resent on each new session
		conns := hub.Connections()
		hub.Kick()
		agenttest.WaitFor(t, "reconnect", func() bool { return hub.Connections() > conns })
		agenttest.WaitFor(t, "result resent", func() bool { return finals() == i })
	}
	hub.SetAutoAck(true)
	conns := hub.Connections()
	hub.Kick()
	agenttest.WaitFor(t, "reconnect", func() bool { return hub.Connections() > conns })
	agenttest.WaitFor(t, "result resent", func() bool { return finals() == 4 })
	spools := filepath.Join(tasks.StateDirTasks(e.state), tasks.SpoolDir)
	agenttest.WaitFor(t, "ack processed (spool deleted)", func() bool {
		names, _ := os.ReadDir(spools)
		return len(names) == 0
	})
	// Acked now: a new session sends nothing for it. A second task, sent
	// after the reconnect, shows the session is serving.
	conns = hub.Connections()
	hub.Kick()
	agenttest.WaitFor(t, "reconnect", func() bool { return hub.Connections() > conns })
	agenttest.WaitFor(t, "heartbeat on the new session", func() bool { return hub.Send("srv-t", protocol.TypeTask, sh("t2", "exit 0")) == nil })
	agenttest.WaitFor(t, "t2", func() bool { return len(hub.TaskResults("t2")) == 2 })
	if finals() != 4 {
		t.Errorf("acked result sent %d times, want 4", finals())
	}
	if r.Executions() != 2 {
		t.Errorf("%d executions, want 2", r.Executions())
	}
}

// A hub that stored nothing sends no ack (its database refused the
// write): the agent sends the task's output and final result again on the
// same session, backing off, until an ack comes; no reconnect needed.
func TestUnackedOutputIsResentOnTheLiveSession(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	e := newEnv(t)
	r := newRunner(t, e, func(o *tasks.Options) { o.AckTimeout, o.AckTimeoutMax = 20*time.Millisecond, 80*time.Millisecond })
	runSession(t, hub, r, "srv-r")

	agenttest.WaitFor(t, "session", func() bool { return len(hub.Heartbeats()) > 0 })
	conns := hub.Connections()
	if err := hub.Send("srv-r", protocol.TypeTask, sh("t1", "echo one; echo two")); err != nil {
		t.Fatal(err)
	}
	finals := func() int {
		n := 0
		for _, res := range hub.TaskResults("t1") {
			if protocol.Final(res.State) {
				n++
			}
		}
		return n
	}
	agenttest.WaitFor(t, "the final result sent three times", func() bool { return finals() >= 3 })
	if n := len(hub.TaskLogs("t1")); n < 3 {
		t.Errorf("%d log chunks received, want the unacknowledged output resent with each result", n)
	}
	if got := hub.Connections(); got != conns {
		t.Errorf("connections %d → %d: the resends must come on the live session", conns, got)
	}
	hub.SetAutoAck(true)
	spools := filepath.Join(tasks.StateDirTasks(e.state), tasks.SpoolDir)
	agenttest.WaitFor(t, "ack processed (spool deleted)", func() bool {
		names, _ := os.ReadDir(spools)
		return len(names) == 0
	})
	if r.Executions() != 1 {
		t.Errorf("%d executions, want 1", r.Executions())
	}
}

// runSession runs a real agent session for serverID against hub with r as
// its task runner, until the test ends.
func runSession(t *testing.T, hub *agenttest.Hub, r *tasks.Runner, serverID string) {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	c, err := session.New(session.Options{
		Config: config.FromBootstrap(hub.Bootstrap(serverID)), Key: key, Health: health{},
		Log: zaptest.NewLogger(t), Tasks: r,
		BackoffBase: time.Millisecond, BackoffCap: 5 * time.Millisecond, HandshakeTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done }) //nolint:errcheck // how the session ended is not this cleanup's business
}
