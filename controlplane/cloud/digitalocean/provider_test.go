package digitalocean

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/crypto/ssh"

	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
	"github.com/devpilot/devpilot/controlplane/secrets"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	rwToken = "dop_v1_readwrite0000000000000000000000000000000000000000000000000001"
	roToken = "dop_v1_readonly00000000000000000000000000000000000000000000000000002"
)

// env is a simulator served over HTTP on loopback and a provider whose
// godo client talks to it.
type env struct {
	sim  *dosim.Sim
	url  string
	logs *observer.ObservedLogs
}

type envOpt func(*dosim.Options)

func newEnv(t *testing.T, opts ...envOpt) *env {
	t.Helper()
	o := dosim.Options{Logger: zap.NewNop()}
	for _, f := range opts {
		f(&o)
	}
	sim := dosim.New(o)
	sim.AddToken(rwToken, true)
	sim.AddToken(roToken, false)
	srv := httptest.NewServer(wrapContract(t, sim.Handler()))
	t.Cleanup(func() {
		srv.Close()
		sim.Close()
	})
	return &env{sim: sim, url: srv.URL}
}

// provider returns a provider for token with fast retries (the sim's
// Retry-After still rules when it sends one).
func (e *env) provider(t *testing.T, token string) *Provider {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	e.logs = logs
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	p, err := New(cloud.Config{
		Secret: secrets.New(token), BaseURL: e.url, Logger: zap.New(core), Base: tr,
		MaxRetries: 3, MinWait: 5 * time.Millisecond, MaxWait: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func asCloudError(t *testing.T, err error, code cloud.Code) *cloud.Error {
	t.Helper()
	var ce *cloud.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T) is not a *cloud.Error", err, err)
	}
	if ce.Code != code {
		t.Fatalf("code = %s, want %s (error: %v; hint: %s)", ce.Code, code, err, ce.Hint)
	}
	if ce.Provider != cloud.DigitalOcean || ce.Op == "" || ce.Message == "" {
		t.Fatalf("incomplete error %#v", ce)
	}
	if strings.Contains(ce.Message, "http://") || strings.Contains(ce.Message, "(request ") {
		t.Fatalf("message leaks SDK formatting: %q", ce.Message)
	}
	return ce
}

func pubKey(t *testing.T) string {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp))) + " devpilot@test"
}

func TestValidate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t, rwToken)
	acct, err := p.Validate(context.Background())
	if err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if acct.Write != cloud.WriteYes || acct.Status != "active" || acct.InstanceLimit != dosim.DefaultDropletLimit || acct.Email == "" {
		t.Fatalf("account = %+v", acct)
	}
	if n := len(e.sim.State().Droplets); n != 0 {
		t.Fatalf("the write probe created %d droplets", n)
	}
}

func TestValidateReadOnlyToken(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	acct, err := e.provider(t, roToken).Validate(context.Background())
	ce := asCloudError(t, err, cloud.CodeInsufficientScope)
	if !strings.Contains(ce.Hint, "Read and Write") || !strings.Contains(ce.Hint, "cloud.digitalocean.com/account/api/tokens") {
		t.Fatalf("hint does not say which token to create where: %q", ce.Hint)
	}
	if acct == nil || acct.Write != cloud.WriteNo {
		t.Fatalf("account = %+v, want Write=no", acct)
	}
}

// When the API validates the body before checking scope (unverified
// either way), the probe cannot tell; the first real create then reports
// the missing scope.
func TestReadOnlyTokenWhenValidationComesFirst(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.sim.SetScopeCheckAfterValidation(true)
	p := e.provider(t, roToken)
	acct, err := p.Validate(context.Background())
	if err != nil || acct.Write != cloud.WriteYes {
		t.Fatalf("Validate = %+v, %v; want the (over-reporting) WriteYes", acct, err)
	}
	_, err = p.CreateInstance(context.Background(), cloud.InstanceSpec{Name: "web-1", Region: "nyc3", Size: "s-1vcpu-1gb", Image: "debian-12-x64"})
	ce := asCloudError(t, err, cloud.CodeInsufficientScope)
	if !strings.Contains(ce.Hint, "Read and Write") {
		t.Fatalf("hint = %q", ce.Hint)
	}
}

