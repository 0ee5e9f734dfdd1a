package vultr_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/devpilot/devpilot/controlplane/cloud/contract"
)

func TestScratchViolation(t *testing.T) {
	h, rec := contract.Vultr(t).Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"account":{"acls":"all"}}`))
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	http.Get(srv.URL + "/v2/account")
	t.Log(rec.Violations(), rec.Operations())
}
