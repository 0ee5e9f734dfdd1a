package app_test

import (
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// notifySocket is what systemd listens on for a Type=notify service.
type notifySocket struct {
	conn *net.UnixConn
}

func listenNotify(t *testing.T) *notifySocket {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return &notifySocket{conn: conn}
}

// next returns the next notification, or "" when none came before the deadline.
func (n *notifySocket) next(t *testing.T, within time.Duration) string {
	t.Helper()
	_ = n.conn.SetReadDeadline(time.Now().Add(within))
	buf := make([]byte, 4096)
	k, err := n.conn.Read(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return ""
	}
	if err != nil {
		t.Fatalf("read notify socket: %v", err)
	}
	return string(buf[:k])
}

// waitFor reads notifications until one starts with want; it fails after
// a generous deadline.
func (n *notifySocket) waitFor(t *testing.T, want string) []string {
	t.Helper()
	var seen []string
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		msg := n.next(t, time.Until(deadline))
		seen = append(seen, msg)
		if strings.HasPrefix(msg, want) {
			return seen
		}
	}
	t.Fatalf("no %q from the control plane within 60s; got %q", want, seen)
	return nil
}

// Under systemd (packaging/devpilot.service, Type=notify, WatchdogSec)
// the control plane says READY=1 once it answers, pings the watchdog
// while its self-check passes, withholds the pings when the database is
// gone (so systemd restarts it), and says STOPPING=1 on shutdown.
func TestSystemdReadyWatchdogStopping(t *testing.T) {
	sock := listenNotify(t)
	t.Setenv("WATCHDOG_USEC", "1500000") // self-check every 0.5 s
	t.Setenv("WATCHDOG_PID", "")
	// Registered before startDoor, so it runs after the control plane stopped.
	t.Cleanup(func() { sock.waitFor(t, "STOPPING=1") })
	d := startDoor(t, t.TempDir(), nil)

	sock.waitFor(t, "READY=1")
	sock.waitFor(t, "WATCHDOG=1")
	sock.waitFor(t, "WATCHDOG=1")

	// The database goes away: /readyz fails, the pings stop.
	if err := d.a.Store.Close(); err != nil {
		t.Fatal(err)
	}
	sock.waitFor(t, "STATUS=self-check failing: ")
	for msg := sock.next(t, 3*time.Second); msg != ""; msg = sock.next(t, 3*time.Second) {
		if msg == "WATCHDOG=1" {
			t.Fatal("WATCHDOG=1 sent while the self-check fails")
		}
	}
}
