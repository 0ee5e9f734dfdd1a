package tasks_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/devpilot/devpilot/agent/agenttest"
	"github.com/devpilot/devpilot/agent/tasks"
	"github.com/devpilot/devpilot/shared/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// msg is one message the runner sent.
type msg struct {
	typ    string
	log    protocol.TaskLog
	result protocol.TaskResult
}

// session is a fake session: it runs Serve and records what it sends.
type fakeSession struct {
	mu     sync.Mutex
	msgs   []msg
	cancel context.CancelFunc
	done   chan error
}

func serve(t *testing.T, r *tasks.Runner) *fakeSession {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &fakeSession{cancel: cancel, done: make(chan error, 1)}
	go func() {
		s.done <- r.Serve(ctx, func(typ string, v any) error {
			// Through the wire encoding, as the session does.
			b, err := protocol.Encode(typ, v)
			if err != nil {
				t.Errorf("encode %s: %v", typ, err)
				return err
			}
			env, _ := protocol.Decode(b)
			m := msg{typ: typ}
			switch typ {
			case protocol.TypeTaskLog:
				_ = protocol.DecodeData(env, &m.log)
			case protocol.TypeTaskResult:
				_ = protocol.DecodeData(env, &m.result)
			}
			s.mu.Lock()
			s.msgs = append(s.msgs, m)
			s.mu.Unlock()
			return nil
		})
	}()
	t.Cleanup(s.stop)
	return s
}

// stop ends the session and waits for Serve.
func (s *fakeSession) stop() {
	if s.cancel != nil {
		s.cancel()
		<-s.done //nolint:errcheck // Serve's error after cancel is expected
		s.cancel = nil
	}
}

func (s *fakeSession) all() []msg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]msg(nil), s.msgs...)
}

func (s *fakeSession) results(id string) []protocol.TaskResult {
	var out []protocol.TaskResult
	for _, m := range s.all() {
		if m.typ == protocol.TypeTaskResult && m.result.TaskID == id {
			out = append(out, m.result)
		}
	}
	return out
}

func (s *fakeSession) logs(id string) []protocol.TaskLog {
	var out []protocol.TaskLog
	for _, m := range s.all() {
		if m.typ == protocol.TypeTaskLog && m.log.TaskID == id {
			out = append(out, m.log)
		}
	}
	return out
}

// final waits for id's final result.
func (s *fakeSession) final(t *testing.T, id string) protocol.TaskResult {
	t.Helper()
	var res protocol.TaskResult
	agenttest.WaitFor(t, "final result of "+id, func() bool {
		for _, r := range s.results(id) {
			if protocol.Final(r.State) {
				res = r
				return true
			}
		}
		return false
	})
	return res
}

func (s *fakeSession) output(id, stream string) string {
	var b bytes.Buffer
	for _, l := range s.logs(id) {
		if l.Stream == stream {
			b.Write(l.Data)
		}
	}
	return b.String()
}

type env struct {
	state string
	root  string
}

func newRunner(t *testing.T, e env, tune func(*tasks.Options)) *tasks.Runner {
	t.Helper()
	o := tasks.Options{StateDir: e.state, Root: e.root, Log: zaptest.NewLogger(t),
		KillGrace: 2 * time.Second, FlushInterval: 5 * time.Millisecond}
	if tune != nil {
		tune(&o)
	}
	r, err := tasks.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r.Shutdown(ctx)
	})
	return r
}

func newEnv(t *testing.T) env {
	return env{state: t.TempDir(), root: t.TempDir()}
}

func deliver(t *testing.T, r *tasks.Runner, typ string, v any) {
	t.Helper()
	b, err := protocol.Encode(typ, v)
	if err != nil {
		t.Fatal(err)
	}
	e, err := protocol.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	r.HandleMessage(e)
}

func execTask(id string, argv ...string) protocol.Task {
	return protocol.Task{ID: id, Kind: protocol.KindExec, Deadline: time.Now().Add(time.Minute),
		Exec: &protocol.ExecSpec{Argv: argv}}
}

func sh(id, script string) protocol.Task { return execTask(id, "/bin/sh", "-c", script) }

