package api_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	"github.com/pb33f/libopenapi-validator/config"
	"github.com/pb33f/libopenapi-validator/router"
	v3 "github.com/pb33f/libopenapi/datamodel/high/v3"
	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/controlplane/api"
	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/devenv"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
)

func TestMain(m *testing.M) {
	defer func() {
		if agentBuild.dir != "" {
			_ = os.RemoveAll(agentBuild.dir)
		}
	}()
	goleak.VerifyTestMain(m,
		// http.Transport keeps idle connections' goroutines until they time out.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		// modernc.org/sqlite and pgx pools close asynchronously.
		goleak.IgnoreAnyFunction("database/sql.(*DB).connectionOpener"),
	)
}

// spec is the served OpenAPI document with its validator.
type spec struct {
	doc    *v3.Document
	mu     sync.Mutex // the validator compiles schemas lazily and is not race-free
	v      validator.Validator
	router router.Router
}

var loadSpec = sync.OnceValues(func() (*spec, error) {
	b, err := api.OpenAPI()
	if err != nil {
		return nil, err
	}
	d, err := libopenapi.NewDocument(b)
	if err != nil {
		return nil, err
	}
	m, err := d.BuildV3Model()
	if err != nil {
		return nil, err
	}
	return &spec{doc: &m.Model,
		v:      validator.NewValidatorFromV3Model(&m.Model, config.WithoutSecurityValidation()),
		router: router.NewRouter(&m.Model, router.WithPathOnlyMatching())}, nil
})

func openSpec(t testing.TB) *spec {
	t.Helper()
	s, err := loadSpec()
	if err != nil {
		t.Fatalf("openapi document: %v", err)
	}
	return s
}

// exchange is one request and its answer as the validating transport saw it.
type exchange struct {
	method, path, op string
	status           int
}

// checkingTransport validates every request and response that passes
// through it against the OpenAPI document and records the operation.
type checkingTransport struct {
	t     testing.TB
	s     *spec
	inner http.RoundTripper
	mu    sync.Mutex
	seen  []exchange
}

func (c *checkingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var reqBody []byte
	if req.Body != nil {
		reqBody, _ = io.ReadAll(req.Body)
		_ = req.Body.Close()
		req.Body = io.NopCloser(bytes.NewReader(reqBody))
	}
	resp, err := c.inner.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	where := req.Method + " " + req.URL.RequestURI()
	stream := strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	var body []byte
	if !stream {
		body, _ = io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(body))
	}
	vreq := req.Clone(context.Background())
	vreq.Body = io.NopCloser(bytes.NewReader(reqBody))
	c.s.mu.Lock()
	route, rerr := c.s.router.FindRoute(vreq)
	c.s.mu.Unlock()
	if rerr != nil || route == nil || route.Operation == nil {
		c.t.Errorf("%s: not an operation of the OpenAPI document (%v)", where, rerr)
		return resp, nil
	}
	op := req.Method + " " + route.Path
	c.mu.Lock()
	c.seen = append(c.seen, exchange{req.Method, req.URL.Path, op, resp.StatusCode})
	c.mu.Unlock()
	codes := route.Operation.Responses.Codes
	doc, ok := codes.Get(strconv.Itoa(resp.StatusCode))
	if !ok {
		var have []string
		for p := codes.First(); p != nil; p = p.Next() {
			have = append(have, p.Key())
		}
		c.t.Errorf("%s: status %d is not documented (documented: %s); body %s", where, resp.StatusCode, strings.Join(have, ", "), body)
		return resp, nil
	}
	if resp.StatusCode < 400 {
		// A refused request may be refused for breaking the document:
		// that is the point of refusing it.
		c.s.mu.Lock()
		_, errs := c.s.v.ValidateHttpRequestSync(vreq)
		c.s.mu.Unlock()
		for _, e := range errs {
			c.t.Errorf("%s: request breaks the document: %s (%s)", where, e.Message, e.Reason)
		}
	}
	if stream {
		return resp, nil
	}
	if doc.Content == nil || doc.Content.Len() == 0 {
		if len(bytes.TrimSpace(body)) > 0 {
			c.t.Errorf("%s: %d documents no body but got %q", where, resp.StatusCode, body)
		}
		return resp, nil
	}
	vresp := &http.Response{StatusCode: resp.StatusCode, Header: resp.Header.Clone(), Request: vreq,
		Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body))}
	c.s.mu.Lock()
	_, errs := c.s.v.ValidateHttpResponse(vreq, vresp)
	c.s.mu.Unlock()
	for _, e := range errs {
		msg := e.Message + " (" + e.Reason + ")"
		for _, se := range e.SchemaValidationErrors {
			msg += "; " + se.FieldPath + ": " + se.Reason
		}
		c.t.Errorf("%s: %d response breaks the document: %s; body %.400s", where, resp.StatusCode, msg, body)
	}
	return resp, nil
}

func (c *checkingTransport) exchanges() []exchange {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]exchange(nil), c.seen...)
}

// harness is a whole control plane (devenv: SQLite or PostgreSQL per
// DEVPILOT_TEST_DATABASE, both cloud simulators over loopback HTTP) and a
// client whose every exchange is held to the OpenAPI document.
type harness struct {
	t     *testing.T
	env   *devenv.Env
	check *checkingTransport
	base  *http.Transport
	token string // owner
	next  atomic.Int32
}

