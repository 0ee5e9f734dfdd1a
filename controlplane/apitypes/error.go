package apitypes

// ErrorBody is every error response: {"error": {"code", "message", "hint"}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail says what went wrong and what to do about it.
type ErrorDetail struct {
	// Code is machine-readable: unauthorized, forbidden, not_found,
	// validation_failed, conflict, invalid_credentials, insufficient_scope,
	// ip_not_allowed, rate_limited, quota_exceeded, unavailable,
	// provider_error, timeout, internal (the list may grow).
	Code string `json:"code"`
	// Message is for a human; it never carries a secret.
	Message string `json:"message"`
	// Hint says what to do next; absent when there is nothing to add.
	Hint string `json:"hint,omitempty"`
}
