package apitypes

import "time"

// Webhook is a workspace's subscription to its events, delivered signed
// the Standard Webhooks way (headers webhook-id, webhook-timestamp,
// webhook-signature). Its secret is shown only in CreatedWebhook.
type Webhook struct {
	ID             string     `json:"id"` // wh_…
	URL            string     `json:"url"`
	Events         []string   `json:"events"` // patterns: "*", "server.*", "task.failed"
	Format         string     `json:"format"` // raw or slack
	Description    string     `json:"description"`
	Enabled        bool       `json:"enabled"`
	DisabledReason string     `json:"disabled_reason,omitempty"`
	FailingSince   *time.Time `json:"failing_since"` // first failed delivery since the last success
	CreatedAt      time.Time  `json:"created_at"`
	UpdatedAt      time.Time  `json:"updated_at"`
}

// CreateWebhook is POST /v1/workspaces/{ws}/webhooks.
type CreateWebhook struct {
	URL         string   `json:"url"`
	Events      []string `json:"events,omitempty"`      // default ["*"]
	Format      string   `json:"format,omitempty"`      // raw (default) or slack
	Secret      string   `json:"secret,omitempty"`      // whsec_<base64 of 24-64 bytes>; generated when empty
	Description string   `json:"description,omitempty"` // a note for people
	Enabled     *bool    `json:"enabled,omitempty"`     // default true
}

// CreatedWebhook is the answer to CreateWebhook: the only time the
// signing secret is shown.
type CreatedWebhook struct {
	Webhook
	Secret string `json:"secret"`
}

// UpdateWebhook is PATCH /v1/workspaces/{ws}/webhooks/{id}: fields left out
// keep their value. Enabling a disabled webhook clears its failure clock.
type UpdateWebhook struct {
	URL         *string  `json:"url,omitempty"`
	Events      []string `json:"events,omitempty"`
	Format      *string  `json:"format,omitempty"`
	Secret      string   `json:"secret,omitempty"` // a new secret (rotation); never shown back
	Description *string  `json:"description,omitempty"`
	Enabled     *bool    `json:"enabled,omitempty"`
}

// WebhookList is GET /v1/workspaces/{ws}/webhooks, oldest first.
type WebhookList struct {
	Webhooks []Webhook `json:"webhooks"`
	Next     string    `json:"next"`
}

// WebhookDelivery is one event on its way to a webhook, and how its
// attempts went.
type WebhookDelivery struct {
	ID              string     `json:"id"`         // dl_…
	EventID         int64      `json:"event_id"`   // 0 for a ping
	MessageID       string     `json:"message_id"` // the webhook-id header the receiver saw
	EventType       string     `json:"event_type"`
	Status          string     `json:"status"` // pending, failed (retry scheduled), succeeded, dead (given up)
	Attempts        int        `json:"attempts"`
	NextAttemptAt   *time.Time `json:"next_attempt_at"`
	LastAttemptAt   *time.Time `json:"last_attempt_at"`
	ResponseCode    int        `json:"response_code"` // 0: no response (see error)
	LatencyMS       int64      `json:"latency_ms"`
	Error           string     `json:"error"`
	ResponseExcerpt string     `json:"response_excerpt"` // the first 4 KiB of the last response body
	CreatedAt       time.Time  `json:"created_at"`
	DeliveredAt     *time.Time `json:"delivered_at"`
}

// WebhookDeliveryList is GET /v1/workspaces/{ws}/webhooks/{id}/deliveries, newest first.
type WebhookDeliveryList struct {
	Deliveries []WebhookDelivery `json:"deliveries"`
	Next       string            `json:"next"`
}
