package cli

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"os"
	"path/filepath"

	"github.com/devpilot/devpilot/controlplane/backup"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
)

// passphraseEnv holds a backup passphrase for scripts (never an argument).
const passphraseEnv = "DEVPILOT_BACKUP_PASSPHRASE"

// runBackup is `devpilot backup --to FILE`: an online snapshot of the data
// dir, run on the control plane's machine (see package backup for why not
// through the API).
func runBackup(ctx context.Context, env Env, args []string) error {
	fs := newFlags("backup", env)
	to := fs.String("to", "", "the archive to write (mode 0600; must not exist)")
	dataDir := fs.String("data-dir", "devpilot-data", "the data directory of devpilot serve")
	database := fs.String("database", "", "the --database of devpilot serve (empty: SQLite in the data dir; a password goes in DEVPILOT_DATABASE)")
	keyFile := fs.String("master-key-file", "", "the --master-key-file of devpilot serve (default: DATA_DIR/keyring.json)")
	encrypt := fs.Bool("encrypt", false, "encrypt with a passphrase asked on the terminal or read from stdin (also implied by --passphrase-file or "+passphraseEnv+")")
	passFile := fs.String("passphrase-file", "", "file holding the passphrase to encrypt with (else "+passphraseEnv+", else the terminal or stdin with --encrypt)")
	if pos, err := parse(fs, env, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usagef("backup takes no arguments; give the archive with --to FILE")
	}
	if *to == "" {
		return usagef("backup needs --to FILE, the archive to write")
	}
	if err := passwordInArgs(fs, "database"); err != nil {
		return err
	}
	var pass secrets.Value
	if *encrypt || *passFile != "" || env.Getenv(passphraseEnv) != "" {
		p, err := readPassphrase(env, *passFile)
		if err != nil {
			return err
		}
		pass = p
	}
	if _, err := os.Lstat(*to); err == nil {
		return usagef("%s exists; backup never overwrites a file: give a new name", *to)
	}
	tmp, err := os.CreateTemp(filepath.Dir(*to), "."+filepath.Base(*to)+".tmp-")
	if err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	defer func() { _ = os.Remove(tmp.Name()) }()
	if err := tmp.Chmod(0o600); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("backup: %w", err)
	}
	m, err := backup.Create(ctx, tmp, backup.Options{DataDir: *dataDir, Database: *database, MasterKeyFile: *keyFile, Passphrase: pass})
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	// Link, not rename: a file that appeared at --to meanwhile is kept.
	if err := os.Link(tmp.Name(), *to); err != nil {
		if errors.Is(err, iofs.ErrExist) {
			return usagef("%s exists; backup never overwrites a file: give a new name", *to)
		}
		return fmt.Errorf("backup: %w", err)
	}
	fmt.Fprintf(env.Stdout, "Backup written to %s: %d files, schema version %d, devpilot %s.\n", *to, len(m.Files), m.SchemaVersion, m.Version)
	if pass.IsZero() {
		fmt.Fprintln(env.Stderr, "warning: the archive is not encrypted: it holds the master keyring and TLS keys, so anyone who reads it can open every stored secret. Keep it like the data dir, or back up again with --encrypt.")
	}
	if m.Database == string(store.Postgres) {
		fmt.Fprintln(env.Stdout, "Note: "+backup.PostgresNote+".")
	}
	return nil
}

// runRestore is `devpilot restore FILE --data-dir D`.
func runRestore(ctx context.Context, env Env, args []string) error {
	fs := newFlags("restore", env)
	dataDir := fs.String("data-dir", "", "a new or empty directory to restore into (then: devpilot serve --data-dir D)")
	passFile := fs.String("passphrase-file", "", "file holding the passphrase of an encrypted archive (else "+passphraseEnv+", else the terminal or stdin)")
	pos, err := parse(fs, env, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("restore takes one archive: devpilot restore FILE --data-dir D")
	}
	if *dataDir == "" {
		return usagef("restore needs --data-dir D, a new or empty directory")
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer func() { _ = f.Close() }()
	m, err := backup.Restore(ctx, f, backup.RestoreOptions{DataDir: *dataDir,
		Passphrase: func() (secrets.Value, error) { return readPassphrase(env, *passFile) }})
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "Restored %d files made by devpilot %s at %s (schema version %d) into %s.\n",
		len(m.Files), m.Version, m.CreatedAt.Format("2006-01-02 15:04:05Z07:00"), m.SchemaVersion, *dataDir)
	if m.Database == string(store.Postgres) {
		fmt.Fprintln(env.Stdout, "Note: "+backup.PostgresNote+".")
	}
	fmt.Fprintf(env.Stdout, "Start it with: devpilot serve --data-dir %s (pending migrations run then). The owner token is not in backups: run devpilot tokens recover --data-dir %s for a new one.\n", *dataDir, *dataDir)
	return nil
}

func readPassphrase(env Env, file string) (secrets.Value, error) {
	if file == "-" {
		file = ""
		env.ReadSecret = nil // stdin, piped
	}
	s, err := readSecret(env, file, passphraseEnv, "backup passphrase")
	if err != nil {
		return secrets.Value{}, err
	}
	return secrets.New(s), nil
}
