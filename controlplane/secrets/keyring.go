package secrets

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/devpilot/devpilot/shared/atomicfile"
)

// Errors callers can test for with errors.Is. The messages wrapping them
// name the file or key id involved and what to do; they never contain a
// plaintext, a ciphertext or key material.
var (
	// ErrKeyringPerms: the keyring file is readable or writable by group or others.
	ErrKeyringPerms = errors.New("keyring file permissions too open")
	// ErrKeyringInvalid: the keyring file cannot be parsed or is inconsistent.
	ErrKeyringInvalid = errors.New("invalid keyring file")
	// ErrMalformed: the ciphertext is not in the "v1.<keyid>.<payload>" format.
	ErrMalformed = errors.New("malformed ciphertext")
	// ErrUnknownKey: the ciphertext names a key id the keyring does not hold
	// (retired, or a keyring from another installation).
	ErrUnknownKey = errors.New("unknown key id")
	// ErrDecrypt: authentication failed: the ciphertext was altered, or it
	// belongs to another record (the record id is part of the associated data).
	ErrDecrypt = errors.New("decryption failed")
	// ErrActiveKey: the active key cannot be retired.
	ErrActiveKey = errors.New("key is active")
	// ErrEmptyRecordID: Encrypt and Decrypt need the record id the secret belongs to.
	ErrEmptyRecordID = errors.New("empty record id")
)

const (
	// KeyringFileName is the keyring's file name inside the data dir.
	KeyringFileName = "keyring.json"

	formatVersion = "v1"
	keySize       = 32 // AES-256
	nonceSize     = 12 // 96-bit GCM nonce
	tagSize       = 16
	aadPrefix     = "devpilot/secrets/" + formatVersion
	maxKeyIDLen   = 64
)

// DefaultKeyringPath is where the keyring lives when DEVPILOT_MASTER_KEY_FILE
// does not say otherwise: <dataDir>/keyring.json.
func DefaultKeyringPath(dataDir string) string {
	return filepath.Join(dataDir, KeyringFileName)
}

// Keyring holds the master keys that encrypt secrets at rest with
// AES-256-GCM. One key is active (used by Encrypt); the others are kept so
// that older ciphertexts still decrypt until they are re-encrypted and the
// key is retired. The keyring lives in a JSON file (mode 0600):
//
//	{"version":1,"active":"<id>","keys":[{"id":"<id>","key":"<base64 32 bytes>","created_at":"<RFC 3339>"}]}
//
// Ciphertexts are text, "v1.<keyid>.<base64url(nonce|ciphertext|tag)>", and
// authenticate "devpilot/secrets/v1" NUL keyid NUL recordID as associated data,
// so a ciphertext copied to another row, or relabelled with another key id,
// does not decrypt.
//
// A Keyring is safe for concurrent use. Rotate and Retire rewrite the file
// atomically; they assume this process is the file's only writer.
type Keyring struct {
	path string

	mu     sync.RWMutex
	active string
	keys   map[string]*masterKey // by id
	order  []string              // ids, oldest first (as in the file)
}

type masterKey struct {
	id      string
	raw     []byte
	created time.Time
	aead    cipher.AEAD
}

// KeyInfo describes one key of the keyring, without its material.
type KeyInfo struct {
	ID        string
	CreatedAt time.Time
	Active    bool
}

// keyringFile is the on-disk form.
type keyringFile struct {
	Version int            `json:"version"`
	Active  string         `json:"active"`
	Keys    []keyFileEntry `json:"keys"`
}

type keyFileEntry struct {
	ID        string    `json:"id"`
	Key       string    `json:"key"`
	CreatedAt time.Time `json:"created_at"`
}

// LoadKeyring reads an existing keyring file. It refuses a file that group
// or others can access, telling how to fix it (chmod 600).
func LoadKeyring(path string) (*Keyring, error) {
	if path == "" {
		return nil, errors.New("secrets: keyring path is empty")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("secrets: open keyring: %w", err)
	}
	defer func() { _ = f.Close() }()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("secrets: stat keyring: %w", err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("secrets: keyring %s is not a regular file: %w", path, ErrKeyringInvalid)
	}
	if runtime.GOOS != "windows" && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("secrets: keyring %s has mode %04o and can be read by group or others; run `chmod 600 %s` (and consider rotating the keys): %w",
			path, st.Mode().Perm(), path, ErrKeyringPerms)
	}
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("secrets: read keyring: %w", err)
	}
	k, err := parseKeyring(data)
	if err != nil {
		return nil, fmt.Errorf("secrets: keyring %s: %w", path, err)
	}
	k.path = path
	return k, nil
}

