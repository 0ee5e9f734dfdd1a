package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// runFn is what a verb does once its flags are parsed: args are the
// positional arguments.
type runFn func(ctx context.Context, args []string) error

// verb is an API verb being run: its flags with the connection ones,
// usually -o and --workspace, and the helpers every verb goes through
// (connect, resolve names, print).
type verb struct {
	cmd  *cobra.Command
	env  Env
	fs   *pflag.FlagSet
	conn *connOpts
	out  *output // nil without -o
	ws   *string // nil without --workspace

	legacyName string // newVerb's name (see legacy.go)
}

// verbFlags says which common flags a verb has.
type verbFlags struct {
	json      bool   // -o/--json/--format/--no-header (the name from before cobra)
	workspace string // help of --workspace (default "default"); "" for none
	local     bool   // no connection flags (the verb does not call the API)
}

// apiVerb is the usual set: connection flags, output flags, --workspace.
var apiVerb = verbFlags{json: true, workspace: "workspace slug"}

// verbCmd completes c (Use, Short, Args, Example set by the caller) as a
// verb: setup registers the verb's own flags on v.fs and returns what the
// verb does.
func verbCmd(env Env, c *cobra.Command, vf verbFlags, setup func(v *verb) runFn) *cobra.Command {
	v := &verb{cmd: c, env: env, fs: c.Flags()}
	v.fs.SortFlags = false
	run := setup(v)
	if !vf.local {
		v.conn = connFlags(v.fs)
	}
	if vf.json {
		v.out = outFlags(v.fs, env)
	}
	if vf.workspace != "" {
		v.ws = v.fs.String("workspace", "default", vf.workspace)
	}
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if v.out != nil {
			if err := v.out.check(); err != nil {
				return err
			}
		}
		return run(cmd.Context(), args)
	}
	return c
}

// name is the verb's command path without "devpilot ", for messages.
func (v *verb) name() string {
	if v.legacyName != "" {
		return v.legacyName
	}
	return strings.TrimPrefix(v.cmd.CommandPath(), "devpilot ")
}

// connect makes the API client from the connection flags. With a saved
// context, --workspace defaults to the context's (its token's) workspace.
func (v *verb) connect() (*client, error) {
	cl, err := v.conn.client(v.env)
	if err == nil && v.ws != nil && cl.workspace != "" && !v.conn.set(v.env, "workspace") {
		*v.ws = cl.workspace
	}
	return cl, err
}

// path is an API path in the verb's workspace: path("/servers").
func (v *verb) path(rest string) string { return wsPath(*v.ws) + rest }

// wsPath is the API prefix of a workspace.
func wsPath(ws string) string { return "/v1/workspaces/" + url.PathEscape(ws) }

// json reports whether the output is for machines (-o json or yaml):
// then stdout holds exactly one document and progress goes to stderr.
func (v *verb) json() bool { return v.out != nil && v.out.format != "table" }

// print writes the API's raw answer under -o json/yaml, else calls pretty.
func (v *verb) print(raw []byte, pretty func()) error {
	if v.json() {
		return v.out.raw(raw)
	}
	pretty()
	return v.out.err
}

// printValue is print for a value the CLI made itself.
func (v *verb) printValue(val any, pretty func()) error {
	if v.json() {
		b, err := json.Marshal(val)
		if err != nil {
			return err
		}
		return v.out.raw(b)
	}
	pretty()
	if v.out != nil {
		return v.out.err
	}
	return nil
}

// progress is where lines about work under way go: stdout for people,
// stderr under -o json/yaml (stdout is for the one document).
func (v *verb) progress() *output {
	if v.json() {
		return &output{format: "table", w: v.env.Stderr}
	}
	return v.out
}

// idPattern is how record ids look: prefix_ and 16 base32 characters
// (controlplane/ids).
var idPattern = regexp.MustCompile(`^[a-z]{2,5}_[a-z2-7]{16}$`)

// noun says how to find a resource by name.
type noun struct {
	plural string   // the path segment and the list's key: "servers"
	names  []string // fields that hold its name, tried in order
	list   string   // the list verb, for the hint
}

var (
	serverNoun      = noun{"servers", []string{"name"}, "devpilot servers list"}
	integrationNoun = noun{"integrations", []string{"name", "access_key"}, "devpilot integrations list"}
	tokenNoun       = noun{"tokens", []string{"name"}, "devpilot tokens list"}
)

