package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/store"
)

// The webhook outbox behaves the same on both databases: one delivery per
// webhook and event, claims exclusive until their lease expires, attempts
// recorded only by the lease holder, the fan-out cursor compare-and-swap.
func TestWebhookOutboxQueries(t *testing.T) {
	for _, d := range []store.Dialect{store.SQLite, store.Postgres} {
		t.Run(string(d), func(t *testing.T) { webhookOutboxScenario(t, open(t, d).Q()) })
	}
}

func webhookOutboxScenario(t *testing.T, q *store.Queries) {
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Microsecond)
	if err := q.CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	w := store.Webhook{ID: "wh_1", WorkspaceID: "ws_1", URL: "https://example.com/hook", EventsJSON: `["*"]`,
		Format: "raw", SecretCiphertext: "sealed", Enabled: true, CreatedAt: now, UpdatedAt: now}
	if err := q.CreateWebhook(ctx, w); err != nil {
		t.Fatal(err)
	}
	if en, err := q.EnabledWebhooks(ctx); err != nil || len(en) != 1 || en[0].URL != w.URL {
		t.Fatalf("enabled: %+v %v", en, err)
	}
	mk := func(id string, event int64) store.WebhookDelivery {
		return store.WebhookDelivery{ID: id, WebhookID: "wh_1", WorkspaceID: "ws_1", EventID: event, MessageID: id,
			EventType: "server.online", PayloadJSON: "{}", State: store.DeliveryPending, NextAttemptAt: &now,
			RetryUntil: now.Add(24 * time.Hour), CreatedAt: now, UpdatedAt: now}
	}
	if ok, err := q.InsertDelivery(ctx, mk("dl_1", 7)); !ok || err != nil {
		t.Fatalf("insert: %v %v", ok, err)
	}
	if ok, err := q.InsertDelivery(ctx, mk("dl_2", 7)); ok || err != nil {
		t.Errorf("second delivery of one event: %v %v, want ignored", ok, err)
	}
	for _, id := range []string{"ping_1", "ping_2"} { // pings have no event: never a conflict
		if ok, err := q.InsertDelivery(ctx, mk(id, 0)); !ok || err != nil {
			t.Fatalf("ping %s: %v %v", id, ok, err)
		}
	}
	if depth, oldest, err := q.OutboxStats(ctx); err != nil || depth != 3 || oldest == nil || !oldest.Equal(now) {
		t.Errorf("stats: %d %v %v", depth, oldest, err)
	}

	a, err := q.ClaimDeliveries(ctx, "cp_a", now, now.Add(time.Minute), 10)
	if err != nil || len(a) != 3 {
		t.Fatalf("claim a: %d %v", len(a), err)
	}
	if b, err := q.ClaimDeliveries(ctx, "cp_b", now.Add(30*time.Second), now.Add(2*time.Minute), 10); err != nil || len(b) != 0 {
		t.Errorf("claim b under a live lease: %d %v", len(b), err)
	}
	if ok, err := q.StartAttempt(ctx, "dl_1", "cp_b", 0, now); ok || err != nil {
		t.Errorf("attempt by a non-holder: %v %v", ok, err)
	}
	if ok, err := q.StartAttempt(ctx, "dl_1", "cp_a", 0, now); !ok || err != nil {
		t.Fatalf("attempt by the holder: %v %v", ok, err)
	}
	// cp_a dies; after its lease expires cp_b takes the rows over.
	later := now.Add(2 * time.Minute)
	b, err := q.ClaimDeliveries(ctx, "cp_b", later, later.Add(time.Minute), 10)
	if err != nil || len(b) != 3 {
		t.Fatalf("claim after expiry: %d %v", len(b), err)
	}
	if ok, _ := q.StartAttempt(ctx, "dl_1", "cp_b", 0, later); ok {
		t.Error("attempt 1 recorded twice")
	}
	if ok, err := q.StartAttempt(ctx, "dl_1", "cp_b", 1, later); !ok || err != nil {
		t.Fatalf("attempt 2: %v %v", ok, err)
	}
	dl := mk("dl_1", 7)
	dl.State, dl.NextAttemptAt, dl.ResponseCode, dl.UpdatedAt, dl.DeliveredAt = store.DeliverySucceeded, nil, 200, later, &later
	if ok, _ := q.FinishAttempt(ctx, dl, "cp_a"); ok {
		t.Error("the old holder finished an attempt")
	}
	if ok, err := q.FinishAttempt(ctx, dl, "cp_b"); !ok || err != nil {
		t.Fatalf("finish: %v %v", ok, err)
	}
	got, err := q.GetDelivery(ctx, "wh_1", "dl_1")
	if err != nil || got.State != store.DeliverySucceeded || got.Attempts != 2 || got.ResponseCode != 200 || got.LeaseOwner != "" {
		t.Errorf("after finish: %+v %v", got, err)
	}
	if err := q.Redeliver(ctx, "wh_1", "dl_1", later, later.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if c, err := q.ClaimDeliveries(ctx, "cp_c", later.Add(time.Second), later.Add(time.Minute), 10); err != nil || len(c) != 1 || c[0].ID != "dl_1" {
		t.Errorf("redelivered not claimable: %+v %v", c, err)
	}

	if ok, err := q.DisableWebhook(ctx, "wh_1", "failing for 24h", later); !ok || err != nil {
		t.Fatalf("disable: %v %v", ok, err)
	}
	if depth, _, err := q.OutboxStats(ctx); err != nil || depth != 0 {
		t.Errorf("disabled webhook still has %d undelivered (%v)", depth, err)
	}
	page, err := q.DeliveriesPage(ctx, "wh_1", nil, 10)
	if err != nil || len(page) != 3 {
		t.Errorf("page: %d %v", len(page), err)
	}

	c, err := q.FanoutCursor(ctx)
	if err != nil || c != 0 {
		t.Fatalf("cursor: %d %v", c, err)
	}
	if ok, err := q.AdvanceFanout(ctx, 0, 9); !ok || err != nil {
		t.Fatalf("advance: %v %v", ok, err)
	}
	if ok, _ := q.AdvanceFanout(ctx, 0, 12); ok {
		t.Error("a stale cursor advanced")
	}
	if err := q.DeleteWebhook(ctx, "ws_1", "wh_1"); err != nil {
		t.Fatal(err)
	}
}
