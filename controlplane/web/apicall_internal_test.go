package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/devpilot/devpilot/controlplane/secrets"
)

// listAll follows the API's next links to the last page, and stops on a
// link that would loop or leave the API.
func TestListAllFollowsNext(t *testing.T) {
	t.Parallel()
	pages := map[string]string{
		"/v1/workspaces/w/servers":          `{"servers":[{"id":"srv_1","name":"a"}],"next":"/v1/workspaces/w/servers?cursor=2"}`,
		"/v1/workspaces/w/servers?cursor=2": `{"servers":[{"id":"srv_2","name":"b"}],"next":"/v1/workspaces/w/servers?cursor=3"}`,
		"/v1/workspaces/w/servers?cursor=3": `{"servers":[{"id":"srv_3","name":"c"}],"next":""}`,
		"/v1/loop":                          `{"servers":[{"id":"srv_1"}],"next":"/v1/loop"}`,
		"/v1/away":                          `{"servers":[{"id":"srv_1"}],"next":"https://elsewhere.example/v1/x"}`,
		"/v1/old":                           `{"servers":[{"id":"srv_1"}]}`,
	}
	var seen []string
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.URL.RequestURI())
		body, ok := pages[r.URL.RequestURI()]
		if !ok {
			http.Error(w, `{"error":{"code":"not_found","message":"no such page"}}`, http.StatusNotFound)
			return
		}
		_, _ = fmt.Fprint(w, body)
	})
	c := &Console{o: Options{API: api}}
	s := &session{token: secrets.New("dpt_x")}
	r := httptest.NewRequest("GET", "/ui/w/w/servers", nil)
	got, err := listAll[server](c, r, s, "/v1/workspaces/w/servers", "servers")
	if err != nil || len(got) != 3 || got[2].Name != "c" {
		t.Fatalf("listAll: %v %+v (requests %v)", err, got, seen)
	}
	for _, path := range []string{"/v1/loop", "/v1/away", "/v1/old"} {
		seen = nil
		got, err := listAll[server](c, r, s, path, "servers")
		if err != nil || len(got) != 1 || len(seen) != 1 {
			t.Errorf("%s: %v %d items, requests %v", path, err, len(got), seen)
		}
	}
	if _, err := listAll[server](c, r, s, "/v1/missing", "servers"); err == nil || !strings.Contains(err.Error(), "not_found") {
		t.Errorf("a refused page: %v", err)
	}
}

// The console reads an action as issue 11's contract writes it: errors
// are objects ({code, message, hint}) on the action and on its steps.
func TestActionDecodesTheContractsShape(t *testing.T) {
	t.Parallel()
	raw := `{"id":"act_aaaaaaaaaaaaaaaa","server_id":"srv_aaaaaaaaaaaaaaaa","type":"resize","params":{"size":"s-2vcpu-2gb"},
		"state":"failed","steps":[{"name":"power_off","state":"done","started_at":"2026-01-02T15:00:00Z","finished_at":"2026-01-02T15:00:05Z","error":null},
		{"name":"resize","state":"failed","started_at":"2026-01-02T15:00:05Z","finished_at":null,
		 "error":{"code":"quota_exceeded","message":"no capacity","hint":"Pick another size."}}],
		"error":{"code":"quota_exceeded","message":"no capacity","hint":"Pick another size."},
		"created_at":"2026-01-02T15:00:00Z","finished_at":"2026-01-02T15:00:06Z"}`
	var a action
	if err := json.Unmarshal([]byte(raw), &a); err != nil {
		t.Fatal(err)
	}
	if a.Label() != "Resize" || len(a.Steps) != 2 || a.Steps[1].Error == nil || a.Steps[1].Error.Code != "quota_exceeded" ||
		a.Error == nil || a.Error.Hint != "Pick another size." {
		t.Errorf("decoded %+v", a)
	}
}
