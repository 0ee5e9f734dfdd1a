package tasks_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/devpilot/devpilot/agent/config"
	"github.com/devpilot/devpilot/agent/session"
	agenttasks "github.com/devpilot/devpilot/agent/tasks"
	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/shared/protocol"
	"github.com/devpilot/devpilot/shared/tlspin"
)

type noHealth struct{}

func (noHealth) Collect() (protocol.Health, error) { return protocol.Health{}, nil }
func (noHealth) Facts() protocol.Facts             { return protocol.Facts{} }

// storeFault makes the control plane's database refuse what a task
// reports: output chunks and the final result (as a full disk would),
// until heal.
type storeFault struct {
	t  *testing.T
	st *store.Store
}

func (f storeFault) exec(stmts ...string) {
	f.t.Helper()
	for _, s := range stmts {
		if _, err := f.st.DB().Exec(s); err != nil {
			f.t.Fatalf("%s: %v", s, err)
		}
	}
}

func (f storeFault) fail() {
	if f.st.Dialect() == store.Postgres {
		f.exec(`CREATE FUNCTION test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk full'; END $$`,
			`CREATE TRIGGER fault_logs BEFORE INSERT ON task_logs FOR EACH ROW EXECUTE FUNCTION test_disk_full()`,
			`CREATE TRIGGER fault_finish BEFORE UPDATE ON tasks FOR EACH ROW WHEN (NEW.finished_at IS NOT NULL) EXECUTE FUNCTION test_disk_full()`)
		return
	}
	f.exec(`CREATE TRIGGER fault_logs BEFORE INSERT ON task_logs BEGIN SELECT RAISE(ABORT, 'disk full'); END`,
		`CREATE TRIGGER fault_finish BEFORE UPDATE ON tasks WHEN NEW.finished_at IS NOT NULL BEGIN SELECT RAISE(ABORT, 'disk full'); END`)
}

func (f storeFault) heal() {
	if f.st.Dialect() == store.Postgres {
		f.exec(`DROP TRIGGER fault_logs ON task_logs`, `DROP TRIGGER fault_finish ON tasks`)
		return
	}
	f.exec(`DROP TRIGGER fault_logs`, `DROP TRIGGER fault_finish`)
}

// After the control plane's database refused a task's output and result
// and then recovered, the task finishes with its whole output on the
// same agent session: the agent sends again what was not acknowledged.
func TestTaskFinishesAfterTheStoreRecoversWithoutAReconnect(t *testing.T) {
	t.Parallel()
	core, cpLogs := observer.New(zapcore.WarnLevel)
	// TLS, since the real agent pins the control plane's CA.
	c := startCPWith(t, func(cfg *app.Config) { cfg.TLS = app.TLSAuto; cfg.Logger = zap.New(core) })
	a := c.app
	fa := c.server("web-1") // its id and enrolled key; the real agent below uses them

	// The real agent: session and task runner.
	blk, _ := pem.Decode(a.CACertPEM)
	ca, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	agentCore, agentLogs := observer.New(zapcore.InfoLevel)
	r, err := agenttasks.New(agenttasks.Options{StateDir: t.TempDir(), Root: t.TempDir(), Log: zap.New(agentCore).Named("tasks"),
		FlushInterval: 5 * time.Millisecond, AckTimeout: 50 * time.Millisecond, AckTimeoutMax: 400 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	sess, err := session.New(session.Options{
		Config: config.Config{URL: a.URL, CAPin: tlspin.PinOf(ca), CACertPEM: string(a.CACertPEM), ServerID: fa.id},
		Key:    fa.priv, Health: noHealth{}, Log: zap.New(agentCore), Tasks: r,
		BackoffBase: time.Millisecond, BackoffCap: 10 * time.Millisecond, HandshakeTimeout: 10 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithCancel(context.Background())
	agentDone := make(chan error, 1)
	go func() { agentDone <- sess.Run(actx) }()
	t.Cleanup(func() {
		acancel()
		<-agentDone //nolint:errcheck // the session ends because acancel ended it
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		r.Shutdown(sctx)
	})
	connected := func() int { return agentLogs.FilterMessage("connected").Len() }
	waitFor(t, "the agent's session", func() bool { return connected() == 1 })

	fault := storeFault{t: t, st: a.Store}
	fault.fail()
	var want strings.Builder
	for i := 1; i <= 40; i++ {
		fmt.Fprintf(&want, "line %d\n", i)
	}
	v := c.createTask(fa.id, map[string]any{"kind": "exec", "argv": []string{"/bin/sh", "-c", `i=1; while [ $i -le 40 ]; do echo "line $i"; i=$((i+1)); done`}})
	waitFor(t, "the control plane failing to store the result", func() bool {
		return cpLogs.FilterMessage("record task result").Len() > 0 && cpLogs.FilterMessage("store task log").Len() > 0
	})
	if got := c.task(v.ID); protocol.Final(got.State) {
		t.Fatalf("task %s is %s while the store refused its result", v.ID, got.State)
	}
	fault.heal()

	got := c.waitTaskLong(v.ID, "succeeded with its whole output", func(tv taskView) bool { return tv.State == protocol.TaskSucceeded })
	var page struct {
		Chunks []struct{ Text string } `json:"chunks"`
		Done   bool                    `json:"done"`
	}
	waitFor(t, "the whole output", func() bool {
		if code := c.call("", "GET", wsBase+"/tasks/"+v.ID+"/logs", nil, &page); code != 200 {
			t.Fatalf("logs: %d", code)
		}
		var out strings.Builder
		for _, ch := range page.Chunks {
			out.WriteString(ch.Text)
		}
		return page.Done && out.String() == want.String()
	})
	if got.ExitCode == nil || *got.ExitCode != 0 {
		t.Errorf("exit code %v, want 0", got.ExitCode)
	}
	if n := connected(); n != 1 {
		t.Errorf("the agent connected %d times; the task must finish on its first session", n)
	}
}

// waitFor polls cond for up to 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitTaskLong is waitTask with a deadline of 30 s.
func (c *cp) waitTaskLong(id, what string, cond func(taskView) bool) taskView {
	c.t.Helper()
	var v taskView
	waitFor(c.t.(*testing.T), what, func() bool { v = c.task(id); return cond(v) })
	return v
}
