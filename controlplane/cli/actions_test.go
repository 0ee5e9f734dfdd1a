package cli

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// TestLifecycleVerbs drives the lifecycle verbs against a stand-in that
// answers the actions contract (issue 11: POST/GET …/servers/{id}/actions),
// until the real backend (branch life) is merged and the end-to-end checks
// replace it: the bodies sent, --wait showing the steps and ending with the
// action on stdout under -o json, a failed action's code and hint, 409.
func TestLifecycleVerbs(t *testing.T) {
	t.Parallel()
	const srvID = "srv_aaaaaaaaaaaaaaaa"
	var mu sync.Mutex
	var bodies []map[string]any
	polls := 0
	h := http.NewServeMux()
	h.HandleFunc("GET /v1/workspaces/default/servers", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"servers":[{"id":"` + srvID + `","name":"web-1","state":"online"}],"next":""}`))
	})
	h.HandleFunc("POST /v1/workspaces/default/servers/{id}/actions", func(w http.ResponseWriter, r *http.Request) {
		var b map[string]any
		_ = json.NewDecoder(r.Body).Decode(&b)
		mu.Lock()
		bodies = append(bodies, b)
		mu.Unlock()
		if b["type"] == "resize" && b["size"] == "busy" {
			w.WriteHeader(409)
			_, _ = w.Write([]byte(`{"error":{"code":"conflict","message":"another action of this server is running","hint":"wait for act_x: devpilot servers actions web-1"}}`))
			return
		}
		w.WriteHeader(202)
		_, _ = w.Write([]byte(`{"id":"act_bbbbbbbbbbbbbbbb","server_id":"` + r.PathValue("id") + `","type":"` + b["type"].(string) + `","params":{},"state":"queued","steps":[],"error":null}`))
	})
	h.HandleFunc("GET /v1/workspaces/default/servers/{id}/actions/{act}", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		polls++
		n := polls
		typ, _ := bodies[len(bodies)-1]["type"].(string)
		mu.Unlock()
		state, step := "running", `{"name":"shutdown","state":"running","started_at":"2026-12-02T03:00:00Z"}`
		if n > 1 {
			state, step = "succeeded", `{"name":"shutdown","state":"succeeded","started_at":"2026-12-02T03:00:00Z","finished_at":"2026-12-02T03:00:02Z","detail":"the cloud's graceful shutdown"}`
			if typ == "power_on" {
				state, step = "failed", `{"name":"power_on","state":"failed","error":"the instance did not start"}`
			}
		}
		errJSON := "null"
		if state == "failed" {
			errJSON = `{"code":"power_on_failed","message":"the instance did not start","hint":"look at the provider's console"}`
		}
		_, _ = w.Write([]byte(`{"id":"act_bbbbbbbbbbbbbbbb","server_id":"` + srvID + `","type":"` + typ + `","params":{},"state":"` + state + `","steps":[` + step + `],"error":` + errJSON + `}`))
	})
	h.HandleFunc("GET /v1/workspaces/default/servers/{id}/actions", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"actions":[{"id":"act_bbbbbbbbbbbbbbbb","type":"reboot","params":{"hard":true},"state":"succeeded","steps":[]}],"next":""}`))
	})
	api := httptest.NewServer(h)
	defer api.Close()
	v := map[string]string{"DEVPILOT_URL": api.URL, "DEVPILOT_TOKEN": "t"}
	reset := func() {
		mu.Lock()
		polls = 0
		mu.Unlock()
	}

	r := cli(t, v, "", "servers", "reboot", "web-1", "--hard", "--wait", "-o", "json")
	var a struct{ ID, State string }
	mustJSON(t, "reboot --wait -o json", r.stdout, &a)
	if r.code != 0 || a.State != "succeeded" || !strings.Contains(r.stderr, "✓ shutdown       2s — the cloud's graceful shutdown") {
		t.Errorf("reboot --wait: %+v", r)
	}
	reset()
	if r := cli(t, v, "", "servers", "power-on", "web-1", "--wait"); r.code != 1 || !strings.Contains(r.stderr, "power_on_failed") || !strings.Contains(r.stderr, "hint: look at") {
		t.Errorf("a failed action: %+v", r)
	}
	if r := cli(t, v, "", "servers", "resize", "web-1", "--size", "busy", "--force"); r.code != 1 || !strings.Contains(r.stderr, "(conflict)") {
		t.Errorf("409: %+v", r)
	}
	for _, args := range [][]string{
		{"servers", "power-off", "web-1", "--force"}, {"servers", "ports", "web-1", "--allow", "22,8080"},
		{"servers", "rename", "web-1", "web-2"}, {"servers", "rename", "web-3", "web-1"},
	} {
		if r := cli(t, v, "", args...); r.code != 0 || !strings.Contains(r.stdout, "act_bbbbbbbbbbbbbbbb") {
			t.Errorf("%v: %+v", args, r)
		}
	}
	mu.Lock()
	got, _ := json.Marshal(bodies)
	mu.Unlock()
	want := `[{"hard":true,"type":"reboot"},{"type":"power_on"},{"size":"busy","type":"resize"},{"force":true,"type":"power_off"},{"ports":[22,8080],"type":"ports"},{"name":"web-2","type":"rename"},{"name":"web-3","type":"rename"}]`
	if string(got) != want {
		t.Errorf("bodies sent:\n%s\nwant\n%s", got, want)
	}
	if r := cli(t, v, "", "servers", "actions", "web-1"); r.code != 0 || !strings.Contains(r.stdout, "hard=true") {
		t.Errorf("servers actions: %+v", r)
	}
	if r := cli(t, v, "", "servers", "ports", "web-1"); r.code != 2 || !strings.Contains(r.stderr, "--allow") {
		t.Errorf("ports without --allow: %+v", r)
	}
}
