-- +goose Up
-- A deployment's plan runs in phases (agent steps as one deploy task, or a
-- firewall step the control plane runs as the server's ports action): the
-- target's current phase, the ports action its firewall phase started
-- (recorded before the action is created, so a resumed control plane waits
-- on it instead of starting a second), and why a firewall phase failed.
ALTER TABLE deployment_targets ADD COLUMN phase INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deployment_targets ADD COLUMN action_id TEXT NOT NULL DEFAULT '';
ALTER TABLE deployment_targets ADD COLUMN error TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE deployment_targets DROP COLUMN error;
ALTER TABLE deployment_targets DROP COLUMN action_id;
ALTER TABLE deployment_targets DROP COLUMN phase;
