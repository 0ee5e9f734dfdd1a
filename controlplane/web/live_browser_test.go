package web_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/devpilot/devpilot/controlplane/devenv"
)

// checkChart: the open server page's CPU chart reads a sample's value
// out when focused and moved through with the arrow keys.
func checkChart(b *tab) {
	b.t.Helper()
	fig := `figure.chart[data-readout]`
	b.run("focus chart", chromedp.Focus(chromedp.CSS(fig)))
	first := b.waitText(fig+" .readout", "UTC", 10*time.Second)
	if !strings.Contains(first, "%") || !strings.HasPrefix(first, "CPU: ") {
		b.t.Errorf("chart readout on focus: %q", first)
	}
	b.run("chart home key", chromedp.KeyEvent(kb.Home))
	if got := b.text(fig + " .readout"); got == "" || !strings.Contains(got, "UTC") {
		b.t.Errorf("chart readout after Home: %q", got)
	}
	axes := get(b, "chart axes", chromedp.Evaluate[string](`document.querySelector("`+fig+` svg").textContent`))
	for _, want := range []string{"0%", "50%", "100%"} {
		if !strings.Contains(axes, want) {
			b.t.Errorf("chart axis lacks %q: %q", want, axes)
		}
	}
}

// apiCall sends a request to the control plane's API in-process with the
// owner token.
func apiCall(t *testing.T, env *devenv.Env, method, path string, body, out any) {
	t.Helper()
	raw, _ := json.Marshal(body)
	req := httptest.NewRequest(method, path, bytes.NewReader(raw))
	req.Header.Set("Authorization", "Bearer "+env.Values["DEVPILOT_TOKEN"])
	req.Header.Set("Content-Type", "application/json")
	req.RemoteAddr = "127.0.0.1:1"
	rec := httptest.NewRecorder()
	env.App.Handler().ServeHTTP(rec, req)
	if rec.Code >= 300 {
		t.Fatalf("%s %s: %d %s", method, path, rec.Code, rec.Body)
	}
	if out != nil {
		if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
			t.Fatal(err)
		}
	}
}

// markPage tags the open document; unmarked means the page was reloaded.
func (b *tab) markPage() {
	b.t.Helper()
	get(b, "mark page", chromedp.Evaluate[bool](`window.devpilotMark = true`))
}

func (b *tab) stillMarked(what string) {
	b.t.Helper()
	if !get(b, "read mark", chromedp.Evaluate[bool](`window.devpilotMark === true`)) {
		b.t.Errorf("%s: the page was reloaded", what)
	}
}

// A server requested elsewhere (the API) shows up on the open servers
// list and comes online there, without a reload.
func serversListIsLive(t *testing.T, b *tab, env *devenv.Env, integrationID string) {
	t.Helper()
	b.run("servers list", chromedp.Navigate(env.App.URL+"/ui/w/default/servers"), chromedp.WaitVisible(chromedp.CSS("table.list")))
	b.run("stream open", chromedp.WaitVisible(chromedp.CSS(`#live[data-stream="open"]`)))
	b.markPage()
	var srv struct {
		ID string `json:"id"`
	}
	apiCall(t, env, http.MethodPost, "/v1/workspaces/default/servers", map[string]any{"integration_id": integrationID, "name": "web-2",
		"region": "nyc3", "size": "s-1vcpu-2gb", "image": "debian-12-x64"}, &srv)
	row := `tr[data-server="` + srv.ID + `"]`
	b.waitText("table.list tbody", "web-2", 30*time.Second)
	b.waitText(row, "online", 90*time.Second)
	b.stillMarked("servers list")
}

// deploymentPage starts a deployment on server id through the API and
// checks its page.
func deploymentPage(t *testing.T, b *tab, env *devenv.Env, serverID string) {
	t.Helper()
	var d struct {
		ID string `json:"id"`
	}
	apiCall(t, env, http.MethodPost, "/v1/workspaces/default/deployments", map[string]any{"servers": []string{serverID},
		"plan": map[string]any{"steps": []map[string]any{{"name": "hello", "kind": "exec", "argv": []string{"/bin/sh", "-c", "echo hi"}}}}}, &d)
	b.run("deployment page", chromedp.Navigate(env.App.URL+"/ui/w/default/deployments/"+d.ID), chromedp.WaitVisible(chromedp.CSS("table.list")))
	b.markPage()
	b.waitText("#live .titlebar", "succeeded", 60*time.Second)
	b.stillMarked("deployment page")
	b.checkPage("deployment")
}

// lifecycleButtons: the open server page's Power off and Resize ask
// first (both confirmation pages pass the page checks), and Reboot posts
// to the API's actions route. Without that route (a control plane before
// issue 11's backend) the console says so in words.
func lifecycleButtons(t *testing.T, b *tab, serverPath string) {
	t.Helper()
	b.run("server page", chromedp.Navigate(b.base+serverPath), chromedp.WaitVisible(chromedp.CSS("#lifecycle")))
	b.run("power off", chromedp.Click(chromedp.CSS(`#lifecycle input[value="power_off"] ~ button`)), chromedp.WaitVisible(chromedp.CSS("#confirm-action")))
	if h := b.text("main h1"); !strings.HasPrefix(h, "Power off web-1") {
		t.Errorf("power off confirmation heading %q", h)
	}
	b.checkPage("confirm-power-off")
	b.run("cancel power off", chromedp.Click(chromedp.CSS(`#confirm-action a.button`)), chromedp.WaitVisible(chromedp.CSS("#lifecycle")))
	b.run("resize", chromedp.Click(chromedp.CSS(`#lifecycle a[href$="/resize"]`)), chromedp.WaitVisible(chromedp.CSS("#confirm-action #size")))
	b.checkPage("confirm-resize")
	b.run("back", chromedp.Click(chromedp.CSS(`#confirm-action a.button`)), chromedp.WaitVisible(chromedp.CSS("#lifecycle")))
	b.run("reboot", chromedp.Click(chromedp.CSS(`#lifecycle input[value="reboot"] ~ button`)), chromedp.WaitVisible(chromedp.CSS("main .notice")))
	notice := b.text("main .notice")
	if !strings.Contains(notice, "Reboot requested") {
		t.Errorf("after Reboot: %q", notice)
	}
}

// The Events page lists what happened (the servers created so far) and,
// left open, shows an event committed elsewhere (a task canceled through
// the API) without a reload; it passes the page checks.
func eventLogIsLive(t *testing.T, b *tab, env *devenv.Env, serverID string) {
	t.Helper()
	b.run("events page", chromedp.Navigate(env.App.URL+"/ui/w/default/events-log"), chromedp.WaitVisible(chromedp.CSS("table.events")))
	if body := b.text("table.events tbody"); !strings.Contains(body, "server.created") || !strings.Contains(body, "server.online") {
		t.Errorf("events page: %q, want the servers' created and online events", body)
	}
	b.run("events stream open", chromedp.WaitVisible(chromedp.CSS(`#live[data-stream="open"]`)))
	b.checkPage("events")
	b.markPage()
	var task struct {
		ID string `json:"id"`
	}
	apiCall(t, env, http.MethodPost, "/v1/workspaces/default/servers/"+serverID+"/tasks",
		map[string]any{"kind": "exec", "argv": []string{"/bin/sh", "-c", "sleep 30"}}, &task)
	apiCall(t, env, http.MethodPost, "/v1/workspaces/default/tasks/"+task.ID+"/cancel", nil, nil)
	b.waitText("table.events tbody", task.ID, 60*time.Second)
	b.stillMarked("events page")
}
