-- +goose Up
-- Health samples as the hub flushes them (about one per server per flush
-- interval), for the last hours' charts; old ones are pruned.
CREATE TABLE server_health (
    server_id     TEXT NOT NULL,
    at            TIMESTAMP NOT NULL,
    cpu_percent   REAL NOT NULL,
    load1         REAL NOT NULL,
    mem_used_mb   INTEGER NOT NULL,
    mem_total_mb  INTEGER NOT NULL,
    disk_used_mb  INTEGER NOT NULL,
    disk_total_mb INTEGER NOT NULL,
    PRIMARY KEY (server_id, at)
);

-- Diagnostics gathered when an install did not confirm in time.
ALTER TABLE servers ADD COLUMN diagnostics TEXT NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE servers DROP COLUMN diagnostics;
DROP TABLE server_health;
