package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

func alertsCmd(env Env) *cobra.Command {
	list := verbCmd(env, &cobra.Command{Use: "list [--state firing|pending|resolved|all]", Short: "list alerts (firing ones unless --state says otherwise)",
		Args: cobra.NoArgs, Example: "  devpilot alerts list\n  devpilot alerts list --state all -o json"}, apiVerb, func(v *verb) runFn {
		state := v.fs.String("state", "firing", "firing, pending, resolved or all")
		_ = v.cmd.RegisterFlagCompletionFunc("state", cobra.FixedCompletions([]string{"firing", "pending", "resolved", "all"}, cobra.ShellCompDirectiveNoFileComp))
		return func(ctx context.Context, _ []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			var all []apitypes.Alert
			raw, err := v.list(ctx, cl, v.path("/alerts?state="+url.QueryEscape(*state)), "alerts", &all)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				rows := [][]string{}
				for _, a := range all {
					rows = append(rows, []string{a.State, a.RuleName, a.ServerName, fmt.Sprintf("%.0f", a.Value), ts(&a.Since), a.Message})
				}
				v.out.table([]string{"STATE", "RULE", "SERVER", "VALUE", "SINCE", "MESSAGE"}, rows)
			})
		}
	})
	return group("alerts", "list firing alerts; manage alert rules (alerts rules …)",
		"  devpilot alerts list\n  devpilot alerts rules create --name web-down --kind offline --for 2m", list, alertRulesCmd(env))
}

func alertRulesCmd(env Env) *cobra.Command {
	create := verbCmd(env, &cobra.Command{Use: "create --name N --kind offline|cpu|memory|disk --for D [--threshold PCT] [--tag T]",
		Short: "create an alert rule", Args: cobra.NoArgs,
		Example: "  devpilot alerts rules create --name web-down --kind offline --for 2m\n" +
			"  devpilot alerts rules create --name disk-full --kind disk --threshold 90 --for 10m --tag devpilot-ws-default"},
		apiVerb, func(v *verb) runFn {
			name := v.fs.String("name", "", "the rule's name (unique in the workspace)")
			kind := v.fs.String("kind", "", "offline, cpu, memory or disk")
			forD := v.fs.Duration("for", 0, "how long the condition must hold before the alert fires, e.g. 5m")
			threshold := v.fs.Float64("threshold", 0, "cpu, memory, disk: the percent at or above which the condition holds")
			tag := v.fs.String("tag", "", "only servers carrying this tag (default: every server)")
			_ = v.cmd.RegisterFlagCompletionFunc("kind", cobra.FixedCompletions([]string{"offline", "cpu", "memory", "disk"}, cobra.ShellCompDirectiveNoFileComp))
			return func(ctx context.Context, _ []string) error {
				cl, err := v.connect()
				if err != nil {
					return err
				}
				req := apitypes.CreateAlertRule{Name: *name, Kind: *kind, ForS: int(forD.Seconds()), Tag: *tag}
				if v.fs.Changed("threshold") {
					req.ThresholdPercent = threshold
				}
				var r apitypes.AlertRule
				raw, err := cl.do(ctx, "POST", v.path("/alert-rules"), req, &r)
				if err != nil {
					return err
				}
				return v.print(raw, func() { fmt.Fprintf(env.Stdout, "Created alert rule %s (%s): %s.\n", r.Name, r.ID, ruleText(r)) })
			}
		})
	list := verbCmd(env, &cobra.Command{Use: "list", Short: "list alert rules", Args: cobra.NoArgs}, apiVerb, func(v *verb) runFn {
		return func(ctx context.Context, _ []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			var all []apitypes.AlertRule
			raw, err := v.list(ctx, cl, v.path("/alert-rules"), "alert_rules", &all)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				rows := [][]string{}
				for _, r := range all {
					rows = append(rows, []string{r.ID, r.Name, r.Kind, threshold(r), (time.Duration(r.ForS) * time.Second).String(), or(r.Tag, "(all)")})
				}
				v.out.table([]string{"ID", "NAME", "KIND", "THRESHOLD", "FOR", "TAG"}, rows)
			})
		}
	})
	get := verbCmd(env, &cobra.Command{Use: "get NAME|ID", Short: "show an alert rule", Args: one("rule name or id"),
		Example: "  devpilot alerts rules get web-down -o yaml"}, apiVerb, func(v *verb) runFn {
		return func(ctx context.Context, args []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			id, err := resolveRule(ctx, v, cl, args[0])
			if err != nil {
				return err
			}
			var r apitypes.AlertRule
			raw, err := cl.do(ctx, "GET", v.path("/alert-rules/"+url.PathEscape(id)), nil, &r)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				v.out.table([]string{"ID", "NAME", "KIND", "THRESHOLD", "FOR", "TAG", "CREATED"},
					[][]string{{r.ID, r.Name, r.Kind, threshold(r), (time.Duration(r.ForS) * time.Second).String(), or(r.Tag, "(all)"), ts(&r.CreatedAt)}})
			})
		}
	})
	update, del := alertRuleUpdateCmd(env), alertRuleDeleteCmd(env)
	return group("rules", "create, list, show, change and delete alert rules",
		"  devpilot alerts rules create --name cpu-hot --kind cpu --threshold 90 --for 5m\n  devpilot alerts rules list",
		create, list, get, update, del)
}

