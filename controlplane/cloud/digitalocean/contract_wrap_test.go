package digitalocean

import (
	"net/http"
	"testing"

	"github.com/devpilot/devpilot/controlplane/cloud/contract"
)

// wrapContract checks every request godo sends and every answer the
// simulator gives against the OpenAPI spec; violations fail t.
func wrapContract(t *testing.T, h http.Handler) http.Handler {
	t.Helper()
	wrapped, rec := contract.DigitalOcean(t).Middleware(h)
	t.Cleanup(func() { rec.AssertClean(t) })
	return wrapped
}
