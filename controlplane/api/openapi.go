package api

import (
	_ "embed"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"gopkg.in/yaml.v3"
)

// openapiYAML is the admin API's OpenAPI 3.1 document, kept beside the
// handlers it describes; openapi_test.go holds the two together.
//
//go:embed openapi.yaml
var openapiYAML []byte

var openapiJSON = sync.OnceValues(func() ([]byte, error) {
	var doc any
	if err := yaml.Unmarshal(openapiYAML, &doc); err != nil {
		return nil, fmt.Errorf("openapi document: %w", err)
	}
	return json.Marshal(doc)
})

// OpenAPI returns the document as JSON (what GET /v1/openapi.json serves).
func OpenAPI() ([]byte, error) { return openapiJSON() }

// serveOpenAPI answers GET /v1/openapi.json; public, since it holds
// nothing but the API's shape.
func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	b, err := openapiJSON()
	if err != nil {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(b)
}
