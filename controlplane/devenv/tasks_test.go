package devenv_test

import (
	"bufio"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/bootstrap/sandbox"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
	"github.com/devpilot/devpilot/shared/protocol"
)

const tasksPath = "/v1/workspaces/default/tasks"

type e2eTask struct {
	ID       string                `json:"id"`
	State    string                `json:"state"`
	Reason   string                `json:"reason"`
	Error    string                `json:"error"`
	ExitCode *int                  `json:"exit_code"`
	SHA256   string                `json:"sha256"`
	Steps    []protocol.StepResult `json:"steps"`
}

// caller is what both the in-process harness and a serve process offer.
type caller func(method, path string, body, out any) int

func (h *harness) api(method, path string, body, out any) int {
	return h.call("", method, path, body, out)
}

func runTask(t *testing.T, call caller, serverID string, spec map[string]any) e2eTask {
	t.Helper()
	var v e2eTask
	if c := call("POST", servers+"/"+serverID+"/tasks", spec, &v); c != http.StatusAccepted {
		t.Fatalf("create task %v: %d %+v", spec, c, v)
	}
	return v
}

func waitTask(t *testing.T, call caller, id string, limit time.Duration, what string, cond func(e2eTask) bool) e2eTask {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		var v e2eTask
		call("GET", tasksPath+"/"+id, nil, &v)
		if cond(v) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s: not %s after %v: %+v", id, what, limit, v)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func final(v e2eTask) bool { return protocol.Final(v.State) }

func logText(t *testing.T, call caller, id string) string {
	t.Helper()
	return streamText(t, call, id, "")
}

// streamText is a task's output on one stream ("": stdout and stderr).
func streamText(t *testing.T, call caller, id, stream string) string {
	t.Helper()
	var p struct {
		Chunks []struct{ Stream, Text string } `json:"chunks"`
	}
	call("GET", tasksPath+"/"+id+"/logs", nil, &p)
	var b strings.Builder
	for _, c := range p.Chunks {
		if stream == "" && c.Stream != protocol.StreamSystem || c.Stream == stream {
			b.WriteString(c.Text)
		}
	}
	return b.String()
}

// onlineServers creates n servers on the DigitalOcean simulator and waits
// until their agents are connected.
func onlineServers(t *testing.T, h *harness, n int) []server {
	t.Helper()
	_, do, _ := h.connect("digitalocean", "do", h.env.Values["DO_SIM_TOKEN"])
	var out []server
	for i := range n {
		out = append(out, h.createServer(do.ID, "task-"+string(rune('a'+i)), "nyc3", "s-1vcpu-1gb", "debian-12", nil))
	}
	for i, s := range out {
		out[i] = h.waitServer(s.ID, 60*time.Second, "online", func(s server) bool { return online(s) && s.Agent.Connected })
	}
	return out
}

// TestTasksOnRealAgents runs every kind of task on a real devpilot-agent in
// the sandbox.
func TestTasksOnRealAgents(t *testing.T) {
	h := start(t)
	s := onlineServers(t, h, 1)[0]
	call := h.api

	t.Run("exec streams output", func(t *testing.T) {
		v := runTask(t, call, s.ID, map[string]any{"kind": "exec", "argv": []string{"sh", "-c", "echo out; sleep 0.2; echo err >&2; echo more"}})
		// Follow it live over server-sent events until the end event.
		req, _ := http.NewRequest("GET", h.env.App.URL+tasksPath+"/"+v.ID+"/logs?follow=1", nil)
		req.Header.Set("Authorization", "Bearer "+h.token)
		resp, err := h.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = resp.Body.Close() }()
		var events []string
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
				events = append(events, line)
				if line == "end" {
					break
				}
			}
		}
		if len(events) < 3 || events[len(events)-1] != "end" {
			t.Fatalf("events: %v", events)
		}
		v = waitTask(t, call, v.ID, 10*time.Second, "final", final)
		if v.State != protocol.TaskSucceeded || v.ExitCode == nil || *v.ExitCode != 0 {
			t.Fatalf("task: %+v", v)
		}
		// Each stream in order (the agent chunks stdout and stderr separately).
		if out, errs := streamText(t, call, v.ID, protocol.StreamStdout), streamText(t, call, v.ID, protocol.StreamStderr); out != "out\nmore\n" || errs != "err\n" {
			t.Fatalf("stdout %q, stderr %q", out, errs)
		}
	})

	t.Run("failing exit code", func(t *testing.T) {
		v := runTask(t, call, s.ID, map[string]any{"kind": "exec", "argv": []string{"sh", "-c", "exit 3"}})
		v = waitTask(t, call, v.ID, 10*time.Second, "final", final)
		if v.State != protocol.TaskFailed || v.ExitCode == nil || *v.ExitCode != 3 {
			t.Fatalf("task: %+v", v)
		}
	})

	t.Run("timeout kills", func(t *testing.T) {
		v := runTask(t, call, s.ID, map[string]any{"kind": "exec", "argv": []string{"sleep", "30"}, "timeout_s": 1})
		v = waitTask(t, call, v.ID, 15*time.Second, "final", final)
		if v.State != protocol.TaskTimedOut {
			t.Fatalf("task: %+v", v)
		}
	})

	t.Run("cancel", func(t *testing.T) {
		v := runTask(t, call, s.ID, map[string]any{"kind": "exec", "argv": []string{"sleep", "30"}})
		waitTask(t, call, v.ID, 10*time.Second, "running", func(v e2eTask) bool { return v.State == protocol.TaskRunning })
		if c := call("POST", tasksPath+"/"+v.ID+"/cancel", nil, nil); c != http.StatusAccepted {
			t.Fatalf("cancel: %d", c)
		}
		v = waitTask(t, call, v.ID, 15*time.Second, "final", final)
		if v.State != protocol.TaskCanceled {
			t.Fatalf("task: %+v", v)
		}
	})

	t.Run("file write", func(t *testing.T) {
		content := []byte("listen = \":8080\"\n")
		v := runTask(t, call, s.ID, map[string]any{"kind": "file", "path": "/etc/myapp/config.toml",
			"content_base64": base64.StdEncoding.EncodeToString(content), "mode": "0640"})
		v = waitTask(t, call, v.ID, 10*time.Second, "final", final)
		sum := sha256.Sum256(content)
		if v.State != protocol.TaskSucceeded || v.SHA256 != hex.EncodeToString(sum[:]) {
			t.Fatalf("task: %+v", v)
		}
		info, _ := h.env.Machines.Machine(s.InstanceID)
		p := filepath.Join(info.Root, "etc/myapp/config.toml")
		got, err := os.ReadFile(p)
		st, serr := os.Stat(p)
		if err != nil || serr != nil || string(got) != string(content) || st.Mode().Perm() != 0o640 {
			t.Fatalf("file on the server: %q %v %v", got, err, st)
		}
	})

	t.Run("deploy stops at the failing step", func(t *testing.T) {
		v := runTask(t, call, s.ID, map[string]any{"kind": "deploy", "steps": []map[string]any{
			{"name": "first", "kind": "exec", "argv": []string{"echo", "one"}},
			{"name": "broken", "kind": "exec", "argv": []string{"sh", "-c", "echo oops >&2; exit 7"}},
			{"name": "never", "kind": "exec", "argv": []string{"echo", "three"}},
		}})
		v = waitTask(t, call, v.ID, 10*time.Second, "final", final)
		if v.State != protocol.TaskFailed || len(v.Steps) != 3 {
			t.Fatalf("task: %+v", v)
		}
		if v.Steps[0].State != protocol.TaskSucceeded || v.Steps[1].State != protocol.TaskFailed || v.Steps[1].ExitCode == nil ||
			*v.Steps[1].ExitCode != 7 || v.Steps[2].State != "skipped" {
			t.Fatalf("steps: %+v", v.Steps)
		}
		if out := logText(t, call, v.ID); strings.Contains(out, "three") || !strings.Contains(out, "oops") {
			t.Fatalf("output %q", out)
		}
	})

	t.Run("connection dropped mid-task", func(t *testing.T) {
		marker := filepath.Join(t.TempDir(), "runs")
		v := runTask(t, call, s.ID, map[string]any{"kind": "exec",
			"argv": []string{"sh", "-c", "echo run >> " + marker + "; echo before; sleep 2; echo after"}})
		waitTask(t, call, v.ID, 10*time.Second, "running", func(v e2eTask) bool { return v.State == protocol.TaskRunning })
		// The hub drops the session; the agent keeps working and redials.
		h.env.App.Hub.Disconnect(s.ID, protocol.ErrSessionReplace)
		v = waitTask(t, call, v.ID, 60*time.Second, "final", final)
		if v.State != protocol.TaskSucceeded {
			t.Fatalf("task: %+v", v)
		}
		if out := logText(t, call, v.ID); out != "before\nafter\n" {
			t.Fatalf("output %q", out)
		}
		if b, _ := os.ReadFile(marker); string(b) != "run\n" {
			t.Fatalf("the command ran %d times", strings.Count(string(b), "run"))
		}
	})

	t.Run("agent killed mid-task", func(t *testing.T) {
		marker := filepath.Join(t.TempDir(), "runs")
		v := runTask(t, call, s.ID, map[string]any{"kind": "exec", "argv": []string{"sh", "-c", "echo run >> " + marker + "; exec sleep 20"}})
		waitTask(t, call, v.ID, 10*time.Second, "running", func(v e2eTask) bool { return v.State == protocol.TaskRunning })
		info, _ := h.env.Machines.Machine(s.InstanceID)
		if err := killPID(info.AgentPID, "KILL"); err != nil {
			t.Fatal(err)
		}
		v = waitTask(t, call, v.ID, 60*time.Second, "final", final)
		if v.State != protocol.TaskFailed || v.Reason != protocol.ReasonAgentRestarted {
			t.Fatalf("task: %+v", v)
		}
		if b, _ := os.ReadFile(marker); string(b) != "run\n" {
			t.Fatalf("the command ran %d times", strings.Count(string(b), "run"))
		}
	})
}

