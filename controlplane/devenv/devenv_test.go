package devenv_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/devpilot/devpilot/controlplane/cloud/vultr/vultrsim"
	"github.com/devpilot/devpilot/controlplane/devenv"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
)

// agentDir holds a devpilot-agent built for this test run; simulated
// servers download and install it.
var agentDir string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		// make test-fast: this suite runs whole control planes with real
		// agents, kills them with SIGKILL and waits for them to recover.
		fmt.Println("devenv: skipped under -short (whole-system and SIGKILL suites; make test runs them)")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "devpilot-agent-build-")
	if err != nil {
		panic(err)
	}
	for _, name := range []string{"devpilot-agent", "devpilot"} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, name), "github.com/devpilot/devpilot/cmd/"+name)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", name, err, out)
			os.Exit(1)
		}
	}
	agentDir = dir
	defer func() { _ = os.RemoveAll(dir) }()
	goleak.VerifyTestMain(m,
		// http.Transport keeps idle connections' goroutines until they time out.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// syncBuffer collects everything the control plane logs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// harness is a dev environment plus an API client that records every
// response body it saw.
type harness struct {
	t      *testing.T
	env    *devenv.Env
	dir    string
	logs   *syncBuffer
	out    *syncBuffer
	client *http.Client
	token  string

	mu        sync.Mutex
	responses []string
}

func start(t *testing.T) *harness {
	t.Helper()
	return startWith(t, nil)
}

// startWith is start with the dev environment's config adjusted by tweak.
func startWith(t *testing.T, tweak func(*devenv.Config)) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), logs: &syncBuffer{}, out: &syncBuffer{}}
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	log := zap.New(zapcore.NewCore(enc, zapcore.AddSync(h.logs), zapcore.DebugLevel))
	cfg := devenv.Config{
		DataDir: h.dir, Database: storetest.Database(t), Listen: "127.0.0.1:0", Logger: log, Out: h.out, BootDelay: 10 * time.Millisecond,
		AgentDir: agentDir, HeartbeatInterval: time.Second, PollInterval: 50 * time.Millisecond,
		Replicas: storetest.Replicas(t),
	}
	if tweak != nil {
		tweak(&cfg)
	}
	env, err := devenv.Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start dev environment: %v", err)
	}
	h.env = env
	t.Cleanup(func() {
		if err := env.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		h.client.CloseIdleConnections()
	})
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(env.App.CACertPEM) {
		t.Fatal("no CA certificate")
	}
	h.client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	h.token = env.Values["DEVPILOT_TOKEN"]
	return h
}

type apiError struct {
	Error struct {
		Code, Message, Hint string
	} `json:"error"`
}

// call sends a request with token (the owner's if "") and decodes the answer.
// from makes the harness's requests come from the loopback address ip
// (127.0.0.0/8 all reaches the listener) until the returned func is called:
// the control plane throttles failed authentications per address.
func (h *harness) from(ip string) (restore func()) {
	h.t.Helper()
	old := h.client
	tr := old.Transport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext
	h.client = &http.Client{Transport: tr}
	return func() { tr.CloseIdleConnections(); h.client = old }
}

