//go:build e2e

// Package e2e_test boots a real Debian system (systemd, cloud-init, sshd in
// a systemd-nspawn container) for every instance the simulated clouds
// create, and checks what a real server would show: cloud-init ran the
// user-data, the agent runs under systemd and survives being killed,
// frozen and rebooted, uninstalls cleanly, and a broken install is
// diagnosed over SSH. Run with `make e2e` (root; see e2e/README.md).
package e2e_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devpilot/devpilot/bootstrap/cloudinit"
	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/cli"
	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
	"github.com/devpilot/devpilot/e2e/nspawn"
	"github.com/devpilot/devpilot/shared/protocol"
)

// timings collects what each phase took, printed at the end of the run.
var timings struct {
	mu   sync.Mutex
	rows []string
}

func record(format string, args ...any) {
	timings.mu.Lock()
	defer timings.mu.Unlock()
	timings.rows = append(timings.rows, fmt.Sprintf(format, args...))
}

// printTimings prints (and with DEVPILOT_E2E_TIMINGS=FILE, writes) what
// record collected; TestMain calls it after every test.
func printTimings() {
	timings.mu.Lock()
	defer timings.mu.Unlock()
	sort.Strings(timings.rows)
	text := strings.Join(timings.rows, "\n") + "\n"
	fmt.Printf("\n=== e2e phase timings\n%s", text)
	if p := os.Getenv("DEVPILOT_E2E_TIMINGS"); p != "" {
		_ = os.WriteFile(p, []byte(text), 0o644)
	}
}

// TestRealServers creates one server on each simulated cloud, each booted
// as a real Debian system, and checks the install and the agent's life
// under systemd.
func TestRealServers(t *testing.T) {
	t.Parallel()
	h := start(t, envOptions{agentTimeout: 6 * time.Minute})
	v := h.env.Values
	do := h.connect("digitalocean", v["DO_SIM_TOKEN"])
	vu := h.connect("vultr", v["VULTR_SIM_KEY"])
	created := time.Now()
	sDO := h.createServer(do, "e2e-do", "nyc3", "s-1vcpu-1gb", "debian-12")
	sVU := h.createServer(vu, "e2e-vultr", "ewr", "vc2-1c-1gb", "debian-12")
	for _, s := range []apitypes.Server{sDO, sVU} {
		t.Run(s.Provider, func(t *testing.T) {
			t.Parallel()
			checkServer(t, h, s, created)
		})
	}
}

