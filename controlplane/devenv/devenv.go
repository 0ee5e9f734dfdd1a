// Package devenv is `devpilot dev`: the control plane plus simulated
// DigitalOcean and Vultr accounts in one process on loopback, so a new user
// (and the test suite) can try everything without a cloud account. Start
// writes DATA_DIR/dev.env with the URLs and credentials scripts need.
package devenv

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/bootstrap/sandbox"
	"github.com/devpilot/devpilot/controlplane/agentrelease"
	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
	"github.com/devpilot/devpilot/controlplane/cloud/vultr/vultrsim"
	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/tcplb"
	"github.com/devpilot/devpilot/shared/atomicfile"
	"github.com/devpilot/devpilot/shared/release"
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
	Database           string // "" for SQLite in DataDir, or a postgres:// URL
	AgentDir           string
	AgentReleaseKeys   []string // more files of release public keys to trust, beside the dev key
	AgentTimeout       time.Duration
	AgentRebootTimeout time.Duration
	HeartbeatInterval  time.Duration
	PollInterval       time.Duration
	ReconcileInterval  time.Duration
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
	// Replicas > 1 (with a postgres:// Database): the control plane is
	// that many `serve --mode active` on the database behind a loopback
	// TCP balancer (controlplane/tcplb), sharing the keyring and TLS
	// files; the API and the agents reach them round robin through its
	// address, App.URL. App is the first of them. Not with
	// RestartControlPlane.
	Replicas int
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

	releaseKey ed25519.PrivateKey

	cancel  context.CancelFunc
	done    chan error
	servers []*http.Server
	appCfg  app.Config
	stopped bool

	// With Config.Replicas: the other control planes, their ends, and
	// the balancer in front of all of them.
	others     []*app.App
	othersDone []chan error
	lb         *tcplb.Balancer
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
		// The start limit of packaging/devpilot-agent.service (10 starts
		// per 300 s at RestartSec=5), scaled to the sandbox's 1 s restart
		// delay: an agent update's restart and a rollback (3 failed
		// starts, then the old version) fit, a crash loop does not.
		e.Machines = sandbox.New(sandbox.Options{Dir: filepath.Join(cfg.DataDir, "machines"), Logger: cfg.Logger.Named("sandbox"), AgentEnv: cfg.AgentEnv,
			StartLimitBurst: 10, StartLimitInterval: time.Minute})
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
	// A dev release signing key, made once and kept in the data dir (a
	// real operator keeps theirs offline): the builds this environment
	// serves are signed with it, and its agents pin it.
	e.releaseKey, err = devReleaseKey(cfg.DataDir)
	if err != nil {
		e.closeSims()
		return nil, err
	}
	e.appCfg = app.Config{
		DataDir: cfg.DataDir, Database: cfg.Database, Listen: cfg.Listen, TLS: app.TLSAuto, Logger: cfg.Logger, Out: cfg.Out,
		DigitalOceanAPIURL: e.DOURL, VultrAPIURL: e.VultrURL,
		AgentDir: cfg.AgentDir, AgentTimeout: cfg.AgentTimeout, AgentRebootTimeout: cfg.AgentRebootTimeout, HeartbeatInterval: cfg.HeartbeatInterval,
		PollInterval: cfg.PollInterval, NoSSHDiagnostics: cfg.Runtime == nil, SSHAddr: cfg.SSHAddr,
		ReconcileInterval: cfg.ReconcileInterval, ReconcileFirewallEvery: cfg.ReconcileFirewallEvery,
		AgentReleaseKeys:         append([]string{filepath.Join(cfg.DataDir, DevReleasePublicKeyFile)}, cfg.AgentReleaseKeys...),
		IntegrationCheckInterval: cfg.IntegrationCheckInterval, AlertInterval: cfg.AlertInterval, AlertStaleAfter: cfg.AlertStaleAfter,
		// Receivers in a dev environment run on this machine.
		WebhooksAllowLoopback: true, WebhooksPoll: cfg.WebhooksPoll,
	}
	var addrs []string
	if cfg.Replicas > 1 {
		if !store.IsPostgresURL(cfg.Database) {
			e.closeSims()
			return nil, fmt.Errorf("%d replicas need a postgres:// database", cfg.Replicas)
		}
		for range cfg.Replicas {
			addr, err := freeLoopbackAddr()
			if err != nil {
				e.closeSims()
				return nil, err
			}
			addrs = append(addrs, addr)
		}
		if e.lb, err = tcplb.Listen("127.0.0.1:0", addrs); err != nil {
			e.closeSims()
			return nil, err
		}
		e.appCfg.Mode, e.appCfg.Listen, e.appCfg.PublicURL = app.ModeActive, addrs[0], "https://"+e.lb.Addr()
	}
	e.App, err = app.New(ctx, e.appCfg)
	if err != nil {
		e.closeSims()
		return nil, err
	}
	if err := e.signServedBuilds(ctx); err != nil {
		cfg.Logger.Warn("the agent builds served are not added as releases", zap.Error(err))
	}
	if err := e.App.Listen(); err != nil {
		_ = e.App.Close()
		e.closeSims()
		return nil, err
	}
	for i := 1; i < cfg.Replicas; i++ {
		a, err := e.startReplica(ctx, filepath.Join(cfg.DataDir, fmt.Sprintf("replica-%d", i)), addrs[i])
		if err != nil {
			_ = e.Close()
			return nil, fmt.Errorf("control plane %d: %w", i+1, err)
		}
		e.others = append(e.others, a)
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
	for _, a := range e.others {
		done := make(chan error, 1)
		e.othersDone = append(e.othersDone, done)
		go func() { done <- a.Serve(sctx) }()
	}
	return e, nil
}

