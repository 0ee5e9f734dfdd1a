package app

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
)

// systemd tells the service manager how `devpilot serve` is doing
// (packaging/devpilot.service is Type=notify with WatchdogSec): READY=1
// once the listener answers GET /readyz (HTTP stack up, database
// reachable), WATCHDOG=1 after each later self-check that passes — and
// none while it fails, so a control plane whose accept loop or database
// is wedged is restarted — and STOPPING=1 when shutdown begins. Outside
// systemd (no NOTIFY_SOCKET) it does nothing.
type systemd struct {
	log    *zap.Logger
	url    string // the self-check's GET
	client *http.Client
	stop   context.CancelFunc
	done   chan struct{}
	once   sync.Once
}

// startSystemd starts the READY/WATCHDOG loop; Serve calls it once the
// HTTP server runs and calls stopping when it shuts down.
func (a *App) startSystemd(ctx context.Context) *systemd {
	s := &systemd{log: a.log.Named("systemd"), done: make(chan struct{})}
	if os.Getenv("NOTIFY_SOCKET") == "" {
		close(s.done)
		return s
	}
	port := a.ln.Addr().(*net.TCPAddr).Port
	scheme := "http"
	tr := &http.Transport{DisableKeepAlives: true}
	if a.tlsConfig != nil {
		scheme = "https"
		// Our own listener over loopback: what is checked is that it
		// answers, not who it is (with --tls files or acme its
		// certificate names the public host, not 127.0.0.1).
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} //nolint:gosec // self-check of this process's own loopback listener
	}
	s.url = fmt.Sprintf("%s://%s/readyz", scheme, net.JoinHostPort(loopbackFor(a.ln.Addr()), fmt.Sprint(port)))
	s.client = &http.Client{Transport: tr}
	ctx, s.stop = context.WithCancel(ctx)
	interval, _ := daemon.SdWatchdogEnabled(false)
	go s.run(ctx, interval)
	return s
}

// loopbackFor is the address that reaches a listener bound to addr from
// this machine: its own IP, or 127.0.0.1 for a wildcard bind.
func loopbackFor(addr net.Addr) string {
	if ta, ok := addr.(*net.TCPAddr); ok && ta.IP != nil && !ta.IP.IsUnspecified() {
		return ta.IP.String()
	}
	return "127.0.0.1"
}

// send delivers one notification; a failure is logged at debug (systemd
// then sees no READY or ping, which is what it acts on).
func (s *systemd) send(state string) {
	if _, err := daemon.SdNotify(false, state); err != nil {
		s.log.Debug("sd_notify failed", zap.String("state", state), zap.Error(err))
	}
}

// status sets the line `systemctl status` shows.
func (s *systemd) status(msg string) { s.send("STATUS=" + strings.ReplaceAll(msg, "\n", " ")) }

func (s *systemd) run(ctx context.Context, watchdog time.Duration) {
	defer close(s.done)
	defer s.client.CloseIdleConnections()
	// READY=1 after the first passing self-check; until then, retry
	// (TimeoutStartSec bounds how long systemd waits).
	retry := time.NewTicker(500 * time.Millisecond)
	defer retry.Stop()
	for {
		err := s.check(ctx, 10*time.Second)
		if err == nil {
			break
		}
		s.log.Debug("self-check before READY failed", zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-retry.C:
		}
	}
	s.send(daemon.SdNotifyReady)
	s.status("serving")
	s.log.Info("told systemd the control plane is ready", zap.Duration("watchdog", watchdog))
	if watchdog <= 0 {
		<-ctx.Done()
		return
	}
	// Check three times per WatchdogSec; each check may take a third.
	every := watchdog / 3
	t := time.NewTicker(every)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.check(ctx, every); err != nil {
			if !failing && ctx.Err() == nil {
				s.log.Warn("self-check failed: withholding watchdog pings; systemd restarts the control plane if this lasts", zap.Error(err))
				s.status("self-check failing: " + err.Error())
			}
			failing = true
			continue
		}
		if failing {
			s.log.Info("self-check passes again")
			s.status("serving")
		}
		failing = false
		s.send(daemon.SdNotifyWatchdog)
	}
}

// check GETs /readyz on the process's own listener.
func (s *systemd) check(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return fmt.Errorf("self-check request: %w", err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return fmt.Errorf("self-check: %w", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("self-check: GET /readyz answered %s", resp.Status)
	}
	return nil
}

// stopping sends STOPPING=1 (once) and ends the loop.
func (s *systemd) stopping() {
	s.once.Do(func() {
		if s.stop != nil {
			s.send(daemon.SdNotifyStopping)
			s.stop()
		}
	})
	<-s.done
}
