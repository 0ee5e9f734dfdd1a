-- +goose Up
-- Agent updates (issue 13), durable on any control plane:
-- agent_update_status is the agent's latest update_status (JSON: id,
-- state, error; '' when none), recorded by the control plane holding its
-- session, so the update_agent action reads it wherever it runs and after
-- a restart. agent_last_update_at is when hello.last_update (00020) was
-- first recorded for its update id (NULL when none).
ALTER TABLE servers ADD COLUMN agent_update_status TEXT NOT NULL DEFAULT '';
ALTER TABLE servers ADD COLUMN agent_last_update_at TIMESTAMP;

-- +goose Down
ALTER TABLE servers DROP COLUMN agent_last_update_at;
ALTER TABLE servers DROP COLUMN agent_update_status;
