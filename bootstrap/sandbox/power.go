package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// ErrUnknownMachine is returned by PowerOff and PowerOn for an id the
// runtime does not run.
var ErrUnknownMachine = errors.New("sandbox: unknown machine")

// PowerOff stops everything the machine runs, as a shutdown would (SIGTERM
// to each process group, SIGKILL after Options.StopTimeout), and keeps its
// root, so PowerOn can boot it again. The agent goes away with it.
func (r *Runtime) PowerOff(ctx context.Context, id string) error {
	r.mu.Lock()
	mc := r.machines[id]
	r.mu.Unlock()
	if mc == nil {
		return fmt.Errorf("sandbox: power off %s: %w", id, ErrUnknownMachine)
	}
	mc.stopOnce.Do(func() { close(mc.stop) })
	select {
	case <-mc.done:
	case <-ctx.Done():
		return fmt.Errorf("sandbox: power off %s: %w", id, ctx.Err())
	}
	r.setState(mc, StatePoweredOff)
	mc.log.Info("machine powered off")
	return nil
}

// PowerOn boots a powered-off machine from its root. Like cloud-init, the
// user-data ran on the first boot only: when it had finished (boot-finished
// exists), the agent it installed is started again and keeps running as
// after Boot; when the machine was powered off before that, the machine
// stays up without an agent (state user-data-failed, saying why). A machine
// that runs already is left alone.
func (r *Runtime) PowerOn(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sandbox: power on %s: %w", id, err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	old := r.machines[id]
	if old == nil {
		return fmt.Errorf("sandbox: power on %s: %w", id, ErrUnknownMachine)
	}
	if old.info.State != StatePoweredOff {
		return nil
	}
	mc := &machine{info: old.info, stop: make(chan struct{}), done: make(chan struct{}), log: old.log}
	mc.info.AgentPID = 0
	r.machines[id] = mc
	r.wg.Add(1)
	go r.resume(mc)
	return nil
}

// resume is supervise for a second boot: no user-data, only the agent.
func (r *Runtime) resume(mc *machine) {
	defer r.wg.Done()
	defer close(mc.done)
	r.mu.Lock()
	root := mc.info.Root
	r.mu.Unlock()
	if _, err := os.Stat(filepath.Join(root, BootFinished)); err != nil {
		r.mu.Lock()
		mc.info.State = StateUserDataFailed
		mc.info.UserDataError = "powered off before the user-data finished; cloud-init runs it on the first boot only"
		r.mu.Unlock()
		return
	}
	if _, err := os.Stat(filepath.Join(root, AgentPath)); err != nil {
		r.setState(mc, StateNoAgent)
		return
	}
	mc.log.Info("machine powered on; starting the agent")
	r.newBoot(mc, root)
	r.runAgent(mc, root)
}
