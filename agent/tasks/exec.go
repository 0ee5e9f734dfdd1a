package tasks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/devpilot/devpilot/shared/protocol"
)

// runExec runs argv in its own process group, in Dir below the root dir
// (default: the root dir; as a user without dir: the user's home, else /).
// argv itself is not remapped. On timeout, deadline, cancel
// or shutdown the whole group gets SIGTERM, then SIGKILL after KillGrace.
// When the program exits by itself, processes it left in the background
// keep running; their pipes are closed a moment later.
func (r *Runner) runExec(ctx context.Context, t *task, step int, s *protocol.ExecSpec) outcome {
	if s == nil || len(s.Argv) == 0 || s.Argv[0] == "" {
		return failed(protocol.ReasonInvalid, "exec task without argv")
	}
	if s.TimeoutS < 0 || s.MaxOutputBytes < 0 {
		return failed(protocol.ReasonInvalid, "exec timeout_s and max_output_bytes must not be negative")
	}
	// Bounded before it is multiplied into a Duration, which would wrap.
	if int64(s.TimeoutS) > protocol.MaxTimeoutS {
		return failed(protocol.ReasonInvalid, "exec timeout_s %d is out of range (at most %d)", s.TimeoutS, protocol.MaxTimeoutS)
	}
	cmd := exec.Command(s.Argv[0], s.Argv[1:]...)
	// The working dir is below the root dir, like file task paths (the
	// same on a real server), so a deploy's file and exec steps agree.
	cmd.Dir = r.HostPath(s.Dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	env := baseEnv()
	if s.User != "" {
		if os.Geteuid() != 0 {
			return failed(protocol.ReasonUnsupported, "exec as user %q needs an agent running as root", s.User)
		}
		u, err := user.Lookup(s.User)
		if err != nil {
			return failed(protocol.ReasonInvalid, "exec as user %q: %v", s.User, err)
		}
		cred, err := credential(u)
		if err != nil {
			return failed(protocol.ReasonInvalid, "exec as user %q: %v", s.User, err)
		}
		cmd.SysProcAttr.Credential = cred
		env["HOME"], env["USER"], env["LOGNAME"] = u.HomeDir, u.Username, u.Username
		if s.Dir == "" {
			// The user's home, else "/": the root dir may be closed to it.
			cmd.Dir = "/"
			if st, err := os.Stat(u.HomeDir); err == nil && st.IsDir() {
				cmd.Dir = u.HomeDir
			}
		}
	}
	env["DEVPILOT_TASK_ID"] = t.id
	for k, v := range s.Env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return failed(protocol.ReasonInvalid, "exec env name %q is invalid", k)
		}
		env[k] = v
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	if s.TimeoutS > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, time.Duration(s.TimeoutS)*time.Second, errTimeout)
		defer cancel()
	}
	maxOut := s.MaxOutputBytes
	if maxOut == 0 {
		maxOut = DefaultMaxOutputBytes
	}
	out := newOutput(r, t, step, maxOut)
	cmd.Stdout = out.stream(protocol.StreamStdout)
	cmd.Stderr = out.stream(protocol.StreamStderr)
	// Background children that keep stdout open do not hold up the result.
	cmd.WaitDelay = r.o.KillGrace

	if err := cmd.Start(); err != nil {
		out.close()
		return failed("", "start %s: %v", s.Argv[0], err)
	}
	pgid := cmd.Process.Pid
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	var werr error
	killed := false
	select {
	case werr = <-waited:
	case <-ctx.Done():
		killed = true
		r.note(t, step, "stopping process group %d (SIGTERM): %v", pgid, context.Cause(ctx))
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		grace := time.NewTimer(r.o.KillGrace)
		select {
		case werr = <-waited:
		case <-grace.C:
			r.note(t, step, "process group %d still running after %s: SIGKILL", pgid, r.o.KillGrace)
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			werr = <-waited
		}
		grace.Stop()
		_ = syscall.Kill(-pgid, syscall.SIGKILL) // members that ignored SIGTERM
	}
	capped := out.close()
	if errors.Is(werr, exec.ErrWaitDelay) && cmd.ProcessState != nil && cmd.ProcessState.Success() {
		werr = nil // it exited 0; a background child kept the pipes open
	}

	var o outcome
	code, sigErr := exitCode(cmd.ProcessState)
	o.exit = &code
	switch {
	case killed:
		o, _ = ended(ctx)
		o.exit = &code
	case werr == nil:
		o.state = protocol.TaskSucceeded
	default:
		o.state = protocol.TaskFailed
		if sigErr != "" {
			o.err = sigErr
		} else {
			var ee *exec.ExitError
			if errors.As(werr, &ee) {
				o.err = fmt.Sprintf("exit status %d", code)
			} else {
				o.err = werr.Error()
			}
		}
	}
	if capped && o.reason == "" {
		o.reason = protocol.ReasonOutputCapped
	}
	return o
}

