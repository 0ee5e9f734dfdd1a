// Package release signs and verifies agent releases. A release signing key
// is an ed25519 key kept offline by the operator (devpilot agents keygen);
// the control plane and the agents know only its public half. A signature
// covers Statement(version, os, arch, sha256), so an old binary relabelled
// as a newer version, or a binary for another platform, does not verify.
//
// Both the control plane (which refuses to add a badly signed release) and
// the agent (which refuses to install one, whatever the control plane
// serves) use Verify. Standard library only.
package release

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Builtin is a comma-separated list of release public keys (text form)
// compiled into the agent (make build RELEASE_KEYS=k1,k2, i.e. -X
// github.com/devpilot/devpilot/shared/release.Builtin=…). An agent trusts
// the keys it pinned at install plus these: that is how a key rotation
// reaches servers — a release signed by the old key carries the new one.
var Builtin = ""

// BuiltinPublicKeys decodes Builtin; a key that does not decode is
// skipped (a build mistake must not stop the agent).
func BuiltinPublicKeys() []ed25519.PublicKey {
	var out []ed25519.PublicKey
	for _, s := range strings.Split(Builtin, ",") {
		if k, err := ParsePublicKey(s); err == nil && strings.TrimSpace(s) != "" {
			out = append(out, k)
		}
	}
	return out
}

// Statement is what a release signature signs.
func Statement(version, goos, goarch, sha256Hex string) []byte {
	return []byte("devpilot-agent-release-v1\x00" + version + "\x00" + goos + "\x00" + goarch + "\x00" + strings.ToLower(sha256Hex))
}

// Sig is the content of a BINARY.sig file (JSON): the signed statement's
// fields, the size, and the signature.
type Sig struct {
	Version   string `json:"version"`
	OS        string `json:"os"`
	Arch      string `json:"arch"`
	SHA256    string `json:"sha256"`
	Size      int64  `json:"size"`
	Signature string `json:"signature"` // base64 ed25519 over Statement
	KeyID     string `json:"key_id"`    // KeyID of the signing key's public half
}

// ErrBadSignature: no pinned key verifies the signature.
var ErrBadSignature = errors.New("the release signature does not verify against any trusted release key")

// Sign hashes the binary from r and signs its statement.
func Sign(key ed25519.PrivateKey, r io.Reader, version, goos, goarch string) (Sig, error) {
	if err := CheckVersion(version); err != nil {
		return Sig{}, err
	}
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil {
		return Sig{}, fmt.Errorf("sign: read binary: %w", err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	sig := ed25519.Sign(key, Statement(version, goos, goarch, sum))
	return Sig{Version: version, OS: goos, Arch: goarch, SHA256: sum, Size: n,
		Signature: base64.StdEncoding.EncodeToString(sig), KeyID: KeyID(key.Public().(ed25519.PublicKey))}, nil
}

// Verify checks a signature over the statement against trusted keys.
func Verify(keys []ed25519.PublicKey, version, goos, goarch, sha256Hex, signatureB64 string) error {
	sig, err := base64.StdEncoding.DecodeString(signatureB64)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("%w (the signature is not base64 ed25519)", ErrBadSignature)
	}
	if len(keys) == 0 {
		return fmt.Errorf("%w (no release key is trusted)", ErrBadSignature)
	}
	msg := Statement(version, goos, goarch, sha256Hex)
	for _, k := range keys {
		if len(k) == ed25519.PublicKeySize && ed25519.Verify(k, msg, sig) {
			return nil
		}
	}
	return ErrBadSignature
}

// CheckVersion accepts versions made of letters, digits, dots, dashes,
// pluses and underscores (1.4.0, 1.4.0-rc.1+abc), at most 64 characters,
// so a version is safe as a path element.
func CheckVersion(v string) error {
	if v == "" || len(v) > 64 || v == "." || v == ".." {
		return fmt.Errorf("version %q: give 1 to 64 letters, digits, '.', '-', '+' or '_'", v)
	}
	for _, c := range v {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune(".-+_", c)
		if !ok {
			return fmt.Errorf("version %q: give 1 to 64 letters, digits, '.', '-', '+' or '_'", v)
		}
	}
	return nil
}

// KeyID names a public key: the first 8 bytes of its sha256, hex.
func KeyID(pub ed25519.PublicKey) string {
	s := sha256.Sum256(pub)
	return hex.EncodeToString(s[:8])
}

// GenerateKey makes a signing key.
func GenerateKey() (ed25519.PrivateKey, error) {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	return k, err
}

// MarshalPrivateKey encodes a signing key as PKCS#8 PEM.
func MarshalPrivateKey(k ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePrivateKey reads a PKCS#8 PEM ed25519 key.
func ParsePrivateKey(b []byte) (ed25519.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("release key: not a PEM PRIVATE KEY (make one with devpilot agents keygen)")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("release key: %w", err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, errors.New("release key: not an ed25519 key")
	}
	return ek, nil
}

// EncodePublicKey is the one-line text form of a public key (base64 of
// its 32 bytes), as printed by keygen and carried in user-data.
func EncodePublicKey(pub ed25519.PublicKey) string {
	return base64.StdEncoding.EncodeToString(pub)
}

// ParsePublicKeys reads public keys, one per line in the text form
// (blank lines and lines starting with # skipped) or PEM PUBLIC KEY blocks.
func ParsePublicKeys(b []byte) ([]ed25519.PublicKey, error) {
	var out []ed25519.PublicKey
	rest := b
	for {
		blk, r := pem.Decode(rest)
		if blk == nil {
			break
		}
		rest = r
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("release public key: %w", err)
		}
		ek, ok := k.(ed25519.PublicKey)
		if !ok {
			return nil, errors.New("release public key: not an ed25519 key")
		}
		out = append(out, ek)
	}
	if len(out) > 0 {
		return out, nil
	}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, err := ParsePublicKey(line)
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	if len(out) == 0 {
		return nil, errors.New("release public key: none found")
	}
	return out, nil
}

// ParsePublicKey reads one key in the text form.
func ParsePublicKey(s string) (ed25519.PublicKey, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("release public key %q: want the base64 of 32 bytes, as devpilot agents keygen prints", cut(s, 16))
	}
	return ed25519.PublicKey(b), nil
}

// ParseSig decodes a .sig file.
func ParseSig(b []byte) (Sig, error) {
	var s Sig
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("release signature file: %w", err)
	}
	if s.Signature == "" || s.SHA256 == "" || s.Version == "" {
		return s, errors.New("release signature file: missing version, sha256 or signature")
	}
	return s, nil
}

func cut(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}
