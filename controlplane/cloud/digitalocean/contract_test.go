package digitalocean

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/cloud/contract"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
	"github.com/devpilot/devpilot/controlplane/secrets"
)

// providerOperations is every API operation the provider calls, as the
// contract recorder names them.
var providerOperations = []string{
	"DELETE /v2/droplets/{droplet_id}",
	"DELETE /v2/firewalls/{firewall_id}",
	"GET /v2/account",
	"GET /v2/account/keys/{ssh_key_identifier}",
	"GET /v2/droplets",
	"GET /v2/droplets/{droplet_id}",
	"GET /v2/firewalls",
	"GET /v2/images",
	"GET /v2/regions",
	"GET /v2/sizes",
	"GET /v2/tags/{tag_id}",
	"POST /v2/account/keys",
	"POST /v2/droplets",
	"POST /v2/firewalls",
	"POST /v2/tags",
	"PUT /v2/firewalls/{firewall_id}",
}

// TestContractCoverage drives every provider method, on success and on
// the failures it maps, through the contract middleware and asserts that
// every operation the provider uses was exercised and spec-clean.
func TestContractCoverage(t *testing.T) {
	t.Parallel()
	sim := dosim.New(dosim.Options{Logger: zap.NewNop()})
	sim.AddToken(rwToken, true)
	sim.AddToken(roToken, false)
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
	p, ro, bad := mk(rwToken), mk(roToken), mk("nope")
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	_, err := p.Validate(ctx)
	must(err)
	_, _ = ro.Validate(ctx)
	_, _ = bad.Validate(ctx)
	_, err = p.Catalog(ctx)
	must(err)
	keyID, err := p.EnsureSSHKey(ctx, "k", pubKey(t))
	must(err)
	_, err = p.EnsureSSHKey(ctx, "k", pubKey(t))
	must(err)
	fw, err := p.EnsureFirewall(ctx, cloud.FirewallSpec{Name: "fw-1", Tag: "devpilot-1", Ports: []int{22, 443}})
	must(err)
	_, err = p.EnsureFirewall(ctx, cloud.FirewallSpec{Name: "fw-1", Tag: "devpilot-1", Ports: []int{22}})
	must(err)
	_, err = p.EnsureFirewall(ctx, cloud.FirewallSpec{Name: "fw-2", Tag: "devpilot-2", Ports: nil})
	must(err)
	var ids []string
	for _, name := range []string{"a-1", "a-2", "a-3"} {
		in, err := p.CreateInstance(ctx, cloud.InstanceSpec{Name: name, Region: "nyc3", Size: "s-1vcpu-1gb", Image: "debian-12-x64",
			UserData: "#cloud-config\n", Tags: []string{"devpilot-1"}, SSHKeyIDs: []string{keyID}})
		must(err)
		ids = append(ids, in.ID)
	}
	sim.SetSoldOut("fra1", "s-1vcpu-1gb", true)
	_, _ = p.CreateInstance(ctx, cloud.InstanceSpec{Name: "b", Region: "fra1", Size: "s-1vcpu-1gb", Image: "debian-12-x64"})
	sim.SetDropletLimit(3)
	_, _ = p.CreateInstance(ctx, cloud.InstanceSpec{Name: "c", Region: "nyc3", Size: "s-1vcpu-1gb", Image: "155370712"})
	_, _ = ro.CreateInstance(ctx, cloud.InstanceSpec{Name: "d", Region: "nyc3", Size: "s-1vcpu-1gb", Image: "debian-12-x64"})
	list, err := p.ListInstances(ctx, "devpilot-1")
	must(err)
	if len(list) != 3 {
		t.Fatalf("listed %d", len(list))
	}
	_, err = p.GetInstance(ctx, ids[0])
	must(err)
	must(p.DeleteInstance(ctx, ids[0]))
	must(p.DeleteInstance(ctx, ids[0]))
	_, _ = p.GetInstance(ctx, ids[0])
	must(p.DeleteFirewall(ctx, fw))
	must(p.DeleteFirewall(ctx, fw))
	sim.FailNext429(5, time.Second)
	_, _ = p.ListInstances(ctx, "x")
	sim.FailNext5xx(5, 503)
	_, _ = p.GetInstance(ctx, ids[1])

	rec.AssertClean(t)
	ops := rec.Operations()
	for _, op := range providerOperations {
		if !slices.Contains(ops, op) {
			t.Errorf("operation %s was not exercised (seen: %v)", op, ops)
		}
	}
	t.Logf("operations exercised: %v", ops)
}
