-- +goose Up
-- The durable event log (issue 14): one row per thing that happened,
-- written in the transaction of the change it describes. Ids come from
-- the one-row counter event_ids, updated in that same transaction, so ids
-- are committed in increasing order and a reader asking for id > N never
-- misses an event committed after it asked.
CREATE TABLE event_ids (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    last_id INTEGER NOT NULL
);
INSERT INTO event_ids (id, last_id) VALUES (1, 0);

CREATE TABLE events (
    id           INTEGER PRIMARY KEY,
    workspace_id TEXT NOT NULL,
    type         TEXT NOT NULL,
    subject      TEXT NOT NULL,
    at           TIMESTAMP NOT NULL,
    data_json    TEXT NOT NULL -- a small JSON object, never a secret
);
CREATE INDEX events_workspace_id ON events(workspace_id, id);
CREATE INDEX events_at ON events(at);

-- +goose Down
DROP TABLE events;
DROP TABLE event_ids;
