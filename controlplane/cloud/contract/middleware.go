package contract

import (
	"bytes"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
)

// SimControlPrefix is the path prefix of the simulators' own control API;
// requests under it are passed through unchecked.
const SimControlPrefix = "/_sim/"

// Middleware wraps a simulator's handler: every request and response passing
// through is checked with Check and the results go to the returned Recorder.
// Requests whose path starts with "/_sim/" are not checked. The check runs
// after next has written its answer, before the handler returns.
func (s *Spec) Middleware(next http.Handler) (http.Handler, *Recorder) {
	rec := &Recorder{ops: map[string]bool{}}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, SimControlPrefix) {
			next.ServeHTTP(w, r)
			return
		}
		var reqBody []byte
		if r.Body != nil {
			b, err := io.ReadAll(r.Body)
			_ = r.Body.Close()
			if err != nil {
				rec.add([]string{r.Method + " " + r.URL.Path + ": reading request body: " + err.Error()}, "")
			}
			reqBody = b
		}
		r.Body = io.NopCloser(bytes.NewReader(reqBody))
		cw := &captureWriter{ResponseWriter: w}
		next.ServeHTTP(cw, r)
		if cw.status == 0 {
			cw.status = http.StatusOK
		}
		resp := &http.Response{StatusCode: cw.status, Status: http.StatusText(cw.status), Header: cw.sent}
		if resp.Header == nil {
			resp.Header = w.Header().Clone()
		}
		checkReq := r.Clone(r.Context())
		vs, op := s.check(checkReq, reqBody, resp, cw.body.Bytes())
		rec.add(vs, op)
	})
	return h, rec
}

// captureWriter records the status, the headers as sent and the body.
type captureWriter struct {
	http.ResponseWriter
	status int
	sent   http.Header
	body   bytes.Buffer
}

func (c *captureWriter) WriteHeader(code int) {
	if c.status == 0 {
		c.status = code
		c.sent = c.ResponseWriter.Header().Clone()
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *captureWriter) Write(p []byte) (int, error) {
	if c.status == 0 {
		c.WriteHeader(http.StatusOK)
	}
	c.body.Write(p)
	return c.ResponseWriter.Write(p)
}

// Flush passes through to the underlying writer when it can flush.
func (c *captureWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap lets http.ResponseController reach the underlying writer.
func (c *captureWriter) Unwrap() http.ResponseWriter { return c.ResponseWriter }

// Recorder collects what Middleware saw. It is safe for concurrent use.
type Recorder struct {
	mu         sync.Mutex
	violations []string
	ops        map[string]bool
}

func (r *Recorder) add(vs []string, op string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.violations = append(r.violations, vs...)
	if op != "" {
		r.ops[op] = true
	}
}

// Violations returns every violation recorded so far, in arrival order.
func (r *Recorder) Violations() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.violations...)
}

// Operations returns the sorted, distinct operations seen, as
// "METHOD /spec/path/{template}" (paths include the server base, e.g. Vultr's /v2).
func (r *Recorder) Operations() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.ops))
	for op := range r.ops {
		out = append(out, op)
	}
	sort.Strings(out)
	return out
}

// AssertClean reports every recorded violation with t.Errorf.
func (r *Recorder) AssertClean(t testing.TB) {
	t.Helper()
	vs := r.Violations()
	if len(vs) == 0 {
		return
	}
	t.Errorf("contract: %d OpenAPI contract violation(s):\n  %s", len(vs), strings.Join(vs, "\n  "))
}
