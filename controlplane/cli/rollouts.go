package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// agentRolloutVerbs are the rollout verbs of `devpilot agents` (issue 13):
// rollout, rollouts list, status, pause, resume, abort.
func agentRolloutVerbs(env Env) []*cobra.Command {
	return []*cobra.Command{
		rolloutCreateCmd(env),
		group("rollouts", "list the workspace's agent rollouts", "  devpilot agents rollouts list", rolloutListCmd(env)),
		rolloutStatusCmd(env),
		rolloutVerbCmd(env, "pause", "start no more updates (those under way finish; canaries stay watched)"),
		rolloutVerbCmd(env, "resume", "go on with a paused rollout where it was"),
		rolloutVerbCmd(env, "abort", "end a rollout: no more updates start, untouched servers are skipped"),
	}
}

func rolloutCreateCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{
		Use:   "rollout --version V [--tag T | --servers a,b] [--canary N|N%] [--max-parallel N] [--health-window D] [--wait]",
		Short: "roll an agent version out over the workspace's servers, canaries first",
		Long: `rollout updates the agents of the selected servers (every server of the
workspace without --tag or --servers) to an agent release. The canaries
update first; only when each has reconnected on the new version and stayed
healthy (online, no new agent error) for the health window do the rest
update, --max-parallel at a time. The first failure stops the rollout: its
reason names the server, and the servers not yet touched stay as they were.
A server whose new agent does not come up rolls itself back.

With --wait it shows each server's progress until the rollout ends, and
exits 1 unless it succeeded.`,
		Example: `  devpilot agents rollout --version 1.4.0 --canary 2 --max-parallel 3 --health-window 60s --wait
  devpilot agents rollout --version 1.4.0 --servers web-1,web-2 --canary 1
  devpilot agents rollout --version 1.4.0 --canary 10%`,
		Args: cobra.NoArgs,
	}, apiVerb, func(v *verb) runFn {
		version := v.fs.String("version", "", "the agent release to install (required; devpilot agents releases list)")
		tag := v.fs.String("tag", "", "only servers carrying this tag (devpilot-ws-<slug>, devpilot-srv-<id>)")
		servers := v.fs.StringSlice("servers", nil, "only these servers (names or ids, comma-separated)")
		canary := v.fs.String("canary", "1", "how many servers update first: a number, or a percentage such as 10%")
		parallel := v.fs.Int("max-parallel", 1, "how many of the rest update at once (1-100)")
		window := v.fs.Duration("health-window", 60*time.Second, "how long each canary must stay healthy on the new version")
		wait := v.fs.Bool("wait", false, "show progress until the rollout ends")
		return func(ctx context.Context, _ []string) error {
			if *version == "" {
				return usagef("agents rollout: --version is required")
			}
			if *tag != "" && len(*servers) > 0 {
				return usagef("agents rollout: give --tag or --servers, not both")
			}
			c, err := apitypes.ParseCanary(*canary)
			if err != nil {
				return usagef("--canary %q: %v", *canary, err)
			}
			if *window < 0 || *window%time.Second != 0 {
				return usagef("--health-window %s: use whole seconds, e.g. 60s or 5m", *window)
			}
			secs := int(*window / time.Second)
			req := apitypes.CreateRollout{Version: *version, Servers: *servers, Tag: *tag, Canary: c, MaxParallel: *parallel,
				HealthWindowS: &secs}
			cl, err := v.connect()
			if err != nil {
				return err
			}
			var r apitypes.Rollout
			raw, err := cl.do(ctx, "POST", v.path("/agent-rollouts"), req, &r)
			if err != nil {
				return err
			}
			if !*wait {
				return v.print(raw, func() {
					fmt.Fprintf(v.out.w, "Rollout %s of %s: %d servers, %d canaries (%s).\n  follow it: %s\n",
						r.ID, r.Version, len(r.Targets), r.CanaryCount, r.State, v.again("agents status "+r.ID))
				})
			}
			return watchRollout(ctx, v, cl, &r)
		}
	})
}

