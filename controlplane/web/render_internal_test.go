package web

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/provision"
	"github.com/devpilot/devpilot/shared/protocol"
)

// failedServer is the API's view of a server whose provisioning failed at
// the instance step, decoded the way the console decodes it.
func failedServer(t *testing.T) server {
	t.Helper()
	at := time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)
	done := at.Add(2 * time.Second)
	fail := &provision.StepError{Step: "instance", Code: "quota_exceeded",
		Message: "droplet limit reached (10 of 10)", Hint: "Delete a droplet or ask DigitalOcean to raise the limit."}
	api := provision.Server{ID: "srv_1", Name: "web-1", Provider: "digitalocean", Region: "nyc3",
		Size: "s-1vcpu-1gb", Image: "debian-12-x64", Ports: []int{22, 80}, State: "failed", Tags: []string{"web"},
		Steps: []provision.StepView{
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
	online := server{apitypes.Server{ID: "srv_2", Name: "db-1", Provider: "vultr", State: "online", InstanceID: "i-1", Ports: []int{22},
		Health: &protocol.Health{CPUPercent: 3, MemTotalMB: 1024, MemUsedMB: 200}, HealthAt: &at}}
	stopped := server{apitypes.Server{ID: "srv_3", Name: "db-2", Provider: "vultr", State: "stopped", StateReason: "powered off by resize act_1"}}
	online.Agent.Connected, online.Agent.Version, online.Agent.LastSeenAt = true, "1.2.3", &at
	online.Agent.TargetVersion, online.Agent.OutsideTarget = "1.4.0", true
	online.Agent.LastUpdate = &apitypes.AgentLastUpdate{ActionID: "act_9", Result: apitypes.UpdateResultRolledBack, FromVersion: "1.2.3",
		ToVersion: "1.4.0", Reason: "1.4.0 did not reconnect within 2m0s", ReportedAt: &at}
	invalid := integration{ID: "int_1", Provider: "digitalocean", AccessKey: "ci", SecretKeyHint: "abcd",
		Status: "invalid", WriteAccess: "no", LastValidatedAt: &at,
		LastError: &apitypes.Problem{Code: refusal.Code, Message: refusal.Message, Hint: refusal.Hint}, CreatedAt: at}
	var failedTask task
	failedTask.ID, failedTask.ServerID, failedTask.Kind, failedTask.State = "tsk_1", "srv_2", "exec", "failed"
	failedTask.Reason, failedTask.Error, failedTask.ExitCode = "exit", "exit status 2", &exit
	failedTask.StartedAt, failedTask.FinishedAt, failedTask.CreatedAt = &at, &at, at
	failedTask.Spec.Exec = &protocol.ExecSpec{Argv: []string{"/bin/sh", "-c", "false"}}
	var dep deployment
	if err := json.Unmarshal([]byte(`{"id":"dep_1","state":"failed","tag":"web","max_parallel":1,
		"error":"1 of 2 targets failed","created_at":"2026-01-02T15:00:00Z","finished_at":"2026-01-02T15:01:00Z",
		"counts":{"failed":1,"succeeded":1},"targets":[{"server_id":"srv_1","batch":0,"task_id":"tsk_1",
		"state":"failed","reason":"exit","error":"exit status 2","exit_code":2},{"server_id":"srv_2","batch":1,"state":"skipped","action_id":"act_7"}],
		"firewall_steps":[{"step":2,"name":"open-web","ports":[22,80,443]}]}`), &dep); err != nil {
		t.Fatal(err)
	}
	names := map[string]string{"srv_1": "web-1", "srv_2": "db-1"}
	cat := &catalog{}
	if err := json.Unmarshal([]byte(`{"regions":[{"id":"nyc3","name":"New York 3","available":true}],
		"sizes":[{"id":"s-1vcpu-1gb","vcpus":1,"memory_mb":1024,"disk_gb":25,"price_monthly":6,"regions":["nyc3"],"sold_out":["ams3"]}],
		"images":[{"id":"debian-12-x64","name":"Debian 12","neutral":"debian-12"}]}`), cat); err != nil {
		t.Fatal(err)
	}
	ninety := 90.0
	firedAt := at.Add(time.Minute)
	firing := apitypes.Alert{RuleID: "alr_1", RuleName: "down", Kind: "offline", ServerID: "srv_1", ServerName: "web-1",
		State: "firing", Since: at, Value: 300, FiredAt: &firedAt, UpdatedAt: firedAt, Message: "web-1 offline for 5m0s"}
	rules := []apitypes.AlertRule{{ID: "alr_1", Name: "down", Kind: "offline", ForS: 60, CreatedAt: at, UpdatedAt: at},
		{ID: "alr_2", Name: "disk", Kind: "disk", ThresholdPercent: &ninety, ForS: 300, Tag: "web", CreatedAt: at, UpdatedAt: at}}
	failedRollout := rollout{apitypes.Rollout{ID: "rol_1", Version: "1.4.0", Tag: "web", Canary: apitypes.Canary{N: 2}, CanaryCount: 2,
		MaxParallel: 1, HealthWindowS: 60, State: "failed",
		Reason: "server web-1 (srv_1): its update action act_2 failed: failed to start 3 times (the agent rolled back to 1.3.0)",
		Counts: map[string]int{"failed": 1, "skipped": 1}, CreatedBy: "owner", CreatedAt: at, UpdatedAt: at, FinishedAt: &at,
		Targets: []apitypes.RolloutTarget{
			{ServerID: "srv_1", ServerName: "web-1", Wave: "canary", State: "failed", FromVersion: "1.3.0", ActionID: "act_2",
				Reason: "rolled back: failed to start 3 times", StartedAt: &at, FinishedAt: &at},
			{ServerID: "srv_2", ServerName: "db-1", Wave: "rest", State: "skipped", FromVersion: "1.3.0", Reason: "the rollout stopped first"}}}}
	disabled := apitypes.Webhook{ID: "wh_1", URL: "https://hooks.example.com/devpilot", Events: []string{"server.*", "task.failed"},
		Format: "raw", Enabled: false, DisabledReason: "every delivery failed for 24h", FailingSince: &at, CreatedAt: at, UpdatedAt: at}
	deadDelivery := apitypes.WebhookDelivery{ID: "dl_1", EventID: 7, MessageID: "7", EventType: "task.failed", Status: "dead",
		Attempts: 12, LastAttemptAt: &at, ResponseCode: 500, LatencyMS: 41, Error: "receiver answered 500", ResponseExcerpt: "oops", CreatedAt: at}
	redirected := apitypes.WebhookDelivery{ID: "dl_2", EventID: 8, MessageID: "8", EventType: "server.online", Status: "failed",
		Attempts: 1, NextAttemptAt: &firedAt, LastAttemptAt: &at, ResponseCode: 302, Error: "redirect not followed", CreatedAt: at}
	evs := []logEvent{
		{apitypes.Event{ID: 9, Type: "server.failed", Subject: "srv_1", Time: at,
			Data: json.RawMessage(`{"name":"web-1","state":"failed","previous_state":"provisioning","step":"instance","error_code":"quota_exceeded"}`)}},
		{apitypes.Event{ID: 8, Type: "alert.firing", Subject: "alr_1", Time: at, Data: json.RawMessage(`{"rule_name":"down","server":"srv_1"}`)}},
		{apitypes.Event{ID: 7, Type: "task.failed", Subject: "tsk_1", Time: at, Data: json.RawMessage(`{}`)}}}
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
		{"servers", "layout", page{Title: "Servers", Data: []server{srv, online, stopped}}, []string{"web-1", "db-1", "powered off by resize act_1",
			"<code>1.2.3</code>", "≠ 1.4.0"}},
		{"servers", "live", page{Data: []server{srv, online}}, []string{"web-1", "db-1"}},
		{"action", "layout", page{Title: "Resize", Data: confirmData{Server: online, Type: "resize", Label: "Resize", Form: url.Values{},
			Sizes: sizeOptions(cat, "nyc3", ""), Warning: "stops for a few minutes"}}, []string{"s-1vcpu-1gb", "stops for a few minutes", `name="confirm" value="1"`}},
		{"action", "layout", page{Title: "Power off", Data: confirmData{Server: online, Type: "power_off", Label: "Power off",
			Form: url.Values{"force": {"1"}}, SizesErr: refusal, Warning: "Forced"}}, []string{`name="force" value="1"`, "Forced"}},
		{"server", "layout", page{Title: online.Name, Data: serverData{Server: online, Actions: []action{
			{Action: apitypes.Action{ID: "act_1", Type: "resize", State: "failed", Error: &apitypes.ErrorDetail{Code: refusal.Code, Message: refusal.Message, Hint: refusal.Hint},
				Steps:     []apitypes.ActionStep{{Name: "power_off", State: "done", Detail: "the cloud's graceful shutdown"}},
				CreatedAt: at}}}}}, []string{"Resize", "token is read-only", "power_off: done — the cloud&#39;s graceful shutdown"}},
		{"newserver", "layout", page{Title: "Create server", Err: refusal, Data: newServerData{
			Integrations: []integration{invalid}, Integration: &invalid, Catalog: cat, Region: "nyc3",
			Sizes: sizeOptions(cat, "nyc3", "s-1vcpu-1gb"), Name: "web-2", CatalogErr: refusal}}, nil},
		{"newserver", "layout", page{Title: "Create server", Data: newServerData{}}, nil},
		{"server", "layout", page{Title: srv.Name, Data: serverData{Server: srv, Charts: charts(nil, at, time.Hour), Live: "/live"}},
			[]string{"at step instance", "quota_exceeded", "droplet limit reached (10 of 10)", "Delete a droplet or ask DigitalOcean"}},
		{"server", "live", page{Data: serverData{Server: srv}}, []string{"at step instance", "Delete a droplet"}},
		{"server", "layout", page{Title: online.Name, Data: serverData{Server: online, Charts: charts([]sample{{At: at, CPUPercent: 3}}, at, time.Hour)}},
			[]string{"outside the rollout target 1.4.0", `<span class="badge failed">rolled back</span> 1.4.0 → 1.2.3: 1.4.0 did not reconnect within 2m0s`, "act_9"}},
		{"tasks", "layout", page{Title: "Tasks", Err: refusal, Data: tasksData{Tasks: []task{failedTask}, Servers: []server{srv, online},
			Tags: []string{"web"}, Target: "server:srv_2", Kind: "command", Plan: examplePlan, Names: names, Available: true}}, []string{"failed"}},
		{"tasks", "layout", page{Title: "Tasks", Data: tasksData{Names: names}}, nil},
		{"task", "layout", page{Title: "Task tsk_1", Data: taskData{Task: failedTask, Server: "db-1", Logs: "/logs"}}, []string{"exit status 2"}},
		{"task", "live", page{Data: taskData{Task: failedTask, Server: "db-1"}}, []string{`id="task-exit">2<`}},
		{"deployment", "layout", page{Title: "Deployment dep_1", Data: deploymentData{Deployment: dep, Names: names, Live: "/live"}}, []string{"1 of 2 targets failed",
			"step 3 (open-web): inbound ports 22, 80, 443", `href="/ui/w/default/servers/srv_2#actions">firewall act_7</a>`}},
		{"deployment", "live", page{Data: deploymentData{Deployment: dep, Names: names}}, nil},
		{"alerts", "layout", page{Title: "Alerts", Data: alertsData{Firing: []apitypes.Alert{firing}, Rules: rules}},
			[]string{"web-1 offline for 5m0s", "disk"}},
		{"alerts", "layout", page{Title: "Alerts", Data: alertsData{}}, nil},
		{"rollouts", "layout", page{Title: "Agent rollouts", Data: rolloutsData{Rollouts: []rollout{failedRollout}, Available: true}},
			[]string{"rol_1", "failed"}},
		{"rollouts", "live", page{Data: rolloutsData{}}, nil},
		{"rollout", "layout", page{Title: "Rollout rol_1", Data: rolloutData{Rollout: failedRollout, Live: "/live"}},
			[]string{"the agent rolled back to 1.3.0", "the rollout stopped first"}},
		{"rollout", "live", page{Data: rolloutData{Rollout: failedRollout}}, []string{"web-1"}},
		{"webhooks", "layout", page{Title: "Webhooks", Err: refusal, Data: webhooksData{Webhooks: []apitypes.Webhook{disabled},
			Created: &apitypes.CreatedWebhook{Webhook: disabled, Secret: "whsec_c2VjcmV0"}, Events: "*", Format: "raw"}},
			[]string{"hooks.example.com", "every delivery failed for 24h", "whsec_c2VjcmV0"}},
		{"webhooks", "layout", page{Title: "Webhooks", Data: webhooksData{Events: "*", Format: "raw"}}, nil},
		{"webhook", "layout", page{Title: "Webhook wh_1", Data: webhookData{Webhook: disabled, Deliveries: []apitypes.WebhookDelivery{deadDelivery, redirected}}},
			[]string{"receiver answered 500", "redirect not followed"}},
		{"eventlog", "layout", page{Title: "Events", Data: evs}, []string{"server.failed", "quota_exceeded", "alert.firing"}},
		{"eventlog", "layout", page{Title: "Events", Data: []logEvent{}}, nil},
		{"eventlog", "live", page{Data: evs}, []string{"server.failed"}},
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
