package cli

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/shared/version"
)

func runVersion(ctx context.Context, env Env, args []string) error {
	fmt.Fprintln(env.Stdout, "devpilot", version.String())
	return nil
}

// wsPath is the API prefix of a workspace.
func wsPath(ws string) string { return "/v1/workspaces/" + url.PathEscape(ws) }

func subcommand(env Env, group string, args []string, verbs map[string]func([]string) error, order []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintf(env.Stderr, "Usage: devpilot %s <%s> [flags]\n", group, strings.Join(order, "|"))
		if len(args) == 0 {
			return usagef("%s: missing verb", group)
		}
		return nil
	}
	f, ok := verbs[args[0]]
	if !ok {
		return usagef("%s: unknown verb %q (use %s)", group, args[0], strings.Join(order, ", "))
	}
	return f(args[1:])
}

func ts(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

// --- integrations

func runIntegrations(ctx context.Context, env Env, args []string) error {
	const what = "integration id"
	byID := func(v *verb, id, rest string) string { return v.path("/integrations/" + url.PathEscape(id) + rest) }
	// answer sends a request answered with one integration and prints it,
	// after note (if not empty) unless --json.
	answer := func(v *verb, cl *client, method, path string, body any, note string) error {
		var in apitypes.Integration
		raw, err := cl.do(ctx, method, path, body, &in)
		if err != nil {
			return err
		}
		return v.print(raw, func() {
			if note != "" {
				fmt.Fprintln(env.Stdout, note)
			}
			showIntegration(v.out, &in)
		})
	}
	verbs := map[string]func([]string) error{
		"connect": func(args []string) error {
			v := newVerb(env, "integrations connect")
			provider := v.fs.String("provider", "", "digitalocean or vultr")
			accessKey := v.fs.String("access-key", "", "a label for this key, e.g. the token's name at the provider")
			secretFile := v.fs.String("secret-file", "", "file holding the secret key (else DEVPILOT_SECRET_KEY, else stdin)")
			if _, err := v.parse(args); err != nil {
				return err
			}
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
			return answer(v, cl, "POST", v.path("/integrations"), body, "")
		},
		"list": func(args []string) error {
			v := newVerb(env, "integrations list")
			_, cl, err := v.start(args)
			if err != nil {
				return err
			}
			var resp struct {
				Integrations []apitypes.Integration `json:"integrations"`
			}
			raw, err := cl.do(ctx, "GET", v.path("/integrations"), nil, &resp)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				rows := [][]string{}
				for _, in := range resp.Integrations {
					rows = append(rows, []string{in.ID, in.Provider, in.AccessKey, "…" + orDash(in.SecretKeyHint), in.Status, in.WriteAccess, ts(in.LastValidatedAt)})
				}
				v.out.table([]string{"ID", "PROVIDER", "ACCESS KEY", "SECRET", "STATUS", "WRITE", "LAST VALIDATED"}, rows)
			})
		},
		"show": func(args []string) error {
			v := newVerb(env, "integrations show")
			id, cl, err := v.startOne(args, what)
			if err != nil {
				return err
			}
			return answer(v, cl, "GET", byID(v, id, ""), nil, "")
		},
		"test": func(args []string) error {
			v := newVerb(env, "integrations test")
			id, cl, err := v.startOne(args, what)
			if err != nil {
				return err
			}
			return answer(v, cl, "POST", byID(v, id, "/test"), nil, "Credentials work.")
		},
		"rotate": func(args []string) error {
			v := newVerb(env, "integrations rotate")
			secretFile := v.fs.String("secret-file", "", "file holding the new secret key (else DEVPILOT_SECRET_KEY, else stdin)")
			id, err := v.parseOne(args, what)
			if err != nil {
				return err
			}
			secret, err := readSecret(env, *secretFile, "DEVPILOT_SECRET_KEY", "new secret key")
			if err != nil {
				return err
			}
			cl, err := v.connect()
			if err != nil {
				return err
			}
			return answer(v, cl, "PUT", byID(v, id, "/secret"), map[string]string{"secret_key": secret},
				"Secret rotated: the new key was validated and replaced the old one.")
		},
		"rename": func(args []string) error {
			v := newVerb(env, "integrations rename")
			accessKey := v.fs.String("access-key", "", "the new label")
			id, cl, err := v.startOne(args, what)
			if err != nil {
				return err
			}
			return answer(v, cl, "PATCH", byID(v, id, ""), map[string]string{"access_key": *accessKey}, "")
		},
		"remove": func(args []string) error {
			v := newVerb(env, "integrations remove")
			id, cl, err := v.startOne(args, what)
			if err != nil {
				return err
			}
			if _, err := cl.do(ctx, "DELETE", byID(v, id, ""), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "Removed %s: its credentials are deleted; servers created through it were not touched.\n", id)
			return nil
		},
		"catalog": func(args []string) error {
			v := newVerb(env, "integrations catalog")
			refresh := v.fs.Bool("refresh", false, "bypass the short-lived cache")
			region := v.fs.String("region", "", "show only sizes available in this region")
			id, cl, err := v.startOne(args, what)
			if err != nil {
				return err
			}
			q := ""
			if *refresh {
				q = "?refresh=1"
			}
			var cat cloud.Catalog
			raw, err := cl.do(ctx, "GET", byID(v, id, "/catalog"+q), nil, &cat)
			if err != nil {
				return err
			}
			return v.print(raw, func() { printCatalog(v.out, &cat, *region) })
		},
	}
	return subcommand(env, "integrations", args, verbs, []string{"connect", "list", "show", "test", "rotate", "rename", "remove", "catalog"})
}

func showIntegration(o *output, in *apitypes.Integration) {
	kv := [][2]string{{"id", in.ID}, {"provider", in.Provider}, {"access key", in.AccessKey},
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

func printCatalog(o *output, cat *cloud.Catalog, region string) {
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
		if region != "" && !slices.Contains(s.Regions, region) && !slices.Contains(s.SoldOut, region) {
			continue
		}
		where := strings.Join(s.Regions, " ")
		if region != "" {
			where = "available"
			if slices.Contains(s.SoldOut, region) {
				where = "SOLD OUT"
			}
		}
		sold := strings.Join(s.SoldOut, " ")
		rows = append(rows, []string{s.ID, fmt.Sprint(s.VCPUs), fmt.Sprintf("%d MB", s.MemoryMB), fmt.Sprintf("%d GB", s.DiskGB),
			fmt.Sprintf("$%.2f", s.PriceMonthly), orDash(where), orDash(sold)})
	}
	o.table([]string{"ID", "VCPUS", "MEMORY", "DISK", "MONTHLY", "AVAILABLE IN", "SOLD OUT IN"}, rows)
	fmt.Fprintln(o.w, "\nIMAGES")
	rows = rows[:0]
	for _, im := range cat.Images {
		rows = append(rows, []string{im.ID, im.Name, orDash(im.Neutral)})
	}
	o.table([]string{"ID", "NAME", "ALSO KNOWN AS"}, rows)
}
