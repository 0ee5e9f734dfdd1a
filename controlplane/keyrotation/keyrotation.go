// Package keyrotation rotates the master key: it puts every stored secret under a
// new key and retires the old keys no row uses anymore. One rotation runs at
// a time, across every control plane on the database.
package keyrotation

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
)

// Skipped is a stored secret the rotation could not decrypt; it stays as it
// is, and so does the key it names.
type Skipped struct {
	Table  string `json:"table"`
	ID     string `json:"id"`
	KeyID  string `json:"key_id,omitempty"` // "" when the value is not a ciphertext at all
	Reason string `json:"reason"`
}

// Result reports a rotation.
type Result struct {
	KeyID       string    `json:"key_id"`
	Reencrypted int       `json:"reencrypted"`
	Retired     []string  `json:"retired_key_ids"`
	Kept        []string  `json:"kept_key_ids"` // older keys still named by a skipped row
	Skipped     []Skipped `json:"skipped"`
}

// maxSwaps bounds how often one row is re-read after its compare-and-swap
// lost against a concurrent write.
const maxSwaps = 5

// Rotate makes a new master key active, re-encrypts every sealed column
// under it, and retires the keys no row uses anymore. Rows that do not
// decrypt are skipped and reported, not fatal. A rotation already running
// (here or in another control plane on the database) is a conflict.
func Rotate(ctx context.Context, st *store.Store, keys *secrets.Keyring, log *zap.Logger) (Result, error) {
	release, err := st.TryExclusive(ctx, store.LockKeyRotation)
	if errors.Is(err, store.ErrBusy) {
		return Result{}, problem.Conflict("Wait for it to finish; run devpilot keys rotate again afterwards if you need another new key.",
			"another master key rotation is running")
	}
	if err != nil {
		return Result{}, fmt.Errorf("rotate keys: %w", err)
	}
	defer release()

	id, err := keys.Rotate()
	if err != nil {
		return Result{}, fmt.Errorf("rotate keys: %w", err)
	}
	res := Result{KeyID: id, Retired: []string{}, Kept: []string{}, Skipped: []Skipped{}}
	for _, c := range store.SealedColumns {
		rows, err := st.Q().ListSealed(ctx, c)
		if err != nil {
			return res, fmt.Errorf("rotate keys: %w", err)
		}
		for _, r := range rows {
			done, skip, err := reseal(ctx, st, keys, c, r)
			if err != nil {
				return res, fmt.Errorf("rotate keys: %w", err)
			}
			if done {
				res.Reencrypted++
			}
			if skip != nil {
				log.Warn("secret not re-encrypted", zap.String("table", skip.Table), zap.String("id", skip.ID),
					zap.String("key_id", skip.KeyID), zap.String("reason", skip.Reason))
				res.Skipped = append(res.Skipped, *skip)
			}
		}
	}
	used, err := usedKeys(ctx, st)
	if err != nil {
		return res, fmt.Errorf("rotate keys: %w", err)
	}
	for _, k := range keys.Keys() {
		switch {
		case k.ID == id:
		case used[k.ID]:
			res.Kept = append(res.Kept, k.ID)
		default:
			if err := keys.Retire(k.ID); err != nil {
				return res, fmt.Errorf("rotate keys: %w", err)
			}
			res.Retired = append(res.Retired, k.ID)
		}
	}
	log.Info("master key rotated", zap.String("key_id", id), zap.Int("reencrypted", res.Reencrypted),
		zap.Strings("retired", res.Retired), zap.Int("skipped", len(res.Skipped)))
	return res, nil
}

// reseal puts one row under the active key. When its compare-and-swap
// loses against a concurrent write it re-reads the row and tries again with
// the fresh value.
func reseal(ctx context.Context, st *store.Store, keys *secrets.Keyring, c store.SealedColumn, r store.Sealed) (bool, *Skipped, error) {
	ct := r.Ciphertext
	for range maxSwaps {
		if !keys.NeedsReencrypt(ct) {
			return false, nil, nil
		}
		updated, err := keys.Reencrypt(ct, r.ID)
		if err != nil {
			kid, _ := secrets.KeyIDOf(ct)
			return false, &Skipped{Table: c.Table, ID: r.ID, KeyID: kid, Reason: reason(err)}, nil
		}
		ok, err := st.Q().Reseal(ctx, c, r.ID, ct, updated)
		if err != nil || ok {
			return ok, nil, err
		}
		ct, err = st.Q().GetSealed(ctx, c, r.ID)
		if errors.Is(err, store.ErrNotFound) {
			return false, nil, nil // deleted meanwhile: nothing left to re-encrypt
		}
		if err != nil {
			return false, nil, err
		}
	}
	return false, nil, fmt.Errorf("re-encrypt %s %s: the row kept changing (%d tries)", c.Table, r.ID, maxSwaps)
}

// reason says why a ciphertext did not open, without any of its content.
func reason(err error) string {
	for _, e := range []error{secrets.ErrDecrypt, secrets.ErrUnknownKey, secrets.ErrMalformed} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return "cannot be decrypted"
}

// usedKeys are the key ids the stored ciphertexts name now.
func usedKeys(ctx context.Context, st *store.Store) (map[string]bool, error) {
	used := map[string]bool{}
	for _, c := range store.SealedColumns {
		rows, err := st.Q().ListSealed(ctx, c)
		if err != nil {
			return nil, err
		}
		for _, r := range rows {
			if id, err := secrets.KeyIDOf(r.Ciphertext); err == nil {
				used[id] = true
			}
		}
	}
	return used, nil
}

// SkippedIDs lists "table/id" of each skipped row, for logs and messages.
func (r Result) SkippedIDs() []string {
	out := make([]string, 0, len(r.Skipped))
	for _, s := range r.Skipped {
		out = append(out, s.Table+"/"+s.ID)
	}
	slices.Sort(out)
	return out
}