func (h *harness) call(token, method, path string, body any, out any) int {
	h.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, h.env.App.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	if token == "" {
		token = h.token
	}
	if token != "-" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, _ := io.ReadAll(resp.Body)
	h.mu.Lock()
	h.responses = append(h.responses, string(raw)+"\n"+headerText(resp.Header))
	h.mu.Unlock()
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			h.t.Fatalf("%s %s: decode %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode
}

func headerText(hd http.Header) string {
	var b strings.Builder
	_ = hd.Write(&b)
	return b.String()
}

type integration struct {
	ID            string `json:"id"`
	Provider      string `json:"provider"`
	AccessKey     string `json:"access_key"`
	SecretKeyHint string `json:"secret_key_hint"`
	Status        string `json:"status"`
	WriteAccess   string `json:"write_access"`
	LastError     *struct {
		Code string `json:"code"`
	} `json:"last_error"`
}

const base = "/v1/workspaces/default/integrations"

func (h *harness) connect(provider, label, secret string) (int, integration, apiError) {
	h.t.Helper()
	var raw json.RawMessage
	code := h.call("", "POST", base, map[string]string{"provider": provider, "access_key": label, "secret_key": secret}, &raw)
	var in integration
	var ae apiError
	_ = json.Unmarshal(raw, &in)
	_ = json.Unmarshal(raw, &ae)
	return code, in, ae
}

func TestIntegrationLifecycle(t *testing.T) {
	h := start(t)
	v := h.env.Values

	code, do, _ := h.connect("digitalocean", "prod do", v["DO_SIM_TOKEN"])
	if code != http.StatusCreated || do.Status != "valid" || do.WriteAccess != "yes" {
		t.Fatalf("connect digitalocean: %d %+v", code, do)
	}
	code, vu, _ := h.connect("vultr", "prod vultr", v["VULTR_SIM_KEY"])
	if code != http.StatusCreated || vu.Status != "valid" {
		t.Fatalf("connect vultr: %d %+v", code, vu)
	}

	var list struct{ Integrations []integration }
	if c := h.call("", "GET", base, nil, &list); c != 200 || len(list.Integrations) != 2 {
		t.Fatalf("list: %d %+v", c, list)
	}
	for _, in := range list.Integrations {
		want := v["DO_SIM_TOKEN"]
		if in.Provider == "vultr" {
			want = v["VULTR_SIM_KEY"]
		}
		if in.SecretKeyHint != want[len(want)-4:] {
			t.Errorf("%s hint = %q, want the last 4 characters of the secret", in.Provider, in.SecretKeyHint)
		}
	}

	// Connecting the same label twice is a conflict, not a second row.
	if code, _, ae := h.connect("digitalocean", "prod do", v["DO_SIM_TOKEN"]); code != http.StatusConflict || ae.Error.Code != "conflict" {
		t.Errorf("duplicate connect: %d %+v", code, ae)
	}

	for _, in := range []integration{do, vu} {
		var got integration
		if c := h.call("", "POST", base+"/"+in.ID+"/test", nil, &got); c != 200 || got.Status != "valid" {
			t.Errorf("test %s: %d %+v", in.Provider, c, got)
		}
	}

	// Rotating to a bad secret is refused and the old one keeps working.
	var ae apiError
	if c := h.call("", "PUT", base+"/"+do.ID+"/secret", map[string]string{"secret_key": "dop_v1_" + strings.Repeat("0", 64)}, &ae); c != http.StatusUnprocessableEntity || ae.Error.Code != "invalid_credentials" {
		t.Errorf("rotate to bad token: %d %+v", c, ae)
	}
	var got integration
	if c := h.call("", "POST", base+"/"+do.ID+"/test", nil, &got); c != 200 || got.SecretKeyHint != do.SecretKeyHint {
		t.Errorf("after refused rotation the old token must still work: %d %+v", c, got)
	}

	// Rotating to another good token swaps it.
	newTok := "dop_v1_" + strings.Repeat("ab", 32)
	h.env.DO.AddToken(newTok, true)
	if c := h.call("", "PUT", base+"/"+do.ID+"/secret", map[string]string{"secret_key": newTok}, &got); c != 200 || got.SecretKeyHint != "abab" {
		t.Errorf("rotate: %d %+v", c, got)
	}
	// The old token revoked at the provider no longer matters.
	h.env.DO.RemoveToken(v["DO_SIM_TOKEN"])
	if c := h.call("", "POST", base+"/"+do.ID+"/test", nil, &got); c != 200 {
		t.Errorf("test after rotation: %d", c)
	}

	// A token revoked at the provider shows up as invalid on test.
	h.env.DO.RemoveToken(newTok)
	if c := h.call("", "POST", base+"/"+do.ID+"/test", nil, &ae); c != http.StatusUnprocessableEntity || ae.Error.Code != "invalid_credentials" {
		t.Errorf("test with revoked token: %d %+v", c, ae)
	}
	if c := h.call("", "GET", base+"/"+do.ID, nil, &got); c != 200 || got.Status != "invalid" || got.LastError == nil || got.LastError.Code != "invalid_credentials" {
		t.Errorf("failed test must be recorded: %+v", got)
	}

	// Rename keeps everything else.
	if c := h.call("", "PATCH", base+"/"+vu.ID, map[string]string{"access_key": "vultr renamed"}, &got); c != 200 || got.AccessKey != "vultr renamed" || got.SecretKeyHint != vu.SecretKeyHint {
		t.Errorf("rename: %d %+v", c, got)
	}

	// Remove: gone from the API and its ciphertext gone from the database.
	for _, in := range []integration{do, vu} {
		if c := h.call("", "DELETE", base+"/"+in.ID, nil, nil); c != http.StatusNoContent {
			t.Errorf("remove %s: %d", in.ID, c)
		}
		if c := h.call("", "GET", base+"/"+in.ID, nil, nil); c != http.StatusNotFound {
			t.Errorf("get removed %s: %d", in.ID, c)
		}
	}
	var n int
	if err := h.env.App.Store.DB().QueryRow(`SELECT COUNT(*) FROM integrations`).Scan(&n); err != nil || n != 0 {
		t.Errorf("integrations rows after remove: %d (%v)", n, err)
	}

	var audit struct {
		Entries []struct{ Action string } `json:"entries"`
	}
	h.call("", "GET", "/v1/workspaces/default/audit", nil, &audit)
	actions := map[string]int{}
	for _, e := range audit.Entries {
		actions[e.Action]++
	}
	for _, a := range []string{"integration.connect", "integration.test", "integration.rotate", "integration.remove"} {
		if actions[a] == 0 {
			t.Errorf("audit log lacks %s: %v", a, actions)
		}
	}
}

func TestRefusalsAreTypedWithHints(t *testing.T) {
	h := start(t)
	v := h.env.Values
	cases := []struct {
		name, provider, secret, code, hint string
	}{
		{"read-only token", "digitalocean", v["DO_SIM_READONLY_TOKEN"], "insufficient_scope", "Read and Write"},
		{"ip allowlist", "vultr", v["VULTR_SIM_BLOCKED_KEY"], "ip_not_allowed", "allowlist"},
		{"garbage do token", "digitalocean", "not-a-real-token-at-all", "invalid_credentials", "token"},
		{"garbage vultr key", "vultr", "NOTAREALKEY0000000000000000", "invalid_credentials", "API"},
	}
	for _, c := range cases {
		code, _, ae := h.connect(c.provider, c.name, c.secret)
		if code != http.StatusUnprocessableEntity || ae.Error.Code != c.code || !strings.Contains(ae.Error.Hint, c.hint) {
			t.Errorf("%s: got %d %+v, want 422 %s with a hint mentioning %q", c.name, code, ae.Error, c.code, c.hint)
		}
	}
	var list struct{ Integrations []integration }
	h.call("", "GET", base, nil, &list)
	if len(list.Integrations) != 0 {
		t.Errorf("refused credentials must not be saved: %+v", list.Integrations)
	}

	code, in, ae := h.connect("nimbus", "x", "y")
	if code != http.StatusBadRequest || ae.Error.Code != "validation_failed" {
		t.Errorf("unknown provider: %d %+v %+v", code, in, ae)
	}
}

func TestRateLimitBurstIsWaitedOut(t *testing.T) {
	h := start(t)
	v := h.env.Values
	h.env.DO.FailNext429(2, time.Second)
	if code, in, ae := h.connect("digitalocean", "do", v["DO_SIM_TOKEN"]); code != http.StatusCreated {
		t.Fatalf("connect during a 429 burst: %d %+v %+v", code, in, ae)
	}
	h.env.Vultr.RateLimitNext(2, time.Second)
	if code, in, ae := h.connect("vultr", "vultr", v["VULTR_SIM_KEY"]); code != http.StatusCreated {
		t.Fatalf("connect during a 429 burst: %d %+v %+v", code, in, ae)
	}
}

type catalog struct {
	Sizes []struct {
		ID      string   `json:"id"`
		Regions []string `json:"regions"`
		SoldOut []string `json:"sold_out"`
	} `json:"sizes"`
	Images []struct {
		ID      string `json:"id"`
		Neutral string `json:"neutral"`
	} `json:"images"`
}

func TestCatalogShowsSoldOut(t *testing.T) {
	h := start(t)
	v := h.env.Values
	h.env.DO.SetSoldOut("nyc3", "s-1vcpu-1gb", true)
	h.env.Vultr.SetSoldOut("ewr", "vc2-1c-1gb", true)
	for _, c := range []struct{ provider, secret, size, region, neutralImage string }{
		{"digitalocean", v["DO_SIM_TOKEN"], "s-1vcpu-1gb", "nyc3", "debian-12-x64"},
		{"vultr", v["VULTR_SIM_KEY"], "vc2-1c-1gb", "ewr", "2136"},
	} {
		code, in, ae := h.connect(c.provider, c.provider, c.secret)
		if code != http.StatusCreated {
			t.Fatalf("connect %s: %d %+v", c.provider, code, ae)
		}
		var cat catalog
		if code := h.call("", "GET", base+"/"+in.ID+"/catalog", nil, &cat); code != 200 {
			t.Fatalf("catalog %s: %d", c.provider, code)
		}
		found := false
		for _, s := range cat.Sizes {
			if s.ID != c.size {
				continue
			}
			found = true
			if !contains(s.SoldOut, c.region) || contains(s.Regions, c.region) {
				t.Errorf("%s: %s must be sold out (not available) in %s: %+v", c.provider, c.size, c.region, s)
			}
			if len(s.Regions) == 0 {
				t.Errorf("%s: %s should still be available elsewhere", c.provider, c.size)
			}
		}
		if !found {
			t.Errorf("%s catalog lacks %s", c.provider, c.size)
		}
		neutral := ""
		for _, im := range cat.Images {
			if im.ID == c.neutralImage {
				neutral = im.Neutral
			}
		}
		if neutral != "debian-12" {
			t.Errorf("%s image %s should be known as debian-12, got %q", c.provider, c.neutralImage, neutral)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestCanarySecretsAppearNowhere plants recognisable secrets, drives every
// integration operation (successes and failures) with them, then searches
// the database, the whole data directory, the logs and every API response.
func TestCanarySecretsAppearNowhere(t *testing.T) {
	h := start(t)
	goodDO := "dop_v1_canary" + strings.Repeat("c", 51)
	goodVultr := "CANARYVULTRKEY" + strings.Repeat("Q", 22)
	rotated := "dop_v1_canary" + strings.Repeat("r", 51)
	refused := "dop_v1_canary" + strings.Repeat("x", 51)
	h.env.DO.AddToken(goodDO, true)
	h.env.DO.AddToken(rotated, true)
	h.env.Vultr.AddKey(goodVultr, vultrsim.KeyOptions{Name: "Canary"})

	_, do, _ := h.connect("digitalocean", "canary-do", goodDO)
	_, vu, _ := h.connect("vultr", "canary-vultr", goodVultr)
	h.connect("digitalocean", "refused", refused)
	h.connect("vultr", "refused", refused)
	h.call("", "POST", base+"/"+do.ID+"/test", nil, nil)
	h.call("", "PUT", base+"/"+do.ID+"/secret", map[string]string{"secret_key": refused}, nil)
	h.call("", "PUT", base+"/"+do.ID+"/secret", map[string]string{"secret_key": rotated}, nil)
	h.call("", "GET", base+"/"+vu.ID+"/catalog", nil, nil)
	h.call("", "GET", base, nil, nil)
	h.call("", "GET", "/v1/workspaces/default/audit", nil, nil)
	// Rotate the master key too, so old and new ciphertexts both exist on disk.
	if c := h.call("", "POST", "/v1/keys/rotate", nil, nil); c != 200 {
		t.Errorf("keys rotate: %d", c)
	}
	h.env.DO.RemoveToken(rotated)
	h.call("", "POST", base+"/"+do.ID+"/test", nil, nil) // fails: logged, recorded

	canaries := []string{goodDO, goodVultr, rotated, refused, "canaryccccccccccccccc", "CANARYVULTRKEYQQQQ", "canaryxxxxxxxx"}
	check := func(where, text string) {
		for _, c := range canaries {
			if strings.Contains(text, c) {
				t.Errorf("secret %q…%q found in %s", c[:10], c[len(c)-4:], where)
			}
		}
	}
	h.mu.Lock()
	for i, r := range h.responses {
		check("API response #"+string(rune('0'+i%10)), r)
	}
	h.mu.Unlock()
	check("logs", h.logs.String())
	check("stdout", h.out.String())
	// The database (SQLite: its file with the WAL folded in), then every file.
	check("database", storetest.Contents(t, h.env.App.Store))
	files := 0
	err := filepath.Walk(h.dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() || info.Name() == "sim-credentials" {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		files++
		check("data file "+filepath.Base(path), string(b))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files < 3 || !strings.Contains(h.logs.String(), "integration connected") {
		t.Fatalf("the search saw too little to prove anything: %d files, %d bytes of logs", files, len(h.logs.String()))
	}
}
