package tasks_test

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/shared/protocol"
)

func exec(argv ...string) map[string]any { return map[string]any{"kind": "exec", "argv": argv} }

// A connected agent gets the task at once; output is stored once per seq
// whatever order and repetition it arrives in; the first final result wins.
func TestDispatchLogsAndResults(t *testing.T) {
	t.Parallel()
	c := startCP(t)
	a := c.server("web-1")
	a.connect()
	defer a.disconnect()

	v := c.createTask(a.id, map[string]any{"kind": "exec", "argv": []string{"echo", "hi"}, "env": map[string]string{"TOKEN": "s3cret"}})
	if c.replicas > 1 && v.State == protocol.TaskQueued {
		// Created on a control plane that does not hold the agent's
		// session: handed to the one that does, which sends it.
		v = c.waitTask(v.ID, "sent by the session's holder", func(v taskView) bool { return v.State != protocol.TaskQueued })
	}
	if v.State != protocol.TaskSent || v.Attempts != 1 || v.SentAt == nil {
		t.Fatalf("created task: %+v", v)
	}
	if v.Spec.Exec == nil || v.Spec.Exec.Env["TOKEN"] == "s3cret" {
		t.Fatalf("the API shows env values: %+v", v.Spec.Exec)
	}
	a.wait("the task", func() bool { return a.taskCount(v.ID) == 1 })
	got := a.received()[0]
	if got.Kind != "exec" || !slices.Equal(got.Exec.Argv, []string{"echo", "hi"}) || got.Exec.Env["TOKEN"] != "s3cret" || got.Deadline.IsZero() {
		t.Fatalf("agent got %+v", got)
	}

	started := time.Now().UTC().Truncate(time.Second)
	a.send(protocol.TypeTaskResult, protocol.TaskResult{TaskID: v.ID, State: protocol.TaskRunning, StartedAt: started})
	chunk := func(seq int64, s string) {
		a.send(protocol.TypeTaskLog, protocol.TaskLog{TaskID: v.ID, Seq: seq, Stream: protocol.StreamStdout, Data: []byte(s)})
	}
	chunk(1, "one\n")
	chunk(2, "two\n")
	chunk(1, "ONE AGAIN\n") // a resend: ignored
	chunk(4, "four\n")      // ahead of a gap
	a.wait("ack of 2", func() bool { ack, _ := a.lastAck(v.ID); return ack.LogSeq == 2 })
	chunk(3, "three\n")
	a.wait("ack of 4", func() bool { ack, _ := a.lastAck(v.ID); return ack.LogSeq == 4 })

	fin := time.Now().UTC()
	a.send(protocol.TypeTaskResult, protocol.TaskResult{TaskID: v.ID, State: protocol.TaskSucceeded, ExitCode: intp(0),
		StartedAt: started, FinishedAt: &fin, LastLogSeq: 4})
	a.wait("final ack", func() bool { ack, _ := a.lastAck(v.ID); return ack.Final && ack.LogSeq == 4 })
	// A duplicate, different result (e.g. resent after a reconnect) changes nothing but is acked.
	n := a.ackCount()
	a.send(protocol.TypeTaskResult, protocol.TaskResult{TaskID: v.ID, State: protocol.TaskFailed, ExitCode: intp(3), LastLogSeq: 4})
	a.wait("second final ack", func() bool { return len(a.acks) > n && a.acks[len(a.acks)-1].Final })

	v = c.task(v.ID)
	if v.State != protocol.TaskSucceeded || v.ExitCode == nil || *v.ExitCode != 0 || v.StartedAt == nil || !v.StartedAt.Equal(started) ||
		v.FinishedAt == nil || v.Log.Seq != 4 {
		t.Fatalf("finished task: %+v", v)
	}
	var page struct {
		Chunks []struct {
			Seq  int64  `json:"seq"`
			Text string `json:"text"`
		} `json:"chunks"`
		Done bool  `json:"done"`
		Next int64 `json:"next"`
	}
	c.call("", "GET", wsBase+"/tasks/"+v.ID+"/logs", nil, &page)
	var text []string
	for _, ch := range page.Chunks {
		text = append(text, ch.Text)
	}
	if strings.Join(text, "") != "one\ntwo\nthree\nfour\n" || !page.Done || page.Next != 4 {
		t.Fatalf("logs: %+v", page)
	}
	c.call("", "GET", wsBase+"/tasks/"+v.ID+"/logs?after=2&limit=1", nil, &page)
	if len(page.Chunks) != 1 || page.Chunks[0].Text != "three\n" || page.Done {
		t.Fatalf("logs after 2: %+v", page)
	}
}

