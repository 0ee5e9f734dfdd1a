package web_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/devenv"
	"github.com/devpilot/devpilot/controlplane/store"
)

// alertsInBrowser: a firing alert shows as a badge on the servers page and
// a row on the Alerts page; an integration whose token was revoked shows
// invalid with the hint on its card. Each page passes axe.
func alertsInBrowser(t *testing.T, b *tab, env *devenv.Env, doID string) {
	ctx := context.Background()
	ws, err := env.App.Store.Q().WorkspaceBySlug(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	// A server offline for ten minutes (no instance: the row alone).
	gone := time.Now().UTC().Add(-10 * time.Minute)
	if err := env.App.Store.Q().CreateServer(ctx, store.Server{ID: "srv_alertsbrowser0001", WorkspaceID: ws.ID, Provider: "digitalocean",
		Name: "gone-quiet", Region: "nyc3", Size: "s-1vcpu-1gb", Image: "debian-12", State: "offline", PortsJSON: "[]",
		LastSeenAt: &gone, CreatedAt: gone, UpdatedAt: gone}, nil); err != nil {
		t.Fatal(err)
	}
	apiCall(t, env, "POST", "/v1/workspaces/default/alert-rules", apitypes.CreateAlertRule{Name: "down", Kind: "offline", ForS: 60}, nil)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var list apitypes.AlertList
		apiCall(t, env, "GET", "/v1/workspaces/default/alerts", nil, &list)
		if len(list.Alerts) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the alert never fired")
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.run("servers with an alert", chromedp.Navigate(b.base+"/ui/w/default/servers"), chromedp.WaitVisible(chromedp.CSS(".alerts-firing")))
	if got := b.text(".alerts-firing"); !strings.Contains(got, "firing") {
		t.Errorf("servers page badge %q", got)
	}
	b.checkPage("servers-alert-firing")
	b.run("alerts page", chromedp.Click(chromedp.CSS(".alerts-firing")), chromedp.WaitVisible(chromedp.CSS("table.alerts")))
	if row := b.text("table.alerts tbody"); !strings.Contains(row, "gone-quiet") || !strings.Contains(row, "down") {
		t.Errorf("alerts table %q, want the server and the rule", row)
	}
	b.checkPage("alerts")

	// The DigitalOcean token revoked at the provider, then re-validated.
	token := env.Values["DO_SIM_TOKEN"]
	env.DO.RemoveToken(token)
	t.Cleanup(func() { env.DO.AddToken(token, true) })
	if _, err := env.App.Integrations.Test(ctx, "test", ws.ID, doID); err == nil {
		t.Fatal("test of a revoked token passed")
	}
	b.run("integrations with an invalid one", chromedp.Navigate(b.base+"/ui/w/default/settings/integrations"),
		chromedp.WaitVisible(chromedp.CSS("#card-digitalocean .badge.invalid")))
	card := b.text("#card-digitalocean")
	if !strings.Contains(card, "invalid_credentials") || !strings.Contains(card, "Hint:") {
		t.Errorf("invalid integration's card %q, want the code and the hint", card)
	}
	b.checkPage("integrations-invalid")
	env.DO.AddToken(token, true)
	if _, err := env.App.Integrations.Test(ctx, "test", ws.ID, doID); err != nil {
		t.Fatalf("test of the restored token: %v", err)
	}
}
