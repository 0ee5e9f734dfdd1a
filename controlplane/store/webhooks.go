package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Webhook is a workspace's subscription to its event log (migration 00017).
type Webhook struct {
	ID               string
	WorkspaceID      string
	URL              string
	EventsJSON       string // the patterns, a JSON array of strings
	Format           string // raw, slack
	SecretCiphertext string
	Description      string
	Enabled          bool
	DisabledReason   string
	FailingSince     *time.Time
	CreatedBy        string
	CreatedAt        time.Time
	UpdatedAt        time.Time
}

// Delivery states.
const (
	DeliveryPending   = "pending"   // not attempted yet
	DeliveryFailed    = "failed"    // the last attempt failed; the next is scheduled
	DeliverySucceeded = "succeeded" // the receiver answered 2xx
	DeliveryDead      = "dead"      // no more attempts: the retry window ended or the webhook was disabled
)

// WebhookDelivery is one event on its way to one webhook: an outbox row.
type WebhookDelivery struct {
	ID              string
	WebhookID       string
	WorkspaceID     string
	EventID         int64 // 0 for a ping
	MessageID       string
	EventType       string
	PayloadJSON     string
	State           string
	Attempts        int
	NextAttemptAt   *time.Time
	RetryUntil      time.Time
	LeaseOwner      string
	LeaseUntil      *time.Time
	LastAttemptAt   *time.Time
	ResponseCode    int
	LatencyMS       int64
	Error           string
	ResponseExcerpt string
	CreatedAt       time.Time
	UpdatedAt       time.Time
	DeliveredAt     *time.Time
}

const webhookCols = `id, workspace_id, url, events_json, format, secret_ciphertext, description, enabled, disabled_reason,
	failing_since, created_by, created_at, updated_at`

func scanWebhook(sc interface{ Scan(...any) error }) (Webhook, error) {
	var w Webhook
	var failing sql.NullTime
	err := sc.Scan(&w.ID, &w.WorkspaceID, &w.URL, &w.EventsJSON, &w.Format, &w.SecretCiphertext, &w.Description,
		&w.Enabled, &w.DisabledReason, &failing, &w.CreatedBy, &w.CreatedAt, &w.UpdatedAt)
	w.FailingSince = timePtr(failing)
	return w, err
}

// CreateWebhook inserts w.
func (q *Queries) CreateWebhook(ctx context.Context, w Webhook) error {
	_, err := q.x.ExecContext(ctx, `INSERT INTO webhooks (`+webhookCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		w.ID, w.WorkspaceID, w.URL, w.EventsJSON, w.Format, w.SecretCiphertext, w.Description, w.Enabled,
		w.DisabledReason, nullTime(w.FailingSince), w.CreatedBy, w.CreatedAt.UTC(), w.UpdatedAt.UTC())
	if isUnique(err) {
		return ErrConflict
	}
	return err
}

// GetWebhook returns one webhook of a workspace ("": any workspace).
func (q *Queries) GetWebhook(ctx context.Context, workspaceID, id string) (Webhook, error) {
	row := q.x.QueryRowContext(ctx, `SELECT `+webhookCols+` FROM webhooks WHERE id = ? AND (? = '' OR workspace_id = ?)`,
		id, workspaceID, workspaceID)
	w, err := scanWebhook(row)
	return w, one(err)
}

// WebhooksPage lists a workspace's webhooks oldest first, after the cursor
// (At, ID), at most limit.
func (q *Queries) WebhooksPage(ctx context.Context, workspaceID string, after *Cursor, limit int) ([]Webhook, error) {
	where, args := keyset([]string{"workspace_id = ?"}, []any{workspaceID}, after, "created_at", "id", false)
	return q.webhooks(ctx, `WHERE `+and(where)+` ORDER BY created_at, id LIMIT ?`, append(args, lim(limit))...)
}

// EnabledWebhooks lists every workspace's enabled webhooks (the fan-out).
func (q *Queries) EnabledWebhooks(ctx context.Context) ([]Webhook, error) {
	return q.webhooks(ctx, `WHERE enabled ORDER BY created_at, id`)
}

