package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/devpilot/devpilot/controlplane/devenv"
)

// TestAgentsKeygenSignAddList: the operator's path, through the CLI: a key
// made offline (0600, never overwritten), a build signed with it, added
// on the control plane's machine (a bad signature or a relabelled version
// refused), and listed by the running control plane.
func TestAgentsKeygenSignAddList(t *testing.T) {
	e, vars := startDev(t)
	dataDir := filepath.Dir(e.EnvFile)
	off := t.TempDir()
	key := filepath.Join(off, "release.key")
	r := cli(t, vars, "", "agents", "keygen", "--out", key)
	if r.code != 0 || len(strings.TrimSpace(r.stdout)) != 44 {
		t.Fatalf("keygen: %+v", r)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(key); strings.Contains(r.stdout+r.stderr, string(b)) {
		t.Error("keygen printed the private key")
	}
	if r := cli(t, vars, "", "agents", "keygen", "--out", key); r.code == 0 {
		t.Error("keygen overwrote a key")
	}

	bin := filepath.Join(off, "devpilot-agent")
	if err := os.WriteFile(bin, []byte("\x7fELF pretend agent 2.0.0"), 0o755); err != nil {
		t.Fatal(err)
	}
	if r := cli(t, vars, "", "agents", "sign", "--key", key, bin, "--version", "2.0.0", "--arch", "amd64"); r.code != 0 {
		t.Fatalf("sign: %+v", r)
	}
	// The running control plane trusts the dev key only: refused.
	if r := cli(t, vars, "", "agents", "releases", "add", bin, "--version", "2.0.0", "--data-dir", dataDir,
		"--agent-release-key", filepath.Join(dataDir, devenv.DevReleasePublicKeyFile)); r.code == 0 || !strings.Contains(r.stderr, "does not verify") {
		t.Errorf("add with an untrusted key: %+v", r)
	}
	if r := cli(t, vars, "", "agents", "releases", "add", bin, "--version", "2.0.1", "--data-dir", dataDir,
		"--agent-release-key", key+".pub"); r.code == 0 || !strings.Contains(r.stderr, "signs version 2.0.0") {
		t.Errorf("add relabelled: %+v", r)
	}
	// A control plane during a rotation trusts both keys; the added
	// release is served at once to the dev control plane (same data dir),
	// which trusts only its own key, so the list shows the dev builds only.
	if r := cli(t, vars, "", "agents", "releases", "add", bin, "--version", "2.0.0", "--data-dir", dataDir,
		"--agent-release-key", key+".pub,"+filepath.Join(dataDir, devenv.DevReleasePublicKeyFile)); r.code != 0 {
		t.Fatalf("add: %+v", r)
	}
	r = cli(t, vars, "", "agents", "releases", "list", "-o", "json")
	var got struct {
		AgentReleases []struct{ Version, OS, Arch string } `json:"agent_releases"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &got) != nil {
		t.Fatalf("list: %+v", r)
	}
	for _, rel := range got.AgentReleases {
		if rel.Version == "2.0.0" {
			t.Errorf("listed a release signed by a key the control plane does not trust: %+v", got)
		}
	}
	if len(got.AgentReleases) == 0 {
		t.Errorf("the dev build is not listed: %s", r.stdout)
	}
	if r := cli(t, vars, "", "agents", "releases", "list"); r.code != 0 || !strings.Contains(r.stdout, "VERSION") {
		t.Errorf("list table: %+v", r)
	}
}
