package integrations_test

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/events"
	"github.com/devpilot/devpilot/controlplane/integrations"
	"github.com/devpilot/devpilot/controlplane/secrets"
)

// control sends a request to a simulator's control API.
func control(t *testing.T, method, url string, body any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, err := http.NewRequest(method, url, strings.NewReader(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s: %d", method, url, resp.StatusCode)
	}
}

// waitStatus polls the integration until its status is want.
func waitStatus(t *testing.T, e *env, id, want string, within time.Duration) *integrations.Integration {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got, err := e.svc.Get(context.Background(), e.ws, id)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status == want {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("integration %s still %q after %s, want %q (last error %+v)", id, got.Status, within, want, got.LastError)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// statusEvents are the integration.* events of the workspace, by type.
func statusEvents(t *testing.T, e *env, id string) map[string]int {
	t.Helper()
	evs, err := e.st.Q().EventsAfter(context.Background(), e.ws, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	n := map[string]int{}
	for _, ev := range evs {
		if ev.Subject == id && strings.HasPrefix(ev.Type, "integration.") {
			n[ev.Type]++
			if strings.Contains(string(ev.Data), doToken) || strings.Contains(string(ev.Data), vultrKey) {
				t.Errorf("event %s carries the secret: %s", ev.Type, ev.Data)
			}
		}
	}
	return n
}

// TestRevokedCredentialTurnsInvalidInOneCheck: a token revoked through the
// simulator's control API (as in the provider's panel) turns the
// integration invalid at the next background check, with the typed
// error's code and hint and one integration.invalid event; restored, it
// turns valid again with one integration.valid.
func TestRevokedCredentialTurnsInvalidInOneCheck(t *testing.T) {
	t.Parallel()
	for _, provider := range []string{cloud.DigitalOcean, cloud.Vultr} {
		t.Run(provider, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			reg := prometheus.NewRegistry()
			e := newEnv(t, func(o *integrations.Options) { o.CheckInterval, o.Registerer = 300*time.Millisecond, reg })
			secret := doToken
			revoke := func() { control(t, "DELETE", e.doURL+"/_sim/tokens", map[string]string{"token": doToken}) }
			restore := func() {
				control(t, "POST", e.doURL+"/_sim/tokens", map[string]any{"token": doToken, "read_write": true})
			}
			if provider == cloud.Vultr {
				secret = vultrKey
				revoke = func() { control(t, "DELETE", e.vultURL+"/_sim/keys", map[string]string{"key": vultrKey}) }
				restore = func() {
					control(t, "POST", e.vultURL+"/_sim/keys", map[string]any{"key": vultrKey, "name": "Owner", "email": "owner@example.com"})
				}
			}
			in, err := e.svc.Connect(ctx, "test", e.ws, provider, "main", secrets.New(secret))
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			e.svc.StartChecks()
			defer e.svc.CloseChecks()

			revoke()
			got := waitStatus(t, e, in.ID, integrations.StatusInvalid, 20*time.Second)
			if got.LastError == nil || got.LastError.Code != string(cloud.CodeInvalidCredentials) || got.LastError.Hint == "" {
				t.Errorf("last_error = %+v, want invalid_credentials with a hint", got.LastError)
			}
			if n := statusEvents(t, e, in.ID); n[events.IntegrationInvalid] != 1 {
				t.Errorf("events %v, want one %s", n, events.IntegrationInvalid)
			}
			restore()
			waitStatus(t, e, in.ID, integrations.StatusValid, 20*time.Second)
			// More checks pass while it stays valid: no more events.
			before := testutil.ToFloat64(e.checksTotal(t, reg, integrations.OutcomeValid))
			deadline := time.Now().Add(20 * time.Second)
			for testutil.ToFloat64(e.checksTotal(t, reg, integrations.OutcomeValid)) < before+2 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if n := statusEvents(t, e, in.ID); n[events.IntegrationInvalid] != 1 || n[events.IntegrationValid] != 1 {
				t.Errorf("events %v, want one %s and one %s (only on transitions)", n, events.IntegrationInvalid, events.IntegrationValid)
			}
			if v := testutil.ToFloat64(e.checksTotal(t, reg, integrations.OutcomeInvalid)); v < 1 {
				t.Errorf("devpilot_integration_checks_total{outcome=invalid} = %v, want ≥ 1", v)
			}
		})
	}
}

func (e *env) checksTotal(t *testing.T, reg *prometheus.Registry, outcome string) prometheus.Collector {
	t.Helper()
	return &gathered{reg: reg, name: "devpilot_integration_checks_total", label: outcome}
}

// gathered is one series of a registry, as a collector testutil reads.
type gathered struct {
	reg         *prometheus.Registry
	name, label string
}

func (g *gathered) Describe(ch chan<- *prometheus.Desc) {}
func (g *gathered) Collect(ch chan<- prometheus.Metric) {
	v := 0.0
	mfs, _ := g.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() != g.name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == g.label {
					v = m.GetCounter().GetValue()
				}
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(prometheus.NewDesc(g.name, "", nil, nil), prometheus.CounterValue, v)
}

// TestProviderTroubleIsNoVerdictInTheBackground: 5xx and 429 during
// background checks leave the integration valid and emit nothing.
func TestProviderTroubleIsNoVerdictInTheBackground(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	e := newEnv(t, func(o *integrations.Options) { o.CheckInterval, o.Registerer = time.Hour, reg })
	in, err := e.svc.Connect(ctx, "test", e.ws, cloud.DigitalOcean, "main", secrets.New(doToken))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []map[string]any{
		{"server_errors": map[string]int{"requests": 50, "status": 503}},
		{"rate_limit": map[string]int{"requests": 50, "retry_after_s": 60}},
	} {
		fault(t, e.doURL, f)
		if err := e.st.Q().ScheduleIntegrationCheck(ctx, in.ID, time.Now().Add(-time.Second)); err != nil {
			t.Fatal(err)
		}
		if n := e.svc.CheckDue(ctx); n != 1 {
			t.Fatalf("checked %d, want 1", n)
		}
		fault(t, e.doURL, map[string]any{"server_errors": map[string]int{"requests": 0}, "rate_limit": map[string]int{"requests": 0}})
	}
	if got, _ := e.svc.Get(ctx, e.ws, in.ID); got.Status != integrations.StatusValid {
		t.Errorf("status %q after provider trouble, want valid", got.Status)
	}
	if n := statusEvents(t, e, in.ID); len(n) != 0 {
		t.Errorf("events %v after provider trouble, want none", n)
	}
	if v := testutil.ToFloat64(e.checksTotal(t, reg, integrations.OutcomeInconclusive)); v != 2 {
		t.Errorf("inconclusive checks = %v, want 2", v)
	}
}

// TestRefusedCallTriggersACheck: with the next check hours away, a
// provider call answering 401 re-validates at once.
func TestRefusedCallTriggersACheck(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, func(o *integrations.Options) { o.CheckInterval = 6 * time.Hour })
	in, err := e.svc.Connect(ctx, "test", e.ws, cloud.Vultr, "main", secrets.New(vultrKey))
	if err != nil {
		t.Fatal(err)
	}
	e.svc.StartChecks()
	defer e.svc.CloseChecks()
	control(t, "DELETE", e.vultURL+"/_sim/keys", map[string]string{"key": vultrKey})
	p, err := e.svc.Provider(ctx, e.ws, in.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.ListInstances(ctx, "devpilot"); err == nil {
		t.Fatal("listing instances with a revoked key succeeded")
	}
	waitStatus(t, e, in.ID, integrations.StatusInvalid, 20*time.Second)
	if n := statusEvents(t, e, in.ID); n[events.IntegrationInvalid] != 1 {
		t.Errorf("events %v, want one %s", n, events.IntegrationInvalid)
	}
}

// TestOneControlPlaneChecksEachDueIntegration: two services on one
// database check a due integration once between them.
func TestOneControlPlaneChecksEachDueIntegration(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t, func(o *integrations.Options) { o.CheckInterval = time.Hour })
	var ids []string
	for _, label := range []string{"a", "b", "c"} {
		in, err := e.svc.Connect(ctx, "test", e.ws, cloud.DigitalOcean, label, secrets.New(doToken))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, in.ID)
	}
	for _, id := range ids {
		if err := e.st.Q().ScheduleIntegrationCheck(ctx, id, time.Now().Add(-time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	other := integrations.New(e.opts)
	var wg sync.WaitGroup
	counts := make([]int, 2)
	for i, svc := range []*integrations.Service{e.svc, other} {
		wg.Add(1)
		go func() { defer wg.Done(); counts[i] = svc.CheckDue(ctx) }()
	}
	wg.Wait()
	if counts[0]+counts[1] != len(ids) {
		t.Errorf("checked %v, want %d in all (each once)", counts, len(ids))
	}
	due, err := e.st.Q().DueIntegrations(ctx, time.Now(), 10)
	if err != nil || len(due) != 0 {
		t.Errorf("still due after the pass: %d %v", len(due), err)
	}
}
