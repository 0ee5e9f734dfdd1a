-- +goose Up
-- A failed server's name can be taken again (it keeps its record, steps
-- and diagnostics until deleted); only live servers' names are unique.
DROP INDEX servers_live_name;
CREATE UNIQUE INDEX servers_live_name ON servers(workspace_id, name) WHERE state NOT IN ('deleted', 'failed');
CREATE INDEX servers_workspace_name ON servers(workspace_id, name);
-- Keyset pagination of the API's lists: (workspace, created_at, id).
CREATE INDEX api_tokens_workspace_created ON api_tokens(workspace_id, created_at, id);
CREATE INDEX integrations_workspace_created ON integrations(workspace_id, created_at, id);

-- +goose Down
DROP INDEX integrations_workspace_created;
DROP INDEX api_tokens_workspace_created;
DROP INDEX servers_workspace_name;
DROP INDEX servers_live_name;
CREATE UNIQUE INDEX servers_live_name ON servers(workspace_id, name) WHERE state <> 'deleted';
