package runner

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/agent/unitctl"
)

// Environment the agent reads for reboots (protocol 1.1).
const (
	// EnvReboot says how the agent reboots its host when the control
	// plane asks: "systemd" (org.freedesktop.systemd1 over D-Bus; the
	// default when the host runs systemd), "exit" (exit with ExitReboot
	// and let the supervisor reboot the machine: the dev sandbox's hook,
	// so a simulated machine never reboots the real one) or "none" (the
	// agent does not offer reboots; the control plane uses the cloud's).
	EnvReboot = "DEVPILOT_AGENT_REBOOT"
	// EnvBootIDFile names the file holding the boot id the agent reports
	// (default /proc/sys/kernel/random/boot_id); the sandbox gives each
	// simulated machine its own, renewed at every boot.
	EnvBootIDFile = "DEVPILOT_AGENT_BOOT_ID_FILE"
	// ExitReboot is the agent's exit status in "exit" mode after it said
	// goodbye for a reboot.
	ExitReboot = 194
)

// RebootModes are EnvReboot's valid values.
var RebootModes = []string{"systemd", "exit", "none"}

// rebootWait bounds how long the agent waits, after queuing a reboot, for
// systemd to stop it; then it reconnects (and the control plane falls back
// to the cloud's reboot).
var rebootWait = 5 * time.Minute

// ErrExitForReboot is returned by Run in "exit" mode after the goodbye.
var ErrExitForReboot = errors.New("exiting so the supervisor reboots the machine")

// RebootFromEnv returns the reboot function EnvReboot selects; nil when
// the agent offers no reboots.
func RebootFromEnv(log *zap.Logger) (func(context.Context) error, error) {
	mode := os.Getenv(EnvReboot)
	if mode == "" {
		if _, err := os.Stat("/run/systemd/system"); err != nil {
			return nil, nil
		}
		mode = "systemd"
	}
	switch mode {
	case "none":
		return nil, nil
	case "exit":
		return func(context.Context) error { return nil }, nil
	case "systemd":
		sd := &unitctl.Systemd{Log: log}
		return func(ctx context.Context) error {
			if err := sd.Reboot(ctx); err != nil {
				return err
			}
			// systemd stops the agent's unit on the way down.
			t := time.NewTimer(rebootWait)
			defer t.Stop()
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				return fmt.Errorf("reboot queued but the host did not stop the agent within %s", rebootWait)
			}
		}, nil
	}
	return nil, fmt.Errorf("%s=%q: use one of %v", EnvReboot, mode, RebootModes)
}
