package contract

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/digitalocean/godo"
	yaml "github.com/pb33f/go-yaml"
	"github.com/vultr/govultr/v3"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// canned answers one fixed response and remembers the last request body.
type canned struct {
	status int
	ctype  string
	body   string
}

// serve starts a real HTTP server whose handler answers per path through the
// spec's Middleware.
func serve(t *testing.T, s *Spec, routes map[string]canned) (*httptest.Server, *Recorder) {
	t.Helper()
	mux := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := routes[r.Method+" "+r.URL.Path]
		if !ok {
			c, ok = routes[r.URL.Path]
		}
		if !ok {
			c = canned{status: 404, ctype: "application/json", body: `{"id":"not_found","message":"The resource you were accessing could not be found."}`}
		}
		if c.ctype != "" {
			w.Header().Set("Content-Type", c.ctype)
		}
		w.WriteHeader(c.status)
		_, _ = io.WriteString(w, c.body)
	})
	h, rec := s.Middleware(mux)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, rec
}

func do(t *testing.T, method, url, body string) {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer test-token")
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
}

const doAccountOK = `{"account":{"droplet_limit":25,"floating_ip_limit":5,"email":"sammy@digitalocean.com","name":"Sammy the Shark",
"uuid":"b6fr89dbf6d9156cace5f3c78dc9851d957381ef","email_verified":true,"status":"active","status_message":" ",
"team":{"uuid":"5df3e3004a17e242b7c20ca6c9fc25b701a47ece","name":"My Team"}}}`

const vultrAccountOK = `{"account":{"name":"Example Account","email":"admin@example.com","acls":["manage_users","billing"],
"balance":-100.55,"pending_charges":60.25,"last_payment_date":"2020-10-10T01:56:20+00:00","last_payment_amount":-1.25}}`

const doErr422 = `{"id":"unprocessable_entity","message":"creating this/these droplet(s) will exceed your droplet limit"}`

