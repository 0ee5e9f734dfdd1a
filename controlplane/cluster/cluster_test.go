package cluster_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/controlplane/cluster"
	"github.com/devpilot/devpilot/controlplane/hub"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
	"github.com/devpilot/devpilot/shared/protocol"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// emptyHub is a local hub that holds no session: every agent is elsewhere.
type emptyHub struct {
	mu   sync.Mutex
	sent []string // types Send was asked for
}

func (h *emptyHub) Send(_ context.Context, _, typ string, _ any) error {
	h.mu.Lock()
	h.sent = append(h.sent, typ)
	h.mu.Unlock()
	return hub.ErrNotConnected
}
func (h *emptyHub) Status(string) (hub.Status, bool)    { return hub.Status{}, false }
func (h *emptyHub) Disconnect(string, string)           {}
func (h *emptyHub) TakenOver(string, string, time.Time) {}

// twoPlanes opens the store of control plane cp_a and, on the same
// database, cp_b's, which holds srv_00000's session.
func twoPlanes(t *testing.T) (a, b *store.Store) {
	t.Helper()
	ctx := context.Background()
	dsn := storetest.PostgresURL(t)
	for _, p := range []struct {
		st   **store.Store
		self string
	}{{&a, "cp_a"}, {&b, "cp_b"}} {
		st, err := store.Open(ctx, dsn, filepath.Join(t.TempDir(), "unused.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		st.SetSelf(p.self)
		*p.st = st
	}
	if err := a.Q().CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	if err := a.Q().CreateServer(ctx, store.Server{ID: "srv_00000", WorkspaceID: "ws_1", Provider: "digitalocean", Name: "web-0",
		Region: "nyc3", Size: "s-1vcpu-1gb", Image: "debian-12", PortsJSON: "[]", State: "online", AgentTimeoutS: 900,
		CreatedAt: now, UpdatedAt: now}, nil); err != nil {
		t.Fatal(err)
	}
	for _, st := range []*store.Store{a, b} {
		if err := st.Q().BeatControlPlane(ctx, st.Self(), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := b.StartAgentSessionBatched(ctx, store.SessionStart{ID: "srv_00000", Version: "1.4.0",
		FactsJSON: `{"boot_id":"boot-1"}`, Capabilities: "reboot update", At: time.Now()}); err != nil || !ok {
		t.Fatalf("cp_b starts the session: %v, %v", ok, err)
	}
	return a, b
}

// listen collects what arrives on channel until the test ends.
func listen(t *testing.T, st *store.Store, channel string) <-chan string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan string, 16)
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = st.ListenMany(ctx, []string{channel}, func() { close(ready) }, func(p string) { got <- p })
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		t.Fatal("LISTEN did not start")
	}
	return got
}

func next(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case p := <-ch:
		return p
	case <-time.After(30 * time.Second):
		t.Fatal("no notification")
		return ""
	}
}

