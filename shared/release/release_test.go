package release

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
)

func TestSignVerify(t *testing.T) {
	old, _ := GenerateKey()
	cur, _ := GenerateKey()
	other, _ := GenerateKey()
	bin := []byte("\x7fELF agent 1.4.0")
	s, err := Sign(cur, bytes.NewReader(bin), "1.4.0", "linux", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	if s.Size != int64(len(bin)) || len(s.SHA256) != 64 {
		t.Fatalf("sig %+v", s)
	}
	trusted := []ed25519.PublicKey{old.Public().(ed25519.PublicKey), cur.Public().(ed25519.PublicKey)}
	if err := Verify(trusted, s.Version, s.OS, s.Arch, s.SHA256, s.Signature); err != nil {
		t.Fatalf("a good signature is refused: %v", err)
	}
	for name, tc := range map[string][5]string{
		"relabelled version": {"1.5.0", "linux", "amd64", s.SHA256, s.Signature},
		"other arch":         {"1.4.0", "linux", "arm64", s.SHA256, s.Signature},
		"other binary":       {"1.4.0", "linux", "amd64", strings.Repeat("0", 64), s.Signature},
		"not base64":         {"1.4.0", "linux", "amd64", s.SHA256, "!!"},
	} {
		if err := Verify(trusted, tc[0], tc[1], tc[2], tc[3], tc[4]); !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s: %v, want ErrBadSignature", name, err)
		}
	}
	if err := Verify([]ed25519.PublicKey{other.Public().(ed25519.PublicKey)}, s.Version, s.OS, s.Arch, s.SHA256, s.Signature); !errors.Is(err, ErrBadSignature) {
		t.Errorf("untrusted key accepted: %v", err)
	}
}

func TestKeysRoundTrip(t *testing.T) {
	k, _ := GenerateKey()
	pemb, err := MarshalPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParsePrivateKey(pemb)
	if err != nil || !back.Equal(k) {
		t.Fatalf("private key round trip: %v", err)
	}
	k2, _ := GenerateKey()
	text := "# release keys\n" + EncodePublicKey(k.Public().(ed25519.PublicKey)) + "\n\n" + EncodePublicKey(k2.Public().(ed25519.PublicKey)) + "\n"
	keys, err := ParsePublicKeys([]byte(text))
	if err != nil || len(keys) != 2 || !keys[1].Equal(k2.Public()) {
		t.Fatalf("public keys: %v %v", keys, err)
	}
	if _, err := ParsePublicKeys([]byte("nope")); err == nil {
		t.Error("garbage public key accepted")
	}
	if _, err := ParsePrivateKey([]byte("nope")); err == nil {
		t.Error("garbage private key accepted")
	}
}

func TestCheckVersion(t *testing.T) {
	for _, v := range []string{"1.4.0", "1.4.0-rc.1+g1a2b", "dev_1"} {
		if CheckVersion(v) != nil {
			t.Errorf("%q refused", v)
		}
	}
	for _, v := range []string{"", "..", "1/2", "a b", strings.Repeat("1", 65)} {
		if CheckVersion(v) == nil {
			t.Errorf("%q accepted", v)
		}
	}
}

func FuzzParseSig(f *testing.F) {
	f.Add([]byte(`{"version":"1","os":"linux","arch":"amd64","sha256":"00","size":1,"signature":"AA=="}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSig(b)
		if err == nil && (s.Signature == "" || s.Version == "") {
			t.Fatalf("accepted %+v", s)
		}
		_, _ = ParsePublicKeys(b)
	})
}

func TestBuiltinPublicKeys(t *testing.T) {
	k, _ := GenerateKey()
	old := Builtin
	defer func() { Builtin = old }()
	Builtin = EncodePublicKey(k.Public().(ed25519.PublicKey)) + ",not-a-key,"
	got := BuiltinPublicKeys()
	if len(got) != 1 || !got[0].Equal(k.Public()) {
		t.Errorf("builtin keys = %v", got)
	}
}
