// Package sandbox is the simrun.Runtime of `devpilot dev` and the tests: a
// simulated cloud instance is a directory (its root file system) in which
// the instance's user-data runs as an unprivileged process, the way
// cloud-init would run it, with DEVPILOT_AGENT_ROOT_DIR pointing at that
// directory. When the user-data succeeded the runtime plays systemd for the
// agent it installed: it runs `devpilot-agent run --root-dir ROOT` and
// restarts it when it exits (Restart=always, a restart delay and a start
// limit). Each process runs in its own process group, so destroying a
// machine stops everything it started.
package sandbox

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/agent/layout"
	"github.com/devpilot/devpilot/agent/update"
	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
)

// Paths inside a machine's root.
const (
	UserDataPath  = "var/lib/cloud/instance/user-data.txt"
	OutputLogPath = "var/log/cloud-init-output.log" // user-data stdout and stderr
	AgentLogPath  = "var/log/devpilot-agent.log"    // agent stdout and stderr, plus restart notes
	AgentPath     = "usr/local/bin/devpilot-agent"
	ResultPath    = "var/lib/cloud/data/result.json"       // written when the user-data finished
	BootFinished  = "var/lib/cloud/instance/boot-finished" // written when it succeeded
	// BootIDPath holds the machine's boot id (DEVPILOT_AGENT_BOOT_ID_FILE),
	// a fresh one at every boot: first boot, power on and reboot.
	BootIDPath = "run/sandbox-boot-id"
)

// The reboot hook: the runtime starts agents with DEVPILOT_AGENT_REBOOT=exit,
// so an agent asked to reboot says goodbye and exits with ExitReboot; the
// runtime then reboots that machine (its processes stopped, a new boot id,
// the agent started again at once), never this host. Options.AgentEnv can
// override it (DEVPILOT_AGENT_REBOOT=none plays an agent without reboots).
const ExitReboot = 194 // agent/runner.ExitReboot

// Defaults for Options' zero values. The start limit is the real unit's
// (packaging/devpilot-agent.service: StartLimitBurst=10,
// StartLimitIntervalSec=300; a test holds them equal), so an agent that
// restarts a few times in a row (an update, a rollback, an update again)
// is started as systemd would start it. The restart delay is shorter
// than the unit's RestartSec=5 to keep tests quick.
const (
	DefaultRestartDelay       = time.Second
	DefaultStartLimitBurst    = 10
	DefaultStartLimitInterval = 300 * time.Second
	DefaultStopTimeout        = 5 * time.Second
)

// ErrClosed is returned by Boot after Close.
var ErrClosed = errors.New("sandbox: runtime closed")

// Options configures a Runtime.
type Options struct {
	Dir      string      // where machine roots live (Dir/<provider>-<id>); required
	Logger   *zap.Logger // nil: no logs
	AgentEnv []string    // extra KEY=value environment for the user-data and the agent

	RestartDelay       time.Duration // before restarting an agent that exited; 0: DefaultRestartDelay
	StartLimitBurst    int           // agent starts allowed within StartLimitInterval; 0: DefaultStartLimitBurst
	StartLimitInterval time.Duration // 0: DefaultStartLimitInterval
	StopTimeout        time.Duration // SIGTERM to SIGKILL on Destroy; 0: DefaultStopTimeout
}

// State is where a machine is in its life.
type State string

// Machine states.
const (
	StateUserData        State = "running-user-data"
	StateUserDataFailed  State = "user-data-failed" // nothing else started
	StateNoAgent         State = "no-agent"         // user-data succeeded but installed no agent
	StateAgentRunning    State = "agent-running"
	StateAgentRestarting State = "agent-restarting" // exited; waiting out the restart delay
	StateAgentFailed     State = "agent-failed"     // start limit hit; no more restarts
	StateStopped         State = "stopped"          // being destroyed
	StatePoweredOff      State = "powered-off"      // PowerOff: nothing runs, the root is kept
)

// Info describes a machine, for tests and diagnostics.
type Info struct {
	ID, Provider, Hostname string
	Root                   string // the machine's root directory
	State                  State
	UserDataDone           bool
	UserDataExitCode       int    // valid once UserDataDone; -1: killed by a signal
	UserDataError          string // why the user-data failed, if it did
	AgentPID               int    // 0 when no agent process is running
	AgentStarts            int    // times the agent was started
	AgentRestarts          int    // AgentStarts - 1, when positive
	AgentLastExit          string // how the last agent process ended
	Reboots                int    // reboots the agent asked for (ExitReboot)
	BootID                 string // the current boot's id (BootIDPath)
}

