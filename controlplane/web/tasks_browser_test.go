package web_test

import (
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
		t.Log("this control plane has no tasks API: task steps not exercised")
		return
	}
	b.run("run command",
		chromedp.SendKeys(chromedp.CSS("#command"), `echo hello from the console; echo oops >&2; uname -s`),
		chromedp.Click(chromedp.CSS(`#run-task button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#log-output")))
	if loc := b.location(); !strings.HasPrefix(loc, "/ui/w/default/tasks/") {
		t.Fatalf("after run at %s", loc)
	}
	out := b.waitText("#log-output", "Linux", 30*time.Second)
	if !strings.Contains(out, "hello from the console") || !strings.Contains(out, "oops") {
		t.Errorf("task output: %q", out)
	}
	b.waitText("#task-state", "succeeded", 30*time.Second)
	b.shot("task")
	b.run("tasks list", chromedp.Navigate(env.App.URL+"/ui/w/default/tasks"), chromedp.WaitVisible(chromedp.CSS("table.list")))
	if row := b.text("table.list tbody"); !strings.Contains(row, "succeeded") || !strings.Contains(row, "hello from the console") {
		t.Errorf("tasks list: %q", row)
	}
}
