package backup_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/controlplane/backup"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// canary is a cloud token stored sealed in the database.
const canary = "dop_v1_CANARYbackup0123456789abcdef0123456789abcdef"

// dataDir makes a real data dir: a migrated SQLite database holding a row
// sealed with the keyring, the keyring, and TLS files.
func dataDir(t *testing.T) (dir, sealed string) {
	t.Helper()
	dir = t.TempDir()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(dir, backup.DBName))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	kr, err := secrets.LoadOrCreateKeyring(secrets.DefaultKeyringPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	if sealed, err = kr.Encrypt(secrets.New(canary), "int_canary"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.DB().ExecContext(ctx, `CREATE TABLE canary (v TEXT)`); err != nil {
		t.Fatal(err)
	}
	if _, err := st.DB().ExecContext(ctx, `INSERT INTO canary (v) VALUES (?)`, sealed); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, backup.TLSDir), 0o700); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"ca.crt": "CA CERT", "ca.key": "CA KEY", "server.crt": "CERT", "server.key": "KEY"} {
		if err := os.WriteFile(filepath.Join(dir, backup.TLSDir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Not archived: the owner token (a bearer secret in plaintext).
	if err := os.WriteFile(filepath.Join(dir, "owner.token"), []byte("dpt_OWNERTOKENCANARY\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, sealed
}

func entries(t *testing.T, archive []byte) map[string][]byte {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	out := map[string][]byte{}
	for {
		hd, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		out[hd.Name] = b
	}
}

func TestBackupRestoreRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir, sealed := dataDir(t)
	var buf bytes.Buffer
	m, err := backup.Create(ctx, &buf, backup.Options{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	latest, _ := store.LatestSchema(store.SQLite)
	if m.Format != backup.Format || m.SchemaVersion != latest || m.Database != "sqlite" || len(m.Files) != 6 {
		t.Fatalf("manifest: %+v (latest schema %d)", m, latest)
	}
	// Canary: the unencrypted archive holds the sealed token, never the
	// token itself, and not the owner token.
	raw := entries(t, buf.Bytes())
	all := bytes.Join(func() (v [][]byte) {
		for _, b := range raw {
			v = append(v, b)
		}
		return
	}(), nil)
	if bytes.Contains(all, []byte(canary)) || bytes.Contains(all, []byte("OWNERTOKENCANARY")) {
		t.Fatal("the archive holds a secret in plaintext")
	}
	if !bytes.Contains(raw[backup.DBName], []byte(sealed)) {
		t.Fatal("the database snapshot lacks the sealed row")
	}
	if _, ok := raw["owner.token"]; ok {
		t.Fatal("owner.token archived")
	}

	to := filepath.Join(t.TempDir(), "restored")
	if _, err := backup.Restore(ctx, bytes.NewReader(buf.Bytes()), backup.RestoreOptions{DataDir: to}); err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenSQLite(ctx, filepath.Join(to, backup.DBName))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = st.Close() }()
	var got string
	if err := st.DB().QueryRowContext(ctx, `SELECT v FROM canary`).Scan(&got); err != nil {
		t.Fatal(err)
	}
	kr, err := secrets.LoadKeyring(secrets.DefaultKeyringPath(to))
	if err != nil {
		t.Fatal(err)
	}
	v, err := kr.Decrypt(got, "int_canary")
	if err != nil || v.Reveal() != canary {
		t.Fatalf("restored secret does not open with the restored keyring: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(to, "tls", "ca.key")); err != nil || string(b) != "CA KEY" {
		t.Fatalf("tls/ca.key: %q %v", b, err)
	}
	if fi, err := os.Stat(filepath.Join(to, backup.KeyringName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("keyring mode: %v %v", fi, err)
	}

	// A second restore into the now live dir is refused and changes nothing.
	_, err = backup.Restore(ctx, bytes.NewReader(buf.Bytes()), backup.RestoreOptions{DataDir: to})
	var pe *problem.Error
	if !errors.As(err, &pe) || pe.Code != "conflict" || !strings.Contains(err.Error(), "devpilot.db") || pe.Hint == "" {
		t.Fatalf("restore over a live data dir: %v", err)
	}
	// Also a dir holding only a keyring.
	only := t.TempDir()
	_ = os.WriteFile(filepath.Join(only, backup.KeyringName), []byte("{}"), 0o600)
	if _, err := backup.Restore(ctx, bytes.NewReader(buf.Bytes()), backup.RestoreOptions{DataDir: only}); !errors.As(err, &pe) || pe.Code != "conflict" {
		t.Fatalf("restore over a keyring: %v", err)
	}
}

func TestEncryptedBackup(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir, sealed := dataDir(t)
	pass := secrets.New("correct horse battery staple")
	var buf bytes.Buffer
	if _, err := backup.Create(ctx, &buf, backup.Options{DataDir: dir, Passphrase: pass, WorkFactor: 10}); err != nil {
		t.Fatal(err)
	}
	// No plaintext at all: not gzip, none of the names, keys or sealed rows.
	kr, _ := os.ReadFile(secrets.DefaultKeyringPath(dir))
	for _, s := range [][]byte{[]byte(canary), []byte(sealed), kr, []byte("manifest.json"), []byte("CA KEY"), []byte("devpilot.db"), []byte(pass.Reveal())} {
		if bytes.Contains(buf.Bytes(), s) {
			t.Fatalf("the encrypted archive holds %.20q in plaintext", s)
		}
	}
	if !bytes.HasPrefix(buf.Bytes(), []byte("age-encryption.org/v1\n")) {
		t.Fatal("not an age file")
	}
	to := t.TempDir()
	if _, err := backup.Restore(ctx, bytes.NewReader(buf.Bytes()), backup.RestoreOptions{DataDir: to}); !errors.Is(err, backup.ErrEncrypted) {
		t.Fatalf("no passphrase: %v", err)
	}
	wrong := func() (secrets.Value, error) { return secrets.New("wrong"), nil }
	_, err := backup.Restore(ctx, bytes.NewReader(buf.Bytes()), backup.RestoreOptions{DataDir: to, Passphrase: wrong})
	var pe *problem.Error
	if !errors.As(err, &pe) || pe.Code != "validation_failed" || strings.Contains(err.Error(), "wrong\"") {
		t.Fatalf("wrong passphrase: %v", err)
	}
	if des, _ := os.ReadDir(to); len(des) != 0 {
		t.Fatalf("a failed restore left %v", des)
	}
	right := func() (secrets.Value, error) { return pass, nil }
	if _, err := backup.Restore(ctx, bytes.NewReader(buf.Bytes()), backup.RestoreOptions{DataDir: to, Passphrase: right}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(to, backup.DBName)); err != nil {
		t.Fatal(err)
	}
}

// TestTamperedArchivesAreRefused: every byte of the archive matters.
func TestTamperedArchivesAreRefused(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir, _ := dataDir(t)
	var buf bytes.Buffer
	if _, err := backup.Create(ctx, &buf, backup.Options{DataDir: dir}); err != nil {
		t.Fatal(err)
	}
	raw := entries(t, buf.Bytes())
	rebuild := func(edit func(name string, b []byte) []byte, extra ...string) []byte {
		var out bytes.Buffer
		gz := gzip.NewWriter(&out)
		tw := tar.NewWriter(gz)
		write := func(name string, b []byte) {
			_ = tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: int64(len(b)), Typeflag: tar.TypeReg})
			_, _ = tw.Write(b)
		}
		write(backup.ManifestName, edit(backup.ManifestName, raw[backup.ManifestName]))
		for name, b := range raw {
			if name != backup.ManifestName {
				if b2 := edit(name, b); b2 != nil {
					write(name, b2)
				}
			}
		}
		for _, e := range extra {
			write(e, []byte("x"))
		}
		_ = tw.Close()
		_ = gz.Close()
		return out.Bytes()
	}
	same := func(_ string, b []byte) []byte { return b }
	for name, archive := range map[string][]byte{
		"flipped byte in the keyring": rebuild(func(n string, b []byte) []byte {
			if n == backup.KeyringName {
				b = bytes.Clone(b)
				b[len(b)/2] ^= 1
			}
			return b
		}),
		"missing database": rebuild(func(n string, b []byte) []byte {
			if n == backup.DBName {
				return nil
			}
			return b
		}),
		"extra entry":  rebuild(same, "tls/evil"),
		"path escape":  rebuild(same, "../evil"),
		"other format": rebuild(func(n string, b []byte) []byte { return bytes.Replace(b, []byte(backup.Format), []byte("x/1"), 1) }),
		"not gzip":     []byte("hello"),
		"truncated":    buf.Bytes()[:buf.Len()/2],
	} {
		to := t.TempDir()
		_, err := backup.Restore(ctx, bytes.NewReader(archive), backup.RestoreOptions{DataDir: to})
		var pe *problem.Error
		if !errors.As(err, &pe) && name != "truncated" || err == nil {
			t.Errorf("%s: %v", name, err)
		}
		if des, _ := os.ReadDir(to); len(des) != 0 {
			t.Errorf("%s: a refused restore left %v", name, des)
		}
		if _, err := os.Stat(filepath.Join(filepath.Dir(to), "evil")); err == nil {
			t.Errorf("%s: wrote outside the data dir", name)
		}
	}
}

// TestBackupNeedsADataDir names what is missing.
func TestBackupNeedsADataDir(t *testing.T) {
	t.Parallel()
	_, err := backup.Create(context.Background(), io.Discard, backup.Options{DataDir: t.TempDir()})
	var pe *problem.Error
	if !errors.As(err, &pe) || !strings.Contains(err.Error(), "no control plane database") {
		t.Fatalf("empty dir: %v", err)
	}
}

// FuzzUnpack: Unpack reads untrusted files; it must never panic or write
// outside its directory.
func FuzzUnpack(f *testing.F) {
	dir := f.TempDir()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(dir, backup.DBName))
	if err != nil {
		f.Fatal(err)
	}
	_ = st.Close()
	if _, err := secrets.LoadOrCreateKeyring(secrets.DefaultKeyringPath(dir)); err != nil {
		f.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := backup.Create(context.Background(), &buf, backup.Options{DataDir: dir}); err != nil {
		f.Fatal(err)
	}
	f.Add(buf.Bytes())
	f.Add([]byte{})
	f.Add([]byte("\x1f\x8b\x08\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		out := t.TempDir()
		_, _ = backup.Unpack(context.Background(), bytes.NewReader(b), filepath.Join(out, "d"))
		des, _ := os.ReadDir(out)
		for _, de := range des {
			if de.Name() != "d" {
				t.Fatalf("wrote %s outside", de.Name())
			}
		}
	})
}

// BenchmarkCreate: a backup of a small data dir, plain and with a
// passphrase at the default scrypt work factor (what `devpilot backup
// --encrypt` costs beyond the copy).
func BenchmarkCreate(b *testing.B) {
	dir := b.TempDir()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(dir, backup.DBName))
	if err != nil {
		b.Fatal(err)
	}
	_ = st.Close()
	if _, err := secrets.LoadOrCreateKeyring(secrets.DefaultKeyringPath(dir)); err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		pass secrets.Value
	}{{"plain", secrets.Value{}}, {"encrypted", secrets.New("a passphrase")}} {
		b.Run(c.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := backup.Create(context.Background(), io.Discard, backup.Options{DataDir: dir, Passphrase: c.pass}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestPostgresBackupHoldsKeyringAndTLS: on PostgreSQL the archive holds
// the keyring and TLS files, says in its manifest that the database is
// pg_dump's, and restores.
func TestPostgresBackupHoldsKeyringAndTLS(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn := storetest.PostgresURL(t)
	st, err := store.OpenPostgres(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	_ = st.Close()
	dir, _ := dataDir(t)
	var buf bytes.Buffer
	m, err := backup.Create(ctx, &buf, backup.Options{DataDir: dir, Database: dsn})
	if err != nil {
		t.Fatal(err)
	}
	latest, _ := store.LatestSchema(store.Postgres)
	if m.Database != "postgres" || m.SchemaVersion != latest || !strings.Contains(m.Note, "pg_dump") || len(m.Files) != 5 {
		t.Fatalf("manifest: %+v", m)
	}
	raw := entries(t, buf.Bytes())
	if _, ok := raw[backup.DBName]; ok {
		t.Fatal("a PostgreSQL backup holds the data dir's SQLite file")
	}
	if bytes.Contains(buf.Bytes(), []byte(dsn)) || bytes.Contains(raw[backup.ManifestName], []byte("postgres://")) {
		t.Fatal("the archive names the database URL")
	}
	to := t.TempDir()
	if _, err := backup.Restore(ctx, bytes.NewReader(buf.Bytes()), backup.RestoreOptions{DataDir: to}); err != nil {
		t.Fatal(err)
	}
	if _, err := secrets.LoadKeyring(secrets.DefaultKeyringPath(to)); err != nil {
		t.Fatal(err)
	}
}
