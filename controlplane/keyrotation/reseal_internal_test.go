package keyrotation

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
)

// A row rewritten between the sweep's read and its compare-and-swap (a
// secret rotated meanwhile) is re-encrypted from its fresh value, not left
// under the old key, nor overwritten with the stale one.
func TestResealRetriesWithTheFreshValue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.Open(ctx, storetest.Database(t), filepath.Join(dir, "devpilot.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	keys, err := secrets.LoadOrCreateKeyring(filepath.Join(dir, "keyring.json"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	if err := st.Q().CreateWorkspace(ctx, store.Workspace{ID: "ws_1", Slug: "default", Name: "Default", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	stale, _ := keys.Encrypt(secrets.New("old secret"), "int_1")
	fresh, _ := keys.Encrypt(secrets.New("new secret"), "int_1")
	if err := st.Q().CreateIntegration(ctx, store.Integration{ID: "int_1", WorkspaceID: "ws_1", Provider: "vultr", AccessKey: "k",
		SecretCiphertext: fresh, SecretHint: "cret", Status: "valid", AccountJSON: "{}", CreatedAt: now, UpdatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Rotate(); err != nil {
		t.Fatal(err)
	}
	col := store.SealedColumns[0]
	done, skip, err := reseal(ctx, st, keys, col, store.Sealed{ID: "int_1", Ciphertext: stale}) // read before the rewrite
	if err != nil || skip != nil || !done {
		t.Fatalf("reseal: done %v skip %+v err %v, want done", done, skip, err)
	}
	ct, err := st.Q().GetSealed(ctx, col, "int_1")
	if err != nil {
		t.Fatal(err)
	}
	if keys.NeedsReencrypt(ct) {
		t.Error("the row is still under the old key")
	}
	if v, err := keys.Decrypt(ct, "int_1"); err != nil || v.Reveal() != "new secret" {
		t.Errorf("the row holds %v (%v), want the fresh secret", v, err)
	}
}
