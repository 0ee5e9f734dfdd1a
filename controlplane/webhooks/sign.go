package webhooks

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"strings"
	"time"

	"github.com/devpilot/devpilot/controlplane/secrets"
)

// The Standard Webhooks headers (https://www.standardwebhooks.com): a
// receiver verifies a delivery with any of that specification's libraries.
const (
	HeaderID        = "webhook-id"        // the message id: the event id, the same on every retry
	HeaderTimestamp = "webhook-timestamp" // unix seconds of this attempt
	HeaderSignature = "webhook-signature" // "v1," + base64 HMAC-SHA256(key, id + "." + timestamp + "." + body)
)

const secretPrefix = "whsec_"

// Key lengths the specification allows for a symmetric secret.
const (
	minKey = 24
	maxKey = 64
)

// NewSecret generates a signing secret: "whsec_" and the base64 of 32
// random bytes.
func NewSecret() secrets.Value {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand since Go 1.24)
	return secrets.New(secretPrefix + base64.StdEncoding.EncodeToString(b))
}

// ParseSecret checks a secret the user gave: "whsec_" followed by the
// standard base64 of 24 to 64 bytes. It returns the key bytes.
func ParseSecret(s secrets.Value) ([]byte, error) {
	v := s.Reveal()
	enc, ok := strings.CutPrefix(v, secretPrefix)
	if !ok {
		return nil, invalid("Leave secret out to have one generated, or give whsec_ followed by the base64 of 24 to 64 random bytes, e.g. from: echo whsec_$(head -c 32 /dev/urandom | base64)",
			"secret must start with %q", secretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(enc)
	if err != nil || len(key) < minKey || len(key) > maxKey {
		return nil, invalid("Generate one with: echo whsec_$(head -c 32 /dev/urandom | base64)",
			"secret must be whsec_ followed by the standard base64 of %d to %d bytes", minKey, maxKey)
	}
	return key, nil
}

// Sign returns the webhook-signature header value for one attempt.
func Sign(key []byte, msgID string, ts time.Time, body []byte) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msgID))
	m.Write([]byte{'.'})
	m.Write([]byte(strconv.FormatInt(ts.Unix(), 10)))
	m.Write([]byte{'.'})
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}
