// Package devenv is `devpilot dev`: the control plane plus simulated
// DigitalOcean and Vultr accounts in one process on loopback, so a new user
// (and the test suite) can try everything without a cloud account. Start
// writes DATA_DIR/dev.env with the URLs and credentials scripts need.
package devenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/bootstrap/sandbox"
	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
	"github.com/devpilot/devpilot/controlplane/cloud/vultr/vultrsim"
	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/shared/atomicfile"
)

// EnvFile is the name of the file Start writes into the data directory.
const EnvFile = "dev.env"

// Config configures a dev environment.
type Config struct {
	DataDir string
	Listen  string // control plane address; port 0 picks one
	Logger  *zap.Logger
	Out     io.Writer // where the first start says which file holds the owner token

	// BootDelay is how long a simulated instance takes to become active.
	BootDelay time.Duration

	// Passed to the control plane (see app.Config); zero values take its defaults.
	Database          string // "" for SQLite in DataDir, or a postgres:// URL
	AgentDir          string
	AgentTimeout      time.Duration
	HeartbeatInterval time.Duration
	PollInterval      time.Duration
	ReconcileInterval time.Duration
	// Integration health checks and alert evaluation (app.Config's).
	IntegrationCheckInterval time.Duration
	AlertInterval            time.Duration
	AlertStaleAfter          time.Duration
	// ReconcileFirewallEvery: firewall drift checked every n-th pass (app's default 10).
	ReconcileFirewallEvery int

	// Runtime boots simulated instances; nil: the sandbox runtime (user-data
	// as a process tree under DataDir/machines, no SSH diagnostics). The
	// e2e suite plugs in real containers (e2e/nspawn).
	Runtime simrun.Runtime
	// AgentEnv is extra KEY=value environment for the sandbox's agents
	// (e.g. DEVPILOT_AGENT_REBOOT=none plays agents older than protocol 1.1).
	AgentEnv []string
	// SSHAddr maps an instance's public IPv4 to its sshd (with Runtime).
	SSHAddr func(publicIPv4 string) string
	// WebhooksPoll is passed to the control plane (app.Config.WebhooksPoll).
	WebhooksPoll time.Duration
}

// Env is a running dev environment.
type Env struct {
	App      *app.App
	DO       *dosim.Sim
	Machines *sandbox.Runtime // nil with Config.Runtime
	Vultr    *vultrsim.Sim
	DOURL    string
	VultrURL string
	EnvFile  string
	Values   map[string]string // what dev.env holds

	cancel  context.CancelFunc
	done    chan error
	servers []*http.Server
	appCfg  app.Config
	stopped bool
}

// Credentials of the simulated accounts. They are kept in the data
// directory so they survive a restart of `devpilot dev` (integrations
// connected with them keep working).
type creds struct {
	DOToken, DOReadOnly, VultrKey, VultrBlocked string
}

func loadCreds(dir string) (creds, error) {
	path := filepath.Join(dir, "sim-credentials")
	b, err := os.ReadFile(path)
	if err == nil {
		f := strings.Fields(string(b))
		if len(f) == 4 {
			return creds{f[0], f[1], f[2], f[3]}, nil
		}
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return creds{}, err
	}
	c := creds{
		DOToken:      "dop_v1_" + ids.Random(32),
		DOReadOnly:   "dop_v1_" + ids.Random(32),
		VultrKey:     strings.ToUpper(ids.Random(22)),
		VultrBlocked: strings.ToUpper(ids.Random(22)),
	}
	data := strings.Join([]string{c.DOToken, c.DOReadOnly, c.VultrKey, c.VultrBlocked}, "\n") + "\n"
	return c, os.WriteFile(path, []byte(data), 0o600)
}

// BlockedIP is the only address VULTR_SIM_BLOCKED_KEY's allowlist admits:
// a documentation address no loopback caller has.
const BlockedIP = "203.0.113.10"

