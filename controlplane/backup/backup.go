// Package backup is `devpilot backup` and `devpilot restore`: one archive
// holding a consistent snapshot of a control plane's data directory, taken
// while it serves, and its way back into a new data directory.
//
// The archive is a gzip-compressed tar whose first entry is manifest.json
// (format, the devpilot version and schema version that made it, when, and
// the size, mode and sha256 of every other entry), then:
//
//	devpilot.db       the SQLite database, a snapshot by VACUUM INTO (absent on PostgreSQL)
//	keyring.json      the master keyring that seals every stored secret
//	tls/…             the --tls auto CA and server certificate and keys
//	acme/…            the --tls acme account key and certificate cache
//
// The owner token file is left out (it is a bearer secret in plaintext;
// its hash in the database keeps it valid, and `devpilot tokens recover`
// makes another). With a passphrase the whole stream is encrypted with age
// (filippo.io/age, scrypt recipient), so nothing in the file is readable
// without it. Without one, secrets in the database stay sealed by the
// keyring, but the keyring and the TLS keys are in the archive as they are
// on disk: such an archive must be kept like the data dir itself.
//
// Backup runs on the control plane's machine against its data directory,
// like `tokens recover`, not through the API: the archive holds the master
// key, which no API token should be able to download (a leaked admin or
// owner token would otherwise leak every cloud credential), and file
// access to the data dir is already the proof of owning it.
package backup

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"filippo.io/age"

	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/shared/version"
)

// Format is the manifest's format; restore refuses others.
const Format = "devpilot-backup/1"

// Names inside the archive (and the data dir).
const (
	ManifestName = "manifest.json"
	DBName       = "devpilot.db" // = app.DBFile
	KeyringName  = secrets.KeyringFileName
	TLSDir       = "tls"  // = app.TLSDir
	ACMEDir      = "acme" // the autocert cache
)

// DefaultWorkFactor is age's scrypt work factor (log2 N) for a passphrase:
// about a second and 256 MiB of memory to try one passphrase.
const DefaultWorkFactor = 18

// maxManifest bounds the manifest a restore reads.
const maxManifest = 1 << 20

// ageHeader starts every age-encrypted file.
var ageHeader = []byte("age-encryption.org/")

// Manifest describes an archive.
type Manifest struct {
	Format        string    `json:"format"`
	Version       string    `json:"version"`        // the devpilot that made it
	SchemaVersion int64     `json:"schema_version"` // the database's goose version at the snapshot
	Database      string    `json:"database"`       // sqlite or postgres
	CreatedAt     time.Time `json:"created_at"`
	Note          string    `json:"note,omitempty"`
	Files         []File    `json:"files"`
}

// File is one archive entry besides the manifest.
type File struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	Mode   uint32 `json:"mode"`
	SHA256 string `json:"sha256"`
}

// PostgresNote is what a PostgreSQL backup's manifest (and the CLI) says
// about the database, which the archive does not hold.
const PostgresNote = "the database is on PostgreSQL and not in this archive: dump it with " +
	"pg_dump --format=custom (it is consistent while the control plane serves) and restore it with pg_restore " +
	"into an empty database before starting devpilot serve on the restored data dir"

// Options configure Create.
type Options struct {
	DataDir       string
	Database      string // "" or sqlite: SQLite in DataDir; a postgres:// URL: the database is not archived (PostgresNote)
	MasterKeyFile string // default DataDir/keyring.json
	// Passphrase encrypts the archive with age when not zero.
	Passphrase secrets.Value
	WorkFactor int // scrypt log2 N; default DefaultWorkFactor (tests use less)
	Now        func() time.Time
}

