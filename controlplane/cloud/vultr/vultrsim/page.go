package vultrsim

import (
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
)

// Cursor pagination as the spec describes it: ?per_page= (default 100, at
// most 500) and ?cursor=; meta.links.next/prev are opaque cursors, "" when
// there is no such page. The simulator's cursors are base64 of
// "next__<offset>" / "prev__<offset>", like the real ones look.

const (
	defaultPerPage = 100
	maxPerPage     = 500
)

type pageMeta struct {
	Total int       `json:"total"`
	Links pageLinks `json:"links"`
}

type pageLinks struct {
	Next string `json:"next"`
	Prev string `json:"prev"`
}

func encodeCursor(kind string, offset int) string {
	return base64.RawStdEncoding.EncodeToString([]byte(kind + "__" + strconv.Itoa(offset)))
}

func decodeCursor(c string) (int, bool) {
	b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(c, "="))
	if err != nil {
		return 0, false
	}
	kind, n, ok := strings.Cut(string(b), "__")
	if !ok || (kind != "next" && kind != "prev") {
		return 0, false
	}
	off, err := strconv.Atoi(n)
	return off, err == nil && off >= 0
}

// writePage answers a list request with one page of items under key.
func writePage[T any](w http.ResponseWriter, r *http.Request, key string, items []T) {
	q := r.URL.Query()
	per := defaultPerPage
	if v := q.Get("per_page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, "Invalid per_page value.") // UNVERIFIED text
			return
		}
		per = min(n, maxPerPage)
	}
	off := 0
	if c := q.Get("cursor"); c != "" {
		var ok bool
		if off, ok = decodeCursor(c); !ok {
			writeError(w, http.StatusBadRequest, "Invalid cursor.") // UNVERIFIED text
			return
		}
	}
	off = min(off, len(items))
	end := min(off+per, len(items))
	page := items[off:end]
	if page == nil {
		page = []T{}
	}
	meta := pageMeta{Total: len(items)}
	if end < len(items) {
		meta.Links.Next = encodeCursor("next", end)
	}
	if off > 0 {
		meta.Links.Prev = encodeCursor("prev", max(off-per, 0))
	}
	writeJSON(w, http.StatusOK, map[string]any{key: page, "meta": meta})
}
