package httpguard_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/httpguard"
)

// TestBodyDeadlineDoesNotCutSlowHandlers: the body deadline bounds the
// upload only. A handler that read its body and then works past the
// deadline (a slow cloud call), or a bodiless stream, keeps its context
// and its connection. (http.Server's ReadTimeout would cancel both.)
func TestBodyDeadlineDoesNotCutSlowHandlers(t *testing.T) {
	t.Parallel()
	const timeout = 200 * time.Millisecond
	g := httpguard.New(httpguard.Options{BodyTimeout: timeout})
	srv := httptest.NewServer(g.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		select {
		case <-r.Context().Done():
			http.Error(w, "context cancelled", http.StatusInternalServerError)
			return
		case <-time.After(5 * timeout): // work outlasting the body deadline
		}
		_, _ = io.WriteString(w, "done "+string(b))
	})))
	t.Cleanup(srv.Close)
	for _, c := range []struct{ method, body string }{{"POST", "payload"}, {"GET", ""}} {
		req, _ := http.NewRequest(c.method, srv.URL, strings.NewReader(c.body))
		if c.body == "" {
			req.Body = http.NoBody
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatalf("%s: %v", c.method, err)
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "done "+c.body {
			t.Errorf("%s outlasting the body deadline: %d %q", c.method, resp.StatusCode, b)
		}
	}
}
