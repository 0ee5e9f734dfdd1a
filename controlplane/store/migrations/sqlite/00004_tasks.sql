-- +goose Up
-- Tasks sent to agents: the durable record of what was asked, whether the
-- agent got it and what it reported (first final result wins).
CREATE TABLE tasks (
    id                  TEXT PRIMARY KEY,
    workspace_id        TEXT NOT NULL REFERENCES workspaces(id),
    server_id           TEXT NOT NULL REFERENCES servers(id),
    deployment_id       TEXT NOT NULL DEFAULT '',
    kind                TEXT NOT NULL,
    spec_json           TEXT NOT NULL,   -- the protocol.Task as sent, encrypted (secrets.Keyring, associated data: the task id)
    state               TEXT NOT NULL,   -- queued, sent, running, succeeded, failed, timed_out, canceled
    reason              TEXT NOT NULL DEFAULT '',
    error               TEXT NOT NULL DEFAULT '',
    exit_code           INTEGER,
    result_json         TEXT NOT NULL DEFAULT '', -- sha256, unit status, per-step results
    attempts            INTEGER NOT NULL DEFAULT 0, -- times sent to the agent
    log_seq             INTEGER NOT NULL DEFAULT 0, -- highest contiguous log seq received
    log_bytes           INTEGER NOT NULL DEFAULT 0, -- stored log bytes
    log_truncated       INTEGER NOT NULL DEFAULT 0, -- chunks past the cap were dropped
    last_log_seq        INTEGER NOT NULL DEFAULT 0, -- from the final result
    created_by          TEXT NOT NULL,
    created_at          TIMESTAMP NOT NULL,
    deadline            TIMESTAMP NOT NULL,
    sent_at             TIMESTAMP,
    started_at          TIMESTAMP,
    finished_at         TIMESTAMP,
    cancel_requested_at TIMESTAMP,
    updated_at          TIMESTAMP NOT NULL
);
CREATE INDEX tasks_workspace ON tasks(workspace_id, created_at);
CREATE INDEX tasks_server_state ON tasks(server_id, state);
CREATE INDEX tasks_state_deadline ON tasks(state, deadline);
CREATE INDEX tasks_deployment ON tasks(deployment_id);

-- Output chunks by (task, seq): a resent chunk is stored once.
CREATE TABLE task_logs (
    task_id TEXT NOT NULL REFERENCES tasks(id),
    seq     INTEGER NOT NULL,
    stream  TEXT NOT NULL,
    step    INTEGER NOT NULL DEFAULT 0,
    data    BLOB NOT NULL,
    at      TIMESTAMP NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;

-- Rolling deployments: one deploy task per target server, in batches.
CREATE TABLE deployments (
    id            TEXT PRIMARY KEY,
    workspace_id  TEXT NOT NULL REFERENCES workspaces(id),
    state         TEXT NOT NULL,   -- running, succeeded, failed
    selector      TEXT NOT NULL DEFAULT '', -- the tag, or '' for an explicit list
    max_parallel  INTEGER NOT NULL,
    deadline_s    INTEGER NOT NULL,
    plan_json     TEXT NOT NULL,   -- protocol.DeploySpec, encrypted like tasks.spec_json
    error         TEXT NOT NULL DEFAULT '',
    created_by    TEXT NOT NULL,
    created_at    TIMESTAMP NOT NULL,
    finished_at   TIMESTAMP,
    updated_at    TIMESTAMP NOT NULL
);
CREATE INDEX deployments_workspace ON deployments(workspace_id, created_at);
CREATE INDEX deployments_state ON deployments(state);

CREATE TABLE deployment_targets (
    deployment_id TEXT NOT NULL REFERENCES deployments(id),
    position      INTEGER NOT NULL,
    server_id     TEXT NOT NULL REFERENCES servers(id),
    batch         INTEGER NOT NULL,
    task_id       TEXT NOT NULL DEFAULT '',   -- '' until its batch starts
    skipped       INTEGER NOT NULL DEFAULT 0, -- an earlier batch failed
    PRIMARY KEY (deployment_id, position)
);

-- +goose Down
DROP TABLE deployment_targets;
DROP TABLE deployments;
DROP TABLE task_logs;
DROP TABLE tasks;
