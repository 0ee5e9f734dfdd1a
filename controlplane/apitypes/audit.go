package apitypes

import (
	"encoding/json"
	"time"
)

// AuditEntry is one recorded change, newest first in lists.
type AuditEntry struct {
	ID     int64           `json:"id"`
	Actor  string          `json:"actor"`  // "token:<id> (<name>)" or "system"
	Action string          `json:"action"` // e.g. server.create, token.revoke
	Target string          `json:"target"` // the id or slug acted on
	At     time.Time       `json:"at"`
	Detail json.RawMessage `json:"detail"` // an object, or null; never a secret
}
