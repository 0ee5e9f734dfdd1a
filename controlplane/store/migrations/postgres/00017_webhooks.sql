-- +goose Up
-- Webhooks (issue 14): a workspace's subscriptions to its event log, and
-- the durable outbox that delivers them. The fan-out loop reads the event
-- log after webhook_fanout.last_event_id and, in one transaction, inserts
-- one delivery per matching enabled webhook and advances the cursor; the
-- delivery worker claims due deliveries with a lease (lease_owner/until),
-- records each attempt before and after it runs, and schedules the next.
CREATE TABLE webhooks (
    id                TEXT PRIMARY KEY,
    workspace_id      TEXT NOT NULL REFERENCES workspaces(id),
    url               TEXT NOT NULL,
    events_json       TEXT NOT NULL,             -- subscription patterns: ["*"], ["server.*", "task.failed"]
    format            TEXT NOT NULL,             -- raw, slack
    secret_ciphertext TEXT NOT NULL,             -- whsec_… sealed (secrets.Keyring, record id = webhook id)
    description       TEXT NOT NULL DEFAULT '',
    enabled           BOOLEAN NOT NULL,
    disabled_reason   TEXT NOT NULL DEFAULT '',
    failing_since     TIMESTAMPTZ,                 -- first failed attempt since the last success
    created_by        TEXT NOT NULL DEFAULT '',
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX webhooks_workspace ON webhooks(workspace_id, created_at);

CREATE TABLE webhook_deliveries (
    id                TEXT PRIMARY KEY,
    webhook_id        TEXT NOT NULL REFERENCES webhooks(id) ON DELETE CASCADE,
    workspace_id      TEXT NOT NULL,
    event_id          BIGINT,                    -- NULL for a ping
    message_id        TEXT NOT NULL,             -- the webhook-id header: stable across retries
    event_type        TEXT NOT NULL,
    payload_json      TEXT NOT NULL,             -- the event as delivered (never a secret)
    state             TEXT NOT NULL,             -- pending, failed (retry scheduled), succeeded, dead
    attempts          INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   TIMESTAMPTZ,
    retry_until       TIMESTAMPTZ NOT NULL,   -- no attempt after this: the delivery goes dead (24 h; redeliver restarts it)
    lease_owner       TEXT NOT NULL DEFAULT '',
    lease_until       TIMESTAMPTZ,
    last_attempt_at   TIMESTAMPTZ,
    response_code     INTEGER NOT NULL DEFAULT 0,
    latency_ms        INTEGER NOT NULL DEFAULT 0,
    error             TEXT NOT NULL DEFAULT '',
    response_excerpt  TEXT NOT NULL DEFAULT '',
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    delivered_at      TIMESTAMPTZ,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries(next_attempt_at) WHERE state IN ('pending', 'failed');
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries(webhook_id, created_at);

-- The fan-out cursor: one row, the last event id turned into deliveries.
CREATE TABLE webhook_fanout (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id BIGINT NOT NULL
);
INSERT INTO webhook_fanout (id, last_event_id) VALUES (1, 0);

-- +goose Down
DROP TABLE webhook_fanout;
DROP TABLE webhook_deliveries;
DROP TABLE webhooks;