// LoadOrCreateKeyring loads the keyring at path, or, when the file does not
// exist, creates one with a single fresh key (file 0600; the parent
// directory is created 0700 if missing). Two processes racing to create it
// end up with the same keyring: the loser loads the winner's file.
func LoadOrCreateKeyring(path string) (*Keyring, error) {
	if path == "" {
		return nil, errors.New("secrets: keyring path is empty")
	}
	if _, err := os.Lstat(path); err == nil {
		return LoadKeyring(path)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("secrets: stat keyring: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("secrets: create keyring dir: %w", err)
	}
	k := &Keyring{path: path, keys: map[string]*masterKey{}}
	mk, err := newMasterKey(k.keys, time.Now())
	if err != nil {
		return nil, err
	}
	k.keys[mk.id] = mk
	k.active = mk.id
	k.order = []string{mk.id}
	data, err := marshalKeyring(k.active, k.order, k.keys)
	if err != nil {
		return nil, err
	}
	if err := writeFileAtomic(path, data, false); err != nil {
		if errors.Is(err, os.ErrExist) {
			return LoadKeyring(path)
		}
		return nil, err
	}
	return k, nil
}

func parseKeyring(data []byte) (*Keyring, error) {
	var kf keyringFile
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&kf); err != nil {
		// json errors quote offsets and types, not the key values.
		return nil, fmt.Errorf("%w: %w", ErrKeyringInvalid, err)
	}
	if kf.Version != 1 {
		return nil, fmt.Errorf("%w: version %d not supported (want 1)", ErrKeyringInvalid, kf.Version)
	}
	if len(kf.Keys) == 0 {
		return nil, fmt.Errorf("%w: no keys", ErrKeyringInvalid)
	}
	k := &Keyring{keys: make(map[string]*masterKey, len(kf.Keys))}
	for i, e := range kf.Keys {
		if !validKeyID(e.ID) {
			return nil, fmt.Errorf("%w: key #%d has an invalid id (1-%d characters of A-Z a-z 0-9 _ -)", ErrKeyringInvalid, i+1, maxKeyIDLen)
		}
		if _, dup := k.keys[e.ID]; dup {
			return nil, fmt.Errorf("%w: key id %q appears twice", ErrKeyringInvalid, e.ID)
		}
		raw, err := base64.StdEncoding.DecodeString(e.Key)
		if err != nil || len(raw) != keySize {
			return nil, fmt.Errorf("%w: key %q is not %d bytes of base64", ErrKeyringInvalid, e.ID, keySize)
		}
		mk, err := masterKeyFrom(e.ID, raw, e.CreatedAt)
		if err != nil {
			return nil, err
		}
		k.keys[e.ID] = mk
		k.order = append(k.order, e.ID)
	}
	if _, ok := k.keys[kf.Active]; !ok {
		return nil, fmt.Errorf("%w: active key %q is not in the keys list", ErrKeyringInvalid, kf.Active)
	}
	k.active = kf.Active
	return k, nil
}

