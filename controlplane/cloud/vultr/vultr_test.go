package vultr_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vultr/govultr/v3"
	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/cloud/contract"
	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
	"github.com/devpilot/devpilot/controlplane/cloud/vultr"
	"github.com/devpilot/devpilot/controlplane/cloud/vultr/vultrsim"
	"github.com/devpilot/devpilot/controlplane/secrets"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	ownerKey    = "owner-key-AAAABBBBCCCCDDDD"
	blockedKey  = "blocked-key-AAAABBBBCCCCDDDD"
	disabledKey = "disabled-key-AAAABBBBCCCCDDDD"
	viewerKey   = "viewer-key-AAAABBBBCCCCDDDD"
)

const pubKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl devpilot@test"

type fakeRuntime struct {
	mu        sync.Mutex
	booted    map[string]simrun.Machine
	destroyed []string
}

func (f *fakeRuntime) Boot(ctx context.Context, m simrun.Machine) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.booted == nil {
		f.booted = map[string]simrun.Machine{}
	}
	f.booted[m.ID] = m
	return nil
}

func (f *fakeRuntime) Destroy(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.destroyed = append(f.destroyed, id)
	return nil
}

type env struct {
	sim *vultrsim.Sim
	url string
	rt  *fakeRuntime
	rec *contract.Recorder
}

// newEnv serves a simulator (wrapped by wrapHandler, the contract checker)
// with an owner key, a key whose allowlist excludes 127.0.0.1, a key of an
// account with the API switched off and a view-only sub-user key.
//
// Several providers (each with its own client-side limiter) share one
// simulator in most tests, so together they could exceed Vultr's 30
// requests per second per IP, which is per caller, not per key; the
// simulator's real limit is therefore off unless realLimit is set.
func newEnv(t *testing.T) *env { return newEnvLimit(t, false) }

func newEnvLimit(t *testing.T, realLimit bool) *env {
	t.Helper()
	rt := &fakeRuntime{}
	opts := vultrsim.Options{Runtime: rt, BootDelay: time.Millisecond, RateLimit: -1}
	if realLimit {
		opts.RateLimit = 0 // Vultr's 30/s
	}
	sim := vultrsim.New(opts)
	h, rec := wrapHandler(t, sim.Handler())
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.Close()
		sim.Close()
	})
	sim.AddKey(ownerKey, vultrsim.KeyOptions{Name: "Owner", Email: "owner@example.com"})
	sim.AddKey(blockedKey, vultrsim.KeyOptions{AllowedIPs: []string{"192.0.2.10"}})
	sim.AddKey(disabledKey, vultrsim.KeyOptions{APIDisabled: true})
	sim.AddKey(viewerKey, vultrsim.KeyOptions{ACLs: []string{"subscriptions_view"}})
	return &env{sim: sim, url: srv.URL, rt: rt, rec: rec}
}

func (e *env) provider(t *testing.T, key string) *vultr.Provider {
	t.Helper()
	p, err := vultr.New(cloud.Config{
		Secret: secrets.New(key), BaseURL: e.url,
		MaxRetries: 3, MinWait: time.Millisecond, MaxWait: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func wantCode(t *testing.T, err error, code cloud.Code) *cloud.Error {
	t.Helper()
	var ce *cloud.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T), want *cloud.Error %s", err, err, code)
	}
	if ce.Code != code {
		t.Fatalf("code %s (%v), want %s", ce.Code, err, code)
	}
	if ce.Provider != cloud.Vultr || ce.Message == "" {
		t.Errorf("error lacks provider or message: %+v", ce)
	}
	return ce
}

func TestValidate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	tests := []struct {
		name      string
		key       string
		code      cloud.Code // "" means success
		write     cloud.WriteAccess
		hintParts []string
	}{
		{name: "owner", key: ownerKey, write: cloud.WriteYes},
		{name: "view-only sub-user", key: viewerKey, write: cloud.WriteNo},
		{name: "garbage key", key: "garbage-key-0000000000", code: cloud.CodeInvalidCredentials, hintParts: []string{"Account > API", "Secret Key", "Access Key"}},
		{name: "ip not allowed", key: blockedKey, code: cloud.CodeIPNotAllowed, hintParts: []string{"127.0.0.1", "Access Control", "allowlist"}},
		{name: "api disabled", key: disabledKey, code: cloud.CodeAPIDisabled, hintParts: []string{"Enable API", "Account > API"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			acct, err := e.provider(t, tc.key).Validate(context.Background())
			if tc.code == "" {
				if err != nil {
					t.Fatal(err)
				}
				if acct.Write != tc.write {
					t.Errorf("write %s, want %s (acls %v)", acct.Write, tc.write, acct.Permissions)
				}
				if len(acct.Permissions) == 0 || acct.Email == "" {
					t.Errorf("account %+v", acct)
				}
				return
			}
			ce := wantCode(t, err, tc.code)
			if ce.Status != http.StatusUnauthorized {
				t.Errorf("status %d", ce.Status)
			}
			for _, part := range tc.hintParts {
				if !strings.Contains(ce.Hint, part) {
					t.Errorf("hint %q lacks %q", ce.Hint, part)
				}
			}
		})
	}
}