func (q *Queries) webhooks(ctx context.Context, where string, args ...any) ([]Webhook, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT `+webhookCols+` FROM webhooks `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("list webhooks: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []Webhook
	for rows.Next() {
		w, err := scanWebhook(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

// UpdateWebhook saves w's settings (url, events, format, secret,
// description, enabled, disabled_reason, failing_since).
func (q *Queries) UpdateWebhook(ctx context.Context, w Webhook) error {
	return affected(q.x.ExecContext(ctx, `UPDATE webhooks SET url = ?, events_json = ?, format = ?, secret_ciphertext = ?,
		description = ?, enabled = ?, disabled_reason = ?, failing_since = ?, updated_at = ? WHERE id = ? AND workspace_id = ?`,
		w.URL, w.EventsJSON, w.Format, w.SecretCiphertext, w.Description, w.Enabled, w.DisabledReason,
		nullTime(w.FailingSince), w.UpdatedAt.UTC(), w.ID, w.WorkspaceID))
}

// SetWebhookFailing records when a webhook's failures began (nil: it
// succeeded); a webhook already failing keeps its first failure.
func (q *Queries) SetWebhookFailing(ctx context.Context, id string, since *time.Time) error {
	if since == nil {
		_, err := q.x.ExecContext(ctx, `UPDATE webhooks SET failing_since = NULL WHERE id = ? AND failing_since IS NOT NULL`, id)
		return err
	}
	_, err := q.x.ExecContext(ctx, `UPDATE webhooks SET failing_since = ? WHERE id = ? AND failing_since IS NULL`, since.UTC(), id)
	return err
}

// DisableWebhook turns a webhook off with the reason and ends its
// undelivered deliveries (dead); false when it was disabled already.
func (q *Queries) DisableWebhook(ctx context.Context, id, reason string, at time.Time) (bool, error) {
	ok, err := changed(q.x.ExecContext(ctx, `UPDATE webhooks SET enabled = FALSE, disabled_reason = ?, updated_at = ?
		WHERE id = ? AND enabled`, reason, at.UTC(), id))
	if err != nil || !ok {
		return ok, err
	}
	_, err = q.x.ExecContext(ctx, `UPDATE webhook_deliveries SET state = 'dead', next_attempt_at = NULL, updated_at = ?,
		error = CASE WHEN error = '' THEN ? ELSE error END
		WHERE webhook_id = ? AND state IN ('pending', 'failed')`, at.UTC(), "webhook disabled: "+reason, id)
	return true, err
}

// DeleteWebhook removes a webhook and its deliveries.
func (q *Queries) DeleteWebhook(ctx context.Context, workspaceID, id string) error {
	if _, err := q.x.ExecContext(ctx, `DELETE FROM webhook_deliveries WHERE webhook_id = ? AND workspace_id = ?`, id, workspaceID); err != nil {
		return err
	}
	return affected(q.x.ExecContext(ctx, `DELETE FROM webhooks WHERE id = ? AND workspace_id = ?`, id, workspaceID))
}

// --- the fan-out cursor

// FanoutCursor is the last event id turned into deliveries.
func (q *Queries) FanoutCursor(ctx context.Context) (int64, error) {
	var n int64
	err := q.x.QueryRowContext(ctx, `SELECT last_event_id FROM webhook_fanout WHERE id = 1`).Scan(&n)
	return n, one(err)
}

// AdvanceFanout moves the cursor from old to upto (compare and swap);
// false when another control plane moved it meanwhile.
func (q *Queries) AdvanceFanout(ctx context.Context, old, upto int64) (bool, error) {
	return changed(q.x.ExecContext(ctx, `UPDATE webhook_fanout SET last_event_id = ? WHERE id = 1 AND last_event_id = ?`, upto, old))
}

// --- deliveries

const deliveryCols = `id, webhook_id, workspace_id, event_id, message_id, event_type, payload_json, state, attempts,
	next_attempt_at, retry_until, lease_owner, lease_until, last_attempt_at, response_code, latency_ms, error,
	response_excerpt, created_at, updated_at, delivered_at`

func scanDelivery(sc interface{ Scan(...any) error }) (WebhookDelivery, error) {
	var d WebhookDelivery
	var event sql.NullInt64
	var next, lease, last, delivered sql.NullTime
	err := sc.Scan(&d.ID, &d.WebhookID, &d.WorkspaceID, &event, &d.MessageID, &d.EventType, &d.PayloadJSON, &d.State,
		&d.Attempts, &next, &d.RetryUntil, &d.LeaseOwner, &lease, &last, &d.ResponseCode, &d.LatencyMS, &d.Error,
		&d.ResponseExcerpt, &d.CreatedAt, &d.UpdatedAt, &delivered)
	d.EventID = event.Int64
	d.NextAttemptAt, d.LeaseUntil, d.LastAttemptAt, d.DeliveredAt = timePtr(next), timePtr(lease), timePtr(last), timePtr(delivered)
	return d, err
}

// InsertDelivery queues d unless the webhook has a delivery of that event
// already (false then): fan-out that runs twice adds nothing.
func (q *Queries) InsertDelivery(ctx context.Context, d WebhookDelivery) (bool, error) {
	var event sql.NullInt64
	if d.EventID != 0 {
		event = sql.NullInt64{Int64: d.EventID, Valid: true}
	}
	return changed(q.x.ExecContext(ctx, `INSERT INTO webhook_deliveries (`+deliveryCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (webhook_id, event_id) DO NOTHING`,
		d.ID, d.WebhookID, d.WorkspaceID, event, d.MessageID, d.EventType, d.PayloadJSON, d.State, d.Attempts,
		nullTime(d.NextAttemptAt), d.RetryUntil.UTC(), d.LeaseOwner, nullTime(d.LeaseUntil), nullTime(d.LastAttemptAt),
		d.ResponseCode, d.LatencyMS, d.Error, d.ResponseExcerpt, d.CreatedAt.UTC(), d.UpdatedAt.UTC(), nullTime(d.DeliveredAt)))
}

