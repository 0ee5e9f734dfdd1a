// Package update installs agent releases the control plane sends
// (protocol 1.2 update), safely:
//
//  1. The update id is recorded first (UpdatesSeen): an id is handled once,
//     so a control plane that sends it again after a restart never gets a
//     second install.
//  2. The binary is downloaded from the control plane over the session's
//     pinned TLS channel into versions/<v>.partial-<id>/, its size and
//     sha256 checked, and its signature verified against the release keys
//     pinned at install (config.ReleaseKeys). A binary that fails is
//     refused and deleted, whatever the control plane said about it.
//  3. It is installed beside the running one (versions/<v>/), the pending
//     marker written (id, from, to, deadline), and the current link
//     flipped atomically (rename of a new symlink over it).
//  4. A deadline is armed (systemd-run, a transient timer running the
//     update guard) and the caller says goodbye and exits: systemd starts
//     current, i.e. the new version.
//
// The rollback is not in this code: the update guard (packaging.UpdateGuard,
// a sh script run as ExecStartPre= and by the deadline timer) restores the
// previous version after a few failed starts or at the deadline. The new
// version clears the marker only after an authenticated session (Welcomed).
// Whichever binary runs afterwards reports the outcome in its hello
// (LastUpdate) until the hub acknowledges it.
package update

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/agent/layout"
	"github.com/devpilot/devpilot/packaging"
	"github.com/devpilot/devpilot/shared/atomicfile"
	"github.com/devpilot/devpilot/shared/protocol"
	"github.com/devpilot/devpilot/shared/release"
)

// MaxBinaryBytes bounds a download.
const MaxBinaryBytes = 512 << 20

// DefaultWindow is how long a new version has to get an authenticated
// session before the guard's deadline rolls it back.
const DefaultWindow = 3 * time.Minute

// keepVersions is how many installed versions are kept (the running one,
// the one before, and one more).
const keepVersions = 3

// ErrAlreadyHandled: the update id was handled before (not installed again).
var ErrAlreadyHandled = errors.New("update already handled")

// Options configure an Updater.
type Options struct {
	Paths   layout.Paths
	Keys    []ed25519.PublicKey // pinned release keys
	Version string              // the running version
	GOOS    string              // default runtime.GOOS
	GOARCH  string              // default runtime.GOARCH
	// Window is how long the new version has to get a session; default
	// DefaultWindow.
	Window time.Duration
	// ArmDeadline arranges for `update-guard.sh deadline ID` to run after
	// window (systemd-run on a real server). nil: the supervisor honours
	// the marker's deadline itself (the dev sandbox does).
	ArmDeadline func(ctx context.Context, id string, window time.Duration) error
	Log         *zap.Logger
	Now         func() time.Time
	// DownloadRetry is the first wait before a download cut short (the
	// control plane restarting, a dropped connection, a 5xx) is tried
	// again; it doubles up to 15 s, for downloadAttempts attempts in all.
	// Default 1 s.
	DownloadRetry time.Duration
}

// Updater installs updates and reports their outcome.
type Updater struct {
	o  Options
	mu sync.Mutex // one install at a time
}

// New returns an Updater.
func New(o Options) *Updater {
	if o.GOOS == "" {
		o.GOOS = runtime.GOOS
	}
	if o.GOARCH == "" {
		o.GOARCH = runtime.GOARCH
	}
	if o.Window <= 0 {
		o.Window = DefaultWindow
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.DownloadRetry <= 0 {
		o.DownloadRetry = time.Second
	}
	return &Updater{o: o}
}

// Pending is the marker of an update in progress.
type Pending struct {
	ID       string
	From     string
	To       string
	Deadline time.Time
}

// ReadPending reads the marker; ok false when there is none.
func ReadPending(p layout.Paths) (Pending, bool) {
	b, err := os.ReadFile(p.UpdatePending())
	if err != nil {
		return Pending{}, false
	}
	var m Pending
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, "=")
		switch k {
		case "id":
			m.ID = v
		case "from":
			m.From = v
		case "to":
			m.To = v
		case "deadline":
			n, _ := strconv.ParseInt(v, 10, 64)
			m.Deadline = time.Unix(n, 0)
		}
	}
	return m, m.ID != ""
}