func TestExecStreamsOutputInOrder(t *testing.T) {
	t.Parallel()
	r := newRunner(t, newEnv(t), nil)
	s := serve(t, r)
	deliver(t, r, protocol.TypeTask, sh("t-out", `for i in 1 2 3; do echo line$i; sleep 0.02; done; echo oops >&2; exit 0`))
	res := s.final(t, "t-out")
	if res.State != protocol.TaskSucceeded || res.ExitCode == nil || *res.ExitCode != 0 || res.FinishedAt == nil {
		t.Fatalf("result = %+v, want succeeded with exit 0", res)
	}
	if got := s.output("t-out", protocol.StreamStdout); got != "line1\nline2\nline3\n" {
		t.Errorf("stdout = %q", got)
	}
	if got := s.output("t-out", protocol.StreamStderr); got != "oops\n" {
		t.Errorf("stderr = %q", got)
	}
	// running result, then chunks seq 1..n, then the final result.
	msgs := s.all()
	if msgs[0].typ != protocol.TypeTaskResult || msgs[0].result.State != protocol.TaskRunning {
		t.Errorf("first message = %+v, want the running result", msgs[0])
	}
	last := msgs[len(msgs)-1]
	if last.typ != protocol.TypeTaskResult || !protocol.Final(last.result.State) {
		t.Errorf("last message = %+v, want the final result", last)
	}
	logs := s.logs("t-out")
	for i, l := range logs {
		if l.Seq != int64(i+1) {
			t.Fatalf("chunk %d has seq %d; seqs must run from 1 without gaps", i, l.Seq)
		}
	}
	if res.LastLogSeq != int64(len(logs)) {
		t.Errorf("last_log_seq = %d, want %d", res.LastLogSeq, len(logs))
	}
}

func TestExecExitCodes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, script string
		state        string
		code         int
	}{
		{"zero", "exit 0", protocol.TaskSucceeded, 0},
		{"three", "echo bad >&2; exit 3", protocol.TaskFailed, 3},
		{"signal", "kill -KILL $$", protocol.TaskFailed, 128 + 9},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newRunner(t, newEnv(t), nil)
			s := serve(t, r)
			deliver(t, r, protocol.TypeTask, sh("t", tc.script))
			res := s.final(t, "t")
			if res.State != tc.state || res.ExitCode == nil || *res.ExitCode != tc.code {
				t.Errorf("result = %s exit %v (%s), want %s exit %d", res.State, res.ExitCode, res.Error, tc.state, tc.code)
			}
		})
	}
}

func TestExecStartFailure(t *testing.T) {
	t.Parallel()
	r := newRunner(t, newEnv(t), nil)
	s := serve(t, r)
	deliver(t, r, protocol.TypeTask, execTask("t", "/no/such/program"))
	res := s.final(t, "t")
	if res.State != protocol.TaskFailed || !strings.Contains(res.Error, "/no/such/program") {
		t.Errorf("result = %+v, want failed naming the program", res)
	}
	deliver(t, r, protocol.TypeTask, protocol.Task{ID: "t2", Kind: protocol.KindExec})
	if res := s.final(t, "t2"); res.State != protocol.TaskFailed || res.Reason != protocol.ReasonInvalid {
		t.Errorf("exec without argv = %+v, want failed invalid", res)
	}
}

