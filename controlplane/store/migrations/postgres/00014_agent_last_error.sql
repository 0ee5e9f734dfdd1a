-- +goose Up
-- What ended a server's last agent session (its goodbye, missed heartbeats,
-- the connection error) or the hub's last refusal of it, so agent_offline
-- can name it on any control plane and after a restart; '' when none.
ALTER TABLE servers ADD COLUMN agent_last_error TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE servers DROP COLUMN agent_last_error;