// pendingMine is the pending update this binary is: the current link
// points at its version directory and this is not the version it
// replaced (a release labelled unlike its build's version still counts).
func (u *Updater) pendingMine() (Pending, bool) {
	m, ok := ReadPending(u.o.Paths)
	if !ok || CurrentVersion(u.o.Paths) != m.To || (u.o.Version == m.From && m.From != m.To) {
		return Pending{}, false
	}
	return m, true
}

func writePending(p layout.Paths, m Pending) error {
	s := "id=" + m.ID + "\nfrom=" + m.From + "\nto=" + m.To + "\ndeadline=" + strconv.FormatInt(m.Deadline.Unix(), 10) + "\n"
	_ = os.Remove(p.UpdatePending() + ".starts")
	return atomicfile.WriteFile(p.UpdatePending(), []byte(s), 0o600)
}

// LastUpdate is what the hello reports: the pending update this binary
// is (updated, confirmed by the welcome), or the recorded outcome of the
// last one (a rollback the guard wrote, a refusal) not yet acknowledged.
func (u *Updater) LastUpdate() *protocol.LastUpdate {
	if m, ok := u.pendingMine(); ok {
		return &protocol.LastUpdate{ID: m.ID, Result: protocol.UpdateResultUpdated, From: m.From, To: m.To}
	}
	b, err := os.ReadFile(u.o.Paths.UpdateResult())
	if err != nil {
		return nil
	}
	var lu protocol.LastUpdate
	if json.Unmarshal(b, &lu) != nil || lu.ID == "" {
		return nil
	}
	return &lu
}

// Welcomed runs after an authenticated welcome; ack is its
// last_update_ack. A pending update this binary is becomes a success
// (marker cleared, so the guard leaves it alone), and an acknowledged
// outcome is no longer reported.
func (u *Updater) Welcomed(ack string) {
	p := u.o.Paths
	if m, ok := u.pendingMine(); ok {
		if m.ID != ack {
			// Keep reporting it until a hub records it.
			lu := protocol.LastUpdate{ID: m.ID, Result: protocol.UpdateResultUpdated, From: m.From, To: m.To}
			if err := u.writeResult(lu); err != nil {
				u.o.Log.Error("record the update's outcome", zap.Error(err))
			}
		}
		_ = os.Remove(p.UpdatePending() + ".starts")
		if err := os.Remove(p.UpdatePending()); err != nil && !errors.Is(err, os.ErrNotExist) {
			u.o.Log.Error("clear the pending update marker", zap.Error(err))
		}
		u.o.Log.Info("update confirmed: this version has a session", zap.String("update", m.ID),
			zap.String("from", m.From), zap.String("to", m.To))
		return
	}
	if ack == "" {
		return
	}
	if lu := u.LastUpdate(); lu != nil && lu.ID == ack {
		if err := os.Remove(p.UpdateResult()); err != nil && !errors.Is(err, os.ErrNotExist) {
			u.o.Log.Error("clear the reported update outcome", zap.Error(err))
		}
	}
}

func (u *Updater) writeResult(lu protocol.LastUpdate) error {
	b, _ := json.Marshal(lu)
	return atomicfile.WriteFile(u.o.Paths.UpdateResult(), append(b, '\n'), 0o600)
}

// Get fetches a path from the control plane over the pinned channel.
type Get func(ctx context.Context, path string) (*http.Response, error)