// sseEvent is one server-sent event.
type sseEvent struct {
	id, typ, data string
}

// follow reads events from ?follow=1 until n events or the end event;
// lastID (if not "") is sent as Last-Event-ID.
func follow(t *testing.T, c *cp, taskID, lastID string, n int) []sseEvent {
	t.Helper()
	req, _ := http.NewRequest("GET", c.url+wsBase+"/tasks/"+taskID+"/logs?follow=1", nil)
	req.Header.Set("Authorization", "Bearer "+c.token)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.client.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	var out []sseEvent
	var ev sseEvent
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			if ev.typ != "" {
				out = append(out, ev)
				if ev.typ == "end" || len(out) == n {
					return out
				}
			}
			ev = sseEvent{}
		case strings.HasPrefix(line, "id: "):
			ev.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			ev.typ = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			ev.data = strings.TrimPrefix(line, "data: ")
		}
	}
	t.Fatalf("stream ended after %d events: %v", len(out), sc.Err())
	return nil
}

// Followers get output as it arrives and can resume where they left off.
func TestFollowStreamsAndResumes(t *testing.T) {
	t.Parallel()
	c := startCP(t)
	a := c.server("web-1")
	a.connect()
	defer a.disconnect()
	v := c.createTask(a.id, exec("make", "deploy"))
	a.wait("the task", func() bool { return a.taskCount(v.ID) == 1 })

	var wg sync.WaitGroup
	var first []sseEvent
	wg.Add(1)
	go func() {
		defer wg.Done()
		first = follow(t, c, v.ID, "", 2)
	}()
	// The follower is waiting on the task's notification channel: output
	// sent now must reach it.
	time.Sleep(20 * time.Millisecond)
	for i, s := range []string{"building\n", "pushing\n", "restarting\n"} {
		a.send(protocol.TypeTaskLog, protocol.TaskLog{TaskID: v.ID, Seq: int64(i + 1), Stream: protocol.StreamStdout, Data: []byte(s)})
	}
	wg.Wait()
	if len(first) != 2 || first[0].id != "1" || first[1].id != "2" || !strings.Contains(first[1].data, `"text":"pushing\n"`) {
		t.Fatalf("first follower: %+v", first)
	}
	done := make(chan []sseEvent)
	go func() { done <- follow(t, c, v.ID, first[1].id, 0) }()
	a.send(protocol.TypeTaskResult, protocol.TaskResult{TaskID: v.ID, State: protocol.TaskFailed, ExitCode: intp(2), LastLogSeq: 3})
	rest := <-done
	if len(rest) != 2 || rest[0].id != "3" || !strings.Contains(rest[0].data, "restarting") || rest[1].typ != "end" {
		t.Fatalf("resumed follower: %+v", rest)
	}
	var end taskView
	if err := json.Unmarshal([]byte(rest[1].data), &end); err != nil || end.State != protocol.TaskFailed || *end.ExitCode != 2 {
		t.Fatalf("end event: %s", rest[1].data)
	}
	// ?after works the same, and a finished task's stream ends at once.
	ev := follow(t, c, v.ID, "3", 0)
	if len(ev) != 1 || ev[0].typ != "end" {
		t.Fatalf("follow of a finished task: %+v", ev)
	}
}

