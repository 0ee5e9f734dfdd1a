// Command devpilot-agent runs on a managed server: `install` lays it out as
// a systemd service from a bootstrap file, `run` keeps the WebSocket
// session with the control plane, `status`, `uninstall` and `version` do
// what they say. This file only turns flags and environment into options;
// the work is in agent/install and agent/runner.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/agent/install"
	"github.com/devpilot/devpilot/agent/layout"
	"github.com/devpilot/devpilot/agent/logs"
	"github.com/devpilot/devpilot/agent/runner"
	"github.com/devpilot/devpilot/agent/unitctl"
	"github.com/devpilot/devpilot/shared/version"
)

const usage = `devpilot-agent keeps this server connected to its Devpilot control plane.

Usage:
  devpilot-agent install   --bootstrap-file FILE [--root-dir DIR] [--supervisor systemd|none]
  devpilot-agent enroll    --token-file FILE|- [--root-dir DIR] [--supervisor systemd|none]
  devpilot-agent run       [--root-dir DIR] [--config FILE] [--identity FILE]
  devpilot-agent status    [--root-dir DIR] [--supervisor systemd|none]
  devpilot-agent uninstall [--root-dir DIR] [--supervisor systemd|none] [--keep-state] [--keep-config]
  devpilot-agent version   (or --version: version, commit, Go version)

Flags (each has an environment variable; the flag wins):
  --root-dir DIR         DEVPILOT_AGENT_ROOT_DIR    prefix for every path (default /), for
                                                    unprivileged installs in a temp dir
  --supervisor NAME      DEVPILOT_AGENT_SUPERVISOR  systemd (default: enable+start over D-Bus,
                                                    else systemctl) or none (write files only;
                                                    whoever runs "run" supervises it)
  --bootstrap-file FILE  DEVPILOT_AGENT_BOOTSTRAP_FILE  install contract JSON, mode 0600;
                                                    deleted after a successful install. Without
                                                    it, install re-lays binary and unit from the
                                                    existing config (upgrade).
  --token-file FILE|-    DEVPILOT_AGENT_TOKEN_FILE  enroll: the bootstrap token "devpilot servers
                                                    rekey" issued (- reads stdin; a file is deleted
                                                    after use). Makes a new identity key, puts the
                                                    token in the config and restarts the agent.
  --config FILE          DEVPILOT_AGENT_CONFIG      default <root>/etc/devpilot-agent/config.json
  --identity FILE        DEVPILOT_AGENT_IDENTITY    default <root>/var/lib/devpilot-agent/identity.key
  --keep-state                                      uninstall: keep <root>/var/lib/devpilot-agent
                                                    (identity key), so a reinstall authenticates
  --keep-config                                     uninstall: keep <root>/etc/devpilot-agent
  --log-level LEVEL      DEVPILOT_AGENT_LOG_LEVEL   debug, info (default), warn, error

Files (below --root-dir):
  usr/local/bin/devpilot-agent                 0755  the binary (install copies itself)
  etc/devpilot-agent/config.json               0600  url, ca_pin, ca_cert_pem, server_id, and the
                                                     bootstrap token until the first enrollment
  var/lib/devpilot-agent/identity.key          0600  ed25519 key, created once (dir 0700)
  var/lib/devpilot-agent/tasks/                0700  task journal (journal.jsonl) and output spools;
                                                     file tasks write their absolute path below
                                                     --root-dir, exec tasks start in it
  etc/systemd/system/devpilot-agent.service    0644  the unit (Type=notify, watchdog)
`

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