func TestRetries(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		fault  func(*vultrsim.Sim)
		code   cloud.Code // "" means the call succeeds after retries
		status int
	}{
		{name: "429 burst waited out", fault: func(s *vultrsim.Sim) { s.RateLimitNext(3, 0) }},
		{name: "5xx retried", fault: func(s *vultrsim.Sim) { s.FailNext(2, 503) }},
		{name: "429 outlasting retries", fault: func(s *vultrsim.Sim) { s.RateLimitNext(10, 0) }, code: cloud.CodeRateLimited, status: 429},
		{name: "429 asking for a long wait", fault: func(s *vultrsim.Sim) { s.RateLimitNext(1, 5*time.Second) }, code: cloud.CodeRateLimited, status: 429},
		{name: "5xx outlasting retries", fault: func(s *vultrsim.Sim) { s.FailNext(10, 500) }, code: cloud.CodeProviderError, status: 500},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			tc.fault(e.sim)
			_, err := e.provider(t, ownerKey).Validate(context.Background())
			if tc.code == "" {
				if err != nil {
					t.Fatalf("not retried to success: %v", err)
				}
				return
			}
			ce := wantCode(t, err, tc.code)
			if ce.Status != tc.status {
				t.Errorf("status %d, want %d", ce.Status, tc.status)
			}
			if tc.name == "429 asking for a long wait" && ce.RetryAfter != 5*time.Second {
				t.Errorf("RetryAfter %s", ce.RetryAfter)
			}
		})
	}
}

