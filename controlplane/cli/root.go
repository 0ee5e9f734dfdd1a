package cli

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/devpilot/devpilot/shared/version"
)

// Main runs the CLI and returns the process exit code (see the Exit*
// constants).
func Main(ctx context.Context, args []string, env Env) int {
	root := newRoot(env)
	root.SetArgs(normalizeArgs(root, args))
	if len(args) == 0 {
		root.SetOut(env.Stderr)
		_ = root.Usage()
		return ExitUsage
	}
	err := root.ExecuteContext(ctx)
	if err != nil && strings.HasPrefix(err.Error(), "unknown command ") {
		// cobra's own, with "Did you mean this?" and the candidates.
		msg := strings.TrimSpace(strings.ReplaceAll(err.Error(), "\n\t", " "))
		msg = strings.ReplaceAll(msg, "\n\nDid you mean this?", "; did you mean:")
		err = &usageError{msg: msg, hint: "Run 'devpilot --help' for the commands."}
	}
	if err != nil && ctx.Err() != nil && !errors.As(err, new(*exitError)) {
		err = context.Canceled
	}
	return report(env, err)
}

// command is a command written as a plain function of its arguments, the
// style before cobra: it parses its own flags (see newFlags and parse).
// Such a command is attached to the tree with Attach; commands() lists the
// ones attached at the top level.
type command struct {
	name, summary string
	run           func(ctx context.Context, env Env, args []string) error
}

// commands are the top-level commands written in the plain-function style
// (the adapter for work written before the move to cobra): add
// {"backup", "copy the database to a file", runBackup} here and it becomes
// `devpilot backup`, with its own flag parsing and -h.
func commands() []command {
	return []command{
		{"backup", "archive the data dir while serving (backup --to FILE), optionally encrypted", runBackup},
		{"restore", "restore a backup into a new, empty data dir (restore FILE --data-dir D)", runRestore},
		{"migrate", "show the schema version and pending migrations (migrate status)", runMigrate},
	}
}

// Attach adds a command written as func(ctx, Env, args) to parent: cobra
// leaves its arguments alone (flags included, -h too) and passes them to
// run, whose errors are reported like every other command's.
func Attach(parent *cobra.Command, env Env, name, summary string, run func(ctx context.Context, env Env, args []string) error) *cobra.Command {
	c := &cobra.Command{
		Use:                name + " [flags]",
		Short:              summary,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return run(cmd.Context(), env, args)
		},
	}
	parent.AddCommand(c)
	return c
}

func newRoot(env Env) *cobra.Command {
	root := &cobra.Command{
		Use:   "devpilot",
		Short: "Devpilot: managed servers on your DigitalOcean or Vultr account",
		Long: `Devpilot runs the control plane (serve, dev) and is its command line.

Connection (first found wins): the --url/--token-file/--ca-cert flags, then
DEVPILOT_URL/DEVPILOT_TOKEN/DEVPILOT_TOKEN_FILE/DEVPILOT_CA_CERT, then the
current context saved by 'devpilot login', then the files of the data dir
(--data-dir, default ./devpilot-data) on the control plane's own machine.
Every flag can also be set as DEVPILOT_<FLAG>, e.g. DEVPILOT_WORKSPACE.`,
		Version:           version.String(),
		SilenceUsage:      true,
		SilenceErrors:     true,
		DisableAutoGenTag: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			return applyEnv(cmd.Flags(), env)
		},
	}
	root.SetVersionTemplate("devpilot {{.Version}}\n")
	root.SetIn(env.Stdin)
	root.SetOut(env.Stdout)
	root.SetErr(env.Stderr)
	root.SetFlagErrorFunc(flagError)
	root.SuggestionsMinimumDistance = 2
	root.AddGroup(&cobra.Group{ID: "api", Title: "Admin commands (a client of the API):"},
		&cobra.Group{ID: "run", Title: "Running the control plane:"})
	for _, c := range []*cobra.Command{
		integrationsCmd(env), serversCmd(env), tasksCmd(env), deployCmd(env), tokensCmd(env),
		workspacesCmd(env), keysCmd(env), auditCmd(env), loginCmd(env), contextCmd(env), versionCmd(env),
		agentsCmd(env),
		alertsCmd(env),
		eventsCmd(env),
		webhooksCmd(env),
	} {
		c.GroupID = "api"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{serveCmd(env), devCmd(env)} {
		c.GroupID = "run"
		root.AddCommand(c)
	}
	for _, c := range commands() {
		Attach(root, env, c.name, c.summary, c.run)
	}
	root.SetHelpCommandGroupID("api")
	root.SetCompletionCommandGroupID("api")
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		switch c.Name() {
		case "completion":
			c.Short = "print the shell completion script (bash, zsh, fish, powershell): verbs, flags and names"
			c.Example = "  source <(devpilot completion bash)\n  devpilot completion zsh > \"${fpath[1]}/_devpilot\"\n  devpilot completion fish | source"
		case "help":
			c.Short = "help about any command"
		}
	}
	return root
}