// resolveRule turns a rule's name or id into its id.
func resolveRule(ctx context.Context, v *verb, cl *client, arg string) (string, error) {
	if idPattern.MatchString(arg) {
		return arg, nil
	}
	items, err := cl.listAll(ctx, v.path("/alert-rules?name="+url.QueryEscape(arg)), "alert_rules")
	if err != nil {
		return "", err
	}
	for _, raw := range items {
		var r apitypes.AlertRule
		if json.Unmarshal(raw, &r) == nil && r.Name == arg {
			return r.ID, nil
		}
	}
	return "", &APIError{Status: 404, Code: "not_found", Message: fmt.Sprintf("no alert rule named or with id %q in workspace %s", arg, *v.ws),
		Hint: "`devpilot alerts rules list` shows their names and ids"}
}

func threshold(r apitypes.AlertRule) string {
	if r.ThresholdPercent == nil {
		return "-"
	}
	return strconv.FormatFloat(*r.ThresholdPercent, 'f', -1, 64) + "%"
}

func ruleText(r apitypes.AlertRule) string {
	d := (time.Duration(r.ForS) * time.Second).String()
	on := "every server"
	if r.Tag != "" {
		on = "servers tagged " + r.Tag
	}
	if r.Kind == "offline" {
		return fmt.Sprintf("offline for %s on %s", d, on)
	}
	return fmt.Sprintf("%s ≥ %s for %s on %s", r.Kind, threshold(r), d, on)
}

func or(s, dflt string) string {
	if s == "" {
		return dflt
	}
	return s
}

func alertRuleUpdateCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "update NAME|ID [--name N] [--for D] [--threshold PCT] [--tag T]",
		Short: "change an alert rule (the flags given)", Args: one("rule name or id"),
		Example: "  devpilot alerts rules update disk-full --threshold 95 --for 15m"}, apiVerb, func(v *verb) runFn {
		name := v.fs.String("name", "", "a new name")
		forD := v.fs.Duration("for", 0, "how long the condition must hold")
		thr := v.fs.Float64("threshold", 0, "cpu, memory, disk: the percent")
		tag := v.fs.String("tag", "", `only servers carrying this tag ("" for every server)`)
		return func(ctx context.Context, args []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			id, err := resolveRule(ctx, v, cl, args[0])
			if err != nil {
				return err
			}
			var req apitypes.UpdateAlertRule
			if v.fs.Changed("name") {
				req.Name = name
			}
			if v.fs.Changed("for") {
				s := int(forD.Seconds())
				req.ForS = &s
			}
			if v.fs.Changed("threshold") {
				req.ThresholdPercent = thr
			}
			if v.fs.Changed("tag") {
				req.Tag = tag
			}
			var r apitypes.AlertRule
			raw, err := cl.do(ctx, "PATCH", v.path("/alert-rules/"+url.PathEscape(id)), req, &r)
			if err != nil {
				return err
			}
			return v.print(raw, func() { fmt.Fprintf(env.Stdout, "Updated alert rule %s (%s): %s.\n", r.Name, r.ID, ruleText(r)) })
		}
	})
}

func alertRuleDeleteCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "delete NAME|ID [--force]", Short: "delete an alert rule (its firing alerts resolve)", Args: one("rule name or id"),
		Example: "  devpilot alerts rules delete web-down --force"}, apiVerb, func(v *verb) runFn {
		force := v.fs.Bool("force", false, "don't ask for confirmation")
		return func(ctx context.Context, args []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			id, err := resolveRule(ctx, v, cl, args[0])
			if err != nil {
				return err
			}
			if err := confirm(env, *force, fmt.Sprintf("Delete alert rule %s? Its firing alerts resolve.", id)); err != nil {
				return err
			}
			if _, err := cl.do(ctx, "DELETE", v.path("/alert-rules/"+url.PathEscape(id)), nil, nil); err != nil {
				return err
			}
			return v.printValue(map[string]any{"id": id, "deleted": true}, func() { fmt.Fprintf(env.Stdout, "Deleted alert rule %s.\n", id) })
		}
	})
}
