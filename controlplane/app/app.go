// Package app assembles the control plane: data directory, store, master
// keys, TLS, the admin API, and the HTTP server with graceful shutdown.
// `devpilot serve` and `devpilot dev` both run an App.
package app

import (
	"cmp"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"golang.org/x/crypto/acme/autocert"

	"github.com/devpilot/devpilot/controlplane/acceptgate"
	"github.com/devpilot/devpilot/controlplane/agentrelease"
	"github.com/devpilot/devpilot/controlplane/alerts"
	"github.com/devpilot/devpilot/controlplane/api"
	"github.com/devpilot/devpilot/controlplane/auth"
	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean"
	"github.com/devpilot/devpilot/controlplane/cloud/vultr"
	"github.com/devpilot/devpilot/controlplane/cluster"
	"github.com/devpilot/devpilot/controlplane/fdlimit"
	"github.com/devpilot/devpilot/controlplane/httpguard"
	"github.com/devpilot/devpilot/controlplane/hub"
	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/controlplane/integrations"
	"github.com/devpilot/devpilot/controlplane/keyrotation"
	"github.com/devpilot/devpilot/controlplane/provision"
	"github.com/devpilot/devpilot/controlplane/reconcile"
	"github.com/devpilot/devpilot/controlplane/rollout"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/controlplane/tasks"
	"github.com/devpilot/devpilot/controlplane/tlsauto"
	"github.com/devpilot/devpilot/controlplane/web"
	"github.com/devpilot/devpilot/controlplane/webhooks"
	"github.com/devpilot/devpilot/shared/protocol"
)

// TLS modes.
const (
	TLSAuto  = "auto"  // a CA and server certificate generated into the data dir
	TLSFiles = "files" // certificate and key files the operator provides
	TLSOff   = "off"   // plain HTTP, behind a TLS-terminating proxy
	TLSACME  = "acme"  // certificates from an ACME CA (Let's Encrypt by default)
)

// Files in the data directory.
const (
	DBFile         = "devpilot.db"
	OwnerTokenFile = "owner.token" // 0600; lets the local CLI work without copying the token
	URLFile        = "url"         // where the local CLI reaches the API
	TLSDir         = "tls"
	DefaultWS      = "default"
)

