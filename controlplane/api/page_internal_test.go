package api

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/store"
)

// FuzzPageOf feeds ?limit= and ?cursor=, which any caller of a list
// sends, to pageOf: it never panics; it accepts only limits 1..MaxLimit
// written plainly; a refusal is a 400 validation_failed that echoes
// nothing sent; an accepted cursor encodes back to one that decodes to
// the same position, and so does every cursor a next link carries.
func FuzzPageOf(f *testing.F) {
	now := time.Date(2026, 12, 2, 3, 4, 5, 6, time.UTC)
	for _, s := range [][2]string{{"", ""}, {"1", ""}, {"1000", ""}, {"1001", ""}, {"0", ""}, {"-1", ""}, {"+5", ""},
		{"05", ""}, {"1e3", ""}, {"", "e30"}, {"", "bm9wZQ"}, {"", "!!"}, {"", encodeCursor(store.Cursor{At: now, ID: "srv_x"})},
		{"2", encodeCursor(store.Cursor{Key: "default"})}, {"", encodeCursor(store.Cursor{N: 42})}, {"", `{"t":"x"}`}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, limit, cursor string) {
		q := url.Values{}
		if limit != "" {
			q.Set("limit", limit)
		}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		r := httptest.NewRequest("GET", "/v1/workspaces/default/servers?"+q.Encode(), nil)
		p, err := pageOf(r)
		if err != nil {
			var pe *problem.Error
			if !errors.As(err, &pe) || pe.Status != http.StatusBadRequest || pe.Code != "validation_failed" ||
				(pe.Message != "invalid cursor" && pe.Message != "limit must be an integer from 1 to 1000") {
				t.Fatalf("pageOf(%q, %q) = %#v, want a plain validation_failed", limit, cursor, err)
			}
			return
		}
		if p.limit < 1 || p.limit > apitypes.MaxLimit || (limit == "" && p.limit != apitypes.DefaultLimit) {
			t.Fatalf("pageOf(%q) limit %d", limit, p.limit)
		}
		if p.after != nil {
			back, err := decodeCursor(encodeCursor(*p.after))
			if err != nil || !back.At.Equal(p.after.At) || back.ID != p.after.ID || back.Key != p.after.Key || back.N != p.after.N {
				t.Fatalf("cursor %q round trip: %+v (%v), want %+v", cursor, back, err, *p.after)
			}
			next, err := url.Parse(nextLink(r, *p.after))
			if err != nil {
				t.Fatal(err)
			}
			if c, err := decodeCursor(next.Query().Get("cursor")); err != nil || c.ID != p.after.ID || c.N != p.after.N {
				t.Fatalf("next link %q: %+v %v", next, c, err)
			}
		}
	})
}
