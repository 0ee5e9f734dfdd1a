// Package runner is `devpilot-agent run`: it loads the config and identity
// an install wrote, wires the health collector, systemd notifications and
// watchdog and the task runner (agent/tasks) to a session.Client, and runs
// it until the context ends.
//
// Shutdown (first SIGTERM): the session closes and no new task is taken;
// running tasks may finish for up to Options.TaskGrace (default 20s, below
// the unit's TimeoutStopSec=30), then their process groups are killed and
// they are journaled failed (agent_restarted); their results are sent on
// the next start. A second signal exits at once (cmd/devpilot-agent); the
// journal then still says "started", and the next start reports them
// failed (agent_restarted) too.
package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/agent/config"
	"github.com/devpilot/devpilot/agent/health"
	"github.com/devpilot/devpilot/agent/identity"
	"github.com/devpilot/devpilot/agent/layout"
	"github.com/devpilot/devpilot/agent/sdnotify"
	"github.com/devpilot/devpilot/agent/session"
	"github.com/devpilot/devpilot/agent/tasks"
	"github.com/devpilot/devpilot/agent/update"
	"github.com/devpilot/devpilot/shared/release"
	"github.com/devpilot/devpilot/shared/version"
)

// Options for Run.
type Options struct {
	Paths layout.Paths
	// ConfigFile overrides Paths.ConfigFile().
	ConfigFile string
	// IdentityFile overrides Paths.IdentityKey().
	IdentityFile string
	// ProcRoot is where health reads /proc from; default "/proc".
	ProcRoot string
	Log      *zap.Logger
	// Notifier defaults to sdnotify.New (a no-op outside systemd).
	Notifier *sdnotify.Notifier
	// WatchdogInterval overrides WATCHDOG_USEC (tests).
	WatchdogInterval time.Duration
	// Tune adjusts the session options before the client is built (tests
	// shorten delays with it).
	Tune func(*session.Options)
	// TuneTasks adjusts the task runner's options (tests).
	TuneTasks func(*tasks.Options)
	// Reboot reboots the host when the control plane asks; default from
	// DEVPILOT_AGENT_REBOOT (see RebootFromEnv).
	Reboot func(context.Context) error
	// UpdateWindow is how long an installed update has to get a session
	// before the guard rolls it back; default update.DefaultWindow, or
	// DEVPILOT_AGENT_UPDATE_WINDOW (a Go duration).
	UpdateWindow time.Duration
	// TaskGrace is how long running tasks may finish after ctx ends
	// before they are killed; default 20s.
	TaskGrace time.Duration
}

// ErrExitForUpdate is returned by Run once an update is installed and the
// goodbye said: the process exits (status 0) and the supervisor starts
// the new version through the current link.
var ErrExitForUpdate = errors.New("exiting so the supervisor starts the installed update")

// EnvUpdateWindow overrides Options.UpdateWindow.
const EnvUpdateWindow = "DEVPILOT_AGENT_UPDATE_WINDOW"