// Config is everything `devpilot serve` takes from flags and environment.
type Config struct {
	DataDir     string
	Listen      string // host:port; port 0 picks a free one
	PublicURL   string // what agents and the CLI dial; default derived from Listen
	TLS         string // auto, files, acme or off
	TLSCertFile string
	TLSKeyFile  string
	// TLS acme: the names to certify (default: the host of PublicURL), the
	// account's contact, the directory (default Let's Encrypt) and, for a
	// private ACME CA, the roots its API certificate chains to.
	ACMEDomains   []string
	ACMEEmail     string
	ACMEDirectory string
	ACMECAFile    string
	Database      string        // "" or "sqlite" (in DataDir), or a postgres:// URL (see store.Lead for standbys)
	MasterKeyFile string        // default DataDir/keyring.json
	LeaderPoll    time.Duration // PostgreSQL: how often a standby asks for the lock, and the leader checks it; default 2 s
	// Mode, on PostgreSQL: ModeStandby (default; one control plane is
	// active, the others wait) or ModeActive (every one serves the API
	// and agents; the jobs run on the one holding the leader lock).
	Mode string

	// API base URLs per provider; empty means the real cloud.
	DigitalOceanAPIURL string
	VultrAPIURL        string

	// Agents and provisioning.
	AgentDir    string // devpilot-agent builds to serve; default: the directory of this executable
	AgentCAFile string // CA agents pin when TLS is not auto (files/off behind a proxy)
	// AgentReleaseKeys are files of agent release public keys (several
	// during a rotation): releases must verify against one, and new
	// servers' agents pin them all (controlplane/agentrelease).
	AgentReleaseKeys []string
	AgentTimeout     time.Duration // how long a new server's agent has to confirm the install; default 15 min
	// AgentRebootTimeout: how long a graceful reboot waits for the agent
	// to come back before the cloud's reboot; default 5 min.
	AgentRebootTimeout time.Duration
	BootstrapTTL       time.Duration // bootstrap token lifetime; default 60 min
	HeartbeatInterval  time.Duration // told to agents; default 15 s
	PollInterval       time.Duration // instance status polling; default 5 s
	// Health history: how long it is kept (default 24 h) and its bucket
	// width, one point per server each (default 1 min).
	HealthHistoryRetention  time.Duration
	HealthHistoryResolution time.Duration

	// Tasks.
	TaskSweepInterval time.Duration // how often overdue tasks are timed out; default 5 s
	ReconcileInterval time.Duration // liveness reconcile passes (controlplane/reconcile); default 30 s
	// ReconcileFirewallEvery: firewall drift is checked every n-th pass; default 10.
	ReconcileFirewallEvery int
	TaskDeadlineGrace      time.Duration // how long after its deadline the control plane times a task out; default 15 s
	TaskMaxLogBytes        int64         // output stored per task; default tasks.DefaultMaxLogBytes (8 MiB)

	// Integration health and alerts.
	IntegrationCheckInterval time.Duration // background re-validation of every integration; default 6 h
	AlertInterval            time.Duration // alert rule evaluation; default 15 s
	AlertStaleAfter          time.Duration // a health sample older than this says nothing of now; default 2 min
	// Events (issue 14): how long the event log keeps an event (default
	// 30 days; older ones are pruned hourly) and how often an event follower
	// reads the table for events another control plane wrote (default 1 s).
	EventsRetention time.Duration
	EventsPoll      time.Duration

	// SSH diagnostics of servers whose agent did not confirm the install.
	NoSSHDiagnostics bool                           // off (the dev sandbox has no sshd)
	SSHAddr          func(publicIPv4 string) string // where a server's sshd listens; nil: IP:22

	// The door (see package httpguard): how long a request may take to
	// send its body (default 30 s), how many requests one address may have
	// waiting to authenticate (default 32), and its budget of failed
	// authentications (default 20, then one per 3 s).
	BodyTimeout        time.Duration
	MaxUnauthenticated int
	AuthFailureBurst   int
	AuthFailureEvery   time.Duration

	// TLS auto renewal while serving (see tlsauto.Bundle.Renew): how often
	// the certificate is checked (default daily); tests inject the clock,
	// the ticks, and a hook called after each check.
	TLSRenewEvery time.Duration
	TLSRenewTick  <-chan time.Time
	Clock         func() time.Time
	OnTLSCheck    func(reissued bool, err error)

	// Agent connections (see "Scale" in the README). AgentListen, when
	// set, is a second listener (same TLS) that serves only what agents
	// use (the hub and the agent download), bounded to MaxAgents open
	// connections, so agents can't crowd out the admin API and /healthz.
	// MaxAgents bounds the hub's connections; 0: as many as the open
	// file limit allows with FDReserve files kept back (default
	// fdlimit.DefaultReserve). Past it agents are refused busy.
	// AgentHandshakes bounds the agent listener's connections in their
	// handshake at once (TLS, challenge, store work); the rest wait in
	// the kernel's accept queue (controlplane/acceptgate). 0:
	// DefaultAgentHandshakes.
	AgentListen     string
	MaxAgents       int
	FDReserve       int
	AgentHandshakes int
	// Webhooks (controlplane/webhooks): receivers must be public https
	// endpoints unless these widen the rule. WebhooksAllowLoopback admits
	// loopback receivers, over http too (devpilot dev sets it);
	// WebhooksAllowPrivate admits private, link-local and loopback ones.
	WebhooksAllowLoopback bool
	WebhooksAllowPrivate  bool
	// WebhooksPoll: how often the outbox looks for other control planes'
	// events and due retries; default 2 s.
	WebhooksPoll time.Duration

	Logger *zap.Logger
	Out    io.Writer // where the first start says which file holds the owner token (default stdout)
}

// Modes of several control planes on one PostgreSQL database (Config.Mode).
const (
	ModeStandby = "standby"
	ModeActive  = "active"
)

// App is a running control plane.
type App struct {
	cfg          Config
	log          *zap.Logger
	Store        *store.Store
	Leader       *store.Leadership // standby mode: held from New; active mode: once this one runs the jobs
	Cluster      *cluster.Cluster  // active mode only
	Keys         *secrets.Keyring
	Integrations *integrations.Service
	Provision    *provision.Service
	Reconciler   *reconcile.Reconciler
	Hub          *hub.Hub
	Tasks        *tasks.Service
	Rollouts     *rollout.Service
	Releases     *agentrelease.Store
	Alerts       *alerts.Service
	Webhooks     *webhooks.Service
	handler      http.Handler
	agentSums    map[string]string // arch → sha256 of the served agent builds
	tlsConfig    *tls.Config
	CACertPEM    []byte // TLS auto only
	CAPin        string // TLS auto only
	acme         *autocert.Manager
	acmeDomains  []string
	tlsBundle    *tlsauto.Bundle // TLS auto only
	ops          *opsMetrics
	cloudMetrics *cloud.Metrics
	Registry     *prometheus.Registry // what /metrics serves

	ln  net.Listener
	srv *http.Server
	URL string // the API's URL, known once Listen returned

	agentH    http.Handler // the hub and the agent download
	agentLn   net.Listener // --agent-listen; nil: agents use ln
	agentGate *acceptgate.Listener
	agentSrv  *http.Server
	AgentURL  string // the agent listener's URL, when there is one
	fds       fdlimit.Limit
	lmu       sync.Mutex // Leader, set late in active mode
}

