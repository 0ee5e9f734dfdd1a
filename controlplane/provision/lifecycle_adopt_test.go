package provision

import (
	"context"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
)

// The narrowest crash window of a cloud step: the cloud accepted the
// action, the control plane died before recording its id. The resumed step
// finds that action on the droplet and waits for it instead of starting a
// second one; a step whose cloud call never landed does start one.
func TestResumedStepAdoptsTheCloudAction(t *testing.T) {
	ctx := context.Background()
	sim := dosim.New(dosim.Options{})
	const tok = "dop_v1_adopt0000000000000000000000000000000000000000000000000000001"
	sim.AddToken(tok, true)
	hs := httptest.NewServer(sim.Handler())
	t.Cleanup(func() { hs.Close(); sim.Close() })
	p, err := digitalocean.New(cloud.Config{Secret: secrets.New(tok), BaseURL: hs.URL, MaxRetries: 1, MinWait: time.Millisecond, MaxWait: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	in, err := p.CreateInstance(ctx, cloud.InstanceSpec{Name: "a", Region: "nyc3", Size: "s-1vcpu-1gb", Image: "debian-12-x64"})
	if err != nil {
		t.Fatal(err)
	}
	droplet, _ := strconv.Atoi(in.ID)

	st, err := store.Open(ctx, storetest.Database(t), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	s := New(Options{Store: st, PollInterval: 10 * time.Millisecond})
	now := time.Now().UTC()
	q := st.Q()
	if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "d", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := q.CreateServer(ctx, store.Server{ID: "srv_a", WorkspaceID: "ws_1", Provider: cloud.DigitalOcean, Name: "a", Region: "nyc3",
		Size: "s-1vcpu-1gb", Image: "debian-12", PortsJSON: "[22]", State: StateOnline, InstanceID: in.ID, AgentTimeoutS: 60,
		CreatedAt: now, UpdatedAt: now}, nil); err != nil {
		t.Fatal(err)
	}

	run := func(id string, callFirst bool) map[string]int {
		t.Helper()
		a := store.ServerAction{ID: id, WorkspaceID: "ws_1", ServerID: "srv_a", Type: apitypes.ActionReboot, ParamsJSON: `{"hard":true}`,
			State: apitypes.ActionRunning, StepsJSON: "[]", CreatedBy: "t", CreatedAt: time.Now().UTC(), UpdatedAt: time.Now().UTC()}
		if err := q.CreateAction(ctx, a); err != nil {
			t.Fatal(err)
		}
		if ok, err := q.LeaseAction(ctx, id, s.owner, s.now(), s.now().Add(time.Minute)); !ok || err != nil {
			t.Fatalf("lease: %v %v", ok, err)
		}
		started := s.now().UTC()
		j := &actionJob{s: s, a: a, p: actionParams{Hard: true}, cloud: p, lc: p, log: s.log,
			srv:   store.Server{ID: "srv_a", InstanceID: in.ID, Provider: cloud.DigitalOcean, IntegrationID: "int_1"},
			steps: []actionStep{{Name: ActStepReboot, State: StepRunning, StartedAt: &started}, {Name: ActStepWaitBoot, State: StepPending}}}
		if callFirst { // the crashed run's call, which landed
			if _, err := p.Power(ctx, in.ID, cloud.PowerCycle); err != nil {
				t.Fatal(err)
			}
		}
		if err := j.step(ctx, 0); err != nil {
			t.Fatal(err)
		}
		if j.steps[0].Ref == nil {
			t.Fatal("no cloud action recorded")
		}
		if err := j.step(ctx, 1); err != nil {
			t.Fatal(err)
		}
		now := s.now().UTC()
		j.a.State, j.a.FinishedAt = apitypes.ActionSucceeded, &now
		if err := j.save(ctx); err != nil {
			t.Fatal(err)
		}
		return sim.ActionCounts(droplet)
	}
	if n := run("act_1", true)["power_cycle"]; n != 1 {
		t.Errorf("resumed after a landed call: %d power_cycle actions, want 1 (adopted)", n)
	}
	if n := run("act_2", false)["power_cycle"]; n != 2 {
		t.Errorf("resumed after a call that never landed: %d power_cycle actions in all, want 2 (one new)", n)
	}
}
