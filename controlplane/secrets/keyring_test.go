package secrets

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

func newKeyring(t *testing.T) (*Keyring, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data", KeyringFileName)
	k, err := LoadOrCreateKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	return k, path
}

// keyMaterial returns the base64 keys stored in the keyring file.
func keyMaterial(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var kf keyringFile
	if err := json.Unmarshal(b, &kf); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range kf.Keys {
		out = append(out, e.Key)
	}
	return out
}

func assertNoKeyMaterial(t *testing.T, path, what, out string) {
	t.Helper()
	for _, m := range keyMaterial(t, path) {
		raw, _ := base64.StdEncoding.DecodeString(m)
		if strings.Contains(out, m) || strings.Contains(out, m[:12]) || strings.Contains(out, string(raw)) ||
			strings.Contains(out, fmt.Sprintf("%x", raw[:8])) {
			t.Errorf("%s leaks key material: %s", what, out)
		}
	}
}

var ciphertextRE = regexp.MustCompile(`^v1\.[0-9a-f]{16}\.[A-Za-z0-9_-]+$`)

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	k, _ := newKeyring(t)
	sshKey := "-----BEGIN OPENSSH PRIVATE KEY-----\n" + strings.Repeat("b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n", 60) + "-----END OPENSSH PRIVATE KEY-----\n"
	for name, pt := range map[string]string{
		"token":   "dop_v1_" + canary,
		"empty":   "",
		"unicode": "pässwörd-🔑-" + canary,
		"ssh key": sshKey,
		"binary":  "\x00\xff\x01" + canary,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ct, err := k.Encrypt(New(pt), "int_123")
			if err != nil {
				t.Fatal(err)
			}
			if !ciphertextRE.MatchString(ct) {
				t.Fatalf("ciphertext not in v1.<keyid>.<base64url> form: %q", ct)
			}
			if pt != "" && strings.Contains(ct, canary) {
				t.Fatal("ciphertext contains the plaintext")
			}
			if id, err := KeyIDOf(ct); err != nil || id != k.ActiveID() {
				t.Fatalf("KeyIDOf = %q, %v; want %q", id, err, k.ActiveID())
			}
			got, err := k.Decrypt(ct, "int_123")
			if err != nil {
				t.Fatal(err)
			}
			if got.Reveal() != pt {
				t.Fatalf("round trip changed the secret")
			}
			again, _ := k.Encrypt(New(pt), "int_123")
			if again == ct {
				t.Fatal("two encryptions of the same secret are identical (nonce reuse?)")
			}
		})
	}
}

func TestDecryptFailures(t *testing.T) {
	t.Parallel()
	k, path := newKeyring(t)
	ct, err := k.Encrypt(New(canary), "int_1")
	if err != nil {
		t.Fatal(err)
	}
	keyID, _ := KeyIDOf(ct)
	prefix := "v1." + keyID + "."
	payload := strings.TrimPrefix(ct, prefix)
	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}

	otherID, err := k.Rotate()
	if err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name     string
		ct       string
		recordID string
		want     error
	}{
		{"wrong record id", ct, "int_2", ErrDecrypt},
		{"record id prefix", ct, "int_", ErrDecrypt},
		{"empty record id", ct, "", ErrEmptyRecordID},
		{"flipped nonce", prefix + flip(payload, 0), "int_1", ErrDecrypt},
		{"flipped body", prefix + flip(payload, 20), "int_1", ErrDecrypt},
		{"flipped tag", prefix + flip(payload, len(payload)-2), "int_1", ErrDecrypt},
		{"truncated by one byte", prefix + base64.RawURLEncoding.EncodeToString(mustB64(t, payload)[:len(mustB64(t, payload))-1]), "int_1", ErrDecrypt},
		{"relabelled to other key", "v1." + otherID + "." + payload, "int_1", ErrDecrypt},
		{"unknown key id", "v1.0123456789abcdef." + payload, "int_1", ErrUnknownKey},
		{"other version", "v2." + keyID + "." + payload, "int_1", ErrMalformed},
		{"no dots", "garbage", "int_1", ErrMalformed},
		{"plaintext stored by mistake", canary, "int_1", ErrMalformed},
		{"bad base64", prefix + "!!!!" + payload, "int_1", ErrMalformed},
		{"too short", prefix + "AAAA", "int_1", ErrMalformed},
		{"empty", "", "int_1", ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			v, err := k.Decrypt(c.ct, c.recordID)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v; want %v", err, c.want)
			}
			if !v.IsZero() {
				t.Fatal("failed Decrypt returned a value")
			}
			assertNoCanary(t, "error", err.Error())
			assertNoKeyMaterial(t, path, "error", err.Error())
		})
	}
	if _, err := k.Encrypt(New(canary), ""); !errors.Is(err, ErrEmptyRecordID) {
		t.Fatalf("Encrypt with empty record id: %v", err)
	}
}