// startReplica makes another control plane of the database in dir,
// listening on addr, with the first one's keyring and TLS files (agents
// pin its CA).
func (e *Env) startReplica(ctx context.Context, dir, addr string) (*app.App, error) {
	for _, f := range []string{"keyring.json", "tls/ca.crt", "tls/ca.key", "tls/server.crt", "tls/server.key"} {
		b, err := os.ReadFile(filepath.Join(e.appCfg.DataDir, f))
		if err != nil {
			return nil, err
		}
		to := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(to, b, 0o600); err != nil {
			return nil, err
		}
	}
	c := e.appCfg
	c.DataDir, c.Listen, c.Out = dir, addr, io.Discard
	a, err := app.New(ctx, c)
	if err != nil {
		return nil, err
	}
	if err := a.Listen(); err != nil {
		_ = a.Close()
		return nil, err
	}
	return a, nil
}

// freeLoopbackAddr is a loopback address no one listens on now.
func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// The dev release signing key's files in the data dir.
const (
	DevReleaseKeyFile       = "dev-release-key.pem" // 0600; never leaves the machine
	DevReleasePublicKeyFile = "dev-release-key.pub"
)

func devReleaseKey(dir string) (ed25519.PrivateKey, error) {
	path := filepath.Join(dir, DevReleaseKeyFile)
	if b, err := os.ReadFile(path); err == nil {
		return release.ParsePrivateKey(b)
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("dev release key: %w", err)
	}
	k, err := release.GenerateKey()
	if err != nil {
		return nil, err
	}
	pemb, err := release.MarshalPrivateKey(k)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(path, pemb, 0o600); err != nil {
		return nil, fmt.Errorf("dev release key: %w", err)
	}
	pub := "# devpilot dev release key (made by devpilot dev)\n" + release.EncodePublicKey(k.Public().(ed25519.PublicKey)) + "\n"
	if err := atomicfile.WriteFile(filepath.Join(dir, DevReleasePublicKeyFile), []byte(pub), 0o644); err != nil {
		return nil, fmt.Errorf("dev release key: %w", err)
	}
	return k, nil
}

