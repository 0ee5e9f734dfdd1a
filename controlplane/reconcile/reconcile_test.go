package reconcile_test

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
	"github.com/devpilot/devpilot/controlplane/reconcile"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const token = "dop_v1_reconcile000000000000000000000000000000000000000000000000001"

type fixture struct {
	st   *store.Store
	sim  *dosim.Sim
	p    cloud.Provider
	r    *reconcile.Reconciler
	live reconcile.Live
}

func setup(t *testing.T) (*fixture, []string) {
	t.Helper()
	ctx := context.Background()
	f := &fixture{sim: dosim.New(dosim.Options{})}
	f.sim.AddToken(token, true)
	srv := httptest.NewServer(f.sim.Handler())
	t.Cleanup(func() { srv.Close(); f.sim.Close() })
	p, err := digitalocean.New(cloud.Config{Secret: secrets.New(token), BaseURL: srv.URL, MaxRetries: 1, MinWait: time.Millisecond, MaxWait: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	f.p = p
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "d.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	f.st = st
	now := time.Now().UTC()
	q := st.Q()
	if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := q.CreateIntegration(ctx, store.Integration{ID: "int_1", WorkspaceID: "ws_1", Provider: cloud.DigitalOcean, AccessKey: "do",
		SecretCiphertext: "x", SecretHint: "0001", Status: "valid", WriteAccess: "yes", CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, name := range []string{"a", "b"} {
		in, err := p.CreateInstance(ctx, cloud.InstanceSpec{Name: name, Region: "nyc3", Size: "s-1vcpu-1gb", Image: "debian-12-x64",
			Tags: []string{"devpilot", "devpilot-srv-srv_" + name}})
		if err != nil {
			t.Fatal(err)
		}
		if err := q.CreateServer(ctx, store.Server{ID: "srv_" + name, WorkspaceID: "ws_1", IntegrationID: "int_1", Provider: cloud.DigitalOcean,
			Name: name, Region: "nyc3", Size: "s-1vcpu-1gb", Image: "debian-12", PortsJSON: "[22]", State: "online", InstanceID: in.ID,
			AgentTimeoutS: 60, CreatedAt: now, UpdatedAt: now}, nil); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, in.ID)
	}
	f.live = reconcile.Live{Connected: true, LastSeen: now}
	f.r = reconcile.New(reconcile.Options{Store: st,
		Provider: func(context.Context, string, string) (cloud.Provider, error) { return f.p, nil },
		Live:     func(string) reconcile.Live { return f.live },
		Tags:     func(s store.Server) []string { return []string{"devpilot", "devpilot-srv-" + s.ID} },
		Firewall: func(s store.Server) (cloud.FirewallSpec, bool) {
			return cloud.FirewallSpec{Name: "fw-" + strings.TrimPrefix(s.ID, "srv_"), Tag: "devpilot-srv-" + s.ID, Ports: []int{22}}, true
		},
		FirewallEvery: 1,
	})
	return f, ids
}

func (f *fixture) state(t *testing.T, id string) (string, string) {
	t.Helper()
	s, err := f.st.Q().GetServer(context.Background(), "ws_1", id)
	if err != nil {
		t.Fatal(err)
	}
	r, _ := f.st.Q().ServerStateReason(context.Background(), id)
	return s.State, r
}

// A state changes only on its second sighting; lost and stopped say why;
// a removed tag is put back and audited; a revoked token makes every
// server of the integration unknown, saying so.
func TestPassesSeeTwiceBeforeChanging(t *testing.T) {
	f, ids := setup(t)
	ctx := context.Background()
	a, b := ids[0], ids[1]
	na, _ := strconv.Atoi(a)
	nb, _ := strconv.Atoi(b)

	f.sim.DeleteOutside(na)
	if _, err := f.sim.PowerOffOutside(ctx, nb); err != nil {
		t.Fatal(err)
	}
	f.r.Pass(ctx)
	if s, _ := f.state(t, "srv_a"); s != "online" {
		t.Errorf("after one pass srv_a is %s; one sighting must not change it", s)
	}
	f.r.Pass(ctx)
	if s, r := f.state(t, "srv_a"); s != "lost" || !strings.Contains(r, a) {
		t.Errorf("srv_a after two passes: %s %q, want lost naming the instance", s, r)
	}
	if s, r := f.state(t, "srv_b"); s != "stopped" || !strings.Contains(r, "powered off") {
		t.Errorf("srv_b after two passes: %s %q, want stopped", s, r)
	}

	// Tag drift on b.
	if !f.sim.UntagOutside(nb, "devpilot-srv-srv_b") {
		t.Fatal("untag")
	}
	f.r.Pass(ctx)
	for _, d := range f.sim.State().Droplets {
		if d.ID == nb && !slices.Contains(d.Tags, "devpilot-srv-srv_b") {
			t.Errorf("tag not put back: %v", d.Tags)
		}
	}
	es, err := f.st.Q().ListAudit(ctx, "ws_1", 0, 10)
	if err != nil || !slices.ContainsFunc(es, func(e store.AuditEntry) bool { return e.Action == "server.drift.tag" && e.Target == "srv_b" }) {
		t.Errorf("no drift audit entry: %+v %v", es, err)
	}

	// Revoked token: unknown after two passes, saying why.
	f.sim.RemoveToken(token)
	f.r.Pass(ctx)
	if s, _ := f.state(t, "srv_b"); s != "stopped" {
		t.Errorf("one failed list changed srv_b to %s", s)
	}
	f.r.Pass(ctx)
	if s, r := f.state(t, "srv_b"); s != "unknown" || !strings.Contains(r, "token") {
		t.Errorf("srv_b with a revoked token: %s %q, want unknown naming the token", s, r)
	}
}

// A running instance whose agent is silent is agent_offline, with how long.
func TestSilentAgentIsAgentOffline(t *testing.T) {
	f, _ := setup(t)
	ctx := context.Background()
	f.live = reconcile.Live{Connected: false, LastSeen: time.Now().Add(-time.Minute)}
	f.r.Pass(ctx)
	f.r.Pass(ctx)
	s, r := f.state(t, "srv_a")
	if s != "agent_offline" || !strings.Contains(r, "silent for 1m") {
		t.Errorf("srv_a: %s %q, want agent_offline silent for 1m", s, r)
	}
	f.live = reconcile.Live{Connected: true, LastSeen: time.Now()}
	f.r.Pass(ctx)
	f.r.Pass(ctx)
	if s, _ := f.state(t, "srv_a"); s != "online" {
		t.Errorf("srv_a after the agent came back: %s", s)
	}
}

// A firewall rule added outside Devpilot is removed again, and the audit
// log says so; an untouched firewall is left alone and not audited.
func TestFirewallDriftIsRepaired(t *testing.T) {
	f, _ := setup(t)
	ctx := context.Background()
	f.r.Pass(ctx) // creates fw-a and fw-b (the spec's ports) the first time
	var fw string
	for _, x := range f.sim.State().Firewalls {
		if x.Name == "fw-a" {
			fw = x.ID
		}
	}
	if fw == "" {
		t.Fatalf("no firewall fw-a: %+v", f.sim.State().Firewalls)
	}
	audits := func() int {
		es, _ := f.st.Q().ListAudit(ctx, "ws_1", 0, 100)
		n := 0
		for _, e := range es {
			if e.Action == "server.drift.firewall" && e.Target == "srv_a" {
				n++
			}
		}
		return n
	}
	before := audits()
	f.r.Pass(ctx)
	if audits() != before {
		t.Error("an untouched firewall was audited as drift")
	}
	if !f.sim.AddInboundOutside(fw, 3306) {
		t.Fatal("add rule outside")
	}
	f.r.Pass(ctx)
	for _, x := range f.sim.State().Firewalls {
		if x.ID == fw && !slices.Equal(x.InboundPorts, []string{"tcp/22"}) {
			t.Errorf("firewall after repair: %v, want only tcp/22", x.InboundPorts)
		}
	}
	if audits() != before+1 {
		t.Errorf("repair audited %d times, want once", audits()-before)
	}
}