// A timeout_s whose nanoseconds overflow (18446744074 s × 10⁹ wraps to
// 290 ms) is refused before anything runs, not turned into a short timeout.
func TestExecRefusesTimeoutOutOfRange(t *testing.T) {
	t.Parallel()
	for _, timeout := range []int{18446744074, protocol.MaxTimeoutS + 1, 1<<63 - 1} {
		t.Run(strconv.Itoa(timeout), func(t *testing.T) {
			t.Parallel()
			r := newRunner(t, newEnv(t), nil)
			s := serve(t, r)
			task := sh("t", "echo ran")
			task.Exec.TimeoutS = timeout
			deliver(t, r, protocol.TypeTask, task)
			res := s.final(t, "t")
			if res.State != protocol.TaskFailed || res.Reason != protocol.ReasonInvalid || !strings.Contains(res.Error, "timeout_s") {
				t.Errorf("result = %s/%s (%s), want failed/invalid naming timeout_s", res.State, res.Reason, res.Error)
			}
			if out := s.output("t", protocol.StreamStdout); out != "" {
				t.Errorf("the program ran: stdout %q", out)
			}
		})
	}
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// The shell starts a background sleep in its process group and waits; on
// timeout both must be gone.
func TestTimeoutKillsProcessGroup(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		edit   func(*protocol.Task)
		reason string
	}{
		{"deadline", func(task *protocol.Task) { task.Deadline = time.Now().Add(300 * time.Millisecond) }, protocol.ReasonDeadline},
		{"timeout_s", func(task *protocol.Task) { task.Exec.TimeoutS = 1 }, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			r := newRunner(t, e, nil)
			s := serve(t, r)
			pidFile := filepath.Join(e.root, "child.pid")
			task := sh("t", fmt.Sprintf(`sleep 300 & echo $! > %s; wait`, pidFile))
			tc.edit(&task)
			deliver(t, r, protocol.TypeTask, task)
			res := s.final(t, "t")
			if res.State != protocol.TaskTimedOut || res.Reason != tc.reason {
				t.Fatalf("result = %s/%s (%s), want timed_out/%q", res.State, res.Reason, res.Error, tc.reason)
			}
			b, err := os.ReadFile(pidFile)
			if err != nil {
				t.Fatal(err)
			}
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			agenttest.WaitFor(t, "background sleep gone", func() bool { return !alive(pid) })
			if !strings.Contains(s.output("t", protocol.StreamSystem), "SIGTERM") {
				t.Errorf("system stream %q does not say the group was stopped", s.output("t", protocol.StreamSystem))
			}
		})
	}
}

// With a 30 s kill grace, only the SIGTERM to the group can make this end
// before WaitFor gives up.
func TestCancelStopsRunningTask(t *testing.T) {
	t.Parallel()
	r := newRunner(t, newEnv(t), func(o *tasks.Options) { o.KillGrace = 30 * time.Second })
	s := serve(t, r)
	deliver(t, r, protocol.TypeTask, sh("t", "echo started; sleep 300"))
	agenttest.WaitFor(t, "output", func() bool { return s.output("t", protocol.StreamStdout) == "started\n" })
	at := time.Now()
	deliver(t, r, protocol.TypeCancel, protocol.Cancel{TaskID: "t"})
	res := s.final(t, "t")
	if res.State != protocol.TaskCanceled || res.Reason != protocol.ReasonCanceled {
		t.Errorf("result = %+v, want canceled", res)
	}
	t.Logf("canceled after %s", time.Since(at))

	// A cancel for an id never received: recorded canceled, a late
	// delivery does not run it.
	deliver(t, r, protocol.TypeCancel, protocol.Cancel{TaskID: "early"})
	if res := s.final(t, "early"); res.State != protocol.TaskCanceled {
		t.Errorf("early cancel = %+v", res)
	}
	n := r.Executions()
	deliver(t, r, protocol.TypeTask, sh("early", "exit 0"))
	agenttest.WaitFor(t, "result resent", func() bool { return len(s.results("early")) == 2 })
	if r.Executions() != n {
		t.Error("a canceled id ran when delivered later")
	}
}

func TestOutputCapAndChunkSize(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		bytes   int
		max     int64
		want    int
		capped  bool
		minLogs int
	}{
		{"capped", 5000, 1000, 1000, true, 1},
		{"chunked", 200 << 10, 0, 200 << 10, false, 4},
		{"default cap", 1<<20 + 300<<10, 0, 1 << 20, true, 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := newRunner(t, newEnv(t), nil)
			s := serve(t, r)
			task := sh("t", fmt.Sprintf("head -c %d /dev/zero | tr '\\0' x", tc.bytes))
			task.Exec.MaxOutputBytes = tc.max
			deliver(t, r, protocol.TypeTask, task)
			res := s.final(t, "t")
			if res.State != protocol.TaskSucceeded {
				t.Fatalf("result = %+v", res)
			}
			out := s.output("t", protocol.StreamStdout)
			if len(out) != tc.want || strings.Trim(out, "x") != "" {
				t.Errorf("stdout has %d bytes, want %d", len(out), tc.want)
			}
			logs := s.logs("t")
			for _, l := range logs {
				if len(l.Data) > protocol.MaxLogChunkBytes {
					t.Errorf("chunk %d has %d bytes, over %d", l.Seq, len(l.Data), protocol.MaxLogChunkBytes)
				}
			}
			if len(logs) < tc.minLogs {
				t.Errorf("%d chunks, want at least %d", len(logs), tc.minLogs)
			}
			note := strings.Contains(s.output("t", protocol.StreamSystem), "output capped")
			if note != tc.capped || (res.Reason == protocol.ReasonOutputCapped) != tc.capped {
				t.Errorf("capped note %v reason %q, want capped=%v", note, res.Reason, tc.capped)
			}
		})
	}
}