// specExample reads a named example from a DigitalOcean spec YAML file and
// returns it as JSON, so the tests answer with the spec's own data.
func specExample(t *testing.T, rel, name string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(Require(t), "digitalocean/specification", rel))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	ex, ok := m[name].(map[string]any)
	if !ok {
		t.Fatalf("no example %s in %s", name, rel)
	}
	b, err := json.Marshal(normalize(ex["value"]))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestDigitalOceanExchanges(t *testing.T) {
	t.Parallel()
	s := DigitalOcean(t)
	dropletCreated := specExample(t, "resources/droplets/responses/examples.yml", "droplet_create_response")
	json200 := func(body string) canned { return canned{200, "application/json", body} }

	tests := []struct {
		name   string
		method string
		path   string
		body   string
		answer canned
		want   []string // substrings; each must occur in some violation. nil = clean.
	}{
		{name: "account ok", method: "GET", path: "/v2/account", answer: json200(doAccountOK)},
		{name: "account wrong type", method: "GET", path: "/v2/account",
			answer: json200(strings.Replace(doAccountOK, `"droplet_limit":25`, `"droplet_limit":"lots"`, 1)),
			want:   []string{"GET /v2/account: response 200 body: $.account.droplet_limit"}},
		{name: "account missing required", method: "GET", path: "/v2/account",
			answer: json200(strings.Replace(doAccountOK, `"email_verified":true,`, ``, 1)),
			want:   []string{"email_verified"}},
		{name: "account wrong content type", method: "GET", path: "/v2/account",
			answer: canned{200, "text/plain", doAccountOK}, want: []string{"text/plain"}},
		{name: "unknown path", method: "GET", path: "/v2/nonsense", answer: json200(`{}`),
			want: []string{"GET /v2/nonsense: path is not in the digitalocean spec"}},
		{name: "unknown method", method: "PATCH", path: "/v2/account", answer: json200(`{}`),
			want: []string{"method PATCH is not an operation of /v2/account"}},
		{name: "undocumented status", method: "GET", path: "/v2/account", answer: canned{418, "application/json", `{"id":"teapot","message":"no"}`},
			want: []string{"response 418 is not documented"}},
		{name: "undocumented 201 on account", method: "GET", path: "/v2/account", answer: canned{201, "application/json", doAccountOK},
			want: []string{"response 201 is not documented"}},
		{name: "documented 401 with spec body", method: "GET", path: "/v2/account",
			answer: canned{401, "application/json", `{"id":"unauthorized","message":"Unable to authenticate you."}`}},
		{name: "401 with wrong error shape", method: "GET", path: "/v2/account",
			answer: canned{401, "application/json", `{"error":"Unable to authenticate you."}`}, want: []string{"response 401 body"}},
		{name: "generic 403 with error shape", method: "GET", path: "/v2/account",
			answer: canned{403, "application/json", `{"id":"forbidden","message":"You do not have access for the attempted action."}`}},
		{name: "generic 403 without id", method: "GET", path: "/v2/account",
			answer: canned{403, "application/json", `{"message":"nope"}`}, want: []string{"$.id must be a non-empty string"}},
		{name: "droplet create missing size accepted", method: "POST", path: "/v2/droplets",
			body:   `{"name":"web-1","region":"nyc3","image":"ubuntu-24-04-x64"}`,
			answer: canned{202, "application/json", dropletCreated}, want: []string{"POST /v2/droplets: request body", "size"}},
		{name: "droplet create missing size rejected with 422", method: "POST", path: "/v2/droplets",
			body:   `{"name":"web-1","region":"nyc3","image":"ubuntu-24-04-x64"}`,
			answer: canned{422, "application/json", `{"id":"unprocessable_entity","message":"size is required"}`}},
		{name: "droplet create droplet-limit 422", method: "POST", path: "/v2/droplets",
			body:   `{"name":"web-1","region":"nyc3","size":"s-1vcpu-1gb","image":"ubuntu-24-04-x64"}`,
			answer: canned{422, "application/json", doErr422}},
		{name: "null outside the exception still fails", method: "POST", path: "/v2/droplets",
			body:   `{"name":"web-1","region":"nyc3","size":"s-1vcpu-1gb","image":"ubuntu-24-04-x64","volumes":null}`,
			answer: canned{202, "application/json", dropletCreated}, want: []string{"volumes"}},
		{name: "droplet list meta resolved", method: "GET", path: "/v2/droplets",
			answer: json200(`{"droplets":[],"links":{},"meta":{"total":"lots"}}`), want: []string{"$.meta.total"}},
		{name: "droplet list ok", method: "GET", path: "/v2/droplets",
			answer: json200(`{"droplets":[],"links":{},"meta":{"total":0}}`)},
		{name: "ssh key duplicate 422", method: "POST", path: "/v2/account/keys",
			body:   `{"name":"k","public_key":"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0 x"}`,
			answer: canned{422, "application/json", `{"id":"unprocessable_entity","message":"SSH Key is already in use on your account"}`}},
		{name: "droplet delete 204", method: "DELETE", path: "/v2/droplets/3164444", answer: canned{204, "", ""}},
		{name: "firewall create godo nulls", method: "POST", path: "/v2/firewalls",
			body:   `{"name":"fw","inbound_rules":[{"protocol":"tcp","ports":"22","sources":{"addresses":["0.0.0.0/0"]}}],"outbound_rules":null,"droplet_ids":null,"tags":null}`,
			answer: canned{429, "application/json", `{"id":"too_many_requests","message":"API Rate limit exceeded."}`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, rec := serve(t, s, map[string]canned{tc.method + " " + tc.path: tc.answer})
			do(t, tc.method, srv.URL+tc.path, tc.body)
			assertViolations(t, rec.Violations(), tc.want)
		})
	}
}

func assertViolations(t *testing.T, got, want []string) {
	t.Helper()
	if len(want) == 0 {
		if len(got) > 0 {
			t.Errorf("want no violations, got:\n  %s", strings.Join(got, "\n  "))
		}
		return
	}
	all := strings.Join(got, "\n")
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("want a violation containing %q, got:\n  %s", w, strings.Join(got, "\n  "))
		}
	}
}

