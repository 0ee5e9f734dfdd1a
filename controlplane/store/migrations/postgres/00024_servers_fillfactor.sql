-- +goose Up
-- PostgreSQL twin of ../sqlite/00024_servers_fillfactor.sql.
-- The hub's health flush updates every online server's row every 30 s
-- (health_json, health_at, last_seen_at: none of them indexed). With
-- room left on each page, PostgreSQL writes the new row version beside
-- the old one (a HOT update) instead of on a new page with an entry in
-- each of the table's indexes: a flush of 100,000 servers took 3.1 s at
-- the default fillfactor of 100, 2.4–2.6 s at 70 (BenchmarkHealthFlush100k).
-- The setting applies to pages written from now on; `VACUUM FULL servers`
-- rewrites the existing ones (it locks the table while it runs).
ALTER TABLE servers SET (fillfactor = 70);

-- +goose Down
ALTER TABLE servers RESET (fillfactor);
