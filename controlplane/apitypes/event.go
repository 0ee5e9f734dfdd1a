package apitypes

import (
	"encoding/json"
	"time"
)

// Event is one entry of a workspace's event log (GET …/events): a server
// that came online, a task that failed… Its id increases across the whole
// control plane and is what a reader resumes after (?after=, or
// Last-Event-ID when following).
type Event struct {
	ID      int64           `json:"id"`
	Type    string          `json:"type"`    // e.g. server.online, task.failed (see the README's list)
	Subject string          `json:"subject"` // the id of the resource: server, task, deployment…
	Time    time.Time       `json:"time"`
	Data    json.RawMessage `json:"data"` // a small object, per type; never a secret
}

// EventList is GET /v1/workspaces/{ws}/events, oldest first. Next is the
// path and query of the page after this one ("" when there was nothing
// more at the time of the request; a follower keeps asking with
// after=<the last id>).
type EventList struct {
	Events []Event `json:"events"`
	Next   string  `json:"next"`
}
