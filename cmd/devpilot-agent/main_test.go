package main

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/agent/agenttest"
	"github.com/devpilot/devpilot/agent/config"
	"github.com/devpilot/devpilot/agent/layout"
	"github.com/devpilot/devpilot/shared/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestInstallRunSIGTERM builds the real binary, installs it into a temp root
// from a bootstrap file, runs the installed copy against an in-test hub, and
// stops it with SIGTERM: it must enroll, send heartbeats, drop the token
// from its config, tell systemd READY=1, close with 1000 and exit 0.
func TestInstallRunSIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "devpilot-agent")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	hub := agenttest.New(t)
	boot := hub.Bootstrap("srv-e2e")
	bootFile := filepath.Join(dir, "bootstrap.json")
	raw, _ := json.Marshal(boot)
	if err := os.WriteFile(bootFile, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dir, "root")
	p := layout.New(root)

	// install, twice (idempotent), via flags and via environment.
	run := func(env []string, args ...string) (string, error) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run(nil, "install", "--bootstrap-file", bootFile, "--root-dir", root, "--supervisor", "none"); err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	if _, err := os.Stat(bootFile); !os.IsNotExist(err) {
		t.Error("bootstrap file not deleted")
	}
	out, err := run([]string{"DEVPILOT_AGENT_ROOT_DIR=" + root, "DEVPILOT_AGENT_SUPERVISOR=none"}, "install")
	if err != nil || !strings.Contains(out, "nothing changed") {
		t.Errorf("second install: %v\n%s", err, out)
	}
	if out, err := run(nil, "status", "--root-dir", root, "--supervisor", "none"); err != nil ||
		!strings.Contains(out, "srv-e2e") || strings.Contains(out, boot.BootstrapToken) {
		t.Errorf("status: %v\n%s", err, out)
	}

	// A notify socket, as systemd would give.
	sockDir, err := os.MkdirTemp("", "sd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(sockDir) })
	sock := filepath.Join(sockDir, "notify")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		notified []string
		readDone = make(chan struct{})
	)
	go func() {
		defer close(readDone)
		buf := make([]byte, 4096)
		for {
			n, err := pc.Read(buf)
			if err != nil {
				return
			}
			mu.Lock()
			notified = append(notified, string(buf[:n]))
			mu.Unlock()
		}
	}()
	t.Cleanup(func() { _ = pc.Close(); <-readDone })
	gotNotify := func(s string) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range notified {
			if strings.Contains(m, s) {
				return true
			}
		}
		return false
	}

	var stderr bytes.Buffer
	agent := exec.Command(p.Binary(), "run", "--root-dir", root)
	agent.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock, "JOURNAL_STREAM=1:1", "WATCHDOG_USEC=300000")
	agent.Stderr = &stderr
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- agent.Wait() }()
	t.Cleanup(func() {
		_ = agent.Process.Kill()
		select {
		case <-exited: //nolint:errcheck // killed: its error says so
		case <-time.After(5 * time.Second):
		}
	})

	agenttest.WaitFor(t, "a heartbeat from the installed agent", func() bool { return len(hub.Heartbeats()) > 0 })
	hb := hub.Heartbeats()[0]
	if hb.ServerID != "srv-e2e" || hb.Health.UptimeS <= 0 || hb.Health.MemTotalMB <= 0 {
		t.Errorf("heartbeat %+v: want real health", hb)
	}
	if m := hub.Hellos()[0].Mode; m != protocol.ModeEnroll {
		t.Errorf("first hello mode %q, want enroll", m)
	}
	agenttest.WaitFor(t, "token removed from config", func() bool {
		c, err := config.Load(p.ConfigFile())
		return err == nil && c.Enrolled()
	})
	if fi, _ := os.Stat(p.ConfigFile()); fi.Mode().Perm() != 0o600 {
		t.Errorf("rewritten config mode %04o, want 0600", fi.Mode().Perm())
	}
	agenttest.WaitFor(t, "READY=1", func() bool { return gotNotify("READY=1") })
	agenttest.WaitFor(t, "WATCHDOG=1 while connected", func() bool { return gotNotify("WATCHDOG=1") })
	if !gotNotify("STATUS=connected to 127.0.0.1") {
		t.Error("no 'connected' STATUS")
	}

	// Tasks: a file lands below the root dir, an exec streams its output.
	hub.SetAutoAck(true)
	if err := hub.Send("srv-e2e", protocol.TypeTask, protocol.Task{ID: "e2e-file", Kind: protocol.KindFile,
		File: &protocol.FileSpec{Path: "/etc/motd", ContentBase64: "aGVsbG8K", Mode: "0600"}}); err != nil {
		t.Fatal(err)
	}
	final := func(id string) protocol.TaskResult {
		var res protocol.TaskResult
		agenttest.WaitFor(t, "result of "+id, func() bool {
			for _, r := range hub.TaskResults(id) {
				if protocol.Final(r.State) {
					res = r
					return true
				}
			}
			return false
		})
		return res
	}
	if res := final("e2e-file"); res.State != protocol.TaskSucceeded {
		t.Errorf("file task: %+v", res)
	}
	if b, err := os.ReadFile(filepath.Join(root, "etc/motd")); err != nil || string(b) != "hello\n" {
		t.Errorf("file task wrote %q, %v below the root dir", b, err)
	}
	// Tasks run concurrently: send the exec only once the file is written.
	if err := hub.Send("srv-e2e", protocol.TypeTask, protocol.Task{ID: "e2e-exec", Kind: protocol.KindExec,
		Exec: &protocol.ExecSpec{Argv: []string{"/bin/sh", "-c", "cat etc/motd; echo $DEVPILOT_TASK_ID"}}}); err != nil {
		t.Fatal(err)
	}
	if res := final("e2e-exec"); res.State != protocol.TaskSucceeded {
		t.Errorf("exec task: %+v", res)
	}
	var logged []byte
	for _, l := range hub.TaskLogs("e2e-exec") {
		logged = append(logged, l.Data...)
	}
	if string(logged) != "hello\ne2e-exec\n" {
		t.Errorf("exec output %q (runs in the root dir)", logged)
	}
	if _, err := os.Stat(filepath.Join(p.StateDir(), "tasks", "journal.jsonl")); err != nil {
		t.Errorf("task journal: %v", err)
	}

	if err := agent.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("agent exit after SIGTERM: %v, want 0\n%s", err, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("agent still running 15 s after SIGTERM\n%s", stderr.String())
	}
	agenttest.WaitFor(t, "normal close at hub", func() bool {
		codes := hub.CloseCodes()
		return len(codes) > 0 && codes[len(codes)-1] == 1000
	})
	if strings.Contains(stderr.String(), boot.BootstrapToken) {
		t.Error("agent logged the bootstrap token")
	}
	if line, _, _ := strings.Cut(stderr.String(), "\n"); len(line) > 4 && line[0] >= '0' && line[0] <= '9' {
		t.Errorf("log line starts with a timestamp under JOURNAL_STREAM: %q", line)
	}

	// uninstall removes everything.
	if out, err := run(nil, "uninstall", "--root-dir", root, "--supervisor", "none"); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	for _, f := range []string{p.Binary(), p.ConfigDir(), p.StateDir(), p.UnitFile()} {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("%s left after uninstall", f)
		}
	}
}

func TestUsage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"version"}, 0, "devpilot-agent"},
		{[]string{"--help"}, 0, "--supervisor NAME"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"install", "--supervisor", "upstart", "--root-dir", t.TempDir()}, 2, "want systemd or none"},
		{[]string{}, 2, "Usage:"},
	} {
		var stdout, stderr bytes.Buffer
		code := realMain(tc.args, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stdout.String()+stderr.String(), tc.out) {
			t.Errorf("%v: code %d, output %q; want %d and %q", tc.args, code, stdout.String()+stderr.String(), tc.code, tc.out)
		}
	}
}
