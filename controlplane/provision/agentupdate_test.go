package provision

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/agentrelease"
	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
	"github.com/devpilot/devpilot/shared/protocol"
)

// catalogue is a release catalogue of one version for linux/amd64.
type catalogue struct{ version string }

func (c catalogue) Get(version, goos, arch string) (agentrelease.Release, error) {
	if version != c.version || goos != "linux" || arch != "amd64" {
		return agentrelease.Release{}, agentrelease.ErrNotFound
	}
	return agentrelease.Release{Version: version, OS: goos, Arch: arch, SHA256: strings.Repeat("ab", 32),
		Signature: "c2ln", KeyID: "key1", Size: 1 << 20}, nil
}

func (c catalogue) Versions() ([]string, error) { return []string{c.version}, nil }

// sessions is which agents have a session on one control plane.
type sessions struct {
	mu sync.Mutex
	on map[string]string // server id → agent version
}

func (l *sessions) set(serverID, version string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if version == "" {
		delete(l.on, serverID)
	} else {
		l.on[serverID] = version
	}
}

func (l *sessions) live(serverID string) (Live, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, ok := l.on[serverID]
	return Live{Connected: ok, AgentVersion: v, Capabilities: []string{protocol.CapUpdate}}, ok
}

func statusEnv(t *testing.T, st protocol.UpdateStatus) protocol.Envelope {
	t.Helper()
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	return protocol.Envelope{V: 1, Type: protocol.TypeUpdateStatus, Data: b}
}

// Two control planes on one store: B runs the update_agent actions (it
// held the agents' sessions when it sent the updates), then the sessions
// move to A, which receives the agents' update_status and hellos. B ends
// each action from what A received: an update that verified, restarted
// and came back on the new version succeeds; one the agent refused fails
// with the agent's reason.
func TestUpdateAgentEndsFromReportsAnotherControlPlaneReceived(t *testing.T) {
	ctx := context.Background()
	st, err := store.Open(ctx, storetest.Database(t), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })

	onB := &sessions{on: map[string]string{}}
	sent := make(chan protocol.Update, 4)
	done := make(chan string, 4)
	a := New(Options{Store: st, Owner: "cp-a", PollInterval: 20 * time.Millisecond})
	b := New(Options{Store: st, Owner: "cp-b", PollInterval: 20 * time.Millisecond, Live: onB.live, Releases: catalogue{"1.1.0"},
		SendUpdate:   func(_ context.Context, _ string, u protocol.Update) error { sent <- u; return nil },
		OnActionDone: func(id string) { done <- id }})
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)

	now := time.Now().UTC()
	q := st.Q()
	if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "d", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"srv_a", "srv_b"} {
		if err := q.CreateServer(ctx, store.Server{ID: id, WorkspaceID: "ws_1", Provider: "digitalocean", Name: id[4:],
			Region: "nyc3", Size: "s", Image: "debian-12", PortsJSON: "[22]", State: StateOnline, AgentVersion: "1.0.0",
			FactsJSON: `{"os":"linux","arch":"amd64"}`, InstalledAt: &now, AgentTimeoutS: 60, CreatedAt: now, UpdatedAt: now}, nil); err != nil {
			t.Fatal(err)
		}
		onB.set(id, "1.0.0")
	}

	// start sends an update from B and moves the agent's session to A.
	start := func(serverID string) string {
		t.Helper()
		id, err := b.StartAgentUpdate(ctx, "ws_1", serverID, "1.1.0")
		if err != nil {
			t.Fatal(err)
		}
		select {
		case u := <-sent:
			if u.ID != id || u.Version != "1.1.0" {
				t.Fatalf("sent %+v, want update %s to 1.1.0", u, id)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: no update sent", serverID)
		}
		onB.set(serverID, "")
		return id
	}
	finished := func(serverID, id string) *apitypes.Action {
		t.Helper()
		select {
		case got := <-done:
			if got != id {
				t.Fatalf("action %s ended, want %s", got, id)
			}
		case <-time.After(60 * time.Second):
			act, _ := b.GetAction(ctx, "ws_1", serverID, id)
			t.Fatalf("%s: the action did not end: %+v", serverID, act)
		}
		act, err := b.GetAction(ctx, "ws_1", serverID, id)
		if err != nil {
			t.Fatal(err)
		}
		return act
	}

	id := start("srv_a")
	for _, state := range []string{protocol.UpdateDownloading, protocol.UpdateVerified, protocol.UpdateRestarting} {
		a.HandleUpdateStatus(ctx, "srv_a", statusEnv(t, protocol.UpdateStatus{ID: id, State: state}))
	}
	// B's verify step ends on the status alone (B gets no wake-up: it
	// reads the store at its next poll).
	for deadline := time.Now().Add(30 * time.Second); ; {
		act, err := b.GetAction(ctx, "ws_1", "srv_a", id)
		if err != nil {
			t.Fatal(err)
		}
		if act.Steps[1].State == StepDone {
			if !strings.Contains(act.Steps[1].Detail, "verified the release") {
				t.Errorf("verify step: %q, want the agent's status", act.Steps[1].Detail)
			}
			break
		}
		if act.State != apitypes.ActionRunning && act.State != apitypes.ActionQueued || time.Now().After(deadline) {
			t.Fatalf("waiting for the verify step: %+v", act)
		}
		time.Sleep(10 * time.Millisecond)
	}
	r := a.Registry()
	if err := r.Disconnected(ctx, "srv_a", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := r.Connected(ctx, "srv_a", protocol.Hello{AgentVersion: "1.1.0", Facts: protocol.Facts{OS: "linux", Arch: "amd64"},
		LastUpdate: &protocol.LastUpdate{ID: id, Result: protocol.UpdateResultUpdated, From: "1.0.0", To: "1.1.0"}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	act := finished("srv_a", id)
	if act.State != apitypes.ActionSucceeded || len(act.Steps) != 3 || !strings.Contains(act.Steps[2].Detail, "back on 1.1.0") {
		t.Errorf("update reported to A: %+v, want succeeded after verify and reconnect", act)
	}

	id = start("srv_b")
	a.HandleUpdateStatus(ctx, "srv_b", statusEnv(t, protocol.UpdateStatus{ID: id, State: protocol.UpdateRefused,
		Error: "signature does not verify against the pinned release keys"}))
	act = finished("srv_b", id)
	if act.State != apitypes.ActionFailed || act.Error == nil || act.Error.Code != "update_refused" ||
		!strings.Contains(act.Error.Message, "signature does not verify") {
		t.Errorf("update refused on A: %+v (error %+v), want failed with the agent's reason", act, act.Error)
	}

	// Each server's view shows how its last update ended; the refusal at
	// once (the agent reports it in a hello only at its next session).
	for serverID, want := range map[string]protocol.LastUpdate{
		"srv_a": {Result: protocol.UpdateResultUpdated, From: "1.0.0", To: "1.1.0"},
		"srv_b": {Result: protocol.UpdateResultRefused, From: "1.0.0", To: "1.1.0", Reason: "signature does not verify against the pinned release keys"},
	} {
		v, err := a.Get(ctx, "ws_1", serverID)
		if err != nil {
			t.Fatal(err)
		}
		got := v.Agent.LastUpdate
		if got == nil || got.Result != want.Result || got.From != want.From || got.To != want.To || got.Reason != want.Reason ||
			!strings.HasPrefix(got.ID, "act_") || got.ReportedAt == nil {
			t.Errorf("%s: last update %+v, want %+v", serverID, got, want)
		}
	}
}
