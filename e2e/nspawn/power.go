package nspawn

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
)

var _ simrun.Power = (*Runtime)(nil)

// ErrUnknownMachine is returned by PowerOff and PowerOn for an id the
// runtime does not run.
var ErrUnknownMachine = errors.New("nspawn: unknown machine")

// PowerOff shuts the container down as a cloud's power off would
// (systemd-nspawn forwards SIGTERM as a shutdown request to the container's
// systemd; what is left after 20 s is killed) and keeps its file system,
// so PowerOn boots it again. The agent goes away with it.
func (r *Runtime) PowerOff(_ context.Context, id string) error {
	m, err := r.machine(id)
	if err != nil {
		return err
	}
	m.mu.Lock()
	off := m.off
	m.mu.Unlock()
	if off {
		return nil
	}
	r.stop(m)
	m.mu.Lock()
	m.off = true
	m.mu.Unlock()
	r.log.Info("container powered off", zap.String("machine", m.Name))
	return nil
}

// PowerOn boots a powered-off container from its kept file system; its
// systemd starts the agent unit again (enabled at install), so the agent
// comes back by itself. Cloud-init does not run the user-data again (its
// per-instance semaphores are on that file system). It returns once the
// container's systemd runs.
func (r *Runtime) PowerOn(ctx context.Context, id string) error {
	m, err := r.machine(id)
	if err != nil {
		return err
	}
	m.mu.Lock()
	if !m.off {
		m.mu.Unlock()
		return nil
	}
	m.off, m.stopping, m.done, m.err = false, false, make(chan struct{}), nil
	m.mu.Unlock()
	console, err := os.OpenFile(filepath.Join(m.Dir, "console.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("nspawn: power on: %w", err)
	}
	m.console = console
	cmd, err := m.start()
	if err != nil {
		_ = console.Close()
		return fmt.Errorf("nspawn: power on: start systemd-nspawn: %w", err)
	}
	go r.supervise(m, cmd)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if pid, err := m.Leader(); err == nil {
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) == "systemd" {
				r.log.Info("container powered on", zap.String("machine", m.Name))
				return nil
			}
		}
		select {
		case <-m.done:
			m.mu.Lock()
			why := m.err
			m.mu.Unlock()
			if why == nil {
				why = errors.New("exit status 0")
			}
			return fmt.Errorf("nspawn: container %s exited during power on: %w", m.Name, why)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nspawn: container %s: no systemd 30s after power on", m.Name)
		}
	}
}

func (r *Runtime) machine(id string) (*Machine, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m, ok := r.machines[id]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownMachine, id)
	}
	return m, nil
}
