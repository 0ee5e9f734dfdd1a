// Package apitypes holds the request and response bodies of Devpilot's
// admin HTTP API (/v1): the one typed contract that the handlers
// (controlplane/api), the CLI and the console share. The JSON field names
// are the API's; the OpenAPI document served at GET /v1/openapi.json
// describes the same shapes.
//
// Versioning: within v1 changes are additive only (new optional request
// fields, new response fields, new routes, new enum values where a field
// says it may grow). Clients ignore response fields they do not know.
// Removing or renaming a field, or changing its meaning, needs /v2.
//
// Some nested values are the agent protocol's own types
// (shared/protocol: Health, Facts, Task, StepResult, UnitStatus), which
// are themselves a versioned, golden-tested contract.
package apitypes
