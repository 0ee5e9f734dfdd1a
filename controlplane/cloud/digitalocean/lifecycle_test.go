package digitalocean

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/cloud/contract"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
	"github.com/devpilot/devpilot/controlplane/secrets"
)

// powerRuntime records what the simulator asks a Runtime to do.
type powerRuntime struct {
	mu  sync.Mutex
	ops []string // "boot 1", "off 1", "on 1", "destroy 1"
}

func (r *powerRuntime) add(op string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, op)
}

func (r *powerRuntime) Boot(_ context.Context, m simrun.Machine) error {
	r.add("boot " + m.ID)
	return nil
}
func (r *powerRuntime) Destroy(_ context.Context, id string) error {
	r.add("destroy " + id)
	return nil
}
func (r *powerRuntime) PowerOff(_ context.Context, id string) error {
	r.add("off " + id)
	return nil
}
func (r *powerRuntime) PowerOn(_ context.Context, id string) error { r.add("on " + id); return nil }

func (r *powerRuntime) count(op string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, o := range r.ops {
		if o == op {
			n++
		}
	}
	return n
}

// lifecycleOperations is every operation the lifecycle methods call.
var lifecycleOperations = []string{
	"POST /v2/droplets/{droplet_id}/actions",
	"GET /v2/droplets/{droplet_id}/actions",
	"GET /v2/actions/{action_id}",
	"GET /v2/tags",
	"DELETE /v2/tags/{tag_id}",
	"POST /v2/tags/{tag_id}/resources",
	"DELETE /v2/droplets",
	"POST /v2/firewalls/{firewall_id}/droplets",
	"DELETE /v2/firewalls/{firewall_id}/droplets",
}