// New opens the data directory and builds the control plane; it does not
// listen yet.
func New(ctx context.Context, cfg Config) (*App, error) {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Out == nil {
		cfg.Out = os.Stdout
	}
	if cfg.DataDir == "" {
		cfg.DataDir = "devpilot-data"
	}
	if cfg.TLS == "" {
		cfg.TLS = TLSAuto
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	a := &App{cfg: cfg, log: cfg.Logger, Registry: prometheus.NewRegistry()}
	a.ops = newOpsMetrics(a, a.Registry)
	a.cloudMetrics = cloud.NewMetrics(a.Registry)
	a.ops.setRole("standby")
	var err error
	if a.Store, err = store.Open(ctx, cfg.Database, filepath.Join(cfg.DataDir, DBFile)); err != nil {
		return nil, err
	}
	a.Store.SetSelf(leaseOwner(cfg.DataDir))
	active := cfg.Mode == ModeActive
	if active && a.Store.Dialect() != store.Postgres {
		_ = a.Store.Close()
		return nil, errors.New("--mode active needs a PostgreSQL database (--database postgres://…)")
	}
	if !active {
		// Everything after this runs on the active control plane only: a
		// standby waits here, and loads the keyring only once it takes over,
		// so it reads the keys as the last leader left them.
		a.Leader, err = a.Store.Lead(ctx, store.LeadOptions{Poll: cfg.LeaderPoll, Standby: func() {
			a.log.Info("standby: another control plane holds the database; waiting to take over",
				zap.String("database", a.Store.Path()))
		}})
		if err != nil {
			_ = a.Store.Close()
			return nil, err
		}
	}
	a.ops.setRole("active")
	if a.Store.Dialect() == store.Postgres {
		a.log.Info("active control plane of the database", zap.String("database", a.Store.Path()),
			zap.String("mode", cmp.Or(cfg.Mode, ModeStandby)), zap.String("self", a.Store.Self()))
	}
	keyPath := cfg.MasterKeyFile
	if keyPath == "" {
		keyPath = secrets.DefaultKeyringPath(cfg.DataDir)
	}
	if a.Keys, err = secrets.LoadOrCreateKeyring(keyPath); err != nil {
		a.releaseLeader()
		_ = a.Store.Close()
		return nil, fmt.Errorf("master key: %w", err)
	}
	a.Integrations = integrations.New(integrations.Options{
		Store: a.Store, Keys: a.Keys, Connect: a.connector(), Logger: cfg.Logger,
		CheckInterval: cfg.IntegrationCheckInterval, Registerer: a.Registry,
	})
	if err := a.bootstrap(ctx); err != nil {
		a.releaseLeader()
		_ = a.Store.Close()
		return nil, err
	}
	if a.Releases, err = openReleases(cfg); err != nil {
		a.releaseLeader()
		_ = a.Store.Close()
		return nil, err
	}
	reg := a.Registry
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(a.Store.EventMetrics(), a.Store.TxMetrics())
	a.Provision = provision.New(provision.Options{
		Store: a.Store, Keys: a.Keys, Integrations: a.Integrations, UserData: a.userData, Logger: cfg.Logger,
		AgentTimeout: cfg.AgentTimeout, AgentRebootTimeout: cfg.AgentRebootTimeout, TokenTTL: cfg.BootstrapTTL, PollInterval: cfg.PollInterval, Registerer: reg,
		Owner: leaseOwner(cfg.DataDir), SessionsElsewhere: active,
		HealthRetention: cfg.HealthHistoryRetention, HealthResolution: cfg.HealthHistoryResolution,
		Live: func(id string) (provision.Live, bool) { return liveOf(a.agentStatus(id)) },
		LiveOf: func(srv store.Server) (provision.Live, bool) {
			if a.Cluster != nil {
				return liveOf(a.Cluster.StatusOf(srv))
			}
			return liveOf(a.Hub.Status(srv.ID))
		},
		AskReboot: func(ctx context.Context, id, actionID string) error {
			return a.sendAgent(ctx, id, protocol.TypeReboot, protocol.Reboot{ID: actionID})
		},
		Releases: a.Releases,
		SendUpdate: func(ctx context.Context, id string, u protocol.Update) error {
			return a.sendAgent(ctx, id, protocol.TypeUpdate, u)
		},
		Disconnect: func(id, code string) { a.disconnectAgent(id, code) },
		SessionTakenFrom: func(id, holder, remote string, at time.Time) {
			if a.Cluster != nil {
				a.Cluster.Replaced(id, holder, remote, at)
			}
		},
		Diagnose:         a.diagnoser(),
		EnrollOverSSH:    a.enrollOverSSH(),
		OnAgentConnected: func(id string) { a.Tasks.AgentConnected(id) },
		OnActionDone:     func(id string) { a.Tasks.ActionDone(id) },
	})
	a.Hub = hub.New(hub.Options{Registry: a.Provision.Registry(), Logger: cfg.Logger, Registerer: reg,
		HeartbeatInterval: cfg.HeartbeatInterval, MaxAgents: a.agentCapacity()})
	a.Reconciler = a.reconciler(cfg)
	a.agentH = a.agentHandler()
	a.Tasks = tasks.New(tasks.Options{Store: a.Store, Hub: agentSender{a}, Keys: a.Keys,
		OnChange: func(id string) {
			if a.Cluster != nil {
				a.Cluster.TaskChanged(id)
			}
		}, Actions: a.Provision, Logger: cfg.Logger,
		SweepInterval: cfg.TaskSweepInterval, DeadlineGrace: cfg.TaskDeadlineGrace, MaxLogBytes: cfg.TaskMaxLogBytes, Registerer: reg})
	a.Rollouts = rollout.New(rollout.Options{Store: a.Store, Updater: a.Provision, Releases: rolloutReleases{a.Provision},
		Logger: cfg.Logger, Owner: leaseOwner(cfg.DataDir), Registerer: reg})
	a.Alerts = alerts.New(alerts.Options{Store: a.Store, Interval: cfg.AlertInterval, StaleAfter: cfg.AlertStaleAfter,
		Logger: cfg.Logger, Registerer: reg})
	if active {
		a.Cluster = cluster.New(cluster.Options{Store: a.Store, Hub: a.Hub, Dispatch: a.Tasks.Dispatch, Changed: a.Tasks.Wake,
			Logger: cfg.Logger, Registerer: reg})
	}
	a.Hub.Handle(protocol.TypeTaskLog, a.Tasks.HandleLog)
	a.Hub.Handle(protocol.TypeTaskResult, a.Tasks.HandleResult)
	a.Hub.Handle(protocol.TypeUpdateStatus, a.Provision.HandleUpdateStatus)
	a.Webhooks = webhooks.New(webhooks.Options{Store: a.Store, Keys: a.Keys, Logger: cfg.Logger, Registerer: reg,
		Owner: leaseOwner(cfg.DataDir), Now: cfg.Clock, Poll: cfg.WebhooksPoll,
		Policy: webhooks.Policy{AllowLoopback: cfg.WebhooksAllowLoopback, AllowPrivate: cfg.WebhooksAllowPrivate}})
	apiHandler := api.New(api.Options{
		Store: a.Store, Integrations: a.Integrations, Servers: a.Provision, Tasks: a.Tasks, Rollouts: a.Rollouts,
		Alerts: a.Alerts, Webhooks: a.Webhooks, Agent: a.agentH,
		RotateKeys: a.rotateKeys, Logger: cfg.Logger, Registry: reg, Agents: a.Hub.Capacity, Releases: a.Releases,
		EventsPoll: cfg.EventsPoll,
		Throttle:   httpguard.NewThrottle(httpguard.ThrottleOptions{Burst: cfg.AuthFailureBurst, Every: cfg.AuthFailureEvery}),
	})
	guard := httpguard.New(httpguard.Options{BodyTimeout: cfg.BodyTimeout, MaxUnauthenticated: cfg.MaxUnauthenticated,
		Admit: apiHandler.Admit, HSTS: cfg.TLS != TLSOff, Registerer: reg})
	// The web console answers /, /ui/… and /static/…; the API everything else.
	a.handler = guard.Wrap(web.Route(apiHandler,
		web.New(web.Options{API: apiHandler, Logger: cfg.Logger, Store: a.Store, Keys: a.Keys})))
	return a, nil
}

// leaseOwner names this control plane in action leases: host and data
// directory, so a restart takes its own leases back at once while another
// control plane (another data dir) waits for them to expire.
func leaseOwner(dataDir string) string {
	host, _ := os.Hostname()
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		abs = dataDir
	}
	sum := sha256.Sum256([]byte(host + "\x00" + abs))
	return "cp_" + hex.EncodeToString(sum[:8])
}

