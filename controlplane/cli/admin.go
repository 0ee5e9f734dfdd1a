package cli

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"time"
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
			fs := newFlags("tokens create", env)
			c, o := connFlags(fs), outFlags(fs, env)
			ws := fs.String("workspace", "default", "workspace the token acts in")
			role := fs.String("role", "viewer", "admin (read and change) or viewer (read only)")
			name := fs.String("name", "", "who or what will use the token")
			if _, err := parse(fs, env, args); err != nil {
				return err
			}
			if *name == "" {
				*name = *role + " token"
			}
			cl, err := c.client(env.Getenv)
			if err != nil {
				return err
			}
			var t tokenRow
			raw, err := cl.do(ctx, "POST", wsPath(*ws)+"/tokens", map[string]string{"name": *name, "role": *role}, &t)
			if err != nil {
				return err
			}
			if o.json {
				o.raw(raw)
				return nil
			}
			fmt.Fprintf(env.Stderr, "Created %s token %s in workspace %s. It is shown only now:\n", t.Role, t.ID, t.Workspace)
			fmt.Fprintln(env.Stdout, t.Token)
			return nil
		},
		"list": func(args []string) error {
			fs := newFlags("tokens list", env)
			c, o := connFlags(fs), outFlags(fs, env)
			ws := fs.String("workspace", "default", "workspace slug")
			if _, err := parse(fs, env, args); err != nil {
				return err
			}
			cl, err := c.client(env.Getenv)
			if err != nil {
				return err
			}
			var resp struct {
				Tokens []tokenRow `json:"tokens"`
			}
			raw, err := cl.do(ctx, "GET", wsPath(*ws)+"/tokens", nil, &resp)
			if err != nil {
				return err
			}
			if o.json {
				o.raw(raw)
				return nil
			}
			rows := [][]string{}
			for _, t := range resp.Tokens {
				state := "active"
				if t.RevokedAt != nil {
					state = "revoked " + ts(t.RevokedAt)
				}
				rows = append(rows, []string{t.ID, t.Name, t.Role, ts(&t.CreatedAt), ts(t.LastUsedAt), state})
			}
			o.table([]string{"ID", "NAME", "ROLE", "CREATED", "LAST USED", "STATE"}, rows)
			return nil
		},
		"revoke": func(args []string) error {
			fs := newFlags("tokens revoke", env)
			c := connFlags(fs)
			ws := fs.String("workspace", "default", "workspace slug")
			pos, err := parse(fs, env, args)
			if err != nil {
				return err
			}
			if len(pos) != 1 {
				return usagef("tokens revoke: give exactly one token id")
			}
			cl, err := c.client(env.Getenv)
			if err != nil {
				return err
			}
			if _, err := cl.do(ctx, "DELETE", wsPath(*ws)+"/tokens/"+url.PathEscape(pos[0]), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(env.Stdout, "Revoked token %s.\n", pos[0])
			return nil
		},
	}
	return subcommand(env, "tokens", args, verbs, []string{"create", "list", "revoke"})
}

func runWorkspaces(ctx context.Context, env Env, args []string) error {
	verbs := map[string]func([]string) error{
		"create": func(args []string) error {
			fs := newFlags("workspaces create", env)
			c, o := connFlags(fs), outFlags(fs, env)
			name := fs.String("name", "", "display name (default: the slug)")
			pos, err := parse(fs, env, args)
			if err != nil {
				return err
			}
			if len(pos) != 1 {
				return usagef("workspaces create: give exactly one slug")
			}
			cl, err := c.client(env.Getenv)
			if err != nil {
				return err
			}
			raw, err := cl.do(ctx, "POST", "/v1/workspaces", map[string]string{"slug": pos[0], "name": *name}, nil)
			if err != nil {
				return err
			}
			if o.json {
				o.raw(raw)
				return nil
			}
			fmt.Fprintf(env.Stdout, "Created workspace %s.\n", pos[0])
			return nil
		},
		"list": func(args []string) error {
			fs := newFlags("workspaces list", env)
			c, o := connFlags(fs), outFlags(fs, env)
			if _, err := parse(fs, env, args); err != nil {
				return err
			}
			cl, err := c.client(env.Getenv)
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
			if o.json {
				o.raw(raw)
				return nil
			}
			rows := [][]string{}
			for _, w := range resp.Workspaces {
				rows = append(rows, []string{w.Slug, w.Name, ts(&w.CreatedAt)})
			}
			o.table([]string{"SLUG", "NAME", "CREATED"}, rows)
			return nil
		},
	}
	return subcommand(env, "workspaces", args, verbs, []string{"create", "list"})
}

func runKeys(ctx context.Context, env Env, args []string) error {
	verbs := map[string]func([]string) error{
		"rotate": func(args []string) error {
			fs := newFlags("keys rotate", env)
			c, o := connFlags(fs), outFlags(fs, env)
			if _, err := parse(fs, env, args); err != nil {
				return err
			}
			cl, err := c.client(env.Getenv)
			if err != nil {
				return err
			}
			var res struct {
				KeyID       string   `json:"key_id"`
				Reencrypted int      `json:"reencrypted"`
				Retired     []string `json:"retired_key_ids"`
			}
			raw, err := cl.do(ctx, "POST", "/v1/keys/rotate", nil, &res)
			if err != nil {
				return err
			}
			if o.json {
				o.raw(raw)
				return nil
			}
			fmt.Fprintf(env.Stdout, "New master key %s is active; %d secrets re-encrypted; retired keys: %v.\n", res.KeyID, res.Reencrypted, res.Retired)
			return nil
		},
	}
	return subcommand(env, "keys", args, verbs, []string{"rotate"})
}

func runAudit(ctx context.Context, env Env, args []string) error {
	fs := newFlags("audit", env)
	c, o := connFlags(fs), outFlags(fs, env)
	ws := fs.String("workspace", "default", "workspace slug")
	limit := fs.Int("limit", 50, "how many entries, newest first")
	if _, err := parse(fs, env, args); err != nil {
		return err
	}
	cl, err := c.client(env.Getenv)
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
	raw, err := cl.do(ctx, "GET", wsPath(*ws)+"/audit?limit="+strconv.Itoa(*limit), nil, &resp)
	if err != nil {
		return err
	}
	if o.json {
		o.raw(raw)
		return nil
	}
	rows := [][]string{}
	for _, e := range resp.Entries {
		detail := ""
		for _, k := range sortedKeys(e.Detail) {
			detail += fmt.Sprintf("%s=%v ", k, e.Detail[k])
		}
		rows = append(rows, []string{ts(&e.At), e.Actor, e.Action, e.Target, detail})
	}
	o.table([]string{"WHEN", "WHO", "ACTION", "TARGET", "DETAIL"}, rows)
	return nil
}
