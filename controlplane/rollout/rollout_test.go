package rollout

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/store"
)

// The controller and the test fleet are goroutines: none may outlive a test.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	vA      = "1.0.0"
	vB      = "1.1.0"
	vBroken = "1.1.0-broken" // exits at once: the agent rolls back to its previous version
	vFlaky  = "1.1.0-flaky"  // reconnects, then drops within the health window
	vBadSig = "1.1.0-badsig" // refused by the agent before installing
)

type releases []string

func (r releases) Versions(context.Context) ([]string, error) { return r, nil }

// fleet is the servers' side of update_agent, played through the store:
// the updater records a real update_agent action per call, and the fleet
// goroutine finishes each one the way an agent on that version would (new
// version reported and the action succeeded; or back on the old version
// and the action failed; or succeeded and then dropped offline).
type fleet struct {
	t     *testing.T
	st    *store.Store
	mu    sync.Mutex
	calls map[string]int // StartAgentUpdateID calls by server
	// beforeCreate, when set, runs before the action is created (a
	// crash between recording the target's action id and starting it).
	beforeCreate func(serverID string) error
}

func (f *fleet) StartAgentUpdateID(ctx context.Context, id, ws, serverID, version string) (*apitypes.Action, error) {
	f.mu.Lock()
	f.calls[serverID]++
	hook := f.beforeCreate
	f.mu.Unlock()
	if hook != nil {
		if err := hook(serverID); err != nil {
			return nil, err
		}
	}
	if a, err := f.st.Q().GetAction(ctx, ws, id); err == nil {
		return &apitypes.Action{ID: a.ID, ServerID: a.ServerID, Type: a.Type, State: a.State}, nil // the same id: the same action
	}
	now := time.Now().UTC()
	p, _ := json.Marshal(map[string]string{"version": version})
	err := f.st.Q().CreateAction(ctx, store.ServerAction{ID: id, WorkspaceID: ws, ServerID: serverID, Type: "update_agent",
		ParamsJSON: string(p), State: apitypes.ActionRunning, StepsJSON: "[]", CreatedBy: "rollout", CreatedAt: now, UpdatedAt: now})
	if errors.Is(err, store.ErrConflict) {
		return nil, problem.Conflict("", "server %s has an action in progress", serverID)
	}
	if err != nil {
		return nil, err
	}
	return &apitypes.Action{ID: id, ServerID: serverID, Type: "update_agent", State: apitypes.ActionRunning}, nil
}

func (f *fleet) updates() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.calls)
}

// run finishes open update_agent actions until ctx ends.
func (f *fleet) run(ctx context.Context, wg *sync.WaitGroup) {
	defer wg.Done()
	var drop []string
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Millisecond):
		}
		// Up on the new version, then gone a moment later: the hub
		// records why.
		for _, id := range drop {
			_ = f.st.Q().SetAgentLastError(ctx, id, "session ended: agent exited (watchdog timeout)")
			_, _ = f.st.Q().SetServerState(ctx, id, "offline", time.Now(), "online")
		}
		drop = nil
		open, err := f.st.Q().OpenActions(ctx)
		if err != nil {
			continue
		}
		for _, a := range open {
			if a.Type != "update_agent" {
				continue
			}
			var p struct{ Version string }
			_ = json.Unmarshal([]byte(a.ParamsJSON), &p)
			now := time.Now().UTC()
			if ok, err := f.st.Q().LeaseAction(ctx, a.ID, "fleet", now, now.Add(time.Minute)); err != nil || !ok {
				continue
			}
			q := f.st.Q()
			switch p.Version {
			case vBadSig:
				a.State, a.ErrorJSON = apitypes.ActionFailed,
					`{"code":"update_refused","message":"the agent reports the update refused: signature does not verify"}`
			case vBroken:
				a.State, a.ErrorJSON = apitypes.ActionFailed,
					`{"code":"rolled_back","message":"agent `+vBroken+` exited at once (status 1); rolled back to `+vA+`"}`
			default:
				if _, err := q.StartAgentSession(ctx, a.ServerID, p.Version, "{}", now); err != nil {
					f.t.Error(err)
				}
				a.State = apitypes.ActionSucceeded
			}
			a.FinishedAt, a.UpdatedAt = &now, now
			if _, err := q.SaveAction(ctx, a, "fleet"); err != nil {
				f.t.Error(err)
			}
			if p.Version == vFlaky {
				drop = append(drop, a.ServerID)
			}
		}
	}
}

