package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// newRuntime returns a Runtime with tiny delays, closed at the end of the test.
func newRuntime(t *testing.T, o Options) *Runtime {
	t.Helper()
	if o.Dir == "" {
		o.Dir = t.TempDir()
	}
	o.Logger = zaptest.NewLogger(t)
	if o.RestartDelay == 0 {
		o.RestartDelay = 10 * time.Millisecond
	}
	if o.StopTimeout == 0 {
		o.StopTimeout = 2 * time.Second
	}
	r := New(o)
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

// waitFor polls the machine until cond holds (the deadline only guards
// against a hang; nothing here measures time).
func waitFor(t *testing.T, r *Runtime, id string, what string, cond func(Info) bool) Info {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, ok := r.Machine(id)
		if ok && cond(info) {
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("machine %s: never %s; last: %+v (known: %v)", id, what, info, ok)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// alive reports whether pid is a live (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return syscall.Kill(pid, 0) == nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || (s[i+2] != 'Z' && s[i+2] != 'X')
}

// waitFile polls until a process finished writing a line to path.
func waitFile(t *testing.T, path string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if len(b) > 0 && b[len(b)-1] == '\n' {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: never written (%q)", path, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitFileCount polls until path holds n occurrences of sub.
func waitFileCount(t *testing.T, path, sub string, n int) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Count(string(b), sub) >= n {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: never had %d× %q: %q", path, n, sub, b)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// userData installs agentScript as the agent after writing a marker file.
func userData(agentScript string) []byte {
	return []byte(`#!/bin/sh
set -eu
echo "user-data running in $DEVPILOT_AGENT_ROOT_DIR"
echo hello >"$DEVPILOT_AGENT_ROOT_DIR/hello"
mkdir -p "$DEVPILOT_AGENT_ROOT_DIR/usr/local/bin"
cat >"$DEVPILOT_AGENT_ROOT_DIR/usr/local/bin/devpilot-agent" <<'AGENT'
` + agentScript + `AGENT
chmod 0755 "$DEVPILOT_AGENT_ROOT_DIR/usr/local/bin/devpilot-agent"
`)
}

// sleepingAgent records each start, then sleeps as the agent process.
const sleepingAgent = `#!/bin/sh
echo "agent $$ started: $* supervisor=$DEVPILOT_AGENT_SUPERVISOR extra=${SANDBOX_EXTRA:-}"
echo "$*" >>"$DEVPILOT_AGENT_ROOT_DIR/agent-runs"
exec sleep 1000
`

func TestAgentRunsAndRestarts(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Options{AgentEnv: []string{"SANDBOX_EXTRA=yes"}})
	m := simrun.Machine{Provider: "digitalocean", ID: "101", Hostname: "web-1", UserData: userData(sleepingAgent)}
	if err := r.Boot(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	info := waitFor(t, r, "101", "ran the agent", func(i Info) bool { return i.State == StateAgentRunning && i.AgentPID != 0 })
	root := info.Root
	if want := filepath.Join(r.o.Dir, "digitalocean-101"); root != want {
		t.Errorf("root = %s, want %s", root, want)
	}
	if !info.UserDataDone || info.UserDataExitCode != 0 || info.AgentStarts != 1 || info.AgentRestarts != 0 {
		t.Errorf("info = %+v", info)
	}
	if got := readFile(t, filepath.Join(root, "hello")); got != "hello\n" {
		t.Errorf("user-data's file = %q", got)
	}
	if got := readFile(t, filepath.Join(root, OutputLogPath)); !strings.Contains(got, "user-data running in "+root+"\n") {
		t.Errorf("cloud-init-output.log = %q", got)
	}
	if _, err := os.Stat(filepath.Join(root, BootFinished)); err != nil {
		t.Errorf("boot-finished: %v", err)
	}
	if got := readFile(t, filepath.Join(root, UserDataPath)); got != string(m.UserData) {
		t.Error("user-data not kept where cloud-init keeps it")
	}
	if got := waitFile(t, filepath.Join(root, "agent-runs")); got != "run --root-dir "+root+"\n" {
		t.Errorf("agent argv = %q", got)
	}

	// Kill the agent: the runtime starts it again.
	first := info.AgentPID
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	info = waitFor(t, r, "101", "restarted the agent", func(i Info) bool {
		return i.State == StateAgentRunning && i.AgentStarts == 2 && i.AgentPID != 0
	})
	if info.AgentPID == first || info.AgentRestarts != 1 || !strings.Contains(info.AgentLastExit, "killed") {
		t.Errorf("after kill: %+v", info)
	}
	log := waitFileCount(t, filepath.Join(root, AgentLogPath), "started: run", 2)
	if !strings.Contains(log, "supervisor=none extra=yes") || !strings.Contains(log, "restarting in") {
		t.Errorf("devpilot-agent.log = %q", log)
	}

	if err := r.Destroy(context.Background(), "101"); err != nil {
		t.Fatal(err)
	}
	if alive(info.AgentPID) {
		t.Error("agent still running after Destroy")
	}
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("root not removed: %v", err)
	}
	if _, ok := r.Machine("101"); ok {
		t.Error("destroyed machine still listed")
	}
}

func TestUserDataFailureStartsNothing(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		userData string
		wantCode int
		wantLog  string
	}{
		{"exit 3", string(userData(sleepingAgent)) + "echo boom >&2\nexit 3\n", 3, "boom"},
		{"set -e failure", "#!/bin/sh\nset -e\nfalse\necho unreachable\n", 1, "user-data failed: exit status 1"},
		{"cloud-config", "#cloud-config\npackages: [curl]\n", 1, "not a shell script"},
		{"empty", "", 1, "not a shell script"},
	}
	r := newRuntime(t, Options{})
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			id := strconv.Itoa(200 + i)
			if err := r.Boot(context.Background(), simrun.Machine{Provider: "vultr", ID: id, UserData: []byte(tt.userData)}); err != nil {
				t.Fatal(err)
			}
			info := waitFor(t, r, id, "failed", func(i Info) bool { return i.State == StateUserDataFailed })
			if info.UserDataExitCode != tt.wantCode || info.AgentStarts != 0 || info.AgentPID != 0 || info.UserDataError == "" {
				t.Errorf("info = %+v", info)
			}
			if got := readFile(t, filepath.Join(info.Root, OutputLogPath)); !strings.Contains(got, tt.wantLog) || strings.Contains(got, "unreachable") {
				t.Errorf("cloud-init-output.log = %q, want it to contain %q", got, tt.wantLog)
			}
			var res struct{ V1 struct{ Errors []string } }
			if err := json.Unmarshal([]byte(readFile(t, filepath.Join(info.Root, ResultPath))), &res); err != nil || len(res.V1.Errors) != 1 {
				t.Errorf("result.json: %+v (%v)", res, err)
			}
			if _, err := os.Stat(filepath.Join(info.Root, BootFinished)); err == nil {
				t.Error("boot-finished written for a failed user-data")
			}
			if _, err := os.Stat(filepath.Join(info.Root, AgentLogPath)); err == nil {
				t.Error("agent log exists: something started the agent")
			}
		})
	}
}