// Runtime runs simulated machines as sandboxed processes. Safe for
// concurrent use.
type Runtime struct {
	o   Options
	log *zap.Logger

	mu       sync.Mutex
	machines map[string]*machine
	closed   bool
	wg       sync.WaitGroup // one per machine supervisor
}

type machine struct {
	info     Info // guarded by Runtime.mu
	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{} // closed when the supervisor returned
	log      *zap.Logger
}

var (
	_ simrun.Runtime = (*Runtime)(nil)
	_ simrun.Power   = (*Runtime)(nil)
)

// New returns a Runtime keeping machine roots under o.Dir.
func New(o Options) *Runtime {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.RestartDelay <= 0 {
		o.RestartDelay = DefaultRestartDelay
	}
	if o.StartLimitBurst <= 0 {
		o.StartLimitBurst = DefaultStartLimitBurst
	}
	if o.StartLimitInterval <= 0 {
		o.StartLimitInterval = DefaultStartLimitInterval
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = DefaultStopTimeout
	}
	return &Runtime{o: o, log: o.Logger.Named("sandbox"), machines: map[string]*machine{}}
}

var safeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Boot creates the machine's root, writes its user-data there and starts
// running it; it returns once the user-data process started. ctx bounds
// only the start: the machine runs until Destroy or Close.
func (r *Runtime) Boot(ctx context.Context, m simrun.Machine) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sandbox: boot %s: %w", m.ID, err)
	}
	if !safeName.MatchString(m.Provider) || !safeName.MatchString(m.ID) {
		return fmt.Errorf("sandbox: boot: provider %q and id %q must be short names of letters, digits, '.', '_' and '-'", m.Provider, m.ID)
	}
	if r.o.Dir == "" {
		return errors.New("sandbox: boot: no sandbox directory configured")
	}
	root, err := filepath.Abs(filepath.Join(r.o.Dir, m.Provider+"-"+m.ID))
	if err != nil {
		return fmt.Errorf("sandbox: boot %s: %w", m.ID, err)
	}
	mc := &machine{
		info: Info{ID: m.ID, Provider: m.Provider, Hostname: m.Hostname, Root: root, State: StateUserData},
		stop: make(chan struct{}),
		done: make(chan struct{}),
		log:  r.log.With(zap.String("provider", m.Provider), zap.String("machine", m.ID)),
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	if _, dup := r.machines[m.ID]; dup {
		r.mu.Unlock()
		return fmt.Errorf("sandbox: boot %s: already running", m.ID)
	}
	r.machines[m.ID] = mc
	r.wg.Add(1)
	r.mu.Unlock()

	script, err := r.startUserData(mc, root, m.UserData)
	if err != nil {
		close(mc.done)
		r.wg.Done()
		r.mu.Lock()
		delete(r.machines, m.ID)
		r.mu.Unlock()
		_ = os.RemoveAll(root)
		return fmt.Errorf("sandbox: boot %s: %w", m.ID, err)
	}
	mc.log.Info("machine booted", zap.String("root", root), zap.Int("user_data_pid", script.Process.Pid))
	go r.supervise(mc, script)
	return nil
}

// startUserData lays out a fresh root and starts `sh user-data` in it.
func (r *Runtime) startUserData(mc *machine, root string, userData []byte) (*exec.Cmd, error) {
	// A root left over from an earlier run with the same id is stale.
	if err := os.RemoveAll(root); err != nil {
		return nil, err
	}
	for _, d := range []string{"tmp", "root", "var/log", "var/lib/cloud/instance", "var/lib/cloud/data", "usr/local/bin", "etc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(root, "etc/hostname"), []byte(mc.info.Hostname+"\n"), 0o644); err != nil {
		return nil, err
	}
	udPath := filepath.Join(root, UserDataPath)
	if err := os.WriteFile(udPath, userData, 0o600); err != nil {
		return nil, err
	}
	// Like cloud-init, run a script; anything else (#cloud-config, empty)
	// is reported by a tiny script instead, so it shows in the output log.
	argv := []string{"sh", udPath}
	if len(userData) < 2 || string(userData[:2]) != "#!" {
		argv = []string{"sh", "-c", `echo "devpilot-sandbox: user-data is not a shell script (#!...); the dev sandbox runs only scripts" >&2; exit 1`}
	}
	out, err := os.OpenFile(filepath.Join(root, OutputLogPath), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer func() { _ = out.Close() }() // the child has its own copy once started
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = root
	cmd.Env = r.env(root)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start user-data: %w", err)
	}
	return cmd, nil
}

