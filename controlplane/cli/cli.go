// Package cli is the `devpilot` command line: `serve` and `dev` run the
// control plane, the other verbs are a client of its admin API. Flags all
// have a DEVPILOT_* environment variable; secrets are read from a file,
// standard input or the environment, never from an argument.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
)

// Env is the process environment the CLI runs in (tests substitute it).
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Getenv func(string) string
	// ReadSecret reads a secret from the terminal without echo; nil when
	// standard input is not a terminal.
	ReadSecret func(prompt string) (string, error)
}

// errUsage marks errors caused by how the command was called (exit 2).
var errUsage = errors.New("usage")

type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }
func (e *usageError) Unwrap() error { return errUsage }

func usagef(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

type command struct {
	name, summary string
	run           func(ctx context.Context, env Env, args []string) error
}

func commands() []command {
	return []command{
		{"serve", "run the control plane", runServe},
		{"dev", "run the control plane with simulated clouds on this machine", runDev},
		{"integrations", "connect, test, rotate and remove cloud accounts", runIntegrations},
		{"servers", "create, list, show and delete servers", runServers},
		{"tasks", "run commands, unit actions and file writes on a server; list, show, follow and cancel tasks", runTasks},
		{"deploy", "roll a deploy plan across servers in batches (deploy -f plan.yaml; deploy status ID)", runDeploy},
		{"tokens", "create, list and revoke API tokens; recover an owner token on the machine", runTokens},
		{"workspaces", "create and list workspaces", runWorkspaces},
		{"keys", "rotate the master key that encrypts secrets at rest", runKeys},
		{"audit", "show the audit log", runAudit},
		{"backup", "archive the data dir while serving (backup --to FILE), optionally encrypted; restore FILE --data-dir D", runBackup}, {"restore", "restore a backup into a new data dir", runRestore}, {"migrate", "show the schema version and pending migrations (migrate status)", runMigrate},
		{"version", "print the version", runVersion},
	}
}

// Main runs the CLI and returns the process exit code.
func Main(ctx context.Context, args []string, env Env) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(env.Stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(ctx, env, args[1:])
			return report(env, err)
		}
	}
	fmt.Fprintf(env.Stderr, "devpilot: unknown command %q\n\n", args[0])
	printUsage(env.Stderr)
	return 2
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: devpilot <command> [flags]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-13s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'devpilot <command> -h' for a command's flags. Every flag can also be set as DEVPILOT_<FLAG>.")
}

func report(env Env, err error) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	var ae *APIError
	switch {
	case errors.As(err, &ae):
		fmt.Fprintf(env.Stderr, "error: %s (%s)\n", ae.Message, ae.Code)
		if ae.Hint != "" {
			fmt.Fprintf(env.Stderr, "hint: %s\n", ae.Hint)
		}
		return 1
	case errors.Is(err, errUsage):
		fmt.Fprintf(env.Stderr, "devpilot: %v\n", err)
		return 2
	default:
		fmt.Fprintf(env.Stderr, "error: %v\n", err)
		return 1
	}
}

