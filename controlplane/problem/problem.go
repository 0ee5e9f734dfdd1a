// Package problem is the error a request handler turns into the API's
// error body {"error": {"code", "message", "hint"}} with an HTTP status.
package problem

import (
	"fmt"
	"net/http"
)

// Error is an API error.
type Error struct {
	Status  int
	Code    string
	Message string
	Hint    string
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Validation is a 400 validation_failed.
func Validation(hint, format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Code: "validation_failed", Message: fmt.Sprintf(format, args...), Hint: hint}
}

// NotFound is a 404 for what (e.g. "integration int_x").
func NotFound(what string) *Error {
	return &Error{Status: http.StatusNotFound, Code: "not_found", Message: what + " not found"}
}

// Conflict is a 409.
func Conflict(hint, format string, args ...any) *Error {
	return &Error{Status: http.StatusConflict, Code: "conflict", Message: fmt.Sprintf(format, args...), Hint: hint}
}

// Forbidden is a 403.
func Forbidden(hint, format string, args ...any) *Error {
	return &Error{Status: http.StatusForbidden, Code: "forbidden", Message: fmt.Sprintf(format, args...), Hint: hint}
}