// TestCatalog also runs under the simulator's real 30 requests/s limit: the
// catalog takes dozens of requests and the provider's own limiter (25/s)
// must keep it from ever being refused.
func TestCatalog(t *testing.T) {
	t.Parallel()
	e := newEnvLimit(t, true)
	e.sim.SetSoldOut("ewr", "vc2-1c-1gb", true)
	p := e.provider(t, ownerKey)
	p.SetPageSize(4) // walk several pages of every list
	cat, err := p.Catalog(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n := e.sim.Requests(); n < 40 {
		t.Errorf("catalog took only %d requests; the rate-limit check proves little", n)
	}
	if n := e.sim.State().Throttled; n != 0 {
		t.Errorf("the simulator refused %d requests for exceeding 30/s", n)
	}
	for _, id := range []string{"ewr", "ord", "ams", "fra", "syd", "nrt", "sgp"} {
		if r, ok := cat.Region(id); !ok || !r.Available {
			t.Errorf("region %s: %+v %v", id, r, ok)
		}
	}
	size, ok := cat.Size("vc2-1c-1gb")
	if !ok {
		t.Fatal("no vc2-1c-1gb")
	}
	if !slices.Contains(size.SoldOut, "ewr") || slices.Contains(size.Regions, "ewr") || !slices.Contains(size.Regions, "ord") {
		t.Errorf("vc2-1c-1gb regions %v sold out %v", size.Regions, size.SoldOut)
	}
	if size.VCPUs != 1 || size.MemoryMB != 1024 || size.PriceMonthly != 5 {
		t.Errorf("size %+v", size)
	}
	for _, id := range []string{"vc2-2c-4gb", "vhf-1c-1gb", "vhp-1c-1gb-amd"} {
		if s, ok := cat.Size(id); !ok || len(s.SoldOut) != 0 {
			t.Errorf("size %s: %+v", id, s)
		}
	}
	for neutral, id := range map[string]string{"debian-12": "2136", "ubuntu-24.04": "2284"} {
		im, ok := cat.Image(neutral)
		if !ok || im.ID != id {
			t.Errorf("image %s: %+v", neutral, im)
		}
	}
	if _, ok := cat.Image("1743"); !ok {
		t.Error("no Ubuntu 22.04 (1743)")
	}
	if _, ok := cat.Image("159"); ok {
		t.Error("the ISO pseudo-os is offered as an image")
	}
}

func TestCreateFailures(t *testing.T) {
	t.Parallel()
	base := cloud.InstanceSpec{Name: "web-1", Region: "ewr", Size: "vc2-1c-1gb", Image: "2136", Tags: []string{"devpilot"}}
	tests := []struct {
		name  string
		key   string
		setup func(*vultrsim.Sim)
		spec  func(s *cloud.InstanceSpec)
		code  cloud.Code
		hint  string
	}{
		{name: "sold out", setup: func(s *vultrsim.Sim) { s.SetSoldOut("ewr", "vc2-1c-1gb", true) }, code: cloud.CodeUnavailable, hint: "available now in: "},
		{name: "instance limit", setup: func(s *vultrsim.Sim) { s.SetInstanceLimit(0) }, code: cloud.CodeQuotaExceeded, hint: "limit"},
		{name: "invalid plan", spec: func(s *cloud.InstanceSpec) { s.Size = "vc9-huge" }, code: cloud.CodeValidation},
		{name: "invalid region", spec: func(s *cloud.InstanceSpec) { s.Region = "xxx" }, code: cloud.CodeValidation},
		{name: "unknown os", spec: func(s *cloud.InstanceSpec) { s.Image = "999999" }, code: cloud.CodeValidation},
		{name: "non-numeric image", spec: func(s *cloud.InstanceSpec) { s.Image = "debian-12-x64" }, code: cloud.CodeValidation},
		{name: "missing firewall group", spec: func(s *cloud.InstanceSpec) { s.FirewallID = "00000000-0000-4000-8000-000000000000" }, code: cloud.CodeValidation},
		{name: "sub-user without provisioning", key: viewerKey, code: cloud.CodeInsufficientScope, hint: "provisioning"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			key := tc.key
			if key == "" {
				key = ownerKey
			}
			p := e.provider(t, key)
			if tc.name == "instance limit" {
				// One instance fits, the second does not.
				e.sim.SetInstanceLimit(1)
				if _, err := p.CreateInstance(context.Background(), base); err != nil {
					t.Fatal(err)
				}
			} else if tc.setup != nil {
				tc.setup(e.sim)
			}
			spec := base
			if tc.spec != nil {
				tc.spec(&spec)
			}
			_, err := p.CreateInstance(context.Background(), spec)
			ce := wantCode(t, err, tc.code)
			if !strings.Contains(ce.Hint, tc.hint) {
				t.Errorf("hint %q lacks %q", ce.Hint, tc.hint)
			}
			if tc.code == cloud.CodeUnavailable && (!strings.Contains(ce.Hint, "ord") || strings.Contains(ce.Hint, "ewr,")) {
				t.Errorf("sold-out hint should name where the plan is available: %q", ce.Hint)
			}
		})
	}
}

func TestEnsureSSHKeyOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t, ownerKey)
	ctx := context.Background()
	id1, err := p.EnsureSSHKey(ctx, "devpilot", pubKey)
	if err != nil {
		t.Fatal(err)
	}
	// Same key, other comment and whitespace: found, not uploaded again.
	id2, err := p.EnsureSSHKey(ctx, "devpilot", "  "+strings.Replace(pubKey, "devpilot@test", "other-comment", 1)+"\n")
	if err != nil {
		t.Fatal(err)
	}
	if id1 != id2 || e.sim.State().SSHKeys != 1 {
		t.Errorf("ids %s %s, %d keys", id1, id2, e.sim.State().SSHKeys)
	}
	if _, err := p.EnsureSSHKey(ctx, "x", "not a key"); cloud.CodeOf(err) != cloud.CodeValidation {
		t.Errorf("bad key: %v", err)
	}
}

type ruleView struct {
	IPType     string `json:"ip_type"`
	Protocol   string `json:"protocol"`
	Port       string `json:"port"`
	Subnet     string `json:"subnet"`
	SubnetSize int    `json:"subnet_size"`
}

// rules lists a group's rules straight from the API (govultr, owner key).
func (e *env) rules(t *testing.T, id string) []string {
	t.Helper()
	c := govultr.NewClient(&http.Client{Transport: bearer{ownerKey}})
	if err := c.SetBaseURL(e.url); err != nil {
		t.Fatal(err)
	}
	rs, _, _, err := c.FirewallRule.List(context.Background(), id, &govultr.ListOptions{PerPage: 100})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs {
		b, _ := json.Marshal(ruleView{r.IPType, r.Protocol, r.Port, r.Subnet, r.SubnetSize})
		out = append(out, string(b))
	}
	slices.Sort(out)
	return out
}