// A task sent to an agent that drops before confirming is sent again on
// its next session, with the same id; once running, it is not resent.
func TestResendAfterReconnect(t *testing.T) {
	t.Parallel()
	c := startCP(t)
	a := c.server("web-1")
	a.connect()
	v := c.createTask(a.id, exec("true"))
	a.wait("the task", func() bool { return a.taskCount(v.ID) == 1 })
	a.disconnect()
	a.connect()
	defer a.disconnect()
	a.wait("the task again", func() bool { return a.taskCount(v.ID) == 2 })
	c.waitTask(v.ID, "2 attempts", func(v taskView) bool { return v.Attempts == 2 && v.State == protocol.TaskSent })

	a.send(protocol.TypeTaskResult, protocol.TaskResult{TaskID: v.ID, State: protocol.TaskRunning, StartedAt: time.Now()})
	c.waitTask(v.ID, "running", func(v taskView) bool { return v.State == protocol.TaskRunning })
	a.disconnect()
	// A task created meanwhile is resent on the next session too, after
	// any older unconfirmed one (oldest first): once it arrives, the
	// running task would have been resent already if it were.
	w := c.createTask(a.id, exec("true"))
	a.connect()
	a.wait("the new task", func() bool { return a.taskCount(w.ID) >= 1 })
	if n := a.count(v.ID); n != 2 {
		t.Fatalf("running task was sent %d times", n)
	}
}

// A task for an offline server waits, queued, and is delivered when its
// agent connects.
func TestOfflineServerGetsTaskWhenItConnects(t *testing.T) {
	t.Parallel()
	c := startCP(t)
	a := c.server("web-1")
	v := c.createTask(a.id, exec("uptime"))
	if v.State != protocol.TaskQueued || v.Attempts != 0 {
		t.Fatalf("task for an offline server: %+v", v)
	}
	a.onTask = runs(nil)
	a.connect()
	defer a.disconnect()
	v = c.waitTask(v.ID, "success", func(v taskView) bool { return v.State == protocol.TaskSucceeded })
	if v.Attempts != 1 || v.SentAt == nil {
		t.Fatalf("delivered task: %+v", v)
	}
}

func TestCancel(t *testing.T) {
	t.Parallel()
	c := startCP(t)
	a := c.server("web-1")

	// Never sent: canceled at once.
	q := c.createTask(a.id, exec("sleep", "600"))
	var v taskView
	if code := c.call("", "POST", wsBase+"/tasks/"+q.ID+"/cancel", nil, &v); code != http.StatusAccepted || v.State != protocol.TaskCanceled {
		t.Fatalf("cancel queued: %d %+v", code, v)
	}
	var e apiError
	if code := c.call("", "POST", wsBase+"/tasks/"+q.ID+"/cancel", nil, &e); code != http.StatusConflict {
		t.Fatalf("cancel finished: %d %+v", code, e)
	}

	// Running: the agent is asked and reports canceled.
	a.onCancel = func(a *fakeAgent, c protocol.Cancel) {
		a.send(protocol.TypeTaskResult, protocol.TaskResult{TaskID: c.TaskID, State: protocol.TaskCanceled, Reason: protocol.ReasonCanceled})
	}
	a.connect()
	defer a.disconnect()
	r := c.createTask(a.id, exec("sleep", "600"))
	a.wait("the task", func() bool { return a.taskCount(r.ID) == 1 })
	if a.count(q.ID) > 0 {
		t.Fatal("the canceled queued task was delivered")
	}
	a.send(protocol.TypeTaskResult, protocol.TaskResult{TaskID: r.ID, State: protocol.TaskRunning, StartedAt: time.Now()})
	c.waitTask(r.ID, "running", func(v taskView) bool { return v.State == protocol.TaskRunning })
	if code := c.call("", "POST", wsBase+"/tasks/"+r.ID+"/cancel", nil, &v); code != http.StatusAccepted || v.CancelRequestedAt == nil {
		t.Fatalf("cancel running: %d %+v", code, v)
	}
	v = c.waitTask(r.ID, "canceled", func(v taskView) bool { return v.State == protocol.TaskCanceled })
	if v.Reason != protocol.ReasonCanceled || v.FinishedAt == nil {
		t.Fatalf("canceled task: %+v", v)
	}
	var audit struct {
		Entries []struct{ Action, Target string } `json:"entries"`
	}
	c.call("", "GET", wsBase+"/audit", nil, &audit)
	var actions []string
	for _, e := range audit.Entries {
		if e.Target == r.ID || e.Target == q.ID {
			actions = append(actions, e.Action)
		}
	}
	if strings.Join(actions, ",") != "task.cancel,task.create,task.cancel,task.create" {
		t.Fatalf("audit: %v", actions)
	}
}

