package web

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// apiError is the API's error body, plus the HTTP status.
type apiError struct {
	Status  int
	Code    string `json:"code"`
	Message string `json:"message"`
	Hint    string `json:"hint"`
	// RetryAfter is the API's Retry-After header, if any.
	RetryAfter string `json:"-"`
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

// Title is what a page says of the refusal, in words: "Not found", not
// "Refused not_found".
func (e *apiError) Title() string {
	switch e.Status {
	case http.StatusBadRequest, http.StatusUnprocessableEntity, http.StatusUnsupportedMediaType:
		return "Not accepted"
	case http.StatusUnauthorized:
		return "Signed out"
	case http.StatusForbidden:
		return "Not allowed"
	case http.StatusNotFound:
		return "Not found"
	case http.StatusRequestTimeout:
		return "Timed out"
	case http.StatusConflict:
		return "Conflict"
	case http.StatusRequestEntityTooLarge:
		return "Too large"
	case http.StatusTooManyRequests:
		return "Too many attempts"
	case http.StatusServiceUnavailable:
		return "Unavailable"
	}
	if e.Status >= 500 {
		return "Error"
	}
	return "Refused"
}

// recorder is a minimal in-memory http.ResponseWriter.
type recorder struct {
	h      http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.h }
func (r *recorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
}
func (r *recorder) Write(p []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(p)
}

// apiRequest builds an in-process request to the API carrying token.
func apiRequest(ctx context.Context, orig *http.Request, token, method, path string, body io.Reader) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, method, path, body)
	if err != nil {
		return nil, fmt.Errorf("build api request: %w", err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if orig != nil {
		req.RemoteAddr = orig.RemoteAddr
		req.Host = orig.Host
		req.TLS = orig.TLS
	}
	return req, nil
}

// call sends method path (with in as the JSON body when non-nil) to the API
// with token and decodes a successful answer into out. A refusal comes back
// as *apiError with the API's code, message and hint.
func (c *Console) call(r *http.Request, token, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode api request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := apiRequest(r.Context(), r, token, method, path, body)
	if err != nil {
		return err
	}
	rec := &recorder{h: http.Header{}}
	c.o.API.ServeHTTP(rec, req)
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	if rec.status >= 400 {
		var eb struct {
			Error apiError `json:"error"`
		}
		if err := json.Unmarshal(rec.body.Bytes(), &eb); err != nil || eb.Error.Code == "" {
			eb.Error = apiError{Code: "internal", Message: strings.TrimSpace(http.StatusText(rec.status))}
		}
		eb.Error.Status = rec.status
		eb.Error.RetryAfter = rec.h.Get("Retry-After")
		return &eb.Error
	}
	if out != nil && rec.body.Len() > 0 {
		if err := json.Unmarshal(rec.body.Bytes(), out); err != nil {
			return fmt.Errorf("decode api answer for %s %s: %w", method, path, err)
		}
	}
	return nil
}

// maxListPages bounds how many pages listAll follows (100 000 items at
// the API's largest page): a broken next link cannot loop for ever.
const maxListPages = 100

// listAll GETs a list ({"<key>": [...], "next": "…"}) and follows next
// until it is empty, so the console shows every item however the API
// pages them.
func listAll[T any](c *Console, r *http.Request, s *session, path, key string) ([]T, error) {
	var all []T
	for n := 0; path != ""; n++ {
		if n == maxListPages {
			return all, fmt.Errorf("list %s: more than %d pages", key, maxListPages)
		}
		var page map[string]json.RawMessage
		if err := c.call(r, s.token.Reveal(), http.MethodGet, path, nil, &page); err != nil {
			return nil, err
		}
		var items []T
		if raw, ok := page[key]; ok {
			if err := json.Unmarshal(raw, &items); err != nil {
				return nil, fmt.Errorf("decode %s: %w", key, err)
			}
		}
		all = append(all, items...)
		next := ""
		if raw, ok := page["next"]; ok {
			_ = json.Unmarshal(raw, &next) // absent or null: the last page
		}
		if next == path || !strings.HasPrefix(next, "/v1/") {
			next = ""
		}
		path = next
	}
	return all, nil
}

// listServers is every server of the request's workspace.
func (c *Console) listServers(r *http.Request, s *session) ([]server, error) {
	return listAll[server](c, r, s, wsBase(r)+"/servers", "servers")
}