func mustB64(t *testing.T, s string) []byte {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRotateRetireAndReload(t *testing.T) {
	t.Parallel()
	k, path := newKeyring(t)
	oldID := k.ActiveID()
	oldCT, err := k.Encrypt(New(canary), "ssh_1")
	if err != nil {
		t.Fatal(err)
	}
	if k.NeedsReencrypt(oldCT) {
		t.Fatal("fresh ciphertext needs re-encryption")
	}

	newID, err := k.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if newID == oldID || k.ActiveID() != newID {
		t.Fatalf("Rotate: new %q old %q active %q", newID, oldID, k.ActiveID())
	}
	if got, err := k.Decrypt(oldCT, "ssh_1"); err != nil || got.Reveal() != canary {
		t.Fatalf("old ciphertext after rotate: %v", err)
	}
	newCT, _ := k.Encrypt(New(canary), "ssh_1")
	if id, _ := KeyIDOf(newCT); id != newID {
		t.Fatalf("new ciphertext under %q, want %q", id, newID)
	}
	if !k.NeedsReencrypt(oldCT) || k.NeedsReencrypt(newCT) || !k.NeedsReencrypt("garbage") {
		t.Fatal("NeedsReencrypt wrong")
	}
	re, err := k.Reencrypt(oldCT, "ssh_1")
	if err != nil || k.NeedsReencrypt(re) {
		t.Fatalf("Reencrypt: %v", err)
	}
	if same, err := k.Reencrypt(newCT, "ssh_1"); err != nil || same != newCT {
		t.Fatalf("Reencrypt of current ciphertext changed it: %v", err)
	}
	if _, err := k.Reencrypt(oldCT, "ssh_2"); !errors.Is(err, ErrDecrypt) {
		t.Fatalf("Reencrypt with wrong record: %v", err)
	}

	// Reload from disk: both keys there, new one active.
	k2, err := LoadKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	if k2.ActiveID() != newID || len(k2.Keys()) != 2 {
		t.Fatalf("reloaded: active %q keys %v", k2.ActiveID(), k2.Keys())
	}
	for _, ct := range []string{oldCT, newCT, re} {
		if got, err := k2.Decrypt(ct, "ssh_1"); err != nil || got.Reveal() != canary {
			t.Fatalf("reloaded keyring cannot decrypt: %v", err)
		}
	}
	ks := k2.Keys()
	if ks[0].ID != oldID || ks[0].Active || ks[1].ID != newID || !ks[1].Active {
		t.Fatalf("Keys() = %+v", ks)
	}

	// Retire.
	if err := k.Retire(newID); !errors.Is(err, ErrActiveKey) {
		t.Fatalf("Retire(active) = %v", err)
	}
	if err := k.Retire("nope"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("Retire(unknown) = %v", err)
	}
	if err := k.Retire(oldID); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Decrypt(oldCT, "ssh_1"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("decrypt under retired key: %v", err)
	}
	if _, err := k.Decrypt(re, "ssh_1"); err != nil {
		t.Fatalf("re-encrypted ciphertext after retire: %v", err)
	}
	k3, err := LoadKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(k3.Keys()) != 1 || k3.ActiveID() != newID {
		t.Fatalf("retire not persisted: %+v", k3.Keys())
	}
	if _, err := k3.Decrypt(oldCT, "ssh_1"); !errors.Is(err, ErrUnknownKey) {
		t.Fatalf("retired key came back from disk: %v", err)
	}

	// No temp files left behind, file still 0600.
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("data dir holds %d entries, want only the keyring", len(entries))
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Fatalf("keyring mode after rotate = %04o", st.Mode().Perm())
	}
}

func TestKeyringFilePermissions(t *testing.T) {
	t.Parallel()
	k, path := newKeyring(t)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("keyring created with mode %04o, want 0600", st.Mode().Perm())
	}
	dst, _ := os.Stat(filepath.Dir(path))
	if dst.Mode().Perm() != 0o700 {
		t.Fatalf("data dir created with mode %04o, want 0700", dst.Mode().Perm())
	}

	// Loading again gives the same keyring.
	again, err := LoadOrCreateKeyring(path)
	if err != nil || again.ActiveID() != k.ActiveID() {
		t.Fatalf("LoadOrCreate of existing keyring: %v", err)
	}

	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660, 0o606} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		for name, load := range map[string]func(string) (*Keyring, error){"Load": LoadKeyring, "LoadOrCreate": LoadOrCreateKeyring} {
			_, err := load(path)
			if !errors.Is(err, ErrKeyringPerms) {
				t.Fatalf("%s with mode %04o: err = %v, want ErrKeyringPerms", name, mode, err)
			}
			if !strings.Contains(err.Error(), "chmod 600 "+path) {
				t.Fatalf("error does not say how to fix it: %v", err)
			}
			assertNoKeyMaterial(t, path, "perm error", err.Error())
		}
	}
	if err := os.Chmod(path, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKeyring(path); err != nil {
		t.Fatalf("0400 keyring refused: %v", err)
	}

	if _, err := LoadKeyring(filepath.Join(t.TempDir(), "missing.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing keyring: %v", err)
	}
}