// TestGodoDropletCreate sends a real godo request (nil slices become JSON
// null) through the middleware: the exception lets it pass.
func TestGodoDropletCreate(t *testing.T) {
	t.Parallel()
	s := DigitalOcean(t)
	created := specExample(t, "resources/droplets/responses/examples.yml", "droplet_create_response")
	var mu sync.Mutex
	var sent []byte
	inner := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		sent = b
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, created)
	})
	h, rec := s.Middleware(inner)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	c, err := godo.New(srv.Client(), godo.SetBaseURL(srv.URL+"/"))
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = c.Droplets.Create(context.Background(), &godo.DropletCreateRequest{
		Name: "web-1", Region: "nyc3", Size: "s-1vcpu-1gb", Image: godo.DropletCreateImage{Slug: "ubuntu-24-04-x64"},
	})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	body := string(sent)
	mu.Unlock()
	if !strings.Contains(body, `"tags":null`) {
		t.Fatalf("godo no longer sends null tags (body %s); the exception may be obsolete", body)
	}
	rec.AssertClean(t)
	if got := rec.Operations(); len(got) != 1 || got[0] != "POST /v2/droplets" {
		t.Errorf("operations = %v", got)
	}
	// Without the exception the same body is a violation.
	bare := &Spec{provider: s.provider, basePath: s.basePath, doc: s.doc, validator: s.validator, router: s.router,
		genericErr: s.genericErr, errorShape: s.errorShape}
	req := httptest.NewRequest("POST", "/v2/droplets", nil)
	req.Header.Set("Content-Type", "application/json")
	resp := &http.Response{StatusCode: 202, Header: http.Header{"Content-Type": {"application/json"}}}
	s.mu.Lock() // bare shares s's validator
	defer s.mu.Unlock()
	assertViolations(t, bare.Check(req, []byte(body), resp, []byte(created)), []string{"got null, want array"})
}

func TestVultrExchanges(t *testing.T) {
	t.Parallel()
	s := Vultr(t)
	json200 := func(body string) canned { return canned{200, "application/json", body} }
	tests := []struct {
		name   string
		method string
		path   string
		body   string
		answer canned
		want   []string
	}{
		{name: "account ok", method: "GET", path: "/v2/account", answer: json200(vultrAccountOK)},
		{name: "account wrong type", method: "GET", path: "/v2/account",
			answer: json200(strings.Replace(vultrAccountOK, `"balance":-100.55`, `"balance":"lots"`, 1)),
			want:   []string{"GET /v2/account: response 200 body: $.account.balance"}},
		{name: "acls not strings", method: "GET", path: "/v2/account",
			answer: json200(strings.Replace(vultrAccountOK, `"acls":["manage_users","billing"]`, `"acls":[1]`, 1)),
			want:   []string{"$.account.acls"}},
		{name: "unknown path", method: "GET", path: "/v2/droplets", answer: json200(`{}`),
			want: []string{"GET /v2/droplets: path is not in the vultr spec"}},
		{name: "401 with vultr error body", method: "GET", path: "/v2/account",
			answer: canned{401, "application/json", `{"error":"Invalid API token.","status":401}`}},
		{name: "401 with DigitalOcean error body", method: "GET", path: "/v2/account",
			answer: canned{401, "application/json", `{"id":"unauthorized","message":"Unable to authenticate you."}`},
			want:   []string{"$.error must be a non-empty string", "$.status must be the HTTP status 401"}},
		{name: "429 generic", method: "GET", path: "/v2/plans",
			answer: canned{429, "application/json", `{"error":"Rate limit reached","status":429}`}},
		{name: "422 is not generic for vultr", method: "GET", path: "/v2/account",
			answer: canned{422, "application/json", `{"error":"x","status":422}`}, want: []string{"response 422 is not documented"}},
		{name: "instance create 400 documented without schema", method: "POST", path: "/v2/instances",
			body:   `{"region":"ewr","plan":"vc2-1c-1gb","os_id":2284}`,
			answer: canned{400, "application/json", `{"error":"Invalid plan chosen.","status":400}`}},
		{name: "instance create govultr nulls", method: "POST", path: "/v2/instances",
			body:   `{"region":"ewr","plan":"vc2-1c-1gb","os_id":2284,"tags":null,"block_devices":null,"vpc_only":false}`,
			answer: canned{400, "application/json", `{"error":"Invalid plan chosen.","status":"400"}`},
			want:   []string{"$.status must be the HTTP status 400"}},
		{name: "instance delete 204", method: "DELETE", path: "/v2/instances/4f0f12e5-1f84-404f-aa84-85f431ea5ec2", answer: canned{204, "", ""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, rec := serve(t, s, map[string]canned{tc.method + " " + tc.path: tc.answer})
			do(t, tc.method, srv.URL+tc.path, tc.body)
			assertViolations(t, rec.Violations(), tc.want)
		})
	}
}