// newFlags makes a flag set whose flags default to DEVPILOT_<NAME> from the
// environment (applied by parse).
func newFlags(name string, env Env) *flag.FlagSet {
	fs := flag.NewFlagSet("devpilot "+name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	return fs
}

// envName is the environment variable of a flag: --data-dir → DEVPILOT_DATA_DIR.
func envName(flagName string) string {
	return "DEVPILOT_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parse applies environment defaults, then parses args allowing flags
// after positional arguments, and returns the positional ones.
func parse(fs *flag.FlagSet, env Env, args []string) ([]string, error) {
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if v := env.Getenv(envName(f.Name)); v != "" && envErr == nil {
			if err := f.Value.Set(v); err != nil {
				envErr = usagef("%s=%q: %v", envName(f.Name), v, err)
			}
		}
	})
	if envErr != nil {
		return nil, envErr
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usagef("%v", err)
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// connFlags registers the flags that say how to reach the API.
func connFlags(fs *flag.FlagSet) *connOpts {
	o := &connOpts{}
	fs.StringVar(&o.url, "url", "", "control plane URL (default: read from the data dir)")
	fs.StringVar(&o.tokenFile, "token-file", "", "file holding the API token (or set DEVPILOT_TOKEN; default: the data dir's owner.token)")
	fs.StringVar(&o.caCert, "ca-cert", "", "CA certificate to trust (default: the data dir's TLS CA)")
	fs.StringVar(&o.dataDir, "data-dir", "devpilot-data", "control plane data directory, for local defaults")
	return o
}

// verb is an API verb being run: its flag set with the connection flags,
// usually --json and --workspace, and the helpers every verb goes through
// (parse, check the positional arguments, connect, print).
type verb struct {
	name string // "integrations show", for usage errors
	env  Env
	fs   *flag.FlagSet
	conn *connOpts
	out  *output // nil without --json
	ws   *string // nil without --workspace
}

// verbFlags says which common flags a verb has besides the connection ones.
type verbFlags struct {
	json      bool   // --json
	workspace string // help of --workspace (default "default"); "" for none
}

// newVerb makes a workspace verb: connection flags, --json and --workspace.
func newVerb(env Env, name string) *verb {
	return newVerbWith(env, name, verbFlags{json: true, workspace: "workspace slug"})
}

// newVerbWith makes a verb with the common flags that vf asks for.
func newVerbWith(env Env, name string, vf verbFlags) *verb {
	v := &verb{name: name, env: env, fs: newFlags(name, env)}
	v.conn = connFlags(v.fs)
	if vf.json {
		v.out = outFlags(v.fs, env)
	}
	if vf.workspace != "" {
		v.ws = v.fs.String("workspace", "default", vf.workspace)
	}
	return v
}

// parse parses args and returns the positional ones (see parse).
func (v *verb) parse(args []string) ([]string, error) { return parse(v.fs, v.env, args) }

// parseOne parses args, which must hold exactly one positional argument,
// and returns it; what names it in the usage error.
func (v *verb) parseOne(args []string, what string) (string, error) {
	pos, err := v.parse(args)
	if err != nil {
		return "", err
	}
	if len(pos) != 1 {
		return "", usagef("%s: give exactly one %s", v.name, what)
	}
	return pos[0], nil
}

// connect makes the API client from the connection flags.
func (v *verb) connect() (*client, error) { return v.conn.client(v.env.Getenv) }

// start parses args and connects; it returns the positional arguments
// unchecked (verbs that take none have always ignored stray ones).
func (v *verb) start(args []string) ([]string, *client, error) {
	pos, err := v.parse(args)
	if err != nil {
		return nil, nil, err
	}
	cl, err := v.connect()
	return pos, cl, err
}

// startOne is start for a verb that acts on exactly one thing (see parseOne).
func (v *verb) startOne(args []string, what string) (string, *client, error) {
	id, err := v.parseOne(args, what)
	if err != nil {
		return "", nil, err
	}
	cl, err := v.connect()
	return id, cl, err
}

// path is an API path in the verb's workspace: path("/servers").
func (v *verb) path(rest string) string { return wsPath(*v.ws) + rest }

// print writes the API's raw answer with --json, else calls pretty.
func (v *verb) print(raw []byte, pretty func()) error {
	if v.out != nil && v.out.json {
		v.out.raw(raw)
		return nil
	}
	pretty()
	return nil
}

// output prints raw JSON or a table.
type output struct {
	json bool
	w    io.Writer
}

func outFlags(fs *flag.FlagSet, env Env) *output {
	o := &output{w: env.Stdout}
	fs.BoolVar(&o.json, "json", false, "print JSON for scripts")
	return o
}

func (o *output) raw(raw []byte) { _, _ = o.w.Write(raw) }

func (o *output) table(header []string, rows [][]string) {
	tw := tabwriter.NewWriter(o.w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	_ = tw.Flush()
}

// fields prints key: value lines in the given order.
func (o *output) fields(kv [][2]string) {
	tw := tabwriter.NewWriter(o.w, 0, 4, 1, ' ', 0)
	for _, f := range kv {
		fmt.Fprintf(tw, "%s:\t%s\n", f[0], f[1])
	}
	_ = tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func sortedKeys[M ~map[string]V, V any](m M) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// readSecret finds a secret: --secret-file, then the environment variable,
// then standard input (a prompt without echo on a terminal).
func readSecret(env Env, file, envVar, what string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("read %s: %w", what, err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if v := env.Getenv(envVar); v != "" {
		return strings.TrimSpace(v), nil
	}
	if env.ReadSecret != nil {
		s, err := env.ReadSecret(what + ": ")
		return strings.TrimSpace(s), err
	}
	b, err := io.ReadAll(io.LimitReader(env.Stdin, 64<<10))
	if err != nil {
		return "", fmt.Errorf("read %s from stdin: %w", what, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", usagef("no %s given: pipe it on stdin, or use --secret-file or %s", what, envVar)
	}
	return s, nil
}
