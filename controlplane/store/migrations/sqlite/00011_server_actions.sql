-- +goose Up
-- Lifecycle actions of a server (reboot, power_off, power_on, resize, ports,
-- rename): a durable job each. steps_json records every step before and
-- after it runs, with the cloud action it started, so a control plane that
-- restarts resumes the action without starting a second cloud action.
-- lease_owner/lease_until: the control plane working on it (several share
-- one database).
CREATE TABLE server_actions (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    server_id     TEXT NOT NULL REFERENCES servers(id),
    type          TEXT NOT NULL,
    params_json   TEXT NOT NULL,
    state         TEXT NOT NULL,   -- queued, running, succeeded, failed
    steps_json    TEXT NOT NULL,
    error_json    TEXT NOT NULL DEFAULT '',
    lease_owner   TEXT NOT NULL DEFAULT '',
    lease_until   TIMESTAMP,
    created_by    TEXT NOT NULL,
    created_at    TIMESTAMP NOT NULL,
    updated_at    TIMESTAMP NOT NULL,
    finished_at   TIMESTAMP
);
CREATE INDEX server_actions_server ON server_actions(server_id, created_at);
-- At most one unfinished action per server: the second POST is a conflict.
CREATE UNIQUE INDEX server_actions_one_open ON server_actions(server_id) WHERE state IN ('queued', 'running');

-- +goose Down
DROP TABLE server_actions;
