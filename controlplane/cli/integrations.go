package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

func ts(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

func integrationsCmd(env Env) *cobra.Command {
	const what = "integration name or id"
	// onOne is a verb acting on one integration given by name or id.
	onOne := func(c *cobra.Command, setup func(v *verb) func(ctx context.Context, cl *client, id string) error) *cobra.Command {
		c.Args = one(what)
		return verbCmd(env, c, apiVerb, func(v *verb) runFn {
			c.ValidArgsFunction = completeNames(integrationNoun)(v)
			do := setup(v)
			return func(ctx context.Context, args []string) error {
				cl, err := v.connect()
				if err != nil {
					return err
				}
				id, err := v.resolve(ctx, cl, integrationNoun, args[0])
				if err != nil {
					return err
				}
				return do(ctx, cl, id)
			}
		})
	}

	connect := integrationConnectCmd(env)

	list := integrationListCmd(env)

	show := onOne(&cobra.Command{Use: "show NAME|ID", Short: "show one integration", Example: "  devpilot integrations show my-do"},
		func(v *verb) func(ctx context.Context, cl *client, id string) error {
			return func(ctx context.Context, cl *client, id string) error {
				return answerIntegration(ctx, v, cl, "GET", byID(v, id, ""), nil, "")
			}
		})
	test := onOne(&cobra.Command{Use: "test NAME|ID", Short: "check that the stored credentials still work", Example: "  devpilot integrations test my-do"},
		func(v *verb) func(ctx context.Context, cl *client, id string) error {
			return func(ctx context.Context, cl *client, id string) error {
				return answerIntegration(ctx, v, cl, "POST", byID(v, id, "/test"), nil, "Credentials work.")
			}
		})
	rotate := onOne(&cobra.Command{Use: "rotate NAME|ID", Short: "replace the secret key (validated before it replaces the old one)",
		Example: "  devpilot integrations rotate my-do < new.token"},
		func(v *verb) func(ctx context.Context, cl *client, id string) error {
			secretFile := v.fs.String("secret-file", "", "file holding the new secret key (else DEVPILOT_SECRET_KEY, else stdin)")
			return func(ctx context.Context, cl *client, id string) error {
				secret, err := readSecret(env, *secretFile, "DEVPILOT_SECRET_KEY", "new secret key")
				if err != nil {
					return err
				}
				return answerIntegration(ctx, v, cl, "PUT", byID(v, id, "/secret"), map[string]string{"secret_key": secret},
					"Secret rotated: the new key was validated and replaced the old one.")
			}
		})
	rename := onOne(&cobra.Command{Use: "rename NAME|ID --access-key NEW", Short: "give an integration a new name (access key label)",
		Example: "  devpilot integrations rename my-do --access-key prod-do"},
		func(v *verb) func(ctx context.Context, cl *client, id string) error {
			accessKey := v.fs.String("access-key", "", "the new name")
			return func(ctx context.Context, cl *client, id string) error {
				return answerIntegration(ctx, v, cl, "PATCH", byID(v, id, ""), map[string]string{"access_key": *accessKey}, "")
			}
		})
	remove := onOne(&cobra.Command{Use: "remove NAME|ID", Short: "delete an integration's credentials (nothing in the cloud is touched)",
		Example: "  devpilot integrations remove my-do --force"},
		func(v *verb) func(ctx context.Context, cl *client, id string) error {
			force := v.fs.Bool("force", false, "don't ask for confirmation")
			return func(ctx context.Context, cl *client, id string) error {
				var in apitypes.Integration
				raw, err := cl.do(ctx, "GET", byID(v, id, ""), nil, &in)
				if err != nil {
					return err
				}
				if err := confirm(env, *force, fmt.Sprintf("Remove integration %s (%s, %s) and delete its credentials?", in.AccessKey, in.ID, in.Provider)); err != nil {
					return err
				}
				if _, err := cl.do(ctx, "DELETE", byID(v, id, ""), nil, nil); err != nil {
					return err
				}
				return v.print(raw, func() {
					fmt.Fprintf(env.Stdout, "Removed %s: its credentials are deleted; servers created through it were not touched.\n", id)
				})
			}
		})
	catalog := onOne(&cobra.Command{Use: "catalog NAME|ID [--region R]", Short: "regions, sizes and images the account can create servers with",
		Example: "  devpilot integrations catalog my-do --region nyc3"},
		func(v *verb) func(ctx context.Context, cl *client, id string) error {
			refresh := v.fs.Bool("refresh", false, "bypass the short-lived cache")
			region := v.fs.String("region", "", "only this region, and the sizes available in it")
			return func(ctx context.Context, cl *client, id string) error {
				q := ""
				if *refresh {
					q = "?refresh=1"
				}
				var cat apitypes.Catalog
				raw, err := cl.do(ctx, "GET", byID(v, id, "/catalog"+q), nil, &cat)
				if err != nil {
					return err
				}
				if *region == "" {
					return v.print(raw, func() { printCatalog(v.out, &cat, "") })
				}
				if !slices.ContainsFunc(cat.Regions, func(r apitypes.Region) bool { return r.ID == *region }) {
					valid := []string{}
					for _, r := range cat.Regions {
						valid = append(valid, r.ID)
					}
					return usagef("--region %q: not a region of this %s account (regions: %s)", *region, cat.Provider, strings.Join(valid, ", "))
				}
				in := inRegion(cat, *region)
				return v.printValue(in, func() { printCatalog(v.out, &in, *region) })
			}
		})
	return group("integrations", "connect, test, rotate and remove cloud accounts",
		"  devpilot integrations connect --provider digitalocean --access-key my-do\n  devpilot integrations catalog my-do --region nyc3",
		connect, list, show, test, rotate, rename, remove, catalog)
}

// inRegion is the part of a catalog that concerns one region: the region
// and the sizes offered there (available or sold out).
func inRegion(cat apitypes.Catalog, region string) apitypes.Catalog {
	out := cat
	out.Regions, out.Sizes = nil, []apitypes.Size{}
	for _, r := range cat.Regions {
		if r.ID == region {
			out.Regions = append(out.Regions, r)
		}
	}
	for _, s := range cat.Sizes {
		in, sold := slices.Contains(s.Regions, region), slices.Contains(s.SoldOut, region)
		if !in && !sold {
			continue
		}
		s.Regions, s.SoldOut = []string{}, []string{}
		if in {
			s.Regions = []string{region}
		} else {
			s.SoldOut = []string{region}
		}
		out.Sizes = append(out.Sizes, s)
	}
	return out
}

func showIntegration(o *output, in *apitypes.Integration) {
	kv := [][2]string{{"id", in.ID}, {"name", in.AccessKey}, {"provider", in.Provider}, {"access key", in.AccessKey},
		{"secret key", "…" + orDash(in.SecretKeyHint)}, {"status", in.Status}, {"write access", in.WriteAccess},
		{"last validated", ts(in.LastValidatedAt)}}
	if in.Account != nil {
		kv = append(kv, [2]string{"account", strings.TrimSpace(in.Account.Name + " " + in.Account.Email)})
	}
	if in.LastError != nil {
		kv = append(kv, [2]string{"last error", in.LastError.Code + ": " + in.LastError.Message},
			[2]string{"hint", orDash(in.LastError.Hint)})
	}
	o.fields(kv)
}

// printCatalog prints the catalog's tables; with a region (the catalog
// already cut to it, see inRegion) the sizes say whether they can be
// created there now.
func printCatalog(o *output, cat *apitypes.Catalog, region string) {
	fmt.Fprintln(o.w, "REGIONS")
	rows := [][]string{}
	for _, r := range cat.Regions {
		av := "yes"
		if !r.Available {
			av = "no"
		}
		rows = append(rows, []string{r.ID, r.Name, av})
	}
	o.table([]string{"ID", "NAME", "AVAILABLE"}, rows)
	fmt.Fprintln(o.w, "\nSIZES")
	rows = rows[:0]
	for _, s := range cat.Sizes {
		row := []string{s.ID, fmt.Sprint(s.VCPUs), fmt.Sprintf("%d MB", s.MemoryMB), fmt.Sprintf("%d GB", s.DiskGB), fmt.Sprintf("$%.2f", s.PriceMonthly)}
		if region != "" {
			state := "yes"
			if len(s.Regions) == 0 {
				state = "no (sold out)"
			}
			row = append(row, state)
		} else {
			row = append(row, orDash(strings.Join(s.Regions, " ")), orDash(strings.Join(s.SoldOut, " ")))
		}
		rows = append(rows, row)
	}
	header := []string{"ID", "VCPUS", "MEMORY", "DISK", "MONTHLY", "AVAILABLE IN", "SOLD OUT IN"}
	if region != "" {
		header = append(header[:5], "AVAILABLE IN "+strings.ToUpper(region))
	}
	o.table(header, rows)
	fmt.Fprintln(o.w, "\nIMAGES")
	rows = rows[:0]
	for _, im := range cat.Images {
		rows = append(rows, []string{im.ID, im.Name, orDash(im.Neutral)})
	}
	o.table([]string{"ID", "NAME", "ALSO KNOWN AS"}, rows)
}

func integrationConnectCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{
		Use:   "connect --provider digitalocean|vultr --access-key NAME",
		Short: "connect a cloud account (the secret key is read from stdin, a file or DEVPILOT_SECRET_KEY)",
		Long: `connect validates the key with the provider (and that it may create servers),
then stores it encrypted. The access key is the integration's name: use it
wherever an integration is asked for.`,
		Example: `  devpilot integrations connect --provider digitalocean --access-key my-do   # paste the token
  devpilot integrations connect --provider vultr --access-key my-vultr --secret-file vultr.key`,
		Args: cobra.NoArgs,
	}, apiVerb, func(v *verb) runFn {
		provider := v.fs.String("provider", "", "digitalocean or vultr")
		accessKey := v.fs.String("access-key", "", "a name for this key, e.g. the token's name at the provider")
		secretFile := v.fs.String("secret-file", "", "file holding the secret key (else DEVPILOT_SECRET_KEY, else stdin)")
		_ = v.cmd.RegisterFlagCompletionFunc("provider", cobra.FixedCompletions([]string{"digitalocean", "vultr"}, cobra.ShellCompDirectiveNoFileComp))
		return func(ctx context.Context, _ []string) error {
			if *provider == "" || *accessKey == "" {
				return usagef("integrations connect: --provider and --access-key are required")
			}
			secret, err := readSecret(env, *secretFile, "DEVPILOT_SECRET_KEY", "secret key")
			if err != nil {
				return err
			}
			cl, err := v.connect()
			if err != nil {
				return err
			}
			body := map[string]string{"provider": *provider, "access_key": *accessKey, "secret_key": secret}
			return answerIntegration(ctx, v, cl, "POST", v.path("/integrations"), body, "")
		}
	})
}

func integrationListCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "list", Short: "list the connected cloud accounts", Args: cobra.NoArgs,
		Example: "  devpilot integrations list\n  devpilot integrations list -o json"}, apiVerb, func(v *verb) runFn {
		name := v.fs.String("name", "", "only the integration with this name (access key)")
		return func(ctx context.Context, _ []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			path := v.path("/integrations")
			if *name != "" {
				path += "?name=" + url.QueryEscape(*name)
			}
			var all []apitypes.Integration
			items, err := cl.listAll(ctx, path, "integrations")
			if err != nil {
				return err
			}
			kept := []json.RawMessage{}
			for _, raw := range items {
				var in apitypes.Integration
				if err := json.Unmarshal(raw, &in); err != nil {
					return fmt.Errorf("decode integrations: %w", err)
				}
				if *name != "" && in.AccessKey != *name {
					continue
				}
				all, kept = append(all, in), append(kept, raw)
			}
			return v.printValue(map[string]any{"integrations": kept}, func() {
				rows := [][]string{}
				for _, in := range all {
					rows = append(rows, []string{in.ID, in.AccessKey, in.Provider, "…" + orDash(in.SecretKeyHint), in.Status, in.WriteAccess, ts(in.LastValidatedAt)})
				}
				v.out.table([]string{"ID", "NAME", "PROVIDER", "SECRET", "STATUS", "WRITE", "LAST VALIDATED"}, rows)
			})
		}
	})
}

func byID(v *verb, id, rest string) string {
	return v.path("/integrations/" + url.PathEscape(id) + rest)
}

// answerIntegration sends a request answered with one integration and
// prints it, after note (if not empty) unless -o json/yaml.
func answerIntegration(ctx context.Context, v *verb, cl *client, method, path string, body any, note string) error {
	var in apitypes.Integration
	raw, err := cl.do(ctx, method, path, body, &in)
	if err != nil {
		return err
	}
	return v.print(raw, func() {
		if note != "" {
			fmt.Fprintln(v.env.Stdout, note)
		}
		showIntegration(v.out, &in)
	})
}
