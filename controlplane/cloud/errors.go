package cloud

import (
	"errors"
	"fmt"
	"time"
)

// Code classifies a provider failure. The values are the API's error codes
// (DESIGN.md "Errors"), so the API layer passes them through unchanged.
type Code string

// Error codes a provider failure maps to.
const (
	CodeInvalidCredentials Code = "invalid_credentials" // token unknown, revoked, expired, or account inactive
	CodeInsufficientScope  Code = "insufficient_scope"  // token lacks a scope/permission the action needs
	CodeIPNotAllowed       Code = "ip_not_allowed"      // Vultr API access control rejected the caller's IP
	CodeAPIDisabled        Code = "api_disabled"        // API access is switched off for the account
	CodeRateLimited        Code = "rate_limited"        // 429 that outlasted our retries
	CodeQuotaExceeded      Code = "quota_exceeded"      // droplet/instance limit reached
	CodeUnavailable        Code = "unavailable"         // size/plan or region sold out or not offered there
	CodeBilling            Code = "billing_required"    // the account cannot be billed
	CodeValidation         Code = "validation_failed"   // the provider refused the request's content
	CodeNotFound           Code = "not_found"
	CodeProviderError      Code = "provider_error" // 5xx or network failure that outlasted retries, or anything unrecognised
)

// Error is a provider failure a user can act on. Message is safe to show
// (it never holds a credential); Hint says what to do about it.
type Error struct {
	Code       Code
	Provider   string
	Op         string // what Devpilot was doing: "validate token", "create droplet"
	Message    string
	Hint       string
	Status     int           // HTTP status of the provider's last answer, 0 when none
	RetryAfter time.Duration // for CodeRateLimited: when the provider said to come back
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = string(e.Code)
	}
	if e.Op != "" {
		return fmt.Sprintf("%s: %s: %s", e.Provider, e.Op, msg)
	}
	return fmt.Sprintf("%s: %s", e.Provider, msg)
}

// Is makes errors.Is(err, cloud.ErrSoldOut) and friends match on Code.
func (e *Error) Is(target error) bool {
	var t *Error
	if !errors.As(target, &t) {
		return false
	}
	return t.Code == e.Code && t.Provider == "" && t.Op == ""
}

// Sentinels for errors.Is; they match any *Error with the same Code.
var (
	ErrInvalidCredentials = &Error{Code: CodeInvalidCredentials}
	ErrInsufficientScope  = &Error{Code: CodeInsufficientScope}
	ErrIPNotAllowed       = &Error{Code: CodeIPNotAllowed}
	ErrRateLimited        = &Error{Code: CodeRateLimited}
	ErrQuotaExceeded      = &Error{Code: CodeQuotaExceeded}
	ErrSoldOut            = &Error{Code: CodeUnavailable}
	ErrNotFound           = &Error{Code: CodeNotFound}
)

// Temporary reports whether err says nothing about the credential or the
// request: a 429 or a 5xx/network failure that outlasted the retries, or
// anything not classified. Trying again later may succeed.
func Temporary(err error) bool {
	c := CodeOf(err)
	return c == CodeRateLimited || c == CodeProviderError
}

// CodeOf returns the Code of err, or CodeProviderError for anything that is
// not an *Error.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeProviderError
}
