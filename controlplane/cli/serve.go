package cli

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/devenv"
	"github.com/devpilot/devpilot/controlplane/fdlimit"
	"github.com/devpilot/devpilot/controlplane/httpguard"
	"github.com/devpilot/devpilot/controlplane/integrations"
	"github.com/devpilot/devpilot/controlplane/provision"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/shared/protocol"
)

// newLogger builds the process logger: JSON lines for machines (default
// under systemd and in production), console text for people.
func newLogger(env Env, level, format string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, usagef("--log-level %q: use debug, info, warn or error", level)
	}
	var enc zapcore.Encoder
	switch format {
	case "json":
		ec := zap.NewProductionEncoderConfig()
		ec.EncodeTime = zapcore.ISO8601TimeEncoder
		enc = zapcore.NewJSONEncoder(ec)
	case "console":
		ec := zap.NewDevelopmentEncoderConfig()
		ec.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
		enc = zapcore.NewConsoleEncoder(ec)
	default:
		return nil, usagef("--log-format %q: use json or console", format)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(env.Stderr), lvl)), nil
}

func logFlags(fs interface {
	StringVar(*string, string, string, string)
}, level, format *string) {
	fs.StringVar(level, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(format, "log-format", "json", "json or console")
}

func serveCmd(env Env) *cobra.Command {
	c := &cobra.Command{Use: "serve", Short: "run the control plane", Args: noArgs,
		Example: "  devpilot serve --data-dir /var/lib/devpilot --public-url https://cp.example.com:8443"}
	fs := c.Flags()
	fs.SortFlags = false
	var cfg app.Config
	var level, format string
	fs.StringVar(&cfg.DataDir, "data-dir", "devpilot-data", "where the database, keys and TLS files live")
	fs.StringVar(&cfg.Listen, "listen", ":8443", "address to serve the API on")
	fs.StringVar(&cfg.PublicURL, "public-url", "", "URL agents and clients dial (default: derived from --listen)")
	fs.StringVar(&cfg.TLS, "tls", app.TLSAuto, "auto (self-made CA in the data dir), files (--tls-cert/--tls-key), acme (Let's Encrypt or another ACME CA) or off (behind a TLS proxy)")
	fs.StringVar(&cfg.TLSCertFile, "tls-cert", "", "certificate file for --tls files")
	fs.StringVar(&cfg.TLSKeyFile, "tls-key", "", "key file for --tls files")
	var acmeDomains string
	fs.StringVar(&acmeDomains, "acme-domain", "", "--tls acme: comma-separated names to certify (default: the host of --public-url)")
	fs.StringVar(&cfg.ACMEEmail, "acme-email", "", "--tls acme: contact address for the ACME account (expiry notices)")
	fs.StringVar(&cfg.ACMEDirectory, "acme-directory", app.LetsEncrypt, "--tls acme: the ACME directory URL")
	fs.StringVar(&cfg.ACMECAFile, "acme-ca-file", "", "--tls acme: roots of a private ACME CA's API certificate (default: the system's)")
	fs.StringVar(&cfg.Database, "database", "", "empty for SQLite in the data dir, or postgres://user@host/db (password in DEVPILOT_DATABASE, PGPASSWORD or ~/.pgpass, never here)")
	fs.StringVar(&cfg.Mode, "mode", app.ModeStandby, "with --database postgres://…: standby (one control plane is active, the others wait to take over) or active (every one serves the API and agents; jobs run on one of them)")
	fs.StringVar(&cfg.MasterKeyFile, "master-key-file", "", "master keyring file (default: DATA_DIR/keyring.json)")
	fs.StringVar(&cfg.DigitalOceanAPIURL, "digitalocean-api-url", "", "DigitalOcean API base URL (default: the real API)")
	fs.StringVar(&cfg.VultrAPIURL, "vultr-api-url", "", "Vultr API base URL (default: the real API)")
	fs.StringVar(&cfg.AgentDir, "agent-dir", "", "directory with devpilot-agent builds to serve (default: next to this binary)")
	fs.StringVar(&cfg.AgentCAFile, "agent-ca-file", "", "CA certificate agents pin when --tls is files, acme or off")
	fs.StringSliceVar(&cfg.AgentReleaseKeys, "agent-release-key", nil,
		"agent release public key file (devpilot agents keygen prints it); repeat it, or separate with commas, while rotating keys")
	fs.DurationVar(&cfg.AgentTimeout, "agent-timeout", 15*time.Minute, "how long a new server's agent has to confirm the install")
	fs.DurationVar(&cfg.AgentRebootTimeout, "agent-reboot-timeout", provision.DefaultAgentRebootTimeout,
		"how long a graceful reboot waits for the agent to come back with a new boot before it reboots through the cloud (10s to 1h)")
	fs.DurationVar(&cfg.BootstrapTTL, "bootstrap-ttl", time.Hour, "lifetime of a server's one-time bootstrap token (at most 1h)")
	fs.DurationVar(&cfg.BodyTimeout, "body-timeout", httpguard.DefaultBodyTimeout, "how long a request may take to send its body")
	fs.IntVar(&cfg.MaxUnauthenticated, "max-unauthenticated", httpguard.DefaultMaxUnauthenticated,
		"requests one client address may have in flight before they authenticate (behind a proxy, every client shares its address)")
	fs.StringVar(&cfg.AgentListen, "agent-listen", "", "a second address that serves only the agents (hub and agent download), so they can't crowd out the admin API; point --public-url at it")
	fs.IntVar(&cfg.MaxAgents, "max-agents", 0, "agent connections to hold at most, past which agents are told to retry later (default: what the open file limit allows)")
	fs.IntVar(&cfg.AgentHandshakes, "agent-handshakes", app.DefaultAgentHandshakes, "--agent-listen connections in their handshake at once; the rest wait in the kernel's accept queue")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", protocol.DefaultHeartbeatS*time.Second,
		"how often agents send health (whole seconds, 1s to 5m); an agent silent for 3 intervals is offline")
	fs.IntVar(&cfg.FDReserve, "fd-reserve", fdlimit.DefaultReserve, "open files kept back from the agents for the admin API, database and logs")
	fs.DurationVar(&cfg.HealthHistoryRetention, "health-history-retention", provision.DefaultHealthRetention,
		"how long servers' health history is kept (GET /v1/servers/{id}/health?since= reaches back this far)")
	fs.DurationVar(&cfg.HealthHistoryResolution, "health-history-resolution", provision.DefaultHealthResolution,
		"health history keeps one point per server per this interval (the first sample in it)")
	fs.DurationVar(&cfg.IntegrationCheckInterval, "integration-check-interval", integrations.DefaultCheckInterval,
		"how often every integration is re-validated in the background (jittered ±10%; also right after a 401/403)")
	fs.DurationVar(&cfg.AlertInterval, "alert-interval", 15*time.Second, "how often alert rules are evaluated")
	fs.DurationVar(&cfg.EventsRetention, "events-retention", app.DefaultEventsRetention, "how long the event log keeps an event (older ones are pruned hourly)")
	fs.BoolVar(&cfg.WebhooksAllowLoopback, "webhooks-allow-loopback", false,
		"let webhooks deliver to loopback addresses, over http too (devpilot dev sets it)")
	fs.BoolVar(&cfg.WebhooksAllowPrivate, "webhooks-allow-private", false,
		"let webhooks deliver to private, link-local and loopback addresses (receivers inside your network)")
	logFlags(fs, &level, &format)
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		return serve(cmd.Context(), env, fs, cfg, acmeDomains, level, format)
	}
	return c
}

