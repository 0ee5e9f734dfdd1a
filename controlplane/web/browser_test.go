package web_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
	"github.com/devpilot/devpilot/controlplane/devenv"
	"github.com/devpilot/devpilot/controlplane/store"
)

// agentDir holds a devpilot-agent built once for the browser tests;
// simulated servers download and install it.
var (
	agentDir   string
	agentOnce  sync.Once
	agentBuild error
)

func buildAgent(t *testing.T) string {
	t.Helper()
	agentOnce.Do(func() {
		dir, err := os.MkdirTemp("", "devpilot-web-agent-")
		if err != nil {
			agentBuild = err
			return
		}
		agentDir = dir
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "devpilot-agent"), "github.com/devpilot/devpilot/cmd/devpilot-agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			agentBuild = fmt.Errorf("build devpilot-agent: %w\n%s", err, out)
		}
	})
	if agentBuild != nil {
		t.Fatal(agentBuild)
	}
	return agentDir
}

// chromium finds the browser: DEVPILOT_CHROMIUM or Debian's
// /usr/bin/chromium. Under CI=true a missing browser fails the test.
func chromium(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("browser test: skipped under -short (make test runs it)")
	}
	path := os.Getenv("DEVPILOT_CHROMIUM")
	if path == "" {
		path = "/usr/bin/chromium"
	}
	if _, err := os.Stat(path); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("chromium not found at %s (CI=true: browser tests must run; apt-get install chromium): %v", path, err)
		}
		t.Skipf("chromium not found at %s; install it (apt-get install chromium) or set DEVPILOT_CHROMIUM to run the browser tests", path)
	}
	return path
}

// screenshots is where page screenshots go: DEVPILOT_SCREENSHOT_DIR or a
// temporary directory.
func screenshots(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("DEVPILOT_SCREENSHOT_DIR")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// tab is a browser tab with helpers that fail the test with context.
type tab struct {
	t    *testing.T
	ctx  context.Context
	base string
	dir  string
}

func (b *tab) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, actions...); err != nil {
		b.fatal(what, err)
	}
}

// get runs one action that returns a value.
func get[T any](b *tab, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	v, err := chromedp.Run(b.ctx, a)
	if err != nil {
		b.fatal(what, err)
	}
	return v
}

func (b *tab) fatal(what string, err error) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 2*time.Second)
	defer cancel()
	loc, _ := chromedp.Run(ctx, chromedp.Location())
	body, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("main")))
	b.t.Fatalf("%s: %v\nat %s:\n%s", what, err, loc, body)
}

