-- +goose Up
-- PostgreSQL twin of ../sqlite/00003_health_history.sql.
-- Health samples as the hub flushes them (about one per server per flush
-- interval), for the last hours' charts; old ones are pruned.
CREATE TABLE server_health (
    server_id     TEXT NOT NULL,
    at            TIMESTAMPTZ NOT NULL,
    cpu_percent   DOUBLE PRECISION NOT NULL,
    load1         DOUBLE PRECISION NOT NULL,
    mem_used_mb   BIGINT NOT NULL,
    mem_total_mb  BIGINT NOT NULL,
    disk_used_mb  BIGINT NOT NULL,
    disk_total_mb BIGINT NOT NULL,
    PRIMARY KEY (server_id, at)
);

-- Diagnostics gathered when an install did not confirm in time.
ALTER TABLE servers ADD COLUMN diagnostics TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE servers DROP COLUMN diagnostics;
DROP TABLE server_health;