func serve(ctx context.Context, env Env, fs *pflag.FlagSet, cfg app.Config, acmeDomains, level, format string) error {
	if cfg.BodyTimeout <= 0 || cfg.MaxUnauthenticated <= 0 {
		return usagef("--body-timeout and --max-unauthenticated must be positive")
	}
	if cfg.MaxAgents < 0 || cfg.FDReserve < 0 {
		return usagef("--max-agents and --fd-reserve can't be negative")
	}
	if cfg.AgentHandshakes < 1 {
		return usagef("--agent-handshakes must be at least 1 (default %d)", app.DefaultAgentHandshakes)
	}
	if cfg.AgentRebootTimeout < 10*time.Second || cfg.AgentRebootTimeout > time.Hour {
		return usagef("--agent-reboot-timeout must be from 10s to 1h (default %s)", provision.DefaultAgentRebootTimeout)
	}
	if cfg.HeartbeatInterval < time.Second || cfg.HeartbeatInterval > 5*time.Minute || cfg.HeartbeatInterval%time.Second != 0 {
		return usagef("--heartbeat-interval must be whole seconds from 1s to 5m (default %ds)", protocol.DefaultHeartbeatS)
	}
	if cfg.HealthHistoryResolution < time.Second || cfg.HealthHistoryRetention < cfg.HealthHistoryResolution {
		return usagef("--health-history-resolution must be at least 1s and --health-history-retention at least the resolution (e.g. 24h and 1m)")
	}
	if cfg.IntegrationCheckInterval < time.Minute || cfg.AlertInterval < time.Second {
		return usagef("--integration-check-interval must be at least 1m and --alert-interval at least 1s")
	}
	if cfg.EventsRetention < time.Hour {
		return usagef("--events-retention must be at least 1h (e.g. 720h for 30 days)")
	}
	if cfg.BootstrapTTL <= 0 || cfg.BootstrapTTL > time.Hour {
		return usagef("--bootstrap-ttl must be between 1s and 1h")
	}
	if cfg.Mode != app.ModeStandby && cfg.Mode != app.ModeActive {
		return usagef("--mode %q: use standby or active", cfg.Mode)
	}
	if cfg.Mode == app.ModeActive && !store.IsPostgresURL(cfg.Database) {
		return usagef("--mode active needs --database postgres://…: several control planes share one PostgreSQL database (SQLite serves one)")
	}
	if err := passwordInArgs(fs, "database"); err != nil {
		return err
	}
	for _, d := range strings.Split(acmeDomains, ",") {
		if d = strings.TrimSpace(d); d != "" {
			cfg.ACMEDomains = append(cfg.ACMEDomains, d)
		}
	}
	log, err := newLogger(env, level, format)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	cfg.Logger, cfg.Out = log, env.Stdout
	return app.Run(ctx, cfg)
}