// TestRollingDeploymentOnRealAgents deploys by tag across ten agents,
// three at a time.
func TestRollingDeploymentOnRealAgents(t *testing.T) {
	h := start(t)
	ss := onlineServers(t, h, 10)
	var d struct {
		ID      string         `json:"id"`
		State   string         `json:"state"`
		Counts  map[string]int `json:"counts"`
		Targets []struct {
			ServerID, State string
			Batch           int
		} `json:"targets"`
	}
	plan := map[string]any{"steps": []map[string]any{
		{"name": "config", "kind": "file", "path": "/etc/app.conf", "content_base64": base64.StdEncoding.EncodeToString([]byte("v=2\n"))},
		{"name": "check", "kind": "exec", "argv": []string{"true"}},
	}}
	if c := h.api("POST", "/v1/workspaces/default/deployments", map[string]any{"tag": "devpilot", "max_parallel": 3, "plan": plan}, &d); c != http.StatusAccepted {
		t.Fatalf("deploy: %d %+v", c, d)
	}
	deadline := time.Now().Add(60 * time.Second)
	for d.State == "running" && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		h.api("GET", "/v1/workspaces/default/deployments/"+d.ID, nil, &d)
	}
	if d.State != "succeeded" || d.Counts["succeeded"] != 10 || len(d.Targets) != 10 || d.Targets[9].Batch != 4 {
		t.Fatalf("deployment: %+v", d)
	}
	for _, s := range ss {
		info, _ := h.env.Machines.Machine(s.InstanceID)
		if b, err := os.ReadFile(filepath.Join(info.Root, "etc/app.conf")); err != nil || string(b) != "v=2\n" {
			t.Fatalf("server %s: %q %v", s.ID, b, err)
		}
	}
}

