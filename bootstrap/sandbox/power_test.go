package sandbox

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
)

// Power off stops the agent and keeps the disk; power on starts the agent
// again by itself without running the user-data a second time.
func TestPowerOffOn(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Options{})
	ctx := context.Background()
	m := simrun.Machine{Provider: "vultr", ID: "p1", Hostname: "web-1", UserData: userData(sleepingAgent)}
	if err := r.Boot(ctx, m); err != nil {
		t.Fatal(err)
	}
	info := waitFor(t, r, "p1", "ran the agent", func(i Info) bool { return i.State == StateAgentRunning && i.AgentPID != 0 })
	first := info.AgentPID
	// Started is not yet running its first line: wait until the agent has
	// said so, or power off may kill it before it ever does.
	waitFileCount(t, filepath.Join(info.Root, "agent-runs"), "run --root-dir", 1)

	if err := r.PowerOff(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	off, ok := r.Machine("p1")
	if !ok || off.State != StatePoweredOff || off.AgentPID != 0 {
		t.Fatalf("after power off: %+v (known %v)", off, ok)
	}
	if alive(first) {
		t.Error("agent still running after PowerOff")
	}
	if got := readFile(t, filepath.Join(off.Root, "hello")); got != "hello\n" {
		t.Errorf("disk not kept: hello = %q", got)
	}
	if err := r.PowerOff(ctx, "p1"); err != nil {
		t.Errorf("second power off: %v", err)
	}

	if err := r.PowerOn(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	on := waitFor(t, r, "p1", "restarted the agent after power on", func(i Info) bool {
		return i.State == StateAgentRunning && i.AgentPID != 0 && i.AgentStarts == 2
	})
	if on.AgentPID == first {
		t.Error("same agent pid after power on")
	}
	if err := r.PowerOn(ctx, "p1"); err != nil {
		t.Errorf("power on a running machine: %v", err)
	}
	if got := readFile(t, filepath.Join(on.Root, OutputLogPath)); strings.Count(got, "user-data running in") != 1 {
		t.Errorf("user-data ran again on power on: %q", got)
	}
	waitFileCount(t, filepath.Join(on.Root, "agent-runs"), "run --root-dir", 2)

	if err := r.Destroy(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	if alive(on.AgentPID) {
		t.Error("agent still running after Destroy")
	}
	if err := r.PowerOn(ctx, "p1"); !errors.Is(err, ErrUnknownMachine) {
		t.Errorf("power on a destroyed machine: %v, want ErrUnknownMachine", err)
	}
	if err := r.PowerOff(ctx, "nope"); !errors.Is(err, ErrUnknownMachine) {
		t.Errorf("power off unknown: %v, want ErrUnknownMachine", err)
	}
}

// rebootingAgent reboots its machine the way devpilot-agent does in
// DEVPILOT_AGENT_REBOOT=exit mode, once: it exits with ExitReboot on its
// first start; it records the boot id it was given at each start.
const rebootingAgent = `#!/bin/sh
test "$DEVPILOT_AGENT_REBOOT" = exit || exit 3
echo "$(cat "$DEVPILOT_AGENT_BOOT_ID_FILE")" >>"$DEVPILOT_AGENT_ROOT_DIR/boots"
if [ ! -e "$DEVPILOT_AGENT_ROOT_DIR/rebooted" ]; then
	touch "$DEVPILOT_AGENT_ROOT_DIR/rebooted"
	exit 194
fi
exec sleep 1000
`

// The reboot hook: an agent exiting with ExitReboot reboots its machine
// (a new boot id, the agent started again at once), never this host.
func TestAgentRebootHook(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Options{StartLimitBurst: 1})
	m := simrun.Machine{Provider: "digitalocean", ID: "rb1", Hostname: "web-1", UserData: userData(rebootingAgent)}
	if err := r.Boot(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	info := waitFor(t, r, "rb1", "rebooted once and running", func(i Info) bool {
		return i.Reboots == 1 && i.State == StateAgentRunning && i.AgentStarts == 2
	})
	// The second start may not have written its line yet when the state
	// says it runs: wait for the line, not for the state.
	boots := strings.Fields(waitFileCount(t, filepath.Join(info.Root, "boots"), "\n", 2))
	if len(boots) != 2 || boots[0] == boots[1] || boots[1] != info.BootID {
		t.Errorf("boot ids seen by the agent %v, current %s; want two different, the last current", boots, info.BootID)
	}
}