// reconciler builds the liveness reconciler (controlplane/reconcile).
func (a *App) reconciler(cfg Config) *reconcile.Reconciler {
	return reconcile.New(reconcile.Options{
		Store: a.Store, Provider: a.Integrations.Provider, Interval: cfg.ReconcileInterval, Logger: cfg.Logger,
		Live: func(id string) reconcile.Live {
			st, _ := a.agentStatus(id)
			live := reconcile.Live{Connected: st.Connected, LastSeen: st.LastSeen}
			if !st.Connected {
				if le, ok := a.Hub.LastError(id); ok {
					live.LastError = le.Reason
				} else if r, err := a.Store.Q().AgentLastError(context.Background(), id); err == nil {
					live.LastError = r // seen by another control plane, or before a restart
				}
			}
			return live
		},
		Firewall: func(srv store.Server) (cloud.FirewallSpec, bool) {
			var ports []int
			if json.Unmarshal([]byte(srv.PortsJSON), &ports) != nil || srv.FirewallID == "" {
				return cloud.FirewallSpec{}, false
			}
			return cloud.FirewallSpec{Name: provision.FirewallName(srv.ID), Tag: provision.TagServer(srv.ID), Ports: ports}, true
		},
		FirewallEvery: cfg.ReconcileFirewallEvery,
		Tags: func(srv store.Server) []string {
			ws, err := a.Store.Q().WorkspaceByID(context.Background(), srv.WorkspaceID)
			if err != nil {
				return nil
			}
			return []string{provision.TagAll, provision.TagWorkspace(ws.Slug), provision.TagServer(srv.ID)}
		},
	})
}

