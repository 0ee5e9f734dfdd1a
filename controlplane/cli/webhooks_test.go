package cli

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// The webhooks verbs end to end: a secret given on stdin (never argv) is
// what the receiver's signatures are made with, ping reaches the receiver,
// the delivery log shows it, and a refused URL says which flag allows it.
func TestWebhooksVerbs(t *testing.T) {
	_, v := startDev(t)
	var got atomic.Int64
	rcv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if strings.Contains(string(b), "webhook.ping") && strings.HasPrefix(r.Header.Get("webhook-signature"), "v1,") {
			got.Add(1)
		}
	}))
	defer rcv.Close()
	secret := "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	r := cli(t, v, secret+"\n", "webhooks", "create", rcv.URL, "--events", "server.*,task.failed", "--secret-stdin", "-o", "json")
	var wh apitypes.CreatedWebhook
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &wh) != nil || wh.Secret != secret || wh.ID == "" {
		t.Fatalf("create: %+v", r)
	}
	if r := cli(t, v, "", "webhooks", "list"); r.code != 0 || !strings.Contains(r.stdout, wh.ID) || strings.Contains(r.stdout, secret) {
		t.Errorf("list: %+v", r)
	}
	if r := cli(t, v, "", "webhooks", "update", wh.ID, "--payload", "slack"); r.code != 0 || !strings.Contains(r.stdout, "format: slack") {
		t.Errorf("update: %+v", r)
	}
	if r := cli(t, v, "", "webhooks", "ping", wh.ID); r.code != 0 {
		t.Fatalf("ping: %+v", r)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		r := cli(t, v, "", "webhooks", "deliveries", wh.ID)
		if r.code == 0 && strings.Contains(r.stdout, "succeeded") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ping not delivered: %+v", r)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if r := cli(t, v, "", "webhooks", "create", "https://169.254.169.254/"); r.code != 1 ||
		!strings.Contains(r.stderr, "link-local") || !strings.Contains(r.stderr, "--webhooks-allow-private") {
		t.Errorf("metadata URL: %+v", r)
	}
	if r := cli(t, v, "", "webhooks", "delete", wh.ID, "--force"); r.code != 0 {
		t.Errorf("delete: %+v", r)
	}
}