func env(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func realMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("devpilot-agent "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	root := fs.String("root-dir", env("DEVPILOT_AGENT_ROOT_DIR", "/"), "")
	logLevel := fs.String("log-level", env("DEVPILOT_AGENT_LOG_LEVEL", "info"), "")
	var (
		supervisor, bootstrap, cfgFile, idFile, tokenFile string
		keepState, keepConfig                             bool
	)
	switch cmd {
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "devpilot-agent", version.String())
		return 0
	case "help", "-h", "--help", "-help":
		fmt.Fprint(stdout, usage)
		return 0
	case "install":
		fs.StringVar(&bootstrap, "bootstrap-file", env("DEVPILOT_AGENT_BOOTSTRAP_FILE", ""), "")
		fs.StringVar(&supervisor, "supervisor", env("DEVPILOT_AGENT_SUPERVISOR", "systemd"), "")
	case "enroll":
		fs.StringVar(&tokenFile, "token-file", env("DEVPILOT_AGENT_TOKEN_FILE", ""), "")
		fs.StringVar(&supervisor, "supervisor", env("DEVPILOT_AGENT_SUPERVISOR", "systemd"), "")
	case "uninstall":
		fs.StringVar(&supervisor, "supervisor", env("DEVPILOT_AGENT_SUPERVISOR", "systemd"), "")
		fs.BoolVar(&keepState, "keep-state", false, "")
		fs.BoolVar(&keepConfig, "keep-config", false, "")
	case "status":
		fs.StringVar(&supervisor, "supervisor", env("DEVPILOT_AGENT_SUPERVISOR", "systemd"), "")
	case "run":
		fs.StringVar(&cfgFile, "config", env("DEVPILOT_AGENT_CONFIG", ""), "")
		fs.StringVar(&idFile, "identity", env("DEVPILOT_AGENT_IDENTITY", ""), "")
	default:
		fmt.Fprintf(stderr, "devpilot-agent: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "devpilot-agent %s: unexpected argument %q\n", cmd, fs.Arg(0))
		return 2
	}
	log, err := logs.New(*logLevel)
	if err != nil {
		fmt.Fprintln(stderr, "devpilot-agent:", err)
		return 2
	}
	defer func() { _ = log.Sync() }()
	paths := layout.New(*root)

	var sup unitctl.Controller
	if supervisor != "" {
		if sup, err = unitctl.ByName(supervisor, log); err != nil {
			fmt.Fprintln(stderr, "devpilot-agent:", err)
			return 2
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// First SIGTERM/SIGINT: cancel (stop dialing, close the session
	// cleanly, exit 0). Second: exit at once.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	go func() {
		select {
		case s := <-sigs:
			log.Info("stopping; signal again to exit at once", zap.String("signal", s.String()))
			cancel()
		case <-ctx.Done():
			return
		}
		<-sigs
		log.Warn("second signal, exiting now")
		os.Exit(1)
	}()

	switch cmd {
	case "install":
		res, err := install.Install(ctx, install.Options{Paths: paths, BootstrapFile: bootstrap, Supervisor: sup, Log: log})
		if err != nil {
			log.Error("install failed", zap.Error(err))
			return 1
		}
		if len(res.Changed) == 0 {
			fmt.Fprintln(stdout, "devpilot-agent is installed; nothing changed")
		} else {
			fmt.Fprintf(stdout, "devpilot-agent installed below %s (%d files written)\n", paths.Root, len(res.Changed))
		}
		if sup.Name() == "none" {
			fmt.Fprintf(stdout, "not started (--supervisor none): run %s run --root-dir %s\n", paths.Binary(), paths.Root)
		}
	case "enroll":
		fp, err := install.Enroll(ctx, install.EnrollOptions{Paths: paths, TokenFile: tokenFile, Stdin: os.Stdin, Supervisor: sup, Log: log})
		if err != nil {
			log.Error("enroll failed", zap.Error(err))
			return 1
		}
		fmt.Fprintf(stdout, "new identity %s; the agent enrolls with the token when it (re)starts\n", fp)
		if sup.Name() == "none" {
			fmt.Fprintf(stdout, "not restarted (--supervisor none): restart %s run --root-dir %s\n", paths.Binary(), paths.Root)
		}
	case "uninstall":
		removed, err := install.Uninstall(ctx, install.UninstallOptions{Paths: paths, KeepState: keepState, KeepConfig: keepConfig, Supervisor: sup, Log: log})
		for _, r := range removed {
			fmt.Fprintln(stdout, "removed", r)
		}
		if err != nil {
			log.Error("uninstall failed", zap.Error(err))
			return 1
		}
	case "status":
		fmt.Fprintln(stdout, "devpilot-agent", version.String())
		if !install.Status(ctx, stdout, paths, sup) {
			return 3 // like systemctl status: not (fully) installed
		}
	case "run":
		err := runner.Run(ctx, runner.Options{Paths: paths, ConfigFile: cfgFile, IdentityFile: idFile, Log: log})
		if errors.Is(err, runner.ErrExitForUpdate) {
			log.Info("exiting so the supervisor starts the installed update")
			return 0
		}
		if errors.Is(err, runner.ErrExitForReboot) {
			log.Info("exiting for a reboot by the supervisor", zap.Int("status", runner.ExitReboot))
			return runner.ExitReboot
		}
		if err != nil {
			log.Error("agent stopped", zap.Error(err))
			return 1
		}
	}
	return 0
}