// connector builds provider clients, pointed at simulators when configured.
func (a *App) connector() integrations.Connector {
	return func(provider string, secret secrets.Value, onRefused func(int)) (cloud.Provider, error) {
		c := cloud.Config{Secret: secret, Logger: a.log.Named(provider), Metrics: a.cloudMetrics, OnRefused: onRefused}
		switch provider {
		case cloud.DigitalOcean:
			c.BaseURL = a.cfg.DigitalOceanAPIURL
			return digitalocean.New(c)
		case cloud.Vultr:
			c.BaseURL = a.cfg.VultrAPIURL
			return vultr.New(c)
		}
		return nil, fmt.Errorf("unknown provider %q", provider)
	}
}

// bootstrap creates the default workspace and, on the very first start,
// the owner token, kept 0600 in the data directory: the output says where,
// never the token itself (under systemd it would land in the journal).
func (a *App) bootstrap(ctx context.Context) error {
	now := time.Now().UTC()
	ws, err := a.Store.Q().WorkspaceBySlug(ctx, DefaultWS)
	if errors.Is(err, store.ErrNotFound) {
		ws = store.Workspace{ID: ids.New("ws"), Slug: DefaultWS, Name: "Default", CreatedAt: now}
		err = a.Store.Q().CreateWorkspace(ctx, ws)
	}
	if err != nil {
		return fmt.Errorf("default workspace: %w", err)
	}
	n, err := a.Store.Q().CountTokens(ctx)
	if err != nil {
		return err
	}
	if n > 0 {
		live, err := a.Store.Q().CountLiveTokens(ctx, auth.RoleOwner)
		if err != nil {
			return err
		}
		if live == 0 {
			a.log.Warn("no live owner token: nothing can create workspaces or rotate keys; make one on this machine",
				zap.String("run", RecoverCommand(a.cfg.DataDir, a.Store.Dialect())))
		}
		return nil
	}
	id, path, err := createOwnerToken(ctx, a.Store, a.cfg.DataDir, ws.ID, "first start")
	if err != nil {
		return err
	}
	fmt.Fprintf(a.cfg.Out, "\nOwner API token saved to %s (mode 0600); the local CLI reads it from there.\n\n", path)
	a.log.Info("owner token created", zap.String("token_id", id), zap.String("file", path))
	return nil
}

// RecoverCommand is the command that makes a new owner token.
func RecoverCommand(dataDir string, d store.Dialect) string {
	cmd := "devpilot tokens recover --data-dir " + dataDir
	if d == store.Postgres {
		cmd += " (with DEVPILOT_DATABASE set as for devpilot serve)"
	}
	return cmd
}

// createOwnerToken makes an owner token in workspace wsID and writes it to
// the data directory's owner token file (0600), replacing what was there
// only once the token is stored.
func createOwnerToken(ctx context.Context, st *store.Store, dataDir, wsID, by string) (id, path string, err error) {
	id, token, hash := auth.NewToken()
	path = filepath.Join(dataDir, OwnerTokenFile)
	f, err := os.CreateTemp(dataDir, OwnerTokenFile+".*")
	if err != nil {
		return "", "", fmt.Errorf("write owner token: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			_ = os.Remove(tmp)
		}
	}()
	_, err = f.WriteString(token.Reveal() + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", "", fmt.Errorf("write owner token: %w", err)
	}
	now := time.Now().UTC()
	err = st.InTx(ctx, func(q *store.Queries) error {
		if err := q.CreateToken(ctx, store.Token{ID: id, WorkspaceID: wsID, Name: "owner", Role: auth.RoleOwner,
			SecretHash: hash, CreatedBy: by, CreatedAt: now}); err != nil {
			return err
		}
		return q.AddAudit(ctx, store.AuditEntry{WorkspaceID: wsID, Actor: "system (" + by + ")", Action: "token.create",
			Target: id, DetailJSON: `{"role":"owner"}`, At: now})
	})
	if err != nil {
		return "", "", fmt.Errorf("create owner token: %w", err)
	}
	// A crash before this rename leaves a stored token nobody has: harmless,
	// and recovering again makes another.
	if err = os.Rename(tmp, path); err != nil {
		return "", "", fmt.Errorf("write owner token: %w", err)
	}
	return id, path, nil
}

// Recovered is what RecoverOwnerToken made.
type Recovered struct {
	TokenID   string
	File      string // the owner token file, 0600
	LiveOwner int    // live owner tokens now, the new one included
}