// signServedBuilds adds the agent build the environment installs on new
// servers as a release, signed with the dev key, under the version the
// build reports (devpilot-agent version), so an update_agent back to it
// works too.
func (e *Env) signServedBuilds(ctx context.Context) error {
	dir := e.appCfg.AgentDir
	if dir == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		dir = filepath.Dir(exe)
	}
	bin := filepath.Join(dir, "devpilot-agent")
	if _, err := os.Stat(bin); err != nil {
		bin = filepath.Join(dir, "devpilot-agent-"+runtime.GOOS+"-"+runtime.GOARCH)
	}
	// "devpilot-agent v1.2.3 (commit …, go…)"
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		return fmt.Errorf("%s version: %w", bin, err)
	}
	f := strings.Fields(string(out))
	if len(f) < 2 {
		return fmt.Errorf("%s version: unexpected output %q", bin, out)
	}
	_, err = e.AddRelease(bin, f[1])
	return err
}

// AddRelease signs an agent binary for this host's os/arch as version
// with the dev release key and adds it to the control plane's releases
// (what `devpilot agents sign` and `devpilot agents releases add` do).
func (e *Env) AddRelease(binPath, version string) (agentrelease.Release, error) {
	return e.AddReleaseSigned(binPath, version, e.releaseKey)
}

// AddReleaseSigned is AddRelease with another key (a test of refusals);
// the control plane refuses a release its keys do not verify.
func (e *Env) AddReleaseSigned(binPath, version string, key ed25519.PrivateKey) (agentrelease.Release, error) {
	f, err := os.Open(binPath)
	if err != nil {
		return agentrelease.Release{}, err
	}
	sig, err := release.Sign(key, f, version, runtime.GOOS, runtime.GOARCH)
	_ = f.Close()
	if err != nil {
		return agentrelease.Release{}, err
	}
	tmp, err := os.MkdirTemp("", "devpilot-release-")
	if err != nil {
		return agentrelease.Release{}, err
	}
	defer func() { _ = os.RemoveAll(tmp) }()
	b, err := os.ReadFile(binPath)
	if err != nil {
		return agentrelease.Release{}, err
	}
	staged := filepath.Join(tmp, "devpilot-agent")
	if err := os.WriteFile(staged, b, 0o755); err != nil {
		return agentrelease.Release{}, err
	}
	sb, _ := json.Marshal(sig)
	if err := os.WriteFile(staged+".sig", sb, 0o644); err != nil {
		return agentrelease.Release{}, err
	}
	return e.App.Releases.Add(staged, version)
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
	if e.cancel != nil {
		e.cancel()
		if err := <-e.done; err != nil {
			_ = e.closeOthers() // the first error is the one returned
			_ = e.App.Close()
			return err
		}
	}
	err := e.closeOthers()
	if cerr := e.App.Close(); err == nil {
		err = cerr
	}
	return err
}

// closeOthers stops the other control planes (Config.Replicas) and the
// balancer; Serve's context ended already (or never started them).
func (e *Env) closeOthers() error {
	var err error
	for i, a := range e.others {
		if i < len(e.othersDone) {
			if serr := <-e.othersDone[i]; err == nil {
				err = serr
			}
		}
		if cerr := a.Close(); err == nil {
			err = cerr
		}
	}
	e.others, e.othersDone = nil, nil
	if e.lb != nil {
		_ = e.lb.Close()
		e.lb = nil
	}
	return err
}

// RestartControlPlane stops the control plane gracefully and starts
// another on dataDir (a restored backup, say) with the same simulators,
// address and settings, so the simulated servers' agents, which keep
// running, reconnect to it. dev.env is not rewritten.
func (e *Env) RestartControlPlane(ctx context.Context, dataDir string) error {
	if e.lb != nil {
		return errors.New("RestartControlPlane: not with several control planes (Config.Replicas)")
	}
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
