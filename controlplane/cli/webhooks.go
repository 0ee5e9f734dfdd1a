package cli

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// webhooksCmd is `devpilot webhooks …`. Webhooks have no names: verbs take
// the id (wh_…) that create and list print.
func webhooksCmd(env Env) *cobra.Command {
	return group("webhooks", "deliver events to HTTP receivers, signed (Standard Webhooks)",
		"  devpilot webhooks create https://hooks.example.com/devpilot --events 'server.*'\n  devpilot webhooks deliveries wh_abc",
		webhookCreateCmd(env), webhookListCmd(env), webhookGetCmd(env), webhookUpdateCmd(env), webhookDeleteCmd(env), webhookDeliveriesCmd(env), webhookRedeliverCmd(env), webhookPingCmd(env))
}

func whPath(v *verb, id, rest string) string { return v.path("/webhooks/" + url.PathEscape(id) + rest) }

func showWebhook(env Env, v *verb, raw []byte, w apitypes.Webhook) error {
	return v.print(raw, func() {
		state := "enabled"
		if !w.Enabled {
			state = "disabled: " + w.DisabledReason
		}
		fmt.Fprintf(env.Stdout, "%s  %s\n  events: %s  format: %s  %s\n", w.ID, w.URL, strings.Join(w.Events, ","), w.Format, state)
		if w.FailingSince != nil {
			fmt.Fprintf(env.Stdout, "  failing since %s\n", ts(w.FailingSince))
		}
	})
}

// webhookSecretFlags: a secret comes from a file, the environment or
// stdin, never from an argument; none given returns "".
func webhookSecretFlags(env Env, v *verb) func() (string, error) {
	file := v.fs.String("secret-file", "", "file holding the signing secret (whsec_…)")
	stdin := v.fs.Bool("secret-stdin", false, "read the signing secret from stdin")
	return func() (string, error) {
		if *file == "" && !*stdin && env.Getenv("DEVPILOT_WEBHOOK_SECRET") == "" {
			return "", nil
		}
		return readSecret(env, *file, "DEVPILOT_WEBHOOK_SECRET", "webhook secret")
	}
}

func webhookCreateCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "create URL [--events P,…] [--payload raw|slack]",
		Short: "subscribe a URL to events (the signing secret is printed once, on stdout)", Args: one("receiver URL"),
		Example: "  devpilot webhooks create https://hooks.example.com/devpilot --events 'server.*,task.failed'\n" +
			"  devpilot webhooks create https://hooks.slack.com/services/… --payload slack --events alert.firing\n" +
			"  devpilot webhooks create https://h.example.com/x --secret-file whsec.txt"},
		apiVerb, func(v *verb) runFn {
			evs := v.fs.String("events", "*", `comma-separated patterns: "*", a family such as "server.*", or types`)
			format := v.fs.String("payload", "raw", "payload format: raw (the event JSON) or slack (Slack/Mattermost incoming webhook)")
			desc := v.fs.String("description", "", "a note for people")
			secret := webhookSecretFlags(env, v)
			return func(ctx context.Context, args []string) error {
				sec, err := secret()
				if err != nil {
					return err
				}
				cl, err := v.connect()
				if err != nil {
					return err
				}
				var w apitypes.CreatedWebhook
				raw, err := cl.do(ctx, "POST", v.path("/webhooks"), apitypes.CreateWebhook{URL: args[0], Events: splitList(*evs),
					Format: *format, Description: *desc, Secret: sec}, &w)
				if err != nil {
					return err
				}
				return v.print(raw, func() {
					fmt.Fprintf(env.Stderr, "Created webhook %s for %s. Its signing secret is shown only now:\n", w.ID, w.URL)
					fmt.Fprintln(env.Stdout, w.Secret)
				})
			}
		})
}

func webhookListCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "list", Short: "list webhooks", Args: cobra.NoArgs}, apiVerb, func(v *verb) runFn {
		return func(ctx context.Context, _ []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			var all []apitypes.Webhook
			raw, err := v.list(ctx, cl, v.path("/webhooks"), "webhooks", &all)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				rows := [][]string{}
				for _, w := range all {
					state := "enabled"
					if !w.Enabled {
						state = "disabled"
					} else if w.FailingSince != nil {
						state = "failing since " + ts(w.FailingSince)
					}
					rows = append(rows, []string{w.ID, w.URL, strings.Join(w.Events, ","), w.Format, state})
				}
				v.out.table([]string{"ID", "URL", "EVENTS", "FORMAT", "STATE"}, rows)
			})
		}
	})
}

func webhookGetCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "get ID", Short: "show one webhook", Args: one("webhook id"),
		Example: "  devpilot webhooks get wh_abc"}, apiVerb, func(v *verb) runFn {
		return func(ctx context.Context, args []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			var w apitypes.Webhook
			raw, err := cl.do(ctx, "GET", whPath(v, args[0], ""), nil, &w)
			if err != nil {
				return err
			}
			return showWebhook(env, v, raw, w)
		}
	})
}

func webhookUpdateCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "update ID [--endpoint URL] [--events P,…] [--payload F] [--enable|--disable]",
		Short: "change a webhook (flags left out keep their value)", Args: one("webhook id"),
		Example: "  devpilot webhooks update wh_abc --enable\n  devpilot webhooks update wh_abc --events '*' --secret-file new.txt"},
		apiVerb, func(v *verb) runFn {
			u := v.fs.String("endpoint", "", "a new receiver URL")
			evs := v.fs.String("events", "", "new comma-separated patterns")
			format := v.fs.String("payload", "", "payload format: raw or slack")
			desc := v.fs.String("description", "", "a new note")
			enable := v.fs.Bool("enable", false, "enable (clears the failure clock)")
			disable := v.fs.Bool("disable", false, "disable")
			secret := webhookSecretFlags(env, v)
			return func(ctx context.Context, args []string) error {
				var req apitypes.UpdateWebhook
				set := func(name string, p *string) *string {
					if v.fs.Changed(name) {
						return p
					}
					return nil
				}
				req.URL, req.Format, req.Description = set("endpoint", u), set("payload", format), set("description", desc)
				if v.fs.Changed("events") {
					req.Events = splitList(*evs)
				}
				if *enable && *disable {
					return usagef("--enable and --disable exclude each other")
				}
				if *enable || *disable {
					on := *enable
					req.Enabled = &on
				}
				var err error
				if req.Secret, err = secret(); err != nil {
					return err
				}
				cl, err := v.connect()
				if err != nil {
					return err
				}
				var w apitypes.Webhook
				raw, err := cl.do(ctx, "PATCH", whPath(v, args[0], ""), req, &w)
				if err != nil {
					return err
				}
				return showWebhook(env, v, raw, w)
			}
		})
}

func webhookDeleteCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "delete ID [--force]", Short: "remove a webhook and its delivery log", Args: one("webhook id"),
		Example: "  devpilot webhooks delete wh_abc --force"}, apiVerb, func(v *verb) runFn {
		force := v.fs.Bool("force", false, "don't ask for confirmation")
		return func(ctx context.Context, args []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			if err := confirm(env, *force, fmt.Sprintf("Delete webhook %s and its delivery log?", args[0])); err != nil {
				return err
			}
			if _, err := cl.do(ctx, "DELETE", whPath(v, args[0], ""), nil, nil); err != nil {
				return err
			}
			return v.printValue(map[string]any{"id": args[0], "deleted": true}, func() { fmt.Fprintf(env.Stdout, "Deleted webhook %s.\n", args[0]) })
		}
	})
}

func webhookDeliveriesCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "deliveries ID", Short: "show a webhook's delivery log, newest first", Args: one("webhook id"),
		Example: "  devpilot webhooks deliveries wh_abc\n  devpilot webhooks deliveries wh_abc -o json"}, apiVerb, func(v *verb) runFn {
		return func(ctx context.Context, args []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			var all []apitypes.WebhookDelivery
			raw, err := v.list(ctx, cl, whPath(v, args[0], "/deliveries"), "deliveries", &all)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				rows := [][]string{}
				for _, d := range all {
					code := "-"
					if d.ResponseCode != 0 {
						code = strconv.Itoa(d.ResponseCode)
					}
					rows = append(rows, []string{d.ID, d.EventType, d.Status, strconv.Itoa(d.Attempts), code,
						strconv.FormatInt(d.LatencyMS, 10) + "ms", ts(d.NextAttemptAt), d.Error})
				}
				v.out.table([]string{"ID", "EVENT", "STATUS", "ATTEMPTS", "CODE", "LATENCY", "NEXT ATTEMPT", "ERROR"}, rows)
			})
		}
	})
}

func webhookRedeliverCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "redeliver ID DELIVERY", Short: "send a delivery again now (same webhook-id)",
		Args: cobra.ExactArgs(2), Example: "  devpilot webhooks redeliver wh_abc dl_xyz"}, apiVerb, func(v *verb) runFn {
		return func(ctx context.Context, args []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			var d apitypes.WebhookDelivery
			raw, err := cl.do(ctx, "POST", whPath(v, args[0], "/deliveries/"+url.PathEscape(args[1])+"/redeliver"), nil, &d)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				fmt.Fprintf(env.Stdout, "Delivery %s queued again; see devpilot webhooks deliveries %s.\n", d.ID, args[0])
			})
		}
	})
}

func webhookPingCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "ping ID", Short: "send a test message (webhook.ping)", Args: one("webhook id"),
		Example: "  devpilot webhooks ping wh_abc && devpilot webhooks deliveries wh_abc"}, apiVerb, func(v *verb) runFn {
		return func(ctx context.Context, args []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			var d apitypes.WebhookDelivery
			raw, err := cl.do(ctx, "POST", whPath(v, args[0], "/ping"), nil, &d)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				fmt.Fprintf(env.Stdout, "Ping %s queued; see devpilot webhooks deliveries %s.\n", d.ID, args[0])
			})
		}
	})
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
