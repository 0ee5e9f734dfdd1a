package web_test

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/store"
)

// The task form takes a deploy plan in YAML, as `devpilot deploy -f`
// does; a plan that does not parse is refused with the parser's words and
// what was typed kept.
func TestTaskFormTakesYAMLPlans(t *testing.T) {
	t.Parallel()
	p := newPlain(t)
	ctx := context.Background()
	ws, err := p.a.Store.Q().WorkspaceBySlug(ctx, app.DefaultWS)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	if err := p.a.Store.Q().CreateServer(ctx, store.Server{ID: "srv_t", WorkspaceID: ws.ID, Provider: "digitalocean", Name: "web-t",
		Region: "nyc3", Size: "s-1vcpu-1gb", Image: "debian-12", PortsJSON: "[22]", State: "offline", AgentTimeoutS: 900,
		CreatedAt: now, UpdatedAt: now}, nil); err != nil {
		t.Fatal(err)
	}
	b := p.browser()
	csrf := b.signIn(p.owner)
	form := func(plan string) url.Values {
		return url.Values{"csrf": {csrf}, "target": {"server:srv_t"}, "kind": {"plan"}, "plan": {plan}, "command": {"uptime"}}
	}
	bad := b.do("POST", "/ui/w/default/tasks", form("steps:\n  - kind: exec\n    argvv: [uptime]\n"), nil)
	if bad.status != http.StatusUnprocessableEntity || !strings.Contains(bad.body, "argvv") || !strings.Contains(bad.body, "Not accepted") ||
		!strings.Contains(bad.body, "argvv: [uptime]") {
		t.Errorf("a plan with a typo: %d\n%s", bad.status, bad.body)
	}
	ok := b.do("POST", "/ui/w/default/tasks", form("# restart the app\nsteps:\n  - name: hello\n    kind: exec\n    argv: [/bin/echo, hi]\n  - kind: file\n    path: /etc/motd\n    content: |\n      welcome\n"), nil)
	loc := ok.header.Get("Location")
	if ok.status != http.StatusSeeOther || !strings.HasPrefix(loc, "/ui/w/default/tasks/task_") {
		t.Fatalf("a YAML plan: %d %s\n%s", ok.status, loc, ok.body)
	}
	pg := b.do("GET", loc, nil, nil)
	if !strings.Contains(pg.body, "deploy: hello → file") || !strings.Contains(pg.body, "Deploy started.") {
		t.Errorf("the deploy task's page:\n%s", pg.body)
	}
}