// TestLifecycleContract drives every lifecycle call through godo against
// the simulator behind the contract checker: each action shows
// in-progress, then completed, the droplet's state and size follow, the
// Runtime is told to stop and start the machine, refusals map to typed
// errors, and every new operation is spec-clean.
func TestLifecycleContract(t *testing.T) {
	t.Parallel()
	rt := &powerRuntime{}
	sim := dosim.New(dosim.Options{Logger: zap.NewNop(), Runtime: rt})
	sim.AddToken(rwToken, true)
	sim.AddToken(roToken, false)
	sim.SetActionDelay(time.Hour) // held in progress until wait releases them
	h, rec := contract.DigitalOcean(t).Middleware(sim.Handler())
	srv := httptest.NewServer(h)
	t.Cleanup(func() { srv.Close(); sim.Close() })
	mk := func(tok string) *Provider {
		tr := &http.Transport{}
		t.Cleanup(tr.CloseIdleConnections)
		p, err := New(cloud.Config{Secret: secrets.New(tok), BaseURL: srv.URL, Base: tr, MaxRetries: 2, MinWait: time.Millisecond, MaxWait: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		p.perPage = 2
		return p
	}
	p, ro := mk(rwToken), mk(roToken)
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	poller := cloud.NewActionPoller(20 * time.Millisecond)
	wait := func(r cloud.ActionRef) {
		t.Helper()
		st, err := p.Action(ctx, r)
		must(err)
		if st.State != cloud.ActionInProgress {
			t.Errorf("%s: first poll %s, want in-progress", r.Type, st.State)
		}
		sim.SetActionDelay(0)
		defer sim.SetActionDelay(time.Hour)
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		st, err = poller.Wait(wctx, p, "int_1", r)
		must(err)
		if st.State != cloud.ActionCompleted {
			t.Fatalf("%s: %s, want completed", r.Type, st.State)
		}
	}
	state := func(id string) *cloud.Instance {
		t.Helper()
		in, err := p.GetInstance(ctx, id)
		must(err)
		return in
	}

	fw, err := p.EnsureFirewall(ctx, cloud.FirewallSpec{Name: "fw-l", Tag: "devpilot-l", Ports: []int{22}})
	must(err)
	in, err := p.CreateInstance(ctx, cloud.InstanceSpec{Name: "l-1", Region: "nyc3", Size: "s-1vcpu-1gb", Image: "debian-12-x64", Tags: []string{"devpilot-l"}})
	must(err)
	for deadline := time.Now().Add(time.Minute); state(in.ID).State != cloud.StateActive; {
		if time.Now().After(deadline) {
			t.Fatal("droplet never active")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Graceful reboot, then a hard one: the machine goes off and on each time.
	for _, a := range []string{cloud.PowerReboot, cloud.PowerCycle} {
		r, err := p.Power(ctx, in.ID, a)
		must(err)
		if r.ID == "" || r.Instance != in.ID || r.Type != a {
			t.Fatalf("ref = %+v", r)
		}
		// A second action while one is pending is refused.
		if _, err := p.Power(ctx, in.ID, cloud.PowerOff); cloud.CodeOf(err) != cloud.CodeValidation {
			t.Errorf("action during %s: %v, want validation_failed", a, err)
		}
		wait(r)
	}
	if got := rt.count("off " + in.ID); got != 2 {
		t.Errorf("runtime powered off %d times, want 2", got)
	}
	if got := rt.count("on " + in.ID); got != 2 {
		t.Errorf("runtime powered on %d times, want 2", got)
	}

	// Resize needs the droplet off: refused while on.
	if _, err := p.Resize(ctx, in.ID, "s-2vcpu-2gb"); cloud.CodeOf(err) != cloud.CodeValidation {
		t.Errorf("resize while on: %v, want validation_failed", err)
	}
	r, err := p.Power(ctx, in.ID, cloud.PowerShutdown)
	must(err)
	wait(r)
	if s := state(in.ID).State; s != cloud.StateOff {
		t.Fatalf("after shutdown: %s, want off", s)
	}
	if _, err := p.Power(ctx, in.ID, cloud.PowerOff); cloud.CodeOf(err) != cloud.CodeValidation {
		t.Errorf("power_off when off: %v, want validation_failed", err)
	}
	r, err = p.Resize(ctx, in.ID, "s-2vcpu-2gb")
	must(err)
	wait(r)
	if sz := state(in.ID).Size; sz != "s-2vcpu-2gb" {
		t.Errorf("size after resize = %s", sz)
	}
	if _, err := p.Resize(ctx, in.ID, "s-1vcpu-1gb"); cloud.CodeOf(err) != cloud.CodeValidation {
		t.Errorf("resize to a smaller disk: %v, want validation_failed", err)
	}
	r, err = p.Power(ctx, in.ID, cloud.PowerOn)
	must(err)
	wait(r)
	if s := state(in.ID).State; s != cloud.StateActive {
		t.Fatalf("after power_on: %s, want active", s)
	}
	r, err = p.Rename(ctx, in.ID, "l-2")
	must(err)
	wait(r)
	if n := state(in.ID).Name; n != "l-2" {
		t.Errorf("name after rename = %s", n)
	}
	if _, err := p.Rename(ctx, in.ID, "bad name!"); cloud.CodeOf(err) != cloud.CodeValidation {
		t.Errorf("bad name: %v", err)
	}
	if _, err := ro.Power(ctx, in.ID, cloud.PowerReboot); cloud.CodeOf(err) != cloud.CodeInsufficientScope {
		t.Errorf("read-only token reboot: %v, want insufficient_scope", err)
	}
	if _, err := p.Power(ctx, "999", cloud.PowerReboot); cloud.CodeOf(err) != cloud.CodeNotFound {
		t.Errorf("reboot missing droplet: %v, want not_found", err)
	}
	r, err = p.Snapshot(ctx, in.ID, "before-tags")
	must(err)
	wait(r)
	acts, err := p.ListActions(ctx, in.ID)
	must(err)
	var types []string
	for _, a := range acts {
		types = append(types, a.Type)
	}
	want := []string{"create", "reboot", "power_cycle", "shutdown", "resize", "power_on", "rename", "snapshot"}
	if !slices.Equal(types, want) {
		t.Errorf("droplet actions = %v, want %v", types, want)
	}
	counts := sim.ActionCounts(mustAtoi(t, in.ID))
	for _, typ := range want {
		if counts[typ] != 1 {
			t.Errorf("simulator counted %d %s actions, want 1 (%v)", counts[typ], typ, counts)
		}
	}

	// Tags: a removed Devpilot tag is put back; list and delete.
	if !sim.UntagOutside(mustAtoi(t, in.ID), "devpilot-l") {
		t.Fatal("untag outside")
	}
	must(p.Tag(ctx, in.ID, "devpilot-l"))
	must(p.Tag(ctx, in.ID, "devpilot-l"))
	if tags := state(in.ID).Tags; !slices.Contains(tags, "devpilot-l") {
		t.Errorf("tags after Tag = %v", tags)
	}
	tags, err := p.Tags(ctx)
	must(err)
	if !slices.Contains(tags, "devpilot-l") {
		t.Errorf("tags = %v", tags)
	}
	must(p.Tag(ctx, in.ID, "extra"))
	must(p.DeleteTag(ctx, "extra"))
	must(p.DeleteTag(ctx, "extra"))
	if tags := state(in.ID).Tags; slices.Contains(tags, "extra") {
		t.Errorf("deleted tag still on the droplet: %v", tags)
	}

	// Firewall droplets.
	must(p.AssignFirewall(ctx, fw, mustAtoi(t, in.ID)))
	if ids := firewallDroplets(t, sim, fw); len(ids) != 1 {
		t.Errorf("firewall droplets after add = %v", ids)
	}
	must(p.UnassignFirewall(ctx, fw, mustAtoi(t, in.ID)))
	if err := p.AssignFirewall(ctx, fw, 999); err == nil {
		t.Error("assigning a missing droplet succeeded")
	}

	// Delete by tag.
	must(p.DeleteInstancesByTag(ctx, "devpilot-l"))
	if _, err := p.GetInstance(ctx, in.ID); cloud.CodeOf(err) != cloud.CodeNotFound {
		t.Errorf("after delete by tag: %v", err)
	}
	if got := rt.count("destroy " + in.ID); got != 1 {
		t.Errorf("runtime destroyed %d times", got)
	}

	rec.AssertClean(t)
	ops := rec.Operations()
	for _, op := range lifecycleOperations {
		if !slices.Contains(ops, op) {
			t.Errorf("operation %s was not exercised (seen: %v)", op, ops)
		}
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func firewallDroplets(t *testing.T, sim *dosim.Sim, id string) []int {
	t.Helper()
	for _, f := range sim.State().Firewalls {
		if f.ID == id {
			return f.DropletIDs
		}
	}
	t.Fatalf("firewall %s not in the simulator", id)
	return nil
}