func TestExecAsUser(t *testing.T) {
	t.Parallel()
	r := newRunner(t, newEnv(t), nil)
	s := serve(t, r)
	task := execTask("t", "/bin/sh", "-c", "id -u; echo $HOME $GREETING $DEVPILOT_TASK_ID")
	task.Exec.User = "nobody"
	task.Exec.Env = map[string]string{"GREETING": "hi"}
	deliver(t, r, protocol.TypeTask, task)
	res := s.final(t, "t")
	if os.Geteuid() != 0 {
		if res.State != protocol.TaskFailed || res.Reason != protocol.ReasonUnsupported {
			t.Errorf("as user without root = %+v, want failed unsupported", res)
		}
		return
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	want := u.Uid + "\n" + u.HomeDir + " hi t\n"
	if res.State != protocol.TaskSucceeded || s.output("t", protocol.StreamStdout) != want {
		t.Errorf("result %s (%s), stdout %q, want %q", res.State, res.Error, s.output("t", protocol.StreamStdout), want)
	}
}

func fileTask(id, path, content, mode string) protocol.Task {
	return protocol.Task{ID: id, Kind: protocol.KindFile, File: &protocol.FileSpec{Path: path,
		ContentBase64: base64.StdEncoding.EncodeToString([]byte(content)), Mode: mode}}
}

func TestFileWriteAtomic(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := newRunner(t, e, nil)
	s := serve(t, r)
	target := filepath.Join(e.root, "etc/app/app.conf")
	if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(target, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	task := fileTask("f1", "/etc/app/app.conf", "key = value\n", "0640")
	if os.Geteuid() == 0 {
		task.File.Owner, task.File.Group = "nobody", "root"
	}
	deliver(t, r, protocol.TypeTask, task)
	res := s.final(t, "f1")
	sum := sha256.Sum256([]byte("key = value\n"))
	if res.State != protocol.TaskSucceeded || res.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("result = %+v, want succeeded with the content's sha256", res)
	}
	b, _ := os.ReadFile(target)
	st, _ := os.Stat(target)
	if string(b) != "key = value\n" || st.Mode().Perm() != 0o640 {
		t.Errorf("file %q mode %v", b, st.Mode())
	}
	if os.Geteuid() == 0 {
		u, _ := user.Lookup("nobody")
		if uid := st.Sys().(*syscall.Stat_t).Uid; strconv.Itoa(int(uid)) != u.Uid {
			t.Errorf("owner uid %d, want nobody %s", uid, u.Uid)
		}
	}
	names, _ := os.ReadDir(filepath.Dir(target))
	if len(names) != 1 {
		t.Errorf("dir has %d entries, want only the file (no temp files left)", len(names))
	}

	// Default mode, new parent dirs, and refusals.
	deliver(t, r, protocol.TypeTask, fileTask("f2", "/srv/new/dir/x.txt", "x", ""))
	if res := s.final(t, "f2"); res.State != protocol.TaskSucceeded {
		t.Fatalf("f2 = %+v", res)
	}
	if st, err := os.Stat(filepath.Join(e.root, "srv/new/dir/x.txt")); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("default mode: %v %v", st, err)
	}
	for id, task := range map[string]protocol.Task{
		"rel":  fileTask("rel", "etc/x", "x", ""),
		"mode": fileTask("mode", "/etc/x", "x", "rw-r--r--"),
		"b64":  {ID: "b64", Kind: protocol.KindFile, File: &protocol.FileSpec{Path: "/etc/x", ContentBase64: "!!"}},
	} {
		deliver(t, r, protocol.TypeTask, task)
		if res := s.final(t, id); res.State != protocol.TaskFailed || res.Reason != protocol.ReasonInvalid {
			t.Errorf("%s = %+v, want failed invalid", id, res)
		}
	}
	if _, err := os.Stat(filepath.Join(e.root, "etc/x")); err == nil {
		t.Error("a refused file task wrote its file")
	}
}

