-- +goose Up
-- PostgreSQL twin of ../sqlite/00006_console_sessions.sql.
-- Signed-in web console sessions, so a restart or a standby's takeover
-- keeps users signed in. The row is found by the sha256 of the cookie's
-- session id (the id itself is never stored); the session's API token and
-- CSRF token are kept only sealed by the keyring (associated data: the
-- hex of id_hash). expires_at is the idle expiry, extended on use up to
-- created_at plus the maximum session age.
CREATE TABLE console_sessions (
    id_hash    BYTEA PRIMARY KEY,
    sealed     TEXT NOT NULL,
    token_name TEXT NOT NULL,
    role       TEXT NOT NULL,
    workspace  TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX console_sessions_expires ON console_sessions(expires_at);

-- +goose Down
DROP TABLE console_sessions;