// Create writes an archive of the data directory to w while the control
// plane may be serving: SQLite is copied with VACUUM INTO (a transaction
// of its own, consistent, not blocking writers for long), and the keyring
// is read before and after the copy, again until both reads agree, so the
// archived keyring holds every key the snapshot's rows are sealed with
// even if a key rotation ran meanwhile.
func Create(ctx context.Context, w io.Writer, o Options) (Manifest, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MasterKeyFile == "" {
		o.MasterKeyFile = secrets.DefaultKeyringPath(o.DataDir)
	}
	pg := store.IsPostgresURL(o.Database)
	if !pg && o.Database != "" && o.Database != string(store.SQLite) {
		return Manifest{}, problem.Validation("give a postgres:// URL, or nothing for SQLite in the data dir",
			"database %q is neither sqlite nor a postgres:// URL", store.RedactURL(o.Database))
	}
	dbPath := filepath.Join(o.DataDir, DBName)
	if !pg {
		if _, err := os.Stat(dbPath); err != nil {
			return Manifest{}, problem.Validation("give the --data-dir of devpilot serve (or its --database)",
				"no control plane database at %s", dbPath)
		}
	}
	st, err := store.OpenAsIs(ctx, o.Database, dbPath)
	if err != nil {
		return Manifest{}, err
	}
	defer func() { _ = st.Close() }()

	work, err := os.MkdirTemp(o.DataDir, ".backup-")
	if err != nil {
		return Manifest{}, fmt.Errorf("backup: %w", err)
	}
	defer func() { _ = os.RemoveAll(work) }()

	m := Manifest{Format: Format, Version: version.String(), Database: string(st.Dialect()), CreatedAt: o.Now().UTC()}
	snap := filepath.Join(work, DBName)
	keyring, err := snapshot(ctx, st, o.MasterKeyFile, snap, pg, &m)
	if err != nil {
		return Manifest{}, err
	}
	if pg {
		m.Note = PostgresNote
	}
	entries := []entry{{name: KeyringName, data: keyring, mode: 0o600}}
	if !pg {
		entries = append(entries, entry{name: DBName, file: snap, mode: 0o600})
	}
	more, err := dataFiles(o.DataDir)
	if err != nil {
		return Manifest{}, err
	}
	entries = append(entries, more...)
	if m.Files, err = describe(entries); err != nil {
		return Manifest{}, err
	}
	if err := writeArchive(w, m, entries, o); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

type entry struct {
	name string
	data []byte // or
	file string
	mode os.FileMode
}

// snapshot copies the database into snap (SQLite) and returns the keyring
// as it was both before and after the copy, trying again (5 times in all)
// while a key rotation changes it.
func snapshot(ctx context.Context, st *store.Store, keyFile, snap string, pg bool, m *Manifest) ([]byte, error) {
	for attempt := 0; ; attempt++ {
		before, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, fmt.Errorf("backup: read keyring: %w", err)
		}
		if m.SchemaVersion, err = st.SchemaVersion(ctx); err != nil {
			return nil, fmt.Errorf("backup: schema version: %w", err)
		}
		if !pg {
			_ = os.Remove(snap)
			if _, err := st.DB().ExecContext(ctx, `VACUUM INTO ?`, snap); err != nil {
				return nil, fmt.Errorf("backup: snapshot the database: %w", err)
			}
		}
		after, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, fmt.Errorf("backup: read keyring: %w", err)
		}
		if bytes.Equal(before, after) {
			return after, nil
		}
		if attempt == 4 {
			return nil, problem.Conflict("wait for devpilot keys rotate to finish, then back up again",
				"the master keyring changed during each of 5 snapshots")
		}
	}
}

// dataFiles are the TLS and ACME files of the data dir.
func dataFiles(dataDir string) ([]entry, error) {
	var entries []entry
	for _, dir := range []string{TLSDir, ACMEDir} {
		des, err := os.ReadDir(filepath.Join(dataDir, dir))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("backup: %w", err)
		}
		for _, de := range des {
			if !de.Type().IsRegular() || !validName(de.Name()) {
				continue
			}
			info, err := de.Info()
			if err != nil {
				return nil, fmt.Errorf("backup: %w", err)
			}
			entries = append(entries, entry{name: dir + "/" + de.Name(), file: filepath.Join(dataDir, dir, de.Name()),
				mode: info.Mode().Perm()})
		}
	}
	return entries, nil
}

