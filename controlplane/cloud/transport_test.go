package cloud

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/secrets"
)

func resp(status int, hdr ...string) *http.Response {
	r := &http.Response{StatusCode: status, Header: http.Header{}}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	return r
}

func TestClassify(t *testing.T) {
	now := time.Now()
	reset := strconv.FormatInt(now.Add(20*time.Second).Unix(), 10)
	farReset := strconv.FormatInt(now.Add(time.Hour).Unix(), 10)
	cases := []struct {
		name  string
		resp  *http.Response
		err   error
		retry bool
	}{
		{"200 is final", resp(200), nil, false},
		{"400 is final", resp(400), nil, false},
		{"401 is final: retrying a bad token never helps", resp(401), nil, false},
		{"403 is final", resp(403), nil, false},
		{"404 is final", resp(404), nil, false},
		{"422 is final", resp(422), nil, false},
		{"429 without a hint is retried", resp(429), nil, true},
		{"429 with a short Retry-After is retried", resp(429, "Retry-After", "2"), nil, true},
		{"429 asking for longer than MaxWait is final", resp(429, "Retry-After", "3600"), nil, false},
		{"429 with ratelimit-reset soon is retried", resp(429, "Ratelimit-Remaining", "0", "Ratelimit-Reset", reset), nil, true},
		{"429 with ratelimit-reset in an hour is final", resp(429, "Ratelimit-Remaining", "0", "Ratelimit-Reset", farReset), nil, false},
		{"500 is retried", resp(500), nil, true},
		{"502 is retried", resp(502), nil, true},
		{"503 is retried", resp(503), nil, true},
		{"501 is final", resp(501), nil, false},
		{"connection refused is retried", nil, &url.Error{Op: "Get", URL: "http://x", Err: &net.OpError{Op: "dial", Err: errors.New("connection refused")}}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, _ := Classify(context.Background(), c.resp, c.err, time.Minute)
			if got != c.retry {
				t.Errorf("Classify = %v, want %v", got, c.retry)
			}
		})
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got, _ := Classify(ctx, resp(500), nil, time.Minute); got {
		t.Error("a cancelled request must not be retried")
	}
}

func TestBackoffIsFullJitterWithinCap(t *testing.T) {
	for attempt := 0; attempt < 10; attempt++ {
		ceiling := min(500*time.Millisecond<<attempt, 8*time.Second)
		var maxSeen time.Duration
		for i := 0; i < 200; i++ {
			d := Backoff(500*time.Millisecond, 8*time.Second, attempt, nil, time.Now())
			if d < 0 || d > ceiling {
				t.Fatalf("attempt %d: wait %v outside [0, %v]", attempt, d, ceiling)
			}
			maxSeen = max(maxSeen, d)
		}
		if maxSeen < ceiling/2 {
			t.Errorf("attempt %d: waits never came near the ceiling %v (max %v): not full jitter", attempt, ceiling, maxSeen)
		}
	}
	d := Backoff(500*time.Millisecond, 8*time.Second, 0, resp(429, "Retry-After", "3"), time.Now())
	if d < 3*time.Second || d > 3300*time.Millisecond+time.Millisecond {
		t.Errorf("Retry-After 3 gave a wait of %v, want 3 s plus at most 10%%", d)
	}
}

// TestClientRetriesAndAuthenticates runs the real client against a server
// that fails twice: it must come through, and send the token on every try.
func TestClientRetriesAndAuthenticates(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok-123" {
			t.Errorf("try %d: Authorization %q", calls.Load()+1, r.Header.Get("Authorization"))
		}
		switch calls.Add(1) {
		case 1:
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusTooManyRequests)
		case 2:
			w.WriteHeader(http.StatusBadGateway)
		default:
			_, _ = w.Write([]byte(`{"ok":true}`))
		}
	}))
	defer srv.Close()
	c := NewHTTPClient(TransportConfig{Token: secrets.New("tok-123"), MinWait: time.Millisecond, MaxWait: 10 * time.Millisecond})
	ctx, capture := WithCapture(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL, nil)
	r, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = r.Body.Close()
	if r.StatusCode != 200 || calls.Load() != 3 || capture.Status != 200 {
		t.Errorf("status %d after %d calls (capture %d), want 200 after 3", r.StatusCode, calls.Load(), capture.Status)
	}

	// A 401 is final: one call, and the capture holds the body for mapping.
	calls.Store(100)
	srv401 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = w.Write([]byte(`{"id":"unauthorized"}`))
	}))
	defer srv401.Close()
	ctx, capture = WithCapture(context.Background())
	req, _ = http.NewRequestWithContext(ctx, "GET", srv401.URL, nil)
	r, err = c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_ = r.Body.Close()
	if calls.Load() != 101 || capture.Status != 401 || string(capture.Body) != `{"id":"unauthorized"}` {
		t.Errorf("401: %d calls, capture %d %q", calls.Load()-100, capture.Status, capture.Body)
	}
}

// TestOnRefusedSeesOnlyCredentialRefusals: the hook hears 401 and 403
// (the credential's verdict), never 404, 429 or 5xx.
func TestOnRefusedSeesOnlyCredentialRefusals(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		code, _ := strconv.Atoi(r.URL.Query().Get("code"))
		w.WriteHeader(code)
	}))
	defer srv.Close()
	var heard []int
	c := NewHTTPClient(TransportConfig{Token: secrets.New("t"), MaxRetries: 1, MinWait: time.Millisecond, MaxWait: time.Millisecond,
		OnRefused: func(s int) { heard = append(heard, s) }})
	for _, code := range []int{200, 401, 404, 403, 429, 500} {
		r, err := c.Get(srv.URL + "/?code=" + strconv.Itoa(code))
		if err != nil {
			t.Fatal(err)
		}
		_ = r.Body.Close()
	}
	if len(heard) != 2 || heard[0] != 401 || heard[1] != 403 {
		t.Errorf("OnRefused heard %v, want [401 403]", heard)
	}
}
