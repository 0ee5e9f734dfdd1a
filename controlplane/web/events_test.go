package web_test

import (
	"bufio"
	"context"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/store"
)

// sse is one open event stream.
type sse struct {
	t    *testing.T
	resp *http.Response
	sc   *bufio.Scanner
}

type event struct{ id, typ, data string }

func (b *browser) stream(path string, header map[string]string) (*sse, answer) {
	b.p.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b.p.t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, "GET", b.p.srv.URL+path, nil)
	if err != nil {
		b.p.t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.p.t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		a := answer{status: resp.StatusCode, header: resp.Header}
		_ = resp.Body.Close()
		return nil, a
	}
	b.p.t.Cleanup(func() { _ = resp.Body.Close() })
	return &sse{t: b.p.t, resp: resp, sc: bufio.NewScanner(resp.Body)}, answer{status: 200, header: resp.Header}
}

// next reads the next event (comments skipped); the test's deadline and
// the stream's close bound the wait.
func (s *sse) next() event {
	s.t.Helper()
	var e event
	for s.sc.Scan() {
		line := s.sc.Text()
		switch {
		case line == "":
			if e.typ != "" {
				return e
			}
		case strings.HasPrefix(line, "id: "):
			e.id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "event: "):
			e.typ = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			e.data = strings.TrimPrefix(line, "data: ")
		}
	}
	s.t.Fatalf("stream ended: %v", s.sc.Err())
	return e
}

var sinceRE = regexp.MustCompile(`data-events-url="([^"]+)"`)

// A page's stream starts where the page was rendered, tells of each
// committed change of the topics it follows, resumes with Last-Event-ID
// and says "reset" when it cannot.
func TestEventStreamFollowsChangesAndResumes(t *testing.T) {
	t.Parallel()
	p := newPlain(t)
	ctx := context.Background()
	ws, err := p.a.Store.Q().WorkspaceBySlug(ctx, app.DefaultWS)
	if err != nil {
		t.Fatal(err)
	}
	b := p.browser()
	b.signIn(p.owner)
	pg := b.do("GET", "/ui/w/default/servers", nil, nil)
	m := sinceRE.FindStringSubmatch(pg.body)
	if m == nil {
		t.Fatalf("servers page has no event stream:\n%s", pg.body)
	}
	eventsURL := strings.ReplaceAll(m[1], "&amp;", "&")

	// A change between the page's render and the stream's start is not lost.
	now := time.Now().UTC()
	if err := p.a.Store.Q().CreateServer(ctx, store.Server{ID: "srv_e", WorkspaceID: ws.ID, Provider: "digitalocean", Name: "web-e",
		Region: "nyc3", Size: "s-1vcpu-1gb", Image: "debian-12", PortsJSON: "[22]", State: "offline",
		AgentTimeoutS: 900, CreatedAt: now, UpdatedAt: now}, nil); err != nil {
		t.Fatal(err)
	}
	s, a := b.stream(eventsURL, nil)
	if s == nil || a.header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %v", a.status, a.header)
	}
	if e := s.next(); e.typ != "ready" || e.id == "" {
		t.Fatalf("first event %+v", e)
	}
	e := s.next()
	if e.typ != "change" || e.data != `{"topic":"servers"}` {
		t.Fatalf("change before the stream opened: %+v", e)
	}

	// A change while it is open; its list fragment shows the new state.
	if _, err := p.a.Store.Q().SetServerState(ctx, "srv_e", "online", time.Now(), "offline"); err != nil {
		t.Fatal(err)
	}
	e = s.next()
	if e.typ != "change" || e.data != `{"topic":"servers"}` {
		t.Fatalf("change while open: %+v", e)
	}
	if frag := b.do("GET", "/ui/w/default/servers/live", nil, nil); frag.status != 200 || !strings.Contains(frag.body, "online") ||
		strings.Contains(frag.body, "<html") {
		t.Fatalf("servers fragment: %d\n%s", frag.status, frag.body)
	}

	// The browser reconnects with the last id: it gets what it missed.
	_ = s.resp.Body.Close()
	if _, err := p.a.Store.Q().SetServerState(ctx, "srv_e", "offline", time.Now(), "online"); err != nil {
		t.Fatal(err)
	}
	s2, _ := b.stream(eventsURL, map[string]string{"Last-Event-ID": e.id})
	if r := s2.next(); r.typ != "ready" {
		t.Fatalf("resumed stream began with %+v", r)
	}
	if r := s2.next(); r.typ != "change" || r.id == e.id {
		t.Fatalf("missed change not replayed: %+v", r)
	}
	// An id it cannot resume from (another process, garbage) says reset.
	s3, _ := b.stream(eventsURL, map[string]string{"Last-Event-ID": "0000-1"})
	if r := s3.next(); r.typ != "reset" {
		t.Fatalf("unresumable id: %+v", r)
	}

	// Closing the feed (the control plane shutting down) ends open streams:
	// http.Server.Shutdown would wait for them otherwise.
	p.a.Store.Changes().Close()
	for s3.sc.Scan() {
		_ = s3.sc.Text() // whatever was sent before the end
	}
	if err := s3.sc.Err(); err != nil {
		t.Errorf("stream after the feed closed: %v", err)
	}

	// Bad topics are refused naming the valid ones; a stranger gets 401.
	bad := b.do("GET", "/ui/w/default/events?topics=servers,secrets", nil, nil)
	if bad.status != 400 || !strings.Contains(bad.body, "servers, tasks, deployments") {
		t.Errorf("bad topic: %d\n%s", bad.status, bad.body)
	}
	if a := p.browser().do("GET", eventsURL, nil, nil); a.status != http.StatusUnauthorized {
		t.Errorf("stream without a session: %d", a.status)
	}
}

// Open event streams (one per console tab) hold their requests for
// minutes; a signed-in user's do not count against the address's cap on
// unauthenticated requests, so many tabs leave the console usable.
func TestManyStreamsDoNotExhaustTheUnauthenticatedCap(t *testing.T) {
	t.Parallel()
	p := newPlain(t)
	b := p.browser()
	b.signIn(p.owner)
	for i := range 40 { // over httpguard.DefaultMaxUnauthenticated
		s, a := b.stream("/ui/w/default/events?topics=servers", nil)
		if s == nil {
			t.Fatalf("stream %d: %d", i, a.status)
		}
		if e := s.next(); e.typ != "ready" {
			t.Fatalf("stream %d began with %+v", i, e)
		}
	}
	if a := b.do("GET", "/ui/w/default/servers", nil, nil); a.status != 200 {
		t.Errorf("a page with 40 streams open: %d", a.status)
	}
	if a := p.browser().do("GET", "/ui/signin", nil, nil); a.status != 200 {
		t.Errorf("the sign-in page from the same address: %d", a.status)
	}
}
