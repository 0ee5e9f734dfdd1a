-- +goose Up
CREATE TABLE workspaces (
    id         TEXT PRIMARY KEY,
    slug       TEXT NOT NULL UNIQUE,
    name       TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);

-- API tokens: only the sha256 of the secret part is kept.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces(id),
    name         TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'viewer')),
    secret_hash  BLOB NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   TIMESTAMP NOT NULL,
    last_used_at TIMESTAMP,
    revoked_at   TIMESTAMP
);
CREATE INDEX api_tokens_workspace ON api_tokens(workspace_id);

-- Cloud integrations: the secret only as AES-256-GCM ciphertext whose
-- associated data is its key id and this row's id.
CREATE TABLE integrations (
    id                TEXT PRIMARY KEY,
    workspace_id      TEXT NOT NULL REFERENCES workspaces(id),
    provider          TEXT NOT NULL,
    access_key        TEXT NOT NULL,
    secret_ciphertext TEXT NOT NULL,
    secret_hint       TEXT NOT NULL,
    status            TEXT NOT NULL,
    write_access      TEXT NOT NULL,
    account_json      TEXT NOT NULL,
    last_validated_at TIMESTAMP,
    last_error_json   TEXT,
    created_at        TIMESTAMP NOT NULL,
    updated_at        TIMESTAMP NOT NULL,
    UNIQUE (workspace_id, provider, access_key)
);

CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    workspace_id TEXT NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    target       TEXT NOT NULL,
    detail_json  TEXT NOT NULL,
    at           TIMESTAMP NOT NULL
);
CREATE INDEX audit_log_workspace ON audit_log(workspace_id, id);

-- +goose Down
DROP TABLE audit_log;
DROP TABLE integrations;
DROP TABLE api_tokens;
DROP TABLE workspaces;