// Setuid, setgid and sticky bits in a file task's mode land on the file,
// also when an owner is set (chown clears setuid and setgid).
func TestFileModeSpecialBits(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := newRunner(t, e, nil)
	s := serve(t, r)
	for i, tc := range []struct {
		mode string
		want os.FileMode
	}{
		{"4755", 0o755 | os.ModeSetuid},
		{"2750", 0o750 | os.ModeSetgid},
		{"1644", 0o644 | os.ModeSticky},
		{"6711", 0o711 | os.ModeSetuid | os.ModeSetgid},
	} {
		id := "special" + strconv.Itoa(i)
		task := fileTask(id, "/usr/local/bin/"+id, "#!/bin/sh\n", tc.mode)
		if os.Geteuid() == 0 {
			task.File.Owner, task.File.Group = "nobody", "root"
		}
		deliver(t, r, protocol.TypeTask, task)
		if res := s.final(t, id); res.State != protocol.TaskSucceeded {
			t.Fatalf("mode %s: %+v", tc.mode, res)
		}
		st, err := os.Stat(filepath.Join(e.root, "usr/local/bin", id))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode() != tc.want {
			t.Errorf("mode %s: file mode %v, want %v", tc.mode, st.Mode(), tc.want)
		}
	}
}

func TestDeployStopsAtFailedStep(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := newRunner(t, e, nil)
	s := serve(t, r)
	marker := filepath.Join(e.root, "third-ran")
	task := protocol.Task{ID: "d", Kind: protocol.KindDeploy, Deploy: &protocol.DeploySpec{Steps: []protocol.DeployStep{
		{Name: "config", Kind: protocol.KindFile, File: fileTask("", "/etc/app.conf", "a=1\n", "").File},
		{Name: "migrate", Kind: protocol.KindExec, Exec: &protocol.ExecSpec{Dir: "/etc", // below the root, like file paths
			Argv: []string{"/bin/sh", "-c", "cat app.conf; echo migrating; exit 4"}}},
		{Name: "restart", Kind: protocol.KindExec, Exec: &protocol.ExecSpec{Argv: []string{"/bin/sh", "-c", "touch " + marker}}},
	}}}
	deliver(t, r, protocol.TypeTask, task)
	res := s.final(t, "d")
	if res.State != protocol.TaskFailed || res.ExitCode == nil || *res.ExitCode != 4 || !strings.Contains(res.Error, "migrate") {
		t.Fatalf("result = %+v, want failed with exit 4 naming the step", res)
	}
	var states []string
	for _, st := range res.Steps {
		states = append(states, st.State)
	}
	if strings.Join(states, ",") != "succeeded,failed,skipped" || res.Steps[0].SHA256 == "" {
		t.Errorf("steps = %+v", res.Steps)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the step after the failure ran")
	}
	// Output is kept per step and stream; how a stream is cut into chunks
	// depends on the pipe's timing, so the chunks are joined first.
	steps := map[int]map[string]string{}
	for _, l := range s.logs("d") {
		if steps[l.Step] == nil {
			steps[l.Step] = map[string]string{}
		}
		steps[l.Step][l.Stream] += string(l.Data)
	}
	if !strings.Contains(steps[1]["system"], "step 1/3 (config)") || steps[2]["stdout"] != "a=1\nmigrating\n" ||
		!strings.Contains(steps[2]["system"], "step 2/3 (migrate): failed") || len(steps[3]) != 0 {
		t.Errorf("logs by step = %v", steps)
	}
}