// Install handles one update message. status reports progress (best
// effort). nil means the new version is in place: the caller says goodbye
// and exits so the supervisor starts it. ErrAlreadyHandled: nothing done.
func (u *Updater) Install(ctx context.Context, up protocol.Update, get Get, status func(protocol.UpdateStatus)) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	log := u.o.Log.With(zap.String("update", up.ID), zap.String("version", up.Version))
	report := func(state string, err error) {
		st := protocol.UpdateStatus{ID: up.ID, State: state}
		if err != nil {
			st.Error = cut(err.Error(), protocol.MaxReasonBytes)
		}
		status(st)
	}
	if err := checkID(up.ID); err != nil {
		log.Warn("ignoring an update with a bad id", zap.Error(err))
		return err
	}
	seen, err := u.seen(up.ID)
	if err != nil {
		report(protocol.UpdateFailed, err)
		return err
	}
	if seen {
		log.Info("update already handled; not installing it again")
		return ErrAlreadyHandled
	}
	if err := u.markSeen(up.ID); err != nil {
		report(protocol.UpdateFailed, err)
		return err
	}
	fail := func(state string, err error) error {
		log.Warn("update "+state, zap.Error(err))
		report(state, err)
		result := protocol.UpdateResultFailed
		if state == protocol.UpdateRefused {
			result = protocol.UpdateResultRefused
		}
		if werr := u.writeResult(protocol.LastUpdate{ID: up.ID, Result: result, From: u.o.Version, To: up.Version,
			Reason: cut(err.Error(), protocol.MaxReasonBytes)}); werr != nil {
			log.Error("record the update's outcome", zap.Error(werr))
		}
		return err
	}
	if err := release.CheckVersion(up.Version); err != nil {
		return fail(protocol.UpdateRefused, err)
	}
	if up.Version == u.o.Version {
		return fail(protocol.UpdateRefused, fmt.Errorf("version %s is the one running", up.Version))
	}
	if !strings.HasPrefix(up.URL, "/") || strings.HasPrefix(up.URL, "//") || strings.Contains(up.URL, "..") {
		return fail(protocol.UpdateRefused, fmt.Errorf("url %q is not a path on the control plane", cut(up.URL, 80)))
	}
	if up.Size <= 0 || up.Size > MaxBinaryBytes {
		return fail(protocol.UpdateRefused, fmt.Errorf("size %d is out of range (1 to %d bytes)", up.Size, MaxBinaryBytes))
	}
	// The signature first: a release not signed by a pinned key is not
	// even downloaded. The sha256 it covers is checked against the bytes.
	if err := release.Verify(u.o.Keys, up.Version, u.o.GOOS, u.o.GOARCH, up.SHA256, up.Signature); err != nil {
		return fail(protocol.UpdateRefused, fmt.Errorf("%w (%d key(s) pinned at install)", err, len(u.o.Keys)))
	}
	report(protocol.UpdateDownloading, nil)
	p := u.o.Paths
	if err := os.MkdirAll(p.VersionsDir(), 0o755); err != nil {
		return fail(protocol.UpdateFailed, err)
	}
	partial := filepath.Join(p.VersionsDir(), up.Version+".partial-"+up.ID)
	_ = os.RemoveAll(partial)
	if err := os.MkdirAll(partial, 0o755); err != nil {
		return fail(protocol.UpdateFailed, err)
	}
	defer func() { _ = os.RemoveAll(partial) }()
	bin := filepath.Join(partial, "devpilot-agent")
	if err := u.downloadRetrying(ctx, log, get, up, bin); err != nil {
		if errors.Is(err, errMismatch) {
			return fail(protocol.UpdateRefused, err)
		}
		return fail(protocol.UpdateFailed, err)
	}
	report(protocol.UpdateVerified, nil)
	log.Info("update verified", zap.String("sha256", up.SHA256))

	report(protocol.UpdateInstalling, nil)
	if err := u.ensureGuard(); err != nil {
		return fail(protocol.UpdateFailed, err)
	}
	from := u.o.Version
	if _, err := os.Stat(p.VersionBinary(from)); err != nil {
		return fail(protocol.UpdateFailed, fmt.Errorf("the running version %s is not installed under %s, so it could not be rolled back to (reinstall with devpilot-agent install): %w", from, p.VersionsDir(), err))
	}
	dst := filepath.Join(p.VersionsDir(), up.Version)
	_ = os.RemoveAll(dst)
	if err := os.Rename(partial, dst); err != nil {
		return fail(protocol.UpdateFailed, err)
	}
	syncDir(p.VersionsDir())
	m := Pending{ID: up.ID, From: from, To: up.Version, Deadline: u.o.Now().Add(u.o.Window)}
	if err := writePending(p, m); err != nil {
		return fail(protocol.UpdateFailed, err)
	}
	if err := PointCurrent(p, up.Version); err != nil {
		_ = os.Remove(p.UpdatePending())
		return fail(protocol.UpdateFailed, err)
	}
	if u.o.ArmDeadline != nil {
		if err := u.o.ArmDeadline(ctx, up.ID, u.o.Window); err != nil {
			// The start counter still guards a crashing version; a hung
			// one is then caught by the next start after the deadline.
			log.Warn("could not arm the update deadline timer", zap.Error(err))
		}
	}
	u.prune(from, up.Version)
	report(protocol.UpdateRestarting, nil)
	log.Info("update installed; restarting into it", zap.String("from", from), zap.Time("deadline", m.Deadline))
	return nil
}

var errMismatch = errors.New("the downloaded binary is not the release")

// downloadAttempts bounds downloadRetrying: with waits of 1, 2, 4, 8 and
// 15 s, a download survives a control plane that is back within 30 s.
const downloadAttempts = 6