func checkServer(t *testing.T, h *harness, s apitypes.Server, created time.Time) {
	got := h.waitServer(t, s.ID, 5*time.Minute, "online with a connected agent", func(s apitypes.Server) bool {
		return s.State == "online" && s.Agent.Connected && s.Agent.InstalledAt != nil
	})
	online := time.Now()
	m, ok := h.rt.Machine(got.InstanceID)
	if !ok {
		t.Fatalf("no container for instance %s", got.InstanceID)
	}
	t.Logf("%s is online as container %s (instance %s, sshd 127.0.0.1:%d)", s.Name, m.Name, m.ID, m.SSHPort)

	// cloud-init ran our user-data (scripts-user) and finished cleanly.
	out, code := sh(t, m, "cloud-init status --wait --long")
	if code != 0 || !strings.Contains(out, "status: done") {
		t.Errorf("cloud-init status --long: exit %d:\n%s", code, out)
	}
	logOut, _ := sh(t, m, "cat /var/log/cloud-init-output.log")
	phases := cloudinit.ParsePhases([]byte(logOut))
	for _, p := range []string{cloudinit.PhaseStart, cloudinit.PhaseDownloaded, cloudinit.PhaseVerified, cloudinit.PhaseInstalled} {
		if _, ok := phases[p]; !ok {
			t.Errorf("cloud-init output has no %q phase from our user-data:\n%s", p, logOut)
		}
	}
	if _, failed := phases[cloudinit.PhaseFailed]; failed {
		t.Errorf("the bootstrap script reported a failure:\n%s", logOut)
	}
	if out, code := sh(t, m, "test -s /var/lib/cloud/instance/scripts/part-001 && grep -c devpilot-bootstrap /var/lib/cloud/instance/user-data.txt"); code != 0 {
		t.Errorf("our user-data is not what cloud-init ran as scripts-user: %s", out)
	}
	if out, _ := sh(t, m, "hostname"); out != m.Hostname {
		t.Errorf("hostname %q, want %q from the seed's meta-data", out, m.Hostname)
	}
	recordPhases(t, h, m, s, phases, created, online)

	// The unit is enabled and active; config and identity are 0600 root.
	if out, _ := sh(t, m, "systemctl is-enabled devpilot-agent; systemctl is-active devpilot-agent"); out != "enabled\nactive" {
		t.Errorf("devpilot-agent unit: %q, want enabled and active", out)
	}
	for _, f := range []string{"/etc/devpilot-agent/config.json", "/var/lib/devpilot-agent/identity.key"} {
		if out, _ := sh(t, m, "stat -c '%a %U' "+f); out != "600 root" {
			t.Errorf("%s: mode/owner %q, want 600 root", f, out)
		}
	}
	if out, _ := sh(t, m, "ls /etc/devpilot-agent"); strings.Contains(out, "bootstrap.json") {
		t.Errorf("the bootstrap contract was left behind: %s", out)
	}

	// The token in the user-data is spent: the agent's config no longer
	// holds it and the hub refuses to enroll with it again.
	token := seedToken(t, m)
	if out, _ := sh(t, m, "cat /etc/devpilot-agent/config.json"); strings.Contains(out, token) {
		t.Errorf("config.json still holds the bootstrap token after enrollment")
	}
	if typ, code := h.enrollWith(t, s.ID, token); typ != protocol.TypeError || code != protocol.ErrTokenInvalid {
		t.Errorf("enrolling again with the user-data's token: got %s %q, want error %s", typ, code, protocol.ErrTokenInvalid)
	}

	// kill -9: systemd restarts the agent and it reconnects.
	pid := mainPID(t, m)
	since := sessionSince(h, s.ID)
	killed := time.Now()
	sh(t, m, "kill -9 "+strconv.Itoa(pid))
	d := waitFor(t, time.Minute, "agent restarted by systemd after kill -9", func() string {
		return restartedCheck(t, m, pid)
	})
	waitFor(t, time.Minute, "agent reconnected after kill -9", func() string { return reconnectedCheck(h, s.ID, since) })
	record("%-7s kill -9 → restarted by systemd %v, reconnected %v", s.Provider, d.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))

	// SIGSTOP: the watchdog (WatchdogSec) kills the frozen agent, systemd
	// restarts it, it reconnects.
	pid = mainPID(t, m)
	since = sessionSince(h, s.ID)
	stopped := time.Now()
	sh(t, m, "kill -STOP "+strconv.Itoa(pid))
	d = waitFor(t, 3*time.Minute, "frozen agent restarted by the watchdog", func() string {
		return restartedCheck(t, m, pid)
	})
	if out, _ := sh(t, m, "journalctl -u devpilot-agent --no-pager | grep -ci 'watchdog timeout'"); out == "0" || out == "" {
		t.Errorf("no watchdog timeout in the agent's journal after SIGSTOP")
	}
	waitFor(t, time.Minute, "agent reconnected after the watchdog restart", func() string { return reconnectedCheck(h, s.ID, since) })
	record("%-7s SIGSTOP → watchdog restart %v, reconnected %v", s.Provider, d.Round(time.Millisecond), time.Since(stopped).Round(time.Millisecond))

	// Reboot: the agent comes back by itself.
	leader, _ := m.Leader()
	boots := m.Boots()
	bootID, _ := sh(t, m, "cat /proc/sys/kernel/random/boot_id")
	since = sessionSince(h, s.ID)
	rebooted := time.Now()
	_, _ = sh(t, m, "systemctl reboot")
	waitFor(t, 2*time.Minute, "container booted again", func() string {
		if m.Boots() <= boots {
			return "no new boot yet"
		}
		if l, err := m.Leader(); err != nil || l == leader {
			return fmt.Sprintf("leader %d (%v)", l, err)
		}
		return ""
	})
	waitFor(t, 2*time.Minute, "agent reconnected after reboot", func() string { return reconnectedCheck(h, s.ID, since) })
	record("%-7s reboot → agent reconnected %v", s.Provider, time.Since(rebooted).Round(time.Millisecond))
	if out, _ := sh(t, m, "systemctl is-active devpilot-agent; cat /proc/sys/kernel/random/boot_id"); out == "active\n"+bootID || !strings.HasPrefix(out, "active\n") {
		t.Errorf("after reboot (boot id before: %s): %q, want the agent active in a new boot", bootID, out)
	}
	if out, code := sh(t, m, "cloud-init status --wait"); code != 0 || !strings.Contains(out, "done") {
		t.Errorf("cloud-init after reboot: exit %d %q", code, out)
	}
	if got := h.server(s.ID); got.State != "online" {
		t.Errorf("after reboot the server is %s, want online", got.State)
	}

	checkTasks(t, h, m, s)

	// Uninstall removes unit, binary and state; the session ends.
	out, code = sh(t, m, "/usr/local/bin/devpilot-agent uninstall")
	if code != 0 {
		t.Fatalf("devpilot-agent uninstall: exit %d:\n%s", code, out)
	}
	for _, p := range []string{"/usr/local/bin/devpilot-agent", "/etc/systemd/system/devpilot-agent.service",
		"/etc/devpilot-agent", "/var/lib/devpilot-agent", "/etc/systemd/system/multi-user.target.wants/devpilot-agent.service"} {
		if out, code := sh(t, m, "ls -ld "+p); code == 0 {
			t.Errorf("after uninstall %s is still there: %s", p, out)
		}
	}
	if out, _ := sh(t, m, "systemctl is-active devpilot-agent; systemctl list-unit-files --no-legend devpilot-agent.service | wc -l"); out != "inactive\n0" {
		t.Errorf("after uninstall: unit state %q, want inactive and no unit file", out)
	}
	if out, _ := sh(t, m, "pgrep -x devpilot-agent || ps -eo comm | grep -cx devpilot-agent"); out != "0" {
		t.Errorf("after uninstall a devpilot-agent process is still running: %q", out)
	}
	waitFor(t, time.Minute, "hub session ended after uninstall", func() string {
		if st, ok := h.env.App.Hub.Status(s.ID); ok && st.Connected {
			return "still connected"
		}
		return ""
	})
}

