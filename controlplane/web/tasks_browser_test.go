package web_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/devpilot/devpilot/controlplane/devenv"
)

// runTaskInBrowser starts a command on the server whose page is open and
// reads its output as it streams in.
func runTaskInBrowser(t *testing.T, b *tab, env *devenv.Env) {
	t.Helper()
	b.run("open server", chromedp.Click(chromedp.CSS("table.list tbody a")), chromedp.WaitVisible(chromedp.CSS("#server-state")))
	b.run("open run form", chromedp.Click(chromedp.CSS(`a[href*="/tasks?server="]`)), chromedp.WaitVisible(chromedp.CSS("main h1")))
	if strings.Contains(b.text("main"), "no tasks API") {
		t.Fatal("this control plane has no tasks API")
	}
	// Only the chosen kind's field shows.
	visible := func(sel string) bool {
		return get(b, "visible "+sel, chromedp.Evaluate[bool](`document.querySelector("`+sel+`").offsetParent !== null`))
	}
	if !visible("#command") || visible("#plan") {
		t.Errorf("command chosen: command shown %v, plan shown %v", visible("#command"), visible("#plan"))
	}
	b.run("choose plan", chromedp.Click(chromedp.CSS("#kind-plan")))
	if visible("#command") || !visible("#plan") {
		t.Errorf("plan chosen: command shown %v, plan shown %v", visible("#command"), visible("#plan"))
	}
	b.checkPage("tasks-form")
	b.run("choose command", chromedp.Click(chromedp.CSS("#kind-command")))
	// The command waits for a file, so the page is seen running first.
	flag := fmt.Sprintf("/tmp/devpilot-web-go-on-%d", time.Now().UnixNano())
	b.run("run command",
		chromedp.SendKeys(chromedp.CSS("#command"), `echo hello from the console; echo oops >&2; uname -s; while [ ! -e `+flag+` ]; do sleep 0.1; done; exit 3`),
		chromedp.Click(chromedp.CSS(`#run-task button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#log-output")))
	if loc := b.location(); !strings.HasPrefix(loc, "/ui/w/default/tasks/") {
		t.Fatalf("after run at %s", loc)
	}
	b.markPage()
	out := b.waitText("#log-output", "Linux", 30*time.Second)
	if !strings.Contains(out, "hello from the console") || !strings.Contains(out, "oops") {
		t.Errorf("task output: %q", out)
	}
	if b.text("#task-exit") != "—" || !get(b, "cancel shown", chromedp.Evaluate[bool](`document.getElementById("cancel-task") !== null`)) {
		t.Errorf("a running task: exit %q, or no Cancel button", b.text("#task-exit"))
	}
	b.checkPage("task-running")
	serverID := get(b, "server id", chromedp.Evaluate[string](`document.querySelector('#live a[href*="/servers/"]').getAttribute("href").split("/").pop()`))
	apiCall(t, env, http.MethodPost, "/v1/workspaces/default/servers/"+serverID+"/tasks",
		map[string]any{"kind": "exec", "argv": []string{"/bin/sh", "-c", "touch " + flag}}, nil)
	b.waitText("#task-state", "failed", 60*time.Second)
	b.waitText("#task-exit", "3", 10*time.Second)
	if fin := b.text("#task-finished"); !strings.Contains(fin, "UTC") {
		t.Errorf("finish time not filled in without reload: %q", fin)
	}
	if get(b, "cancel hidden", chromedp.Evaluate[bool](`document.getElementById("cancel-task") !== null`)) {
		t.Error("Cancel still shown on a finished task")
	}
	b.stillMarked("task page")
	b.checkPage("task")
	b.run("tasks list", chromedp.Navigate(env.App.URL+"/ui/w/default/tasks"), chromedp.WaitVisible(chromedp.CSS("table.list")))
	if row := b.text("table.list tbody"); !strings.Contains(row, "succeeded") || !strings.Contains(row, "hello from the console") {
		t.Errorf("tasks list: %q", row)
	}
}
