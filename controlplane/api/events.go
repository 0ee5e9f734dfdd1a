package api

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/events"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/store"
)

// eventScan bounds the rows one request reads to fill a page of events
// that match a type pattern: past it, the page ends early with a next link
// that continues from where the scan stopped.
const (
	eventChunk = 500
	eventScan  = 20 * eventChunk
)

func (a *API) eventRoutes() {
	a.handle("GET /v1/workspaces/{ws}/events", read, a.listEvents)
}

// eventQuery is a request's ?after, ?last, ?type and ?limit.
type eventQuery struct {
	after   int64
	last    int64 // >0: start after the last N matching events
	pattern string
	limit   int
}

func parseEventQuery(r *http.Request, follow bool) (eventQuery, error) {
	v := r.URL.Query()
	eq := eventQuery{pattern: "*", limit: apitypes.DefaultLimit}
	if p := v.Get("type"); p != "" {
		if err := events.ValidPattern(p); err != nil {
			return eq, err
		}
		eq.pattern = p
	}
	lastID := ""
	if follow {
		lastID = r.Header.Get("Last-Event-ID")
	}
	after, err := resumeAfter(v.Get("after"), lastID)
	if err != nil {
		return eq, err
	}
	eq.after = after
	if s := v.Get("last"); s != "" {
		n, err := intParam(s, "last")
		if err != nil || n < 1 || n > apitypes.MaxLimit {
			return eq, problem.Validation("Use last=1.."+strconv.Itoa(apitypes.MaxLimit)+" to start at the most recent events.",
				"last must be an integer from 1 to %d", apitypes.MaxLimit)
		}
		if v.Get("after") != "" {
			return eq, problem.Validation("Pass either after=ID (continue after an event) or last=N (the N most recent), not both.",
				"after and last are exclusive")
		}
		if lastID == "" { // a reconnecting follower resumes where it was
			eq.last = n
		}
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > apitypes.MaxLimit || strconv.Itoa(n) != s {
			return eq, problem.Validation(limitHint, "limit must be an integer from 1 to %d", apitypes.MaxLimit)
		}
		eq.limit = n
	}
	return eq, nil
}

// listEvents returns a page of the workspace's events, oldest first
// (?after=ID&limit=N&type=PATTERN, or ?last=N for the most recent), or with
// ?follow=1 streams them as server-sent events.
func (a *API) listEvents(w http.ResponseWriter, r *http.Request, c *call) error {
	v := r.URL.Query()
	follow := v.Get("follow") == "1" || v.Get("follow") == "true"
	eq, err := parseEventQuery(r, follow)
	if err != nil {
		return err
	}
	ctx := r.Context()
	if eq.last > 0 {
		if eq.after, err = a.afterLast(ctx, c.ws.ID, eq.pattern, eq.last); err != nil {
			return err
		}
	}
	if follow {
		return a.followEvents(w, r, c.ws.ID, eq)
	}
	out := apitypes.EventList{Events: []apitypes.Event{}}
	after, scanned := eq.after, 0
	more := false
	for scanned < eventScan && !more {
		evs, err := a.o.Store.Q().EventsAfter(ctx, c.ws.ID, after, eventChunk)
		if err != nil {
			return err
		}
		for _, e := range evs {
			if len(out.Events) == eq.limit {
				more = true
				break
			}
			after = e.ID
			if events.Match(eq.pattern, e.Type) {
				out.Events = append(out.Events, eventOut(e))
			}
		}
		scanned += len(evs)
		if len(evs) < eventChunk {
			break
		}
		if scanned >= eventScan {
			more = true // the scan budget ran out: continue from here
		}
	}
	if more {
		q := r.URL.Query()
		q.Del("last")
		q.Set("after", strconv.FormatInt(after, 10))
		out.Next = r.URL.Path + "?" + q.Encode()
	}
	return writeJSON(w, http.StatusOK, out)
}

// afterLast is the id to list after so that the last n events matching
// pattern come first.
func (a *API) afterLast(ctx context.Context, ws, pattern string, n int64) (int64, error) {
	before, scanned, found := int64(0), 0, int64(0)
	for scanned < eventScan {
		evs, err := a.o.Store.Q().EventsBefore(ctx, ws, before, eventChunk)
		if err != nil {
			return 0, err
		}
		for _, e := range evs {
			before = e.ID
			if events.Match(pattern, e.Type) {
				if found++; found == n {
					return e.ID - 1, nil
				}
			}
		}
		scanned += len(evs)
		if len(evs) < eventChunk {
			break
		}
	}
	if before > 0 {
		return before - 1, nil // fewer than n: from the oldest seen
	}
	return 0, nil
}

// followEvents streams events after eq.after as server-sent events: id =
// the event id (a reconnecting EventSource resumes with Last-Event-ID),
// event = its type, data = the JSON event; comments keep the connection
// alive. It wakes when this process commits events (the change feed) and
// also reads the table every EventsPoll, for events another control plane
// on the same database wrote.
func (a *API) followEvents(w http.ResponseWriter, r *http.Request, ws string, eq eventQuery) error {
	fl, ok := w.(http.Flusher)
	if !ok {
		return fmt.Errorf("streaming unsupported by the response writer")
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(w, ": following events\n\n")
	fl.Flush()
	err := a.streamEvents(r.Context(), &sse{w: w, f: fl}, ws, eq)
	if err != nil && r.Context().Err() == nil {
		a.log.Debug("event follow ended", zap.String("workspace", ws), zap.Error(err))
	}
	return nil
}

func (a *API) streamEvents(ctx context.Context, s *sse, ws string, eq eventQuery) error {
	feed := a.o.Store.Changes()
	cur := feed.Now()
	poll := time.NewTicker(a.o.EventsPoll)
	defer poll.Stop()
	hb := time.NewTicker(a.o.EventsHeartbeat)
	defer hb.Stop()
	after := eq.after
	for {
		// Take the wake channel before reading, so a commit between the
		// read and the wait still wakes us.
		_, next, _, wake, err := feed.Since(cur)
		if err != nil {
			return nil // the store is closing
		}
		cur = next
		evs, err := a.o.Store.Q().EventsAfter(ctx, ws, after, eventChunk)
		if err != nil {
			return err
		}
		for _, e := range evs {
			after = e.ID
			if !events.Match(eq.pattern, e.Type) {
				continue
			}
			if err := s.event(strconv.FormatInt(e.ID, 10), e.Type, eventOut(e)); err != nil {
				return err
			}
		}
		if len(evs) == eventChunk {
			continue
		}
		for waiting := true; waiting; {
			select {
			case <-wake:
				// Only a commit that appended events is worth a read.
				got, next, ok, w, err := feed.Since(cur)
				if err != nil {
					return nil
				}
				if !ok {
					waiting = false
					break
				}
				for _, e := range got {
					if e.Topic == store.TopicEvents {
						waiting = false
					}
				}
				if waiting {
					cur, wake = next, w
				}
			case <-poll.C:
				waiting = false
			case <-hb.C:
				if err := s.Heartbeat(); err != nil {
					return err
				}
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
}
