// Package unitctl starts, stops and inspects the agent's systemd unit:
// over D-Bus (go-systemd) when the system bus answers, else with the
// systemctl command. None is the supervisor for installs that run
// unprivileged (tests, the dev simulator), where nothing is started.
package unitctl

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"

	sddbus "github.com/coreos/go-systemd/v22/dbus"
	"go.uber.org/zap"
)

// Controller controls one unit's lifecycle.
type Controller interface {
	// Name is "systemd" or "none".
	Name() string
	// Reload makes systemd re-read unit files (daemon-reload).
	Reload(ctx context.Context) error
	// EnableStart enables the unit and starts it without waiting for it to
	// become ready; restart restarts it if it is already running.
	EnableStart(ctx context.Context, unit string, restart bool) error
	// StopDisable stops and disables the unit; a unit that is not loaded is not an error.
	StopDisable(ctx context.Context, unit string) error
	// State is the unit's state, e.g. "active (running)", "inactive (dead)".
	State(ctx context.Context, unit string) (string, error)
}

// None starts nothing: whoever runs the installed files supervises them.
type None struct{}

// Name implements Controller.
func (None) Name() string { return "none" }

// Reload implements Controller.
func (None) Reload(context.Context) error { return nil }

// EnableStart implements Controller.
func (None) EnableStart(context.Context, string, bool) error { return nil }

// StopDisable implements Controller.
func (None) StopDisable(context.Context, string) error { return nil }

// State implements Controller.
func (None) State(context.Context, string) (string, error) {
	return "not supervised (--supervisor none)", nil
}

// Systemd talks to the system manager over D-Bus, falling back to systemctl.
type Systemd struct {
	Log *zap.Logger
	// Systemctl is the command used when D-Bus is unavailable ("systemctl").
	Systemctl string
}

// Name implements Controller.
func (s *Systemd) Name() string { return "systemd" }

// connect returns a D-Bus connection or nil (after logging why) for the fallback.
func (s *Systemd) connect(ctx context.Context) *sddbus.Conn {
	c, err := sddbus.NewSystemConnectionContext(ctx)
	if err != nil {
		s.log().Debug("systemd D-Bus unavailable, using systemctl", zap.Error(err))
		return nil
	}
	return c
}

func (s *Systemd) log() *zap.Logger {
	if s.Log == nil {
		return zap.NewNop()
	}
	return s.Log
}

func (s *Systemd) systemctl(ctx context.Context, args ...string) (string, error) {
	bin := s.Systemctl
	if bin == "" {
		bin = "systemctl"
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	text := strings.TrimSpace(out.String())
	if err != nil {
		if text != "" {
			return text, fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, text)
		}
		return text, fmt.Errorf("systemctl %s: %w", strings.Join(args, " "), err)
	}
	return text, nil
}

// Reload implements Controller.
func (s *Systemd) Reload(ctx context.Context) error {
	if c := s.connect(ctx); c != nil {
		defer c.Close()
		if err := c.ReloadContext(ctx); err != nil {
			return fmt.Errorf("systemd daemon-reload: %w", err)
		}
		return nil
	}
	_, err := s.systemctl(ctx, "daemon-reload")
	return err
}

// EnableStart implements Controller.
func (s *Systemd) EnableStart(ctx context.Context, unit string, restart bool) error {
	if c := s.connect(ctx); c != nil {
		defer c.Close()
		if _, _, err := c.EnableUnitFilesContext(ctx, []string{unit}, false, true); err != nil {
			return fmt.Errorf("systemd enable %s: %w", unit, err)
		}
		// A nil channel: queue the job and don't wait for READY=1, which
		// comes only once the control plane answers.
		if restart {
			_, err := c.RestartUnitContext(ctx, unit, "replace", nil)
			if err != nil {
				return fmt.Errorf("systemd restart %s: %w", unit, err)
			}
			return nil
		}
		if _, err := c.StartUnitContext(ctx, unit, "replace", nil); err != nil {
			return fmt.Errorf("systemd start %s: %w", unit, err)
		}
		return nil
	}
	if _, err := s.systemctl(ctx, "enable", unit); err != nil {
		return err
	}
	verb := "start"
	if restart {
		verb = "restart"
	}
	_, err := s.systemctl(ctx, verb, "--no-block", unit)
	return err
}

