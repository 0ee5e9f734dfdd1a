package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

// action is a lifecycle action of a server (issue 11): POST
// /v1/workspaces/{ws}/servers/{id}/actions answers 202 with it.
type action struct {
	ID         string         `json:"id"`
	ServerID   string         `json:"server_id"`
	Type       string         `json:"type"`
	Params     map[string]any `json:"params"`
	State      string         `json:"state"` // queued, running, succeeded, failed
	Steps      []actionStep   `json:"steps"`
	Error      *APIError      `json:"error"`
	CreatedAt  *time.Time     `json:"created_at"`
	FinishedAt *time.Time     `json:"finished_at"`
}

type actionStep struct {
	Name       string          `json:"name"`
	State      string          `json:"state"`
	StartedAt  *time.Time      `json:"started_at"`
	FinishedAt *time.Time      `json:"finished_at"`
	Error      json.RawMessage `json:"error"`
	Detail     string          `json:"detail"` // what the step did, e.g. "asked the agent to reboot (boot …)"
}

func (s actionStep) errText() string {
	if len(s.Error) == 0 || string(s.Error) == "null" {
		return ""
	}
	var str string
	if json.Unmarshal(s.Error, &str) == nil {
		return str
	}
	var e APIError
	if json.Unmarshal(s.Error, &e) == nil && e.Message != "" {
		return strings.TrimPrefix(e.Code+": "+e.Message, ": ")
	}
	return string(s.Error)
}

// lifecycleCmds are the servers verbs that start an action, and
// `servers actions` to list them.
func lifecycleCmds(env Env) []*cobra.Command {
	noBody := func(typ string) func(v *verb, args []string) (map[string]any, error) {
		return func(*verb, []string) (map[string]any, error) { return map[string]any{"type": typ}, nil }
	}
	var hard, force, yes, resizeForce bool
	var size string
	var allow intList
	reboot := actionVerb(env, &cobra.Command{Use: "reboot NAME|ID [--hard] [--wait]", Short: "reboot a server (gracefully; --hard power-cycles it)",
		Example: "  devpilot servers reboot web-1 --wait"},
		func(v *verb, _ []string) (map[string]any, error) {
			return map[string]any{"type": "reboot", "hard": hard}, nil
		}, nil)
	reboot.Flags().BoolVar(&hard, "hard", false, "power-cycle instead of a clean reboot")
	powerOff := actionVerb(env, &cobra.Command{Use: "power-off NAME|ID [--force] [--yes] [--wait]", Short: "shut a server down (it keeps costing money while stopped)",
		Long: `power-off shuts the server down cleanly; --force cuts the power instead.
It asks first on a terminal; --yes (or --force) skips the question, and
without a terminal one of them is needed.`,
		Example: "  devpilot servers power-off web-1 --yes --wait"},
		func(v *verb, _ []string) (map[string]any, error) {
			return map[string]any{"type": "power_off", "force": force}, nil
		},
		func(v *verb) (string, bool) { return "Power off server %s? What runs on it stops.", yes || force })
	powerOff.Flags().BoolVar(&force, "force", false, "cut the power instead of a clean shutdown (implies --yes)")
	powerOff.Flags().BoolVarP(&yes, "yes", "y", false, "don't ask for confirmation")
	powerOn := actionVerb(env, &cobra.Command{Use: "power-on NAME|ID [--wait]", Short: "start a stopped server", Example: "  devpilot servers power-on web-1 --wait"},
		noBody("power_on"), nil)
	resize := actionVerb(env, &cobra.Command{Use: "resize NAME|ID --size SIZE [--force] [--wait]", Short: "move a server to another size (it is powered off meanwhile)",
		Example: "  devpilot servers resize web-1 --size s-2vcpu-2gb --force --wait\n  devpilot integrations catalog my-do --region nyc3   # the sizes"},
		func(v *verb, _ []string) (map[string]any, error) {
			if size == "" {
				return nil, usagef("servers resize: --size is required (see devpilot integrations catalog NAME --region R)")
			}
			return map[string]any{"type": "resize", "size": size}, nil
		},
		func(v *verb) (string, bool) {
			return "Resize server %s to " + size + "? It is powered off while it moves.", resizeForce
		})
	resize.Flags().StringVar(&size, "size", "", "the new size, e.g. s-2vcpu-2gb")
	resize.Flags().BoolVar(&resizeForce, "force", false, "don't ask for confirmation")
	ports := actionVerb(env, &cobra.Command{Use: "ports NAME|ID --allow P,P [--wait]", Short: "set the inbound TCP ports the server's firewall opens",
		Example: "  devpilot servers ports web-1 --allow 22,8080"},
		func(v *verb, _ []string) (map[string]any, error) {
			if len(allow) == 0 {
				return nil, usagef("servers ports: --allow is required, e.g. --allow 22,443")
			}
			return map[string]any{"type": "ports", "ports": []int(allow)}, nil
		}, nil)
	ports.Flags().Var(&allow, "allow", "the TCP ports to open, comma-separated or repeated (the list replaces the old one)")

	rename := serverRenameCmd(env)
	actions := onServer(env, &cobra.Command{Use: "actions NAME|ID", Short: "list a server's lifecycle actions, newest first",
		Example: "  devpilot servers actions web-1"},
		func(v *verb) func(ctx context.Context, cl *client, id string) error {
			return func(ctx context.Context, cl *client, id string) error {
				var all []action
				raw, err := v.list(ctx, cl, v.path("/servers/"+url.PathEscape(id)+"/actions"), "actions", &all)
				if err != nil {
					return err
				}
				return v.print(raw, func() {
					rows := [][]string{}
					for _, a := range all {
						e := ""
						if a.Error != nil {
							e = a.Error.Code + ": " + a.Error.Message
						}
						rows = append(rows, []string{a.ID, a.Type, paramsLine(a.Params), v.out.paint(a.State), ts(a.CreatedAt), ts(a.FinishedAt), orDash(e)})
					}
					v.out.table([]string{"ID", "TYPE", "PARAMS", "STATE", "CREATED", "FINISHED", "ERROR"}, rows)
				})
			}
		})
	return []*cobra.Command{reboot, powerOff, powerOn, resize, ports, rename, actions}
}

