package runner_test

import (
	"context"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/agent/layout"
	"github.com/devpilot/devpilot/agent/runner"
	"github.com/devpilot/devpilot/agent/sdnotify"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The whole run path (install, enroll, token removal, READY=1, SIGTERM) is
// exercised against the real binary in cmd/devpilot-agent; here, the
// refusal to start without an installation.
func TestRunWithoutInstallExplains(t *testing.T) {
	t.Parallel()
	var status []string
	n := &sdnotify.Notifier{Send: func(s string) error { status = append(status, s); return nil }}
	err := runner.Run(context.Background(), runner.Options{Paths: layout.New(t.TempDir()), Notifier: n})
	if err == nil || !strings.Contains(err.Error(), "config.json") {
		t.Fatalf("err = %v, want one naming the missing config", err)
	}
	if len(status) != 1 || !strings.Contains(status[0], "reinstall the agent") {
		t.Errorf("status %q, want advice to reinstall", status)
	}
}