// StopDisable implements Controller.
func (s *Systemd) StopDisable(ctx context.Context, unit string) error {
	if c := s.connect(ctx); c != nil {
		defer c.Close()
		done := make(chan string, 1)
		if _, err := c.StopUnitContext(ctx, unit, "replace", done); err != nil {
			if !isNoSuchUnit(err) {
				return fmt.Errorf("systemd stop %s: %w", unit, err)
			}
		} else {
			select {
			case res := <-done:
				if res != "done" {
					s.log().Warn("stop job did not complete", zap.String("unit", unit), zap.String("result", res))
				}
			case <-ctx.Done():
				return fmt.Errorf("systemd stop %s: %w", unit, ctx.Err())
			}
		}
		if _, err := c.DisableUnitFilesContext(ctx, []string{unit}, false); err != nil && !isNoSuchUnit(err) {
			return fmt.Errorf("systemd disable %s: %w", unit, err)
		}
		return nil
	}
	if out, err := s.systemctl(ctx, "stop", unit); err != nil && !strings.Contains(out, "not loaded") {
		return err
	}
	if out, err := s.systemctl(ctx, "disable", unit); err != nil && !strings.Contains(out, "does not exist") {
		return err
	}
	return nil
}

// isNoSuchUnit reports whether err says the unit is not there, which
// stop/disable during an uninstall may ignore.
func isNoSuchUnit(err error) bool {
	m := err.Error()
	return strings.Contains(m, "NoSuchUnit") || strings.Contains(m, "not loaded") ||
		strings.Contains(m, "does not exist") || strings.Contains(m, "not found")
}

// State implements Controller.
func (s *Systemd) State(ctx context.Context, unit string) (string, error) {
	if c := s.connect(ctx); c != nil {
		defer c.Close()
		props, err := c.GetUnitPropertiesContext(ctx, unit)
		if err != nil {
			return "", fmt.Errorf("systemd state %s: %w", unit, err)
		}
		active, _ := props["ActiveState"].(string)
		sub, _ := props["SubState"].(string)
		file, _ := props["UnitFileState"].(string)
		st := fmt.Sprintf("%s (%s)", active, sub)
		if file != "" {
			st += ", " + file
		}
		return st, nil
	}
	out, _ := s.systemctl(ctx, "show", "--property=ActiveState,SubState,UnitFileState", unit)
	vals := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			vals[k] = v
		}
	}
	if vals["ActiveState"] == "" {
		return "", fmt.Errorf("systemd state %s: systemctl show gave no state: %s", unit, out)
	}
	st := fmt.Sprintf("%s (%s)", vals["ActiveState"], vals["SubState"])
	if vals["UnitFileState"] != "" {
		st += ", " + vals["UnitFileState"]
	}
	return st, nil
}

// ByName returns the controller for "systemd" or "none".
func ByName(name string, log *zap.Logger) (Controller, error) {
	switch name {
	case "systemd", "":
		return &Systemd{Log: log}, nil
	case "none":
		return None{}, nil
	}
	return nil, fmt.Errorf("supervisor %q: want systemd or none", name)
}

// Reboot reboots the host as `systemctl reboot` does: it starts
// reboot.target with mode replace-irreversibly over D-Bus
// (org.freedesktop.systemd1.Manager.StartUnit), or runs `systemctl reboot`
// when D-Bus is unavailable. It returns once the job is queued; systemd
// then stops every unit, the agent's too.
func (s *Systemd) Reboot(ctx context.Context) error {
	if c := s.connect(ctx); c != nil {
		defer c.Close()
		if _, err := c.StartUnitContext(ctx, "reboot.target", "replace-irreversibly", nil); err != nil {
			return fmt.Errorf("systemd start reboot.target: %w", err)
		}
		return nil
	}
	_, err := s.systemctl(ctx, "reboot", "--no-block")
	return err
}
