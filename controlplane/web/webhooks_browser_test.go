package web_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/devpilot/devpilot/controlplane/devenv"
)

// webhooksInBrowser: the Webhooks page lists, refuses an internal URL with
// the rule and the flag, creates a webhook showing its secret once, and the
// webhook's page sends a test message whose delivery shows in its log.
func webhooksInBrowser(t *testing.T, b *tab, env *devenv.Env) {
	t.Helper()
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }))
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
}
