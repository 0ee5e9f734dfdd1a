package agentrelease

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/devpilot/devpilot/shared/release"
)

// signed writes a binary and its .sig into dir, as devpilot agents sign does.
func signed(t *testing.T, dir string, key ed25519.PrivateKey, body, version, arch string) string {
	t.Helper()
	p := filepath.Join(dir, "devpilot-agent-"+version+"-"+arch)
	if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := release.Sign(key, bytes.NewReader([]byte(body)), version, "linux", arch)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(s)
	if err := os.WriteFile(p+".sig", b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestAddListGet(t *testing.T) {
	key, _ := release.GenerateKey()
	in := t.TempDir()
	s := New(filepath.Join(t.TempDir(), DirName), []ed25519.PublicKey{key.Public().(ed25519.PublicKey)})
	for _, v := range []string{"1.9.0", "1.10.0", "1.10.0-rc.1"} {
		if _, err := s.Add(signed(t, in, key, "agent "+v, v, "amd64"), v); err != nil {
			t.Fatalf("add %s: %v", v, err)
		}
	}
	if _, err := s.Add(signed(t, in, key, "agent arm", "1.9.0", "arm64"), "1.9.0"); err != nil {
		t.Fatal(err)
	}
	rs, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rs {
		got = append(got, r.Version+"/"+r.Arch)
	}
	if want := "1.10.0/amd64 1.10.0-rc.1/amd64 1.9.0/amd64 1.9.0/arm64"; strings.Join(got, " ") != want {
		t.Errorf("list = %v, want %s", got, want)
	}
	r, err := s.Get("1.9.0", "linux", "arm64")
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(r.Path); string(b) != "agent arm" || r.Size != 9 {
		t.Errorf("release %+v holds %q", r, b)
	}
	if _, err := s.Get("2.0.0", "linux", "amd64"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing version: %v", err)
	}
	if _, err := s.Get("../1.9.0", "linux", "amd64"); !errors.Is(err, ErrNotFound) {
		t.Errorf("path in version: %v", err)
	}
}

func TestAddRefuses(t *testing.T) {
	key, _ := release.GenerateKey()
	other, _ := release.GenerateKey()
	in := t.TempDir()
	s := New(filepath.Join(t.TempDir(), DirName), []ed25519.PublicKey{key.Public().(ed25519.PublicKey)})

	if _, err := s.Add(signed(t, in, other, "agent", "1.0.0", "amd64"), "1.0.0"); !errors.Is(err, release.ErrBadSignature) {
		t.Errorf("untrusted key: %v", err)
	}
	p := signed(t, in, key, "agent 1.0.0", "1.0.0", "amd64")
	if _, err := s.Add(p, "1.1.0"); err == nil || !strings.Contains(err.Error(), "signs version 1.0.0") {
		t.Errorf("relabelled version: %v", err)
	}
	if err := os.WriteFile(p, []byte("agent 1.0.1"), 0o755); err != nil { // same size, other bytes
		t.Fatal(err)
	}
	if _, err := s.Add(p, "1.0.0"); err == nil || !strings.Contains(err.Error(), "not the binary") {
		t.Errorf("tampered binary: %v", err)
	}
	if _, err := New(t.TempDir(), nil).Add(p, ""); err == nil || !strings.Contains(err.Error(), "--agent-release-key") {
		t.Errorf("no keys: %v", err)
	}
	if rs, _ := s.List(); len(rs) != 0 {
		t.Errorf("refused releases listed: %+v", rs)
	}
}

// A release dropped into the directory by hand with a forged .sig, or one
// signed by a key the control plane no longer trusts, is not served.
func TestListSkipsUnverified(t *testing.T) {
	key, _ := release.GenerateKey()
	retired, _ := release.GenerateKey()
	in := t.TempDir()
	dir := filepath.Join(t.TempDir(), DirName)
	both := New(dir, []ed25519.PublicKey{key.Public().(ed25519.PublicKey), retired.Public().(ed25519.PublicKey)})
	if _, err := both.Add(signed(t, in, retired, "old", "1.0.0", "amd64"), ""); err != nil {
		t.Fatal(err)
	}
	if _, err := both.Add(signed(t, in, key, "new", "1.1.0", "amd64"), ""); err != nil {
		t.Fatal(err)
	}
	extra := t.TempDir()
	if _, err := New(extra, []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}).Add(signed(t, in, key, "extra", "0.9.0", "amd64"), ""); err != nil {
		t.Fatal(err)
	}
	rs, err := New(dir, []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}, extra).List()
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 || rs[0].Version != "1.1.0" || rs[1].Version != "0.9.0" {
		t.Errorf("after retiring a key: %+v", rs)
	}
}

func TestCompareVersions(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"1.10.0", "1.9.2", 1}, {"1.0.0", "1.0.0", 0}, {"1.0.0-rc.1", "1.0.0", -1}, {"1.0", "1.0.0", 0}, {"0.2.0", "0.10.0", -1},
	} {
		if got := CompareVersions(c.a, c.b); got != c.want {
			t.Errorf("CompareVersions(%s, %s) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
}
