package cli

import (
	"context"
	"fmt"
	"net/url"

	"github.com/spf13/cobra"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/app"
)

func tokensCmd(env Env) *cobra.Command {
	create := verbCmd(env, &cobra.Command{Use: "create [--role admin|viewer] [--name N]", Short: "create an API token (printed once, on stdout)", Args: cobra.NoArgs,
		Example: "  devpilot tokens create --role admin --name ci > ci.token\n  devpilot tokens create --role admin --name laptop | devpilot login --url https://cp:8443"},
		verbFlags{json: true, workspace: "workspace the token acts in"}, func(v *verb) runFn {
			role := v.fs.String("role", "viewer", "admin (read and change) or viewer (read only)")
			name := v.fs.String("name", "", "who or what will use the token")
			_ = v.cmd.RegisterFlagCompletionFunc("role", cobra.FixedCompletions([]string{"admin", "viewer"}, cobra.ShellCompDirectiveNoFileComp))
			return func(ctx context.Context, _ []string) error {
				cl, err := v.connect()
				if err != nil {
					return err
				}
				if *name == "" {
					*name = *role + " token"
				}
				var t apitypes.CreatedToken
				raw, err := cl.do(ctx, "POST", v.path("/tokens"), map[string]string{"name": *name, "role": *role}, &t)
				if err != nil {
					return err
				}
				return v.print(raw, func() {
					fmt.Fprintf(env.Stderr, "Created %s token %s in workspace %s. It is shown only now:\n", t.Role, t.ID, t.Workspace)
					fmt.Fprintln(env.Stdout, t.Secret)
				})
			}
		})
	list := verbCmd(env, &cobra.Command{Use: "list", Short: "list API tokens", Args: cobra.NoArgs}, apiVerb, func(v *verb) runFn {
		return func(ctx context.Context, _ []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			var all []apitypes.Token
			raw, err := v.list(ctx, cl, v.path("/tokens"), "tokens", &all)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				rows := [][]string{}
				for _, t := range all {
					state := "active"
					if t.RevokedAt != nil {
						state = "revoked " + ts(t.RevokedAt)
					}
					rows = append(rows, []string{t.ID, t.Name, t.Role, ts(&t.CreatedAt), ts(t.LastUsedAt), state})
				}
				v.out.table([]string{"ID", "NAME", "ROLE", "CREATED", "LAST USED", "STATE"}, rows)
			})
		}
	})
	revoke := verbCmd(env, &cobra.Command{Use: "revoke NAME|ID [--force]", Short: "revoke an API token (it stops working at once)", Args: one("token name or id"),
		Example: "  devpilot tokens revoke ci --force"}, apiVerb, func(v *verb) runFn {
		force := v.fs.Bool("force", false, "don't ask for confirmation")
		v.cmd.ValidArgsFunction = completeNames(tokenNoun)(v)
		return func(ctx context.Context, args []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			id, err := v.resolve(ctx, cl, tokenNoun, args[0])
			if err != nil {
				return err
			}
			if err := confirm(env, *force, fmt.Sprintf("Revoke token %s? Whatever uses it is refused from now on.", id)); err != nil {
				return err
			}
			if _, err := cl.do(ctx, "DELETE", v.path("/tokens/"+url.PathEscape(id)), nil, nil); err != nil {
				return err
			}
			return v.printValue(map[string]any{"id": id, "revoked": true}, func() { fmt.Fprintf(env.Stdout, "Revoked token %s.\n", id) })
		}
	})
	recoverCmd := verbCmd(env, &cobra.Command{Use: "recover --data-dir D [--database URL]", Short: "on the control plane's machine: write a new owner token into the data dir",
		Long: `recover needs no API and no token: it opens the control plane's database
(the data dir's SQLite, or --database) and writes a new owner token to
D/owner.token (mode 0600). It works at once beside a running control plane.
The token itself is never printed (-o json: its id and the file).`,
		Args: noArgs, Example: "  sudo devpilot tokens recover --data-dir /var/lib/devpilot"}, verbFlags{json: true, local: true}, func(v *verb) runFn {
		dataDir := v.fs.String("data-dir", "devpilot-data", "the data directory of devpilot serve")
		database := v.fs.String("database", "", "the --database of devpilot serve (empty: SQLite in the data dir; a password goes in DEVPILOT_DATABASE)")
		return func(ctx context.Context, _ []string) error {
			if err := passwordInArgs(v.fs, "database"); err != nil {
				return err
			}
			rec, err := app.RecoverOwnerToken(ctx, *dataDir, *database)
			if err != nil {
				return err
			}
			out := map[string]any{"token_id": rec.TokenID, "file": rec.File, "live_owner_tokens": rec.LiveOwner}
			return v.printValue(out, func() {
				fmt.Fprintf(env.Stdout, "New owner token %s written to %s (mode 0600); it works at once, no restart needed.\n", rec.TokenID, rec.File)
				if rec.LiveOwner > 1 {
					fmt.Fprintf(env.Stdout, "%d owner tokens are live; revoke the ones nobody should hold with devpilot tokens revoke ID (devpilot tokens list shows them).\n", rec.LiveOwner)
				}
			})
		}
	})
	return group("tokens", "create, list and revoke API tokens; recover an owner token on the machine",
		"  devpilot tokens create --role viewer --name dashboard\n  devpilot tokens revoke dashboard", create, list, revoke, recoverCmd)
}