// resolve turns a name or an id into an id: an id is taken as it is; a
// name is looked up by listing (?name=, filtered exactly here too, so it
// works with a server that ignores the filter). No match is "not found"
// with the list verb as the hint; several are refused, listing them.
func (v *verb) resolve(ctx context.Context, cl *client, n noun, arg string) (string, error) {
	if idPattern.MatchString(arg) {
		return arg, nil
	}
	items, err := cl.listAll(ctx, v.path("/"+n.plural+"?name="+url.QueryEscape(arg)), n.plural)
	if err != nil {
		return "", err
	}
	var found []map[string]any
	for _, raw := range items {
		var m map[string]any
		if json.Unmarshal(raw, &m) != nil {
			continue
		}
		for _, f := range n.names {
			if s, _ := m[f].(string); s == arg {
				found = append(found, m)
				break
			}
		}
	}
	if len(found) > 1 {
		// A failed or deleted server's name can be taken again: the live
		// one is meant.
		var live []map[string]any
		for _, m := range found {
			if st, _ := m["state"].(string); st != "failed" && st != "deleted" {
				live = append(live, m)
			}
		}
		if len(live) == 1 {
			found = live
		}
	}
	single := strings.TrimSuffix(n.plural, "s")
	switch len(found) {
	case 0:
		return "", &APIError{Status: 404, Code: "not_found", Message: fmt.Sprintf("no %s named or with id %q in workspace %s", single, arg, *v.ws),
			Hint: fmt.Sprintf("`%s` shows their names and ids", n.list)}
	case 1:
		id, _ := found[0]["id"].(string)
		return id, nil
	}
	cands := []string{}
	for _, m := range found {
		c := fmt.Sprint(m["id"])
		for _, k := range []string{"state", "status", "provider"} {
			if s, ok := m[k].(string); ok {
				c += " (" + k + " " + s + ")"
				break
			}
		}
		cands = append(cands, c)
	}
	return "", &usageError{msg: fmt.Sprintf("%d %ss are named %q: %s", len(found), single, arg, strings.Join(cands, ", ")),
		hint: "hint: give the id instead"}
}

// listAll GETs a list and every page its "next" links to, and returns the
// items under key.
func (c *client) listAll(ctx context.Context, path, key string) ([]json.RawMessage, error) {
	return c.listN(ctx, path, key, 0)
}

// listN is listAll stopping once it has max items (0: no limit).
func (c *client) listN(ctx context.Context, path, key string, max int) ([]json.RawMessage, error) {
	all := []json.RawMessage{}
	seen := map[string]bool{}
	for path != "" && !seen[path] && (max <= 0 || len(all) < max) {
		seen[path] = true
		var page map[string]json.RawMessage
		if _, err := c.do(ctx, "GET", path, nil, &page); err != nil {
			return nil, err
		}
		var items []json.RawMessage
		if b, ok := page[key]; ok {
			if err := json.Unmarshal(b, &items); err != nil {
				return nil, fmt.Errorf("decode %s: %w", key, err)
			}
		}
		all = append(all, items...)
		path = ""
		if b, ok := page["next"]; ok {
			_ = json.Unmarshal(b, &path)
		}
	}
	if max > 0 && len(all) > max {
		all = all[:max]
	}
	return all, nil
}

// list fetches every page of a list and decodes the items into out (a
// pointer to a slice); it returns the whole list as one JSON document
// {key: [...]} for -o json.
func (v *verb) list(ctx context.Context, cl *client, path, key string, out any) ([]byte, error) {
	items, err := cl.listAll(ctx, path, key)
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(map[string]any{key: items})
	if err != nil {
		return nil, err
	}
	b, _ := json.Marshal(items)
	if err := json.Unmarshal(b, out); err != nil {
		return nil, fmt.Errorf("decode %s: %w", key, err)
	}
	return raw, nil
}

// completeNames completes a verb's first argument with the names of a
// resource, asking the API (shell completion).
func completeNames(n noun) func(v *verb) cobra.CompletionFunc {
	return func(v *verb) cobra.CompletionFunc {
		return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
			if len(args) > 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			if err := applyEnv(cmd.Flags(), v.env); err != nil {
				return nil, cobra.ShellCompDirectiveError
			}
			cl, err := v.connect()
			if err != nil {
				return nil, cobra.ShellCompDirectiveError
			}
			items, err := cl.listAll(cmd.Context(), v.path("/"+n.plural), n.plural)
			if err != nil {
				return nil, cobra.ShellCompDirectiveError
			}
			out := []string{}
			for _, raw := range items {
				var m map[string]any
				if json.Unmarshal(raw, &m) != nil {
					continue
				}
				for _, f := range n.names {
					if s, _ := m[f].(string); s != "" && strings.HasPrefix(s, toComplete) {
						out = append(out, s)
						break
					}
				}
			}
			return out, cobra.ShellCompDirectiveNoFileComp
		}
	}
}

// one is the usual Args of a verb acting on one thing: what names it.
func one(what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 {
			return &usageError{msg: fmt.Sprintf("%s: give exactly one %s", strings.TrimPrefix(cmd.CommandPath(), "devpilot "), what),
				hint: fmt.Sprintf("Run '%s --help' for usage.", cmd.CommandPath())}
		}
		return nil
	}
}
