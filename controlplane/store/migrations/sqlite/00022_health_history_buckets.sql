-- +goose Up
-- Health history is kept in buckets (one row per server per resolution,
-- default 1 min, stamped with the bucket's start) and pruned by age: the
-- prune's range scan on at needs its own index (the primary key leads with
-- server_id).
CREATE INDEX server_health_at ON server_health (at);

-- +goose Down
DROP INDEX server_health_at;
