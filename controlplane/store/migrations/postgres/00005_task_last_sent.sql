-- +goose Up
-- PostgreSQL twin of ../sqlite/00005_task_last_sent.sql.
-- When a task was last written to an agent session: a new session resends
-- only what was sent before it started (at least once, but no needless
-- duplicate of a task sent in the very same session).
ALTER TABLE tasks ADD COLUMN last_sent_at TIMESTAMPTZ;

-- +goose Down
ALTER TABLE tasks DROP COLUMN last_sent_at;