// RecoverOwnerToken is `devpilot tokens recover`: it opens the store of a
// data directory directly (no API, no token: having the machine is the
// proof) and makes a new owner token in the default workspace, written to
// the data directory's owner token file. A control plane running on the
// same store meanwhile is fine: SQLite and PostgreSQL both take the write,
// and the API reads tokens from the store on every request, so the new
// token works at once, without a restart. Other owner tokens stay live.
func RecoverOwnerToken(ctx context.Context, dataDir, database string) (Recovered, error) {
	dbPath := filepath.Join(dataDir, DBFile)
	if database == "" || database == string(store.SQLite) {
		if _, err := os.Stat(dbPath); err != nil {
			return Recovered{}, fmt.Errorf("no control plane database at %s: give the --data-dir of devpilot serve "+
				"(or its --database): %w", dbPath, err)
		}
	}
	st, err := store.Open(ctx, database, dbPath)
	if err != nil {
		return Recovered{}, err
	}
	defer func() { _ = st.Close() }()
	ws, err := st.Q().WorkspaceBySlug(ctx, DefaultWS)
	if err != nil {
		return Recovered{}, fmt.Errorf("default workspace: %w", err)
	}
	id, path, err := createOwnerToken(ctx, st, dataDir, ws.ID, "devpilot tokens recover")
	if err != nil {
		return Recovered{}, err
	}
	live, err := st.Q().CountLiveTokens(ctx, auth.RoleOwner)
	if err != nil {
		return Recovered{}, err
	}
	return Recovered{TokenID: id, File: path, LiveOwner: live}, nil
}

// rotateKeys puts every secret under a new master key and retires the old
// keys no stored secret uses anymore (see keyrotation).
func (a *App) rotateKeys(ctx context.Context) (api.RotateResult, error) {
	return keyrotation.Rotate(ctx, a.Store, a.Keys, a.log.Named("keyrotation"))
}

// Handler is the API and the web console (for tests that serve it themselves).
func (a *App) Handler() http.Handler { return a.handler }

// Listen binds the listener and prepares TLS; URL is set afterwards.
func (a *App) Listen() error {
	ln, err := net.Listen("tcp", a.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	addr := ln.Addr().(*net.TCPAddr)
	scheme := "https"
	if a.cfg.TLS == TLSOff {
		scheme = "http"
	}
	host := addr.IP.String()
	if addr.IP.IsUnspecified() {
		host = "127.0.0.1"
	}
	a.URL = scheme + "://" + net.JoinHostPort(host, fmt.Sprint(addr.Port))
	hosts := []string{host}
	if a.cfg.PublicURL != "" {
		u, err := url.Parse(a.cfg.PublicURL)
		if err != nil || u.Host == "" {
			_ = ln.Close()
			return fmt.Errorf("public url %q is not an absolute URL", a.cfg.PublicURL)
		}
		hosts = append(hosts, u.Hostname())
	}
	switch a.cfg.TLS {
	case TLSAuto:
		b, err := tlsauto.Ensure(filepath.Join(a.cfg.DataDir, TLSDir), hosts, a.now())
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("tls: %w", err)
		}
		a.tlsBundle = b
		a.tlsConfig, a.CACertPEM, a.CAPin = b.ServerConfig(), b.CACertPEM, b.CAPin
	case TLSFiles:
		c, err := tlsauto.LoadFiles(a.cfg.TLSCertFile, a.cfg.TLSKeyFile)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("tls: %w", err)
		}
		a.tlsConfig = c
	case TLSACME:
		m, domains, err := a.acmeManager()
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("tls: %w", err)
		}
		a.acme, a.acmeDomains, a.tlsConfig = m, domains, acmeTLSConfig(m)
		// The certificate names the domain, not this address: the local
		// CLI must dial the name too.
		if a.cfg.PublicURL != "" {
			a.URL = strings.TrimRight(a.cfg.PublicURL, "/")
		}
	case TLSOff:
	default:
		_ = ln.Close()
		return fmt.Errorf("tls mode %q: use auto, files, acme or off", a.cfg.TLS)
	}
	if a.tlsConfig != nil {
		ln = tls.NewListener(ln, a.tlsConfig)
	}
	a.ln = ln
	if a.cfg.AgentListen != "" {
		if err := a.listenAgents(scheme, host); err != nil {
			_ = ln.Close()
			return err
		}
	}
	// The local CLI finds the API here.
	if err := os.WriteFile(filepath.Join(a.cfg.DataDir, URLFile), []byte(a.URL+"\n"), 0o600); err != nil {
		_ = ln.Close()
		return fmt.Errorf("write url file: %w", err)
	}
	return nil
}

