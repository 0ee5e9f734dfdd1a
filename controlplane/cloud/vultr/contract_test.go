package vultr_test

import (
	"context"
	"net/http"
	"slices"
	"testing"

	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/cloud/contract"
)

// wrapHandler puts the OpenAPI contract checker in front of the simulator:
// every request govultr sends and every answer the simulator gives is
// validated against the Vultr spec, and the test fails on any violation.
func wrapHandler(t *testing.T, h http.Handler) (http.Handler, *contract.Recorder) {
	t.Helper()
	wrapped, rec := contract.Vultr(t).Middleware(h)
	t.Cleanup(func() { rec.AssertClean(t) }) // runs after the server closed
	return wrapped, rec
}

// providerOperations is every Vultr operation the provider calls.
var providerOperations = []string{
	"GET /v2/account",
	"GET /v2/regions",
	"GET /v2/regions/{region-id}/availability",
	"GET /v2/plans",
	"GET /v2/os",
	"GET /v2/ssh-keys",
	"POST /v2/ssh-keys",
	"GET /v2/firewalls",
	"POST /v2/firewalls",
	"DELETE /v2/firewalls/{firewall-group-id}",
	"GET /v2/firewalls/{firewall-group-id}/rules",
	"POST /v2/firewalls/{firewall-group-id}/rules",
	"DELETE /v2/firewalls/{firewall-group-id}/rules/{firewall-rule-id}",
	"GET /v2/instances",
	"POST /v2/instances",
	"GET /v2/instances/{instance-id}",
	"DELETE /v2/instances/{instance-id}",
}

// TestContractCoverage walks every provider method, success and failure
// paths, through the checker and asserts each operation the provider uses
// was seen (and, via wrapHandler, that all of them were clean).
func TestContractCoverage(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t, ownerKey)
	p.SetPageSize(3)
	ctx := context.Background()
	if _, err := p.Validate(ctx); err != nil {
		t.Fatal(err)
	}
	e.sim.SetSoldOut("ord", "vc2-1c-1gb", true)
	if _, err := p.Catalog(ctx); err != nil {
		t.Fatal(err)
	}
	keyID, err := p.EnsureSSHKey(ctx, "devpilot", pubKey)
	if err != nil {
		t.Fatal(err)
	}
	fw, err := p.EnsureFirewall(ctx, cloud.FirewallSpec{Name: "web", Ports: []int{22, 80}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.EnsureFirewall(ctx, cloud.FirewallSpec{Name: "web", Ports: []int{22}}); err != nil {
		t.Fatal(err)
	}
	in, err := p.CreateInstance(ctx, cloud.InstanceSpec{Name: "web-1", Region: "ewr", Size: "vc2-1c-1gb", Image: "2136",
		UserData: "#!/bin/sh\n", Tags: []string{"t1"}, SSHKeyIDs: []string{keyID}, FirewallID: fw})
	if err != nil {
		t.Fatal(err)
	}
	// An instance with no tags: govultr sends "tags":null.
	if _, err := p.CreateInstance(ctx, cloud.InstanceSpec{Name: "bare", Region: "ewr", Size: "vc2-1c-1gb", Image: "2284"}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.CreateInstance(ctx, cloud.InstanceSpec{Name: "x", Region: "ord", Size: "vc2-1c-1gb", Image: "2136"}); cloud.CodeOf(err) != cloud.CodeUnavailable {
		t.Fatalf("sold out: %v", err)
	}
	if _, err := p.GetInstance(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := p.ListInstances(ctx, "t1"); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := p.DeleteInstance(ctx, in.ID); err != nil {
			t.Fatal(err)
		}
		if err := p.DeleteFirewall(ctx, fw); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.GetInstance(ctx, in.ID); cloud.CodeOf(err) != cloud.CodeNotFound {
		t.Fatalf("get deleted: %v", err)
	}
	for _, k := range []string{"garbage-key-0000000000", blockedKey, disabledKey} {
		if _, err := e.provider(t, k).Validate(ctx); err == nil {
			t.Fatalf("key %s accepted", k[:8])
		}
	}
	if _, err := e.provider(t, viewerKey).EnsureFirewall(ctx, cloud.FirewallSpec{Name: "v", Ports: []int{22}}); err == nil {
		t.Fatal("viewer created a firewall")
	}
	e.sim.RateLimitNext(1, 0)
	e.sim.FailNext(1, 500)
	if _, err := p.Validate(ctx); err != nil {
		t.Fatal(err)
	}

	seen := e.rec.Operations()
	for _, op := range providerOperations {
		if !slices.Contains(seen, op) {
			t.Errorf("operation %s never exercised (seen: %v)", op, seen)
		}
	}
}