func TestNoAgentInstalled(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Options{})
	if err := r.Boot(context.Background(), simrun.Machine{Provider: "vultr", ID: "abc", UserData: []byte("#!/bin/sh\necho ok\n")}); err != nil {
		t.Fatal(err)
	}
	info := waitFor(t, r, "abc", "finished", func(i Info) bool { return i.State == StateNoAgent })
	if info.AgentStarts != 0 || info.UserDataExitCode != 0 {
		t.Errorf("info = %+v", info)
	}
}

func TestStartLimit(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Options{RestartDelay: time.Millisecond, StartLimitBurst: 3, StartLimitInterval: time.Hour})
	ud := userData("#!/bin/sh\necho crashing\nexit 7\n")
	if err := r.Boot(context.Background(), simrun.Machine{Provider: "digitalocean", ID: "300", UserData: ud}); err != nil {
		t.Fatal(err)
	}
	info := waitFor(t, r, "300", "gave up", func(i Info) bool { return i.State == StateAgentFailed })
	if info.AgentStarts != 3 || info.AgentLastExit != "exit status 7" || info.AgentPID != 0 {
		t.Errorf("info = %+v", info)
	}
	log := readFile(t, filepath.Join(info.Root, AgentLogPath))
	if strings.Count(log, "crashing") != 3 || !strings.Contains(log, "start request repeated too quickly") {
		t.Errorf("devpilot-agent.log = %q", log)
	}
}