func paramsLine(p map[string]any) string {
	parts := []string{}
	for _, k := range sortedKeys(p) {
		if k == "type" {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s=%v", k, p[k]))
	}
	return orDash(strings.Join(parts, " "))
}

// watchAction prints an action's steps as they start and end until it
// succeeded or failed (to stderr under -o json/yaml) and returns its last
// answer; a failed action is an error with the action's code and hint.
func watchAction(ctx context.Context, v *verb, cl *client, server string, a *action) ([]byte, error) {
	w := v.progress().w
	fmt.Fprintf(w, "%s %s (%s)…\n", a.Type, server, a.ID)
	seen := map[string]string{}
	for {
		var cur action
		raw, err := cl.do(ctx, "GET", v.path("/servers/"+url.PathEscape(server)+"/actions/"+url.PathEscape(a.ID)), nil, &cur)
		if err != nil {
			return nil, err
		}
		for _, st := range cur.Steps {
			if seen[st.Name] == st.State {
				continue
			}
			seen[st.Name] = st.State
			switch st.State {
			case "running":
				fmt.Fprintf(w, "  … %-14s started\n", st.Name)
			case "succeeded", "done":
				took := ""
				if st.StartedAt != nil && st.FinishedAt != nil {
					took = st.FinishedAt.Sub(*st.StartedAt).Round(time.Millisecond).String()
				}
				if st.Detail != "" {
					took += " — " + st.Detail
				}
				fmt.Fprintf(w, "  ✓ %-14s %s\n", st.Name, strings.TrimPrefix(took, " "))
			case "failed":
				fmt.Fprintf(w, "  ✗ %-14s failed %s\n", st.Name, st.errText())
			}
		}
		switch cur.State {
		case "succeeded":
			fmt.Fprintf(w, "%s of %s succeeded.\n", cur.Type, server)
			return raw, nil
		case "failed":
			if v.json() {
				_ = v.out.raw(raw)
			}
			if cur.Error != nil && cur.Error.Code != "" {
				return nil, cur.Error
			}
			return nil, &APIError{Code: "action_failed", Message: cur.Type + " failed"}
		}
		select {
		case <-ctx.Done():
			fmt.Fprintf(v.env.Stderr, "\nStopped watching: action %s goes on.\n  follow it: %s\n", a.ID, v.again("servers actions "+server))
			return nil, &exitError{code: ExitInterrupted}
		case <-time.After(time.Second):
		}
	}
}

// actionVerb makes a verb that posts the body build returns; ask, if not
// empty, is the question a destructive action asks first (skipped
// when skip says so).
func actionVerb(env Env, c *cobra.Command, build func(v *verb, args []string) (map[string]any, error), ask func(v *verb) (string, bool)) *cobra.Command {
	return onServer(env, c, func(v *verb) func(ctx context.Context, cl *client, id string) error {
		wait := v.fs.Bool("wait", false, "show the action's steps as they run, until it succeeded or failed")
		return func(ctx context.Context, cl *client, id string) error {
			body, err := build(v, v.cmd.Flags().Args())
			if err != nil {
				return err
			}
			if ask != nil {
				if q, skip := ask(v); q != "" {
					if err := confirm(env, skip, fmt.Sprintf(q, id)); err != nil {
						return err
					}
				}
			}
			var a action
			raw, err := cl.do(ctx, "POST", v.path("/servers/"+url.PathEscape(id)+"/actions"), body, &a)
			if err != nil {
				return err
			}
			if !*wait {
				return v.print(raw, func() {
					fmt.Fprintf(env.Stdout, "Action %s (%s) on %s is %s. Follow it with: devpilot servers actions %s\n", a.ID, a.Type, id, a.State, id)
				})
			}
			raw, err = watchAction(ctx, v, cl, id, &a)
			if err != nil {
				return err
			}
			return v.print(raw, func() {})
		}
	})
}

func serverRenameCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "rename NAME|ID NEW-NAME [--wait]", Short: "give a server a new name (and hostname)",
		Example: "  devpilot servers rename web-1 web-2", Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return &usageError{msg: "servers rename: give the server (name or id) and its new name",
					hint: "Run 'devpilot servers rename --help' for usage."}
			}
			return nil
		}}, apiVerb, func(v *verb) runFn {
		wait := v.fs.Bool("wait", false, "show the action's steps as they run, until it succeeded or failed")
		return func(ctx context.Context, args []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			// The server first, then the new name; the other order works
			// too when only the second argument names a server.
			old, neu := args[0], args[1]
			id, err := v.resolve(ctx, cl, serverNoun, old)
			var ae *APIError
			if errors.As(err, &ae) && ae.Code == "not_found" {
				if id2, err2 := v.resolve(ctx, cl, serverNoun, neu); err2 == nil {
					id, err, neu = id2, nil, old
				}
			}
			if err != nil {
				return err
			}
			var a action
			raw, err := cl.do(ctx, "POST", v.path("/servers/"+url.PathEscape(id)+"/actions"), map[string]any{"type": "rename", "name": neu}, &a)
			if err != nil {
				return err
			}
			if *wait {
				if raw, err = watchAction(ctx, v, cl, id, &a); err != nil {
					return err
				}
				return v.print(raw, func() {})
			}
			return v.print(raw, func() {
				fmt.Fprintf(env.Stdout, "Action %s (rename to %s) on %s is %s.\n", a.ID, neu, id, a.State)
			})
		}
	})
}