// Start brings up both simulators and the control plane and serves until
// Close (or ctx's end).
func Start(ctx context.Context, cfg Config) (*Env, error) {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.BootDelay == 0 {
		cfg.BootDelay = 2 * time.Second
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = time.Second // loopback simulators: poll briskly
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}
	c, err := loadCreds(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("simulator credentials: %w", err)
	}
	e := &Env{done: make(chan error, 1)}
	// Simulated instances really run their user-data: as a sandboxed
	// process tree under DataDir/machines, with the agent supervised.
	runtime := cfg.Runtime
	if runtime == nil {
		e.Machines = sandbox.New(sandbox.Options{Dir: filepath.Join(cfg.DataDir, "machines"), Logger: cfg.Logger.Named("sandbox"), AgentEnv: cfg.AgentEnv})
		runtime = e.Machines
	}
	e.DO = dosim.New(dosim.Options{Logger: cfg.Logger.Named("dosim"), BootDelay: cfg.BootDelay, Runtime: runtime})
	e.DO.AddToken(c.DOToken, true)
	e.DO.AddToken(c.DOReadOnly, false)
	e.Vultr = vultrsim.New(vultrsim.Options{Logger: cfg.Logger.Named("vultrsim"), BootDelay: cfg.BootDelay, Runtime: runtime})
	e.Vultr.AddKey(c.VultrKey, vultrsim.KeyOptions{Name: "Dev Account", Email: "dev@example.com"})
	e.Vultr.AddKey(c.VultrBlocked, vultrsim.KeyOptions{AllowedIPs: []string{BlockedIP}, Name: "Dev Account", Email: "dev@example.com"})

	if e.DOURL, err = e.serve(e.DO.Handler()); err != nil {
		e.closeSims()
		return nil, fmt.Errorf("digitalocean simulator: %w", err)
	}
	if e.VultrURL, err = e.serve(e.Vultr.Handler()); err != nil {
		e.closeSims()
		return nil, fmt.Errorf("vultr simulator: %w", err)
	}
	e.appCfg = app.Config{
		DataDir: cfg.DataDir, Database: cfg.Database, Listen: cfg.Listen, TLS: app.TLSAuto, Logger: cfg.Logger, Out: cfg.Out,
		DigitalOceanAPIURL: e.DOURL, VultrAPIURL: e.VultrURL,
		AgentDir: cfg.AgentDir, AgentTimeout: cfg.AgentTimeout, HeartbeatInterval: cfg.HeartbeatInterval,
		PollInterval: cfg.PollInterval, NoSSHDiagnostics: cfg.Runtime == nil, SSHAddr: cfg.SSHAddr,
		ReconcileInterval: cfg.ReconcileInterval, ReconcileFirewallEvery: cfg.ReconcileFirewallEvery,
		IntegrationCheckInterval: cfg.IntegrationCheckInterval, AlertInterval: cfg.AlertInterval, AlertStaleAfter: cfg.AlertStaleAfter,
		// Receivers in a dev environment run on this machine.
		WebhooksAllowLoopback: true, WebhooksPoll: cfg.WebhooksPoll,
	}
	e.App, err = app.New(ctx, e.appCfg)
	if err != nil {
		e.closeSims()
		return nil, err
	}
	if err := e.App.Listen(); err != nil {
		_ = e.App.Close()
		e.closeSims()
		return nil, err
	}
	token, err := os.ReadFile(filepath.Join(cfg.DataDir, app.OwnerTokenFile))
	if err != nil {
		_ = e.App.Close()
		e.closeSims()
		return nil, fmt.Errorf("owner token: %w", err)
	}
	abs, _ := filepath.Abs(filepath.Join(cfg.DataDir, app.TLSDir, "ca.crt"))
	e.Values = map[string]string{
		"DEVPILOT_URL":          e.App.URL,
		"DEVPILOT_TOKEN":        strings.TrimSpace(string(token)),
		"DEVPILOT_CA_CERT":      abs,
		"DO_SIM_URL":            e.DOURL,
		"DO_SIM_TOKEN":          c.DOToken,
		"DO_SIM_READONLY_TOKEN": c.DOReadOnly,
		"VULTR_SIM_URL":         e.VultrURL,
		"VULTR_SIM_KEY":         c.VultrKey,
		"VULTR_SIM_BLOCKED_KEY": c.VultrBlocked,
	}
	e.EnvFile = filepath.Join(cfg.DataDir, EnvFile)
	if err := writeEnv(e.EnvFile, e.Values); err != nil {
		_ = e.App.Close()
		e.closeSims()
		return nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	e.cancel = cancel
	go func() { e.done <- e.App.Serve(sctx) }()
	return e, nil
}

// serve runs h on a fresh loopback port and returns its URL.
func (e *Env) serve(h http.Handler) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	e.servers = append(e.servers, srv)
	go func() { _ = srv.Serve(ln) }()
	return "http://" + ln.Addr().String(), nil
}

func (e *Env) closeSims() {
	for _, s := range e.servers {
		_ = s.Close()
	}
	if e.DO != nil {
		e.DO.Close()
	}
	if e.Vultr != nil {
		e.Vultr.Close()
	}
	if e.Machines != nil {
		_ = e.Machines.Close()
	}
}

// Close stops the control plane gracefully, then the simulators.
func (e *Env) Close() error {
	err := e.stopApp()
	e.closeSims()
	return err
}

func (e *Env) stopApp() error {
	if e.stopped {
		return nil
	}
	e.stopped = true
	e.cancel()
	err := <-e.done
	if cerr := e.App.Close(); err == nil {
		err = cerr
	}
	return err
}

// RestartControlPlane stops the control plane gracefully and starts
// another on dataDir (a restored backup, say) with the same simulators,
// address and settings, so the simulated servers' agents, which keep
// running, reconnect to it. dev.env is not rewritten.
func (e *Env) RestartControlPlane(ctx context.Context, dataDir string) error {
	addr := strings.TrimPrefix(strings.TrimPrefix(e.App.URL, "https://"), "http://")
	if err := e.stopApp(); err != nil {
		return err
	}
	c := e.appCfg
	c.DataDir, c.Listen, c.Out = dataDir, addr, io.Discard
	a, err := app.New(ctx, c)
	if err != nil {
		return err
	}
	if err := a.Listen(); err != nil {
		_ = a.Close()
		return err
	}
	sctx, cancel := context.WithCancel(ctx)
	e.App, e.cancel, e.done, e.stopped = a, cancel, make(chan error, 1), false
	go func() { e.done <- a.Serve(sctx) }()
	return nil
}

// writeEnv writes shell KEY=value lines, single-quoted, mode 0600 (the
// file holds credentials).
func writeEnv(path string, v map[string]string) error {
	keys := []string{"DEVPILOT_URL", "DEVPILOT_TOKEN", "DEVPILOT_CA_CERT", "DO_SIM_URL", "DO_SIM_TOKEN",
		"DO_SIM_READONLY_TOKEN", "VULTR_SIM_URL", "VULTR_SIM_KEY", "VULTR_SIM_BLOCKED_KEY"}
	var b strings.Builder
	b.WriteString("# Written by `devpilot dev`. Load with: set -a; . ./dev.env; set +a\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s='%s'\n", k, strings.ReplaceAll(v[k], "'", `'\''`))
	}
	return atomicfile.WriteFile(path, []byte(b.String()), 0o600)
}