// GetDelivery returns one delivery of a webhook.
func (q *Queries) GetDelivery(ctx context.Context, webhookID, id string) (WebhookDelivery, error) {
	row := q.x.QueryRowContext(ctx, `SELECT `+deliveryCols+` FROM webhook_deliveries WHERE id = ? AND webhook_id = ?`, id, webhookID)
	d, err := scanDelivery(row)
	return d, one(err)
}

// DeliveriesPage lists a webhook's deliveries newest first, before the
// cursor (At, ID), at most limit.
func (q *Queries) DeliveriesPage(ctx context.Context, webhookID string, after *Cursor, limit int) ([]WebhookDelivery, error) {
	where, args := keyset([]string{"webhook_id = ?"}, []any{webhookID}, after, "created_at", "id", true)
	return q.deliveries(ctx, `WHERE `+and(where)+` ORDER BY created_at DESC, id DESC LIMIT ?`, append(args, lim(limit))...)
}

func (q *Queries) deliveries(ctx context.Context, where string, args ...any) ([]WebhookDelivery, error) {
	rows, err := q.x.QueryContext(ctx, `SELECT `+deliveryCols+` FROM webhook_deliveries `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("list deliveries: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []WebhookDelivery
	for rows.Next() {
		d, err := scanDelivery(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

func (q *Queries) postgres() bool {
	_, ok := q.x.(rebinder)
	return ok
}

// ClaimDeliveries leases up to limit due deliveries (pending or failed,
// next attempt at or before now, nobody else's unexpired lease) to owner
// until until, and returns them. owner's own leases are taken back: a
// control plane restarted after a crash resumes its claims at once (its
// caller never claims while its own attempts run). On PostgreSQL the rows are picked FOR UPDATE
// SKIP LOCKED, so control planes claiming at once never get the same row;
// SQLite has one writer, which gives the same.
func (q *Queries) ClaimDeliveries(ctx context.Context, owner string, now, until time.Time, limit int) ([]WebhookDelivery, error) {
	lock := ""
	if q.postgres() {
		lock = " FOR UPDATE SKIP LOCKED"
	}
	rows, err := q.x.QueryContext(ctx, `UPDATE webhook_deliveries SET lease_owner = ?, lease_until = ?
		WHERE id IN (SELECT id FROM webhook_deliveries
			WHERE state IN ('pending', 'failed') AND next_attempt_at <= ?
				AND (lease_owner = '' OR lease_owner = ? OR lease_until IS NULL OR lease_until < ?)
			ORDER BY next_attempt_at, id LIMIT ?`+lock+`)
		AND state IN ('pending', 'failed') AND (lease_owner = '' OR lease_owner = ? OR lease_until IS NULL OR lease_until < ?)
		RETURNING `+deliveryCols, owner, until.UTC(), now.UTC(), owner, now.UTC(), limit, owner, now.UTC())
	if err != nil {
		return nil, fmt.Errorf("claim deliveries: %w", err)
	}
	defer func() { _ = rows.Close() }()
	var out []WebhookDelivery
	for rows.Next() {
		d, err := scanDelivery(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// StartAttempt records that owner is about to make attempt number
// attempts+1 of a delivery it holds the lease of (until now at least);
// false when the lease is lost, so the attempt must not be made.
func (q *Queries) StartAttempt(ctx context.Context, id, owner string, attempts int, now time.Time) (bool, error) {
	return changed(q.x.ExecContext(ctx, `UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = ?, updated_at = ?
		WHERE id = ? AND lease_owner = ? AND lease_until > ? AND attempts = ? AND state IN ('pending', 'failed')`,
		now.UTC(), now.UTC(), id, owner, now.UTC(), attempts))
}

// FinishAttempt records an attempt's outcome (state, next attempt,
// response) and releases owner's lease; false when the lease was lost.
func (q *Queries) FinishAttempt(ctx context.Context, d WebhookDelivery, owner string) (bool, error) {
	return changed(q.x.ExecContext(ctx, `UPDATE webhook_deliveries SET state = ?, next_attempt_at = ?, response_code = ?,
		latency_ms = ?, error = ?, response_excerpt = ?, updated_at = ?, delivered_at = ?, lease_owner = '', lease_until = NULL
		WHERE id = ? AND lease_owner = ?`,
		d.State, nullTime(d.NextAttemptAt), d.ResponseCode, d.LatencyMS, d.Error, d.ResponseExcerpt, d.UpdatedAt.UTC(),
		nullTime(d.DeliveredAt), d.ID, owner))
}

// Redeliver queues a delivery again at now with a new retry window, keeping
// its attempts and message id (ErrNotFound: no such delivery).
func (q *Queries) Redeliver(ctx context.Context, webhookID, id string, now, retryUntil time.Time) error {
	return affected(q.x.ExecContext(ctx, `UPDATE webhook_deliveries SET state = 'pending', next_attempt_at = ?, retry_until = ?,
		lease_owner = '', lease_until = NULL, updated_at = ? WHERE id = ? AND webhook_id = ?`,
		now.UTC(), retryUntil.UTC(), now.UTC(), id, webhookID))
}

// OutboxStats counts undelivered deliveries (pending or failed) and
// returns when the oldest of them was queued (nil: none).
func (q *Queries) OutboxStats(ctx context.Context) (depth int, oldest *time.Time, err error) {
	if err := q.x.QueryRowContext(ctx, `SELECT COUNT(*) FROM webhook_deliveries WHERE state IN ('pending', 'failed')`).Scan(&depth); err != nil {
		return 0, nil, err
	}
	var at time.Time
	err = q.x.QueryRowContext(ctx, `SELECT created_at FROM webhook_deliveries WHERE state IN ('pending', 'failed')
		ORDER BY created_at LIMIT 1`).Scan(&at)
	if errors.Is(err, sql.ErrNoRows) {
		return depth, nil, nil
	}
	if err != nil {
		return 0, nil, err
	}
	return depth, &at, nil
}
