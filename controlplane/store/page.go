package store

import (
	"strings"
	"time"
)

// Cursor is where a keyset-paginated list continues: after the row whose
// sort key it holds. Each list names which fields it uses (At and ID for
// lists ordered by creation time, Key for workspaces by slug, N for the
// audit log's numeric id). The API encodes it opaquely.
type Cursor struct {
	At  time.Time `json:"t,omitzero"`
	ID  string    `json:"i,omitempty"`
	Key string    `json:"k,omitempty"`
	N   int64     `json:"n,omitempty"`
}

// keyset adds to where (and args) the condition that rows sort after c in
// the order ORDER BY atCol, idCol (desc: both descending).
func keyset(where []string, args []any, c *Cursor, atCol, idCol string, desc bool) ([]string, []any) {
	if c == nil {
		return where, args
	}
	op := ">"
	if desc {
		op = "<"
	}
	at := c.At.UTC()
	return append(where, "("+atCol+" "+op+" ? OR ("+atCol+" = ? AND "+idCol+" "+op+" ?))"), append(args, at, at, c.ID)
}

func and(where []string) string { return strings.Join(where, " AND ") }

// lim is a LIMIT argument: n, or for n < 0 no limit in practice
// (PostgreSQL refuses a negative LIMIT).
func lim(n int) int {
	if n < 0 {
		return 1<<31 - 1
	}
	return n
}