// A task whose deadline passes without a final result is timed out by the
// control plane, and the agent is told to stop it.
func TestDeadlineTimesOut(t *testing.T) {
	t.Parallel()
	c := startCP(t)
	a := c.server("web-1")
	a.connect()
	defer a.disconnect()
	v := c.createTask(a.id, map[string]any{"kind": "exec", "argv": []string{"sleep", "600"}, "deadline_s": 1})
	a.wait("the task", func() bool { return a.taskCount(v.ID) == 1 })
	a.send(protocol.TypeTaskResult, protocol.TaskResult{TaskID: v.ID, State: protocol.TaskRunning, StartedAt: time.Now()})
	v = c.waitTask(v.ID, "timed out", func(v taskView) bool { return protocol.Final(v.State) })
	if v.State != protocol.TaskTimedOut || v.Reason != protocol.ReasonDeadline {
		t.Fatalf("overdue task: %+v", v)
	}
	a.wait("cancel", func() bool { return slices.Contains(a.cancels, v.ID) })
	// The agent's late report does not change the recorded result.
	a.send(protocol.TypeTaskResult, protocol.TaskResult{TaskID: v.ID, State: protocol.TaskCanceled})
	a.wait("final ack", func() bool { ack, _ := a.lastAck(v.ID); return ack.Final })
	if v = c.task(v.ID); v.State != protocol.TaskTimedOut {
		t.Fatalf("after the late report: %+v", v)
	}

	// An offline server's task is not delivered after its deadline.
	b := c.server("web-2")
	w := c.createTask(b.id, map[string]any{"kind": "exec", "argv": []string{"true"}, "deadline_s": 1})
	c.waitTask(w.ID, "timed out", func(v taskView) bool { return v.State == protocol.TaskTimedOut })
	b.connect()
	defer b.disconnect()
	x := c.createTask(b.id, exec("true"))
	b.wait("the new task", func() bool { return b.taskCount(x.ID) == 1 })
	if b.count(w.ID) != 0 {
		t.Fatal("an overdue task was delivered")
	}
}

type deploymentView struct {
	ID      string         `json:"id"`
	State   string         `json:"state"`
	Error   string         `json:"error"`
	Counts  map[string]int `json:"counts"`
	Targets []struct {
		ServerID string `json:"server_id"`
		Batch    int    `json:"batch"`
		TaskID   string `json:"task_id"`
		State    string `json:"state"`
	} `json:"targets"`
}

