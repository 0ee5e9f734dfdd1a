package sandbox

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/agent/layout"
	"github.com/devpilot/devpilot/agent/update"
	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
	"github.com/devpilot/devpilot/packaging"
	"github.com/devpilot/devpilot/shared/protocol"
)

// updatedMachine is user-data that lays out what an agent leaves behind
// the moment it installed update upd_1 (version A → B) and exited: both
// versions, current at B, the guard, the pending marker with deadline.
func updatedMachine(newAgent string, deadline time.Time) []byte {
	return []byte(`#!/bin/sh
set -eu
R="$DEVPILOT_AGENT_ROOT_DIR"
L="$R/usr/lib/devpilot-agent"
mkdir -p "$L/versions/A" "$L/versions/B" "$R/usr/local/bin" "$R/var/lib/devpilot-agent"
cat >"$L/versions/A/devpilot-agent" <<'AGENT'
#!/bin/sh
echo A >>"$DEVPILOT_AGENT_ROOT_DIR/agent-runs"
exec sleep 1000
AGENT
cat >"$L/versions/B/devpilot-agent" <<'AGENT'
` + newAgent + `AGENT
chmod 0755 "$L/versions/A/devpilot-agent" "$L/versions/B/devpilot-agent"
cat >"$L/update-guard.sh" <<'GUARD'
` + packaging.UpdateGuard + `GUARD
ln -s versions/B "$L/current"
ln -s ../../lib/devpilot-agent/current/devpilot-agent "$R/usr/local/bin/devpilot-agent"
printf 'id=upd_1\nfrom=A\nto=B\ndeadline=%s\n' ` + strconv.FormatInt(deadline.Unix(), 10) + ` >"$R/var/lib/devpilot-agent/update-pending"
`)
}

func rolledBack(t *testing.T, r *Runtime, id string) (string, protocol.LastUpdate) {
	t.Helper()
	info := waitFor(t, r, id, "ran version A again", func(i Info) bool {
		b, _ := os.ReadFile(filepath.Join(i.Root, "agent-runs"))
		return i.State == StateAgentRunning && strings.Contains(string(b), "A\n")
	})
	p := layout.New(info.Root)
	if v := update.CurrentVersion(p); v != "A" {
		t.Errorf("current -> %q after the rollback, want A", v)
	}
	if _, ok := update.ReadPending(p); ok {
		t.Error("pending marker still there after the rollback")
	}
	var lu protocol.LastUpdate
	b, err := os.ReadFile(p.UpdateResult())
	if err != nil || json.Unmarshal(b, &lu) != nil {
		t.Fatalf("update result %q: %v", b, err)
	}
	if lu.ID != "upd_1" || lu.Result != protocol.UpdateResultRolledBack || lu.From != "A" || lu.To != "B" {
		t.Errorf("update result = %+v", lu)
	}
	return info.Root, lu
}

// A new version that exits at once is rolled back by the guard the
// sandbox runs before each start (as systemd's ExecStartPre= does), after
// three failed starts, with no help from the agent's code.
func TestUpdateGuardRollsBackCrashingVersion(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Options{})
	m := simrun.Machine{Provider: "digitalocean", ID: "u1", Hostname: "web-1",
		UserData: updatedMachine("#!/bin/sh\necho B crashing >&2\nexit 1\n", time.Now().Add(time.Hour))}
	if err := r.Boot(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	root, lu := rolledBack(t, r, "u1")
	if !strings.Contains(lu.Reason, "failed to start 3 times") {
		t.Errorf("reason = %q", lu.Reason)
	}
	info, _ := r.Machine("u1")
	if info.AgentStarts != 4 {
		t.Errorf("agent started %d times, want 3 of B then A", info.AgentStarts)
	}
	if log := readFile(t, filepath.Join(root, AgentLogPath)); !strings.Contains(log, "rolled back update upd_1: B -> A") {
		t.Errorf("agent log does not say it rolled back: %q", log)
	}
}

// A new version that runs but never gets a session (hangs, or the control
// plane refuses it) is rolled back at the marker's deadline.
func TestUpdateGuardRollsBackAtDeadline(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Options{})
	m := simrun.Machine{Provider: "digitalocean", ID: "u2", Hostname: "web-1",
		UserData: updatedMachine("#!/bin/sh\necho B >>\"$DEVPILOT_AGENT_ROOT_DIR/agent-runs\"\nexec sleep 1000\n", time.Now().Add(3*time.Second))}
	if err := r.Boot(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	root, lu := rolledBack(t, r, "u2")
	if !strings.Contains(lu.Reason, "deadline") {
		t.Errorf("reason = %q", lu.Reason)
	}
	if runs := readFile(t, filepath.Join(root, "agent-runs")); !strings.HasPrefix(runs, "B\n") {
		t.Errorf("runs = %q, want B first", runs)
	}
}
