-- +goose Up
-- One ed25519 SSH key per workspace; the private half encrypted at rest
-- (associated data: key id + workspace id).
CREATE TABLE workspace_ssh_keys (
    workspace_id       TEXT PRIMARY KEY REFERENCES workspaces(id),
    public_key         TEXT NOT NULL,
    fingerprint        TEXT NOT NULL,
    private_ciphertext TEXT NOT NULL,
    created_at         TIMESTAMP NOT NULL
);

CREATE TABLE servers (
    id               TEXT PRIMARY KEY,
    workspace_id     TEXT NOT NULL REFERENCES workspaces(id),
    integration_id   TEXT,            -- NULL once its integration was removed
    provider         TEXT NOT NULL,
    name             TEXT NOT NULL,
    region           TEXT NOT NULL,
    size             TEXT NOT NULL,
    image            TEXT NOT NULL,   -- as requested (may be a neutral name)
    image_id         TEXT NOT NULL DEFAULT '',
    ports_json       TEXT NOT NULL,
    state            TEXT NOT NULL,
    destroy          INTEGER NOT NULL DEFAULT 0, -- deleting: also delete the cloud resources
    instance_id      TEXT NOT NULL DEFAULT '',
    public_ipv4      TEXT NOT NULL DEFAULT '',
    firewall_id      TEXT NOT NULL DEFAULT '',
    ssh_key_id       TEXT NOT NULL DEFAULT '',
    agent_public_key BLOB,
    agent_version    TEXT NOT NULL DEFAULT '',
    facts_json       TEXT NOT NULL DEFAULT '',
    health_json      TEXT NOT NULL DEFAULT '',
    health_at        TIMESTAMP,
    last_seen_at     TIMESTAMP,
    installed_at     TIMESTAMP,
    error_json       TEXT NOT NULL DEFAULT '',
    agent_timeout_s  INTEGER NOT NULL,
    created_at       TIMESTAMP NOT NULL,
    updated_at       TIMESTAMP NOT NULL
);
CREATE INDEX servers_workspace ON servers(workspace_id, created_at);
CREATE INDEX servers_state ON servers(state);
CREATE UNIQUE INDEX servers_live_name ON servers(workspace_id, name) WHERE state <> 'deleted';

-- Each provisioning step, recorded before and after it runs.
CREATE TABLE server_steps (
    server_id   TEXT NOT NULL REFERENCES servers(id),
    seq         INTEGER NOT NULL,
    name        TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    started_at  TIMESTAMP,
    finished_at TIMESTAMP,
    error_json  TEXT NOT NULL DEFAULT '',
    detail      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (server_id, seq)
);

-- Bootstrap tokens only as sha256; single use, bound to a server, expiring.
CREATE TABLE bootstrap_tokens (
    hash       BLOB PRIMARY KEY,
    server_id  TEXT NOT NULL REFERENCES servers(id),
    expires_at TIMESTAMP NOT NULL,
    used_at    TIMESTAMP
);
CREATE INDEX bootstrap_tokens_server ON bootstrap_tokens(server_id);

-- +goose Down
DROP TABLE bootstrap_tokens;
DROP TABLE server_steps;
DROP TABLE servers;
DROP TABLE workspace_ssh_keys;
