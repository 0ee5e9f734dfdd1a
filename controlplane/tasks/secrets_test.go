package tasks_test

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/devpilot/devpilot/controlplane/store/storetest"
	"github.com/devpilot/devpilot/shared/protocol"
)

// TestTaskSecretsAreEncryptedAtRest: environment values and file contents
// of tasks and deployment plans may be secrets. The agent receives them
// intact; the API shows them redacted; the database holds them only
// encrypted, also after the master key is rotated.
func TestTaskSecretsAreEncryptedAtRest(t *testing.T) {
	t.Parallel()
	c := startCP(t)
	a := c.server("web-1")
	a.onTask = runs(nil)
	a.connect()
	defer a.disconnect()

	const canary = "canary-env-secret-5f1d0e"
	const fileCanary = "canary-file-secret-90ab7c"
	v := c.createTask(a.id, map[string]any{"kind": "exec", "argv": []string{"env"}, "env": map[string]string{"API_TOKEN": canary}})
	c.createTask(a.id, map[string]any{"kind": "file", "path": "/etc/app.key",
		"content_base64": base64.StdEncoding.EncodeToString([]byte(fileCanary))})
	var dep map[string]any
	if code := c.call("", "POST", wsBase+"/deployments", map[string]any{"tag": "devpilot", "plan": map[string]any{
		"steps": []map[string]any{{"kind": "exec", "argv": []string{"true"}, "env": map[string]string{"X": canary}}}}}, &dep); code != 202 {
		t.Fatalf("deployment: %d %v", code, dep)
	}
	a.wait("the exec task", func() bool { return a.taskCount(v.ID) > 0 })
	var got protocol.Task
	for _, rt := range a.received() {
		if rt.ID == v.ID {
			got = rt
		}
	}
	if got.Exec == nil || got.Exec.Env["API_TOKEN"] != canary {
		t.Fatalf("the agent must get the real value: %+v", got.Exec)
	}
	raw := func(id string) string {
		var m json.RawMessage
		if code := c.call("", "GET", wsBase+"/tasks/"+id, nil, &m); code != 200 {
			t.Fatalf("get task: %d", code)
		}
		return string(m)
	}
	if r := raw(v.ID); strings.Contains(r, canary) || !strings.Contains(r, "API_TOKEN") {
		t.Errorf("the API must show the env name but not its value: %s", r)
	}
	if code := c.call("", "POST", "/v1/keys/rotate", nil, nil); code != 200 {
		t.Fatalf("keys rotate: %d", code)
	}
	// The spec still decrypts after rotation (the view needs it).
	if r := raw(v.ID); !strings.Contains(r, "API_TOKEN") {
		t.Errorf("after rotation the spec must still decrypt: %s", r)
	}
	b := storetest.Contents(t, c.app.Store)
	if !strings.Contains(b, v.ID) {
		t.Fatalf("the database contents read hold no task %s: the search proves nothing", v.ID)
	}
	for _, s := range []string{canary, fileCanary, base64.StdEncoding.EncodeToString([]byte(fileCanary))} {
		if strings.Contains(b, s) {
			t.Errorf("%q is in the database in plaintext", s)
		}
	}
}