// describe hashes every entry for the manifest, which leads the archive.
// TLS files are small; the snapshot is ours and does not change.
func describe(entries []entry) ([]File, error) {
	var files []File
	for _, e := range entries {
		f := File{Path: e.name, Mode: uint32(e.mode & 0o644)}
		if e.data != nil {
			sum := sha256.Sum256(e.data)
			f.Size, f.SHA256 = int64(len(e.data)), hex.EncodeToString(sum[:])
		} else {
			sz, sum, err := hashFile(e.file)
			if err != nil {
				return nil, fmt.Errorf("backup: %w", err)
			}
			f.Size, f.SHA256 = sz, sum
		}
		files = append(files, f)
	}
	return files, nil
}

// writeArchive writes the manifest and the entries, encrypted with age
// when o has a passphrase.
func writeArchive(w io.Writer, m Manifest, entries []entry, o Options) error {
	out := w
	var enc io.WriteCloser
	if !o.Passphrase.IsZero() {
		r, err := age.NewScryptRecipient(o.Passphrase.Reveal())
		if err != nil {
			return problem.Validation("use a longer passphrase", "passphrase: %v", err)
		}
		wf := o.WorkFactor
		if wf == 0 {
			wf = DefaultWorkFactor
		}
		r.SetWorkFactor(wf)
		if enc, err = age.Encrypt(w, r); err != nil {
			return fmt.Errorf("backup: encrypt: %w", err)
		}
		out = enc
	}
	gz := gzip.NewWriter(out)
	tw := tar.NewWriter(gz)
	mj, _ := json.MarshalIndent(m, "", "  ")
	if err := writeEntry(tw, ManifestName, 0o644, m.CreatedAt, bytes.NewReader(mj), int64(len(mj))); err != nil {
		return err
	}
	for i, e := range entries {
		var rd io.Reader
		if e.data != nil {
			rd = bytes.NewReader(e.data)
		} else {
			f, err := os.Open(e.file)
			if err != nil {
				return fmt.Errorf("backup: %w", err)
			}
			defer func() { _ = f.Close() }()
			rd = f
		}
		// A file that changed since it was hashed (a TLS renewal just now)
		// fails here rather than making an archive that does not verify.
		h := sha256.New()
		if err := writeEntry(tw, e.name, os.FileMode(m.Files[i].Mode), m.CreatedAt, io.TeeReader(rd, h), m.Files[i].Size); err != nil {
			return err
		}
		if hex.EncodeToString(h.Sum(nil)) != m.Files[i].SHA256 {
			return problem.Conflict("back up again", "%s changed while it was archived", e.name)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if err := gz.Close(); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if enc != nil {
		if err := enc.Close(); err != nil {
			return fmt.Errorf("backup: encrypt: %w", err)
		}
	}
	return nil
}

func writeEntry(tw *tar.Writer, name string, mode os.FileMode, mt time.Time, r io.Reader, size int64) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: int64(mode), Size: size, ModTime: mt, Typeflag: tar.TypeReg,
		Format: tar.FormatPAX}); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	n, err := io.Copy(tw, io.LimitReader(r, size))
	if err != nil {
		return fmt.Errorf("backup: %s: %w", name, err)
	}
	if n != size {
		return problem.Conflict("back up again", "%s changed while it was archived", name)
	}
	return nil
}

