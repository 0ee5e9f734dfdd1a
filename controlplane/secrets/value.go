// Package secrets keeps secret values from leaking (a redacting Value type)
// and encrypts them at rest (a Keyring of AES-256-GCM master keys).
package secrets

import (
	"go.uber.org/zap/zapcore"
)

const redacted = "[REDACTED]"

// Value holds a secret such as a cloud API token. Every way of printing or
// serialising it (fmt verbs, %#v, JSON, text, zap) yields "[REDACTED]"; the
// only way to the plaintext is Reveal, which call sites use at the moment
// the secret is needed (an Authorization header, encryption).
type Value struct {
	s string
}

// New wraps a plaintext secret.
func New(s string) Value { return Value{s: s} }

// Reveal returns the plaintext. Keep the result out of logs and errors.
func (v Value) Reveal() string { return v.s }

// IsZero reports whether the secret is empty.
func (v Value) IsZero() bool { return v.s == "" }

// Hint is the last four characters, what the API shows instead of the secret.
// Secrets shorter than 12 characters give no hint at all.
func (v Value) Hint() string {
	if len(v.s) < 12 {
		return ""
	}
	return v.s[len(v.s)-4:]
}

// String implements fmt.Stringer (%v, %s, %q, %x).
func (Value) String() string { return redacted }

// GoString implements fmt.GoStringer (%#v).
func (Value) GoString() string { return redacted }

// MarshalJSON implements json.Marshaler.
func (Value) MarshalJSON() ([]byte, error) { return []byte(`"` + redacted + `"`), nil }

// MarshalText implements encoding.TextMarshaler (YAML, slog, url values).
func (Value) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// MarshalLogObject implements zapcore.ObjectMarshaler, for zap.Any and zap.Object.
func (Value) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("secret", redacted)
	return nil
}