// watchRollout prints each target's changes until the rollout ends.
func watchRollout(ctx context.Context, v *verb, cl *client, r *apitypes.Rollout) error {
	w := v.progress().w
	fmt.Fprintf(w, "Rollout %s of %s: %d servers, %d canaries, %d at a time after them, %ds health window.\n",
		r.ID, r.Version, len(r.Targets), r.CanaryCount, r.MaxParallel, r.HealthWindowS)
	seen := map[string]string{}
	state := ""
	for {
		var cur apitypes.Rollout
		raw, err := cl.do(ctx, "GET", v.path("/agent-rollouts/"+url.PathEscape(r.ID)), nil, &cur)
		if err != nil {
			return err
		}
		if cur.State != state {
			state = cur.State
			fmt.Fprintf(w, "[%s]\n", cur.State)
		}
		for _, t := range cur.Targets {
			key := t.State
			if t.State == apitypes.TargetUpdating && t.UpdatedAt != nil {
				key = "watching"
			}
			if seen[t.ServerID] == key {
				continue
			}
			seen[t.ServerID] = key
			fmt.Fprintln(w, targetLine(t, cur.HealthWindowS))
		}
		switch cur.State {
		case apitypes.RolloutSucceeded, apitypes.RolloutFailed, apitypes.RolloutAborted:
			if v.json() {
				if err := v.out.raw(raw); err != nil {
					return err
				}
			}
			if cur.State == apitypes.RolloutSucceeded {
				fmt.Fprintf(w, "Rollout %s succeeded: %d servers on %s.\n", cur.ID, cur.Counts[apitypes.TargetHealthy], cur.Version)
				return nil
			}
			return &APIError{Code: "rollout_" + cur.State, Message: "rollout " + cur.ID + " " + cur.State + ": " + cur.Reason,
				Hint: "See every server's state: " + v.again("agents status "+cur.ID)}
		}
		select {
		case <-ctx.Done():
			fmt.Fprintf(v.env.Stderr, "\nStopped watching: rollout %s goes on.\n  follow it: %s\n  stop it:   %s\n",
				r.ID, v.again("agents status "+r.ID), v.again("agents abort "+r.ID))
			return &exitError{code: ExitInterrupted}
		case <-time.After(time.Second):
		}
	}
}

func targetLine(t apitypes.RolloutTarget, window int) string {
	name := orDash(t.ServerName)
	if name == "-" {
		name = t.ServerID
	}
	switch {
	case t.State == apitypes.TargetUpdating && t.UpdatedAt != nil:
		return fmt.Sprintf("  … %-20s %-6s on the new version, watched for %ds", name, t.Wave, window)
	case t.State == apitypes.TargetUpdating:
		return fmt.Sprintf("  … %-20s %-6s updating (%s)", name, t.Wave, t.ActionID)
	case t.State == apitypes.TargetHealthy:
		return fmt.Sprintf("  ✓ %-20s %-6s updated from %s", name, t.Wave, orDash(t.FromVersion))
	case t.State == apitypes.TargetFailed:
		return fmt.Sprintf("  ✗ %-20s %-6s failed: %s", name, t.Wave, t.Reason)
	case t.State == apitypes.TargetSkipped:
		return fmt.Sprintf("  - %-20s %-6s %s", name, t.Wave, t.Reason)
	}
	return fmt.Sprintf("    %-20s %-6s %s", name, t.Wave, t.State)
}

func rolloutListCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "list", Short: "list agent rollouts, newest first", Args: cobra.NoArgs,
		Example: "  devpilot agents rollouts list\n  devpilot agents rollouts list -o json"}, apiVerb, func(v *verb) runFn {
		limit := v.fs.Int("limit", 50, "at most this many (newest first)")
		return func(ctx context.Context, _ []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			items, err := cl.listN(ctx, v.path("/agent-rollouts?limit="+strconv.Itoa(*limit)), "rollouts", *limit)
			if err != nil {
				return err
			}
			var all []apitypes.Rollout
			b, _ := json.Marshal(items)
			if err := json.Unmarshal(b, &all); err != nil {
				return fmt.Errorf("decode rollouts: %w", err)
			}
			return v.printValue(map[string]any{"rollouts": items}, func() {
				rows := [][]string{}
				for _, r := range all {
					rows = append(rows, []string{r.ID, r.Version, v.out.paint(r.State), countsLine(r.Counts), ts(&r.CreatedAt), orDash(r.Reason)})
				}
				v.out.table([]string{"ID", "VERSION", "STATE", "SERVERS", "CREATED", "REASON"}, rows)
			})
		}
	})
}

