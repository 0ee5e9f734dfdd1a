package devenv_test

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/devenv"
	"github.com/devpilot/devpilot/shared/protocol"
)

// scrape is the control plane's /metrics text.
func (h *harness) scrape() string {
	h.t.Helper()
	resp, err := h.client.Get(h.env.App.URL + "/metrics")
	if err != nil {
		h.t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		h.t.Fatalf("/metrics: %d %s", resp.StatusCode, b)
	}
	return string(b)
}

// sample is the value of the series whose line starts with series (name
// and labels exactly as exposed), or -1.
func sample(text, series string) float64 {
	for _, l := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(rest, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

// TestOperatorMetrics provisions a server and runs a task on a real agent,
// then reads what an operator alerts on from /metrics: the provisioning
// steps and job, the provider requests, the task latencies, servers by
// state, agent versions and the active role.
func TestOperatorMetrics(t *testing.T) {
	h := start(t)
	s := onlineServers(t, h, 1)[0]
	v := runTask(t, h.api, s.ID, map[string]any{"kind": "exec", "argv": []string{"true"}})
	if v = waitTask(t, h.api, v.ID, 60*time.Second, "final", final); v.State != protocol.TaskSucceeded {
		t.Fatalf("task: %+v", v)
	}
	m := h.scrape()
	for _, c := range []struct {
		series string
		min    float64
	}{
		{`devpilot_provisioning_steps_total{outcome="done",step="instance"}`, 1},
		{`devpilot_provisioning_steps_total{outcome="done",step="wait_agent"}`, 1},
		{`devpilot_provisioning_step_duration_seconds_count{outcome="done",step="instance"}`, 1},
		{`devpilot_provisioning_jobs_total{outcome="online"}`, 1},
		{`devpilot_task_dispatch_seconds_count`, 1},
		{`devpilot_task_start_seconds_count`, 1},
		{`devpilot_servers{state="online"}`, 1},
		{`devpilot_tasks{state="succeeded"}`, 1},
		{`devpilot_control_plane_role{role="active"}`, 1},
		{`devpilot_store_scrape_ok`, 1},
		{`devpilot_provider_request_duration_seconds_count{provider="digitalocean"}`, 1},
	} {
		if got := sample(m, c.series); got < c.min {
			t.Errorf("%s = %v, want at least %v", c.series, got, c.min)
		}
	}
	if sample(m, `devpilot_control_plane_role{role="standby"}`) != 0 {
		t.Error("the active control plane also reports standby")
	}
	if !regexp.MustCompile(`(?m)^devpilot_provider_requests_total\{provider="digitalocean",status="20[0-9]"\} [1-9]`).MatchString(m) {
		t.Error("no successful digitalocean request counted")
	}
	if !regexp.MustCompile(`(?m)^devpilot_agent_versions\{version="[^"]+"\} 1$`).MatchString(m) {
		t.Error("the online server's agent version is not counted")
	}
	if sample(m, "devpilot_tls_cert_expiry_seconds") < float64(time.Now().Add(300*24*time.Hour).Unix()) {
		t.Error("devpilot_tls_cert_expiry_seconds is not the fresh --tls auto certificate's expiry")
	}
}

// TestAlertsAndDashboardUseRealMetrics: every devpilot_* metric the sample
// alert rules and the Grafana dashboard query exists in a real control
// plane's /metrics (after it provisioned a server and ran a task, so the
// labelled series are there too).
func TestAlertsAndDashboardUseRealMetrics(t *testing.T) {
	h := startWith(t, func(c *devenv.Config) { c.AlertInterval = 200 * time.Millisecond })
	s := onlineServers(t, h, 1)[0]
	v := runTask(t, h.api, s.ID, map[string]any{"kind": "exec", "argv": []string{"true"}})
	waitTask(t, h.api, v.ID, 60*time.Second, "final", final)
	// An alert rule, so devpilot_alerts_firing has its (quiet) series.
	if code := h.call("", "POST", "/v1/workspaces/default/alert-rules",
		map[string]any{"name": "down", "kind": "offline", "for_s": 60}, nil); code != http.StatusCreated {
		t.Fatalf("create rule: %d", code)
	}
	scraped := h.scrape()
	for deadline := time.Now().Add(time.Minute); !strings.Contains(scraped, "devpilot_alerts_firing{"); scraped = h.scrape() {
		if time.Now().After(deadline) {
			t.Fatal("devpilot_alerts_firing has no series for the rule a minute after its creation")
		}
		time.Sleep(100 * time.Millisecond)
	}
	exposed := map[string]bool{}
	for _, l := range strings.Split(scraped, "\n") {
		if f := strings.Fields(l); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			exposed[f[2]] = true
			if f[3] == "histogram" || f[3] == "summary" {
				for _, suf := range []string{"_bucket", "_sum", "_count"} {
					exposed[f[2]+suf] = true
				}
			}
		}
	}
	alerts, err := os.ReadFile("../../packaging/prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	dash, err := os.ReadFile("../../packaging/grafana/devpilot.json")
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(dash, &d); err != nil || len(d.Panels) == 0 {
		t.Fatalf("dashboard JSON: %v (%d panels)", err, len(d.Panels))
	}
	var exprs []string
	for _, p := range d.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	name := regexp.MustCompile(`devpilot_[a-z0-9_]+`)
	for file, text := range map[string]string{"alerts.yml": string(alerts), "devpilot.json": strings.Join(exprs, "\n")} {
		used := name.FindAllString(text, -1)
		slices.Sort(used)
		used = slices.Compact(used)
		if len(used) < 10 {
			t.Errorf("%s uses only %v", file, used)
		}
		for _, u := range used {
			if !exposed[u] {
				t.Errorf("%s uses %s, which /metrics does not expose", file, u)
			}
		}
	}
	if !strings.Contains(string(alerts), "groups:") || strings.Count(string(alerts), "- alert:") < 10 {
		t.Error("alerts.yml is not a rules file with its alerts")
	}
}
