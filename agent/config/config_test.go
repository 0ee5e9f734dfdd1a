package config_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/devpilot/devpilot/agent/config"
	"github.com/devpilot/devpilot/agent/identity"
)

func TestConnectURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"https://cp.example.com:8443", "wss://cp.example.com:8443/v1/agent/connect"},
		{"https://cp.example.com/", "wss://cp.example.com/v1/agent/connect"},
		{"https://cp.example.com/devpilot?x=1", "wss://cp.example.com/devpilot/v1/agent/connect"},
		{"wss://10.0.0.1:9000", "wss://10.0.0.1:9000/v1/agent/connect"},
		{"http://cp.example.com", ""},
		{"cp.example.com", ""},
		{"https://", ""},
	} {
		u, err := config.ConnectURL(tc.in)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("%q: accepted as %s, want refusal", tc.in, u)
		case tc.want != "" && (err != nil || u.String() != tc.want):
			t.Errorf("%q: got %v, %v; want %s", tc.in, u, err, tc.want)
		}
	}
}

func TestSaveIsPrivateAndAtomic(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "config.json")
	c := config.Config{URL: "https://cp", ServerID: "s", BootstrapToken: "tok"}
	if err := config.Save(path, c); err != nil {
		t.Fatal(err)
	}
	c.BootstrapToken = ""
	if err := config.Save(path, c); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %04o, want 0600", fi.Mode().Perm())
	}
	b, _ := os.ReadFile(path)
	if string(b) != string(c.Marshal()) {
		t.Errorf("content %s", b)
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Errorf("temp files left behind: %v", ents)
	}
}

func TestIdentityCreatedOnceNeverOverwritten(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "identity.key")
	k1, created, err := identity.Ensure(path)
	if err != nil || !created {
		t.Fatalf("first Ensure: created=%v err=%v", created, err)
	}
	k2, created, err := identity.Ensure(path)
	if err != nil || created || !k1.Equal(k2) {
		t.Fatalf("second Ensure: created=%v err=%v same=%v", created, err, k1.Equal(k2))
	}
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := identity.Ensure(path); err == nil {
		t.Error("a corrupt key was silently replaced")
	}
	if b, _ := os.ReadFile(path); string(b) != "garbage" {
		t.Error("corrupt key file was overwritten")
	}
}