func TestRedeliveryDoesNotRunAgain(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := newRunner(t, e, nil)
	s := serve(t, r)
	marker := filepath.Join(e.root, "runs")
	task := sh("once", "echo run >> "+marker+"; echo hello")
	deliver(t, r, protocol.TypeTask, task)
	first := s.final(t, "once")
	deliver(t, r, protocol.TypeTask, task) // finished, not acked: result and logs again
	agenttest.WaitFor(t, "result resent", func() bool { return len(s.results("once")) == 3 })
	if got := s.output("once", protocol.StreamStdout); got != "hello\nhello\n" {
		t.Errorf("stdout over both sends %q, want the chunk resent once", got)
	}
	deliver(t, r, protocol.TypeTaskAck, protocol.TaskAck{TaskID: "once", LogSeq: first.LastLogSeq, Final: true})
	deliver(t, r, protocol.TypeTask, task) // acked: its result again, still not run
	agenttest.WaitFor(t, "result resent after ack", func() bool { return len(s.results("once")) == 4 })
	last := s.results("once")[3]
	if last.State != protocol.TaskSucceeded || last.LastLogSeq != first.LastLogSeq {
		t.Errorf("resent result = %+v, want the stored one", last)
	}
	s.stop()
	b, _ := os.ReadFile(marker)
	if string(b) != "run\n" || r.Executions() != 1 {
		t.Errorf("marker %q, executions %d: the task ran more than once", b, r.Executions())
	}
}

func TestRedeliveryAfterRestart(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	marker := filepath.Join(e.root, "runs")
	task := sh("once", "echo run >> "+marker)
	r1 := newRunner(t, e, nil)
	s1 := serve(t, r1)
	deliver(t, r1, protocol.TypeTask, task)
	s1.final(t, "once")
	s1.stop()
	r1.Shutdown(context.Background())

	r2 := newRunner(t, e, nil)
	s2 := serve(t, r2) // resends the unacked result without being asked
	if res := s2.final(t, "once"); res.State != protocol.TaskSucceeded {
		t.Errorf("resent = %+v", res)
	}
	deliver(t, r2, protocol.TypeTask, task)
	agenttest.WaitFor(t, "result resent", func() bool { return len(s2.results("once")) == 2 })
	if b, _ := os.ReadFile(marker); string(b) != "run\n" || r2.Executions() != 0 {
		t.Errorf("marker %q, executions %d after restart: ran again", b, r2.Executions())
	}
}

// A journal that says started, with two chunks and a torn third in the
// spool: the next process reports it failed (agent_restarted), sends the
// two chunks, and never runs it.
func TestStartedButUnfinishedIsReportedNotRerun(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	dir := tasks.StateDirTasks(e.state)
	_ = os.MkdirAll(filepath.Join(dir, tasks.SpoolDir), 0o700)
	started := time.Now().Add(-time.Minute).UTC().Truncate(time.Second)
	line, _ := json.Marshal(map[string]any{"ev": "started", "id": "crashed", "at": started, "kind": "exec"})
	_ = os.WriteFile(filepath.Join(dir, tasks.JournalFile), append(line, '\n'), 0o600)
	var spool bytes.Buffer
	for i := 1; i <= 2; i++ {
		b, _ := json.Marshal(protocol.TaskLog{TaskID: "crashed", Seq: int64(i), Stream: "stdout", Data: []byte(fmt.Sprintf("part%d\n", i))})
		spool.Write(append(b, '\n'))
	}
	spool.WriteString(`{"task_id":"crashed","seq":3,"str`)
	sum := sha256.Sum256([]byte("crashed"))
	_ = os.WriteFile(filepath.Join(dir, tasks.SpoolDir, hex.EncodeToString(sum[:16])+".log"), spool.Bytes(), 0o600)

	r := newRunner(t, e, nil)
	s := serve(t, r)
	res := s.final(t, "crashed")
	if res.State != protocol.TaskFailed || res.Reason != protocol.ReasonAgentRestarted || res.LastLogSeq != 2 || !res.StartedAt.Equal(started) {
		t.Errorf("result = %+v, want failed agent_restarted with last_log_seq 2", res)
	}
	if got := s.output("crashed", protocol.StreamStdout); got != "part1\npart2\n" {
		t.Errorf("logs resent %q", got)
	}
	deliver(t, r, protocol.TypeTask, sh("crashed", "exit 0"))
	agenttest.WaitFor(t, "result resent", func() bool { return len(s.results("crashed")) == 2 })
	if r.Executions() != 0 {
		t.Error("an interrupted task ran again")
	}
}

