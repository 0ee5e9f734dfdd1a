package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// The Events page: the workspace's most recent events (GET …/events?last=N
// through the API, with the session's token), newest first, re-read when
// the store commits events (topic "events" of the page's stream).

const eventLogSize = 100

func (c *Console) eventLogRoutes() {
	c.handle("GET /ui/w/{ws}/events-log", readOnly, c.eventLogPage)
	c.handle("GET /ui/w/{ws}/events-log/live", readOnly, c.eventLogLive)
}

// logEvent is the API's event, with what the template asks of it.
type logEvent struct{ apitypes.Event }

// Family is the type's first part (server, task…), for the badge.
func (e logEvent) Family() string { f, _, _ := strings.Cut(e.Type, "."); return f }

// Summary is the event's data as "key: value" pairs.
func (e logEvent) Summary() string {
	var d map[string]any
	_ = json.Unmarshal(e.Data, &d)
	keys := make([]string, 0, len(d))
	for k, v := range d {
		if v != nil && v != "" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s: %v", strings.ReplaceAll(k, "_", " "), d[k]))
	}
	return strings.Join(parts, " · ")
}

func (c *Console) recentEvents(r *http.Request, s *session) ([]logEvent, error) {
	var list apitypes.EventList
	if err := c.call(r, s.token.Reveal(), http.MethodGet, fmt.Sprintf("%s/events?last=%d", wsBase(r), eventLogSize), nil, &list); err != nil {
		return nil, err
	}
	out := make([]logEvent, 0, len(list.Events))
	for i := len(list.Events) - 1; i >= 0; i-- {
		out = append(out, logEvent{list.Events[i]})
	}
	return out, nil
}

func (c *Console) eventLogPage(w http.ResponseWriter, r *http.Request, s *session) error {
	evs, err := c.recentEvents(r, s)
	if err != nil {
		return err
	}
	c.render(w, r, http.StatusOK, "eventlog", page{Title: "Events", S: s, Nav: "events", Data: evs})
	return nil
}

// eventLogLive is the page's table, which the script re-reads when events
// are committed.
func (c *Console) eventLogLive(w http.ResponseWriter, r *http.Request, s *session) error {
	evs, err := c.recentEvents(r, s)
	if err != nil {
		return err
	}
	c.fragment(w, "eventlog", "live", page{S: s, WS: r.PathValue("ws"), Data: evs})
	return nil
}