// A task for an agent held by another control plane is handed over by id
// alone: its spec, which may hold secrets, never goes into a notification
// (PostgreSQL may spill its notification queue to disk). Other messages
// go with their payload; the holder's status is read from the database.
func TestMessagesGoToTheHolderAndTasksOnlyByID(t *testing.T) {
	ctx := context.Background()
	a, b := twoPlanes(t)
	toB := listen(t, b, cluster.Channel("cp_b"))
	local := &emptyHub{}
	c := cluster.New(cluster.Options{Store: a, Hub: local, Dispatch: func(string, string) {}})

	const canary = "canary-secret-4b1d"
	task := protocol.Task{ID: "task_1", Kind: protocol.KindExec, Deadline: time.Now().Add(time.Hour),
		Exec: &protocol.ExecSpec{Argv: []string{"deploy"}, Env: map[string]string{"TOKEN": canary}}}
	if err := c.Send(ctx, "srv_00000", protocol.TypeTask, task); !errors.Is(err, cluster.ErrRouted) || !errors.Is(err, hub.ErrNotConnected) {
		t.Fatalf("Send(task) = %v; want ErrRouted (an ErrNotConnected: not sent from here)", err)
	}
	p := next(t, toB)
	if strings.Contains(p, canary) || strings.Contains(p, "deploy") {
		t.Fatalf("the notification carries the task's spec: %s", p)
	}
	if !strings.Contains(p, `"task":"task_1"`) || !strings.Contains(p, `"server":"srv_00000"`) {
		t.Fatalf("the notification %s does not name the task and server", p)
	}
	if err := c.Send(ctx, "srv_00000", protocol.TypeReboot, protocol.Reboot{ID: "act_1"}); err != nil {
		t.Fatalf("Send(reboot) = %v; want nil (handed to cp_b)", err)
	}
	if p := next(t, toB); !strings.Contains(p, `"type":"reboot"`) || !strings.Contains(p, "act_1") {
		t.Fatalf("reboot notification %s", p)
	}
	st, ok := c.Status("srv_00000")
	if !ok || !st.Connected || st.AgentVersion != "1.4.0" || st.BootID != "boot-1" || strings.Join(st.Capabilities, " ") != "reboot update" {
		t.Fatalf("Status of a session held by cp_b = %+v, %v; want connected with the hello's version, boot and capabilities", st, ok)
	}

	// cp_b stops beating: its session no longer counts.
	if err := b.Q().BeatControlPlane(ctx, "cp_b", time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if st, ok := c.Status("srv_00000"); ok || st.Connected {
		t.Errorf("Status with its holder dead = %+v, %v; want not connected", st, ok)
	}
	if err := c.Send(ctx, "srv_00000", protocol.TypeReboot, protocol.Reboot{ID: "act_2"}); !errors.Is(err, hub.ErrNotConnected) || errors.Is(err, cluster.ErrRouted) {
		t.Errorf("Send with the holder dead = %v; want ErrNotConnected", err)
	}
}

// Run hands the tasks other control planes route here to Dispatch, and
// its sweep finds a queued task of a session held here even with no
// notification at all (a lost one delays work, never loses it).
func TestRunDispatchesRoutedAndSweptTasks(t *testing.T) {
	ctx := context.Background()
	a, b := twoPlanes(t) // srv_00000's session is b's
	dispatched := make(chan string, 8)
	c := cluster.New(cluster.Options{Store: b, Hub: &emptyHub{}, Beat: 100 * time.Millisecond,
		Dispatch: func(server, task string) { dispatched <- server + "/" + task }})
	rctx, stop := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { defer close(ran); c.Run(rctx) }()
	defer func() { stop(); <-ran }()

	// From cp_a, as its Send would.
	fromA := cluster.New(cluster.Options{Store: a, Hub: &emptyHub{}, Dispatch: func(string, string) {}})
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := fromA.Send(ctx, "srv_00000", protocol.TypeTask, protocol.Task{ID: "task_routed"})
		if !errors.Is(err, cluster.ErrRouted) {
			t.Fatalf("Send = %v; want ErrRouted", err)
		}
		select {
		case d := <-dispatched:
			if d != "srv_00000/task_routed" {
				t.Fatalf("dispatched %s; want srv_00000/task_routed", d)
			}
		case <-time.After(time.Second):
			if time.Now().After(deadline) {
				t.Fatal("cp_b never dispatched the task cp_a handed it")
			}
			continue // cp_b's LISTEN may not have started: send again
		}
		break
	}

	now := time.Now().UTC()
	if err := a.Q().CreateTask(ctx, store.Task{ID: "task_queued", WorkspaceID: "ws_1", ServerID: "srv_00000", Kind: protocol.KindExec,
		SpecJSON: "{}", State: protocol.TaskQueued, CreatedBy: "test", CreatedAt: now, Deadline: now.Add(time.Hour), UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case d := <-dispatched:
			if d == "srv_00000/task_queued" {
				return
			}
		case <-time.After(30 * time.Second):
			t.Fatal("the sweep never sent the queued task")
		}
	}
}

