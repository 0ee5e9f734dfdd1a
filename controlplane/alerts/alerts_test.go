package alerts_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/controlplane/alerts"
	"github.com/devpilot/devpilot/controlplane/events"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a settable time.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

type env struct {
	st  *store.Store
	ws  string
	clk *clock
	svc *alerts.Service
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, storetest.Database(t), filepath.Join(t.TempDir(), "devpilot.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	clk := &clock{t: time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)}
	ws := store.Workspace{ID: "ws_test", Slug: "default", Name: "Default", CreatedAt: clk.now()}
	if err := st.Q().CreateWorkspace(ctx, ws); err != nil {
		t.Fatal(err)
	}
	return &env{st: st, ws: ws.ID, clk: clk, svc: alerts.New(alerts.Options{Store: st, Now: clk.now})}
}

func (e *env) server(t *testing.T, id, state string) {
	t.Helper()
	now := e.clk.now()
	if err := e.st.Q().CreateServer(context.Background(), store.Server{ID: id, WorkspaceID: e.ws, Provider: "digitalocean",
		Name: "srv-" + id, State: state, PortsJSON: "[]", LastSeenAt: &now, CreatedAt: now, UpdatedAt: now}, nil); err != nil {
		t.Fatal(err)
	}
}

func (e *env) setState(t *testing.T, id, state string) {
	t.Helper()
	if _, err := e.st.Q().SetServerState(context.Background(), id, state, e.clk.now(),
		"online", "offline", "agent_offline", "lost", "stopped", "unknown"); err != nil {
		t.Fatal(err)
	}
}

func (e *env) sample(t *testing.T, id string, cpu float64) {
	t.Helper()
	if err := e.st.Q().AddHealthPoint(context.Background(), id, store.HealthPoint{At: e.clk.now(), CPUPercent: cpu,
		MemUsedMB: 100, MemTotalMB: 1000, DiskUsedMB: 10, DiskTotalMB: 100}); err != nil {
		t.Fatal(err)
	}
}

func (e *env) eval(t *testing.T) {
	t.Helper()
	if err := e.svc.Evaluate(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func (e *env) events(t *testing.T) []events.Event {
	t.Helper()
	evs, err := e.st.Q().EventsAfter(context.Background(), e.ws, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []events.Event
	for _, ev := range evs {
		if ev.Type == events.AlertFiring || ev.Type == events.AlertResolved {
			out = append(out, ev)
		}
	}
	return out
}

func (e *env) state(t *testing.T, rule, server string) string {
	t.Helper()
	st, err := e.st.Q().AlertState(context.Background(), rule, server)
	if errors.Is(err, store.ErrNotFound) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return st.State
}

func pct(v float64) *float64 { return &v }

// TestOfflineFiresAfterDurationAndResolves: an offline server is pending
// until it was offline for the rule's duration, then fires once
// (alert.firing with rule, server, value and since), and resolves once
// it is back (alert.resolved).
func TestOfflineFiresAfterDurationAndResolves(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	e.server(t, "srv_a", "online")
	rule, err := e.svc.CreateRule(ctx, "test", e.ws, alerts.Rule{Name: "down", Kind: alerts.KindOffline, ForS: 10})
	if err != nil {
		t.Fatal(err)
	}
	e.eval(t)
	if s := e.state(t, rule.ID, "srv_a"); s != "" {
		t.Fatalf("online server: state %q", s)
	}
	wentOffline := e.clk.now()
	e.setState(t, "srv_a", "offline")
	e.clk.add(4 * time.Second)
	e.eval(t)
	if s := e.state(t, rule.ID, "srv_a"); s != alerts.StatePending {
		t.Fatalf("offline 4 s of 10: state %q, want pending", s)
	}
	if n := len(e.events(t)); n != 0 {
		t.Fatalf("%d alert events while pending", n)
	}
	e.clk.add(7 * time.Second)
	e.eval(t)
	e.eval(t) // a second pass (or control plane) changes nothing
	evs := e.events(t)
	if len(evs) != 1 || evs[0].Type != events.AlertFiring || evs[0].Subject != "srv_a" {
		t.Fatalf("events %+v, want one alert.firing on srv_a", evs)
	}
	var d struct {
		Rule, Server string
		Value        float64
		Since        time.Time
	}
	if err := json.Unmarshal(evs[0].Data, &d); err != nil || d.Rule != rule.ID || d.Server != "srv_a" ||
		!d.Since.Equal(wentOffline) || d.Value < 10 {
		t.Errorf("payload %s (%v), want rule %s, server srv_a, since %v, value ≥ 10", evs[0].Data, err, rule.ID, wentOffline)
	}
	firing, err := e.svc.Alerts(ctx, e.ws, alerts.StateFiring)
	if err != nil || len(firing) != 1 || firing[0].ServerName != "srv-srv_a" || firing[0].Message == "" {
		t.Errorf("firing alerts %+v %v", firing, err)
	}
	e.setState(t, "srv_a", "online")
	e.clk.add(time.Second)
	e.eval(t)
	e.eval(t)
	evs = e.events(t)
	if len(evs) != 2 || evs[1].Type != events.AlertResolved {
		t.Fatalf("events %+v, want alert.firing then alert.resolved", evs)
	}
	if s := e.state(t, rule.ID, "srv_a"); s != alerts.StateResolved {
		t.Errorf("state %q, want resolved", s)
	}
	// Offline again: a new alert, from pending.
	e.setState(t, "srv_a", "agent_offline")
	e.eval(t)
	if s := e.state(t, rule.ID, "srv_a"); s != alerts.StatePending {
		t.Errorf("offline again: state %q, want pending", s)
	}
}

// TestOfflineBackBeforeDurationNeverFires: a server offline for less than
// the duration (a missed heartbeat or two, a restart) never fires.
func TestOfflineBackBeforeDurationNeverFires(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.server(t, "srv_a", "online")
	rule, err := e.svc.CreateRule(context.Background(), "test", e.ws, alerts.Rule{Name: "down", Kind: alerts.KindOffline, ForS: 30})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		e.setState(t, "srv_a", "offline")
		e.clk.add(20 * time.Second)
		e.eval(t)
		e.setState(t, "srv_a", "online")
		e.clk.add(time.Second)
		e.eval(t)
	}
	if evs := e.events(t); len(evs) != 0 {
		t.Errorf("flapping under the duration fired: %+v", evs)
	}
	if s := e.state(t, rule.ID, "srv_a"); s != "" {
		t.Errorf("state %q, want none", s)
	}
}

// TestCPUFiresOnlyWhenEverySampleThroughTheDurationIsHigh: one low sample
// restarts the count; one high sample never fires; a stale history (the
// agent silent) resolves.
func TestCPUFiresOnlyWhenEverySampleThroughTheDurationIsHigh(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.server(t, "srv_a", "online")
	e.server(t, "srv_b", "online")
	rule, err := e.svc.CreateRule(context.Background(), "test", e.ws, alerts.Rule{Name: "hot", Kind: alerts.KindCPU,
		ThresholdPercent: pct(80), ForS: 10, Tag: "devpilot-srv-srv_a"})
	if err != nil {
		t.Fatal(err)
	}
	for _, cpu := range []float64{95, 95, 95, 20, 95, 95, 95, 95, 95} {
		e.sample(t, "srv_a", cpu)
		e.sample(t, "srv_b", 99) // not tagged: never considered
		e.eval(t)
		if n := len(e.events(t)); n != 0 {
			t.Fatalf("fired with cpu %v before 10 s of high samples", cpu)
		}
		e.clk.add(2 * time.Second)
	}
	e.sample(t, "srv_a", 95)
	e.eval(t)
	evs := e.events(t)
	if len(evs) != 1 || evs[0].Type != events.AlertFiring || evs[0].Subject != "srv_a" {
		t.Fatalf("events %+v, want one alert.firing on srv_a", evs)
	}
	if s := e.state(t, rule.ID, "srv_b"); s != "" {
		t.Errorf("untagged server has state %q", s)
	}
	// No sample for longer than StaleAfter: nothing says it is still hot.
	e.clk.add(3 * time.Minute)
	e.eval(t)
	if evs := e.events(t); len(evs) != 2 || evs[1].Type != events.AlertResolved {
		t.Errorf("events %+v, want the alert resolved once the history went stale", evs)
	}
}

// TestSeveralEvaluatorsFireOnce: evaluators of several control planes on
// one database make one transition and one event between them.
func TestSeveralEvaluatorsFireOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.server(t, "srv_a", "online")
	if _, err := e.svc.CreateRule(context.Background(), "test", e.ws, alerts.Rule{Name: "down", Kind: alerts.KindOffline, ForS: 5}); err != nil {
		t.Fatal(err)
	}
	e.setState(t, "srv_a", "offline")
	e.clk.add(6 * time.Second)
	var wg sync.WaitGroup
	for range 4 {
		svc := alerts.New(alerts.Options{Store: e.st, Now: e.clk.now})
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := svc.Evaluate(context.Background()); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if evs := e.events(t); len(evs) != 1 {
		t.Errorf("%d alert events from 4 evaluators, want 1", len(evs))
	}
}

// TestDeletingAFiringRuleResolvesIt: the rule's firing alerts resolve with
// the reason, and nothing of it is left.
func TestDeletingAFiringRuleResolvesIt(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	e.server(t, "srv_a", "offline")
	rule, err := e.svc.CreateRule(ctx, "test", e.ws, alerts.Rule{Name: "down", Kind: alerts.KindOffline, ForS: 1})
	if err != nil {
		t.Fatal(err)
	}
	e.clk.add(2 * time.Second)
	e.eval(t)
	if err := e.svc.DeleteRule(ctx, "test", e.ws, rule.ID); err != nil {
		t.Fatal(err)
	}
	evs := e.events(t)
	if len(evs) != 2 || evs[1].Type != events.AlertResolved {
		t.Fatalf("events %+v, want firing then resolved", evs)
	}
	if all, _ := e.svc.Alerts(ctx, e.ws, ""); len(all) != 0 {
		t.Errorf("alerts left after the rule's deletion: %+v", all)
	}
}

// TestRulesAreValidatedAtTheDoor: each bad input is a validation error
// whose hint names what is valid.
func TestRulesAreValidatedAtTheDoor(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		r    alerts.Rule
	}{
		{"no name", alerts.Rule{Kind: "offline", ForS: 60}},
		{"unknown kind", alerts.Rule{Name: "x", Kind: "temperature", ForS: 60}},
		{"no duration", alerts.Rule{Name: "x", Kind: "offline"}},
		{"duration too long", alerts.Rule{Name: "x", Kind: "offline", ForS: alerts.MaxForS + 1}},
		{"threshold on offline", alerts.Rule{Name: "x", Kind: "offline", ForS: 60, ThresholdPercent: pct(50)}},
		{"no threshold on cpu", alerts.Rule{Name: "x", Kind: "cpu", ForS: 60}},
		{"threshold above 100", alerts.Rule{Name: "x", Kind: "disk", ForS: 60, ThresholdPercent: pct(101)}},
		{"unknown tag", alerts.Rule{Name: "x", Kind: "offline", ForS: 60, Tag: "web"}},
	} {
		_, err := e.svc.CreateRule(ctx, "test", e.ws, tc.r)
		var pe *problem.Error
		if !errors.As(err, &pe) || pe.Code != "validation_failed" || pe.Hint == "" {
			t.Errorf("%s: %v, want validation_failed with a hint", tc.name, err)
		}
	}
	if _, err := e.svc.CreateRule(ctx, "test", e.ws, alerts.Rule{Name: "x", Kind: "offline", ForS: 60}); err != nil {
		t.Fatal(err)
	}
	_, err := e.svc.CreateRule(ctx, "test", e.ws, alerts.Rule{Name: "x", Kind: "offline", ForS: 60})
	var pe *problem.Error
	if !errors.As(err, &pe) || pe.Code != "conflict" {
		t.Errorf("a taken name: %v, want conflict", err)
	}
}

// TestFiringGaugeHasASeriesPerRule: devpilot_alerts_firing has a series
// for every rule, 0 while it fires nowhere (so Prometheus can alert on
// `> 0` and graph a rule that stopped firing), the count of its servers
// while it fires, and none once the rule is deleted.
func TestFiringGaugeHasASeriesPerRule(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	reg := prometheus.NewRegistry()
	e.svc = alerts.New(alerts.Options{Store: e.st, Now: e.clk.now, Registerer: reg})
	ctx := context.Background()
	e.server(t, "srv_a", "online")
	e.server(t, "srv_b", "online")
	rule, err := e.svc.CreateRule(ctx, "test", e.ws, alerts.Rule{Name: "down", Kind: alerts.KindOffline, ForS: 1})
	if err != nil {
		t.Fatal(err)
	}
	firing := func() (float64, int) {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() != "devpilot_alerts_firing" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "rule" && l.GetValue() == rule.ID {
						return m.GetGauge().GetValue(), len(mf.GetMetric())
					}
				}
			}
			return -1, len(mf.GetMetric())
		}
		return -1, 0
	}
	e.eval(t)
	if v, n := firing(); v != 0 || n != 1 {
		t.Fatalf("a quiet rule: gauge %v (%d series), want 0 (1 series)", v, n)
	}
	e.setState(t, "srv_a", "offline")
	e.setState(t, "srv_b", "offline")
	e.clk.add(2 * time.Second)
	e.eval(t)
	if v, _ := firing(); v != 2 {
		t.Fatalf("firing on two servers: gauge %v, want 2", v)
	}
	e.setState(t, "srv_a", "online")
	e.setState(t, "srv_b", "online")
	e.eval(t)
	if v, n := firing(); v != 0 || n != 1 {
		t.Fatalf("resolved: gauge %v (%d series), want 0 (1 series)", v, n)
	}
	if err := e.svc.DeleteRule(ctx, "test", e.ws, rule.ID); err != nil {
		t.Fatal(err)
	}
	e.eval(t)
	if v, n := firing(); n != 0 {
		t.Errorf("deleted rule: gauge %v in %d series, want no series", v, n)
	}
}
