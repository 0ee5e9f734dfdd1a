package apitypes

import "time"

// Token is an API token as listed: never its secret.
type Token struct {
	ID         string     `json:"id"` // tok_…
	Name       string     `json:"name"`
	Role       string     `json:"role"` // owner, admin or viewer
	CreatedBy  string     `json:"created_by"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at"` // to the minute
	RevokedAt  *time.Time `json:"revoked_at"`
	Workspace  string     `json:"workspace"` // slug
}

// CreateToken is POST /v1/workspaces/{ws}/tokens.
type CreateToken struct {
	Name string `json:"name"` // 1-100 characters: who or what uses it
	Role string `json:"role"` // admin (read and change) or viewer (read only)
}

// CreatedToken answers CreateToken: the only time the secret is shown.
type CreatedToken struct {
	Token
	Secret string `json:"token"` // send as Authorization: Bearer <token>
}
