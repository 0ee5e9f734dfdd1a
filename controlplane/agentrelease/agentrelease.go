// Package agentrelease is the control plane's catalogue of signed agent
// releases: several versions per os/arch, each a devpilot-agent binary and
// the .sig file `devpilot agents sign` wrote for it (shared/release). They
// live in a releases directory below the data dir,
//
//	<data-dir>/agent-releases/<version>/<os>-<arch>/devpilot-agent
//	<data-dir>/agent-releases/<version>/<os>-<arch>/devpilot-agent.sig
//
// and the same layout is also read below <agent-dir>/releases. Add copies
// a binary in with its .sig and refuses one whose signature does not
// verify against the configured release public keys; List and Get skip
// releases whose signature does not (the agent would refuse them anyway).
package agentrelease

import (
	"cmp"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/devpilot/devpilot/shared/atomicfile"
	"github.com/devpilot/devpilot/shared/release"
)

// DirName is the releases directory below the data dir (and below
// "releases" in the agent dir).
const DirName = "agent-releases"

// BinaryName and SigName are the files of one release.
const (
	BinaryName = "devpilot-agent"
	SigName    = "devpilot-agent.sig"
)

// DownloadRoute is where agents download a release (unauthenticated, like
// the install download: the signature, not the channel, vouches for it).
const DownloadRoute = "/v1/agent/releases/{version}/{os}/{arch}"

// DownloadPath is DownloadRoute for one release.
func DownloadPath(version, goos, arch string) string {
	return "/v1/agent/releases/" + version + "/" + goos + "/" + arch
}

// Release is one signed build.
type Release struct {
	Version   string
	OS        string
	Arch      string
	SHA256    string
	Signature string // base64 ed25519 over release.Statement
	KeyID     string
	Size      int64
	Path      string // the binary on disk
}

// ErrNotFound: no such release.
var ErrNotFound = errors.New("agent release not found")

// Store reads and adds releases.
type Store struct {
	dir   string   // where Add writes
	extra []string // read-only directories with the same layout
	keys  []ed25519.PublicKey
}

// New returns the store of dir (created on Add), also reading extra.
func New(dir string, keys []ed25519.PublicKey, extra ...string) *Store {
	return &Store{dir: dir, extra: extra, keys: keys}
}

// Keys are the release public keys the store trusts.
func (s *Store) Keys() []ed25519.PublicKey { return s.keys }

// Dir is where Add writes.
func (s *Store) Dir() string { return s.dir }

// Add verifies binPath against binPath+".sig" and the trusted keys and
// copies both in. version must match the .sig's (a relabelled binary is
// refused); the same release added again is a no-op.
func (s *Store) Add(binPath, version string) (Release, error) {
	if len(s.keys) == 0 {
		return Release{}, errors.New("add release: no release public key is configured (give --agent-release-key FILE; make one with devpilot agents keygen)")
	}
	sb, err := os.ReadFile(binPath + ".sig")
	if err != nil {
		return Release{}, fmt.Errorf("add release: read signature: %w (sign it first: devpilot agents sign --key KEY %s --version %s)", err, binPath, version)
	}
	sig, err := release.ParseSig(sb)
	if err != nil {
		return Release{}, fmt.Errorf("add release: %w", err)
	}
	if version != "" && sig.Version != version {
		return Release{}, fmt.Errorf("add release: %s.sig signs version %s, not %s", binPath, sig.Version, version)
	}
	if err := release.CheckVersion(sig.Version); err != nil {
		return Release{}, fmt.Errorf("add release: %w", err)
	}
	if err := checkPlatform(sig.OS, sig.Arch); err != nil {
		return Release{}, fmt.Errorf("add release: %w", err)
	}
	bin, err := os.ReadFile(binPath)
	if err != nil {
		return Release{}, fmt.Errorf("add release: %w", err)
	}
	sum := sha256.Sum256(bin)
	if got := hex.EncodeToString(sum[:]); got != strings.ToLower(sig.SHA256) || int64(len(bin)) != sig.Size {
		return Release{}, fmt.Errorf("add release: %s is not the binary its .sig describes (sha256 %s, size %d; the .sig says %s, %d)", binPath, got, len(bin), sig.SHA256, sig.Size)
	}
	if err := release.Verify(s.keys, sig.Version, sig.OS, sig.Arch, sig.SHA256, sig.Signature); err != nil {
		return Release{}, fmt.Errorf("add release: %w (signed with key %s; this control plane trusts %s)", err, sig.KeyID, strings.Join(s.keyIDs(), ", "))
	}
	dir := filepath.Join(s.dir, sig.Version, sig.OS+"-"+sig.Arch)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Release{}, fmt.Errorf("add release: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, BinaryName), bin, 0o755); err != nil {
		return Release{}, fmt.Errorf("add release: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, SigName), sb, 0o644); err != nil {
		return Release{}, fmt.Errorf("add release: %w", err)
	}
	return fromSig(sig, filepath.Join(dir, BinaryName)), nil
}

func (s *Store) keyIDs() []string {
	var ids []string
	for _, k := range s.keys {
		ids = append(ids, release.KeyID(k))
	}
	return ids
}

func fromSig(sig release.Sig, path string) Release {
	return Release{Version: sig.Version, OS: sig.OS, Arch: sig.Arch, SHA256: strings.ToLower(sig.SHA256), Signature: sig.Signature,
		KeyID: sig.KeyID, Size: sig.Size, Path: path}
}

func checkPlatform(goos, arch string) error {
	if goos != "linux" || (arch != "amd64" && arch != "arm64") {
		return fmt.Errorf("platform %s/%s: agents run on linux/amd64 and linux/arm64", goos, arch)
	}
	return nil
}

// List returns every release that verifies, newest version first, then
// by os and arch. The first directory holding a version/os/arch wins.
func (s *Store) List() ([]Release, error) {
	seen := map[string]bool{}
	var out []Release
	for _, root := range append([]string{s.dir}, s.extra...) {
		versions, err := os.ReadDir(root)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("agent releases: %w", err)
		}
		for _, v := range versions {
			if !v.IsDir() || release.CheckVersion(v.Name()) != nil {
				continue
			}
			plats, err := os.ReadDir(filepath.Join(root, v.Name()))
			if err != nil {
				continue
			}
			for _, p := range plats {
				r, ok := s.read(filepath.Join(root, v.Name(), p.Name()), v.Name(), p.Name())
				key := r.Version + "/" + r.OS + "/" + r.Arch
				if !ok || seen[key] {
					continue
				}
				seen[key] = true
				out = append(out, r)
			}
		}
	}
	slices.SortFunc(out, func(a, b Release) int {
		if c := CompareVersions(b.Version, a.Version); c != 0 {
			return c
		}
		return cmp.Or(cmp.Compare(a.OS, b.OS), cmp.Compare(a.Arch, b.Arch))
	})
	return out, nil
}

