package apitypes

import "time"

// Workspace is a tenant: its integrations, servers, tokens and audit.
type Workspace struct {
	ID        string    `json:"id"`   // ws_…
	Slug      string    `json:"slug"` // in every path: /v1/workspaces/{slug}/…
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// CreateWorkspace is POST /v1/workspaces (owner token only).
type CreateWorkspace struct {
	// Slug: 1-40 lowercase letters, digits and dashes, starting with a letter.
	Slug string `json:"slug"`
	// Name defaults to the slug.
	Name string `json:"name,omitempty"`
}

// Whoami is GET /v1/whoami: the calling token.
type Whoami struct {
	TokenID   string `json:"token_id"`
	Name      string `json:"name"`
	Role      string `json:"role"`      // owner, admin or viewer
	Workspace string `json:"workspace"` // the token's workspace slug
}

// KeyRotation is POST /v1/keys/rotate (owner token only).
type KeyRotation struct {
	KeyID       string            `json:"key_id"`          // the new master key's id
	Reencrypted int               `json:"reencrypted"`     // secrets now under it
	Retired     []string          `json:"retired_key_ids"` // keys no record names any more
	Kept        []string          `json:"kept_key_ids"`    // older keys still named by a skipped row
	Skipped     []SkippedRotation `json:"skipped"`
}

// SkippedRotation is a stored secret the rotation could not decrypt; it
// stays as it is, and so does the key it names.
type SkippedRotation struct {
	Table  string `json:"table"`
	ID     string `json:"id"`
	KeyID  string `json:"key_id,omitempty"` // "" when the value is not a ciphertext at all
	Reason string `json:"reason"`
}