// TestControlPlaneRestartedMidTask kills `devpilot serve` while a task runs
// and starts it again: the agent finishes the task, resends its output and
// result on the new session, and the result is recorded once.
func TestControlPlaneRestartedMidTask(t *testing.T) {
	machines := sandbox.New(sandbox.Options{Dir: filepath.Join(t.TempDir(), "machines"), Logger: zap.NewNop()})
	t.Cleanup(func() { _ = machines.Close() })
	do := dosim.New(dosim.Options{Runtime: machines, BootDelay: 10 * time.Millisecond})
	t.Cleanup(do.Close)
	sim := httptest.NewServer(do.Handler())
	t.Cleanup(sim.Close)
	token := "dop_v1_" + strings.Repeat("8", 64)
	do.AddToken(token, true)

	dataDir := t.TempDir()
	addr := freeAddr(t)
	logf, err := os.Create(filepath.Join(t.TempDir(), "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = logf.Close() }()
	p := &serveProc{t: t, dataDir: dataDir, url: "https://" + addr, log: logf, env: databaseEnv(t), args: []string{"serve",
		"--data-dir", dataDir, "--listen", addr, "--digitalocean-api-url", sim.URL, "--agent-dir", agentDir}}
	p.start()
	t.Cleanup(p.kill)
	call := caller(p.do)

	var in integration
	if c := p.do("POST", base, map[string]string{"provider": "digitalocean", "access_key": "do", "secret_key": token}, &in); c != 201 {
		t.Fatalf("connect: %d", c)
	}
	var s server
	if c := p.do("POST", servers, map[string]any{"integration_id": in.ID, "name": "restarty", "region": "nyc3",
		"size": "s-1vcpu-1gb", "image": "debian-12"}, &s); c != 202 {
		t.Fatalf("create: %d", c)
	}
	deadline := time.Now().Add(60 * time.Second)
	for s.State != "online" || !s.Agent.Connected {
		if time.Now().After(deadline) {
			t.Fatalf("server not online: %+v", s)
		}
		time.Sleep(50 * time.Millisecond)
		p.do("GET", servers+"/"+s.ID, nil, &s)
	}
	v := runTask(t, call, s.ID, map[string]any{"kind": "exec", "argv": []string{"sh", "-c", "echo before; sleep 2; echo after"}})
	waitTask(t, call, v.ID, 10*time.Second, "running", func(v e2eTask) bool { return v.State == protocol.TaskRunning })
	p.kill()
	time.Sleep(2500 * time.Millisecond) // the task ends while the control plane is down
	p.start()
	v = waitTask(t, call, v.ID, 60*time.Second, "final", final)
	if v.State != protocol.TaskSucceeded || v.ExitCode == nil || *v.ExitCode != 0 {
		t.Fatalf("task: %+v", v)
	}
	if out := logText(t, call, v.ID); out != "before\nafter\n" {
		t.Fatalf("output %q", out)
	}
}