func devCmd(env Env) *cobra.Command {
	c := &cobra.Command{Use: "dev", Short: "run the control plane with simulated clouds on this machine", Args: noArgs,
		Example: "  devpilot dev &\n  set -a; . .devpilot-dev/dev.env; set +a"}
	fs := c.Flags()
	var cfg devenv.Config
	var level, format string
	fs.StringVar(&cfg.DataDir, "data-dir", ".devpilot-dev", "where the dev control plane keeps its data and writes dev.env")
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:8443", "address to serve the API on")
	logFlags(fs, &level, &format)
	fs.Lookup("log-format").DefValue = "console"
	format = "console"
	c.RunE = func(cmd *cobra.Command, _ []string) error { return dev(cmd.Context(), env, cfg, level, format) }
	return c
}

// noArgs refuses positional arguments with a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return &usageError{msg: fmt.Sprintf("%s takes no arguments (got %q)", strings.TrimPrefix(cmd.CommandPath(), "devpilot "), args[0]),
			hint: fmt.Sprintf("Run '%s --help' for usage.", cmd.CommandPath())}
	}
	return nil
}

func dev(ctx context.Context, env Env, cfg devenv.Config, level, format string) error {
	log, err := newLogger(env, level, format)
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	cfg.Logger, cfg.Out = log, env.Stdout
	d, err := devenv.Start(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(env.Stdout, "devpilot dev is running at %s\nEnvironment for scripts: %s (source it: set -a; . %s; set +a)\n",
		d.App.URL, d.EnvFile, d.EnvFile)
	<-ctx.Done()
	return d.Close()
}

// passwordInArgs refuses a URL flag given on the command line with a
// password in it: argv is readable by every user of the machine (ps,
// /proc/PID/cmdline). The same URL is fine in the flag's environment
// variable.
// It takes a cobra command's *pflag.FlagSet or, for a plain-function
// command (legacy.go), a *flag.FlagSet.
func passwordInArgs(flags any, name string) error {
	value := ""
	switch fs := flags.(type) {
	case *pflag.FlagSet:
		if f := fs.Lookup(name); f != nil && f.Changed { // from the arguments (applyEnv leaves Changed alone)
			value = f.Value.String()
		}
	case *flag.FlagSet:
		fs.Visit(func(f *flag.Flag) { // only flags set from the arguments
			if f.Name == name {
				value = f.Value.String()
			}
		})
	}
	if u, err := url.Parse(value); err == nil && u.User != nil {
		if _, has := u.User.Password(); has {
			return usagef("--%s holds a password, which any user can read in the process list: "+
				"drop it from the URL and set %s instead, or use PGPASSWORD or ~/.pgpass", name, envName(name))
		}
	}
	return nil
}