// TestDestroyKillsProcessGroups: children the agent left in the background
// and agents that ignore SIGTERM die too; so does a still-running user-data.
func TestDestroyKillsProcessGroups(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Options{StopTimeout: 50 * time.Millisecond})
	stubborn := `#!/bin/sh
trap '' TERM
sleep 1000 &
echo $! >"$DEVPILOT_AGENT_ROOT_DIR/child.pid"
echo $$ >"$DEVPILOT_AGENT_ROOT_DIR/agent.pid"
while :; do sleep 1; done
`
	if err := r.Boot(context.Background(), simrun.Machine{Provider: "digitalocean", ID: "400", UserData: userData(stubborn)}); err != nil {
		t.Fatal(err)
	}
	hanging := "#!/bin/sh\necho $$ >\"$DEVPILOT_AGENT_ROOT_DIR/script.pid\"\nsleep 1000\n"
	if err := r.Boot(context.Background(), simrun.Machine{Provider: "digitalocean", ID: "401", UserData: []byte(hanging)}); err != nil {
		t.Fatal(err)
	}
	info := waitFor(t, r, "400", "ran the agent", func(i Info) bool { return i.State == StateAgentRunning })
	hang, _ := r.Machine("401")
	pid := func(root, name string) int {
		n, err := strconv.Atoi(strings.TrimSpace(waitFile(t, filepath.Join(root, name))))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	pids := []int{pid(info.Root, "child.pid"), pid(info.Root, "agent.pid"), pid(hang.Root, "script.pid")}
	var wg sync.WaitGroup
	for _, id := range []string{"400", "401"} {
		wg.Go(func() {
			if err := r.Destroy(context.Background(), id); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for _, p := range pids {
		if alive(p) {
			t.Errorf("process %d survived Destroy", p)
		}
	}
	for _, root := range []string{info.Root, hang.Root} {
		if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("root %s not removed: %v", root, err)
		}
	}
}

func TestBootRefuses(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Options{})
	ud := []byte("#!/bin/sh\nsleep 1000\n")
	for _, m := range []simrun.Machine{
		{Provider: "digitalocean", ID: "../escape", UserData: ud},
		{Provider: "", ID: "1", UserData: ud},
		{Provider: "vultr", ID: "", UserData: ud},
		{Provider: "vultr/x", ID: "1", UserData: ud},
	} {
		if err := r.Boot(context.Background(), m); err == nil {
			t.Errorf("Boot(%q, %q) accepted", m.Provider, m.ID)
		}
	}
	if ents, _ := os.ReadDir(r.o.Dir); len(ents) != 0 {
		t.Errorf("refused boots left %v", ents)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.Boot(ctx, simrun.Machine{Provider: "vultr", ID: "c", UserData: ud}); !errors.Is(err, context.Canceled) {
		t.Errorf("Boot with a cancelled context: %v", err)
	}
	if err := r.Boot(context.Background(), simrun.Machine{Provider: "vultr", ID: "dup", UserData: ud}); err != nil {
		t.Fatal(err)
	}
	if err := r.Boot(context.Background(), simrun.Machine{Provider: "vultr", ID: "dup", UserData: ud}); err == nil {
		t.Error("second Boot of the same id accepted")
	}
	if err := r.Destroy(context.Background(), "never-booted"); err != nil {
		t.Errorf("Destroy of an unknown id: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Boot(context.Background(), simrun.Machine{Provider: "vultr", ID: "late", UserData: ud}); !errors.Is(err, ErrClosed) {
		t.Errorf("Boot after Close: %v", err)
	}
	if ents, _ := os.ReadDir(r.o.Dir); len(ents) != 0 {
		t.Errorf("Close left %v", ents)
	}
}

// TestConcurrent boots, inspects and destroys machines from many goroutines
// (run with -race), and Close stops what is left.
func TestConcurrent(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Options{})
	const n = 8
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			id := strconv.Itoa(500 + i)
			if err := r.Boot(context.Background(), simrun.Machine{Provider: "digitalocean", ID: id, UserData: userData(sleepingAgent)}); err != nil {
				t.Error(err)
				return
			}
			waitFor(t, r, id, "ran the agent", func(i Info) bool { return i.State == StateAgentRunning })
			_ = r.Machines()
			if i%2 == 0 { // the rest is left to Close
				if err := r.Destroy(context.Background(), id); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if got := len(r.Machines()); got != n/2 {
		t.Errorf("%d machines left, want %d", got, n/2)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if got := len(r.Machines()); got != 0 {
		t.Errorf("%d machines after Close", got)
	}
	if ents, _ := os.ReadDir(r.o.Dir); len(ents) != 0 {
		t.Errorf("Close left %v", ents)
	}
}

func TestDestroyContext(t *testing.T) {
	t.Parallel()
	r := newRuntime(t, Options{StopTimeout: 300 * time.Millisecond})
	ud := []byte("#!/bin/sh\ntrap '' TERM\necho $$ >\"$DEVPILOT_AGENT_ROOT_DIR/pid\"\nwhile :; do sleep 1; done\n")
	if err := r.Boot(context.Background(), simrun.Machine{Provider: "vultr", ID: "slow", UserData: ud}); err != nil {
		t.Fatal(err)
	}
	info, _ := r.Machine("slow")
	waitFile(t, filepath.Join(info.Root, "pid"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.Destroy(ctx, "slow"); !errors.Is(err, context.Canceled) {
		t.Errorf("Destroy with a cancelled context: %v", err)
	}
	// The machine is still known until the stop finished; Close (in
	// Cleanup) waits for it and removes it.
	if _, ok := r.Machine("slow"); !ok {
		t.Error("machine forgotten before it stopped")
	}
}

// The sandbox gives up on a crashing agent when systemd would: its
// default start limit is the real unit's.
func TestStartLimitIsTheUnits(t *testing.T) {
	b, err := os.ReadFile("../../packaging/devpilot-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			unit[k] = v
		}
	}
	if got := unit["StartLimitBurst"]; got != strconv.Itoa(DefaultStartLimitBurst) {
		t.Errorf("unit StartLimitBurst=%s, sandbox DefaultStartLimitBurst %d", got, DefaultStartLimitBurst)
	}
	if got := unit["StartLimitIntervalSec"]; got != strconv.Itoa(int(DefaultStartLimitInterval/time.Second)) {
		t.Errorf("unit StartLimitIntervalSec=%s, sandbox DefaultStartLimitInterval %s", got, DefaultStartLimitInterval)
	}
}
