package vultr_test

import (
	"context"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
	"github.com/devpilot/devpilot/controlplane/cloud/vultr/vultrsim"
)

// gatedRuntime records power calls; each waits until the test opens the gate.
type gatedRuntime struct {
	mu   sync.Mutex
	ops  []string
	gate chan struct{}
}

func (r *gatedRuntime) add(op string) chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, op)
	return r.gate
}
func (r *gatedRuntime) Boot(context.Context, simrun.Machine) error { return nil }
func (r *gatedRuntime) Destroy(context.Context, string) error      { return nil }
func (r *gatedRuntime) PowerOff(ctx context.Context, id string) error {
	return r.wait(ctx, r.add("off "+id))
}
func (r *gatedRuntime) PowerOn(ctx context.Context, id string) error {
	return r.wait(ctx, r.add("on "+id))
}
func (r *gatedRuntime) wait(ctx context.Context, g chan struct{}) error {
	select {
	case <-g:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
func (r *gatedRuntime) hold() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gate = make(chan struct{})
}
func (r *gatedRuntime) release() {
	r.mu.Lock()
	defer r.mu.Unlock()
	close(r.gate)
}
func (r *gatedRuntime) count(op string) int {
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

var lifecycleOperations = []string{
	"POST /v2/instances/{instance-id}/reboot",
	"POST /v2/instances/{instance-id}/start",
	"POST /v2/instances/{instance-id}/halt",
	"POST /v2/instances/{instance-id}/reinstall",
	"GET /v2/instances/{instance-id}/upgrades",
	"PATCH /v2/instances/{instance-id}",
	"GET /v2/snapshots",
	"POST /v2/snapshots",
	"GET /v2/snapshots/{snapshot-id}",
	"DELETE /v2/snapshots/{snapshot-id}",
}

// TestLifecycleContract drives every lifecycle call through govultr
// against the simulator behind the contract checker: each power action is
// in progress until the Runtime finished it, then done; plan changes only
// go up; a removed tag is put back; the simulator counts each action once.
func TestLifecycleContract(t *testing.T) {
	t.Parallel()
	rt := &gatedRuntime{gate: make(chan struct{})}
	close(rt.gate)
	sim := vultrsim.New(vultrsim.Options{Runtime: rt, BootDelay: time.Millisecond, RateLimit: -1})
	h, rec := wrapHandler(t, sim.Handler())
	srv := httptest.NewServer(h)
	t.Cleanup(func() { srv.Close(); sim.Close() })
	sim.AddKey(ownerKey, vultrsim.KeyOptions{Name: "Owner", Email: "owner@example.com"})
	sim.AddKey(viewerKey, vultrsim.KeyOptions{ACLs: []string{"subscriptions_view"}})
	e := &env{sim: sim, url: srv.URL, rec: rec}
	p, viewer := e.provider(t, ownerKey), e.provider(t, viewerKey)
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	get := func(id string) *cloud.Instance {
		t.Helper()
		in, err := p.GetInstance(ctx, id)
		must(err)
		return in
	}
	poller := cloud.NewActionPoller(20 * time.Millisecond)
	wait := func(r cloud.ActionRef) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		st, err := poller.Wait(wctx, p, "int_1", r)
		must(err)
		if st.State != cloud.ActionCompleted {
			t.Fatalf("%s: %s", r.Type, st.State)
		}
	}
	// held starts an action with the runtime held, checks it is in
	// progress, then lets it finish.
	held := func(start func() (cloud.ActionRef, error)) cloud.ActionRef {
		t.Helper()
		rt.hold()
		r, err := start()
		if err != nil {
			rt.release()
			t.Fatal(err)
		}
		st, err := p.Action(ctx, r)
		if err != nil || st.State != cloud.ActionInProgress {
			t.Errorf("%s while the machine works: %v %v, want in-progress", r.Type, st, err)
		}
		if _, err := p.Power(ctx, r.Instance, cloud.PowerReboot); cloud.CodeOf(err) != cloud.CodeValidation {
			t.Errorf("second action during %s: %v, want validation_failed", r.Type, err)
		}
		rt.release()
		wait(r)
		return r
	}

	in, err := p.CreateInstance(ctx, cloud.InstanceSpec{Name: "web-1", Region: "ewr", Size: "vc2-1c-1gb", Image: "2136", Tags: []string{"devpilot-1"}})
	must(err)
	for deadline := time.Now().Add(time.Minute); get(in.ID).State != cloud.StateActive; {
		if time.Now().After(deadline) {
			t.Fatal("instance never active")
		}
		time.Sleep(5 * time.Millisecond)
	}

	held(func() (cloud.ActionRef, error) { return p.Power(ctx, in.ID, cloud.PowerReboot) })
	held(func() (cloud.ActionRef, error) { return p.Power(ctx, in.ID, cloud.PowerOff) })
	if s := get(in.ID).State; s != cloud.StateOff {
		t.Fatalf("after halt: %s", s)
	}
	if _, err := p.Power(ctx, in.ID, cloud.PowerReboot); cloud.CodeOf(err) != cloud.CodeValidation {
		t.Errorf("reboot while stopped: %v, want validation_failed", err)
	}
	held(func() (cloud.ActionRef, error) { return p.Power(ctx, in.ID, cloud.PowerOn) })
	if s := get(in.ID).State; s != cloud.StateActive {
		t.Fatalf("after start: %s", s)
	}
	if rt.count("off "+in.ID) != 2 || rt.count("on "+in.ID) != 2 {
		t.Errorf("runtime calls = %v", rt.ops)
	}

	ups, err := p.Upgrades(ctx, in.ID)
	must(err)
	if !slices.Contains(ups, "vc2-1c-2gb") || slices.Contains(ups, "vc2-1c-1gb") {
		t.Errorf("upgrades = %v", ups)
	}
	r, err := p.Resize(ctx, in.ID, "vc2-1c-2gb")
	must(err)
	wait(r)
	if sz := get(in.ID).Size; sz != "vc2-1c-2gb" {
		t.Errorf("plan after resize = %s", sz)
	}
	if _, err := p.Resize(ctx, in.ID, "vc2-1c-1gb"); cloud.CodeOf(err) != cloud.CodeValidation {
		t.Errorf("downgrade: %v, want validation_failed", err)
	}
	r, err = p.Rename(ctx, in.ID, "web-2")
	must(err)
	wait(r)
	if n := get(in.ID).Name; n != "web-2" {
		t.Errorf("label after rename = %s", n)
	}

	if !sim.UntagOutside(in.ID, "devpilot-1") {
		t.Fatal("untag outside")
	}
	must(p.Tag(ctx, in.ID, "devpilot-1"))
	must(p.Tag(ctx, in.ID, "devpilot-1"))
	if tags := get(in.ID).Tags; !slices.Equal(tags, []string{"devpilot-1"}) {
		t.Errorf("tags = %v", tags)
	}

	snap, err := p.Snapshot(ctx, in.ID, "before resize")
	must(err)
	snaps, err := p.Snapshots(ctx)
	must(err)
	if !slices.Contains(snaps, snap) {
		t.Errorf("snapshots = %v, want %s", snaps, snap)
	}
	if st, err := p.SnapshotStatus(ctx, snap); err != nil || st != "complete" {
		t.Errorf("snapshot status %q %v", st, err)
	}
	must(p.DeleteSnapshot(ctx, snap))
	must(p.DeleteSnapshot(ctx, snap))
	if _, err := p.SnapshotStatus(ctx, snap); cloud.CodeOf(err) != cloud.CodeNotFound {
		t.Errorf("deleted snapshot: %v, want not_found", err)
	}
	r, err = p.Reinstall(ctx, in.ID)
	must(err)
	wait(r)

	if _, err := viewer.Power(ctx, in.ID, cloud.PowerReboot); cloud.CodeOf(err) != cloud.CodeInsufficientScope {
		t.Errorf("view-only reboot: %v, want insufficient_scope", err)
	}
	if _, err := p.Power(ctx, "0d7bd9a6-0000-4000-8000-000000000000", cloud.PowerReboot); cloud.CodeOf(err) != cloud.CodeNotFound {
		t.Errorf("reboot missing: %v, want not_found", err)
	}

	counts := sim.ActionCounts(in.ID)
	for typ, n := range map[string]int{"create": 1, "reboot": 1, "halt": 1, "start": 1, "plan": 1, "snapshot": 1, "reinstall": 1} {
		if counts[typ] != n {
			t.Errorf("simulator counted %d %s, want %d (%v)", counts[typ], typ, n, counts)
		}
	}
	seen := rec.Operations()
	for _, op := range lifecycleOperations {
		if !slices.Contains(seen, op) {
			t.Errorf("operation %s never exercised (seen: %v)", op, seen)
		}
	}
}
