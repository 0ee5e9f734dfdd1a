package api_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// webhookWalkthrough is the walkthrough's webhook part: create (the secret
// shown once), list, get, update, ping a real receiver and wait for the
// delivery log to show it, redeliver, delete; every exchange validated.
func webhookWalkthrough(t *testing.T, h *harness, ws string) {
	t.Helper()
	var got atomic.Int64
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("webhook-id") != "" && strings.HasPrefix(r.Header.Get("webhook-signature"), "v1,") {
			got.Add(1)
		}
		_, _ = io.WriteString(w, "thanks")
	}))
	defer rcv.Close()

	var wh apitypes.CreatedWebhook
	h.must(201, "POST", ws+"/webhooks", apitypes.CreateWebhook{URL: rcv.URL + "/hook", Events: []string{"server.*", "task.failed"},
		Description: "walkthrough"}, &wh)
	if !strings.HasPrefix(wh.Secret, "whsec_") {
		t.Errorf("created webhook's secret %q", wh.Secret)
	}
	var list apitypes.WebhookList
	h.must(200, "GET", ws+"/webhooks", nil, &list)
	if len(list.Webhooks) != 1 || strings.Contains(string(h.must(200, "GET", ws+"/webhooks/"+wh.ID, nil, nil).body), wh.Secret) {
		t.Errorf("list %+v, or the secret shown again", list)
	}
	slack := "slack"
	h.must(200, "PATCH", ws+"/webhooks/"+wh.ID, apitypes.UpdateWebhook{Format: &slack}, nil)
	var ping apitypes.WebhookDelivery
	h.must(202, "POST", ws+"/webhooks/"+wh.ID+"/ping", nil, &ping)
	var ds apitypes.WebhookDeliveryList
	deadline := time.Now().Add(time.Minute)
	for {
		h.must(200, "GET", ws+"/webhooks/"+wh.ID+"/deliveries", nil, &ds)
		if len(ds.Deliveries) > 0 && ds.Deliveries[len(ds.Deliveries)-1].Status == "succeeded" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ping not delivered within a minute: %+v", ds)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if d := ds.Deliveries[len(ds.Deliveries)-1]; d.ResponseCode != 200 || d.ResponseExcerpt != "thanks" || got.Load() == 0 {
		t.Errorf("ping delivery %+v (receiver got %d signed requests)", d, got.Load())
	}
	h.must(202, "POST", ws+"/webhooks/"+wh.ID+"/deliveries/"+ping.ID+"/redeliver", nil, nil)

	// The SSRF guard at the door: a clear 422 naming the rule and the flag.
	for _, u := range []string{"https://169.254.169.254/latest/meta-data/", "https://10.0.0.1/hook"} {
		r := h.do(h.token, "POST", ws+"/webhooks", apitypes.CreateWebhook{URL: u})
		if r.status != 422 || r.errorCode() != "validation_failed" || !strings.Contains(string(r.body), "--webhooks-allow-private") {
			t.Errorf("webhook to %s: %d %s, want 422 naming --webhooks-allow-private", u, r.status, r.body)
		}
	}
	h.must(204, "DELETE", ws+"/webhooks/"+wh.ID, nil, nil)
}
