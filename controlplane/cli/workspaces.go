package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
)

func workspacesCmd(env Env) *cobra.Command {
	create := verbCmd(env, &cobra.Command{Use: "create SLUG [--name NAME]", Short: "create a workspace (owner token)", Args: one("slug"),
		Example: "  devpilot workspaces create staging --name 'Staging'"}, verbFlags{json: true}, func(v *verb) runFn {
		name := v.fs.String("name", "", "display name (default: the slug)")
		return func(ctx context.Context, args []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			raw, err := cl.do(ctx, "POST", "/v1/workspaces", map[string]string{"slug": args[0], "name": *name}, nil)
			if err != nil {
				return err
			}
			return v.print(raw, func() { fmt.Fprintf(env.Stdout, "Created workspace %s.\n", args[0]) })
		}
	})
	list := verbCmd(env, &cobra.Command{Use: "list", Short: "list workspaces", Args: cobra.NoArgs}, verbFlags{json: true}, func(v *verb) runFn {
		return func(ctx context.Context, _ []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			var all []struct {
				Slug, Name string
				CreatedAt  time.Time `json:"created_at"`
			}
			raw, err := v.list(ctx, cl, "/v1/workspaces", "workspaces", &all)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				rows := [][]string{}
				for _, w := range all {
					rows = append(rows, []string{w.Slug, w.Name, ts(&w.CreatedAt)})
				}
				v.out.table([]string{"SLUG", "NAME", "CREATED"}, rows)
			})
		}
	})
	return group("workspaces", "create and list workspaces", "  devpilot workspaces list", create, list)
}