// A deployment by tag rolls in batches of max_parallel and stops after the
// first batch with a failure: later servers are skipped and never get the
// task.
func TestDeploymentByTagStopsAfterFailedBatch(t *testing.T) {
	t.Parallel()
	c := startCP(t)
	var (
		mu    sync.Mutex
		order []string // server ids in the order their tasks arrived
	)
	var agents []*fakeAgent
	for i := range 5 {
		a := c.server("web-" + string(rune('1'+i)))
		agents = append(agents, a)
	}
	failing := agents[3].id
	for _, a := range agents {
		a.onTask = func(a *fakeAgent, t protocol.Task) {
			mu.Lock()
			order = append(order, a.id)
			mu.Unlock()
			runs(func(a *fakeAgent, _ protocol.Task) bool { return a.id == failing })(a, t)
		}
		a.connect()
		defer a.disconnect()
	}
	plan := map[string]any{"steps": []map[string]any{
		{"name": "config", "kind": "file", "path": "/etc/app.conf", "content_base64": "a2V5PXZhbHVlCg==", "mode": "0640"},
		{"name": "restart", "kind": "systemd", "unit": "app.service", "action": "restart"},
	}}
	var d deploymentView
	var e apiError
	var raw json.RawMessage
	code := c.call("", "POST", wsBase+"/deployments", map[string]any{"tag": "devpilot", "max_parallel": 2, "plan": plan}, &raw)
	if code != http.StatusAccepted {
		_ = json.Unmarshal(raw, &e)
		t.Fatalf("deploy: %d %+v", code, e)
	}
	_ = json.Unmarshal(raw, &d)
	if len(d.Targets) != 5 || d.Targets[0].Batch != 1 || d.Targets[2].Batch != 2 || d.Targets[4].Batch != 3 {
		t.Fatalf("deployment: %+v", d)
	}
	deadline := time.Now().Add(time.Minute)
	for d.State == "running" && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		c.call("", "GET", wsBase+"/deployments/"+d.ID, nil, &d)
	}
	if d.State != "failed" || d.Counts["succeeded"] != 3 || d.Counts["failed"] != 1 || d.Counts["skipped"] != 1 {
		t.Fatalf("deployment: %+v", d)
	}
	if d.Targets[3].ServerID != failing || d.Targets[4].State != "skipped" || d.Targets[4].TaskID != "" ||
		!strings.Contains(d.Error, "batch 2 of 3") {
		t.Fatalf("targets: %+v", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(order) != 4 || slices.Contains(order, agents[4].id) {
		t.Fatalf("tasks went to %v", order)
	}
	// Batch 1 (servers 0 and 1) before batch 2 (servers 2 and 3).
	first := order[:2]
	if !slices.Contains(first, agents[0].id) || !slices.Contains(first, agents[1].id) {
		t.Fatalf("batch order: %v", order)
	}
	got := agents[0].received()[0]
	if got.Kind != protocol.KindDeploy || len(got.Deploy.Steps) != 2 || got.Deploy.Steps[0].File.Mode != "0640" {
		t.Fatalf("deploy task: %+v", got)
	}
	var list struct{ Tasks []taskView }
	c.call("", "GET", wsBase+"/tasks?deployment="+d.ID, nil, &list)
	if len(list.Tasks) != 4 {
		t.Fatalf("deployment tasks: %d", len(list.Tasks))
	}
	// Explicit servers work too, and unknown tags are refused.
	code = c.call("", "POST", wsBase+"/deployments", map[string]any{"servers": []string{agents[4].id}, "plan": plan}, &d)
	if code != http.StatusAccepted || len(d.Targets) != 1 {
		t.Fatalf("deploy to a list: %d %+v", code, d)
	}
	code = c.call("", "POST", wsBase+"/deployments", map[string]any{"tag": "nope", "plan": plan}, &e)
	if code != http.StatusBadRequest || e.Error.Hint == "" {
		t.Fatalf("unknown tag: %d %+v", code, e)
	}
}

// Every batch's tasks finish at one instant, so with several control
// planes (make test-postgres-active: the agents spread over three) each
// holder sees its batch done at once and they race to start the next:
// still one task per server, batches in order, and it succeeds.
func TestDeploymentAdvancedFromEveryControlPlaneAtOnce(t *testing.T) {
	t.Parallel()
	c := startCP(t)
	const servers, parallel = 12, 4
	var (
		mu      sync.Mutex
		arrived []string        // server ids in the order their tasks arrived
		release []chan struct{} // closed when a batch's last task arrived
		wg      sync.WaitGroup
	)
	for range servers / parallel {
		release = append(release, make(chan struct{}))
	}
	var agents []*fakeAgent
	var ids []string
	for i := range servers {
		a := c.server(fmt.Sprintf("app-%02d", i))
		a.onTask = func(a *fakeAgent, task protocol.Task) {
			mu.Lock()
			arrived = append(arrived, a.id)
			b := (len(arrived) - 1) / parallel
			if len(arrived)%parallel == 0 && b < len(release) {
				close(release[b])
			}
			mu.Unlock()
			if b >= len(release) {
				t.Errorf("task %s for %s: more tasks than servers", task.ID, a.id)
				return
			}
			wg.Add(1)
			go func() { // answer beside the reader, once the whole batch is in
				defer wg.Done()
				select {
				case <-release[b]:
					runs(nil)(a, task)
				case <-time.After(time.Minute):
					t.Errorf("batch %d: its tasks did not all arrive", b+1)
				}
			}()
		}
		a.connect()
		defer a.disconnect()
		agents = append(agents, a)
		ids = append(ids, a.id)
	}
	plan := map[string]any{"steps": []map[string]any{{"name": "restart", "kind": "systemd", "unit": "app.service", "action": "restart"}}}
	var d deploymentView
	if code := c.call("", "POST", wsBase+"/deployments", map[string]any{"servers": ids, "max_parallel": parallel, "plan": plan}, &d); code != http.StatusAccepted {
		t.Fatalf("deploy: %d %+v", code, d)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for d.State == "running" && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		c.call("", "GET", wsBase+"/deployments/"+d.ID, nil, &d)
	}
	wg.Wait()
	if d.State != "succeeded" || d.Counts["succeeded"] != servers {
		t.Fatalf("deployment after %d control plane(s) advanced it: %+v", c.replicas, d)
	}
	for _, a := range agents {
		if got := a.received(); len(got) != 1 {
			t.Errorf("server %s got %d tasks, want 1", a.id, len(got))
		}
	}
	mu.Lock()
	defer mu.Unlock()
	batchOf := map[string]int{}
	for _, tg := range d.Targets {
		batchOf[tg.ServerID] = tg.Batch
	}
	for i, id := range arrived {
		if want := i/parallel + 1; batchOf[id] != want {
			t.Fatalf("task %d went to %s of batch %d while batch %d ran: %v", i+1, id, batchOf[id], want, arrived)
		}
	}
	var list struct{ Tasks []taskView }
	c.call("", "GET", wsBase+"/tasks?deployment="+d.ID, nil, &list)
	if len(list.Tasks) != servers {
		t.Fatalf("deployment tasks: %d, want %d", len(list.Tasks), servers)
	}
}

func TestViewerReadsButCannotChange(t *testing.T) {
	t.Parallel()
	c := startCP(t)
	a := c.server("web-1")
	v := c.createTask(a.id, exec("true"))
	var tok struct {
		Token string `json:"token"`
	}
	if code := c.call("", "POST", wsBase+"/tokens", map[string]string{"name": "ro", "role": "viewer"}, &tok); code != http.StatusCreated {
		t.Fatalf("create viewer: %d", code)
	}
	for _, r := range []struct{ method, path string }{
		{"POST", wsBase + "/servers/" + a.id + "/tasks"},
		{"POST", wsBase + "/tasks/" + v.ID + "/cancel"},
		{"POST", wsBase + "/deployments"},
	} {
		var e apiError
		if code := c.call(tok.Token, r.method, r.path, exec("true"), &e); code != http.StatusForbidden || e.Error.Code != "forbidden" {
			t.Errorf("%s %s as viewer: %d %+v", r.method, r.path, code, e)
		}
	}
	for _, p := range []string{"/tasks/" + v.ID, "/tasks", "/tasks/" + v.ID + "/logs", "/deployments"} {
		if code := c.call(tok.Token, "GET", wsBase+p, nil, nil); code != http.StatusOK {
			t.Errorf("GET %s as viewer: %d", p, code)
		}
	}
	if v = c.task(v.ID); v.State != protocol.TaskQueued {
		t.Fatalf("task changed: %+v", v)
	}
}

func TestValidation(t *testing.T) {
	t.Parallel()
	c := startCP(t)
	a := c.server("web-1")
	for _, tc := range []struct {
		name string
		spec map[string]any
		want string
	}{
		{"no kind", map[string]any{"argv": []string{"x"}}, "kind is required"},
		{"unknown kind", map[string]any{"kind": "shell"}, "unknown task kind"},
		{"empty argv", map[string]any{"kind": "exec", "argv": []string{}}, "argv must not be empty"},
		{"relative dir", map[string]any{"kind": "exec", "argv": []string{"ls"}, "dir": "srv"}, "not an absolute path"},
		{"bad env name", map[string]any{"kind": "exec", "argv": []string{"ls"}, "env": map[string]string{"1X": "y"}}, "environment variable name"},
		{"mixed fields", map[string]any{"kind": "exec", "argv": []string{"ls"}, "unit": "x.service"}, "systemd or file fields"},
		{"systemd action", map[string]any{"kind": "systemd", "unit": "nginx.service", "action": "explode"}, "unknown systemd action"},
		{"systemd unit", map[string]any{"kind": "systemd", "unit": "a b", "action": "start"}, "invalid systemd unit"},
		{"relative path", map[string]any{"kind": "file", "path": "etc/x", "content_base64": ""}, "not an absolute file path"},
		{"dotdot path", map[string]any{"kind": "file", "path": "/etc/../x"}, "not an absolute file path"},
		{"mode", map[string]any{"kind": "file", "path": "/etc/x", "mode": "rw-r--r--"}, "not an octal file mode"},
		{"mode 9", map[string]any{"kind": "file", "path": "/etc/x", "mode": "0648"}, "not an octal file mode"},
		{"base64", map[string]any{"kind": "file", "path": "/etc/x", "content_base64": "!!"}, "not valid base64"},
		{"big file", map[string]any{"kind": "file", "path": "/etc/x", "content_base64": strings.Repeat("AAAA", 200<<10)}, "at most"},
		{"deadline", map[string]any{"kind": "exec", "argv": []string{"ls"}, "deadline_s": -1}, "deadline_s"},
		// seconds × 10⁹ would overflow: a deadline before creation.
		{"deadline overflow", map[string]any{"kind": "exec", "argv": []string{"ls"}, "deadline_s": int64(9223372036854775807)},
			"deadline_s 9223372036854775807 is out of range: give 1 to 604800"},
		{"deadline too long", map[string]any{"kind": "exec", "argv": []string{"ls"}, "deadline_s": 604801}, "give 1 to 604800"},
		// 18446744074 s × 10⁹ wraps to 290 ms.
		{"timeout overflow", map[string]any{"kind": "exec", "argv": []string{"ls"}, "timeout_s": int64(18446744074)},
			"timeout_s 18446744074 is out of range: give 1 to 604800"},
		{"step timeout overflow", map[string]any{"kind": "deploy", "steps": []map[string]any{
			{"kind": "exec", "argv": []string{"ls"}, "timeout_s": int64(9223372036854775807)}}}, "steps[0]: timeout_s 9223372036854775807 is out of range"},
		{"deploy no steps", map[string]any{"kind": "deploy"}, "steps"},
		{"nested deploy", map[string]any{"kind": "deploy", "steps": []map[string]any{{"kind": "deploy"}}}, "not allowed in a step"},
		{"deploy step", map[string]any{"kind": "deploy", "steps": []map[string]any{{"kind": "exec"}}}, "steps[0]: argv must not be empty"},
		{"unknown field", map[string]any{"kind": "exec", "argv": []string{"ls"}, "shell": true}, "unknown field"},
		{"firewall in a task", map[string]any{"kind": "deploy", "steps": []map[string]any{{"kind": "firewall", "ports": []int{22}}}},
			"only allowed in a deployment's plan"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e apiError
			code := c.call("", "POST", wsBase+"/servers/"+a.id+"/tasks", tc.spec, &e)
			if code != http.StatusBadRequest || e.Error.Code != "validation_failed" || !strings.Contains(e.Error.Message, tc.want) {
				t.Fatalf("%d %+v, want a validation error with %q", code, e, tc.want)
			}
		})
	}
	var de apiError
	plan := map[string]any{"steps": []map[string]any{{"kind": "exec", "argv": []string{"true"}}}}
	code := c.call("", "POST", wsBase+"/deployments", map[string]any{"servers": []string{a.id}, "plan": plan,
		"deadline_s": int64(9223372036854775807)}, &de)
	if code != http.StatusBadRequest || de.Error.Code != "validation_failed" || !strings.Contains(de.Error.Message, "give 1 to 604800") {
		t.Fatalf("deployment deadline_s overflow: %d %+v", code, de)
	}
	// Firewall steps are validated at the door like the ports action.
	for _, fc := range []struct {
		step map[string]any
		want string
	}{
		{map[string]any{"kind": "firewall", "ports": []int{22, 22}}, "plan.steps[0]: port 22 is listed twice"},
		{map[string]any{"kind": "firewall", "ports": []int{0}}, "plan.steps[0]: port 0 is out of range"},
		{map[string]any{"kind": "firewall"}, "ports needs 1 to 50 ports"},
		{map[string]any{"kind": "firewal", "ports": []int{22}}, "unknown kind"},
	} {
		var fe apiError
		plan := map[string]any{"steps": []map[string]any{fc.step}}
		code := c.call("", "POST", wsBase+"/deployments", map[string]any{"servers": []string{a.id}, "plan": plan}, &fe)
		if code != http.StatusBadRequest || fe.Error.Code != "validation_failed" || !strings.Contains(fe.Error.Message, fc.want) {
			t.Errorf("firewall step %v: %d %+v, want %q", fc.step, code, fe, fc.want)
		}
		if fc.want == "unknown kind" && !strings.Contains(fe.Error.Hint, "exec, systemd, file, firewall") {
			t.Errorf("unknown kind's hint %q does not name the kinds", fe.Error.Hint)
		}
	}
	var e apiError
	if code := c.call("", "POST", wsBase+"/servers/srv_nope/tasks", exec("ls"), &e); code != http.StatusNotFound {
		t.Fatalf("unknown server: %d %+v", code, e)
	}
	var list struct{ Tasks []taskView }
	c.call("", "GET", wsBase+"/tasks", nil, &list)
	if len(list.Tasks) != 0 {
		t.Fatalf("refused tasks were stored: %+v", list.Tasks)
	}
}