func TestValidateBadCredentials(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, tok := range []string{"garbage", "dop_v1_0000000000000000000000000000000000000000000000000000000000000000"} {
		_, err := e.provider(t, tok).Validate(context.Background())
		ce := asCloudError(t, err, cloud.CodeInvalidCredentials)
		if ce.Status != http.StatusUnauthorized || !strings.Contains(ce.Hint, "Read and Write") {
			t.Fatalf("error = %#v", ce)
		}
	}
	if _, err := New(cloud.Config{}); cloud.CodeOf(err) != cloud.CodeInvalidCredentials {
		t.Fatalf("New without a token: %v", err)
	}
}

func TestValidateAccountStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t, rwToken)
	e.sim.SetAccountStatus("warning", "Your balance is overdue")
	if acct, err := p.Validate(context.Background()); err != nil || acct.Status != "warning" {
		t.Fatalf("warning account: %+v, %v", acct, err)
	}
	e.sim.SetAccountStatus("locked", "Account locked for unpaid invoices")
	_, err := p.Validate(context.Background())
	ce := asCloudError(t, err, cloud.CodeInvalidCredentials)
	if !strings.Contains(ce.Message, "locked") || !strings.Contains(ce.Message, "unpaid") {
		t.Fatalf("message = %q", ce.Message)
	}
}

func TestRateLimitBurstIsWaitedOut(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t, rwToken)
	e.sim.FailNext429(2, time.Second)
	if _, err := p.Validate(context.Background()); err != nil {
		t.Fatalf("Validate after a 429 burst: %v", err)
	}
	if st := e.sim.State(); st.Faults.Pending429 != 0 {
		t.Fatalf("%d injected 429s left: retries did not happen", st.Faults.Pending429)
	}
}

func TestRateLimitOutlastingRetries(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t, rwToken)
	e.sim.FailNext429(1, time.Minute) // longer than MaxWait: not waited out
	_, err := p.Catalog(context.Background())
	ce := asCloudError(t, err, cloud.CodeRateLimited)
	if ce.RetryAfter < 59*time.Second || ce.RetryAfter > time.Minute {
		t.Fatalf("RetryAfter = %v, want about 1m", ce.RetryAfter)
	}
	if ce.Hint == "" {
		t.Fatal("no hint")
	}
}

func TestServerErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t, rwToken)
	e.sim.FailNext5xx(3, http.StatusInternalServerError)
	if _, err := p.Catalog(context.Background()); err != nil {
		t.Fatalf("Catalog after a 5xx burst: %v", err)
	}
	e.sim.FailNext5xx(10, http.StatusBadGateway)
	_, err := p.ListInstances(context.Background(), "x")
	ce := asCloudError(t, err, cloud.CodeProviderError)
	if ce.Status != http.StatusBadGateway || !strings.Contains(ce.Hint, "status.digitalocean.com") {
		t.Fatalf("error = %#v", ce)
	}
}

func TestNetworkFailure(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	e := &env{url: "http://" + addr}
	_, err = e.provider(t, rwToken).Validate(context.Background())
	ce := asCloudError(t, err, cloud.CodeProviderError)
	if !strings.Contains(ce.Message, "could not reach") {
		t.Fatalf("message = %q", ce.Message)
	}
}

func TestCatalog(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t, rwToken)
	p.perPage = 3 // cross page boundaries
	c, err := p.Catalog(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"nyc1", "nyc3", "sfo3", "ams3", "fra1", "lon1", "sgp1", "tor1", "blr1", "syd1"} {
		if r, ok := c.Region(id); !ok || !r.Available {
			t.Errorf("region %s missing or unavailable: %+v", id, r)
		}
	}
	if r, ok := c.Region("nyc2"); !ok || r.Available {
		t.Errorf("retired nyc2 should be listed unavailable: %+v %v", r, ok)
	}
	s, ok := c.Size("s-1vcpu-1gb")
	if !ok || s.MemoryMB != 1024 || s.VCPUs != 1 || !slices.Contains(s.Regions, "nyc3") || len(s.SoldOut) != 0 {
		t.Fatalf("s-1vcpu-1gb = %+v", s)
	}
	for _, n := range []string{"debian-12", "ubuntu-24.04"} {
		if im, ok := c.Image(n); !ok || im.Neutral != n {
			t.Errorf("neutral image %s: %+v %v", n, im, ok)
		}
	}
	if im, ok := c.Image("rockylinux-9-x64"); !ok || im.Distribution != "Rocky Linux" {
		t.Errorf("rocky: %+v", im)
	}
}