// errRetryable marks a download failure worth another attempt: the
// transfer was cut short or the control plane answered 5xx.
type errRetryable struct{ err error }

func (e errRetryable) Error() string { return e.err.Error() }
func (e errRetryable) Unwrap() error { return e.err }

// downloadRetrying is download, tried again after a failure that another
// attempt may not have (a control plane killed mid-transfer comes back);
// a wrong binary, a 4xx, or ctx ending stops it at once.
func (u *Updater) downloadRetrying(ctx context.Context, log *zap.Logger, get Get, up protocol.Update, path string) error {
	wait := u.o.DownloadRetry
	for attempt := 1; ; attempt++ {
		err := download(ctx, get, up, path)
		var r errRetryable
		if err == nil || !errors.As(err, &r) || attempt == downloadAttempts || ctx.Err() != nil {
			return err
		}
		log.Warn("download failed; trying again", zap.Int("attempt", attempt), zap.Duration("wait", wait), zap.Error(err))
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, 15*time.Second)
	}
}

func download(ctx context.Context, get Get, up protocol.Update, path string) error {
	resp, err := get(ctx, up.URL)
	if err != nil {
		return errRetryable{fmt.Errorf("download: %w", err)}
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode >= 500 {
		return errRetryable{fmt.Errorf("download: %s", resp.Status)}
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("download: %s", resp.Status)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(resp.Body, up.Size+1))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return errRetryable{fmt.Errorf("download: %w", err)}
	}
	if n != up.Size {
		return fmt.Errorf("%w: got %d bytes, the release has %d", errMismatch, n, up.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != strings.ToLower(up.SHA256) {
		return fmt.Errorf("%w: sha256 %s, the signed release has %s", errMismatch, got, up.SHA256)
	}
	return nil
}

// PointCurrent flips the current link to versions/<v> atomically.
func PointCurrent(p layout.Paths, v string) error {
	tmp := p.Current() + ".new"
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.Join("versions", v), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, p.Current()); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	syncDir(p.LibDir())
	return nil
}

// CurrentVersion is the version the current link points at ("" if none).
func CurrentVersion(p layout.Paths) string {
	t, err := os.Readlink(p.Current())
	if err != nil {
		return ""
	}
	return filepath.Base(t)
}

func (u *Updater) ensureGuard() error {
	b, err := os.ReadFile(u.o.Paths.UpdateGuard())
	if err == nil && string(b) == packaging.UpdateGuard {
		return nil
	}
	return atomicfile.WriteFile(u.o.Paths.UpdateGuard(), []byte(packaging.UpdateGuard), 0o755)
}

// prune removes installed versions beyond keepVersions, oldest by
// modification time first; the versions in keep always stay.
func (u *Updater) prune(keep ...string) {
	dir := u.o.Paths.VersionsDir()
	ents, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	type ver struct {
		name string
		mod  time.Time
	}
	var vs []ver
	for _, e := range ents {
		if !e.IsDir() || strings.Contains(e.Name(), ".partial-") || slices.Contains(keep, e.Name()) {
			continue
		}
		if fi, err := e.Info(); err == nil {
			vs = append(vs, ver{e.Name(), fi.ModTime()})
		}
	}
	slices.SortFunc(vs, func(a, b ver) int { return b.mod.Compare(a.mod) })
	for i, v := range vs {
		if i+len(keep) >= keepVersions {
			_ = os.RemoveAll(filepath.Join(dir, v.name))
		}
	}
}

const maxSeen = 64

func (u *Updater) seen(id string) (bool, error) {
	b, err := os.ReadFile(u.o.Paths.UpdatesSeen())
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return slices.Contains(strings.Fields(string(b)), id), nil
}

func (u *Updater) markSeen(id string) error {
	b, _ := os.ReadFile(u.o.Paths.UpdatesSeen())
	ids := append(strings.Fields(string(b)), id)
	if len(ids) > maxSeen {
		ids = ids[len(ids)-maxSeen:]
	}
	return atomicfile.WriteFile(u.o.Paths.UpdatesSeen(), []byte(strings.Join(ids, "\n")+"\n"), 0o600)
}

func checkID(id string) error {
	if id == "" || len(id) > 128 {
		return errors.New("update id: 1 to 128 characters")
	}
	for _, c := range id {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("update id %q: letters, digits, '_' and '-' only", cut(id, 32))
		}
	}
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
}

func cut(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
