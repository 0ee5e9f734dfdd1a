-- +goose Up
-- Why a server is in its state (stopped, agent_offline, lost, unknown), as
-- the reconciler saw it; '' when the state says it all.
ALTER TABLE servers ADD COLUMN state_reason TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE servers DROP COLUMN state_reason;
