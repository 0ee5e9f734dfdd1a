package web

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/devpilot/devpilot/controlplane/changefeed"
	"github.com/devpilot/devpilot/controlplane/store"
)

// The console's one event stream: GET /ui/w/{ws}/events?topics=servers,tasks
// sends a server-sent event "change" with data {"topic": "servers"} after
// each committed change of that kind (the store's change feed: no polling),
// and the page's script re-reads the parts of the page that show it.
//
// Every event has an id; a browser that reconnects sends the last one as
// Last-Event-ID and gets the changes it missed, or a "reset" event (reload
// every live part) when they are no longer known (a restart, a long
// absence). The first connection resumes from ?since=, the position the
// page was rendered at, so nothing between the render and the connection
// is lost. A stream ends after StreamMaxAge (the browser reconnects and
// the session is checked again).
//
// Events carry a topic only: what changed is read through the API with
// the session's token, so a stream shows nothing the token could not read.
var eventTopics = []string{store.TopicServers, store.TopicTasks, store.TopicDeployments, store.TopicRollouts, store.TopicEvents}

// Stream limits.
const (
	StreamMaxAge   = 5 * time.Minute
	StreamPing     = 20 * time.Second
	MaxStreams     = 1000 // open streams per control plane
	streamRetryMS  = 2000
	sinceParameter = "since"
)

var openStreams atomic.Int64

type sinceKey struct{}

// withSince remembers the change feed's position before a page reads its
// data, for the page's event stream to start from.
func (c *Console) withSince(r *http.Request) *http.Request {
	return r.WithContext(context.WithValue(r.Context(), sinceKey{}, c.o.Store.Changes().Now().ID()))
}

func sinceOf(r *http.Request) string {
	if r == nil {
		return ""
	}
	s, _ := r.Context().Value(sinceKey{}).(string)
	return s
}

func (c *Console) events(w http.ResponseWriter, r *http.Request, _ *session) error {
	var topics []string
	for _, t := range strings.Split(r.FormValue("topics"), ",") {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		if !slices.Contains(eventTopics, t) {
			return &apiError{Status: http.StatusBadRequest, Code: "validation_failed",
				Message: fmt.Sprintf("unknown topic %q", t), Hint: "Topics: " + strings.Join(eventTopics, ", ") + "."}
		}
		topics = append(topics, t)
	}
	if len(topics) == 0 {
		return &apiError{Status: http.StatusBadRequest, Code: "validation_failed",
			Message: "no topics", Hint: "Add ?topics= with one or more of " + strings.Join(eventTopics, ", ") + "."}
	}
	if openStreams.Add(1) > MaxStreams {
		openStreams.Add(-1)
		w.Header().Set("Retry-After", "10")
		return &apiError{Status: http.StatusServiceUnavailable, Code: "unavailable",
			Message: "too many open event streams", Hint: "Close some console tabs; the page retries by itself."}
	}
	defer openStreams.Add(-1)

	feed := c.o.Store.Changes()
	resumeFrom := r.Header.Get("Last-Event-ID")
	if resumeFrom == "" {
		resumeFrom = r.FormValue(sinceParameter)
	}
	cur, ok := feed.Now(), true
	if resumeFrom != "" {
		cur, ok = feed.Resume(resumeFrom)
	}

	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	send := func(format string, args ...any) bool {
		if _, err := fmt.Fprintf(w, format, args...); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	first := "ready"
	if !ok {
		first = "reset"
	}
	if !send("retry: %d\nid: %s\nevent: %s\ndata: {}\n\n", streamRetryMS, cur.ID(), first) {
		return nil
	}
	ping := time.NewTicker(StreamPing)
	defer ping.Stop()
	end := time.NewTimer(StreamMaxAge)
	defer end.Stop()
	for {
		evs, next, ok, wake, err := feed.Since(cur)
		if err != nil {
			return nil // the control plane is shutting down
		}
		cur = next
		if !ok {
			if !send("id: %s\nevent: reset\ndata: {}\n\n", next.ID()) {
				return nil
			}
		} else if e, any := lastOfTopics(evs, topics); any {
			// One event per wake-up is enough: the page re-reads what the
			// topics show, whatever the number of changes.
			for _, ev := range e {
				if !send("id: %s\nevent: change\ndata: {\"topic\":%q}\n\n", feed.EventID(ev), ev.Topic) {
					return nil
				}
			}
		}
		select {
		case <-wake:
		case <-ping.C:
			if !send(": ping\n\n") {
				return nil
			}
		case <-end.C:
			return nil
		case <-r.Context().Done():
			return nil
		}
	}
}

// lastOfTopics keeps, for each topic followed, its newest event, oldest
// first.
func lastOfTopics(evs []changefeed.Event, topics []string) ([]changefeed.Event, bool) {
	var out []changefeed.Event
	for i := len(evs) - 1; i >= 0; i-- {
		e := evs[i]
		if !slices.Contains(topics, e.Topic) || slices.ContainsFunc(out, func(o changefeed.Event) bool { return o.Topic == e.Topic }) {
			continue
		}
		out = append(out, e)
	}
	slices.Reverse(out)
	return out, len(out) > 0
}