func hashFile(p string) (int64, string, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = f.Close() }()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, "", err
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// validName is one plain file name: no separators, not hidden (temp
// files of atomic writes are), not . or ..
func validName(n string) bool {
	return n != "" && !strings.HasPrefix(n, ".") && !strings.ContainsAny(n, `/\`) && len(n) <= 255
}

// allowedPath reports whether p may be restored into a data dir.
func allowedPath(p string) bool {
	switch p {
	case DBName, KeyringName:
		return true
	}
	dir, name := path.Split(p)
	return (dir == TLSDir+"/" || dir == ACMEDir+"/") && validName(name)
}

// RestoreOptions configure Restore.
type RestoreOptions struct {
	DataDir string
	// Passphrase is asked only for an encrypted archive.
	Passphrase func() (secrets.Value, error)
}

// ErrEncrypted is returned when an encrypted archive is restored without a passphrase.
var ErrEncrypted = errors.New("the archive is encrypted")

// Restore unpacks an archive into DataDir, which must be new or empty:
// a data dir holding anything (every live control plane's holds at least
// its database or keyring) is refused, so a restore never overwrites
// state. Every entry is checked against the manifest (names, sizes,
// sha256, nothing missing, nothing extra) in a temporary directory before
// anything is moved into place; on any error DataDir is left as it was.
func Restore(ctx context.Context, r io.Reader, o RestoreOptions) (Manifest, error) {
	if o.DataDir == "" {
		return Manifest{}, problem.Validation("give --data-dir", "no data dir to restore into")
	}
	if err := refuseLive(o.DataDir); err != nil {
		return Manifest{}, err
	}
	br := bufio.NewReader(r)
	head, _ := br.Peek(len(ageHeader))
	var src io.Reader = br
	if bytes.Equal(head, ageHeader) {
		if o.Passphrase == nil {
			return Manifest{}, fmt.Errorf("%w: give its passphrase (--passphrase-file, DEVPILOT_BACKUP_PASSPHRASE or the terminal)", ErrEncrypted)
		}
		pass, err := o.Passphrase()
		if err != nil {
			return Manifest{}, err
		}
		id, err := age.NewScryptIdentity(pass.Reveal())
		if err != nil {
			return Manifest{}, problem.Validation("give the passphrase the backup was made with", "passphrase: %v", err)
		}
		if src, err = age.Decrypt(br, id); err != nil {
			return Manifest{}, problem.Validation("give the passphrase the backup was made with",
				"cannot decrypt the archive: wrong passphrase or not a devpilot backup")
		}
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return Manifest{}, fmt.Errorf("restore: %w", err)
	}
	work, err := os.MkdirTemp(o.DataDir, ".restore-")
	if err != nil {
		return Manifest{}, fmt.Errorf("restore: %w", err)
	}
	defer func() { _ = os.RemoveAll(work) }()
	m, err := Unpack(ctx, src, work)
	if err != nil {
		return Manifest{}, err
	}
	latest, err := store.LatestSchema(store.Dialect(m.Database))
	if err != nil {
		return Manifest{}, err
	}
	if m.SchemaVersion > latest {
		return Manifest{}, problem.Validation("restore it with the devpilot version that made it ("+m.Version+") or a later one",
			"the backup's schema version %d is newer than this devpilot's %d", m.SchemaVersion, latest)
	}
	// Move into place; a refusal check again first, in case something
	// started in DataDir meanwhile.
	if err := refuseLive(o.DataDir, filepath.Base(work)); err != nil {
		return Manifest{}, err
	}
	for _, f := range m.Files {
		to := filepath.Join(o.DataDir, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
			return Manifest{}, fmt.Errorf("restore: %w", err)
		}
		if err := os.Rename(filepath.Join(work, filepath.FromSlash(f.Path)), to); err != nil {
			return Manifest{}, fmt.Errorf("restore: %w", err)
		}
	}
	return m, nil
}

// refuseLive refuses a data dir that holds anything (but the names in skip).
func refuseLive(dir string, skip ...string) error {
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	var found []string
	for _, de := range des {
		if !slices.Contains(skip, de.Name()) {
			found = append(found, de.Name())
		}
	}
	if len(found) == 0 {
		return nil
	}
	slices.Sort(found)
	what := "it is not empty"
	for _, n := range found {
		if n == DBName || n == KeyringName || strings.HasPrefix(n, DBName+"-") {
			what = "it holds a control plane's " + n + " (perhaps one that is running)"
			break
		}
	}
	return problem.Conflict("restore into a new or empty directory, then point devpilot serve --data-dir at it",
		"refusing to restore into %s: %s (%s)", dir, what, strings.Join(found, ", "))
}

// Unpack reads a decrypted archive (gzip, tar) into dir, checking it
// against its manifest, and returns the manifest. It reads untrusted
// input: names outside the allowed set, links, sizes or sums that differ
// from the manifest, duplicates, and missing or extra entries are all
// refused, and nothing is written outside dir.
func Unpack(ctx context.Context, r io.Reader, dir string) (Manifest, error) {
	bad := func(format string, args ...any) error {
		return problem.Validation("give a file made by devpilot backup, unchanged", "not a valid devpilot backup: "+format, args...)
	}
	gz, err := gzip.NewReader(r)
	if err != nil {
		return Manifest{}, bad("not gzip (%v)", err)
	}
	tr := tar.NewReader(gz)
	hd, err := tr.Next()
	if err != nil || hd.Name != ManifestName || hd.Typeflag != tar.TypeReg || hd.Size > maxManifest {
		return Manifest{}, bad("the first entry is not %s", ManifestName)
	}
	var m Manifest
	dec := json.NewDecoder(io.LimitReader(tr, maxManifest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Manifest{}, bad("manifest: %v", err)
	}
	if m.Format != Format {
		return Manifest{}, bad("format %q, want %q", m.Format, Format)
	}
	if m.Database != string(store.SQLite) && m.Database != string(store.Postgres) {
		return Manifest{}, bad("database %q", m.Database)
	}
	want := map[string]File{}
	for _, f := range m.Files {
		if !allowedPath(f.Path) {
			return Manifest{}, bad("entry %q is not one a data dir holds", f.Path)
		}
		if _, dup := want[f.Path]; dup {
			return Manifest{}, bad("entry %q listed twice", f.Path)
		}
		if f.Size < 0 {
			return Manifest{}, bad("entry %q: negative size", f.Path)
		}
		want[f.Path] = f
	}
	if _, ok := want[KeyringName]; !ok {
		return Manifest{}, bad("no %s: without it no stored secret can be read", KeyringName)
	}
	if _, ok := want[DBName]; !ok && m.Database == string(store.SQLite) {
		return Manifest{}, bad("a SQLite backup without %s", DBName)
	}
	seen := map[string]bool{}
	for {
		if err := ctx.Err(); err != nil {
			return Manifest{}, err
		}
		hd, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Manifest{}, bad("%v", err)
		}
		f, ok := want[hd.Name]
		if !ok || hd.Typeflag != tar.TypeReg {
			return Manifest{}, bad("entry %q is not in the manifest", hd.Name)
		}
		if seen[hd.Name] {
			return Manifest{}, bad("entry %q appears twice", hd.Name)
		}
		seen[hd.Name] = true
		if hd.Size != f.Size {
			return Manifest{}, bad("entry %q: %d bytes, the manifest says %d", hd.Name, hd.Size, f.Size)
		}
		to := filepath.Join(dir, filepath.FromSlash(hd.Name))
		if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
			return Manifest{}, fmt.Errorf("restore: %w", err)
		}
		if err := extract(tr, to, f); err != nil {
			return Manifest{}, err
		}
	}
	for p := range want {
		if !seen[p] {
			return Manifest{}, bad("entry %q is missing", p)
		}
	}
	return m, nil
}

func extract(r io.Reader, to string, f File) error {
	out, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, os.FileMode(f.Mode&0o644)|0o600)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), io.LimitReader(r, f.Size))
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("restore %s: %w", f.Path, err)
	}
	if n != f.Size || hex.EncodeToString(h.Sum(nil)) != f.SHA256 {
		return problem.Validation("give a file made by devpilot backup, unchanged",
			"not a valid devpilot backup: entry %q does not match its sha256 in the manifest", f.Path)
	}
	return nil
}