type bearer struct{ key string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.key)
	return http.DefaultTransport.RoundTrip(r)
}

func wantRules(ports ...string) []string {
	var out []string
	for _, p := range ports {
		for _, r := range []ruleView{{"v4", "tcp", p, "0.0.0.0", 0}, {"v6", "tcp", p, "::", 0}} {
			b, _ := json.Marshal(r)
			out = append(out, string(b))
		}
	}
	slices.Sort(out)
	return out
}

func TestEnsureFirewall(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t, ownerKey)
	ctx := context.Background()
	spec := cloud.FirewallSpec{Name: "devpilot-default-web", Ports: []int{22, 443}}
	id1, err := p.EnsureFirewall(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	id2, err := p.EnsureFirewall(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if id1 != id2 || e.sim.State().Firewalls != 1 {
		t.Fatalf("ids %s %s, %d groups", id1, id2, e.sim.State().Firewalls)
	}
	if got, want := e.rules(t, id1), wantRules("22", "443"); !slices.Equal(got, want) {
		t.Errorf("rules %v, want %v", got, want)
	}
	spec.Ports = []int{22, 8080}
	if _, err := p.EnsureFirewall(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if got, want := e.rules(t, id1), wantRules("22", "8080"); !slices.Equal(got, want) {
		t.Errorf("rules after port change %v, want %v", got, want)
	}
	if _, err := e.provider(t, viewerKey).EnsureFirewall(ctx, cloud.FirewallSpec{Name: "other", Ports: []int{22}}); cloud.CodeOf(err) != cloud.CodeInsufficientScope {
		t.Errorf("viewer: %v", err)
	}
	for range 2 {
		if err := p.DeleteFirewall(ctx, id1); err != nil {
			t.Fatalf("delete firewall: %v", err)
		}
	}
	if e.sim.State().Firewalls != 0 {
		t.Error("firewall group not deleted")
	}
}

func TestInstanceLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t, ownerKey)
	p.SetPageSize(1)
	ctx := context.Background()
	keyID, err := p.EnsureSSHKey(ctx, "devpilot", pubKey)
	if err != nil {
		t.Fatal(err)
	}
	fwID, err := p.EnsureFirewall(ctx, cloud.FirewallSpec{Name: "web", Ports: []int{22}})
	if err != nil {
		t.Fatal(err)
	}
	userData := "#cloud-config\nruncmd:\n  - echo 'hello \"world\"' > /tmp/x\n"
	spec := cloud.InstanceSpec{Name: "web-1", Region: "ams", Size: "vc2-1c-1gb", Image: "2136",
		UserData: userData, Tags: []string{"devpilot", "devpilot-server-1"}, SSHKeyIDs: []string{keyID}, FirewallID: fwID}
	in, err := p.CreateInstance(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if in.State != cloud.StateNew || in.PublicIPv4 != "" || in.FirewallID != fwID || in.Region != "ams" || in.CreatedAt.IsZero() {
		t.Errorf("created %+v", in)
	}
	other := spec
	other.Name, other.Tags = "web-2", []string{"devpilot", "devpilot-server-2"}
	if _, err := p.CreateInstance(ctx, other); err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(5 * time.Second)
	for in.State != cloud.StateActive {
		if time.Now().After(deadline) {
			t.Fatalf("never active: %+v", in)
		}
		time.Sleep(2 * time.Millisecond)
		if in, err = p.GetInstance(ctx, in.ID); err != nil {
			t.Fatal(err)
		}
	}
	if !strings.HasPrefix(in.PublicIPv4, "203.0.113.") {
		t.Errorf("public IP %q", in.PublicIPv4)
	}
	e.rt.mu.Lock()
	m := e.rt.booted[in.ID]
	e.rt.mu.Unlock()
	if string(m.UserData) != userData || !slices.Equal(m.SSHAuthorizedKeys, []string{pubKey}) || m.Hostname != "web-1" {
		t.Errorf("runtime machine %+v", m)
	}

	// User data as the API stores it: base64 of exactly what we sent.
	c := govultr.NewClient(&http.Client{Transport: bearer{ownerKey}})
	_ = c.SetBaseURL(e.url)
	ud, _, err := c.Instance.GetUserData(ctx, in.ID)
	if err != nil {
		t.Fatal(err)
	}
	if dec, _ := base64.StdEncoding.DecodeString(ud.Data); string(dec) != userData {
		t.Errorf("user data round trip %q", dec)
	}
	fw, _, err := c.FirewallGroup.Get(ctx, fwID)
	if err != nil || fw.InstanceCount != 2 {
		t.Errorf("firewall group %+v %v", fw, err)
	}

	list, err := p.ListInstances(ctx, "devpilot-server-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].ID != in.ID {
		t.Errorf("list by tag %+v", list)
	}
	all, err := p.ListInstances(ctx, "devpilot")
	if err != nil || len(all) != 2 {
		t.Errorf("list all pages: %d instances, %v", len(all), err)
	}

	for range 2 {
		if err := p.DeleteInstance(ctx, in.ID); err != nil {
			t.Fatalf("delete: %v", err)
		}
	}
	if _, err := p.GetInstance(ctx, in.ID); cloud.CodeOf(err) != cloud.CodeNotFound {
		t.Errorf("get deleted: %v", err)
	}
	e.rt.mu.Lock()
	destroyed := slices.Clone(e.rt.destroyed)
	e.rt.mu.Unlock()
	if !slices.Equal(destroyed, []string{in.ID}) {
		t.Errorf("runtime destroyed %v", destroyed)
	}
	if list, err := p.ListInstances(ctx, "devpilot-server-1"); err != nil || len(list) != 0 {
		t.Errorf("after delete: %+v %v", list, err)
	}
}

// TestKeyNeverInErrors drives every failure mode with canary keys and checks
// no error text or hint contains them.
func TestKeyNeverInErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const canary = "CANARY-9f8e7d6c5b4a3210-CANARY"
	e.sim.AddKey(canary, vultrsim.KeyOptions{})
	ctx := context.Background()
	var errs []error
	collect := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	unknown := e.provider(t, "UNKNOWN-"+canary)
	_, err := unknown.Validate(ctx)
	collect(err)
	p := e.provider(t, canary)
	e.sim.RateLimitNext(10, 0)
	_, err = p.Validate(ctx)
	collect(err)
	e.sim.FailNext(10, 500)
	_, err = p.Validate(ctx)
	collect(err)
	e.sim.ResetFaults()
	_, err = p.GetInstance(ctx, "nope")
	collect(err)
	_, err = p.CreateInstance(ctx, cloud.InstanceSpec{Name: "x", Region: "xxx", Size: "vc2-1c-1gb", Image: "2136"})
	collect(err)
	e.sim.SetSoldOut("ewr", "vc2-1c-1gb", true)
	_, err = p.CreateInstance(ctx, cloud.InstanceSpec{Name: "x", Region: "ewr", Size: "vc2-1c-1gb", Image: "2136"})
	collect(err)
	for _, opts := range []vultrsim.KeyOptions{{AllowedIPs: []string{"192.0.2.1"}}, {APIDisabled: true}, {ACLs: []string{}}} {
		e.sim.AddKey(canary, opts)
		_, err = p.Validate(ctx)
		collect(err)
		_, err = p.EnsureFirewall(ctx, cloud.FirewallSpec{Name: "fw", Ports: []int{22}})
		collect(err)
	}
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	down, err := vultr.New(cloud.Config{Secret: secrets.New(canary), BaseURL: dead.URL, MaxRetries: 1, MinWait: time.Millisecond, MaxWait: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_, err = down.Validate(ctx)
	collect(err)

	if len(errs) < 10 {
		t.Fatalf("only %d failures provoked", len(errs))
	}
	codes := map[cloud.Code]bool{}
	for _, err := range errs {
		var ce *cloud.Error
		if !errors.As(err, &ce) {
			t.Errorf("not a *cloud.Error: %v", err)
			continue
		}
		codes[ce.Code] = true
		for _, text := range []string{err.Error(), ce.Message, ce.Hint} {
			if strings.Contains(text, "9f8e7d6c5b4a3210") {
				t.Errorf("key leaked: %q", text)
			}
		}
	}
	for _, c := range []cloud.Code{cloud.CodeInvalidCredentials, cloud.CodeRateLimited, cloud.CodeProviderError, cloud.CodeNotFound,
		cloud.CodeValidation, cloud.CodeUnavailable, cloud.CodeIPNotAllowed, cloud.CodeAPIDisabled, cloud.CodeInsufficientScope} {
		if !codes[c] {
			t.Errorf("no failure with code %s provoked", c)
		}
	}
}