// read loads one release directory; false if it is not a release that
// verifies (wrong names, a .sig for another version or platform, a bad
// signature, a missing binary).
func (s *Store) read(dir, version, plat string) (Release, bool) {
	sb, err := os.ReadFile(filepath.Join(dir, SigName))
	if err != nil {
		return Release{}, false
	}
	sig, err := release.ParseSig(sb)
	if err != nil || sig.Version != version || sig.OS+"-"+sig.Arch != plat {
		return Release{}, false
	}
	if release.Verify(s.keys, sig.Version, sig.OS, sig.Arch, sig.SHA256, sig.Signature) != nil {
		return Release{}, false
	}
	bin := filepath.Join(dir, BinaryName)
	if fi, err := os.Stat(bin); err != nil || !fi.Mode().IsRegular() {
		return Release{}, false
	}
	return fromSig(sig, bin), true
}

// Get returns one release.
func (s *Store) Get(version, goos, arch string) (Release, error) {
	if release.CheckVersion(version) != nil || checkPlatform(goos, arch) != nil {
		return Release{}, ErrNotFound
	}
	for _, root := range append([]string{s.dir}, s.extra...) {
		if r, ok := s.read(filepath.Join(root, version, goos+"-"+arch), version, goos+"-"+arch); ok {
			return r, nil
		}
	}
	return Release{}, ErrNotFound
}

// Versions returns the distinct versions, newest first.
func (s *Store) Versions() ([]string, error) {
	rs, err := s.List()
	if err != nil {
		return nil, err
	}
	var vs []string
	for _, r := range rs {
		if !slices.Contains(vs, r.Version) {
			vs = append(vs, r.Version)
		}
	}
	return vs, nil
}

// Open opens a release's binary.
func (r Release) Open() (io.ReadSeekCloser, error) { return os.Open(r.Path) }

// CompareVersions orders versions by their dot-separated numeric parts
// (1.10.0 after 1.9.2), a pre-release ("-rc.1") before its release, and
// anything else by text.
func CompareVersions(a, b string) int {
	ac, apre, _ := strings.Cut(strings.SplitN(a, "+", 2)[0], "-")
	bc, bpre, _ := strings.Cut(strings.SplitN(b, "+", 2)[0], "-")
	as, bs := strings.Split(ac, "."), strings.Split(bc, ".")
	for i := 0; i < max(len(as), len(bs)); i++ {
		var x, y string
		if i < len(as) {
			x = as[i]
		}
		if i < len(bs) {
			y = bs[i]
		}
		xn, xerr := strconv.Atoi(cmp.Or(x, "0"))
		yn, yerr := strconv.Atoi(cmp.Or(y, "0"))
		if xerr == nil && yerr == nil {
			if c := cmp.Compare(xn, yn); c != 0 {
				return c
			}
			continue
		}
		if c := cmp.Compare(x, y); c != 0 {
			return c
		}
	}
	switch {
	case apre == "" && bpre != "":
		return 1
	case apre != "" && bpre == "":
		return -1
	}
	return cmp.Compare(apre, bpre)
}