// recordPhases notes how long each install phase took on this server.
func recordPhases(t *testing.T, h *harness, m *nspawn.Machine, s apitypes.Server, ph map[string]time.Time, created, online time.Time) {
	ci, code := sh(t, m, "systemctl show --timestamp=us+utc -P InactiveExitTimestamp cloud-init-local.service")
	ciStart, err := time.Parse("Mon 2006-01-02 15:04:05.000000 MST", ci)
	if code != 0 || err != nil {
		t.Errorf("cloud-init-local start time %q: %v", ci, err)
		return
	}
	got := func(p string) time.Time { return ph[p] }
	confirmed := online
	if at := h.server(s.ID).Agent.InstalledAt; at != nil {
		confirmed = *at // when the hub accepted the enrollment
	}
	r := func(a, b time.Time) string { return b.Sub(a).Round(time.Millisecond).String() }
	var steps []string
	for _, st := range h.server(s.ID).Steps {
		if st.StartedAt != nil && st.FinishedAt != nil {
			steps = append(steps, st.Name+" "+r(*st.StartedAt, *st.FinishedAt))
		}
	}
	record("%-7s provisioning steps: %s", s.Provider, strings.Join(steps, ", "))
	record("%-7s create→container start %s | container start→cloud-init start %s | cloud-init start→user-data start %s | download %s | verify+install %s | installed→confirmed %s | create→online %s",
		s.Provider, r(created, m.Started), r(m.Started, ciStart), r(ciStart, got(cloudinit.PhaseStart)),
		r(got(cloudinit.PhaseStart), got(cloudinit.PhaseDownloaded)), r(got(cloudinit.PhaseDownloaded), got(cloudinit.PhaseInstalled)),
		r(got(cloudinit.PhaseInstalled), confirmed), r(created, online))
}

func mainPID(t *testing.T, m *nspawn.Machine) int {
	t.Helper()
	out, _ := sh(t, m, "systemctl show -P MainPID devpilot-agent")
	pid, err := strconv.Atoi(out)
	if err != nil || pid == 0 {
		t.Fatalf("devpilot-agent MainPID %q", out)
	}
	return pid
}

// restartedCheck is "" once the unit is active with another main process.
func restartedCheck(t *testing.T, m *nspawn.Machine, old int) string {
	out, _ := sh(t, m, "systemctl show -P ActiveState devpilot-agent; systemctl show -P MainPID devpilot-agent")
	f := strings.Fields(out)
	if len(f) == 2 && f[0] == "active" && f[1] != "0" && f[1] != strconv.Itoa(old) {
		return ""
	}
	return "unit: " + strings.Join(f, " ")
}

func sessionSince(h *harness, id string) time.Time {
	st, _ := h.env.App.Hub.Status(id)
	return st.Since
}