func TestSoldOut(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t, rwToken)
	e.sim.SetSoldOut("nyc3", "s-2vcpu-4gb", true)
	c, err := p.Catalog(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	s, _ := c.Size("s-2vcpu-4gb")
	if !slices.Equal(s.SoldOut, []string{"nyc3"}) || slices.Contains(s.Regions, "nyc3") || !slices.Contains(s.Regions, "fra1") {
		t.Fatalf("size = %+v", s)
	}
	_, err = p.CreateInstance(context.Background(), cloud.InstanceSpec{Name: "web-1", Region: "nyc3", Size: "s-2vcpu-4gb", Image: "debian-12-x64"})
	ce := asCloudError(t, err, cloud.CodeUnavailable)
	if !errors.Is(err, cloud.ErrSoldOut) || !strings.Contains(ce.Hint, "fra1") || strings.Contains(ce.Hint, "nyc3,") {
		t.Fatalf("error = %v, hint %q", err, ce.Hint)
	}
	e.sim.SetSoldOut("nyc3", "s-2vcpu-4gb", false)
	if _, err := p.CreateInstance(context.Background(), cloud.InstanceSpec{Name: "web-1", Region: "nyc3", Size: "s-2vcpu-4gb", Image: "debian-12-x64"}); err != nil {
		t.Fatalf("after restock: %v", err)
	}
}

func TestDropletLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t, rwToken)
	e.sim.SetDropletLimit(1)
	spec := cloud.InstanceSpec{Name: "web-1", Region: "fra1", Size: "s-1vcpu-1gb", Image: "ubuntu-24-04-x64"}
	if _, err := p.CreateInstance(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	spec.Name = "web-2"
	_, err := p.CreateInstance(context.Background(), spec)
	ce := asCloudError(t, err, cloud.CodeQuotaExceeded)
	if !strings.Contains(ce.Message, "droplet limit") || !strings.Contains(ce.Hint, "limit") {
		t.Fatalf("error = %#v", ce)
	}
}

func TestCreateValidationErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t, rwToken)
	for _, tc := range []struct {
		name string
		spec cloud.InstanceSpec
		code cloud.Code
	}{
		{"bad name", cloud.InstanceSpec{Name: "bad name!", Region: "fra1", Size: "s-1vcpu-1gb", Image: "debian-12-x64"}, cloud.CodeValidation},
		{"unknown image", cloud.InstanceSpec{Name: "a1", Region: "fra1", Size: "s-1vcpu-1gb", Image: "plan9-x64"}, cloud.CodeValidation},
		{"unknown key", cloud.InstanceSpec{Name: "a1", Region: "fra1", Size: "s-1vcpu-1gb", Image: "debian-12-x64", SSHKeyIDs: []string{"12345"}}, cloud.CodeValidation},
		{"region not offering size", cloud.InstanceSpec{Name: "a1", Region: "syd1", Size: "c-2", Image: "debian-12-x64"}, cloud.CodeUnavailable},
		{"retired region", cloud.InstanceSpec{Name: "a1", Region: "nyc2", Size: "s-1vcpu-1gb", Image: "debian-12-x64"}, cloud.CodeUnavailable},
		{"user data too large", cloud.InstanceSpec{Name: "a1", Region: "fra1", Size: "s-1vcpu-1gb", Image: "debian-12-x64", UserData: strings.Repeat("x", 64<<10+1)}, cloud.CodeValidation},
	} {
		_, err := p.CreateInstance(context.Background(), tc.spec)
		_ = asCloudError(t, err, tc.code)
	}
}

func TestEnsureSSHKey(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t, rwToken)
	key := pubKey(t)
	id1, err := p.EnsureSSHKey(context.Background(), "devpilot", key)
	if err != nil {
		t.Fatal(err)
	}
	id2, err := p.EnsureSSHKey(context.Background(), "devpilot again", key)
	if err != nil {
		t.Fatal(err)
	}
	if id1 != id2 || len(e.sim.State().SSHKeys) != 1 {
		t.Fatalf("ids %s %s, keys %v", id1, id2, e.sim.State().SSHKeys)
	}
	if _, err := p.EnsureSSHKey(context.Background(), "x", "not a key"); cloud.CodeOf(err) != cloud.CodeValidation {
		t.Fatalf("bad key: %v", err)
	}
}

