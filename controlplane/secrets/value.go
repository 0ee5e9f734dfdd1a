// Package secrets keeps secret values from leaking (a redacting Value type)
// and encrypts them at rest (a Keyring of AES-256-GCM master keys).
package secrets

import (
	"crypto/subtle"
	"fmt"
	"log/slog"

	"go.uber.org/zap/zapcore"
)

const redacted = "[REDACTED]"

// Value holds a secret such as a cloud API token. Every way of printing or
// serialising it (fmt verbs, %#v, JSON, text, zap) yields "[REDACTED]"; the
// only way to the plaintext is Reveal, which call sites use at the moment
// the secret is needed (an Authorization header, encryption).
//
// The plaintext sits behind a pointer so that even when a Value is an
// unexported field of another struct (where fmt cannot call its methods and
// walks the fields by reflection) only an address is printed. As a
// consequence, compare Values with Equal, not ==.
type Value struct {
	p *string
}

// New wraps a plaintext secret.
func New(s string) Value {
	if s == "" {
		return Value{}
	}
	return Value{p: &s}
}

// Reveal returns the plaintext. Keep the result out of logs and errors.
func (v Value) Reveal() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

// IsZero reports whether the secret is empty.
func (v Value) IsZero() bool { return v.Reveal() == "" }

// Equal reports whether two secrets hold the same plaintext, in time that
// does not depend on where they differ.
func (v Value) Equal(o Value) bool {
	return subtle.ConstantTimeCompare([]byte(v.Reveal()), []byte(o.Reveal())) == 1
}

// Hint is the last four characters, what the API shows instead of the secret.
// Secrets shorter than 12 characters give no hint at all.
func (v Value) Hint() string {
	s := v.Reveal()
	if len(s) < 12 {
		return ""
	}
	return s[len(s)-4:]
}

// String implements fmt.Stringer (%v, %s, %q, %x).
func (Value) String() string { return redacted }

// GoString implements fmt.GoStringer (%#v).
func (Value) GoString() string { return redacted }

// Format implements fmt.Formatter so that every verb, including those fmt
// would not route through String (%d, %t, %p ...), prints "[REDACTED]".
func (Value) Format(f fmt.State, verb rune) {
	if verb == 'q' {
		fmt.Fprintf(f, "%q", redacted)
		return
	}
	_, _ = f.Write([]byte(redacted))
}

// MarshalJSON implements json.Marshaler.
func (Value) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText implements encoding.TextMarshaler (YAML, slog, url values).
func (Value) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// LogValue implements slog.LogValuer.
func (Value) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalLogObject implements zapcore.ObjectMarshaler, for zap.Any and zap.Object.
func (Value) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("secret", redacted)
	return nil
}
