-- +goose Up
-- When a task was last written to an agent session: a new session resends
-- only what was sent before it started (at least once, but no needless
-- duplicate of a task sent in the very same session).
ALTER TABLE tasks ADD COLUMN last_sent_at TIMESTAMP;

-- +goose Down
ALTER TABLE tasks DROP COLUMN last_sent_at;
