package apitypes

import "time"

// Integration is a connected cloud account: never the secret, only its
// last four characters.
type Integration struct {
	ID              string     `json:"id"`       // int_…
	Provider        string     `json:"provider"` // digitalocean or vultr
	AccessKey       string     `json:"access_key"`
	SecretKeyHint   string     `json:"secret_key_hint"`
	Status          string     `json:"status"`       // valid or invalid (see last_error)
	WriteAccess     string     `json:"write_access"` // yes, no or unknown
	Account         *Account   `json:"account,omitempty"`
	LastValidatedAt *time.Time `json:"last_validated_at"`
	LastError       *Problem   `json:"last_error"`
	CreatedAt       time.Time  `json:"created_at"`
	UpdatedAt       time.Time  `json:"updated_at"`
}

// Account is what validation learnt about the account behind a credential.
type Account struct {
	Name          string   `json:"name,omitempty"`
	Email         string   `json:"email,omitempty"`
	Status        string   `json:"status,omitempty"`
	InstanceLimit int      `json:"instance_limit,omitempty"` // 0 when the provider does not say
	Write         string   `json:"write_access"`             // yes, no or unknown
	Permissions   []string `json:"permissions,omitempty"`    // Vultr ACLs
}

// Problem is a recorded failure: a typed code, a message and a hint.
type Problem struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
}

// ConnectIntegration is POST /v1/workspaces/{ws}/integrations: validated
// against the provider before it is saved.
type ConnectIntegration struct {
	Provider  string `json:"provider"`   // digitalocean or vultr
	AccessKey string `json:"access_key"` // a label
	SecretKey string `json:"secret_key"` // the API token / key; never shown again
}

// RenameIntegration is PATCH /v1/workspaces/{ws}/integrations/{id}.
type RenameIntegration struct {
	AccessKey string `json:"access_key"`
}

// RotateIntegrationSecret is PUT /v1/workspaces/{ws}/integrations/{id}/secret:
// validated, then swapped in.
type RotateIntegrationSecret struct {
	SecretKey string `json:"secret_key"`
}