// Output past the per-task cap is counted (so the agent can move on) but
// not stored, and the task says so.
func TestLogCap(t *testing.T) {
	t.Parallel()
	// The cap is an option (8 MiB by default): half a MiB shows the same
	// mechanism without pushing 8 MiB through SQLite under -race, which
	// takes minutes on a busy machine.
	const maxBytes = 512 << 10
	c := startCPWith(t, func(cfg *app.Config) { cfg.TaskMaxLogBytes = maxBytes })
	a := c.server("web-1")
	a.connect()
	defer a.disconnect()
	v := c.createTask(a.id, exec("yes"))
	big := make([]byte, protocol.MaxLogChunkBytes)
	n := int64(maxBytes)/int64(len(big)) + 3
	for seq := int64(1); seq <= n; seq++ {
		a.send(protocol.TypeTaskLog, protocol.TaskLog{TaskID: v.ID, Seq: seq, Stream: protocol.StreamStdout, Data: big})
	}
	a.wait("ack of everything", func() bool { ack, _ := a.lastAck(v.ID); return ack.LogSeq == n })
	v = c.task(v.ID)
	if !v.Log.Truncated {
		t.Fatalf("task: %+v", v.Log)
	}
	var bytes int64
	q := `SELECT SUM(LENGTH(data)) FROM task_logs WHERE task_id = ?`
	if c.app.Store.Dialect() == store.Postgres {
		q = strings.Replace(q, "?", "$1", 1)
	}
	if err := c.app.Store.DB().QueryRow(q, v.ID).Scan(&bytes); err != nil || bytes > maxBytes || bytes < maxBytes-int64(len(big)) {
		t.Fatalf("stored %d bytes (%v)", bytes, err)
	}
}

// A quarantined server's session may be an impostor's: even while one is
// live, tasks stay queued, and they go out once a new enrollment lifted
// the quarantine.
func TestQuarantinedServerGetsNoTasks(t *testing.T) {
	t.Parallel()
	c := startCP(t)
	a := c.server("web-1")
	a.onTask = runs(nil)
	a.connect()
	defer a.disconnect()
	ctx := context.Background()
	if _, err := c.app.Store.Q().Quarantine(ctx, a.id, "test: two agents", time.Now()); err != nil {
		t.Fatal(err)
	}
	v := c.createTask(a.id, exec("uptime"))
	if v.State != protocol.TaskQueued || v.Attempts != 0 || v.SentAt != nil {
		t.Fatalf("task for a quarantined server with a live session: %+v", v)
	}
	// The rekeyed agent enrolls (its key is recorded, the quarantine
	// ends) and connects again.
	if err := c.app.Store.Q().SaveAgentKey(ctx, a.id, a.priv.Public().(ed25519.PublicKey), time.Now()); err != nil {
		t.Fatal(err)
	}
	a.disconnect()
	a.connect()
	c.waitTask(v.ID, "success", func(v taskView) bool { return v.State == protocol.TaskSucceeded })
}
