// Package ids makes the random identifiers of stored records.
package ids

import (
	"crypto/rand"
	"encoding/base32"
	"strings"
)

var enc = base32.StdEncoding.WithPadding(base32.NoPadding)

// Random returns n random bytes as lowercase base32.
func Random(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // crypto/rand.Read never fails (Go ≥ 1.24)
	return strings.ToLower(enc.EncodeToString(b))
}

// New returns prefix + "_" + 80 random bits, e.g. "int_mfrggzdfmztwq2lk".
func New(prefix string) string { return prefix + "_" + Random(10) }