func TestResentEverySessionUntilAcked(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := newRunner(t, e, nil)
	s1 := serve(t, r)
	deliver(t, r, protocol.TypeTask, sh("t", "echo one; sleep 0.05; echo two; sleep 0.05; echo three"))
	res := s1.final(t, "t")
	s1.stop()
	if res.LastLogSeq < 2 {
		t.Fatalf("want several chunks, got last seq %d", res.LastLogSeq)
	}

	s2 := serve(t, r)
	s2.final(t, "t")
	if n := len(s2.logs("t")); int64(n) != res.LastLogSeq {
		t.Errorf("second session resent %d chunks, want %d", n, res.LastLogSeq)
	}
	deliver(t, r, protocol.TypeTaskAck, protocol.TaskAck{TaskID: "t", LogSeq: 1})
	s2.stop()

	s3 := serve(t, r)
	s3.final(t, "t")
	logs := s3.logs("t")
	if len(logs) == 0 || logs[0].Seq != 2 || int64(len(logs)) != res.LastLogSeq-1 {
		t.Errorf("after ack of seq 1, resent %+v", logs)
	}
	deliver(t, r, protocol.TypeTaskAck, protocol.TaskAck{TaskID: "t", LogSeq: res.LastLogSeq, Final: true})
	s3.stop()

	s4 := serve(t, r)
	deliver(t, r, protocol.TypeTask, sh("marker", "exit 0")) // something to wait for
	s4.final(t, "marker")
	if len(s4.results("t")) != 0 || len(s4.logs("t")) != 0 {
		t.Errorf("acked task sent again: %+v", s4.all())
	}
	spools, _ := os.ReadDir(filepath.Join(tasks.StateDirTasks(e.state), tasks.SpoolDir))
	if len(spools) != 1 { // only marker's
		t.Errorf("%d spool files, want the acked one deleted", len(spools))
	}
}

func TestSystemdUnsupported(t *testing.T) {
	t.Parallel()
	task := protocol.Task{ID: "u", Kind: protocol.KindSystemd, Systemd: &protocol.SystemdSpec{Unit: "nginx", Action: "restart"}}
	t.Run("root dir", func(t *testing.T) {
		t.Parallel()
		r := newRunner(t, newEnv(t), nil)
		s := serve(t, r)
		deliver(t, r, protocol.TypeTask, task)
		res := s.final(t, "u")
		if res.State != protocol.TaskFailed || res.Reason != protocol.ReasonUnsupported || !strings.Contains(res.Error, "root-dir") {
			t.Errorf("result = %+v, want failed unsupported", res)
		}
	})
	t.Run("no systemd", func(t *testing.T) {
		t.Parallel()
		if _, err := os.Stat("/run/systemd/system"); err == nil {
			t.Skip("this host runs systemd")
		}
		r := newRunner(t, newEnv(t), func(o *tasks.Options) { o.Systemd = tasks.DBusSystemd })
		s := serve(t, r)
		st := task
		st.Systemd = &protocol.SystemdSpec{Unit: "nginx", Action: "status"}
		deliver(t, r, protocol.TypeTask, st)
		res := s.final(t, "u")
		if res.State != protocol.TaskFailed || res.Reason != protocol.ReasonUnsupported {
			t.Errorf("result = %+v, want failed unsupported", res)
		}
	})
	t.Run("bad action", func(t *testing.T) {
		t.Parallel()
		r := newRunner(t, newEnv(t), nil)
		s := serve(t, r)
		bad := task
		bad.Systemd = &protocol.SystemdSpec{Unit: "nginx", Action: "explode"}
		deliver(t, r, protocol.TypeTask, bad)
		if res := s.final(t, "u"); res.Reason != protocol.ReasonInvalid {
			t.Errorf("result = %+v, want invalid", res)
		}
	})
}

// fakeUnits records actions; its state follows them.
type fakeUnits struct {
	mu      sync.Mutex
	actions []string
}

