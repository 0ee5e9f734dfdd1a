package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"
)

func auditCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "audit [--limit N]", Short: "show the audit log: who changed what, when", Args: cobra.NoArgs,
		Example: "  devpilot audit --limit 20"}, apiVerb, func(v *verb) runFn {
		limit := v.fs.Int("limit", 50, "how many entries, newest first")
		return func(ctx context.Context, _ []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			items, err := cl.listN(ctx, v.path("/audit?limit="+strconv.Itoa(*limit)), "entries", *limit)
			if err != nil {
				return err
			}
			raw, _ := json.Marshal(map[string]any{"entries": items})
			var entries []struct {
				ID     int64          `json:"id"`
				Actor  string         `json:"actor"`
				Action string         `json:"action"`
				Target string         `json:"target"`
				Detail map[string]any `json:"detail"`
				At     time.Time      `json:"at"`
			}
			b, _ := json.Marshal(items)
			if err := json.Unmarshal(b, &entries); err != nil {
				return fmt.Errorf("decode audit: %w", err)
			}
			return v.print(raw, func() {
				rows := [][]string{}
				for _, e := range entries {
					detail := ""
					for _, k := range sortedKeys(e.Detail) {
						detail += fmt.Sprintf("%s=%v ", k, e.Detail[k])
					}
					rows = append(rows, []string{ts(&e.At), e.Actor, e.Action, e.Target, detail})
				}
				v.out.table([]string{"WHEN", "WHO", "ACTION", "TARGET", "DETAIL"}, rows)
			})
		}
	})
}