// armDeadline is the update deadline on a systemd host: a transient timer
// (systemd-run --on-active) that runs the update guard's deadline mode, a
// unit of its own, so it fires even if the new version never starts or
// hangs. Elsewhere (the dev sandbox, a root dir) nil: the supervisor
// honours the marker's deadline itself.
func armDeadline(p layout.Paths) func(ctx context.Context, id string, window time.Duration) error {
	if !p.IsHostRoot() {
		return nil
	}
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		return nil
	}
	return func(ctx context.Context, id string, window time.Duration) error {
		out, err := exec.CommandContext(ctx, "systemd-run", "--unit=devpilot-agent-update-deadline-"+strings.ReplaceAll(id, "_", "-"),
			"--description=Devpilot agent update "+id+" deadline", "--on-active="+strconv.Itoa(int(window.Seconds()))+"s",
			"--timer-property=AccuracySec=1s", "/bin/sh", p.UpdateGuard(), "deadline", id).CombinedOutput()
		if err != nil {
			return fmt.Errorf("systemd-run: %w: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	}
}

// Run runs the agent until ctx ends; it returns nil after a clean shutdown
// and an error if the installation is unusable.
func Run(ctx context.Context, o Options) error {
	log := o.Log
	if log == nil {
		log = zap.NewNop()
	}
	n := o.Notifier
	if n == nil {
		n = sdnotify.New(log)
	}
	cfgPath := o.ConfigFile
	if cfgPath == "" {
		cfgPath = o.Paths.ConfigFile()
	}
	keyPath := o.IdentityFile
	if keyPath == "" {
		keyPath = o.Paths.IdentityKey()
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		n.Status("cannot start: " + err.Error() + " — reinstall the agent")
		return fmt.Errorf("run: %w", err)
	}
	key, err := identity.Load(keyPath)
	if err != nil {
		n.Status("cannot start: " + err.Error() + " — reinstall the agent")
		return fmt.Errorf("run: %w", err)
	}
	to := tasks.Options{StateDir: o.Paths.StateDir(), Root: o.Paths.Root, Log: log.Named("tasks")}
	if o.TuneTasks != nil {
		o.TuneTasks(&to)
	}
	tr, err := tasks.New(to)
	if err != nil {
		n.Status("cannot start: " + err.Error())
		return fmt.Errorf("run: %w", err)
	}
	if o.UpdateWindow == 0 {
		if d, err := time.ParseDuration(os.Getenv(EnvUpdateWindow)); err == nil && d > 0 {
			o.UpdateWindow = d
		}
	}
	grace := o.TaskGrace
	if grace <= 0 {
		grace = 20 * time.Second
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		tr.Shutdown(sctx)
	}()
	progress := sdnotify.NewProgress(nil)
	var saveMu sync.Mutex
	keys, err := cfg.ReleasePublicKeys()
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	// Pinned at install, plus those this (signed) build carries: a key
	// rotation arrives inside a release signed by the old key.
	keys = append(keys, release.BuiltinPublicKeys()...)
	upd := update.New(update.Options{Paths: o.Paths, Keys: keys, Version: version.Get().Version, Log: log.Named("update"),
		Window: o.UpdateWindow, ArmDeadline: armDeadline(o.Paths)})
	so := session.Options{
		Config:   cfg,
		Key:      key,
		Health:   &health.Collector{ProcRoot: o.ProcRoot, BootIDFile: os.Getenv(EnvBootIDFile)},
		Reboot:   o.Reboot,
		Log:      log.Named("session"),
		Notifier: n,
		Progress: progress,
		Tasks:    tr,
		Update:   upd,
		OnEnrolled: func() error {
			// Re-read so nothing else in the file is lost, drop the token,
			// replace the file atomically.
			saveMu.Lock()
			defer saveMu.Unlock()
			cur, err := config.Load(cfgPath)
			if err != nil {
				return err
			}
			cur.BootstrapToken = ""
			if err := config.Save(cfgPath, cur); err != nil {
				return err
			}
			log.Info("bootstrap token removed from config", zap.String("config", cfgPath))
			return nil
		},
	}
	if so.Reboot == nil {
		so.Reboot, err = RebootFromEnv(log)
		if err != nil {
			return fmt.Errorf("run: %w", err)
		}
	}
	if o.Tune != nil {
		o.Tune(&so)
	}
	client, err := session.New(so)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	log.Info("starting", zap.String("url", cfg.URL), zap.String("server_id", cfg.ServerID),
		zap.Bool("enrolled", cfg.Enrolled()))

	wctx, stopWatchdog := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		(&sdnotify.Watchdog{Notifier: n, Progress: progress, Interval: o.WatchdogInterval}).Run(wctx)
	}()
	// The watchdog keeps pinging through the goodbye, then stops.
	err = client.Run(ctx)
	stopWatchdog()
	wg.Wait()
	if errors.Is(err, session.ErrUpdating) {
		return ErrExitForUpdate
	}
	if errors.Is(err, session.ErrRebooting) && os.Getenv(EnvReboot) == "exit" {
		return ErrExitForReboot
	}
	if errors.Is(err, session.ErrRebooting) {
		return nil // systemd is rebooting the host
	}
	return err
}