func TestInvalidKeyringFiles(t *testing.T) {
	t.Parallel()
	key := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	cases := map[string]string{
		"not json":      `{"version":1,`,
		"version 2":     `{"version":2,"active":"a","keys":[{"id":"a","key":"` + key + `"}]}`,
		"no keys":       `{"version":1,"active":"a","keys":[]}`,
		"active absent": `{"version":1,"active":"b","keys":[{"id":"a","key":"` + key + `"}]}`,
		"short key":     `{"version":1,"active":"a","keys":[{"id":"a","key":"` + key[:20] + `"}]}`,
		"duplicate id":  `{"version":1,"active":"a","keys":[{"id":"a","key":"` + key + `"},{"id":"a","key":"` + key + `"}]}`,
		"dot in id":     `{"version":1,"active":"a.b","keys":[{"id":"a.b","key":"` + key + `"}]}`,
		"unknown field": `{"version":1,"active":"a","keys":[{"id":"a","key":"` + key + `"}],"extra":1}`,
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), KeyringFileName)
			if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadKeyring(path)
			if !errors.Is(err, ErrKeyringInvalid) {
				t.Fatalf("err = %v, want ErrKeyringInvalid", err)
			}
			if strings.Contains(err.Error(), key[:12]) {
				t.Fatalf("error leaks key material: %v", err)
			}
		})
	}
	// And a hand-written valid one loads and works.
	path := filepath.Join(t.TempDir(), KeyringFileName)
	if err := os.WriteFile(path, []byte(`{"version":1,"active":"k1","keys":[{"id":"k1","key":"`+key+`","created_at":"2025-01-01T00:00:00Z"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := LoadKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	ct, _ := k.Encrypt(New(canary), "r")
	if !strings.HasPrefix(ct, "v1.k1.") {
		t.Fatalf("ciphertext %q not under k1", ct)
	}
}

func TestKeyringPrintsNoKeyMaterial(t *testing.T) {
	t.Parallel()
	k, path := newKeyring(t)
	if _, err := k.Rotate(); err != nil {
		t.Fatal(err)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%d"} {
		out := fmt.Sprintf(verb, k)
		assertNoKeyMaterial(t, path, verb, out)
		if !strings.Contains(out, k.ActiveID()) {
			t.Errorf("%s: %s does not describe the keyring", verb, out)
		}
	}
	b, _ := json.Marshal(k) //nolint:staticcheck // SA9005 is the point: nothing of the keyring reaches JSON
	assertNoKeyMaterial(t, path, "json", string(b))
}

func TestRotateFailureChangesNothing(t *testing.T) {
	t.Parallel()
	k, path := newKeyring(t)
	before := k.ActiveID()
	if err := os.RemoveAll(filepath.Dir(path)); err != nil {
		t.Fatal(err)
	}
	if _, err := k.Rotate(); err == nil {
		t.Fatal("Rotate succeeded without a place to save the keyring")
	}
	if k.ActiveID() != before || len(k.Keys()) != 1 {
		t.Fatal("failed Rotate changed the keyring in memory")
	}
}

func TestConcurrentCreate(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), KeyringFileName)
	const n = 8
	ids := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			k, err := LoadOrCreateKeyring(path)
			errs[i] = err
			if err == nil {
				ids[i] = k.ActiveID()
			}
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if ids[i] != ids[0] {
			t.Fatalf("racing creators got different keyrings: %v", ids)
		}
	}
}

// TestConcurrentUseDuringRotate runs Encrypt/Decrypt from several goroutines
// while the key is rotated; run with -race.
func TestConcurrentUseDuringRotate(t *testing.T) {
	t.Parallel()
	k, path := newKeyring(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errc := make(chan error, 16)
	for w := range 4 {
		wg.Go(func() {
			rec := fmt.Sprintf("rec_%d", w)
			var old []string
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				ct, err := k.Encrypt(New(canary), rec)
				if err != nil {
					errc <- err
					return
				}
				old = append(old, ct)
				for _, c := range []string{ct, old[i/2]} {
					v, err := k.Decrypt(c, rec)
					if err != nil || v.Reveal() != canary {
						errc <- fmt.Errorf("decrypt during rotation: %w", err)
						return
					}
				}
				_ = k.NeedsReencrypt(ct)
				_ = k.Keys()
			}
		})
	}
	var rotated []string
	for range 20 {
		id, err := k.Rotate()
		if err != nil {
			t.Fatal(err)
		}
		rotated = append(rotated, id)
	}
	close(stop)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	k2, err := LoadKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	if k2.ActiveID() != rotated[len(rotated)-1] || len(k2.Keys()) != 21 {
		t.Fatalf("after 20 rotations: active %q, %d keys", k2.ActiveID(), len(k2.Keys()))
	}
}