// exitCode is the exit status, or 128+signal (and a message) if a signal
// ended the process.
func exitCode(ps *os.ProcessState) (int, string) {
	if ps == nil {
		return -1, ""
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), "killed by signal " + ws.Signal().String()
	}
	return ps.ExitCode(), ""
}

func credential(u *user.User) (*syscall.Credential, error) {
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("uid %q: %w", u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("gid %q: %w", u.Gid, err)
	}
	c := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	if ids, err := u.GroupIds(); err == nil {
		for _, g := range ids {
			if n, err := strconv.ParseUint(g, 10, 32); err == nil {
				c.Groups = append(c.Groups, uint32(n))
			}
		}
	}
	return c, nil
}

// baseEnv is the agent's environment without its own DEVPILOT_AGENT_*
// settings, with a PATH if it has none.
func baseEnv() map[string]string {
	env := map[string]string{}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "DEVPILOT_AGENT_") || k == "NOTIFY_SOCKET" || k == "WATCHDOG_USEC" || k == "WATCHDOG_PID" {
			continue
		}
		env[k] = v
	}
	if env["PATH"] == "" {
		env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	return env
}

// output turns a process's writes into log chunks: small writes are
// coalesced for FlushInterval, a chunk is at most MaxLogChunkBytes, and
// everything beyond max bytes is dropped with a note on the system stream.
type output struct {
	r    *Runner
	t    *task
	step int
	max  int64

	mu      sync.Mutex
	written int64
	capped  bool
	kind    string // stream of buf
	buf     []byte
	stopped chan struct{}
	done    chan struct{}
}

func newOutput(r *Runner, t *task, step int, max int64) *output {
	o := &output{r: r, t: t, step: step, max: max, stopped: make(chan struct{}), done: make(chan struct{})}
	go o.flusher()
	return o
}

func (o *output) flusher() {
	defer close(o.done)
	tick := time.NewTicker(o.r.o.FlushInterval)
	defer tick.Stop()
	for {
		select {
		case <-o.stopped:
			return
		case <-tick.C:
			o.mu.Lock()
			o.flushLocked()
			o.mu.Unlock()
		}
	}
}

type streamWriter struct {
	o    *output
	kind string
}

func (w streamWriter) Write(p []byte) (int, error) {
	w.o.write(w.kind, p)
	return len(p), nil
}

func (o *output) stream(kind string) streamWriter { return streamWriter{o, kind} }

func (o *output) write(kind string, p []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.capped {
		return
	}
	if room := o.max - o.written; int64(len(p)) > room {
		p = p[:room]
		o.capped = true
	}
	o.written += int64(len(p))
	if o.kind != kind {
		o.flushLocked()
		o.kind = kind
	}
	o.buf = append(o.buf, p...)
	for len(o.buf) >= protocol.MaxLogChunkBytes {
		o.r.appendLog(o.t, o.kind, o.step, o.buf[:protocol.MaxLogChunkBytes])
		o.buf = append([]byte(nil), o.buf[protocol.MaxLogChunkBytes:]...)
	}
	if o.capped {
		o.flushLocked()
		o.r.note(o.t, o.step, "output capped at %d bytes; the rest was dropped", o.max)
	}
}

func (o *output) flushLocked() {
	if len(o.buf) > 0 {
		o.r.appendLog(o.t, o.kind, o.step, o.buf)
		o.buf = nil
	}
}

// close flushes and stops the flusher; it reports whether output was capped.
func (o *output) close() bool {
	close(o.stopped)
	<-o.done
	o.mu.Lock()
	defer o.mu.Unlock()
	o.flushLocked()
	return o.capped
}