// countsLine is "3 healthy, 1 updating, 6 pending" (states with none left out).
func countsLine(c map[string]int) string {
	var parts []string
	for _, st := range []string{apitypes.TargetHealthy, apitypes.TargetUpdating, apitypes.TargetPending, apitypes.TargetFailed, apitypes.TargetSkipped} {
		if c[st] > 0 {
			parts = append(parts, strconv.Itoa(c[st])+" "+st)
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

func rolloutStatusCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "status ROLLOUT-ID", Short: "show a rollout and every server's state in it", Args: one("rollout id"),
		Example: "  devpilot agents status rol_…"}, apiVerb, func(v *verb) runFn {
		return func(ctx context.Context, args []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			var r apitypes.Rollout
			raw, err := cl.do(ctx, "GET", v.path("/agent-rollouts/"+url.PathEscape(args[0])), nil, &r)
			if err != nil {
				return err
			}
			return v.print(raw, func() { showRollout(v.out, &r) })
		}
	})
}

func showRollout(o *output, r *apitypes.Rollout) {
	sel := "every server"
	switch {
	case len(r.Servers) > 0:
		sel = strings.Join(r.Servers, ", ")
	case r.Tag != "":
		sel = "tag " + r.Tag
	}
	kv := [][2]string{{"ID", r.ID}, {"Version", r.Version}, {"State", o.paint(r.State)}, {"Servers", sel + " (" + countsLine(r.Counts) + ")"},
		{"Canaries", fmt.Sprintf("%d (asked %s)", r.CanaryCount, r.Canary.String())}, {"Max parallel", strconv.Itoa(r.MaxParallel)},
		{"Health window", (time.Duration(r.HealthWindowS) * time.Second).String()}, {"Created", ts(&r.CreatedAt) + " by " + r.CreatedBy},
		{"Finished", ts(r.FinishedAt)}}
	if r.Reason != "" {
		kv = append(kv, [2]string{"Reason", r.Reason})
	}
	o.fields(kv)
	fmt.Fprintln(o.w, "\nServers:")
	rows := [][]string{}
	for _, t := range r.Targets {
		rows = append(rows, []string{orDash(t.ServerName), t.ServerID, t.Wave, o.paint(t.State), orDash(t.FromVersion), orDash(t.ActionID), orDash(t.Reason)})
	}
	o.table([]string{"NAME", "ID", "WAVE", "STATE", "FROM", "ACTION", "NOTE"}, rows)
}

func rolloutVerbCmd(env Env, name, short string) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: name + " ROLLOUT-ID", Short: short, Args: one("rollout id"),
		Example: "  devpilot agents " + name + " rol_…"}, apiVerb, func(v *verb) runFn {
		return func(ctx context.Context, args []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			var r apitypes.Rollout
			raw, err := cl.do(ctx, "POST", v.path("/agent-rollouts/"+url.PathEscape(args[0])+"/"+name), nil, &r)
			if err != nil {
				return err
			}
			return v.print(raw, func() { fmt.Fprintf(v.out.w, "Rollout %s is %s.\n", r.ID, r.State) })
		}
	})
}

// agentCol is a server's agent release for the AGENT column, marked when
// it is outside the workspace's rollout target: "1.3.0 (target 1.4.0)".
func agentCol(s *apitypes.Server) string {
	v, _, _ := strings.Cut(s.Agent.Version, " ")
	if v == "" {
		return "-"
	}
	if s.Agent.OutsideTarget {
		return v + " (target " + s.Agent.TargetVersion + ")"
	}
	return v
}