func (r *Runtime) env(root string) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	env := []string{
		"DEVPILOT_AGENT_ROOT_DIR=" + root,
		"DEVPILOT_AGENT_SUPERVISOR=none",
		"HOME=" + filepath.Join(root, "root"),
		"TMPDIR=" + filepath.Join(root, "tmp"),
		"PATH=" + filepath.Join(root, "usr/local/bin") + ":" + path,
		"LANG=C.UTF-8",
		"DEVPILOT_AGENT_REBOOT=exit",
		"DEVPILOT_AGENT_BOOT_ID_FILE=" + filepath.Join(root, BootIDPath),
	}
	return append(env, r.o.AgentEnv...)
}

// supervise waits for the user-data, records how it ended and, when it
// succeeded, keeps the agent running until the machine is stopped.
func (r *Runtime) supervise(mc *machine, script *exec.Cmd) {
	defer r.wg.Done()
	defer close(mc.done)

	stopped, err := r.wait(mc, script)
	code := exitCode(err)
	r.mu.Lock()
	mc.info.UserDataDone, mc.info.UserDataExitCode = true, code
	if err != nil {
		mc.info.UserDataError = "user-data: " + err.Error()
	}
	root := mc.info.Root
	r.mu.Unlock()
	r.writeResult(root, err)
	if stopped {
		r.setState(mc, StateStopped)
		return
	}
	if err != nil {
		r.setState(mc, StateUserDataFailed)
		mc.log.Warn("user-data failed; not starting the agent", zap.Int("exit_code", code), zap.String("log", filepath.Join(root, OutputLogPath)))
		return
	}
	if err := os.WriteFile(filepath.Join(root, BootFinished), []byte(time.Now().UTC().Format(time.RFC3339Nano)+"\n"), 0o644); err != nil {
		mc.log.Warn("write boot-finished", zap.Error(err))
	}
	if _, err := os.Stat(filepath.Join(root, AgentPath)); err != nil {
		r.setState(mc, StateNoAgent)
		mc.log.Info("user-data succeeded but installed no agent", zap.String("path", filepath.Join(root, AgentPath)))
		return
	}
	mc.log.Info("user-data succeeded; starting the agent")
	r.newBoot(mc, root)
	r.runAgent(mc, root)
}

// runAgent is the systemd part: Restart=always with a delay and a start
// limit, output appended to the agent log.
func (r *Runtime) runAgent(mc *machine, root string) {
	var starts []time.Time
	logPath := filepath.Join(root, AgentLogPath)
	for {
		now := time.Now()
		for len(starts) > 0 && now.Sub(starts[0]) > r.o.StartLimitInterval {
			starts = starts[1:]
		}
		if len(starts) >= r.o.StartLimitBurst {
			note(logPath, fmt.Sprintf("devpilot-agent: start request repeated too quickly (%d starts within %s); refusing to start it again", len(starts), r.o.StartLimitInterval))
			r.setState(mc, StateAgentFailed)
			mc.log.Warn("agent keeps exiting; start limit hit", zap.Int("starts", len(starts)), zap.Duration("interval", r.o.StartLimitInterval))
			return
		}
		select {
		case <-mc.stop:
			r.setState(mc, StateStopped)
			return
		default:
		}
		starts = append(starts, now)
		exit, stopped := r.runAgentOnce(mc, root, logPath)
		if stopped {
			r.setState(mc, StateStopped)
			return
		}
		if exit == fmt.Sprintf("exit status %d", ExitReboot) {
			// The agent's reboot: not a failure, so no restart delay and
			// no start limit; the machine boots again with a new boot id.
			starts = starts[:len(starts)-1]
			r.mu.Lock()
			mc.info.Reboots++
			r.mu.Unlock()
			note(logPath, "devpilot-agent asked for a reboot; rebooting the machine")
			mc.log.Info("machine rebooting, as its agent asked")
			r.newBoot(mc, root)
			continue
		}
		r.mu.Lock()
		mc.info.AgentLastExit = exit
		mc.info.State = StateAgentRestarting
		r.mu.Unlock()
		note(logPath, fmt.Sprintf("devpilot-agent: %s; restarting in %s", exit, r.o.RestartDelay))
		mc.log.Info("agent exited; restarting", zap.String("exit", exit), zap.Duration("delay", r.o.RestartDelay))
		t := time.NewTimer(r.o.RestartDelay)
		select {
		case <-mc.stop:
			t.Stop()
			r.setState(mc, StateStopped)
			return
		case <-t.C:
		}
	}
}

