package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/store"
)

// page is a list request's pagination: at most limit items after the
// cursor (nil: from the start).
type page struct {
	limit int
	after *store.Cursor
}

var limitHint = "Use limit=1.." + strconv.Itoa(apitypes.MaxLimit) + " (default " + strconv.Itoa(apitypes.DefaultLimit) + ")."

// pageOf reads ?limit= and ?cursor=.
func pageOf(r *http.Request) (page, error) {
	q := r.URL.Query()
	p := page{limit: apitypes.DefaultLimit}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > apitypes.MaxLimit || strconv.Itoa(n) != v {
			return p, problem.Validation(limitHint, "limit must be an integer from 1 to %d", apitypes.MaxLimit)
		}
		p.limit = n
	}
	if v := q.Get("cursor"); v != "" {
		c, err := decodeCursor(v)
		if err != nil {
			return p, problem.Validation("Pass back the cursor of a list's next link unchanged, or leave it out to start over.",
				"invalid cursor")
		}
		p.after = &c
	}
	return p, nil
}

func encodeCursor(c store.Cursor) string {
	b, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeCursor(s string) (store.Cursor, error) {
	var c store.Cursor
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) > 512 {
		return c, problem.Validation("", "invalid cursor")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, err
	}
	if c == (store.Cursor{}) {
		return c, problem.Validation("", "invalid cursor")
	}
	return c, nil
}

// nextLink is the path and query that GETs the page after the one whose
// last item has cursor c: the request's own query (filters, limit) with
// the cursor replaced.
func nextLink(r *http.Request, c store.Cursor) string {
	q := r.URL.Query()
	q.Set("cursor", encodeCursor(c))
	return r.URL.Path + "?" + q.Encode()
}

// trim cuts a fetch of limit+1 items to limit and says whether there was
// more.
func trim[T any](items []T, limit int) ([]T, bool) {
	if len(items) > limit {
		return items[:limit], true
	}
	return items, false
}