// TestGovultr drives the real govultr client through the middleware.
func TestGovultr(t *testing.T) {
	t.Parallel()
	s := Vultr(t)
	srv, rec := serve(t, s, map[string]canned{
		"GET /v2/account":    {200, "application/json", vultrAccountOK},
		"POST /v2/instances": {400, "application/json", `{"error":"Invalid plan chosen.","status":400}`},
	})
	c := govultr.NewClient(srv.Client())
	if err := c.SetBaseURL(srv.URL); err != nil {
		t.Fatal(err)
	}
	c.SetRetryLimit(0)
	acct, _, err := c.Account.Get(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if acct.Balance != -100.55 {
		t.Errorf("balance = %v", acct.Balance)
	}
	_, _, err = c.Instance.Create(context.Background(), &govultr.InstanceCreateReq{Region: "ewr", Plan: "vc2-1c-1gb", OsID: 2284})
	if err == nil || !strings.Contains(err.Error(), "Invalid plan chosen.") {
		t.Errorf("create error = %v", err)
	}
	rec.AssertClean(t)
	want := []string{"GET /v2/account", "POST /v2/instances"}
	if got := rec.Operations(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("operations = %v, want %v", got, want)
	}
}

func TestMiddlewareSkipsSimControlAndRecordsOperations(t *testing.T) {
	t.Parallel()
	s := DigitalOcean(t)
	srv, rec := serve(t, s, map[string]canned{
		"GET /v2/account":            {200, "application/json", doAccountOK},
		"GET /v2/droplets":           {200, "application/json", `{"droplets":[],"links":{},"meta":{"total":0}}`},
		"GET /v2/droplets/42":        {404, "application/json", `{"id":"not_found","message":"The resource you were accessing could not be found."}`},
		"POST /_sim/fault":           {200, "text/plain", "not json at all"},
		"GET /_sim/state/everything": {418, "", ""},
	})
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			do(t, "GET", srv.URL+"/v2/account", "")
			do(t, "GET", srv.URL+"/v2/droplets?page=1&per_page=20", "")
			do(t, "GET", srv.URL+"/v2/droplets/42", "")
			do(t, "POST", srv.URL+"/_sim/fault", `{"x":`)
			do(t, "GET", srv.URL+"/_sim/state/everything", "")
		}()
	}
	wg.Wait()
	rec.AssertClean(t)
	want := []string{"GET /v2/account", "GET /v2/droplets", "GET /v2/droplets/{droplet_id}"}
	if got := rec.Operations(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("operations = %v, want %v", got, want)
	}

	// A recorder with violations makes AssertClean fail, listing method+path.
	srv2, rec2 := serve(t, s, map[string]canned{"GET /v2/account": {200, "application/json", `{"account":{"droplet_limit":"lots"}}`}})
	do(t, "GET", srv2.URL+"/v2/account", "")
	ft := &fakeTB{TB: t}
	rec2.AssertClean(ft)
	if !strings.Contains(ft.errors, "GET /v2/account") || !strings.Contains(ft.errors, "droplet_limit") {
		t.Errorf("AssertClean reported %q", ft.errors)
	}
}

func TestExceptionsNameRealOperations(t *testing.T) {
	t.Parallel()
	specs := map[string]*Spec{ProviderDigitalOcean: DigitalOcean(t), ProviderVultr: Vultr(t)}
	for _, e := range exceptions {
		s := specs[e.Provider]
		if s == nil {
			t.Errorf("exception %+v: unknown provider", e)
			continue
		}
		if e.Why == "" || len(e.NullAsAbsent) == 0 {
			t.Errorf("exception %s %s: needs Why and fields", e.Method, e.Path)
		}
		req := httptest.NewRequest(e.Method, strings.NewReplacer("{firewall_id}", "fb6045f1", "{instance-id}", "4f0f12e5").Replace(e.Path), nil)
		if _, op := s.check(req, nil, nil, nil); op != e.Method+" "+e.Path {
			t.Errorf("exception %s %s does not name an operation of the %s spec (matched %q)", e.Method, e.Path, e.Provider, op)
		}
	}
}