func (f *fakeUnits) Act(_ context.Context, unit, action string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.actions = append(f.actions, action+" "+unit)
	if unit == "broken.service" && action == "start" {
		return fmt.Errorf("job failed")
	}
	return nil
}
func (f *fakeUnits) Status(_ context.Context, unit string) (protocol.UnitStatus, error) {
	return protocol.UnitStatus{Name: unit, LoadState: "loaded", ActiveState: "active", SubState: "running", UnitFile: "enabled"}, nil
}
func (f *fakeUnits) Close() {}

func TestSystemdActionReportsUnitStatus(t *testing.T) {
	t.Parallel()
	f := &fakeUnits{}
	r := newRunner(t, newEnv(t), func(o *tasks.Options) {
		o.Systemd = func(context.Context) (tasks.UnitManager, error) { return f, nil }
	})
	s := serve(t, r)
	deliver(t, r, protocol.TypeTask, protocol.Task{ID: "ok", Kind: protocol.KindSystemd, Systemd: &protocol.SystemdSpec{Unit: "nginx", Action: "restart"}})
	res := s.final(t, "ok")
	if res.State != protocol.TaskSucceeded || res.Unit == nil || res.Unit.Name != "nginx.service" || res.Unit.ActiveState != "active" {
		t.Errorf("result = %+v", res)
	}
	deliver(t, r, protocol.TypeTask, protocol.Task{ID: "bad", Kind: protocol.KindSystemd, Systemd: &protocol.SystemdSpec{Unit: "broken.service", Action: "start"}})
	if res := s.final(t, "bad"); res.State != protocol.TaskFailed || res.Unit == nil {
		t.Errorf("failed start = %+v, want failed with the unit's status", res)
	}
}

// Shutdown gives running tasks until its context ends, then kills them and
// records them failed (agent_restarted); queued ones are dropped unjournaled.
func TestShutdownKillsAndRecords(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r, err := tasks.New(tasks.Options{StateDir: e.state, Root: e.root, Log: zaptest.NewLogger(t),
		KillGrace: time.Second, FlushInterval: 5 * time.Millisecond, MaxConcurrent: 1})
	if err != nil {
		t.Fatal(err)
	}
	s := serve(t, r)
	deliver(t, r, protocol.TypeTask, sh("long", "sleep 300"))
	deliver(t, r, protocol.TypeTask, sh("queued", "exit 0"))
	agenttest.WaitFor(t, "running", func() bool { return len(s.results("long")) == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	r.Shutdown(ctx)
	s.stop()

	r2 := newRunner(t, e, nil)
	s2 := serve(t, r2)
	res := s2.final(t, "long")
	if res.State != protocol.TaskFailed || res.Reason != protocol.ReasonAgentRestarted {
		t.Errorf("long = %+v, want failed agent_restarted", res)
	}
	deliver(t, r2, protocol.TypeTask, sh("queued", "exit 0"))
	if res := s2.final(t, "queued"); res.State != protocol.TaskSucceeded {
		t.Errorf("queued task delivered again after restart = %+v, want it run now", res)
	}
}

func TestJournalPrunesOldEntries(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	now := time.Now()
	clock := func() time.Time { return now }
	r1 := newRunner(t, e, func(o *tasks.Options) { o.Now = clock })
	s := serve(t, r1)
	deliver(t, r1, protocol.TypeTask, sh("old", "exit 0"))
	res := s.final(t, "old")
	deliver(t, r1, protocol.TypeTaskAck, protocol.TaskAck{TaskID: "old", LogSeq: res.LastLogSeq, Final: true})
	s.stop()
	r1.Shutdown(context.Background())

	for _, tc := range []struct {
		age  time.Duration
		runs int
	}{{time.Hour, 0}, {8 * 24 * time.Hour, 1}} {
		later := now.Add(tc.age)
		r := newRunner(t, e, func(o *tasks.Options) { o.Now = func() time.Time { return later } })
		s := serve(t, r)
		deliver(t, r, protocol.TypeTask, sh("old", "exit 0"))
		s.final(t, "old")
		if r.Executions() != tc.runs {
			t.Errorf("after %s: %d executions, want %d", tc.age, r.Executions(), tc.runs)
		}
		s.stop()
		r.Shutdown(context.Background())
		if tc.runs == 1 {
			break
		}
	}
}