type env struct {
	t     *testing.T
	st    *store.Store
	fleet *fleet
	ws    string
	ids   []string
}

func newEnv(t *testing.T, servers int) *env {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "devpilot.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	e := &env{t: t, st: st, ws: "ws_test"}
	now := time.Now().UTC()
	if err := st.Q().CreateWorkspace(ctx, store.Workspace{ID: e.ws, Slug: "team", Name: "Team", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	for i := range servers {
		id := fmt.Sprintf("srv_%02d", i)
		srv := store.Server{ID: id, WorkspaceID: e.ws, Provider: "digitalocean", Name: fmt.Sprintf("web-%02d", i), Region: "nyc3",
			Size: "s-1vcpu-1gb", Image: "debian-12", PortsJSON: "[22]", State: "online", AgentVersion: vA, AgentTimeoutS: 60,
			CreatedAt: now, UpdatedAt: now}
		if err := st.Q().CreateServer(ctx, srv, nil); err != nil {
			t.Fatal(err)
		}
		e.ids = append(e.ids, id)
	}
	e.fleet = &fleet{t: t, st: st, calls: map[string]int{}}
	fctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go e.fleet.run(fctx, &wg)
	t.Cleanup(func() { cancel(); wg.Wait() })
	return e
}

func (e *env) service(owner string, reg prometheus.Registerer) *Service {
	s := New(Options{Store: e.st, Updater: e.fleet, Releases: releases{vA, vB, vBroken, vFlaky, vBadSig}, Owner: owner,
		Tick: 10 * time.Millisecond, Lease: 500 * time.Millisecond, Registerer: reg})
	return s
}

// wait polls the rollout until ok says so, or fails after a generous deadline.
func (e *env) wait(s *Service, id string, what string, ok func(*apitypes.Rollout) bool) *apitypes.Rollout {
	e.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		r, err := s.Get(context.Background(), e.ws, id)
		if err != nil {
			e.t.Fatal(err)
		}
		if ok(r) {
			return r
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("rollout never %s: %+v", what, r)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ended(r *apitypes.Rollout) bool {
	return r.State == apitypes.RolloutSucceeded || r.State == apitypes.RolloutFailed || r.State == apitypes.RolloutAborted
}

func window(n int) *int { return &n }

func (e *env) versions() map[string]string {
	out := map[string]string{}
	for _, id := range e.ids {
		srv, err := e.st.Q().GetServer(context.Background(), e.ws, id)
		if err != nil {
			e.t.Fatal(err)
		}
		out[id] = srv.AgentVersion
	}
	return out
}

// B over 10 agents on A with 2 canaries: all 10 end on B, each updated
// once, and no other server started before both canaries had been healthy
// for the whole window.
func TestRolloutUpdatesCanariesThenTheRest(t *testing.T) {
	e := newEnv(t, 10)
	reg := prometheus.NewRegistry()
	s := e.service("cp_a", reg)
	s.Start()
	defer s.Close()
	r, err := s.Create(context.Background(), "owner", e.ws, apitypes.CreateRollout{Version: vB, Canary: apitypes.Canary{N: 2},
		MaxParallel: 3, HealthWindowS: window(1)})
	if err != nil {
		t.Fatal(err)
	}
	r = e.wait(s, r.ID, "ended", ended)
	if r.State != apitypes.RolloutSucceeded || r.Counts[apitypes.TargetHealthy] != 10 {
		t.Fatalf("rollout: %s %q counts %v", r.State, r.Reason, r.Counts)
	}
	for id, v := range e.versions() {
		if v != vB {
			t.Errorf("%s is on %q, want %s", id, v, vB)
		}
	}
	for id, n := range e.fleet.updates() {
		if n != 1 {
			t.Errorf("%s updated %d times", id, n)
		}
	}
	var canaryHealthy time.Time
	for _, tg := range r.Targets {
		if tg.Wave == apitypes.WaveCanary {
			end := tg.UpdatedAt.Add(time.Second)
			if end.After(canaryHealthy) {
				canaryHealthy = end
			}
		}
	}
	canaries := 0
	for _, tg := range r.Targets {
		if tg.Wave == apitypes.WaveCanary {
			canaries++
			continue
		}
		if tg.StartedAt.Before(canaryHealthy) {
			t.Errorf("%s started at %s, before the canaries' window ended at %s", tg.ServerName, tg.StartedAt, canaryHealthy)
		}
	}
	if canaries != 2 || r.CanaryCount != 2 {
		t.Errorf("canaries: %d (canary_count %d), want 2", canaries, r.CanaryCount)
	}
	if got, _ := s.TargetVersion(context.Background(), e.ws); got != vB {
		t.Errorf("workspace target version %q, want %s", got, vB)
	}
	if n := testutil.ToFloat64(s.rollbacks); n != 0 {
		t.Errorf("rollbacks counted: %v", n)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP devpilot_rollouts Agent rollouts by state (pending, canary, rolling, paused, succeeded, failed, aborted), read from the store at most every 5 s.
# TYPE devpilot_rollouts gauge
devpilot_rollouts{state="aborted"} 0
devpilot_rollouts{state="canary"} 0
devpilot_rollouts{state="failed"} 0
devpilot_rollouts{state="paused"} 0
devpilot_rollouts{state="pending"} 0
devpilot_rollouts{state="rolling"} 0
devpilot_rollouts{state="succeeded"} 1
# HELP devpilot_agents Online agents by the release they run (the version part of what they report, as rollouts compare it).
# TYPE devpilot_agents gauge
devpilot_agents{version="1.1.0"} 10
`), "devpilot_rollouts", "devpilot_agents"); err != nil {
		t.Error(err)
	}
}

// A release the agent refuses (nothing installed) fails the canary and
// the rollout, but is no rollback: not counted, not said.
func TestRefusedReleaseIsNotARollback(t *testing.T) {
	e := newEnv(t, 3)
	s := e.service("cp_a", nil)
	s.Start()
	defer s.Close()
	r, err := s.Create(context.Background(), "owner", e.ws, apitypes.CreateRollout{Version: vBadSig, Canary: apitypes.Canary{N: 1},
		MaxParallel: 1, HealthWindowS: window(0)})
	if err != nil {
		t.Fatal(err)
	}
	r = e.wait(s, r.ID, "failed", func(r *apitypes.Rollout) bool {
		return r.State == apitypes.RolloutFailed && r.Counts[apitypes.TargetUpdating] == 0
	})
	if !strings.Contains(r.Reason, "still runs "+vA) || strings.Contains(r.Reason, "rolled back") {
		t.Errorf("reason %q, want the agent still on %s and no rollback", r.Reason, vA)
	}
	if n := testutil.ToFloat64(s.rollbacks); n != 0 {
		t.Errorf("rollbacks counted: %v, want 0", n)
	}
}

// A pending target whose server went offline a moment ago (its agent
// reconnecting to a restarted control plane, say) waits for it instead of
// being skipped, and is updated once it is back.
func TestRecentlyOfflineServerIsWaitedFor(t *testing.T) {
	e := newEnv(t, 3)
	last := e.ids[len(e.ids)-1]
	var once sync.Once
	e.fleet.mu.Lock()
	e.fleet.beforeCreate = func(string) error {
		once.Do(func() { // while the canary starts: the last server, seen just now, drops
			if _, err := e.st.Q().StartAgentSession(context.Background(), last, vA, "{}", time.Now()); err != nil {
				t.Error(err)
			}
			if _, err := e.st.Q().SetServerState(context.Background(), last, "offline", time.Now(), "online"); err != nil {
				t.Error(err)
			}
		})
		return nil
	}
	e.fleet.mu.Unlock()
	s := e.service("cp_a", nil)
	s.Start()
	defer s.Close()
	r, err := s.Create(context.Background(), "owner", e.ws, apitypes.CreateRollout{Version: vB, Canary: apitypes.Canary{N: 1},
		MaxParallel: 1, HealthWindowS: window(0)})
	if err != nil {
		t.Fatal(err)
	}
	e.wait(s, r.ID, "waiting for the offline server", func(r *apitypes.Rollout) bool {
		for _, tg := range r.Targets {
			if tg.ServerID == last && tg.State == apitypes.TargetPending && strings.HasPrefix(tg.Reason, "waiting: the server is offline") {
				return true
			}
		}
		return false
	})
	if _, err := e.st.Q().StartAgentSession(context.Background(), last, vA, "{}", time.Now()); err != nil {
		t.Fatal(err)
	}
	r = e.wait(s, r.ID, "ended", ended)
	if r.State != apitypes.RolloutSucceeded || r.Counts[apitypes.TargetHealthy] != 3 {
		t.Fatalf("rollout %s %q %v, want all 3 healthy", r.State, r.Reason, r.Counts)
	}
}

// A broken B' stops after the canaries: both are back on A (they rolled
// back), the reason names a canary, and the other 8 are never touched.
func TestBrokenVersionStopsAfterTheCanaries(t *testing.T) {
	e := newEnv(t, 10)
	s := e.service("cp_a", nil)
	s.Start()
	defer s.Close()
	r, err := s.Create(context.Background(), "owner", e.ws, apitypes.CreateRollout{Version: vBroken, Canary: apitypes.Canary{N: 2},
		MaxParallel: 3, HealthWindowS: window(1)})
	if err != nil {
		t.Fatal(err)
	}
	// Followed to the end: both canaries' actions finished.
	r = e.wait(s, r.ID, "failed with both canaries done", func(r *apitypes.Rollout) bool {
		return r.State == apitypes.RolloutFailed && r.Counts[apitypes.TargetUpdating] == 0
	})
	if !strings.Contains(r.Reason, "server web-0") || !strings.Contains(r.Reason, "rolled back to "+vA) {
		t.Errorf("reason %q does not name the canary and its rollback", r.Reason)
	}
	if r.Counts[apitypes.TargetFailed] != 2 || r.Counts[apitypes.TargetSkipped] != 8 {
		t.Errorf("counts %v, want 2 failed and 8 skipped", r.Counts)
	}
	up := e.fleet.updates()
	if len(up) != 2 {
		t.Errorf("updated servers %v, want only the 2 canaries", up)
	}
	for _, tg := range r.Targets {
		if tg.Wave == apitypes.WaveRest && (tg.ActionID != "" || tg.StartedAt != nil || up[tg.ServerID] != 0) {
			t.Errorf("%s was touched: %+v", tg.ServerName, tg)
		}
	}
	for id, v := range e.versions() {
		if v != vA {
			t.Errorf("%s is on %q, want %s", id, v, vA)
		}
	}
	if got, _ := s.TargetVersion(context.Background(), e.ws); got != "" {
		t.Errorf("a failed rollout set the target version to %q", got)
	}
	if n := testutil.ToFloat64(s.rollbacks); n != 2 {
		t.Errorf("rollbacks counted: %v, want 2", n)
	}
}

// A canary that reconnects on the new version and then drops within the
// health window fails the rollout before the rest start.
func TestCanaryUnhealthyInTheWindowFails(t *testing.T) {
	e := newEnv(t, 4)
	s := e.service("cp_a", nil)
	s.Start()
	defer s.Close()
	r, err := s.Create(context.Background(), "owner", e.ws, apitypes.CreateRollout{Version: vFlaky, Canary: apitypes.Canary{N: 1},
		HealthWindowS: window(30)})
	if err != nil {
		t.Fatal(err)
	}
	r = e.wait(s, r.ID, "ended", ended)
	if r.State != apitypes.RolloutFailed || !strings.Contains(r.Reason, "health window") {
		t.Fatalf("rollout %s %q, want failed in the health window", r.State, r.Reason)
	}
	if len(e.fleet.updates()) != 1 {
		t.Errorf("updates %v, want the canary only", e.fleet.updates())
	}
}

// A control plane killed after recording a target's action id but before
// the action was created, and another killed mid-rollout: the next one
// goes on where it was and no server gets a second update action.
func TestRolloutSurvivesRestarts(t *testing.T) {
	e := newEnv(t, 10)
	first := e.service("cp_a", nil)
	crashed := make(chan struct{})
	var once sync.Once
	var crashedOn string
	e.fleet.beforeCreate = func(id string) error {
		var err error
		once.Do(func() {
			first.cancel() // killed between "action id recorded" and "action created"
			crashedOn = id
			close(crashed)
			err = context.Canceled
		})
		return err
	}
	first.Start()
	r, err := first.Create(context.Background(), "owner", e.ws, apitypes.CreateRollout{Version: vB, Canary: apitypes.Canary{N: 2},
		MaxParallel: 2, HealthWindowS: window(0)})
	if err != nil {
		t.Fatal(err)
	}
	<-crashed
	first.Close()
	e.fleet.mu.Lock()
	e.fleet.beforeCreate = nil
	e.fleet.mu.Unlock()

	second := e.service("cp_b", nil)
	second.Start()
	e.wait(second, r.ID, "rolling", func(r *apitypes.Rollout) bool { return r.Counts[apitypes.TargetHealthy] >= 4 })
	second.cancel() // killed mid-rollout, its lease left behind
	second.Close()

	third := e.service("cp_c", nil)
	third.Start()
	defer third.Close()
	r = e.wait(third, r.ID, "ended", ended)
	if r.State != apitypes.RolloutSucceeded {
		t.Fatalf("rollout %s %q", r.State, r.Reason)
	}
	// The target the first control plane died on is started again under
	// its recorded id. The second one, killed at any point, may leave
	// another in-flight target to be started again the same way; what
	// must hold is that every such call finds the same action, so no
	// server ever gets a second update.
	if n := e.fleet.updates()[crashedOn]; n < 2 {
		t.Errorf("%s: %d update calls, want it started again under its recorded id", crashedOn, n)
	}
	for _, id := range e.ids {
		as, err := e.st.Q().ListActions(context.Background(), id, "", 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(as) != 1 {
			t.Errorf("%s has %d update actions, want 1", id, len(as))
		}
	}
	for id, v := range e.versions() {
		if v != vB {
			t.Errorf("%s on %q", id, v)
		}
	}
}

// Pause stops new updates; resume goes on; abort skips the rest.
func TestPauseResumeAbort(t *testing.T) {
	e := newEnv(t, 6)
	s := e.service("cp_a", nil)
	s.Start()
	defer s.Close()
	ctx := context.Background()
	r, err := s.Create(ctx, "owner", e.ws, apitypes.CreateRollout{Version: vB, Canary: apitypes.Canary{N: 1}, HealthWindowS: window(1)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Pause(ctx, "owner", e.ws, r.ID); err != nil {
		t.Fatal(err)
	}
	// A canary the controller started before the pause finishes and is
	// watched; nothing else starts while paused.
	got := e.wait(s, r.ID, "settled while paused", func(r *apitypes.Rollout) bool {
		return r.Counts[apitypes.TargetPending] == 6 || r.Counts[apitypes.TargetHealthy] == 1
	})
	if got.State != apitypes.RolloutPaused || got.Counts[apitypes.TargetPending] < 5 {
		t.Fatalf("paused rollout: %s %v", got.State, got.Counts)
	}
	if _, err := s.Pause(ctx, "owner", e.ws, r.ID); err == nil {
		t.Error("pausing a paused rollout was accepted")
	}
	if _, err := s.Resume(ctx, "owner", e.ws, r.ID); err != nil {
		t.Fatal(err)
	}
	e.wait(s, r.ID, "rolling", func(r *apitypes.Rollout) bool { return r.Counts[apitypes.TargetHealthy] >= 2 })
	if _, err := s.Abort(ctx, "owner", e.ws, r.ID); err != nil {
		t.Fatal(err)
	}
	got = e.wait(s, r.ID, "aborted with nothing updating", func(r *apitypes.Rollout) bool {
		return r.State == apitypes.RolloutAborted && r.Counts[apitypes.TargetUpdating] == 0
	})
	if got.Counts[apitypes.TargetSkipped] == 0 || got.Reason != "aborted by owner" {
		t.Errorf("aborted rollout: %v %q", got.Counts, got.Reason)
	}
	if _, err := s.Resume(ctx, "owner", e.ws, r.ID); err == nil {
		t.Error("resuming an aborted rollout was accepted")
	}
	for id, n := range e.fleet.updates() {
		if n != 1 {
			t.Errorf("%s updated %d times", id, n)
		}
	}
}

// Requests are validated at the door, naming the valid choices.
func TestCreateValidates(t *testing.T) {
	e := newEnv(t, 2)
	s := e.service("cp_a", nil)
	ctx := context.Background()
	cases := []struct {
		req  apitypes.CreateRollout
		hint string
	}{
		{apitypes.CreateRollout{Version: "9.9.9"}, "Available releases: " + vA + ", " + vB},
		{apitypes.CreateRollout{}, "Available releases:"},
		{apitypes.CreateRollout{Version: vB, Servers: []string{"web-00"}, Tag: "devpilot"}, "not both"},
		{apitypes.CreateRollout{Version: vB, Servers: []string{"nope"}}, "devpilot servers list"},
		{apitypes.CreateRollout{Version: vB, Tag: "blue"}, "devpilot-ws-team"},
		{apitypes.CreateRollout{Version: vB, MaxParallel: 101}, "1 to 100"},
		{apitypes.CreateRollout{Version: vB, HealthWindowS: window(-1)}, "0 to 86400"},
	}
	for _, c := range cases {
		_, err := s.Create(ctx, "owner", e.ws, c.req)
		var pe *problem.Error
		if !errors.As(err, &pe) || pe.Status != 422 || pe.Code != "validation_failed" || !strings.Contains(pe.Hint, c.hint) {
			t.Errorf("%+v: %v (hint %q), want 422 naming %q", c.req, err, hintOf(pe), c.hint)
		}
	}
	r, err := s.Create(ctx, "owner", e.ws, apitypes.CreateRollout{Version: vB, Servers: []string{"web-01", "srv_00"}, Canary: apitypes.Canary{Percent: 50}})
	if err != nil {
		t.Fatal(err)
	}
	if r.CanaryCount != 1 || len(r.Targets) != 2 || r.Targets[0].ServerName != "web-00" || r.State != apitypes.RolloutPending {
		t.Errorf("created: %+v", r)
	}
	if _, err := s.Create(ctx, "owner", e.ws, apitypes.CreateRollout{Version: vB}); err == nil || !strings.Contains(err.Error(), "under way") {
		t.Errorf("second rollout: %v, want conflict", err)
	}
	none := New(Options{Store: e.st})
	var pe *problem.Error
	if _, err := none.Create(ctx, "owner", e.ws, apitypes.CreateRollout{Version: vB}); !errors.As(err, &pe) || pe.Status != 503 {
		t.Errorf("without releases: %v, want 503 unavailable", err)
	}
}

func hintOf(pe *problem.Error) string {
	if pe == nil {
		return ""
	}
	return pe.Hint
}

func TestCanaryJSON(t *testing.T) {
	for in, want := range map[string]apitypes.Canary{`2`: {N: 2}, `"3"`: {N: 3}, `"20%"`: {Percent: 20}} {
		var c apitypes.Canary
		if err := json.Unmarshal([]byte(in), &c); err != nil || c != want {
			t.Errorf("%s: %+v %v", in, c, err)
		}
	}
	for _, bad := range []string{`0`, `-1`, `"0%"`, `"101%"`, `"x"`, `1.5`} {
		var c apitypes.Canary
		if err := json.Unmarshal([]byte(bad), &c); err == nil {
			t.Errorf("%s accepted as %+v", bad, c)
		}
	}
	if n := (apitypes.Canary{Percent: 20}).Of(10); n != 2 {
		t.Errorf("20%% of 10 = %d", n)
	}
	if n := (apitypes.Canary{Percent: 1}).Of(10); n != 1 {
		t.Errorf("1%% of 10 = %d", n)
	}
	if n := (apitypes.Canary{N: 5}).Of(3); n != 3 {
		t.Errorf("5 of 3 = %d", n)
	}
}

// A server created after the workspace's last succeeded rollout comes up
// on the old version and is brought to the target once, under an id made
// of the server and the version (so a restarted controller would ask for
// the same action); once there, a fresh controller leaves it alone.
func TestNewServerGetsTheTargetVersion(t *testing.T) {
	e := newEnv(t, 2)
	s := e.service("cp_a", nil)
	s.Start()
	ctx := context.Background()
	r, err := s.Create(ctx, "owner", e.ws, apitypes.CreateRollout{Version: vB, HealthWindowS: window(0)})
	if err != nil {
		t.Fatal(err)
	}
	r = e.wait(s, r.ID, "ended", ended)
	if r.State != apitypes.RolloutSucceeded {
		t.Fatalf("rollout %s %q", r.State, r.Reason)
	}
	now := time.Now().UTC().Add(time.Second) // after the rollout finished
	late := store.Server{ID: "srv_late", WorkspaceID: e.ws, Provider: "digitalocean", Name: "web-late", Region: "nyc3",
		Size: "s-1vcpu-1gb", Image: "debian-12", PortsJSON: "[22]", State: "online", AgentVersion: vA + " (commit abc)",
		AgentTimeoutS: 60, CreatedAt: now, UpdatedAt: now}
	if err := e.st.Q().CreateServer(ctx, late, nil); err != nil {
		t.Fatal(err)
	}
	s.poke()
	deadline := time.Now().Add(60 * time.Second)
	for {
		srv, err := e.st.Q().GetServer(ctx, e.ws, late.ID)
		if err != nil {
			t.Fatal(err)
		}
		if ReleaseOf(srv.AgentVersion) == vB {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new server stayed on %q", srv.AgentVersion)
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.Close()
	again := e.service("cp_b", nil)
	again.pass(ctx) // a fresh controller looks at the same fleet
	as, err := e.st.Q().ListActions(ctx, late.ID, "", 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(as) != 1 || as[0].ID != convergeID(late.ID, vB) {
		t.Errorf("the new server's actions: %+v, want one, %s", as, convergeID(late.ID, vB))
	}
	if n := e.fleet.updates()[late.ID]; n != 1 {
		t.Errorf("%d update requests for the new server, want 1 (on the target now, it is left alone)", n)
	}
	for _, id := range e.ids {
		if n := e.fleet.updates()[id]; n != 1 {
			t.Errorf("%s: %d update requests, want 1 (its rollout's)", id, n)
		}
	}
}