// reconnectedCheck is "" once the hub has a session newer than since.
func reconnectedCheck(h *harness, id string, since time.Time) string {
	st, ok := h.env.App.Hub.Status(id)
	if ok && st.Connected && st.Since.After(since) {
		return ""
	}
	return fmt.Sprintf("hub status connected=%v since=%v (old session since %v)", st.Connected, st.Since, since)
}

// TestDiagnosticsWhenInstallFails breaks one server's install (the agent
// download points at a dead port) and checks that the control plane logs
// in over SSH after the agent timeout and shows what went wrong.
func TestDiagnosticsWhenInstallFails(t *testing.T) {
	t.Parallel()
	deadURL := "https://127.0.0.1:" + strconv.Itoa(deadPort(t))
	h := start(t, envOptions{
		agentTimeout: 100 * time.Second, // the script's curl retries for ~60 s before it gives up
		mutate: func(h *harness, m *simrun.Machine) {
			m.UserData = bytes.ReplaceAll(m.UserData, []byte("url='"+h.env.App.URL+"'"), []byte("url='"+deadURL+"'"))
		},
	})
	v := h.env.Values
	do := h.connect("digitalocean", v["DO_SIM_TOKEN"])
	s := h.createServer(do, "e2e-broken", "nyc3", "s-1vcpu-1gb", "debian-12")
	got := h.waitServer(t, s.ID, 5*time.Minute, "failed with diagnostics", func(s apitypes.Server) bool {
		return s.State == "failed" && s.Diagnostics != ""
	})
	if got.Error == nil || got.Error.Code != "agent_timeout" {
		t.Errorf("error %+v, want agent_timeout", got.Error)
	}
	m, ok := h.rt.Machine(got.InstanceID)
	if !ok {
		t.Fatalf("no container for instance %s", got.InstanceID)
	}
	if !bytes.Contains(m.UserData, []byte(deadURL)) {
		t.Fatalf("the user-data was not broken as intended")
	}
	diag := got.Diagnostics
	t.Logf("diagnostics:\n%s", diag)
	for _, want := range []string{
		"$ cloud-init status --long", "status: error",
		"$ tail -n 60 /var/log/cloud-init-output.log", "devpilot-bootstrap: error: download of devpilot-agent from " + deadURL,
		"$ journalctl -u devpilot-agent --no-pager -n 200",
	} {
		if !strings.Contains(diag, want) {
			t.Errorf("diagnostics lack %q", want)
		}
	}
	if strings.Contains(diag, seedToken(t, m)) {
		t.Errorf("diagnostics contain the bootstrap token")
	}
	if len(diag) > 64<<10 {
		t.Errorf("diagnostics are %d bytes, want them bounded", len(diag))
	}

	// The host key was recorded on first contact, and it is the container's.
	known, err := os.ReadFile(filepath.Join(h.dir, app.KnownHostsFile))
	if err != nil {
		t.Fatalf("known hosts: %v", err)
	}
	var recorded string
	for _, line := range strings.Split(string(known), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == s.ID {
			recorded = f[2]
		}
	}
	hostKeys, _ := sh(t, m, "cat /etc/ssh/ssh_host_*_key.pub")
	if recorded == "" || !strings.Contains(hostKeys, recorded) {
		t.Errorf("recorded host key %q is not one of the container's:\n%s", recorded, hostKeys)
	}

	// `devpilot servers show` prints the error, the hint and the diagnostics.
	var stdout, stderr bytes.Buffer
	env := cli.Env{Stdout: &stdout, Stderr: &stderr, Getenv: func(k string) string { return v[k] }}
	if code := cli.Main(context.Background(), []string{"servers", "show", s.ID}, env); code != 0 {
		t.Fatalf("devpilot servers show: exit %d: %s", code, stderr.String())
	}
	show := stdout.String()
	for _, want := range []string{"agent_timeout", "hint", "DIAGNOSTICS", "status: error", "download of devpilot-agent"} {
		if !strings.Contains(show, want) {
			t.Errorf("devpilot servers show lacks %q:\n%s", want, show)
		}
	}

	// Deleting the server with destroy powers the container off and
	// removes it.
	if c := h.call("DELETE", servers+"/"+s.ID+"?destroy=true", nil, nil); c != 202 {
		t.Fatalf("delete: %d", c)
	}
	h.waitServer(t, s.ID, time.Minute, "deleted", func(s apitypes.Server) bool { return s.State == "deleted" })
	waitFor(t, time.Minute, "container removed", func() string {
		if _, ok := h.rt.Machine(m.ID); ok || m.Running() {
			return fmt.Sprintf("still known to the runtime: %v, running: %v", ok, m.Running())
		}
		if _, err := os.Stat(m.Dir); err == nil {
			return m.Dir + " still exists"
		}
		return ""
	})
}

