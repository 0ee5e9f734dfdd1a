package cli

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/keyrotation"
)

type tokenRow struct {
	ID         string     `json:"id"`
	Name       string     `json:"name"`
	Role       string     `json:"role"`
	Workspace  string     `json:"workspace"`
	CreatedBy  string     `json:"created_by"`
	CreatedAt  time.Time  `json:"created_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	RevokedAt  *time.Time `json:"revoked_at"`
	Token      string     `json:"token"`
}

func runTokens(ctx context.Context, env Env, args []string) error {
	verbs := map[string]func([]string) error{
		"create": func(args []string) error {
			v := newVerbWith(env, "tokens create", verbFlags{json: true, workspace: "workspace the token acts in"})
			role := v.fs.String("role", "viewer", "admin (read and change) or viewer (read only)")
			name := v.fs.String("name", "", "who or what will use the token")
			_, cl, err := v.start(args)
			if err != nil {
				return err
			}
			if *name == "" {
				*name = *role + " token"
			}
			var t tokenRow
			raw, err := cl.do(ctx, "POST", v.path("/tokens"), map[string]string{"name": *name, "role": *role}, &t)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				fmt.Fprintf(env.Stderr, "Created %s token %s in workspace %s. It is shown only now:\n", t.Role, t.ID, t.Workspace)
				fmt.Fprintln(env.Stdout, t.Token)
			})
		},
		"list": func(args []string) error {
			v := newVerb(env, "tokens list")
			_, cl, err := v.start(args)
			if err != nil {
				return err
			}
			var resp struct {
				Tokens []tokenRow `json:"tokens"`
			}
			raw, err := cl.do(ctx, "GET", v.path("/tokens"), nil, &resp)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				rows := [][]string{}
				for _, t := range resp.Tokens {
					state := "active"
					if t.RevokedAt != nil {
						state = "revoked " + ts(t.RevokedAt)
					}
					rows = append(rows, []string{t.ID, t.Name, t.Role, ts(&t.CreatedAt), ts(t.LastUsedAt), state})
				}
				v.out.table([]string{"ID", "NAME", "ROLE", "CREATED", "LAST USED", "STATE"}, rows)
			})
		},
		"revoke": func(args []string) error {
			v := newVerbWith(env, "tokens revoke", verbFlags{workspace: "workspace slug"})
			id, cl, err := v.startOne(args, "token id")
			if err != nil {
				return err
			}
			if _, err := cl.do(ctx, "DELETE", v.path("/tokens/"+url.PathEscape(id)), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "Revoked token %s.\n", id)
			return nil
		},
		"recover": func(args []string) error {
			// Offline: no API and no token, only the machine's data dir.
			fs := newFlags("tokens recover", env)
			dataDir := fs.String("data-dir", "devpilot-data", "the data directory of devpilot serve")
			database := fs.String("database", "", "the --database of devpilot serve (empty: SQLite in the data dir; a password goes in DEVPILOT_DATABASE)")
			if pos, err := parse(fs, env, args); err != nil {
				return err
			} else if len(pos) > 0 {
				return usagef("tokens recover takes no arguments")
			}
			if err := passwordInArgs(fs, "database"); err != nil {
				return err
			}
			rec, err := app.RecoverOwnerToken(ctx, *dataDir, *database)
			if err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "New owner token %s written to %s (mode 0600); it works at once, no restart needed.\n", rec.TokenID, rec.File)
			if rec.LiveOwner > 1 {
				fmt.Fprintf(env.Stdout, "%d owner tokens are live; revoke the ones nobody should hold with devpilot tokens revoke ID (devpilot tokens list shows them).\n", rec.LiveOwner)
			}
			return nil
		},
	}
	return subcommand(env, "tokens", args, verbs, []string{"create", "list", "revoke", "recover"})
}

func runWorkspaces(ctx context.Context, env Env, args []string) error {
	verbs := map[string]func([]string) error{
		"create": func(args []string) error {
			v := newVerbWith(env, "workspaces create", verbFlags{json: true})
			name := v.fs.String("name", "", "display name (default: the slug)")
			slug, cl, err := v.startOne(args, "slug")
			if err != nil {
				return err
			}
			raw, err := cl.do(ctx, "POST", "/v1/workspaces", map[string]string{"slug": slug, "name": *name}, nil)
			if err != nil {
				return err
			}
			return v.print(raw, func() { fmt.Fprintf(env.Stdout, "Created workspace %s.\n", slug) })
		},
		"list": func(args []string) error {
			v := newVerbWith(env, "workspaces list", verbFlags{json: true})
			_, cl, err := v.start(args)
			if err != nil {
				return err
			}
			var resp struct {
				Workspaces []struct {
					Slug, Name string
					CreatedAt  time.Time `json:"created_at"`
				} `json:"workspaces"`
			}
			raw, err := cl.do(ctx, "GET", "/v1/workspaces", nil, &resp)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				rows := [][]string{}
				for _, w := range resp.Workspaces {
					rows = append(rows, []string{w.Slug, w.Name, ts(&w.CreatedAt)})
				}
				v.out.table([]string{"SLUG", "NAME", "CREATED"}, rows)
			})
		},
	}
	return subcommand(env, "workspaces", args, verbs, []string{"create", "list"})
}

func runKeys(ctx context.Context, env Env, args []string) error {
	verbs := map[string]func([]string) error{
		"rotate": func(args []string) error {
			v := newVerbWith(env, "keys rotate", verbFlags{json: true})
			_, cl, err := v.start(args)
			if err != nil {
				return err
			}
			var res keyrotation.Result
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
		},
	}
	return subcommand(env, "keys", args, verbs, []string{"rotate"})
}

func runAudit(ctx context.Context, env Env, args []string) error {
	v := newVerb(env, "audit")
	limit := v.fs.Int("limit", 50, "how many entries, newest first")
	_, cl, err := v.start(args)
	if err != nil {
		return err
	}
	var resp struct {
		Entries []struct {
			ID     int64          `json:"id"`
			Actor  string         `json:"actor"`
			Action string         `json:"action"`
			Target string         `json:"target"`
			Detail map[string]any `json:"detail"`
			At     time.Time      `json:"at"`
		} `json:"entries"`
	}
	raw, err := cl.do(ctx, "GET", v.path("/audit?limit="+strconv.Itoa(*limit)), nil, &resp)
	if err != nil {
		return err
	}
	return v.print(raw, func() {
		rows := [][]string{}
		for _, e := range resp.Entries {
			detail := ""
			for _, k := range sortedKeys(e.Detail) {
				detail += fmt.Sprintf("%s=%v ", k, e.Detail[k])
			}
			rows = append(rows, []string{ts(&e.At), e.Actor, e.Action, e.Target, detail})
		}
		v.out.table([]string{"WHEN", "WHO", "ACTION", "TARGET", "DETAIL"}, rows)
	})
}
