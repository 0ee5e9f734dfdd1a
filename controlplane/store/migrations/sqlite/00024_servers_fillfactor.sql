-- +goose Up
-- SQLite twin of ../postgres/00024_servers_fillfactor.sql, which leaves
-- room on the servers table's pages for PostgreSQL's in-place (HOT)
-- updates. SQLite has no such setting: nothing to do, kept so both
-- databases share one schema version.
SELECT 1;

-- +goose Down
SELECT 1;
