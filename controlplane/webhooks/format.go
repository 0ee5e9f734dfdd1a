package webhooks

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/devpilot/devpilot/controlplane/events"
)

// Payload formats.
const (
	FormatRaw   = "raw"   // the event as JSON: {id, type, subject, time, data, workspace}
	FormatSlack = "slack" // a Slack/Mattermost incoming-webhook message: {"text": "…"}
)

// Formats lists the valid formats.
var Formats = []string{FormatRaw, FormatSlack}

// Message is the raw format: one event as a receiver gets it.
type Message struct {
	ID        int64           `json:"id"` // the event id (0 for a ping)
	Type      string          `json:"type"`
	Subject   string          `json:"subject"`
	Time      time.Time       `json:"time"`
	Data      json.RawMessage `json:"data"`
	Workspace string          `json:"workspace"`
}

// messageOf is the raw body of an event; its id is the webhook-id header.
func messageOf(e events.Event) Message {
	data := e.Data
	if len(data) == 0 {
		data = json.RawMessage(`{}`)
	}
	return Message{ID: e.ID, Type: e.Type, Subject: e.Subject, Time: e.Time.UTC(), Data: data, Workspace: e.Workspace}
}

// msgID is the webhook-id of an event: its id in decimal, the same on every
// attempt and redelivery, so a receiver deduplicates on it.
func msgID(event int64) string { return strconv.FormatInt(event, 10) }

// body renders a stored message in a webhook's format.
func body(format string, m Message) ([]byte, error) {
	if format == FormatSlack {
		return json.Marshal(struct {
			Text string `json:"text"`
		}{slackLine(m)})
	}
	return json.Marshal(m)
}

// slackLine is one readable line: "server.online: srv_abc (name=web-1, state=online) · ws default".
func slackLine(m Message) string {
	var b strings.Builder
	fmt.Fprintf(&b, "*%s* %s", slackEscape(m.Type), slackEscape(m.Subject))
	var data map[string]any
	if json.Unmarshal(m.Data, &data) == nil && len(data) > 0 {
		keys := make([]string, 0, len(data))
		for k := range data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, 0, len(keys))
		for _, k := range keys {
			v := data[k]
			s, ok := v.(string)
			if !ok {
				j, _ := json.Marshal(v)
				s = string(j)
			}
			if len(s) > 200 {
				s = s[:200] + "…"
			}
			parts = append(parts, k+"="+s)
		}
		fmt.Fprintf(&b, " (%s)", slackEscape(strings.Join(parts, ", ")))
	}
	fmt.Fprintf(&b, " · %s", m.Time.UTC().Format(time.RFC3339))
	return b.String()
}

// slackEscape escapes the three characters Slack's mrkdwn gives meaning
// (&, <, >), so event data cannot form links or mentions.
func slackEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