func TestEnsureFirewall(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p := e.provider(t, rwToken)
	spec := cloud.FirewallSpec{Name: "devpilot-ws1", Tag: "devpilot-ws1", Ports: []int{443, 22, 80, 22}}
	id1, err := p.EnsureFirewall(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	id2, err := p.EnsureFirewall(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	fws := e.sim.State().Firewalls
	if id1 != id2 || len(fws) != 1 {
		t.Fatalf("ids %s %s, firewalls %+v", id1, id2, fws)
	}
	if want := []string{"tcp/22", "tcp/443", "tcp/80"}; !slices.Equal(sorted(fws[0].InboundPorts), want) || !slices.Equal(fws[0].Tags, []string{"devpilot-ws1"}) {
		t.Fatalf("firewall = %+v, want ports %v", fws[0], want)
	}
	spec.Ports = []int{22}
	if id3, err := p.EnsureFirewall(context.Background(), spec); err != nil || id3 != id1 {
		t.Fatalf("update: %s, %v", id3, err)
	}
	if got := e.sim.State().Firewalls[0].InboundPorts; !slices.Equal(got, []string{"tcp/22"}) {
		t.Fatalf("after update ports = %v", got)
	}
	if err := p.DeleteFirewall(context.Background(), id1); err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteFirewall(context.Background(), id1); err != nil {
		t.Fatalf("deleting a missing firewall: %v", err)
	}
	if _, err := p.EnsureFirewall(context.Background(), cloud.FirewallSpec{Name: "-bad", Tag: "t"}); cloud.CodeOf(err) != cloud.CodeValidation {
		t.Fatalf("bad name: %v", err)
	}
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }

func TestInstanceLifecycle(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	e := newEnv(t, func(o *dosim.Options) { o.Now = clock; o.BootDelay = 30 * time.Second })
	p := e.provider(t, rwToken)
	p.perPage = 2
	ctx := context.Background()
	keyID, err := p.EnsureSSHKey(ctx, "k", pubKey(t))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := range 5 {
		in, err := p.CreateInstance(ctx, cloud.InstanceSpec{
			Name: fmt.Sprintf("web-%d", i), Region: "ams3", Size: "s-1vcpu-512mb-10gb", Image: "debian-12-x64",
			UserData: "#cloud-config\n", Tags: []string{"devpilot", fmt.Sprintf("devpilot-srv-%d", i)}, SSHKeyIDs: []string{keyID},
		})
		if err != nil {
			t.Fatal(err)
		}
		if in.State != cloud.StateNew || in.PublicIPv4 != "" || in.Region != "ams3" || in.Size != "s-1vcpu-512mb-10gb" {
			t.Fatalf("new instance = %+v", in)
		}
		ids = append(ids, in.ID)
	}
	all, err := p.ListInstances(ctx, "devpilot")
	if err != nil || len(all) != 5 {
		t.Fatalf("list: %d, %v", len(all), err)
	}
	one, err := p.ListInstances(ctx, "devpilot-srv-3")
	if err != nil || len(one) != 1 || one[0].ID != ids[3] || one[0].Name != "web-3" {
		t.Fatalf("list by unique tag: %+v, %v", one, err)
	}
	mu.Lock()
	now = now.Add(31 * time.Second)
	mu.Unlock()
	in, err := p.GetInstance(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if in.State != cloud.StateActive || !strings.HasPrefix(in.PublicIPv4, "203.0.113.") && !strings.HasPrefix(in.PublicIPv4, "192.0.2.") {
		t.Fatalf("booted instance = %+v", in)
	}
	if err := p.DeleteInstance(ctx, ids[0]); err != nil {
		t.Fatal(err)
	}
	if err := p.DeleteInstance(ctx, ids[0]); err != nil {
		t.Fatalf("deleting a missing droplet: %v", err)
	}
	_, err = p.GetInstance(ctx, ids[0])
	_ = asCloudError(t, err, cloud.CodeNotFound)
	if !errors.Is(err, cloud.ErrNotFound) {
		t.Fatal("errors.Is(ErrNotFound) fails")
	}
	if all, _ := p.ListInstances(ctx, "devpilot"); len(all) != 4 {
		t.Fatalf("after delete: %d droplets", len(all))
	}
}

type fakeRuntime struct {
	mu        sync.Mutex
	booted    []simrun.Machine
	destroyed []string
}

func (r *fakeRuntime) Boot(_ context.Context, m simrun.Machine) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.booted = append(r.booted, m)
	return nil
}

func (r *fakeRuntime) Destroy(_ context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.destroyed = append(r.destroyed, id)
	return nil
}

func TestRuntimeBootAndDestroy(t *testing.T) {
	t.Parallel()
	rt := &fakeRuntime{}
	e := newEnv(t, func(o *dosim.Options) { o.Runtime = rt })
	p := e.provider(t, rwToken)
	ctx := context.Background()
	key := pubKey(t)
	keyID, err := p.EnsureSSHKey(ctx, "k", key)
	if err != nil {
		t.Fatal(err)
	}
	in, err := p.CreateInstance(ctx, cloud.InstanceSpec{
		Name: "app-1", Region: "lon1", Size: "s-1vcpu-1gb", Image: "ubuntu-24-04-x64",
		UserData: "#!/bin/sh\necho hi\n", Tags: []string{"devpilot-srv-1"}, SSHKeyIDs: []string{keyID},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Boot runs in the background; the droplet turns active once it returned.
	for deadline := time.Now().Add(5 * time.Second); ; {
		got, err := p.GetInstance(ctx, in.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.State == cloud.StateActive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("droplet never turned active: %+v", got)
		}
		time.Sleep(5 * time.Millisecond)
	}
	rt.mu.Lock()
	m := rt.booted[0]
	rt.mu.Unlock()
	if m.ID != in.ID || m.Hostname != "app-1" || m.Region != "lon1" || m.Provider != cloud.DigitalOcean ||
		string(m.UserData) != "#!/bin/sh\necho hi\n" || !slices.Equal(m.Tags, []string{"devpilot-srv-1"}) ||
		len(m.SSHAuthorizedKeys) != 1 || !strings.HasPrefix(key, m.SSHAuthorizedKeys[0][:40]) || m.PublicIPv4 == "" {
		t.Fatalf("machine = %+v", m)
	}
	if err := p.DeleteInstance(ctx, in.ID); err != nil {
		t.Fatal(err)
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if !slices.Equal(rt.destroyed, []string{in.ID}) {
		t.Fatalf("destroyed = %v", rt.destroyed)
	}
}

// A token must never show up in an error or a log line, whatever fails.
func TestTokenNeverInErrors(t *testing.T) {
	t.Parallel()
	const canary = "dop_v1_CANARY_a8f3c2e1d4b5a6978877665544332211ffeeddccbbaa"
	e := newEnv(t)
	e.sim.AddToken(canary, false)
	p := e.provider(t, canary)
	ctx := context.Background()
	var errs []error
	_, err := p.Validate(ctx)
	errs = append(errs, err)
	_, err = p.CreateInstance(ctx, cloud.InstanceSpec{Name: "web-1", Region: "fra1", Size: "s-1vcpu-1gb", Image: "debian-12-x64"})
	errs = append(errs, err)
	_, err = p.EnsureFirewall(ctx, cloud.FirewallSpec{Name: "fw", Tag: "t", Ports: []int{22}})
	errs = append(errs, err)
	e.sim.FailNext5xx(10, 0)
	_, err = p.Catalog(ctx)
	errs = append(errs, err)
	e.sim.RemoveToken(canary)
	_, err = p.Validate(ctx)
	errs = append(errs, err)
	_, err = p.EnsureSSHKey(ctx, "k", pubKey(t))
	errs = append(errs, err)
	for i, err := range errs {
		if err == nil {
			t.Fatalf("call %d unexpectedly succeeded", i)
		}
		var ce *cloud.Error
		errors.As(err, &ce)
		for _, s := range []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", ce), ce.Hint} {
			if strings.Contains(s, canary) || strings.Contains(s, "CANARY") {
				t.Fatalf("error %d leaks the token: %s", i, s)
			}
		}
	}
	for _, entry := range e.logs.All() {
		line := fmt.Sprint(entry.Message, entry.ContextMap())
		if strings.Contains(line, "CANARY") {
			t.Fatalf("log leaks the token: %s", line)
		}
	}
}
