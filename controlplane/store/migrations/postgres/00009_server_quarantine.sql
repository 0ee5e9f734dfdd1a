-- +goose Up
-- PostgreSQL twin of ../sqlite/00009_server_quarantine.sql.
-- A server whose agent identity key is used by two agents at once is
-- quarantined (no tasks, no agent sessions) until an admin rekeys it.
-- revoked_agent_key is the key a rekey retired, so the hub can tell its
-- holder why it is refused.
ALTER TABLE servers ADD COLUMN quarantined_at TIMESTAMPTZ;
ALTER TABLE servers ADD COLUMN quarantine_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE servers ADD COLUMN revoked_agent_key BYTEA;

-- +goose Down
ALTER TABLE servers DROP COLUMN revoked_agent_key;
ALTER TABLE servers DROP COLUMN quarantine_reason;
ALTER TABLE servers DROP COLUMN quarantined_at;