// Serve answers requests until ctx is cancelled, then shuts down
// gracefully: in-flight requests get up to 30 s to finish.
func (a *App) Serve(ctx context.Context) error {
	a.srv = &http.Server{
		Handler:           a.handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          zap.NewStdLog(a.log.Named("http")),
	}
	var leaderLost <-chan struct{}
	if a.Cluster == nil {
		stopJobs, err := a.startJobs(ctx)
		if err != nil {
			return err
		}
		defer stopJobs()
		a.ops.setJobs(true)
		leaderLost = a.Leader.Lost()
	} else {
		// Before the hub accepts an agent: the others see this one
		// alive, and the sessions it held before a restart are over.
		if err := a.Cluster.Join(ctx); err != nil {
			if ctx.Err() != nil {
				return nil // told to stop before it began serving
			}
			return err
		}
		cctx, stopCluster := context.WithCancel(ctx)
		clustered := make(chan struct{})
		go func() { defer close(clustered); a.Cluster.Run(cctx) }()
		defer func() { stopCluster(); <-clustered }()
		lost := make(chan struct{})
		leaderLost = lost
		jctx, stopLeading := context.WithCancel(ctx)
		led := make(chan struct{})
		go func() { defer close(led); a.runJobsWhenLeader(jctx, lost) }()
		defer func() { stopLeading(); <-led }()
	}
	if err := a.Tasks.Start(ctx); err != nil {
		a.Provision.Close()
		if ctx.Err() != nil {
			return nil // told to stop before it began serving
		}
		return err
	}
	errc := make(chan error, 2)
	go func() { errc <- a.srv.Serve(a.ln) }()
	if a.agentLn != nil {
		a.agentSrv = &http.Server{
			Handler:           acceptgate.Handler(a.agentOnly()),
			ConnContext:       acceptgate.ConnContext,
			ReadHeaderTimeout: 10 * time.Second,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          zap.NewStdLog(a.log.Named("http.agents")),
		}
		go func() { errc <- a.agentSrv.Serve(a.agentLn) }()
	}
	sd := a.startSystemd(ctx)
	defer sd.stopping()
	if a.tlsBundle != nil {
		rctx, stopRenew := context.WithCancel(ctx)
		renewed := make(chan struct{})
		go func() { defer close(renewed); a.renewTLS(rctx) }()
		defer func() { stopRenew(); <-renewed }()
	}
	if a.acme != nil {
		wctx, stopWarm := context.WithCancel(ctx)
		warmed := make(chan struct{})
		go func() { defer close(warmed); a.warmCertificates(wctx, a.acme, a.acmeDomains) }()
		defer func() { stopWarm(); <-warmed }()
	}
	a.log.Info("control plane listening", zap.String("url", a.URL), zap.String("tls", a.cfg.TLS),
		zap.String("data_dir", a.cfg.DataDir))
	var lost error
	select {
	case err := <-errc:
		if a.agentSrv != nil {
			_ = a.agentSrv.Close()
		}
		_ = a.srv.Close()
		a.Hub.Close()
		a.Tasks.Close()
		a.Provision.Close()
		return err
	case <-ctx.Done():
	case <-leaderLost:
		// A standby (or, in active mode, another job runner) may be
		// active already: stop at once (agents redial and find it), and
		// exit with an error so a supervisor restarts this process.
		lost = a.leaderErr()
		a.log.Error("stopping: this control plane is no longer the active one", zap.Error(lost))
	}
	a.log.Info("shutting down")
	sd.stopping()
	// Agent sessions are hijacked connections Shutdown does not wait for:
	// say goodbye to them first, so they start redialling at once.
	a.Hub.Close()
	// Ends log followers (long-lived responses Shutdown would wait for).
	a.Tasks.Close()
	// Ends the console's event streams, for the same reason.
	a.Store.Changes().Close()
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if a.agentSrv != nil {
		_ = a.agentSrv.Shutdown(sctx)
		<-errc //nolint:errcheck // after Shutdown, Serve returns http.ErrServerClosed
	}
	err := a.srv.Shutdown(sctx)
	<-errc //nolint:errcheck // after Shutdown, Serve returns http.ErrServerClosed
	// Jobs stop at a recorded step and resume there on the next start.
	a.Provision.Close()
	if lost != nil {
		return lost
	}
	return err
}

// Close gives up the leadership and releases the store (and the hub, for
// an App that never served).
func (a *App) Close() error {
	a.Hub.Close()
	a.releaseLeader()
	return a.Store.Close()
}

// startJobs starts the background work one control plane of the database
// does: provisioning and lifecycle jobs, liveness reconciliation, agent
// rollouts, integration checks, alerts, webhook deliveries, pruning. The
// returned func stops it (once; later calls do nothing).
func (a *App) startJobs(ctx context.Context) (func(), error) {
	if err := a.Provision.Start(ctx); err != nil {
		return nil, err
	}
	a.Reconciler.Start()
	a.Rollouts.Start()
	a.Integrations.StartChecks()
	a.Alerts.Start()
	// Webhook deliveries: an attempt cut short by shutdown is not recorded;
	// its lease lets this control plane (or another) make it again.
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = a.Webhooks.Run(wctx) }()
	go func() { defer wg.Done(); a.pruneEvents(wctx) }()
	var once sync.Once
	return func() {
		once.Do(func() {
			stop()
			wg.Wait()
			a.Alerts.Close()
			a.Integrations.CloseChecks()
			a.Rollouts.Close()
			a.Reconciler.Close()
			a.Provision.Close()
		})
	}, nil
}