// runAgentOnce starts the agent and waits for it; it reports how the
// process ended and whether the machine is being stopped.
func (r *Runtime) runAgentOnce(mc *machine, root, logPath string) (string, bool) {
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return "open log: " + err.Error(), false
	}
	r.updateGuard(mc, root, logPath, "start")
	cmd := exec.Command(filepath.Join(root, AgentPath), "run", "--root-dir", root)
	cmd.Dir = root
	cmd.Env = r.env(root)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	_ = out.Close()
	r.mu.Lock()
	mc.info.AgentStarts++
	mc.info.AgentRestarts = mc.info.AgentStarts - 1
	if err == nil {
		mc.info.AgentPID = cmd.Process.Pid
		mc.info.State = StateAgentRunning
	}
	r.mu.Unlock()
	if err != nil {
		return "failed to start: " + err.Error(), false
	}
	mc.log.Debug("agent started", zap.Int("pid", cmd.Process.Pid))
	done := make(chan struct{})
	go r.watchUpdateDeadline(mc, root, logPath, cmd.Process.Pid, done)
	stopped, err := r.wait(mc, cmd)
	close(done)
	r.mu.Lock()
	mc.info.AgentPID = 0
	r.mu.Unlock()
	if err == nil {
		return "exited with status 0", stopped
	}
	return err.Error(), stopped
}

// updateGuard runs the agent's update guard (packaging.UpdateGuard, the
// same script systemd runs as ExecStartPre=) in mode start or deadline,
// if the install put one there: the dev sandbox rolls a failed update
// back by the same mechanism as a real server.
func (r *Runtime) updateGuard(mc *machine, root, logPath string, args ...string) {
	guard := layout.New(root).UpdateGuard()
	if _, err := os.Stat(guard); err != nil {
		return
	}
	out, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return
	}
	defer func() { _ = out.Close() }()
	cmd := exec.Command("/bin/sh", append([]string{guard}, args...)...)
	cmd.Dir = root
	cmd.Env = append(r.env(root), "DEVPILOT_AGENT_ROOT="+root)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		mc.log.Warn("update guard failed", zap.Strings("args", args), zap.Error(err))
	}
}

// watchUpdateDeadline plays the transient timer a real agent arms with
// systemd-run: while the agent runs, once a pending update's deadline
// passed, the guard rolls back and the agent is stopped (SIGTERM to its
// group), so the next start runs the previous version.
func (r *Runtime) watchUpdateDeadline(mc *machine, root, logPath string, pgid int, done <-chan struct{}) {
	p := layout.New(root)
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		m, ok := update.ReadPending(p)
		if !ok || m.Deadline.IsZero() || time.Now().Before(m.Deadline) {
			continue
		}
		note(logPath, "devpilot-agent: update "+m.ID+" passed its deadline; running the update guard")
		r.updateGuard(mc, root, logPath, "deadline", m.ID)
		if _, still := update.ReadPending(p); !still {
			_ = syscall.Kill(-pgid, syscall.SIGTERM)
			return
		}
	}
}

// wait waits for cmd, killing its process group when the machine is
// stopped (SIGTERM, then SIGKILL after StopTimeout). Whatever the leader
// left behind in its group is killed once it exited, as systemd's
// KillMode=control-group would.
func (r *Runtime) wait(mc *machine, cmd *exec.Cmd) (stopped bool, err error) {
	pgid := cmd.Process.Pid
	waitc := make(chan error, 1)
	go func() { waitc <- cmd.Wait() }()
	select {
	case err := <-waitc:
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		return false, err
	case <-mc.stop:
	}
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	t := time.NewTimer(r.o.StopTimeout)
	defer t.Stop()
	select {
	case err = <-waitc:
	case <-t.C:
		mc.log.Warn("process ignored SIGTERM; killing it", zap.Int("pid", pgid))
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		err = <-waitc
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	awaitGroupGone(pgid)
	return true, err
}

// newBoot gives the machine a fresh boot id.
func (r *Runtime) newBoot(mc *machine, root string) {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	id := fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
	p := filepath.Join(root, BootIDPath)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		mc.log.Warn("write boot id", zap.Error(err))
	}
	if err := os.WriteFile(p, []byte(id+"\n"), 0o644); err != nil {
		mc.log.Warn("write boot id", zap.Error(err))
	}
	r.mu.Lock()
	mc.info.BootID = id
	r.mu.Unlock()
}

