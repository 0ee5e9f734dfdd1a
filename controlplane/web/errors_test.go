package web_test

import (
	"strings"
	"testing"
)

// Error pages say what happened in words: "Not found", never "Refused
// not_found".
func TestErrorPagesSayWhatHappened(t *testing.T) {
	t.Parallel()
	p := newPlain(t)
	b := p.browser()
	b.signIn(p.owner)
	for path, want := range map[string]string{
		"/ui/w/default/servers/srv_aaaaaaaaaaaaaaaa":     "Not found",
		"/ui/w/default/tasks/tsk_aaaaaaaaaaaaaaaa":       "Not found",
		"/ui/w/default/deployments/dep_aaaaaaaaaaaaaaaa": "Not found",
		"/ui/no/such/page":                               "Not found",
		"/ui/w/default/events?topics=nope":               "Not accepted",
	} {
		a := b.do("GET", path, nil, nil)
		if !strings.Contains(a.body, "<h1>"+want+"</h1>") || strings.Contains(a.body, "Refused") {
			t.Errorf("%s: %d\n%s", path, a.status, a.body)
		}
	}
}