// runJobsWhenLeader is active mode's job runner: it waits for the leader
// lock (one control plane of the database runs the jobs; the others serve
// the API and agents meanwhile) and runs them while it holds it. If the
// lock's session dies, another control plane may take the jobs over at
// once: this one stops them and goes on serving the API and its agents,
// rather than exiting and sending thousands of agents to reconnect
// elsewhere at once, and competes for the lock again (after a database
// restart every control plane loses it, and one of them must run the
// jobs again). lost closes only if the jobs cannot start.
func (a *App) runJobsWhenLeader(ctx context.Context, lost chan<- struct{}) {
	retry := a.cfg.LeaderPoll
	if retry <= 0 {
		retry = 2 * time.Second
	}
	for ctx.Err() == nil {
		l, err := a.Store.Lead(ctx, store.LeadOptions{Poll: a.cfg.LeaderPoll, Standby: func() {
			a.log.Info("another control plane runs the jobs; this one takes over if it stops")
		}})
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("could not ask the database for the jobs lock; asking again", zap.Error(err),
					zap.Duration("in", retry))
				select {
				case <-ctx.Done():
				case <-time.After(retry):
				}
			}
			continue
		}
		a.lmu.Lock()
		a.Leader = l
		a.lmu.Unlock()
		a.ops.setJobs(true)
		a.log.Info("this control plane runs the jobs (provisioning, lifecycle actions, rollouts, webhooks, reconciliation)")
		stop, err := a.startJobs(ctx)
		if err != nil {
			a.log.Error("start the jobs", zap.Error(err))
			close(lost)
			return
		}
		select {
		case <-ctx.Done():
			stop()
			return
		case <-l.Lost():
		}
		a.log.Error("stopped the jobs: the leader lock's database session died, so another control plane may run them now; "+
			"this one goes on serving the API and its agents and asks for the lock again", zap.Error(l.Err()))
		stop()
		a.ops.setJobs(false)
		l.Release()
	}
}

func (a *App) releaseLeader() {
	a.lmu.Lock()
	l := a.Leader
	a.lmu.Unlock()
	if l != nil {
		l.Release()
	}
}

func (a *App) leaderErr() error {
	a.lmu.Lock()
	l := a.Leader
	a.lmu.Unlock()
	if l == nil {
		return errors.New("stopping: could not start the jobs")
	}
	return l.Err()
}

// liveOf is provision's view of an agent session.
func liveOf(st hub.Status, ok bool) (provision.Live, bool) {
	return provision.Live{Connected: st.Connected, Since: st.Since, LastSeen: st.LastSeen, Health: st.Health,
		Capabilities: st.Capabilities, BootID: st.BootID, AgentVersion: st.AgentVersion}, ok
}

// agentStatus, sendAgent and disconnectAgent reach a server's agent on
// this control plane's hub or, in active mode, wherever its session is
// held (controlplane/cluster).
func (a *App) agentStatus(id string) (hub.Status, bool) {
	if a.Cluster != nil {
		return a.Cluster.Status(id)
	}
	return a.Hub.Status(id)
}

func (a *App) sendAgent(ctx context.Context, id, typ string, payload any) error {
	if a.Cluster != nil {
		return a.Cluster.Send(ctx, id, typ, payload)
	}
	return a.Hub.Send(ctx, id, typ, payload)
}

func (a *App) disconnectAgent(id, code string) {
	if a.Cluster != nil {
		a.Cluster.Disconnect(id, code)
		return
	}
	a.Hub.Disconnect(id, code)
}

// agentSender is tasks' Sender: App.sendAgent.
type agentSender struct{ a *App }

func (s agentSender) Send(ctx context.Context, id, typ string, payload any) error {
	return s.a.sendAgent(ctx, id, typ, payload)
}

// Run is `devpilot serve`: New, Listen, Serve, Close.
func Run(ctx context.Context, cfg Config) error {
	a, err := New(ctx, cfg)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return nil // stopped while waiting as a standby: a clean exit
		}
		return err
	}
	defer func() { _ = a.Close() }()
	if err := a.Listen(); err != nil {
		return err
	}
	return a.Serve(ctx)
}

// rolloutReleases lists, for agent rollouts, the releases update_agent
// installs from.
type rolloutReleases struct{ p *provision.Service }

func (r rolloutReleases) Versions(ctx context.Context) ([]string, error) {
	return r.p.AgentReleaseVersions(ctx)
}