func (b *tab) shot(name string) {
	b.t.Helper()
	png := get(b, "screenshot "+name, chromedp.FullScreenshot(100))
	path := filepath.Join(b.dir, "console-"+name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot %s", path)
}

func (b *tab) text(sel string) string {
	b.t.Helper()
	return get(b, "read "+sel, chromedp.Text(chromedp.CSS(sel)))
}

// waitText waits until sel's text contains want.
func (b *tab) waitText(sel, want string, timeout time.Duration) string {
	b.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(b.ctx, 2*time.Second)
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		cancel()
		if err == nil && strings.Contains(s, want) {
			return s
		}
		if time.Now().After(deadline) {
			body, _ := chromedp.Run(b.ctx, chromedp.Text(chromedp.CSS("main")))
			b.t.Fatalf("waited %s for %q in %s; page:\n%s", timeout, want, sel, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (b *tab) location() string {
	b.t.Helper()
	return strings.TrimPrefix(get(b, "location", chromedp.Location()), b.base)
}

func TestConsoleInABrowser(t *testing.T) {
	chrome := chromium(t)
	env, err := devenv.Start(context.Background(), devenv.Config{
		DataDir: t.TempDir(), Listen: "127.0.0.1:0", Logger: zap.NewNop(), Out: &strings.Builder{},
		BootDelay: 10 * time.Millisecond, AgentDir: buildAgent(t), HeartbeatInterval: time.Second,
		PollInterval: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("start dev environment: %v", err)
	}
	t.Cleanup(func() {
		if err := env.Close(); err != nil {
			t.Errorf("close dev environment: %v", err)
		}
	})
	v := env.Values

	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chrome),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox, // tests run as root in CI containers
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		// The dev control plane's CA is made at start; the browser need not trust it.
		chromedp.Flag("ignore-certificate-errors", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	ctx, cancelTab := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 4*time.Minute)
	t.Cleanup(func() {
		cancelTimeout()
		cancelTab()
		cancelAlloc()
	})
	b := &tab{t: t, ctx: ctx, base: env.App.URL, dir: screenshots(t)}

	b.checksCanFail()

	// Sign in.
	b.run("open console", chromedp.Navigate(env.App.URL+"/"), chromedp.WaitVisible(chromedp.CSS("#token")))
	b.checkPage("signin")
	b.run("sign in",
		chromedp.SendKeys(chromedp.CSS("#token"), v["DEVPILOT_TOKEN"]),
		chromedp.Click(chromedp.CSS(`form[action="/ui/signin"] button`)),
		chromedp.WaitVisible(chromedp.CSS(`nav[aria-label="Main"]`)))
	if loc := b.location(); loc != "/ui/w/default/servers" {
		t.Fatalf("after sign in at %s", loc)
	}

	// Integrations: refusals show their code and hint, the secret is not echoed.
	connect := func(provider, label, secret string) {
		t.Helper()
		b.run("connect "+provider+" "+label,
			chromedp.Navigate(env.App.URL+"/ui/w/default/settings/integrations"),
			chromedp.WaitVisible(chromedp.CSS("#ak-"+provider)),
			chromedp.SendKeys(chromedp.CSS("#ak-"+provider), label),
			chromedp.SendKeys(chromedp.CSS("#sk-"+provider), secret),
			chromedp.Click(chromedp.CSS(`form[aria-label^="Connect"] input[value="`+provider+`"] ~ button`)),
			chromedp.WaitVisible(chromedp.CSS("main .notice")))
	}
	connect("digitalocean", "read only", v["DO_SIM_READONLY_TOKEN"])
	refusal := b.waitText("#card-digitalocean .notice.err", "insufficient_scope", 5*time.Second)
	if !strings.Contains(refusal, "Hint:") {
		t.Errorf("refusal without a hint: %q", refusal)
	}
	secretBox := get(b, "read secret box", chromedp.Value(chromedp.CSS("#sk-digitalocean")))
	page := get(b, "read page", chromedp.OuterHTML(chromedp.CSS("html")))
	if secretBox != "" || strings.Contains(page, v["DO_SIM_READONLY_TOKEN"]) {
		t.Error("the refused secret is echoed back")
	}
	b.checkPage("integrations-refused")

	connect("vultr", "blocked", v["VULTR_SIM_BLOCKED_KEY"])
	b.waitText("#card-vultr .notice.err", "ip_not_allowed", 5*time.Second)

	connect("digitalocean", "prod do", v["DO_SIM_TOKEN"])
	b.waitText("main .notice.ok", "DigitalOcean connected", 5*time.Second)
	connect("vultr", "prod vultr", v["VULTR_SIM_KEY"])
	b.waitText("main .notice.ok", "Vultr connected", 5*time.Second)
	b.waitText("#card-vultr .integration", "valid", time.Second)

	b.run("test credentials", chromedp.Click(chromedp.CSS(`#card-digitalocean form[action$="/test"] button`)),
		chromedp.WaitVisible(chromedp.CSS("main .notice")))
	b.waitText("main .notice.ok", "Credential test passed", 5*time.Second)
	if got := b.text("#card-digitalocean .validated"); !strings.Contains(got, "UTC") {
		t.Errorf("last validated: %q", got)
	}
	b.checkPage("integrations")

	// Create a server; a size sold out in the chosen region cannot be picked.
	env.DO.ApplyFaults(dosim.FaultsRequest{SoldOut: []dosim.SoldOutSpec{{Region: "nyc3", Size: "s-1vcpu-1gb", SoldOut: true}}})
	b.run("new server page", chromedp.Navigate(env.App.URL+"/ui/w/default/servers/new"),
		chromedp.WaitVisible(chromedp.CSS("#integration")))
	doID := get(b, "find integration", chromedp.Evaluate[string](
		`Array.from(document.querySelectorAll("#integration option")).find(o => o.textContent.startsWith("DigitalOcean")).value`))
	// Choosing an integration loads its catalog (the script submits the picker).
	b.run("pick integration",
		chromedp.SetValue(chromedp.CSS("#integration"), doID),
		chromedp.WaitVisible(chromedp.CSS("#region")))
	if loc := b.location(); !strings.Contains(loc, "integration_id="+doID) {
		t.Fatalf("catalog of the wrong integration: %s", loc)
	}
	type option struct {
		Disabled bool   `json:"disabled"`
		Label    string `json:"label"`
	}
	b.run("choose region", chromedp.SetValue(chromedp.CSS("#region"), "nyc3"))
	soldOut := get(b, "read size option", chromedp.Evaluate[option](
		`(() => { const o = document.querySelector('#size option[value="s-1vcpu-1gb"]'); return {disabled: o.disabled, label: o.textContent}; })()`))
	if !soldOut.Disabled || !strings.Contains(soldOut.Label, "sold out in nyc3") {
		t.Errorf("sold-out size offered: %+v", soldOut)
	}
	b.run("fill server form",
		chromedp.SendKeys(chromedp.CSS("#name"), "web-1"),
		chromedp.SetValue(chromedp.CSS("#size"), "s-1vcpu-2gb"))
	b.checkPage("create-server")
	b.run("create server", chromedp.Click(chromedp.CSS(`#create-server button[type="submit"]`)),
		chromedp.WaitVisible(chromedp.CSS("#server-state")))
	serverPath := b.location()
	if !strings.HasPrefix(serverPath, "/ui/w/default/servers/srv_") {
		t.Fatalf("after create at %s", serverPath)
	}
	// The page updates itself: no reload from here on.
	b.waitText("#server-state", "online", 90*time.Second)
	// The lifecycle buttons are part of the live page: there once online.
	b.waitText("#lifecycle", "Reboot", 30*time.Second)
	if steps := b.waitText("ol.timeline", "done", time.Second); !strings.Contains(steps, "s-1vcpu-2gb debian-12-x64 in nyc3") {
		t.Errorf("server not created as picked: %q", steps)
	}
	b.run("health chart", chromedp.WaitVisible(chromedp.CSS("figure.chart polyline.line")))
	b.checkPage("server")
	checkChart(b)

	b.run("servers list", chromedp.Navigate(env.App.URL+"/ui/w/default/servers"), chromedp.WaitVisible(chromedp.CSS("table.list")))
	if row := b.text("table.list tbody"); !strings.Contains(row, "web-1") || !strings.Contains(row, "online") || !strings.Contains(row, "CPU") {
		t.Errorf("servers list row: %q", row)
	}
	b.checkPage("servers")
	// At 1280 px the servers table fits: nothing scrolls sideways.
	if fit := get(b, "measure table", chromedp.Evaluate[[]int](
		`[document.querySelector("table.list").scrollWidth, document.querySelector("main").clientWidth, document.scrollingElement.scrollWidth, innerWidth]`)); fit[0] > fit[1] || fit[2] > fit[3] {
		t.Errorf("servers table at 1280 px: table %d wide in main %d; page %d in window %d", fit[0], fit[1], fit[2], fit[3])
	}

	t.Run("task", func(t *testing.T) { runTaskInBrowser(t, &tab{t: t, ctx: b.ctx, base: b.base, dir: b.dir}, env) })
	t.Run("lifecycle", func(t *testing.T) { lifecycleButtons(t, &tab{t: t, ctx: b.ctx, base: b.base, dir: b.dir}, serverPath) })
	t.Run("live list", func(t *testing.T) { serversListIsLive(t, &tab{t: t, ctx: b.ctx, base: b.base, dir: b.dir}, env, doID) })
	t.Run("deployment", func(t *testing.T) {
		deploymentPage(t, &tab{t: t, ctx: b.ctx, base: b.base, dir: b.dir}, env, strings.TrimPrefix(serverPath, "/ui/w/default/servers/"))
	})
	t.Run("alerts", func(t *testing.T) { alertsInBrowser(t, &tab{t: t, ctx: b.ctx, base: b.base, dir: b.dir}, env, doID) })

	t.Run("events", func(t *testing.T) {
		eventLogIsLive(t, &tab{t: t, ctx: b.ctx, base: b.base, dir: b.dir}, env, strings.TrimPrefix(serverPath, "/ui/w/default/servers/"))
	})
	t.Run("webhooks", func(t *testing.T) { webhooksInBrowser(t, &tab{t: t, ctx: b.ctx, base: b.base, dir: b.dir}, env) })

	b.run("rollouts", chromedp.Navigate(env.App.URL+"/ui/w/default/rollouts"), chromedp.WaitVisible(chromedp.CSS("main h1")))
	if txt := b.text("main"); !strings.Contains(txt, "No rollouts yet") {
		t.Errorf("rollouts page: %q", txt)
	}
	b.checkPage("rollouts")
	// A paused rollout of the server (recorded as the API records one; no
	// agent release is needed to show it): its page lists the server.
	rolloutID := pausedRollout(t, env, strings.TrimPrefix(serverPath, "/ui/w/default/servers/"))
	b.run("rollout", chromedp.Navigate(env.App.URL+"/ui/w/default/rollouts/"+rolloutID), chromedp.WaitVisible(chromedp.CSS("#rollout-state")))
	if st, row := b.text("#rollout-state"), b.text("table.list tbody"); st != "paused" || !strings.Contains(row, "web-1") || !strings.Contains(row, "canary") {
		t.Errorf("rollout page: state %q, row %q", st, row)
	}
	b.checkPage("rollout")

	// Error pages say what happened, and pass the same checks.
	b.run("not found", chromedp.Navigate(env.App.URL+"/ui/w/default/servers/srv_aaaaaaaaaaaaaaaa"), chromedp.WaitVisible(chromedp.CSS("main h1")))
	if h := b.text("main h1"); h != "Not found" {
		t.Errorf("not-found page heading %q", h)
	}
	b.checkPage("not-found")
	b.run("remove page", chromedp.Navigate(env.App.URL+"/ui/w/default/settings/integrations"),
		chromedp.Click(chromedp.CSS(`#card-digitalocean a.danger`)), chromedp.WaitVisible(chromedp.CSS("main form")))
	b.checkPage("remove-integration")
	b.run("new server, no integration chosen", chromedp.Navigate(env.App.URL+"/ui/w/default/servers/new"), chromedp.WaitVisible(chromedp.CSS("#integration")))
	b.checkPage("new-server")

	// Sign out: the console is closed again.
	b.run("sign out", chromedp.Click(chromedp.CSS(`form[action="/ui/signout"] button`)),
		chromedp.WaitVisible(chromedp.CSS("#token")))
	b.run("back to servers", chromedp.Navigate(env.App.URL+"/ui/w/default/servers"), chromedp.WaitVisible(chromedp.CSS("#token")))
	if loc := b.location(); !strings.HasPrefix(loc, "/ui/signin") {
		t.Errorf("after sign out a page opened at %s", loc)
	}
}

// pausedRollout records a paused rollout of one server in env's store.
func pausedRollout(t *testing.T, env *devenv.Env, serverID string) string {
	t.Helper()
	ctx := context.Background()
	ws, err := env.App.Store.Q().WorkspaceBySlug(ctx, "default")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	r := store.Rollout{ID: "rol_aaaaaaaaaaaaaaab", WorkspaceID: ws.ID, Version: "9.9.9", SelectorJSON: "{}", Canary: "1", CanaryCount: 1,
		MaxParallel: 1, HealthWindowS: 60, State: "paused", PausedFrom: "canary", CreatedBy: "test", CreatedAt: now, UpdatedAt: now}
	if err := env.App.Store.Q().CreateRollout(ctx, r, []store.RolloutTarget{{ServerID: serverID, Wave: "canary", State: "pending",
		FromVersion: "dev"}}); err != nil {
		t.Fatal(err)
	}
	return r.ID
}
