package sdnotify_test

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/devpilot/devpilot/agent/sdnotify"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type recorder struct {
	mu   sync.Mutex
	sent []string
}

func (r *recorder) send(s string) error {
	r.mu.Lock()
	r.sent = append(r.sent, s)
	r.mu.Unlock()
	return nil
}
func (r *recorder) all() []string { r.mu.Lock(); defer r.mu.Unlock(); return slices.Clone(r.sent) }

func TestWatchdogOnlyWhileProgressIsFresh(t *testing.T) {
	t.Parallel()
	var rec recorder
	now := time.Unix(1000, 0)
	p := sdnotify.NewProgress(func() time.Time { return now })
	w := &sdnotify.Watchdog{Notifier: &sdnotify.Notifier{Send: rec.send}, Progress: p}
	maxAge := 30 * time.Second

	now = now.Add(29 * time.Second)
	if !w.Check(maxAge) {
		t.Error("fresh progress: no ping")
	}
	now = now.Add(2 * time.Second) // 31 s since the last beat: the loop is stuck
	for range 2 {
		if w.Check(maxAge) {
			t.Error("stale progress: pinged anyway")
		}
	}
	p.Beat()
	if !w.Check(maxAge) {
		t.Error("progress resumed: no ping")
	}
	if got := rec.all(); !slices.Equal(got, []string{"WATCHDOG=1", "WATCHDOG=1"}) {
		t.Errorf("sent %q", got)
	}
}

func TestWatchdogRunWithoutSystemdReturns(t *testing.T) {
	t.Setenv("WATCHDOG_USEC", "")
	w := &sdnotify.Watchdog{Notifier: &sdnotify.Notifier{}, Progress: sdnotify.NewProgress(nil)}
	w.Run(context.Background()) // must return at once: no watchdog configured
}

func TestNotifierReadyOnceStatusDeduplicated(t *testing.T) {
	t.Parallel()
	var rec recorder
	n := &sdnotify.Notifier{Send: rec.send}
	n.Ready()
	n.Status("connecting to cp:8443")
	n.Status("connecting to cp:8443")
	n.Status("connected\nto cp")
	n.Ready()
	want := []string{"READY=1", "STATUS=connecting to cp:8443", "STATUS=connected to cp"}
	if got := rec.all(); !slices.Equal(got, want) {
		t.Errorf("sent %q, want %q", got, want)
	}
	var nilN *sdnotify.Notifier
	nilN.Ready() // a nil notifier is a no-op
	nilN.Status("x")
}
