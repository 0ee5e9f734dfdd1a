package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

func keysCmd(env Env) *cobra.Command {
	rotate := verbCmd(env, &cobra.Command{Use: "rotate", Short: "re-encrypt every secret under a new master key, while serving", Args: cobra.NoArgs},
		verbFlags{json: true}, func(v *verb) runFn {
			return func(ctx context.Context, _ []string) error {
				cl, err := v.connect()
				if err != nil {
					return err
				}
				var res apitypes.KeyRotation
				raw, err := cl.do(ctx, "POST", "/v1/keys/rotate", nil, &res)
				if err != nil {
					return err
				}
				return v.print(raw, func() {
					fmt.Fprintf(env.Stdout, "New master key %s is active; %d secrets re-encrypted; retired keys: %v.\n", res.KeyID, res.Reencrypted, res.Retired)
					if len(res.Skipped) == 0 {
						return
					}
					fmt.Fprintf(env.Stdout, "%d stored secrets do not decrypt and were left as they are (their keys %v are kept):\n", len(res.Skipped), res.Kept)
					for _, s := range res.Skipped {
						fmt.Fprintf(env.Stdout, "  %s %s: %s (key %s)\n", s.Table, s.ID, s.Reason, s.KeyID)
					}
					fmt.Fprintln(env.Stdout, "Restore those rows from a backup, or delete them (and enter the secret again), then rotate again.")
				})
			}
		})
	return group("keys", "rotate the master key that encrypts secrets at rest", "  devpilot keys rotate", rotate)
}