// awaitGroupGone gives a SIGKILLed process group a moment to disappear, so
// that Destroy returns when the machine's processes are gone. Zombies do
// not count (orphans are reaped by init, or, in some containers, never).
func awaitGroupGone(pgid int) {
	for range 200 {
		if !groupAlive(pgid) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// groupAlive reports whether a process group has a member that is not a
// zombie, from /proc (or kill(-pgid, 0) where there is no /proc).
func groupAlive(pgid int) bool {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return syscall.Kill(-pgid, 0) == nil
	}
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) >= 3 && f[2] == strconv.Itoa(pgid) && f[0] != "Z" && f[0] != "X" {
			return true
		}
	}
	return false
}

func (r *Runtime) setState(mc *machine, s State) {
	r.mu.Lock()
	mc.info.State = s
	r.mu.Unlock()
}

// writeResult records the user-data outcome where cloud-init keeps it.
func (r *Runtime) writeResult(root string, runErr error) {
	errs := []string{}
	if runErr != nil {
		errs = append(errs, "user-data script failed: "+runErr.Error())
	}
	b, _ := json.MarshalIndent(map[string]any{"v1": map[string]any{"datasource": "DataSourceDevpilotSandbox", "errors": errs}}, "", "  ")
	if err := os.WriteFile(filepath.Join(root, ResultPath), append(b, '\n'), 0o644); err != nil {
		r.log.Debug("write result", zap.Error(err))
	}
	msg := "user-data finished"
	if runErr != nil {
		msg = "user-data failed: " + runErr.Error()
	}
	note(filepath.Join(root, OutputLogPath), msg)
}

// note appends a timestamped line from the sandbox to a machine log.
func note(path, msg string) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return
	}
	defer func() { _ = f.Close() }()
	_, _ = fmt.Fprintf(f, "devpilot-sandbox: %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), msg)
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// Machine returns what the runtime knows about a machine.
func (r *Runtime) Machine(id string) (Info, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	mc := r.machines[id]
	if mc == nil {
		return Info{}, false
	}
	return mc.info, true
}

// Machines lists the ids of the machines the runtime runs.
func (r *Runtime) Machines() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	ids := make([]string, 0, len(r.machines))
	for id := range r.machines {
		ids = append(ids, id)
	}
	return ids
}

// Destroy stops everything the machine runs (SIGTERM to each process
// group, SIGKILL after Options.StopTimeout) and removes its root. An
// unknown id is not an error: nothing is left behind.
func (r *Runtime) Destroy(ctx context.Context, id string) error {
	r.mu.Lock()
	mc := r.machines[id]
	r.mu.Unlock()
	if mc == nil {
		return nil
	}
	mc.stopOnce.Do(func() { close(mc.stop) })
	select {
	case <-mc.done:
	case <-ctx.Done():
		return fmt.Errorf("sandbox: destroy %s: %w", id, ctx.Err())
	}
	r.mu.Lock()
	owner := r.machines[id] == mc
	if owner {
		delete(r.machines, id)
	}
	root := mc.info.Root
	r.mu.Unlock()
	if !owner {
		return nil // a concurrent Destroy removes it
	}
	if err := os.RemoveAll(root); err != nil {
		return fmt.Errorf("sandbox: destroy %s: remove root: %w", id, err)
	}
	mc.log.Info("machine destroyed")
	return nil
}

// Close destroys every machine and waits for all of them; Boot fails
// afterwards.
func (r *Runtime) Close() error {
	r.mu.Lock()
	r.closed = true
	ids := make([]string, 0, len(r.machines))
	ms := make([]*machine, 0, len(r.machines))
	for id, mc := range r.machines {
		ids = append(ids, id)
		ms = append(ms, mc)
	}
	r.mu.Unlock()
	for _, mc := range ms { // stop all at once, then wait for each
		mc.stopOnce.Do(func() { close(mc.stop) })
	}
	var errs []error
	for _, id := range ids {
		if err := r.Destroy(context.Background(), id); err != nil {
			errs = append(errs, err)
		}
	}
	r.wg.Wait()
	return errors.Join(errs...)
}
