package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
)

// `devpilot keys rotate` names the stored secrets it could not decrypt and
// says what to do about them.
func TestKeysRotateListsUndecryptableRows(t *testing.T) {
	e, v := startDev(t)
	ctx := context.Background()
	ws, err := e.App.Store.Q().WorkspaceBySlug(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	in := store.Integration{ID: "int_broken", WorkspaceID: ws.ID, Provider: "vultr", AccessKey: "broken",
		SecretHint: "abcd", Status: "valid", AccountJSON: "{}", CreatedAt: now, UpdatedAt: now}
	// Sealed for another record: it does not open as int_broken's.
	if in.SecretCiphertext, err = e.App.Keys.Encrypt(secrets.New("s3cret-value"), "int_other"); err != nil {
		t.Fatal(err)
	}
	if err := e.App.Store.Q().CreateIntegration(ctx, in); err != nil {
		t.Fatal(err)
	}
	r := cli(t, v, "", "keys", "rotate")
	if r.code != 0 {
		t.Fatalf("keys rotate: %+v", r)
	}
	for _, want := range []string{"New master key", "integrations int_broken: decryption failed", "Restore those rows"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "s3cret-value") || strings.Contains(r.stdout, in.SecretCiphertext) {
		t.Errorf("output shows the secret or its ciphertext:\n%s", r.stdout)
	}
}
