package web_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/devpilot/devpilot/controlplane/devenv"
)

// webhooksInBrowser: the Webhooks page lists, refuses an internal URL with
// the rule and the flag, creates a webhook showing its secret once, and the
// webhook's page sends a test message whose delivery shows in its log,
// redelivers it (the receiver gets it twice), disables and enables the
// webhook, and edits its events.
func webhooksInBrowser(t *testing.T, b *tab, env *devenv.Env) {
	t.Helper()
	var received atomic.Int32
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		received.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer rcv.Close()
	page := env.App.URL + "/ui/w/default/settings/webhooks"
	b.run("webhooks page", chromedp.Navigate(page), chromedp.WaitVisible(chromedp.CSS("#wh-url")))
	b.checkPage("webhooks-empty")

	b.run("refused url", chromedp.SendKeys(chromedp.CSS("#wh-url"), "https://169.254.169.254/latest/meta-data/"),
		chromedp.Click(chromedp.CSS(`#create-webhook button[type="submit"]`)), chromedp.WaitVisible(chromedp.CSS("main .notice.err")))
	if msg := b.text("main .notice.err"); !strings.Contains(msg, "link-local") || !strings.Contains(msg, "--webhooks-allow-private") {
		t.Errorf("refusal %q does not name the rule and the flag", msg)
	}
	b.checkPage("webhooks-refused")

	b.run("create", chromedp.Navigate(page), chromedp.WaitVisible(chromedp.CSS("#wh-url")),
		chromedp.SendKeys(chromedp.CSS("#wh-url"), rcv.URL+"/hook"),
		chromedp.Click(chromedp.CSS(`#create-webhook button[type="submit"]`)), chromedp.WaitVisible(chromedp.CSS("#webhook-secret")))
	if sec := b.text("#webhook-secret"); !strings.HasPrefix(sec, "whsec_") {
		t.Errorf("secret shown %q", sec)
	}
	b.checkPage("webhooks-created")
	secret := b.text("#webhook-secret")
	b.run("reload list", chromedp.Navigate(page), chromedp.WaitVisible(chromedp.CSS("#webhooks")))
	if strings.Contains(get(b, "page html", chromedp.OuterHTML(chromedp.CSS("html"))), secret) {
		t.Error("the secret is shown again")
	}

	b.run("open webhook", chromedp.Click(chromedp.CSS("#webhooks tbody a")), chromedp.WaitVisible(chromedp.CSS("#webhook-state")))
	b.run("ping", chromedp.Click(chromedp.CSS(`form[action$="/ping"] button`)), chromedp.WaitVisible(chromedp.CSS("main .notice.ok")))
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(b.text("main"), "succeeded") {
		if time.Now().After(deadline) {
			t.Fatalf("ping not shown delivered: %q", b.text("main"))
		}
		time.Sleep(200 * time.Millisecond)
		b.run("reload webhook", chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS("#webhook-state")))
	}
	b.checkPage("webhook")

	// Each step starts from a fresh load of the page, so the notice waited
	// for is the step's own, not the one before it.
	hookPage := get(b, "webhook url", chromedp.Location())
	fresh := func() {
		b.run("load webhook", chromedp.Navigate(hookPage), chromedp.WaitVisible(chromedp.CSS("#webhook-state")))
	}
	fresh()
	b.run("redeliver", chromedp.Click(chromedp.CSS(`#deliveries form[action$="/redeliver"] button`)), chromedp.WaitVisible(chromedp.CSS("main .notice.ok")))
	if msg := b.text("main .notice.ok"); !strings.Contains(msg, "queued again") {
		t.Errorf("redeliver notice %q", msg)
	}
	for deadline := time.Now().Add(time.Minute); received.Load() < 2; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("receiver got %d requests after the redelivery, want 2", received.Load())
		}
	}

	fresh()
	b.run("disable", chromedp.Click(chromedp.CSS(`#webhook-toggle button`)), chromedp.WaitVisible(chromedp.CSS("main .notice.ok")))
	if st := b.text("#webhook-state"); !strings.HasPrefix(st, "disabled") {
		t.Errorf("after Disable the state is %q", st)
	}
	fresh()
	b.run("enable", chromedp.Click(chromedp.CSS(`#webhook-toggle button`)), chromedp.WaitVisible(chromedp.CSS("main .notice.ok")))
	if st := b.text("#webhook-state"); st != "enabled" {
		t.Errorf("after Enable the state is %q", st)
	}

	fresh()
	b.run("edit events", chromedp.SetValue(chromedp.CSS("#edit-webhook #wh-events"), "server.*, task.failed"),
		chromedp.Click(chromedp.CSS(`#edit-webhook button[type="submit"]`)), chromedp.WaitVisible(chromedp.CSS("main .notice.ok")))
	if got := b.text("main dl.facts"); !strings.Contains(got, "server.*, task.failed") {
		t.Errorf("after saving, the facts say %q", got)
	}
	fresh()
	b.run("edit refused", chromedp.SetValue(chromedp.CSS("#edit-webhook #wh-format"), "raw"),
		chromedp.SetValue(chromedp.CSS("#edit-webhook #wh-events"), "no.such_event"),
		chromedp.Click(chromedp.CSS(`#edit-webhook button[type="submit"]`)), chromedp.WaitVisible(chromedp.CSS("main .notice.err")))
	if msg := b.text("main .notice.err"); !strings.Contains(msg, "no.such_event") {
		t.Errorf("an unknown event pattern: notice %q, want it refused by name", msg)
	}
	b.checkPage("webhook-edited")
}