func TestBundleResolvesNestedReferences(t *testing.T) {
	t.Parallel()
	s := DigitalOcean(t)
	st := s.bundle
	t.Logf("digitalocean bundle: %+v", st)
	if st.Refs < 1000 || st.Leftover != 0 || st.JSONBytes == 0 {
		t.Errorf("bundle stats %+v: want >1000 references resolved and none left", st)
	}
	// The references libopenapi's rolodex resolved from the wrong base
	// (shared/meta.yml, shared/attributes/*.yml, shared/models/action_link.yml)
	// are enforced: a wrong type deep inside them is caught.
	req := httptest.NewRequest("GET", "/v2/droplets", nil)
	resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}}}
	assertViolations(t, s.Check(req, nil, resp, []byte(`{"droplets":[],"links":{},"meta":{"total":"x"}}`)), []string{"$.meta.total"})
	req = httptest.NewRequest("POST", "/v2/droplets", nil)
	req.Header.Set("Content-Type", "application/json")
	body := []byte(`{"name":"web-1","size":"s-1vcpu-1gb","image":"ubuntu-24-04-x64","tags":[7]}`)
	resp.StatusCode = 202
	assertViolations(t, s.Check(req, body, resp, []byte(`{}`)), []string{"$.tags[0]"})
}

func TestSpecsDir(t *testing.T) {
	t.Setenv(EnvSpecsDir, t.TempDir())
	if _, err := SpecsDir(); err == nil || !strings.Contains(err.Error(), "has no") {
		t.Errorf("SpecsDir with an empty dir: err = %v", err)
	}
	t.Setenv("CI", "")
	ft := &fakeTB{TB: t}
	if got := Require(ft); got != "" || !strings.Contains(ft.skipped, "contract test skipped") || !strings.Contains(ft.skipped, EnvSpecsDir) {
		t.Errorf("Require: got %q, skip message %q", got, ft.skipped)
	}
	t.Setenv("CI", "true")
	ft = &fakeTB{TB: t}
	Require(ft)
	if !strings.Contains(ft.fatal, "CI must provide them") {
		t.Errorf("Require in CI: fatal message %q", ft.fatal)
	}
}

func TestLoadTime(t *testing.T) {
	t.Parallel()
	for name, s := range map[string]*Spec{"digitalocean": DigitalOcean(t), "vultr": Vultr(t)} {
		t.Logf("%s: %d paths, loaded in %v", name, s.PathCount(), s.LoadTime)
	}
}

func BenchmarkLoadDigitalOcean(b *testing.B) {
	dir := Require(b)
	for i := 0; i < b.N; i++ {
		if _, err := LoadDigitalOcean(dir); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLoadVultr(b *testing.B) {
	dir := Require(b)
	for i := 0; i < b.N; i++ {
		if _, err := LoadVultr(dir); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCheckDropletCreate(b *testing.B) {
	s := DigitalOcean(b)
	body := []byte(`{"name":"web-1","region":"nyc3","size":"s-1vcpu-1gb","image":"ubuntu-24-04-x64","ssh_keys":null,"tags":null}`)
	raw, err := os.ReadFile(filepath.Join(Require(b), "digitalocean/specification/resources/droplets/responses/examples.yml"))
	if err != nil {
		b.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(raw, &m); err != nil {
		b.Fatal(err)
	}
	created, _ := json.Marshal(normalize(m["droplet_create_response"].(map[string]any)["value"]))
	resp := &http.Response{StatusCode: 202, Header: http.Header{"Content-Type": {"application/json"}}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		req := httptest.NewRequest("POST", "/v2/droplets", bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		if vs := s.Check(req, body, resp, created); len(vs) > 0 {
			b.Fatal(vs)
		}
	}
}

// fakeTB records Errorf/Skipf/Fatalf instead of acting on them.
type fakeTB struct {
	testing.TB
	errors, skipped, fatal string
}

func (f *fakeTB) Helper()                        {}
func (f *fakeTB) Errorf(format string, a ...any) { f.errors += fmt.Sprintf(format, a...) }
func (f *fakeTB) Skipf(format string, a ...any)  { f.skipped += fmt.Sprintf(format, a...) }
func (f *fakeTB) Fatalf(format string, a ...any) { f.fatal += fmt.Sprintf(format, a...) }