// group makes a noun command whose verbs are its subcommands; alone or
// with an unknown verb it is a usage error naming the verbs.
func group(use, short, example string, verbs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{
		Use:     use + " VERB",
		Short:   short,
		Example: example,
		Args:    cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			names := []string{}
			for _, v := range cmd.Commands() {
				if v.IsAvailableCommand() {
					names = append(names, v.Name())
				}
			}
			if len(args) == 0 {
				return &usageError{msg: fmt.Sprintf("%s: missing verb (one of %s)", cmd.CommandPath(), strings.Join(names, ", ")),
					hint: fmt.Sprintf("Run '%s --help' for what each does.", cmd.CommandPath())}
			}
			msg := fmt.Sprintf("%s: unknown verb %q (one of %s)", cmd.CommandPath(), args[0], strings.Join(names, ", "))
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				msg += fmt.Sprintf("; did you mean %q?", strings.Join(s, `" or "`))
			}
			return &usageError{msg: msg, hint: fmt.Sprintf("Run '%s --help' for usage.", cmd.CommandPath())}
		},
	}
	c.SuggestionsMinimumDistance = 2
	c.AddCommand(verbs...)
	return c
}

// flagError is a short usage error with the closest flag name and where
// to read the rest, instead of cobra's dump of every flag.
func flagError(cmd *cobra.Command, err error) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "unknown flag: --"); ok {
		if s := closestFlag(cmd, name); s != "" {
			msg += fmt.Sprintf(" (did you mean --%s?)", s)
		}
	}
	return &usageError{msg: cmd.CommandPath() + ": " + msg, hint: fmt.Sprintf("Run '%s --help' for usage.", cmd.CommandPath())}
}

func closestFlag(cmd *cobra.Command, name string) string {
	best, bestD := "", 3
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Hidden {
			return
		}
		d := levenshtein(name, f.Name)
		if strings.HasPrefix(f.Name, name) && len(name) >= 3 {
			d = 1
		}
		if d < bestD {
			best, bestD = f.Name, d
		}
	})
	return best
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// applyEnv sets every flag not given on the command line from its
// DEVPILOT_<FLAG> variable. Value.Set, not FlagSet.Set: Changed then still
// says "given as an argument" (see passwordInArgs).
func applyEnv(fs *pflag.FlagSet, env Env) error {
	var envErr error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || envErr != nil || f.Name == "help" || f.Name == "version" {
			return
		}
		if v := env.Getenv(envName(f.Name)); v != "" {
			if err := f.Value.Set(v); err != nil {
				envErr = usagef("%s=%q: %v", envName(f.Name), v, err)
			}
		}
	})
	return envErr
}

var singleDash = regexp.MustCompile(`^-([a-z][a-z0-9-]+)(=.*)?$`)

// normalizeArgs keeps the Go flag package's spelling working: -name and
// -name=value become --name for a long flag of the command being run.
func normalizeArgs(root *cobra.Command, args []string) []string {
	cmd, _, err := root.Find(args)
	if err != nil || cmd.DisableFlagParsing {
		return args
	}
	out := make([]string, 0, len(args))
	for i, a := range args {
		if a == "--" {
			return append(out, args[i:]...)
		}
		if m := singleDash.FindStringSubmatch(a); m != nil && cmd.Flags().Lookup(m[1]) != nil {
			a = "-" + a
		}
		out = append(out, a)
	}
	return out
}

func versionCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "version", Short: "print the version", Args: cobra.NoArgs},
		verbFlags{json: true, local: true}, func(v *verb) runFn {
			return func(ctx context.Context, _ []string) error {
				return v.printValue(map[string]string{"version": version.String()}, func() {
					fmt.Fprintln(env.Stdout, "devpilot", version.String())
				})
			}
		})
}
