package integrations_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
	"github.com/devpilot/devpilot/controlplane/cloud/vultr"
	"github.com/devpilot/devpilot/controlplane/cloud/vultr/vultrsim"
	"github.com/devpilot/devpilot/controlplane/integrations"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// http.Transport keeps idle connections' goroutines until they time out.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

const (
	doToken  = "dop_v1_" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	vultrKey = "VULTRKEY0123456789ABCDEFGHIJKLMNOPQR"
)

// env is an integrations service on a real store, reaching the DigitalOcean
// and Vultr simulators over HTTP through godo and govultr.
type env struct {
	svc     *integrations.Service
	st      *store.Store
	ws      string
	doURL   string
	vultURL string
	doSrv   *httptest.Server
	opts    integrations.Options
}

func newEnv(t *testing.T, tweak ...func(*integrations.Options)) *env {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, storetest.Database(t), filepath.Join(dir, "devpilot.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	keys, err := secrets.LoadOrCreateKeyring(filepath.Join(dir, "keyring.json"))
	if err != nil {
		t.Fatal(err)
	}
	ws := store.Workspace{ID: "ws_test", Slug: "default", Name: "Default", CreatedAt: time.Now().UTC()}
	if err := st.Q().CreateWorkspace(ctx, ws); err != nil {
		t.Fatal(err)
	}
	do := dosim.New(dosim.Options{})
	do.AddToken(doToken, true)
	vu := vultrsim.New(vultrsim.Options{})
	vu.AddKey(vultrKey, vultrsim.KeyOptions{Name: "Owner", Email: "owner@example.com"})
	e := &env{st: st, ws: ws.ID}
	e.doSrv = httptest.NewServer(do.Handler())
	vuSrv := httptest.NewServer(vu.Handler())
	e.doURL, e.vultURL = e.doSrv.URL, vuSrv.URL
	tr := &http.Transport{}
	t.Cleanup(func() {
		e.doSrv.Close()
		vuSrv.Close()
		do.Close()
		vu.Close()
		tr.CloseIdleConnections()
	})
	connect := func(provider string, secret secrets.Value, onRefused func(int)) (cloud.Provider, error) {
		c := cloud.Config{Secret: secret, Base: tr, MaxRetries: 2, MinWait: time.Millisecond, MaxWait: 20 * time.Millisecond,
			OnRefused: onRefused}
		if provider == cloud.Vultr {
			c.BaseURL = e.vultURL
			return vultr.New(c)
		}
		c.BaseURL = e.doURL
		return digitalocean.New(c)
	}
	o := integrations.Options{Store: st, Keys: keys, Connect: connect, Timeout: 30 * time.Second}
	for _, f := range tweak {
		f(&o)
	}
	e.opts = o
	e.svc = integrations.New(o)
	return e
}

// fault sets faults through a simulator's control API.
func fault(t *testing.T, base string, body any) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post(base+"/_sim/faults", "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		t.Fatalf("set faults: %d", resp.StatusCode)
	}
}

func TestTemporaryFailureIsNoVerdictOnTheCredential(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, provider string
		fail           func(*testing.T, *env)
		code           cloud.Code
	}{
		{"digitalocean 429", cloud.DigitalOcean, func(t *testing.T, e *env) {
			fault(t, e.doURL, map[string]any{"rate_limit": map[string]int{"requests": 20, "retry_after_s": 60}})
		}, cloud.CodeRateLimited},
		{"digitalocean 5xx", cloud.DigitalOcean, func(t *testing.T, e *env) {
			fault(t, e.doURL, map[string]any{"server_errors": map[string]int{"requests": 20, "status": 503}})
		}, cloud.CodeProviderError},
		{"digitalocean unreachable", cloud.DigitalOcean, func(t *testing.T, e *env) {
			e.doSrv.Close()
		}, cloud.CodeProviderError},
		{"vultr 429", cloud.Vultr, func(t *testing.T, e *env) {
			fault(t, e.vultURL, map[string]any{"rate_limit_next": 20, "retry_after_s": 60})
		}, cloud.CodeRateLimited},
		{"vultr 5xx", cloud.Vultr, func(t *testing.T, e *env) {
			fault(t, e.vultURL, map[string]any{"server_error_next": 20})
		}, cloud.CodeProviderError},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			e := newEnv(t)
			secret := doToken
			if tc.provider == cloud.Vultr {
				secret = vultrKey
			}
			in, err := e.svc.Connect(ctx, "test", e.ws, tc.provider, "main", secrets.New(secret))
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			tc.fail(t, e)
			_, err = e.svc.Test(ctx, "test", e.ws, in.ID)
			var ce *cloud.Error
			if !errors.As(err, &ce) || ce.Code != tc.code || ce.Hint == "" {
				t.Fatalf("test during the fault: %v, want a %s with a hint", err, tc.code)
			}
			got, err := e.svc.Get(ctx, e.ws, in.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.Status != integrations.StatusValid {
				t.Errorf("status after a temporary failure = %q, want it left %q", got.Status, integrations.StatusValid)
			}
			if got.LastError == nil || got.LastError.Code != string(tc.code) {
				t.Errorf("last_error = %+v, want the attempt's %s recorded", got.LastError, tc.code)
			}
			// (PostgreSQL keeps microseconds.)
			if got.LastValidatedAt == nil || got.LastValidatedAt.Sub(*in.LastValidatedAt).Abs() >= time.Millisecond {
				t.Errorf("last_validated_at moved from %v to %v without a verdict", in.LastValidatedAt, got.LastValidatedAt)
			}
			entries, err := e.st.Q().ListAudit(ctx, e.ws, 0, 10)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, a := range entries {
				found = found || a.Action == "integration.test" && strings.Contains(a.DetailJSON, `"inconclusive"`) &&
					strings.Contains(a.DetailJSON, string(tc.code))
			}
			if !found {
				t.Errorf("audit log lacks the inconclusive test: %+v", entries)
			}
		})
	}
}

// Once the provider answers again the temporary error is gone; a revoked
// credential is a verdict and turns the integration invalid.
func TestAfterTheFaultTheVerdictIsRecorded(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newEnv(t)
	in, err := e.svc.Connect(ctx, "test", e.ws, cloud.DigitalOcean, "main", secrets.New(doToken))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	fault(t, e.doURL, map[string]any{"rate_limit": map[string]int{"requests": 20, "retry_after_s": 60}})
	if _, err := e.svc.Test(ctx, "test", e.ws, in.ID); !errors.Is(err, cloud.ErrRateLimited) {
		t.Fatalf("test during 429s: %v", err)
	}
	fault(t, e.doURL, map[string]any{"rate_limit": map[string]int{"requests": 0}})
	if got, err := e.svc.Test(ctx, "test", e.ws, in.ID); err != nil || got.Status != integrations.StatusValid || got.LastError != nil {
		t.Fatalf("test after the 429s: %+v %v, want valid with no last_error", got, err)
	}
	resp, err := http.Post(e.doURL+"/_sim/faults", "application/json", strings.NewReader(`{"account_status": "locked"}`))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if _, err := e.svc.Test(ctx, "test", e.ws, in.ID); err == nil || cloud.Temporary(err) {
		t.Fatalf("test of a locked account: %v, want a refusal", err)
	}
	if got, err := e.svc.Get(ctx, e.ws, in.ID); err != nil || got.Status != integrations.StatusInvalid {
		t.Fatalf("after a refusal: %+v %v, want invalid", got, err)
	}
}