// StatusOf tells a session held elsewhere from a server row just read and
// the beats this control plane last read, as Status does from the
// database: connected with the hello's version, boot and capabilities and
// the latest health while the holder beats; not connected once the
// holder's beat is stale.
func TestStatusOfARowMatchesStatus(t *testing.T) {
	ctx := context.Background()
	a, b := twoPlanes(t)
	if err := a.SaveHealthBatch(ctx, []store.HealthRow{{ServerID: "srv_00000", HealthJSON: `{"cpu_percent":42}`,
		Point: store.HealthPoint{At: time.Now()}}}, time.Minute, 0); err != nil {
		t.Fatal(err)
	}
	c := cluster.New(cluster.Options{Store: a, Hub: &emptyHub{}, Dispatch: func(string, string) {}, Beat: 50 * time.Millisecond})
	rctx, cancel := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { defer close(ran); c.Run(rctx) }()
	defer func() { cancel(); <-ran }()
	statusOf := func() (hub.Status, bool) {
		t.Helper()
		srv, err := a.Q().GetServer(ctx, "ws_1", "srv_00000")
		if err != nil {
			t.Fatal(err)
		}
		return c.StatusOf(srv)
	}
	waitFor := func(what string, cond func(hub.Status, bool) bool) (hub.Status, bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			st, ok := statusOf()
			if cond(st, ok) {
				return st, ok
			}
			if time.Now().After(deadline) {
				t.Fatalf("StatusOf is not %s after 30 s: %+v, %v", what, st, ok)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	got, _ := waitFor("connected", func(st hub.Status, ok bool) bool { return ok && st.Connected })
	want, ok := c.Status("srv_00000")
	if !ok || got.AgentVersion != "1.4.0" || got.BootID != "boot-1" || strings.Join(got.Capabilities, " ") != "reboot update" ||
		got.Health == nil || got.Health.CPUPercent != 42 || !got.Since.Equal(want.Since) || !got.LastSeen.Equal(want.LastSeen) ||
		got.AgentVersion != want.AgentVersion || got.BootID != want.BootID || got.Health.CPUPercent != want.Health.CPUPercent {
		t.Fatalf("StatusOf = %+v; Status = %+v, %v; want the same session, with the hello's version, boot, capabilities and cpu 42", got, want, ok)
	}
	if err := b.Q().BeatControlPlane(ctx, "cp_b", time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	waitFor("not connected with its holder dead", func(st hub.Status, ok bool) bool { return !ok && !st.Connected })
}

// takeoverHub records the takeovers another control plane reports.
type takeoverHub struct {
	emptyHub
	got chan string
}

func (h *takeoverHub) TakenOver(server, remote string, at time.Time) {
	select {
	case h.got <- server + " from " + remote + " at " + at.UTC().Format(time.RFC3339):
	default: // the test has what it needs
	}
}

// A session started on cp_a that took the server's session from cp_b
// (Replaced) reaches cp_b's hub as a takeover with the new session's
// remote address and time, so cp_b ends its session and counts it.
func TestReplacedTellsThePreviousHolder(t *testing.T) {
	ctx := context.Background()
	a, b := twoPlanes(t) // srv_00000's session is b's
	onB := &takeoverHub{got: make(chan string, 8)}
	cb := cluster.New(cluster.Options{Store: b, Hub: onB, Beat: 100 * time.Millisecond, Dispatch: func(string, string) {}})
	ca := cluster.New(cluster.Options{Store: a, Hub: &emptyHub{}, Beat: 100 * time.Millisecond, Dispatch: func(string, string) {}})
	for _, c := range []*cluster.Cluster{cb, ca} {
		rctx, stop := context.WithCancel(ctx)
		ran := make(chan struct{})
		go func() { defer close(ran); c.Run(rctx) }()
		defer func() { stop(); <-ran }()
	}
	at := time.Date(2026, 12, 4, 22, 0, 0, 0, time.UTC)
	want := "srv_00000 from 198.51.100.7:40001 at 2026-12-04T22:00:00Z"
	deadline := time.Now().Add(30 * time.Second)
	for {
		// Until cp_a's beat has read cp_b's and cp_b listens: again.
		ca.Replaced("srv_00000", "cp_b", "198.51.100.7:40001", at)
		ca.Replaced("srv_00000", "cp_a", "198.51.100.7:40001", at) // its own: nobody is told
		select {
		case got := <-onB.got:
			if got != want {
				t.Fatalf("cp_b's hub was told %q, want %q", got, want)
			}
			return
		case <-time.After(200 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("cp_b was never told its session was replaced")
			}
		}
	}
}
