package web

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// failedServer is the API's view of a server whose provisioning failed at
// the instance step, decoded the way the console decodes it.
func failedServer(t *testing.T) server {
	t.Helper()
	at := time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)
	done := at.Add(2 * time.Second)
	fail := &apitypes.StepError{Step: "instance", Code: "quota_exceeded",
		Message: "droplet limit reached (10 of 10)", Hint: "Delete a droplet or ask DigitalOcean to raise the limit."}
	api := apitypes.Server{ID: "srv_1", Name: "web-1", Provider: "digitalocean", Region: "nyc3",
		Size: "s-1vcpu-1gb", Image: "debian-12-x64", Ports: []int{22, 80}, State: "failed", Tags: []string{"web"},
		Steps: []apitypes.Step{
			{Name: "preflight", State: "done", Attempts: 1, StartedAt: &at, FinishedAt: &done},
			{Name: "instance", State: "failed", Attempts: 3, StartedAt: &at, FinishedAt: &done, Error: fail},
		},
		Error: fail, Diagnostics: "cloud-init: no route to host", CreatedAt: at}
	b, err := json.Marshal(api)
	if err != nil {
		t.Fatal(err)
	}
	var s server
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestEveryPageRendersWithFailedStates renders each page (and live
// fragment) with representative data, failures included, so a template
// field the page's data lacks shows up here rather than as a 500.
func TestEveryPageRendersWithFailedStates(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)
	exit := 2
	refusal := &apiError{Status: 403, Code: "insufficient_scope", Message: "token is read-only", Hint: "Create a token with write scope."}
	srv := failedServer(t)
	online := server{ID: "srv_2", Name: "db-1", Provider: "vultr", State: "online", Health: &health{CPUPercent: 3,
		MemTotalMB: 1024, MemUsedMB: 200}, HealthAt: &at}
	online.Agent.Connected, online.Agent.Version, online.Agent.LastSeenAt = true, "1.2.3", &at
	invalid := integration{ID: "int_1", Provider: "digitalocean", AccessKey: "ci", SecretKeyHint: "abcd",
		Status: "invalid", WriteAccess: "no", LastValidatedAt: &at, LastError: refusal, CreatedAt: at}
	var failedTask task
	failedTask.ID, failedTask.ServerID, failedTask.Kind, failedTask.State = "tsk_1", "srv_2", "exec", "failed"
	failedTask.Reason, failedTask.Error, failedTask.ExitCode = "exit", "exit status 2", &exit
	failedTask.StartedAt, failedTask.FinishedAt, failedTask.CreatedAt = &at, &at, at
	failedTask.Spec.Exec = &struct {
		Argv []string `json:"argv"`
	}{Argv: []string{"/bin/sh", "-c", "false"}}
	var dep deployment
	if err := json.Unmarshal([]byte(`{"id":"dep_1","state":"failed","tag":"web","max_parallel":1,
		"error":"1 of 2 targets failed","created_at":"2026-01-02T15:00:00Z","finished_at":"2026-01-02T15:01:00Z",
		"counts":{"failed":1,"succeeded":1},"targets":[{"server_id":"srv_1","batch":0,"task_id":"tsk_1",
		"state":"failed","reason":"exit","error":"exit status 2","exit_code":2},{"server_id":"srv_2","batch":1,"state":"skipped"}]}`), &dep); err != nil {
		t.Fatal(err)
	}
	names := map[string]string{"srv_1": "web-1", "srv_2": "db-1"}
	cat := &catalog{}
	if err := json.Unmarshal([]byte(`{"regions":[{"id":"nyc3","name":"New York 3","available":true}],
		"sizes":[{"id":"s-1vcpu-1gb","vcpus":1,"memory_mb":1024,"disk_gb":25,"price_monthly":6,"regions":["nyc3"],"sold_out":["ams3"]}],
		"images":[{"id":"debian-12-x64","name":"Debian 12","neutral":"debian-12"}]}`), cat); err != nil {
		t.Fatal(err)
	}
	pages := []struct {
		name, tmpl string
		p          page
		want       []string
	}{
		{"error", "layout", page{Title: "Refused", Err: refusal}, []string{"insufficient_scope"}},
		{"signin", "layout", page{Title: "Sign in", Err: refusal, Data: signinData{Next: "/ui/w/default/servers", Expired: true}}, nil},
		{"integrations", "layout", page{Title: "Integrations", Err: refusal, Data: []providerCard{
			{Provider: "digitalocean", Name: "DigitalOcean", SecretLabel: "token", Integrations: []integration{invalid}, Err: refusal, AccessKey: "ci"},
			{Provider: "vultr", Name: "Vultr", SecretLabel: "API key"}}}, []string{"invalid"}},
		{"remove", "layout", page{Title: "Remove integration", Data: invalid}, nil},
		{"servers", "layout", page{Title: "Servers", Data: []server{srv, online}}, []string{"web-1", "db-1"}},
		{"newserver", "layout", page{Title: "Create server", Err: refusal, Data: newServerData{
			Integrations: []integration{invalid}, Integration: &invalid, Catalog: cat, Region: "nyc3",
			Sizes: sizeOptions(cat, "nyc3", "s-1vcpu-1gb"), Name: "web-2", CatalogErr: refusal}}, nil},
		{"newserver", "layout", page{Title: "Create server", Data: newServerData{}}, nil},
		{"server", "layout", page{Title: srv.Name, Data: serverData{Server: srv, Charts: charts(nil, at, time.Hour), Live: "/live"}},
			[]string{"at step instance", "quota_exceeded", "droplet limit reached (10 of 10)", "Delete a droplet or ask DigitalOcean"}},
		{"server", "live", page{Data: serverData{Server: srv}}, []string{"at step instance", "Delete a droplet"}},
		{"server", "layout", page{Title: online.Name, Data: serverData{Server: online, Charts: charts([]sample{{At: at, CPUPercent: 3}}, at, time.Hour)}}, nil},
		{"tasks", "layout", page{Title: "Tasks", Err: refusal, Data: tasksData{Tasks: []task{failedTask}, Servers: []server{srv, online},
			Tags: []string{"web"}, Target: "server:srv_2", Kind: "command", Plan: examplePlan, Names: names, Available: true}}, []string{"failed"}},
		{"tasks", "layout", page{Title: "Tasks", Data: tasksData{Names: names}}, nil},
		{"task", "layout", page{Title: "Task tsk_1", Data: taskData{Task: failedTask, Server: "db-1", Logs: "/logs"}}, []string{"exit status 2"}},
		{"deployment", "layout", page{Title: "Deployment dep_1", Data: deploymentData{Deployment: dep, Names: names, Live: "/live"}}, []string{"1 of 2 targets failed"}},
		{"deployment", "live", page{Data: deploymentData{Deployment: dep, Names: names}}, nil},
	}
	c := &Console{pages: parsePages(), log: zap.NewNop()}
	seen := map[string]bool{}
	for _, tc := range pages {
		seen[tc.name] = true
		for _, s := range []*session{nil, {role: "owner", tokenName: "owner", workspace: "default", csrf: "c"}, {role: "viewer", workspace: "default"}} {
			p := tc.p
			p.S, p.WS = s, "default"
			if s == nil && tc.name != "error" && tc.name != "signin" {
				continue // only these two are shown signed out
			}
			w := httptest.NewRecorder()
			c.execute(w, http.StatusOK, tc.name, tc.tmpl, p)
			if w.Code != http.StatusOK {
				t.Errorf("%s/%s (session %v): %d %s", tc.name, tc.tmpl, s != nil, w.Code, w.Body)
				continue
			}
			for _, want := range tc.want {
				if !strings.Contains(w.Body.String(), want) {
					t.Errorf("%s/%s: page lacks %q", tc.name, tc.tmpl, want)
				}
			}
		}
	}
	for name := range c.pages {
		if !seen[name] {
			t.Errorf("page %s is not rendered by this test; add it with representative data", name)
		}
	}
}
