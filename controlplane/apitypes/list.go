package apitypes

// Pagination of list routes: every list answers an object whose key is the
// resource's plural ({"servers": [...]}) and "next": the path and query to
// GET for the next page, "" on the last page. Query parameters: limit
// (1..MaxLimit, default DefaultLimit) and cursor (opaque: pass back what
// "next" carries, never build one).
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// WorkspaceList is GET /v1/workspaces.
type WorkspaceList struct {
	Workspaces []Workspace `json:"workspaces"`
	Next       string      `json:"next"`
}

// TokenList is GET /v1/workspaces/{ws}/tokens.
type TokenList struct {
	Tokens []Token `json:"tokens"`
	Next   string  `json:"next"`
}

// AuditList is GET /v1/workspaces/{ws}/audit, newest first.
type AuditList struct {
	Entries []AuditEntry `json:"entries"`
	Next    string       `json:"next"`
}

// IntegrationList is GET /v1/workspaces/{ws}/integrations.
type IntegrationList struct {
	Integrations []Integration `json:"integrations"`
	Next         string        `json:"next"`
}

// ServerList is GET /v1/workspaces/{ws}/servers.
type ServerList struct {
	Servers []Server `json:"servers"`
	Next    string   `json:"next"`
}

// TaskList is GET /v1/workspaces/{ws}/tasks, newest first.
type TaskList struct {
	Tasks []Task `json:"tasks"`
	Next  string `json:"next"`
}

// DeploymentList is GET /v1/workspaces/{ws}/deployments, newest first.
type DeploymentList struct {
	Deployments []Deployment `json:"deployments"`
	Next        string       `json:"next"`
}

// HealthSamples is GET /v1/workspaces/{ws}/servers/{id}/health.
type HealthSamples struct {
	Samples []HealthSample `json:"samples"`
}
