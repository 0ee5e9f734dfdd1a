package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/devpilot/devpilot/controlplane/store"
)

// TestBackupRestoreCLI: on the machine, while the control plane serves,
// backup writes an encrypted archive (passphrase from stdin, never in
// argv or output); restore refuses the live data dir and fills a new one,
// where migrate status shows the schema and nothing pending.
func TestBackupRestoreCLI(t *testing.T) {
	e, v := startDev(t)
	dir := filepath.Dir(e.EnvFile)
	if r := cli(t, v, v["DO_SIM_TOKEN"]+"\n", "integrations", "connect", "--provider", "digitalocean", "--access-key", "my-do"); r.code != 0 {
		t.Fatalf("connect: %+v", r)
	}
	const pass = "PASSPHRASEcanary-6b1f0e"
	none := map[string]string{}
	archive := filepath.Join(t.TempDir(), "devpilot.backup")
	r := cli(t, none, pass+"\n", "backup", "--data-dir", dir, "--to", archive, "--encrypt")
	if r.code != 0 || !strings.Contains(r.stdout, "Backup written to "+archive) {
		t.Fatalf("backup: %+v", r)
	}
	st, err := os.Stat(archive)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("archive: %v %v", st, err)
	}
	raw, _ := os.ReadFile(archive)
	for _, s := range []string{pass, v["DO_SIM_TOKEN"], v["DEVPILOT_TOKEN"], "keyring", "BEGIN"} {
		if bytes.Contains(raw, []byte(s)) || strings.Contains(r.stdout+r.stderr, pass) {
			t.Fatalf("the encrypted archive or the output holds %q", s)
		}
	}
	if r := cli(t, none, pass+"\n", "backup", "--data-dir", dir, "--to", archive, "--encrypt"); r.code != 2 || !strings.Contains(r.stderr, "never overwrites") {
		t.Fatalf("backup over an existing file: %+v", r)
	}
	if r := cli(t, none, "", "backup", "--data-dir", dir); r.code != 2 || !strings.Contains(r.stderr, "--to FILE") {
		t.Fatalf("backup without --to: %+v", r)
	}

	// The live data dir is refused.
	withPass := map[string]string{"DEVPILOT_BACKUP_PASSPHRASE": pass}
	if r := cli(t, withPass, "", "restore", archive, "--data-dir", dir); r.code == 0 || !strings.Contains(r.stderr, "refusing to restore") {
		t.Fatalf("restore over the live dir: %+v", r)
	}
	if r := cli(t, map[string]string{"DEVPILOT_BACKUP_PASSPHRASE": "nope"}, "", "restore", archive, "--data-dir", filepath.Join(t.TempDir(), "x")); r.code == 0 || !strings.Contains(r.stderr, "passphrase") {
		t.Fatalf("restore with a wrong passphrase: %+v", r)
	}
	to := filepath.Join(t.TempDir(), "restored")
	r = cli(t, withPass, "", "restore", archive, "--data-dir", to)
	if r.code != 0 || !strings.Contains(r.stdout, "Restored") {
		t.Fatalf("restore: %+v", r)
	}
	r = cli(t, none, "", "migrate", "status", "--data-dir", to, "--json")
	var ms struct {
		Database      string `json:"database"`
		SchemaVersion int64  `json:"schema_version"`
		Pending       int    `json:"pending"`
		Migrations    []struct {
			Applied bool `json:"applied"`
		} `json:"migrations"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &ms) != nil {
		t.Fatalf("migrate status: %+v", r)
	}
	latest, _ := store.LatestSchema(store.SQLite)
	if ms.Database != "sqlite" || ms.SchemaVersion != latest || ms.Pending != 0 || len(ms.Migrations) == 0 {
		t.Fatalf("migrate status: %+v (latest %d)", ms, latest)
	}
	if r := cli(t, none, "", "migrate", "status", "--data-dir", dir); r.code != 0 || !strings.Contains(r.stdout, "0 of") || !strings.Contains(r.stdout, "applied") {
		t.Fatalf("migrate status (text): %+v", r)
	}
	if r := cli(t, none, "", "migrate", "status", "--data-dir", t.TempDir()); r.code != 1 || !strings.Contains(r.stderr, "no control plane database") {
		t.Fatalf("migrate status in an empty dir: %+v", r)
	}
}