func validKeyID(id string) bool {
	if id == "" || len(id) > maxKeyIDLen {
		return false
	}
	for _, c := range id {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

func masterKeyFrom(id string, raw []byte, created time.Time) (*masterKey, error) {
	block, err := aes.NewCipher(raw)
	if err != nil {
		return nil, fmt.Errorf("secrets: key %q: %w", id, err)
	}
	aead, err := cipher.NewGCMWithNonceSize(block, nonceSize)
	if err != nil {
		return nil, fmt.Errorf("secrets: key %q: %w", id, err)
	}
	return &masterKey{id: id, raw: raw, created: created.UTC(), aead: aead}, nil
}

// newMasterKey makes a random key whose id is not among existing.
func newMasterKey(existing map[string]*masterKey, now time.Time) (*masterKey, error) {
	raw := make([]byte, keySize)
	if _, err := rand.Read(raw); err != nil {
		return nil, fmt.Errorf("secrets: generate key: %w", err)
	}
	for {
		idb := make([]byte, 8)
		if _, err := rand.Read(idb); err != nil {
			return nil, fmt.Errorf("secrets: generate key id: %w", err)
		}
		id := hex.EncodeToString(idb)
		if _, taken := existing[id]; !taken {
			return masterKeyFrom(id, raw, now.Truncate(time.Second))
		}
	}
}

func aad(keyID, recordID string) []byte {
	b := make([]byte, 0, len(aadPrefix)+2+len(keyID)+len(recordID))
	b = append(b, aadPrefix...)
	b = append(b, 0)
	b = append(b, keyID...)
	b = append(b, 0)
	b = append(b, recordID...)
	return b
}

// Encrypt seals v under the active key, binding it to recordID (the id of
// the row that stores the result). The result is ASCII text,
// "v1.<keyid>.<base64url>", suitable for a TEXT column.
func (k *Keyring) Encrypt(v Value, recordID string) (string, error) {
	if recordID == "" {
		return "", fmt.Errorf("secrets: encrypt: %w", ErrEmptyRecordID)
	}
	k.mu.RLock()
	mk := k.keys[k.active]
	k.mu.RUnlock()

	buf := make([]byte, nonceSize, nonceSize+len(v.Reveal())+tagSize)
	if _, err := rand.Read(buf); err != nil {
		return "", fmt.Errorf("secrets: encrypt: nonce: %w", err)
	}
	sealed := mk.aead.Seal(buf, buf[:nonceSize], []byte(v.Reveal()), aad(mk.id, recordID))
	return formatVersion + "." + mk.id + "." + base64.RawURLEncoding.EncodeToString(sealed), nil
}

// parse splits a ciphertext into key id and nonce|ct|tag.
func parse(ciphertext string) (keyID string, payload []byte, err error) {
	ver, rest, ok := strings.Cut(ciphertext, ".")
	if !ok {
		return "", nil, fmt.Errorf("secrets: %w: want v1.<keyid>.<data>", ErrMalformed)
	}
	if ver != formatVersion {
		return "", nil, fmt.Errorf("secrets: %w: unsupported version %q", ErrMalformed, truncate(ver, 8))
	}
	keyID, data, ok := strings.Cut(rest, ".")
	if !ok || !validKeyID(keyID) {
		return "", nil, fmt.Errorf("secrets: %w: bad key id", ErrMalformed)
	}
	payload, err = base64.RawURLEncoding.DecodeString(data)
	if err != nil {
		return "", nil, fmt.Errorf("secrets: %w: bad base64", ErrMalformed)
	}
	if len(payload) < nonceSize+tagSize {
		return "", nil, fmt.Errorf("secrets: %w: too short", ErrMalformed)
	}
	return keyID, payload, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// KeyIDOf returns the id of the key a ciphertext was sealed with.
func KeyIDOf(ciphertext string) (string, error) {
	id, _, err := parse(ciphertext)
	return id, err
}

// Decrypt opens a ciphertext made by Encrypt for the same recordID. It fails
// with ErrDecrypt when the ciphertext was altered or belongs to another
// record, with ErrUnknownKey when its key was retired, with ErrMalformed when
// it is not a ciphertext at all.
func (k *Keyring) Decrypt(ciphertext, recordID string) (Value, error) {
	if recordID == "" {
		return Value{}, fmt.Errorf("secrets: decrypt: %w", ErrEmptyRecordID)
	}
	keyID, payload, err := parse(ciphertext)
	if err != nil {
		return Value{}, err
	}
	k.mu.RLock()
	mk := k.keys[keyID]
	k.mu.RUnlock()
	if mk == nil {
		return Value{}, fmt.Errorf("secrets: decrypt: %w %q (retired, or this keyring is not the one that encrypted it)", ErrUnknownKey, keyID)
	}
	pt, err := mk.aead.Open(nil, payload[:nonceSize], payload[nonceSize:], aad(keyID, recordID))
	if err != nil {
		return Value{}, fmt.Errorf("secrets: decrypt with key %q: %w (ciphertext altered or stored under another record)", keyID, ErrDecrypt)
	}
	v := New(string(pt))
	clear(pt)
	return v, nil
}

// ActiveID is the id of the key Encrypt uses.
func (k *Keyring) ActiveID() string {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return k.active
}

// Path is the keyring file's path.
func (k *Keyring) Path() string { return k.path }

// Keys lists the keys, oldest first, without their material.
func (k *Keyring) Keys() []KeyInfo {
	k.mu.RLock()
	defer k.mu.RUnlock()
	out := make([]KeyInfo, 0, len(k.order))
	for _, id := range k.order {
		mk := k.keys[id]
		out = append(out, KeyInfo{ID: mk.id, CreatedAt: mk.created, Active: mk.id == k.active})
	}
	return out
}

// NeedsReencrypt reports whether a ciphertext is not under the active key
// (also true for a malformed one, which needs attention too).
func (k *Keyring) NeedsReencrypt(ciphertext string) bool {
	id, err := KeyIDOf(ciphertext)
	if err != nil {
		return true
	}
	return id != k.ActiveID()
}

// Reencrypt returns ciphertext re-sealed under the active key, or ciphertext
// itself when it already is. It is what a re-encryption sweep after Rotate
// calls for each row before Retire-ing the old key.
func (k *Keyring) Reencrypt(ciphertext, recordID string) (string, error) {
	if !k.NeedsReencrypt(ciphertext) {
		// Still check it opens, so a sweep notices corrupted rows.
		if _, err := k.Decrypt(ciphertext, recordID); err != nil {
			return "", err
		}
		return ciphertext, nil
	}
	v, err := k.Decrypt(ciphertext, recordID)
	if err != nil {
		return "", err
	}
	return k.Encrypt(v, recordID)
}

// Rotate adds a new random key, makes it active and saves the keyring.
// Older keys stay for decryption. If saving fails nothing changes.
func (k *Keyring) Rotate() (newID string, err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	mk, err := newMasterKey(k.keys, time.Now())
	if err != nil {
		return "", err
	}
	keys := make(map[string]*masterKey, len(k.keys)+1)
	for id, v := range k.keys {
		keys[id] = v
	}
	keys[mk.id] = mk
	order := append(slices.Clone(k.order), mk.id)
	if err := k.saveLocked(mk.id, order, keys); err != nil {
		return "", err
	}
	k.keys, k.order, k.active = keys, order, mk.id
	return mk.id, nil
}

// Retire removes a key that is not active and saves the keyring. Call it
// only once no stored ciphertext uses the key (see NeedsReencrypt and
// Reencrypt): ciphertexts under a retired key can never be decrypted again.
func (k *Keyring) Retire(id string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if id == k.active {
		return fmt.Errorf("secrets: retire %q: %w; Rotate first", id, ErrActiveKey)
	}
	if _, ok := k.keys[id]; !ok {
		return fmt.Errorf("secrets: retire %q: %w", id, ErrUnknownKey)
	}
	keys := make(map[string]*masterKey, len(k.keys)-1)
	for kid, v := range k.keys {
		if kid != id {
			keys[kid] = v
		}
	}
	order := slices.DeleteFunc(slices.Clone(k.order), func(s string) bool { return s == id })
	if err := k.saveLocked(k.active, order, keys); err != nil {
		return err
	}
	k.keys, k.order = keys, order
	return nil
}

func marshalKeyring(active string, order []string, keys map[string]*masterKey) ([]byte, error) {
	kf := keyringFile{Version: 1, Active: active}
	for _, id := range order {
		mk := keys[id]
		kf.Keys = append(kf.Keys, keyFileEntry{
			ID:        mk.id,
			Key:       base64.StdEncoding.EncodeToString(mk.raw),
			CreatedAt: mk.created,
		})
	}
	data, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("secrets: encode keyring: %w", err)
	}
	return append(data, '\n'), nil
}

func (k *Keyring) saveLocked(active string, order []string, keys map[string]*masterKey) error {
	if k.path == "" {
		return errors.New("secrets: keyring has no file to save to")
	}
	data, err := marshalKeyring(active, order, keys)
	if err != nil {
		return err
	}
	return writeFileAtomic(k.path, data, true)
}

// writeFileAtomic writes data 0600 to path: replacing it (replace), or
// failing with os.ErrExist if path exists (!replace).
func writeFileAtomic(path string, data []byte, replace bool) error {
	err := atomicfile.Write(path, data, atomicfile.Options{Perm: 0o600, NoReplace: !replace})
	if err != nil && replace {
		return fmt.Errorf("secrets: save keyring: %w", err)
	}
	if err != nil {
		return fmt.Errorf("secrets: create keyring: %w", err)
	}
	return nil
}

// String describes the keyring without key material.
func (k *Keyring) String() string {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return fmt.Sprintf("secrets.Keyring{path: %q, active: %q, keys: %d}", k.path, k.active, len(k.keys))
}

// Format makes every fmt verb print String, never key material.
func (k *Keyring) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, k.String()) }
