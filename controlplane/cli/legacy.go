package cli

// The helpers of the CLI before cobra, kept so that a command written in
// that style (func(ctx, Env, args) error, its own flag parsing; see
// commands() and Attach in root.go) builds and runs unchanged:
//
//   - newFlags and parse: a Go flag.FlagSet whose flags default to their
//     DEVPILOT_* variables, flags allowed after positional arguments;
//   - newVerb/newVerbWith and verb.parse/parseOne/start/startOne: an API
//     verb with the connection flags, -o/--json and --workspace, parsed
//     from args (pflag: --flag and -flag both work).
//
// New commands are better written as cobra commands (see servers.go):
// they get help with examples, completion and typo suggestions.

import (
	"errors"
	"flag"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// newFlags makes a Go flag set for a plain-function command; parse applies
// the DEVPILOT_<NAME> defaults.
func newFlags(name string, env Env) *flag.FlagSet {
	fs := flag.NewFlagSet("devpilot "+name, flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	return fs
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

// newVerb makes a workspace API verb for a plain-function command:
// connection flags, -o/--json and --workspace.
func newVerb(env Env, name string) *verb {
	return newVerbWith(env, name, apiVerb)
}

// newVerbWith makes a plain-function API verb with the common flags vf asks for.
func newVerbWith(env Env, name string, vf verbFlags) *verb {
	fs := pflag.NewFlagSet("devpilot "+name, pflag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	v := &verb{cmd: &cobra.Command{Use: name}, env: env, fs: fs, legacyName: name}
	if !vf.local {
		v.conn = connFlags(fs)
	}
	if vf.json {
		v.out = outFlags(fs, env)
	}
	if vf.workspace != "" {
		v.ws = fs.String("workspace", "default", vf.workspace)
	}
	return v
}

// parse parses args (then the DEVPILOT_* defaults of the flags not given)
// and returns the positional arguments.
func (v *verb) parse(args []string) ([]string, error) {
	for i, a := range args { // -name → --name, as the Go flag package took it
		if a == "--" {
			break
		}
		if m := singleDash.FindStringSubmatch(a); m != nil && v.fs.Lookup(m[1]) != nil {
			args[i] = "-" + a
		}
	}
	if err := v.fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, err
		}
		return nil, &usageError{msg: v.name() + ": " + err.Error(), hint: "Run 'devpilot " + v.name() + " --help' for usage."}
	}
	if err := applyEnv(v.fs, v.env); err != nil {
		return nil, err
	}
	if v.out != nil {
		if err := v.out.check(); err != nil {
			return nil, err
		}
	}
	return v.fs.Args(), nil
}

// parseOne parses args, which must hold exactly one positional argument,
// and returns it; what names it in the usage error.
func (v *verb) parseOne(args []string, what string) (string, error) {
	pos, err := v.parse(args)
	if err != nil {
		return "", err
	}
	if len(pos) != 1 {
		return "", usagef("%s: give exactly one %s", v.name(), what)
	}
	return pos[0], nil
}

// start parses args and connects.
func (v *verb) start(args []string) ([]string, *client, error) {
	pos, err := v.parse(args)
	if err != nil {
		return nil, nil, err
	}
	cl, err := v.connect()
	return pos, cl, err
}

// startOne is start for a verb that acts on exactly one thing.
func (v *verb) startOne(args []string, what string) (string, *client, error) {
	id, err := v.parseOne(args, what)
	if err != nil {
		return "", nil, err
	}
	cl, err := v.connect()
	return id, cl, err
}
