package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/events"
)

// sseEvent is one server-sent event as a client reads it.
type sseEvent struct {
	id, typ string
	ev      apitypes.Event
}

// followEvents opens path (an events stream) with header lastID (if any) and
// returns a channel of its events, closed when the stream ends; the stream
// is cut when t ends.
func followEvents(t *testing.T, h *harness, path, lastID string) <-chan sseEvent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, "GET", h.env.App.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+h.token)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := (&http.Client{Transport: h.check}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	out := make(chan sseEvent, 64)
	go func() {
		defer close(out)
		defer func() { _ = resp.Body.Close() }()
		sc := bufio.NewScanner(resp.Body)
		var cur sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "id: "):
				cur.id = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "event: "):
				cur.typ = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &cur.ev); err != nil {
					t.Errorf("data %q: %v", line, err)
				}
			case line == "" && cur.typ != "":
				select {
				case out <- cur:
				case <-ctx.Done():
					return
				}
				cur = sseEvent{}
			}
		}
	}()
	return out
}

// nextEvent waits (generously) for the stream's next event of type typ,
// skipping others.
func nextEvent(t *testing.T, c <-chan sseEvent, typ string) sseEvent {
	t.Helper()
	deadline := time.After(2 * time.Minute)
	for {
		select {
		case e, ok := <-c:
			if !ok {
				t.Fatalf("the stream ended before a %s event", typ)
			}
			if e.typ == typ {
				return e
			}
		case <-deadline:
			t.Fatalf("no %s event within 2 minutes", typ)
		}
	}
}

// The event log through the API: what happened is listed in order, by
// type pattern, from any id or the most recent, and a follower sees the
// next event live, resumes after Last-Event-ID, and gets nothing twice.
func TestEventsAreListedAndFollowed(t *testing.T) {
	h := start(t)
	ws := "/v1/workspaces/default"
	in := h.connect("default", "do-main")
	live := followEvents(t, h, ws+"/events?follow=1&type=task.*", "")

	var srv apitypes.Server
	h.must(202, "POST", ws+"/servers", apitypes.CreateServer{IntegrationID: in.ID, Name: "web-1", Region: "nyc3",
		Size: "s-1vcpu-1gb", Image: "debian-12", Ports: []int{22}}, &srv)
	var list apitypes.EventList
	h.must(200, "GET", ws+"/events", nil, &list)
	if len(list.Events) == 0 || list.Events[0].Type != events.ServerCreated || list.Events[0].Subject != srv.ID || list.Next != "" {
		t.Fatalf("events = %+v, want server.created for %s first", list, srv.ID)
	}
	var data map[string]any
	if err := json.Unmarshal(list.Events[0].Data, &data); err != nil || data["name"] != "web-1" {
		t.Errorf("server.created data %s (%v)", list.Events[0].Data, err)
	}

	// A secret planted in the task's environment (and the integration's
	// token) must reach no event, listed, followed or stored.
	canary := "canary-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	var task apitypes.Task
	h.must(202, "POST", ws+"/servers/"+srv.ID+"/tasks", apitypes.TaskSpec{Kind: "exec",
		StepFields: apitypes.StepFields{Argv: []string{"/bin/true"}, Env: map[string]string{"API_KEY": canary}}}, &task)
	h.must(202, "POST", ws+"/tasks/"+task.ID+"/cancel", nil, nil)
	got := nextEvent(t, live, events.TaskCanceled)
	if got.ev.Subject != task.ID || got.id == "" || got.ev.Type != events.TaskCanceled {
		t.Fatalf("live event %+v, want task.canceled of %s", got, task.ID)
	}
	if err := json.Unmarshal(got.ev.Data, &data); err != nil || data["server_id"] != srv.ID || data["kind"] != "exec" {
		t.Errorf("task.canceled data %s (%v)", got.ev.Data, err)
	}

	all := h.must(200, "GET", ws+"/events?limit=1000", nil, nil)
	var stored strings.Builder
	rows, err := h.env.App.Store.DB().Query(`SELECT type, subject, data_json FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var a, b, c string
		if err := rows.Scan(&a, &b, &c); err != nil {
			t.Fatal(err)
		}
		stored.WriteString(a + b + c)
	}
	_ = rows.Close()
	for _, secret := range []string{canary, h.env.Values["DO_SIM_TOKEN"]} {
		for where, text := range map[string]string{"the list": string(all.body), "the stream": string(got.ev.Data), "the table": stored.String()} {
			if strings.Contains(text, secret) {
				t.Errorf("%s holds a secret: %s", where, text)
			}
		}
	}

	// Filters, paging and the most recent.
	h.must(200, "GET", ws+"/events?type=task.*", nil, &list)
	if len(list.Events) != 1 || list.Events[0].ID != got.ev.ID {
		t.Errorf("type=task.*: %+v, want only %d", list.Events, got.ev.ID)
	}
	h.must(200, "GET", ws+"/events?limit=1", nil, &list)
	if len(list.Events) != 1 || list.Next == "" {
		t.Fatalf("limit=1: %+v, want one event and a next link", list)
	}
	first := list.Events[0].ID
	h.must(200, "GET", list.Next, nil, &list)
	if len(list.Events) != 1 || list.Events[0].ID <= first {
		t.Errorf("next page: %+v, want an event after %d", list.Events, first)
	}
	h.must(200, "GET", ws+"/events?last=1&type=task.*", nil, &list)
	if len(list.Events) != 1 || list.Events[0].ID != got.ev.ID {
		t.Errorf("last=1: %+v, want %d", list.Events, got.ev.ID)
	}
	r := h.do(h.token, "GET", ws+"/events?type=server.onlin", nil)
	var e apitypes.ErrorBody
	_ = json.Unmarshal(r.body, &e)
	if r.status != 400 || e.Error.Code != "validation_failed" || !strings.Contains(e.Error.Hint, "server.*") {
		t.Errorf("bad pattern: %d %s", r.status, r.body)
	}
	if r := h.do(h.token, "GET", ws+"/events?after=1&last=2", nil); r.status != 400 {
		t.Errorf("after and last: %d %s", r.status, r.body)
	}

	// A follower reconnecting with Last-Event-ID gets what came after it
	// only.
	resumed := followEvents(t, h, ws+"/events?follow=1", strconv.FormatInt(first, 10))
	if e := <-resumed; e.ev.ID != first+1 || e.id != strconv.FormatInt(first+1, 10) || e.typ != e.ev.Type {
		t.Errorf("resumed after %d: first event %+v", first, e)
	}
}
