package webhooks

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/secrets"
)

// verify is an independent Standard Webhooks verifier, written from the
// specification (https://www.standardwebhooks.com, "Verifying webhook
// authenticity"), as a receiver would: base64-decode the key after
// "whsec_", HMAC-SHA256 over "id.timestamp.body", compare against each
// space-separated "v1,<base64>" entry of webhook-signature in constant
// time, and refuse timestamps more than 5 minutes off.
func verify(secret string, h http.Header, body []byte, now time.Time) bool {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		return false
	}
	id, ts, sigs := h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Get("webhook-signature")
	sec, err := strconv.ParseInt(ts, 10, 64)
	if id == "" || err != nil || sigs == "" {
		return false
	}
	if d := now.Sub(time.Unix(sec, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return false
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	want := mac.Sum(nil)
	for _, s := range strings.Fields(sigs) {
		v, enc, ok := strings.Cut(s, ",")
		if !ok || v != "v1" {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(enc)
		if err == nil && hmac.Equal(got, want) {
			return true
		}
	}
	return false
}

// The specification's own test vector (the reference libraries' TestSign).
func TestSignMatchesTheSpecificationVector(t *testing.T) {
	key, err := ParseSecret(secrets.New("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"))
	if err != nil {
		t.Fatal(err)
	}
	got := Sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", time.Unix(1614265330, 0), []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("signature %s, want %s", got, want)
	}
}

func TestGeneratedSecretsSignVerifiably(t *testing.T) {
	s := NewSecret()
	if !strings.HasPrefix(s.Reveal(), "whsec_") || s.Reveal() == NewSecret().Reveal() {
		t.Fatalf("secret %q", s.Reveal())
	}
	key, err := ParseSecret(s)
	if err != nil || len(key) != 32 {
		t.Fatalf("parse generated: %d %v", len(key), err)
	}
	now := time.Now()
	body := []byte(`{"id":1}`)
	h := http.Header{}
	h.Set(HeaderID, "1")
	h.Set(HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
	h.Set(HeaderSignature, Sign(key, "1", now, body))
	if !verify(s.Reveal(), h, body, now) {
		t.Error("a fresh signature does not verify")
	}
	if verify(s.Reveal(), h, []byte(`{"id":2}`), now) {
		t.Error("a changed body verifies")
	}
	if verify(s.Reveal(), h, body, now.Add(6*time.Minute)) {
		t.Error("a stale timestamp verifies")
	}
}

func TestParseSecretRefusesMalformed(t *testing.T) {
	for _, s := range []string{"", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "whsec_!!!!", "whsec_c2hvcnQ=",
		"whsec_" + base64.StdEncoding.EncodeToString(make([]byte, 65))} {
		if _, err := ParseSecret(secrets.New(s)); err == nil {
			t.Errorf("%q accepted", s)
		} else if s != "" && len(s) > 8 && strings.Contains(err.Error(), s[6:]) {
			t.Errorf("error repeats the secret: %v", err)
		}
	}
}

func FuzzParseSecret(f *testing.F) {
	for _, s := range []string{"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_", "", "whsec_===="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		key, err := ParseSecret(secrets.New(s))
		if err == nil && (len(key) < minKey || len(key) > maxKey) {
			t.Fatalf("accepted a %d-byte key", len(key))
		}
	})
}
