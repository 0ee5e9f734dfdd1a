// Command devpilot is the Devpilot control plane (`serve`, `dev`) and its
// admin command line (`integrations`, `servers`, `tasks`, …): see
// controlplane/cli.
package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"

	"github.com/devpilot/devpilot/controlplane/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	env := cli.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv,
		Color: term.IsTerminal(int(os.Stdout.Fd()))}
	if term.IsTerminal(int(os.Stdin.Fd())) {
		env.ReadSecret = func(prompt string) (string, error) {
			fmt.Fprint(os.Stderr, prompt)
			b, err := term.ReadPassword(int(os.Stdin.Fd()))
			fmt.Fprintln(os.Stderr)
			return string(b), err
		}
		if term.IsTerminal(int(os.Stderr.Fd())) {
			in := bufio.NewReader(os.Stdin)
			env.Prompt = func(prompt string) (string, error) {
				fmt.Fprint(os.Stderr, prompt)
				return in.ReadString('\n')
			}
		}
	}
	code := cli.Main(ctx, os.Args[1:], env)
	stop()
	os.Exit(code)
}
