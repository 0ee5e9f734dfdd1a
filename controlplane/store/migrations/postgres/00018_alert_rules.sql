-- +goose Up
-- Alert rules of a workspace: a server offline, or its cpu, memory or disk
-- at or above threshold_percent, for at least for_s seconds; on the servers
-- carrying tag, or on all of them when tag is ''.
CREATE TABLE alert_rules (
    id                TEXT PRIMARY KEY,
    workspace_id      TEXT NOT NULL REFERENCES workspaces(id),
    name              TEXT NOT NULL,
    kind              TEXT NOT NULL,
    threshold_percent DOUBLE PRECISION NOT NULL DEFAULT 0,
    for_s             INTEGER NOT NULL,
    tag               TEXT NOT NULL DEFAULT '',
    created_at        TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL,
    UNIQUE (workspace_id, name)
);

-- +goose Down
DROP TABLE alert_rules;
