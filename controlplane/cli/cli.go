// Package cli is the `devpilot` command line, built on cobra: `serve` and
// `dev` run the control plane, the other verbs are a client of its admin
// API, laid out one file per noun (integrations.go, servers.go, tasks.go, deploy.go…).
// Flags all have a DEVPILOT_* environment variable; secrets are read from
// a file, standard input or the environment, never from an argument.
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

	"github.com/spf13/pflag"
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
	// Prompt asks a question on the terminal and returns the answer line;
	// nil when standard input or standard error is not a terminal (then
	// destructive verbs need --force).
	Prompt func(prompt string) (string, error)
	// Color says standard output is a terminal that may get colour (the
	// caller checks NO_COLOR and TERM=dumb too); false for pipes and files.
	Color bool
}

// Exit codes of the CLI itself. `tasks run` and `tasks logs -f` exit with
// the remote command's exit code instead when it ran to one; their own
// failures then use ExitRemoteUnknown, like ssh uses 255.
const (
	ExitOK            = 0
	ExitError         = 1   // the API refused, or something failed (message and hint on stderr)
	ExitUsage         = 2   // the command was called wrong (unknown verb or flag, missing argument)
	ExitInterrupted   = 130 // Ctrl-C (128 + SIGINT)
	ExitRemoteUnknown = 255 // tasks run: the task ended without an exit code (canceled, timed out, agent lost, refused)
)

// errUsage marks errors caused by how the command was called (exit 2).
var errUsage = errors.New("usage")

type usageError struct{ msg, hint string }

func (e *usageError) Error() string { return e.msg }
func (e *usageError) Unwrap() error { return errUsage }

func usagef(format string, args ...any) error { return &usageError{msg: fmt.Sprintf(format, args...)} }

// hintError is a local failure (exit 1) with a hint saying what to do.
type hintError struct{ msg, hint string }

func (e *hintError) Error() string { return e.msg }

// exitError ends the CLI with a given code after printing its message
// (if any) on stderr.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// withCode reports err as usual but exits with code.
type withCode struct {
	code int
	err  error
}

func (e *withCode) Error() string { return e.err.Error() }
func (e *withCode) Unwrap() error { return e.err }

func report(env Env, err error) int {
	if err == nil || errors.Is(err, flag.ErrHelp) || errors.Is(err, pflag.ErrHelp) {
		return ExitOK
	}
	var wc *withCode
	if errors.As(err, &wc) {
		report(env, wc.err)
		return wc.code
	}
	var ae *APIError
	var ue *usageError
	var he *hintError
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		if ee.msg != "" {
			fmt.Fprintf(env.Stderr, "error: %s\n", ee.msg)
		}
		return ee.code
	case errors.As(err, &ae):
		fmt.Fprintf(env.Stderr, "error: %s (%s)\n", ae.Message, ae.Code)
		if ae.Hint != "" {
			fmt.Fprintf(env.Stderr, "hint: %s\n", ae.Hint)
		}
		return ExitError
	case errors.As(err, &ue):
		if strings.HasPrefix(ue.msg, "devpilot ") {
			fmt.Fprintln(env.Stderr, ue.msg)
		} else {
			fmt.Fprintf(env.Stderr, "devpilot: %v\n", ue.msg)
		}
		if ue.hint != "" {
			fmt.Fprintf(env.Stderr, "%s\n", ue.hint)
		}
		return ExitUsage
	case errors.As(err, &he):
		fmt.Fprintf(env.Stderr, "error: %s\n", he.msg)
		if he.hint != "" {
			fmt.Fprintf(env.Stderr, "hint: %s\n", he.hint)
		}
		return ExitError
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(env.Stderr, "interrupted")
		return ExitInterrupted
	default:
		fmt.Fprintf(env.Stderr, "error: %v\n", err)
		return ExitError
	}
}

// envName is the environment variable of a flag: --data-dir → DEVPILOT_DATA_DIR.
func envName(flagName string) string {
	return "DEVPILOT_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
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

// confirm asks before a destructive action: --force skips the question;
// without a terminal to ask on, it refuses with a hint.
func confirm(env Env, force bool, question string) error {
	if force {
		return nil
	}
	if env.Prompt == nil {
		return &usageError{msg: question + " Refusing without confirmation: standard input is not a terminal.",
			hint: "hint: add --force to do it without asking"}
	}
	ans, err := env.Prompt(question + " [y/N] ")
	if err != nil {
		return err
	}
	switch strings.ToLower(strings.TrimSpace(ans)) {
	case "y", "yes":
		return nil
	}
	return &exitError{code: ExitError, msg: "not confirmed; nothing was changed"}
}
