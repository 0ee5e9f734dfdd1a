-- +goose Up
-- Several active control planes on one database (issue 17): each agent
-- session's holder, and the control planes that can hold one.
--
-- servers.session_holder: the control plane whose hub holds the server's
-- agent session ('' none). Written by the session's start, cleared by its
-- end only if still the holder's (a reconnect to another control plane
-- may have taken it meanwhile); another control plane reads it to know
-- where to send the agent a message.
ALTER TABLE servers ADD COLUMN session_holder TEXT NOT NULL DEFAULT '';
-- What another control plane needs to know of a session it does not
-- hold: when it started and what the agent's hello advertised
-- (protocol.Hello.Capabilities, space-separated).
ALTER TABLE servers ADD COLUMN session_started_at TIMESTAMPTZ;
ALTER TABLE servers ADD COLUMN agent_capabilities TEXT NOT NULL DEFAULT '';
-- control_planes: one row per running control plane, its liveness beat
-- every few seconds. A row whose beat is stale names a dead process: the
-- sessions it held are over.
CREATE TABLE control_planes (
    id         TEXT PRIMARY KEY,
    started_at TIMESTAMPTZ NOT NULL,
    beat_at    TIMESTAMPTZ NOT NULL
);

-- +goose Down
DROP TABLE control_planes;
ALTER TABLE servers DROP COLUMN agent_capabilities;
ALTER TABLE servers DROP COLUMN session_started_at;
ALTER TABLE servers DROP COLUMN session_holder;
