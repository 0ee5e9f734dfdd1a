package store

import "testing"

func TestRebindNumbersPlaceholdersOutsideQuotes(t *testing.T) {
	for in, want := range map[string]string{
		`SELECT 1`:                           `SELECT 1`,
		`a = ? AND b = ?`:                    `a = $1 AND b = $2`,
		`x = '?' AND y = ? AND z = 'it''s?'`: `x = '?' AND y = $1 AND z = 'it''s?'`,
		`(? = 0 OR id < ?) LIMIT ?`:          `($1 = 0 OR id < $2) LIMIT $3`,
	} {
		if got := rebind(in); got != want {
			t.Errorf("rebind(%q) = %q, want %q", in, got, want)
		}
	}
}