func start(t *testing.T) *harness { t.Helper(); return startWith(t, t.TempDir()) }

// agentBuild is a devpilot-agent built once for the tests whose simulated
// servers need a real agent (startWithAgents).
var agentBuild struct {
	once sync.Once
	dir  string
	err  error
}

// startWithAgents is start with a real agent to download: the simulated
// servers (sandboxed processes) enroll and come online.
func startWithAgents(t *testing.T) *harness {
	t.Helper()
	agentBuild.once.Do(func() {
		agentBuild.dir, agentBuild.err = os.MkdirTemp("", "devpilot-api-agent-")
		if agentBuild.err != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(agentBuild.dir, "devpilot-agent"), "github.com/devpilot/devpilot/cmd/devpilot-agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			agentBuild.err = fmt.Errorf("build devpilot-agent: %w\n%s", err, out)
		}
	})
	if agentBuild.err != nil {
		t.Fatal(agentBuild.err)
	}
	return startWith(t, agentBuild.dir)
}

func startWith(t *testing.T, agentDir string) *harness {
	t.Helper()
	dir := t.TempDir()
	env, err := devenv.Start(context.Background(), devenv.Config{
		DataDir: dir, Database: storetest.Database(t), Listen: "127.0.0.1:0", Out: io.Discard,
		BootDelay: 10 * time.Millisecond, PollInterval: 50 * time.Millisecond, AgentDir: agentDir,
		HeartbeatInterval: time.Second, Replicas: storetest.Replicas(t),
	})
	if err != nil {
		t.Fatalf("start control plane: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(env.App.CACertPEM) {
		t.Fatal("no CA certificate")
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	h := &harness{t: t, env: env, base: tr, token: env.Values["DEVPILOT_TOKEN"],
		check: &checkingTransport{t: t, s: openSpec(t), inner: tr}}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		if err := env.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return h
}

// response is an answer: its status, raw body and headers.
type response struct {
	status int
	body   []byte
	header http.Header
}

func (r response) decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %q: %v", r.body, err)
	}
}

func (r response) errorCode() string {
	var e apitypes.ErrorBody
	_ = json.Unmarshal(r.body, &e)
	return e.Error.Code
}

// do sends a request with token ("-": none) through the checking client.
// Requests without a valid token come from loopback addresses of their
// own (a fresh one every few), since the control plane throttles failed
// authentications per address.
func (h *harness) do(token, method, path string, body any) response {
	h.t.Helper()
	return h.doClient(h.client(token), token, method, path, body)
}

func (h *harness) client(token string) *http.Client {
	if token != "-" && !strings.HasSuffix(token, "x") {
		return &http.Client{Transport: h.check}
	}
	n := h.next.Add(1)
	tr := h.base.Clone()
	ip := net.IPv4(127, 0, byte(1+n/200), byte(2+n%200))
	tr.DialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}}).DialContext
	h.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: &checkingTransport{t: h.t, s: h.check.s, inner: tr}}
}

func (h *harness) doClient(cl *http.Client, token, method, path string, body any) response {
	h.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(body)
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, h.env.App.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "-" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := cl.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, _ := io.ReadAll(resp.Body)
	if tr, ok := cl.Transport.(*checkingTransport); ok && tr != h.check {
		h.check.mu.Lock()
		h.check.seen = append(h.check.seen, tr.exchanges()...)
		h.check.mu.Unlock()
		tr.mu.Lock()
		tr.seen = nil
		tr.mu.Unlock()
	}
	return response{resp.StatusCode, raw, resp.Header}
}

// must sends as the owner and fails the test unless the status is want.
func (h *harness) must(want int, method, path string, body, out any) response {
	h.t.Helper()
	r := h.do(h.token, method, path, body)
	if r.status != want {
		h.t.Fatalf("%s %s: %d %s, want %d", method, path, r.status, r.body, want)
	}
	if out != nil {
		r.decode(h.t, out)
	}
	return r
}

// token makes a token of role in workspace ws (as the owner).
func (h *harness) newToken(ws, role string) string {
	h.t.Helper()
	var tok apitypes.CreatedToken
	h.must(201, "POST", "/v1/workspaces/"+ws+"/tokens", apitypes.CreateToken{Name: role + "-" + ws, Role: role}, &tok)
	return tok.Secret
}

// connect connects the DigitalOcean simulator's read-write account.
func (h *harness) connect(ws, label string) apitypes.Integration {
	h.t.Helper()
	var in apitypes.Integration
	h.must(201, "POST", "/v1/workspaces/"+ws+"/integrations", apitypes.ConnectIntegration{Provider: "digitalocean",
		AccessKey: label, SecretKey: h.env.Values["DO_SIM_TOKEN"]}, &in)
	return in
}

// operations lists the document's operations as "METHOD /path".
func (s *spec) operations() []string {
	var out []string
	for p := s.doc.Paths.PathItems.First(); p != nil; p = p.Next() {
		for o := p.Value().GetOperations().First(); o != nil; o = o.Next() {
			out = append(out, strings.ToUpper(o.Key())+" "+p.Key())
		}
	}
	sort.Strings(out)
	return out
}