// deadPort is a loopback port nothing listens on.
func deadPort(t *testing.T) int {
	t.Helper()
	// Ports in the ephemeral range are reused; a port below it that is not
	// bound is refused reliably.
	for p := 1023; p > 900; p-- {
		if !listening(p) {
			return p
		}
	}
	t.Fatal("no free low port")
	return 0
}

func listening(port int) bool {
	b, _ := os.ReadFile("/proc/net/tcp")
	hex := fmt.Sprintf(":%04X ", port)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 3 && strings.HasSuffix(f[1]+" ", hex) && f[3] == "0A" {
			return true
		}
	}
	return false
}

// checkTasks runs deployment tasks on the real system: a systemd restart
// (through the agent's D-Bus connection to the container's systemd) and
// an exec whose output streams back while it runs.
func checkTasks(t *testing.T, h *harness, m *nspawn.Machine, s apitypes.Server) {
	t.Helper()
	sshPID := func() string { out, _ := sh(t, m, "systemctl show -P MainPID ssh.service"); return out }
	before := sshPID()
	if before == "" || before == "0" {
		t.Fatalf("ssh.service is not running in the container: MainPID %q", before)
	}
	var task apitypes.Task
	if c := h.call("POST", servers+"/"+s.ID+"/tasks", map[string]any{"kind": "systemd", "unit": "ssh.service", "action": "restart"}, &task); c != 202 {
		t.Fatalf("create systemd task: %d %+v", c, task)
	}
	task = h.waitTask(t, task.ID)
	if task.State != protocol.TaskSucceeded || task.Unit == nil || task.Unit.ActiveState != "active" {
		t.Errorf("systemd restart task: %+v (unit %+v)", task, task.Unit)
	}
	if after := sshPID(); after == before || after == "0" {
		t.Errorf("ssh.service MainPID %s → %s: not restarted", before, after)
	}

	// exec: the first line arrives while the command still runs.
	script := "echo first-line; echo to-stderr >&2; sleep 4; hostname; exit 3"
	if c := h.call("POST", servers+"/"+s.ID+"/tasks", map[string]any{"kind": "exec", "argv": []string{"/bin/sh", "-c", script}}, &task); c != 202 {
		t.Fatalf("create exec task: %d %+v", c, task)
	}
	sent := time.Now()
	var page apitypes.LogPage
	waitFor(t, time.Minute, "first exec output line", func() string {
		h.call("GET", "/v1/workspaces/default/tasks/"+task.ID+"/logs?after=0", nil, &page)
		for _, c := range page.Chunks {
			if strings.Contains(c.Text, "first-line") {
				if page.Done || protocol.Final(page.State) {
					return "the first line only came with the end of the task (state " + page.State + ")"
				}
				return ""
			}
		}
		return fmt.Sprintf("no first line yet (state %s, %d chunks)", page.State, len(page.Chunks))
	})
	streamed := time.Since(sent)
	task = h.waitTask(t, task.ID)
	if task.State != protocol.TaskFailed || task.ExitCode == nil || *task.ExitCode != 3 {
		t.Errorf("exec task: state %s exit %v, want failed with exit code 3", task.State, task.ExitCode)
	}
	h.call("GET", "/v1/workspaces/default/tasks/"+task.ID+"/logs?after=0", nil, &page)
	var stdout, stderr strings.Builder
	for _, c := range page.Chunks {
		switch c.Stream {
		case protocol.StreamStdout:
			stdout.WriteString(c.Text)
		case protocol.StreamStderr:
			stderr.WriteString(c.Text)
		}
	}
	if stdout.String() != "first-line\n"+m.Hostname+"\n" || stderr.String() != "to-stderr\n" {
		t.Errorf("exec output: stdout %q stderr %q", stdout.String(), stderr.String())
	}
	record("%-7s tasks: systemd restart ok, exec first line after %v, result after %v", s.Provider,
		streamed.Round(time.Millisecond), time.Since(sent).Round(time.Millisecond))
}

// waitTask polls a task until it is final.
func (h *harness) waitTask(t *testing.T, id string) apitypes.Task {
	t.Helper()
	var task apitypes.Task
	waitFor(t, 2*time.Minute, "task "+id+" final", func() string {
		h.call("GET", "/v1/workspaces/default/tasks/"+id, nil, &task)
		if protocol.Final(task.State) {
			return ""
		}
		return "state " + task.State
	})
	return task
}
