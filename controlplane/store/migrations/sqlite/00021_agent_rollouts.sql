-- +goose Up
-- Agent rollouts (issue 13): one agent version over a workspace's servers,
-- canaries first. A durable job: the controller records each target's
-- state before and after it starts its update_agent action, so a control
-- plane that restarts goes on where it was and never updates a server
-- twice. lease_owner/lease_until: the control plane driving it.
CREATE TABLE agent_rollouts (
    id              TEXT PRIMARY KEY,
    workspace_id    TEXT NOT NULL REFERENCES workspaces(id),
    version         TEXT NOT NULL,
    selector_json   TEXT NOT NULL,   -- {"servers":[…]} or {"tag":"…"} or {} (every server)
    canary          TEXT NOT NULL,   -- as asked: "2" or "20%"
    canary_count    INTEGER NOT NULL,
    max_parallel    INTEGER NOT NULL,
    health_window_s INTEGER NOT NULL,
    state           TEXT NOT NULL,   -- pending, canary, rolling, paused, succeeded, failed, aborted
    paused_from     TEXT NOT NULL DEFAULT '',
    reason          TEXT NOT NULL DEFAULT '',
    lease_owner     TEXT NOT NULL DEFAULT '',
    lease_until     TIMESTAMP,
    created_by      TEXT NOT NULL,
    created_at      TIMESTAMP NOT NULL,
    updated_at      TIMESTAMP NOT NULL,
    finished_at     TIMESTAMP
);
CREATE INDEX agent_rollouts_workspace ON agent_rollouts(workspace_id, created_at);
-- One unfinished rollout per workspace: a second POST is a conflict.
CREATE UNIQUE INDEX agent_rollouts_one_open ON agent_rollouts(workspace_id)
    WHERE state IN ('pending', 'canary', 'rolling', 'paused');

CREATE TABLE agent_rollout_targets (
    rollout_id     TEXT NOT NULL REFERENCES agent_rollouts(id),
    server_id      TEXT NOT NULL REFERENCES servers(id),
    seq            INTEGER NOT NULL,
    wave           TEXT NOT NULL,    -- canary, rest
    state          TEXT NOT NULL,    -- pending, updating, healthy, failed, skipped
    from_version   TEXT NOT NULL DEFAULT '',
    action_id      TEXT NOT NULL DEFAULT '',
    baseline_error TEXT NOT NULL DEFAULT '',
    reason         TEXT NOT NULL DEFAULT '',
    started_at     TIMESTAMP,
    updated_at     TIMESTAMP,        -- the update action succeeded (health window starts)
    finished_at    TIMESTAMP,
    PRIMARY KEY (rollout_id, server_id)
);
CREATE INDEX agent_rollout_targets_state ON agent_rollout_targets(state);

-- +goose Down
DROP TABLE agent_rollout_targets;
DROP TABLE agent_rollouts;
