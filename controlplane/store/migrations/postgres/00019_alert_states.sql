-- +goose Up
-- The evaluator's state per (rule, server): pending while the condition
-- holds for less than the rule's for_s, firing once it held through it,
-- resolved once it stopped holding. The row is the truth several control
-- planes share; a transition re-reads it inside its transaction.
CREATE TABLE alert_states (
    rule_id      TEXT NOT NULL REFERENCES alert_rules(id) ON DELETE CASCADE,
    server_id    TEXT NOT NULL,
    workspace_id TEXT NOT NULL,
    state        TEXT NOT NULL,
    since        TIMESTAMPTZ NOT NULL,
    value        DOUBLE PRECISION NOT NULL DEFAULT 0,
    fired_at     TIMESTAMPTZ,
    resolved_at  TIMESTAMPTZ,
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (rule_id, server_id)
);
CREATE INDEX alert_states_ws_state ON alert_states (workspace_id, state);

-- When each integration is next re-validated in the background. A control
-- plane claims a due one by moving this forward (by a lease) in one
-- conditional update, so several never check the same one at once.
ALTER TABLE integrations ADD COLUMN next_check_at TIMESTAMPTZ;

-- +goose Down
ALTER TABLE integrations DROP COLUMN next_check_at;
DROP INDEX alert_states_ws_state;
DROP TABLE alert_states;
