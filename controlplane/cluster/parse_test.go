package cluster

import (
	"encoding/json"
	"testing"
)

// Every payload parse accepts names what its kind needs, and never a task
// carried whole; nothing makes it panic.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"from":"cp_a","kind":"task","server":"srv_1","task":"task_1"}`,
		`{"from":"cp_a","kind":"send","server":"srv_1","type":"reboot","payload":{"id":"act_1"}}`,
		`{"from":"cp_a","kind":"send","server":"srv_1","type":"task","payload":{"id":"t"}}`,
		`{"from":"cp_a","kind":"disconnect","server":"srv_1","code":"rekeyed"}`,
		`{"from":"cp_a","kind":"changed","tasks":["task_1","task_2"]}`,
		`{"kind":"nope"}`, `[]`, `{"kind":"task"}`, ``,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, payload string) {
		m, err := parse(payload)
		if err != nil {
			return
		}
		switch m.Kind {
		case kindTask:
			if m.Server == "" || m.Task == "" {
				t.Fatalf("accepted a task message without server or task: %q", payload)
			}
		case kindSend:
			if m.Server == "" || m.Type == "" || m.Type == "task" || !json.Valid(m.Payload) {
				t.Fatalf("accepted a send message it can't deliver: %q", payload)
			}
		case kindDisconnect:
			if m.Server == "" {
				t.Fatalf("accepted a disconnect without a server: %q", payload)
			}
		case kindChanged:
		default:
			t.Fatalf("accepted kind %q", m.Kind)
		}
	})
}
