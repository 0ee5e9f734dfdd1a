-- +goose Up
-- PostgreSQL twin of ../sqlite/00026_server_health_latest.sql.
-- Each server's latest health moves out of the wide servers row into a
-- narrow table of its own: the hub's flush rewrites every online server's
-- latest health every 30 s, and a 100,000-server flush spent most of its
-- time rewriting servers rows (BenchmarkHealthFlush100k). Room is left on
-- each page so those rewrites stay on their page (HOT updates).
-- at is when the sample arrived: the agent was seen then, so a server's
-- last_seen_at reads as the later of servers.last_seen_at (written by
-- session starts and ends) and this.
CREATE TABLE server_health_latest (
    server_id   TEXT PRIMARY KEY REFERENCES servers(id) ON DELETE CASCADE,
    health_json TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL
) WITH (fillfactor = 70);
INSERT INTO server_health_latest (server_id, health_json, at)
    SELECT id, health_json, health_at FROM servers WHERE health_at IS NOT NULL AND health_json <> '';
ALTER TABLE servers DROP COLUMN health_json, DROP COLUMN health_at;

-- +goose Down
ALTER TABLE servers ADD COLUMN health_json TEXT NOT NULL DEFAULT '', ADD COLUMN health_at TIMESTAMPTZ;
UPDATE servers SET health_json = h.health_json, health_at = h.at FROM server_health_latest h WHERE h.server_id = servers.id;
DROP TABLE server_health_latest;
