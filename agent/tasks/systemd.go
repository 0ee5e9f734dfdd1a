package tasks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	sddbus "github.com/coreos/go-systemd/v22/dbus"

	"github.com/devpilot/devpilot/shared/protocol"
)

// ErrUnsupported is returned (wrapped) by a Systemd connector when there
// is no systemd to talk to; such tasks fail with reason "unsupported".
var ErrUnsupported = errors.New("systemd is not available")

// UnitManager acts on systemd units.
type UnitManager interface {
	// Act runs start, stop, restart, reload, enable or disable on unit and
	// waits for the job; status does nothing.
	Act(ctx context.Context, unit, action string) error
	// Status reads the unit's state.
	Status(ctx context.Context, unit string) (protocol.UnitStatus, error)
	Close()
}

// defaultSystemd refuses when the agent runs below a root dir (the units
// would be the host's, not the simulated server's), then tries D-Bus.
func (r *Runner) defaultSystemd(ctx context.Context) (UnitManager, error) {
	if r.o.Root != "/" {
		return nil, fmt.Errorf("%w: the agent runs with --root-dir %s, and the host's units are not its server's", ErrUnsupported, r.o.Root)
	}
	return DBusSystemd(ctx)
}

// DBusSystemd connects to systemd over the system D-Bus.
func DBusSystemd(ctx context.Context) (UnitManager, error) {
	if _, err := os.Stat("/run/systemd/system"); err != nil {
		return nil, fmt.Errorf("%w: this host was not booted with systemd (no /run/systemd/system)", ErrUnsupported)
	}
	c, err := sddbus.NewSystemConnectionContext(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot reach systemd over D-Bus: %w", ErrUnsupported, err)
	}
	return dbusManager{c}, nil
}

type dbusManager struct{ c *sddbus.Conn }

func (m dbusManager) Close() { m.c.Close() }

func (m dbusManager) Act(ctx context.Context, unit, action string) error {
	var job func(context.Context, string, string, chan<- string) (int, error)
	switch action {
	case "status":
		return nil
	case "enable":
		if _, _, err := m.c.EnableUnitFilesContext(ctx, []string{unit}, false, true); err != nil {
			return err
		}
		return m.c.ReloadContext(ctx)
	case "disable":
		if _, err := m.c.DisableUnitFilesContext(ctx, []string{unit}, false); err != nil {
			return err
		}
		return m.c.ReloadContext(ctx)
	case "start":
		job = m.c.StartUnitContext
	case "stop":
		job = m.c.StopUnitContext
	case "restart":
		job = m.c.RestartUnitContext
	case "reload":
		job = m.c.ReloadUnitContext
	default:
		return fmt.Errorf("unknown action %q", action)
	}
	done := make(chan string, 1)
	if _, err := job(ctx, unit, "replace", done); err != nil {
		return err
	}
	select {
	case res := <-done:
		if res != "done" {
			return fmt.Errorf("%s job for %s: %s", action, unit, res)
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m dbusManager) Status(ctx context.Context, unit string) (protocol.UnitStatus, error) {
	p, err := m.c.GetUnitPropertiesContext(ctx, unit)
	if err != nil {
		return protocol.UnitStatus{}, err
	}
	str := func(k string) string { s, _ := p[k].(string); return s }
	return protocol.UnitStatus{Name: unit, LoadState: str("LoadState"), ActiveState: str("ActiveState"),
		SubState: str("SubState"), UnitFile: str("UnitFileState")}, nil
}

// unitName validates a unit name, adding ".service" when it has no type.
func unitName(s string) (string, error) {
	if s == "" || strings.ContainsAny(s, "/\x00 ") || strings.HasPrefix(s, "-") {
		return "", fmt.Errorf("unit name %q is invalid", s)
	}
	if !strings.Contains(s, ".") {
		s += ".service"
	}
	return s, nil
}

func (r *Runner) runSystemd(ctx context.Context, t *task, step int, s *protocol.SystemdSpec) outcome {
	if s == nil {
		return failed(protocol.ReasonInvalid, "systemd task without unit")
	}
	unit, err := unitName(s.Unit)
	if err != nil {
		return failed(protocol.ReasonInvalid, "systemd: %v", err)
	}
	switch s.Action {
	case "start", "stop", "restart", "reload", "enable", "disable", "status":
	default:
		return failed(protocol.ReasonInvalid, "systemd action %q: want start, stop, restart, reload, enable, disable or status", s.Action)
	}
	m, err := r.o.Systemd(ctx)
	if err != nil {
		if errors.Is(err, ErrUnsupported) {
			return failed(protocol.ReasonUnsupported, "%v", err)
		}
		return failed("", "systemd: %v", err)
	}
	defer m.Close()
	o := outcome{state: protocol.TaskSucceeded}
	if err := m.Act(ctx, unit, s.Action); err != nil {
		if done, ok := ended(ctx); ok {
			o = done
		} else {
			o = failed("", "systemd %s %s: %v", s.Action, unit, err)
		}
	}
	// The unit's state after the action, even if it failed.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5e9)
	defer cancel()
	if st, err := m.Status(sctx, unit); err == nil {
		o.unit = &st
		r.note(t, step, "%s: %s (%s), %s, unit file %s", unit, st.ActiveState, st.SubState, st.LoadState, st.UnitFile)
	} else if o.state == protocol.TaskSucceeded {
		o = failed("", "systemd status %s: %v", unit, err)
	}
	return o
}
