// Package sdnotify tells systemd how the agent is doing: READY=1 once it
// has a session, STATUS= lines a person can act on, and WATCHDOG=1 only
// while the agent's loops report real progress. Outside systemd (no
// NOTIFY_SOCKET) every call is a no-op.
package sdnotify

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
)

// Notifier sends state to systemd.
type Notifier struct {
	// Send delivers one notification; default daemon.SdNotify. Tests record.
	Send func(state string) error
	Log  *zap.Logger

	readyOnce sync.Once
	mu        sync.Mutex
	lastStat  string
}

// New returns a Notifier that talks to $NOTIFY_SOCKET.
func New(log *zap.Logger) *Notifier {
	return &Notifier{Log: log, Send: func(state string) error {
		_, err := daemon.SdNotify(false, state)
		return err
	}}
}

func (n *Notifier) send(state string) {
	if n == nil || n.Send == nil {
		return
	}
	if err := n.Send(state); err != nil && n.Log != nil {
		n.Log.Debug("sd_notify failed", zap.String("state", strings.SplitN(state, "\n", 2)[0]), zap.Error(err))
	}
}

// Ready sends READY=1 once.
func (n *Notifier) Ready() {
	if n == nil {
		return
	}
	n.readyOnce.Do(func() { n.send(daemon.SdNotifyReady) })
}

// Status sets the one-line status `systemctl status` shows; repeats are dropped.
func (n *Notifier) Status(msg string) {
	if n == nil {
		return
	}
	msg = strings.ReplaceAll(msg, "\n", " ")
	n.mu.Lock()
	same := msg == n.lastStat
	n.lastStat = msg
	n.mu.Unlock()
	if !same {
		n.send("STATUS=" + msg)
	}
}

// Stopping sends STOPPING=1.
func (n *Notifier) Stopping() { n.send(daemon.SdNotifyStopping) }

// Progress is a timestamp the agent's loops move forward when they get
// something done (a heartbeat written, a message or pong read, a dial
// attempt made, a backoff step taken). The watchdog pings systemd only
// while it is fresh, so a wedged loop gets the agent restarted.
type Progress struct {
	last atomic.Int64 // unix nanoseconds
	now  func() time.Time
}

// NewProgress returns a Progress stamped now; now may be nil (time.Now).
func NewProgress(now func() time.Time) *Progress {
	if now == nil {
		now = time.Now
	}
	p := &Progress{now: now}
	p.Beat()
	return p
}

// Beat records progress.
func (p *Progress) Beat() {
	if p != nil {
		p.last.Store(p.now().UnixNano())
	}
}

// Age is how long ago the last progress was.
func (p *Progress) Age() time.Duration {
	return p.now().Sub(time.Unix(0, p.last.Load()))
}

// Watchdog pings systemd while progress is fresh.
type Watchdog struct {
	Notifier *Notifier
	Progress *Progress
	// Interval is systemd's WatchdogSec; 0 reads it from the environment
	// (WATCHDOG_USEC), and if that is unset the watchdog does nothing.
	Interval time.Duration
	// MaxAge is how old progress may be and still count; default Interval/2.
	MaxAge time.Duration

	stale atomic.Bool
}

// Run pings every Interval/3 until ctx ends. It returns at once when no
// watchdog is configured.
func (w *Watchdog) Run(ctx context.Context) {
	iv := w.Interval
	if iv == 0 {
		iv, _ = daemon.SdWatchdogEnabled(false)
	}
	if iv <= 0 {
		return
	}
	maxAge := w.MaxAge
	if maxAge <= 0 {
		maxAge = iv / 2
	}
	t := time.NewTicker(max(iv/3, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.Check(maxAge)
		}
	}
}

// Check sends WATCHDOG=1 if progress is at most maxAge old and reports
// whether it did; the first stale check logs a warning.
func (w *Watchdog) Check(maxAge time.Duration) bool {
	age := w.Progress.Age()
	if age <= maxAge {
		w.Notifier.send(daemon.SdNotifyWatchdog)
		w.stale.Store(false)
		return true
	}
	if !w.stale.Swap(true) && w.Notifier.Log != nil {
		w.Notifier.Log.Warn("no progress, withholding watchdog pings; systemd will restart the agent",
			zap.Duration("since_progress", age))
	}
	return false
}
