package keyrotation_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/keyrotation"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// http.Transport keeps idle connections' goroutines until they time out.
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
	)
}

// cp is a control plane (no clouds) served by httptest, holding n
// integrations whose secrets are "secret-<i>".
type cp struct {
	t     *testing.T
	a     *app.App
	srv   *httptest.Server
	owner string
	ids   []string
}

func start(t *testing.T, n int) *cp {
	t.Helper()
	dir := t.TempDir()
	a, err := app.New(context.Background(), app.Config{DataDir: dir, Database: storetest.Database(t), Out: io.Discard,
		DigitalOceanAPIURL: "http://127.0.0.1:1", VultrAPIURL: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	c := &cp{t: t, a: a, srv: httptest.NewTLSServer(a.Handler())}
	t.Cleanup(func() {
		c.srv.Close()
		a.Hub.Close()
		a.Provision.Close()
		_ = a.Close()
	})
	tok, err := os.ReadFile(filepath.Join(dir, app.OwnerTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	c.owner = strings.TrimSpace(string(tok))
	ctx := context.Background()
	ws, err := a.Store.Q().WorkspaceBySlug(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	for i := range n {
		in := store.Integration{ID: fmt.Sprintf("int_%02d", i), WorkspaceID: ws.ID, Provider: "digitalocean",
			AccessKey: fmt.Sprintf("key %d", i), SecretHint: "abcd", Status: "valid", WriteAccess: "yes", AccountJSON: "{}",
			CreatedAt: now, UpdatedAt: now}
		if in.SecretCiphertext, err = a.Keys.Encrypt(secrets.New(fmt.Sprintf("secret-%d", i)), in.ID); err != nil {
			t.Fatal(err)
		}
		if err := a.Store.Q().CreateIntegration(ctx, in); err != nil {
			t.Fatal(err)
		}
		c.ids = append(c.ids, in.ID)
	}
	return c
}

// rotate calls POST /v1/keys/rotate; the body is decoded into a Result on
// 200 and returned raw otherwise.
func (c *cp) rotate() (int, keyrotation.Result, string) {
	req, _ := http.NewRequest("POST", c.srv.URL+"/v1/keys/rotate", nil)
	req.Header.Set("Authorization", "Bearer "+c.owner)
	resp, err := c.srv.Client().Do(req)
	if err != nil {
		c.t.Error(err)
		return 0, keyrotation.Result{}, ""
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	var res keyrotation.Result
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(b, &res); err != nil {
			c.t.Errorf("decode %s: %v", b, err)
		}
	}
	return resp.StatusCode, res, string(b)
}

// ciphertext reads one integration's stored ciphertext.
func (c *cp) ciphertext(id string) string {
	c.t.Helper()
	var ct string
	if err := c.a.Store.DB().QueryRow(`SELECT secret_ciphertext FROM integrations WHERE id = '` + id + `'`).Scan(&ct); err != nil {
		c.t.Fatal(err)
	}
	return ct
}

// readable checks every integration but the skipped ones still decrypts
// to its secret, under the active key.
func (c *cp) readable(skip string) {
	c.t.Helper()
	for i, id := range c.ids {
		if id == skip {
			continue
		}
		ct := c.ciphertext(id)
		v, err := c.a.Keys.Decrypt(ct, id)
		if err != nil || v.Reveal() != fmt.Sprintf("secret-%d", i) {
			c.t.Errorf("%s does not decrypt after rotation: %v", id, err)
		}
		if c.a.Keys.NeedsReencrypt(ct) {
			c.t.Errorf("%s is not under the active key", id)
		}
	}
}

func TestRotationSkipsAndReportsAnUndecryptableRow(t *testing.T) {
	t.Parallel()
	c := start(t, 4)
	bad := c.ids[2]
	ct := c.ciphertext(bad)
	oldKey, _ := secrets.KeyIDOf(ct)
	// Flip one character of the sealed payload (not of the key id).
	i := len(ct) - 5
	flipped := ct[:i] + string("AB"[map[bool]int{true: 1}[ct[i] == 'A']]) + ct[i+1:]
	if _, err := c.a.Store.DB().Exec(`UPDATE integrations SET secret_ciphertext = '` + flipped + `' WHERE id = '` + bad + `'`); err != nil {
		t.Fatal(err)
	}
	for attempt := 1; attempt <= 2; attempt++ {
		code, res, body := c.rotate()
		if code != 200 {
			t.Fatalf("rotation %d: %d %s", attempt, code, body)
		}
		if len(res.Skipped) != 1 || res.Skipped[0].Table != "integrations" || res.Skipped[0].ID != bad ||
			res.Skipped[0].KeyID != oldKey || !strings.Contains(res.Skipped[0].Reason, "decryption failed") {
			t.Errorf("rotation %d: skipped = %+v, want %s under %s", attempt, res.Skipped, bad, oldKey)
		}
		if strings.Contains(body, flipped) || strings.Contains(body, "secret-") {
			t.Errorf("the answer shows a ciphertext or secret: %s", body)
		}
		if want := 3; res.Reencrypted != want && attempt == 1 {
			t.Errorf("rotation 1 re-encrypted %d, want %d", res.Reencrypted, want)
		}
		// The active key, and the old one the bad row still names: no more.
		if n := len(c.a.Keys.Keys()); n != 2 {
			t.Errorf("after rotation %d the keyring holds %d keys, want 2 (active + %s)", attempt, n, oldKey)
		}
		if len(res.Kept) != 1 || res.Kept[0] != oldKey {
			t.Errorf("rotation %d kept %v, want [%s]", attempt, res.Kept, oldKey)
		}
		if attempt == 2 && len(res.Retired) != 1 {
			t.Errorf("rotation 2 retired %v, want the key rotation 1 made", res.Retired)
		}
		c.readable(bad)
	}
	if got := c.ciphertext(bad); got != flipped {
		t.Errorf("the undecryptable row was changed")
	}
	var audit struct {
		Entries []struct {
			Action string          `json:"action"`
			Detail json.RawMessage `json:"detail"`
		} `json:"entries"`
	}
	req, _ := http.NewRequest("GET", c.srv.URL+"/v1/workspaces/default/audit", nil)
	req.Header.Set("Authorization", "Bearer "+c.owner)
	resp, err := c.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	if err := json.NewDecoder(resp.Body).Decode(&audit); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range audit.Entries {
		var d struct{ Skipped []keyrotation.Skipped }
		if e.Action == "keys.rotate" && json.Unmarshal(e.Detail, &d) == nil && len(d.Skipped) == 1 && d.Skipped[0].ID == bad {
			n++
		}
	}
	if n != 2 {
		t.Errorf("audit entries of keys.rotate naming %s: %d, want 2", bad, n)
	}
}

func TestConcurrentRotationsNeverFail(t *testing.T) {
	t.Parallel()
	c := start(t, 20)
	const callers, rounds = 4, 3
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				code, _, body := c.rotate()
				mu.Lock()
				codes[code]++
				mu.Unlock()
				switch {
				case code == 200:
				case code == http.StatusConflict && strings.Contains(body, `"conflict"`) && strings.Contains(body, `"hint"`):
				default:
					t.Errorf("concurrent rotation: %d %s", code, body)
				}
			}
		}()
	}
	wg.Wait()
	t.Logf("answers: %v", codes)
	if codes[200] == 0 {
		t.Fatalf("no rotation succeeded: %v", codes)
	}
	if n := len(c.a.Keys.Keys()); n != 1 {
		t.Errorf("after the rotations the keyring holds %d keys, want 1 (no row needs an older one)", n)
	}
	c.readable("")
}
