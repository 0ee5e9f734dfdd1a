-- +goose Up
-- The outcome of a server's last agent update (protocol 1.2
-- hello.last_update, JSON: id, result, from, to, reason), recorded before
-- the hub acknowledges it to the agent, so an update_agent action reads it
-- on any control plane and after a restart; '' when none.
ALTER TABLE servers ADD COLUMN agent_last_update TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE servers DROP COLUMN agent_last_update;
