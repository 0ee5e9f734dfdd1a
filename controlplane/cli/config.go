package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/shared/atomicfile"
)

// config is the CLI's config file: named connections (contexts) saved by
// `devpilot login`, one of them current. It holds API tokens, so it is
// written 0600 and its directory 0700.
type config struct {
	Current  string                   `yaml:"current"`
	Contexts map[string]contextConfig `yaml:"contexts"`
}

type contextConfig struct {
	URL string `yaml:"url"`
	// Token is the API token sealed with the keyring beside the config
	// file (keyring.json, 0600; see sealToken): never plaintext at rest.
	Token  string `yaml:"token"`
	CACert string `yaml:"ca_cert,omitempty"` // absolute path of the CA certificate to trust
	// Workspace is the token's workspace (from GET /v1/whoami): the
	// default --workspace while this context is used.
	Workspace string `yaml:"workspace,omitempty"`
}

// configPath is $XDG_CONFIG_HOME/devpilot/config.yaml, else
// $HOME/.config/devpilot/config.yaml; "" when neither is set.
func configPath(env Env) string {
	if d := env.Getenv("XDG_CONFIG_HOME"); d != "" {
		return filepath.Join(d, "devpilot", "config.yaml")
	}
	if h := env.Getenv("HOME"); h != "" {
		return filepath.Join(h, ".config", "devpilot", "config.yaml")
	}
	return ""
}

func loadConfig(env Env) (*config, string, error) {
	path := configPath(env)
	cfg := &config{Contexts: map[string]contextConfig{}}
	if path == "" {
		return cfg, "(no config file: neither XDG_CONFIG_HOME nor HOME is set)", nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cfg, path, nil
	}
	if err != nil {
		return nil, path, fmt.Errorf("read config: %w", err)
	}
	if err := yaml.Unmarshal(b, cfg); err != nil {
		return nil, path, &hintError{msg: fmt.Sprintf("config %s: %v", path, err), hint: "fix or remove the file, then run `devpilot login` again"}
	}
	if cfg.Contexts == nil {
		cfg.Contexts = map[string]contextConfig{}
	}
	return cfg, path, nil
}

func saveConfig(env Env, cfg *config) (string, error) {
	path := configPath(env)
	if path == "" {
		return "", &hintError{msg: "nowhere to save the config", hint: "set HOME or XDG_CONFIG_HOME"}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return "", err
	}
	if err := atomicfile.WriteFile(path, b, 0o600); err != nil {
		return "", fmt.Errorf("write config: %w", err)
	}
	return path, os.Chmod(path, 0o600)
}

// keyringPath is the keyring that seals the config's tokens: beside the
// config file, 0600 in the 0700 directory.
func keyringPath(env Env) string { return filepath.Join(filepath.Dir(configPath(env)), "keyring.json") }

// sealToken encrypts a context's token with the CLI's keyring (the control
// plane's own AES-GCM sealing, bound to the context's name), creating the
// keyring on first use. The config file alone (pasted, backed up, shared)
// then holds no usable token; the keyring file is what to guard.
func sealToken(env Env, name, tok string) (string, error) {
	if configPath(env) == "" {
		return "", &hintError{msg: "nowhere to save the config", hint: "set HOME or XDG_CONFIG_HOME"}
	}
	k, err := secrets.LoadOrCreateKeyring(keyringPath(env))
	if err != nil {
		return "", err
	}
	return k.Encrypt(secrets.New(tok), "context:"+name)
}

// openToken decrypts a context's token (see sealToken).
func openToken(env Env, name string, c contextConfig) (string, error) {
	k, err := secrets.LoadKeyring(keyringPath(env))
	if err == nil {
		var v secrets.Value
		if v, err = k.Decrypt(c.Token, "context:"+name); err == nil {
			return v.Reveal(), nil
		}
	}
	return "", &hintError{msg: fmt.Sprintf("the token of context %q does not open with %s: %v", name, keyringPath(env), err),
		hint: fmt.Sprintf("log in again: devpilot login --url %s --name %s", c.URL, name)}
}

func loginCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{
		Use:   "login",
		Short: "save a connection to a control plane (URL, token, CA) as a named context",
		Long: `login checks the token against the control plane (GET /v1/whoami) and saves
the URL, the token and the CA certificate's path as a context in
$XDG_CONFIG_HOME/devpilot/config.yaml (else ~/.config/devpilot/config.yaml),
mode 0600, and makes it the current one.

The token is read from --token-file, else DEVPILOT_TOKEN, else standard input
(a prompt without echo on a terminal); never from an argument. It is stored
sealed with the keyring beside the config (keyring.json, 0600).`,
		Example: `  devpilot tokens create --role admin --name laptop | devpilot login --url https://cp.example.com:8443 --name prod
  devpilot login --url https://10.0.0.5:8443 --ca-cert ca.crt --token-file admin.token --name lab`,
		Args: cobra.NoArgs,
	}, verbFlags{json: true, local: true}, func(v *verb) runFn {
		url := v.fs.String("url", "", "control plane URL (required)")
		tokenFile := v.fs.String("token-file", "", "file holding the API token (else DEVPILOT_TOKEN, else stdin)")
		caCert := v.fs.String("ca-cert", "", "CA certificate to trust (for --tls auto, the data dir's tls/ca.crt)")
		name := v.fs.String("name", "", "the context's name (default: the URL's host)")
		return func(ctx context.Context, _ []string) error {
			if *url == "" {
				return usagef("login: --url is required")
			}
			if !strings.HasPrefix(*url, "https://") && !strings.HasPrefix(*url, "http://") {
				return usagef("login: --url %q: give an http:// or https:// URL", *url)
			}
			tok, err := readSecret(v.env, *tokenFile, "DEVPILOT_TOKEN", "API token")
			if err != nil {
				return err
			}
			ca := ""
			if *caCert != "" {
				if ca, err = filepath.Abs(*caCert); err != nil {
					return err
				}
			}
			cc := contextConfig{URL: strings.TrimRight(*url, "/"), Token: tok, CACert: ca}
			n := *name
			if n == "" {
				n = strings.Split(strings.SplitN(cc.URL, "://", 2)[1], "/")[0]
			}
			cl, err := connOpts{}.clientFrom(cc.URL, tok, ca)
			if err != nil {
				return err
			}
			var who map[string]string
			if _, err := cl.do(ctx, "GET", "/v1/whoami", nil, &who); err != nil {
				return err
			}
			cfg, _, err := loadConfig(v.env)
			if err != nil {
				return err
			}
			cc.Workspace = who["workspace"]
			if cc.Token, err = sealToken(v.env, n, tok); err != nil {
				return err
			}
			cfg.Contexts[n] = cc
			cfg.Current = n
			path, err := saveConfig(v.env, cfg)
			if err != nil {
				return err
			}
			out := map[string]string{"context": n, "url": cc.URL, "token_id": who["token_id"], "role": who["role"],
				"workspace": who["workspace"], "config": path}
			return v.printValue(out, func() {
				fmt.Fprintf(v.env.Stdout, "Logged in to %s as %s (%s, workspace %s); saved as context %q in %s, now the current one.\n",
					cc.URL, who["token_id"], who["role"], who["workspace"], n, path)
			})
		}
	})
}

func contextCmd(env Env) *cobra.Command {
	list := verbCmd(env, &cobra.Command{Use: "list", Short: "list the saved contexts; * marks the current one", Args: cobra.NoArgs},
		verbFlags{json: true, local: true}, func(v *verb) runFn {
			return func(ctx context.Context, _ []string) error {
				cfg, _, err := loadConfig(v.env)
				if err != nil {
					return err
				}
				type row struct {
					Name    string `json:"name"`
					URL     string `json:"url"`
					CACert  string `json:"ca_cert,omitempty"`
					Current bool   `json:"current"`
				}
				rows := []row{}
				for _, k := range sortedKeys(cfg.Contexts) {
					c := cfg.Contexts[k]
					rows = append(rows, row{k, c.URL, c.CACert, k == cfg.Current})
				}
				return v.printValue(map[string]any{"contexts": rows}, func() {
					t := [][]string{}
					for _, r := range rows {
						cur := ""
						if r.Current {
							cur = "*"
						}
						t = append(t, []string{cur, r.Name, r.URL, orDash(r.CACert)})
					}
					v.out.table([]string{"CURRENT", "NAME", "URL", "CA CERT"}, t)
				})
			}
		})
	pick := func(use, short string, apply func(cfg *config, name string) string) *cobra.Command {
		c := &cobra.Command{Use: use + " NAME", Short: short, Args: one("context name")}
		c.ValidArgsFunction = func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			cfg, _, err := loadConfig(env)
			if err != nil || len(args) > 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return sortedKeys(cfg.Contexts), cobra.ShellCompDirectiveNoFileComp
		}
		return verbCmd(env, c, verbFlags{json: true, local: true}, func(v *verb) runFn {
			return func(ctx context.Context, args []string) error {
				cfg, path, err := loadConfig(v.env)
				if err != nil {
					return err
				}
				if _, ok := cfg.Contexts[args[0]]; !ok {
					return &hintError{msg: fmt.Sprintf("no context %q in %s", args[0], path), hint: "`devpilot context list` shows the saved ones"}
				}
				note := apply(cfg, args[0])
				if _, err := saveConfig(v.env, cfg); err != nil {
					return err
				}
				return v.printValue(map[string]string{"context": args[0], "current": cfg.Current}, func() {
					fmt.Fprintln(v.env.Stdout, note)
				})
			}
		})
	}
	use := pick("use", "make a saved context the current one", func(cfg *config, name string) string {
		cfg.Current = name
		return fmt.Sprintf("Now using context %q (%s).", name, cfg.Contexts[name].URL)
	})
	remove := pick("remove", "forget a saved context and its token", func(cfg *config, name string) string {
		delete(cfg.Contexts, name)
		if cfg.Current == name {
			cfg.Current = ""
		}
		return fmt.Sprintf("Removed context %q; its token is gone from the config file (it still works until revoked: devpilot tokens revoke).", name)
	})
	return group("context", "list, switch and remove the connections saved by devpilot login",
		"  devpilot context list\n  devpilot context use prod", list, use, remove)
}
