package cli

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/secrets"
)

// client talks to the admin API.
type client struct {
	base  string
	token secrets.Value
	http  *http.Client
	// workspace is the context's workspace when a saved context gave the
	// connection, else "".
	workspace string
}

// APIError is an error body from the API.
type APIError struct {
	Status  int
	Code    string `json:"code"`
	Message string `json:"message"`
	Hint    string `json:"hint"`
}

func (e *APIError) Error() string { return e.Message }

// connOpts says where the API is and how to authenticate. First found
// wins: the flags (--url, --token-file, --ca-cert), their DEVPILOT_*
// variables (and DEVPILOT_TOKEN), the current context of the config file
// (devpilot login; --context or DEVPILOT_CONTEXT picks another), then the
// local data directory, so the CLI works on the control plane's own
// machine with no configuration at all. A context is used whole or not at
// all: its token is never sent to a URL given some other way.
type connOpts struct {
	url, tokenFile, caCert, dataDir, context string
	fs                                       *pflag.FlagSet
}

// connFlags registers the flags that say how to reach the API.
func connFlags(fs *pflag.FlagSet) *connOpts {
	o := &connOpts{fs: fs}
	fs.StringVar(&o.url, "url", "", "control plane URL (default: the current context's, else read from the data dir)")
	fs.StringVar(&o.tokenFile, "token-file", "", "file holding the API token (or set DEVPILOT_TOKEN; default: the context's, else the data dir's owner.token)")
	fs.StringVar(&o.caCert, "ca-cert", "", "CA certificate to trust (default: the context's, else the data dir's TLS CA)")
	fs.StringVar(&o.dataDir, "data-dir", "devpilot-data", "control plane data directory, for local defaults")
	fs.StringVar(&o.context, "context", "", "saved connection to use (default: the current one; see devpilot context list)")
	return o
}

// set reports whether a flag was given, as an argument or in its variable.
func (o connOpts) set(env Env, name string) bool {
	if f := o.fs.Lookup(name); f != nil && f.Changed {
		return true
	}
	return env.Getenv(envName(name)) != ""
}

func (o connOpts) client(env Env) (*client, error) {
	getenv := env.Getenv
	base, ca := o.url, o.caCert
	tok := ""
	explicitToken := o.set(env, "token-file") || getenv("DEVPILOT_TOKEN") != ""
	if f := o.fs.Lookup("token-file"); f != nil && f.Changed {
		b, err := os.ReadFile(o.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("read --token-file: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	} else if t := getenv("DEVPILOT_TOKEN"); t != "" {
		tok = strings.TrimSpace(t)
	}
	ctxWorkspace := ""
	useCtx := o.context != "" || (base == "" && !explicitToken && !o.set(env, "data-dir"))
	if useCtx {
		cfg, path, err := loadConfig(env)
		if err != nil {
			return nil, err
		}
		name := o.context
		if name == "" {
			name = cfg.Current
		}
		if c, ok := cfg.Contexts[name]; ok && name != "" {
			if base == "" {
				base = c.URL
			}
			if tok == "" && base == c.URL {
				if tok, err = openToken(env, name, c); err != nil {
					return nil, err
				}
			}
			if ca == "" {
				ca = c.CACert
			}
			if base == c.URL {
				ctxWorkspace = c.Workspace
			}
		} else if o.context != "" {
			return nil, &hintError{msg: fmt.Sprintf("no context %q in %s", o.context, path), hint: "`devpilot context list` shows the saved ones; `devpilot login` adds one"}
		}
	}
	fromDataDir := base == ""
	if base == "" {
		b, err := os.ReadFile(filepath.Join(o.dataDir, app.URLFile))
		if err != nil {
			return nil, &hintError{msg: fmt.Sprintf("no API URL (no %s in %s)", app.URLFile, o.dataDir),
				hint: "run `devpilot login --url URL`, set DEVPILOT_URL or --url, or run on the control plane's machine"}
		}
		base = strings.TrimSpace(string(b))
	}
	if tok == "" {
		f := o.tokenFile
		if f == "" {
			f = filepath.Join(o.dataDir, app.OwnerTokenFile)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, &hintError{msg: fmt.Sprintf("no API token (could not read %s)", f),
				hint: "run `devpilot login`, or set DEVPILOT_TOKEN or DEVPILOT_TOKEN_FILE"}
		}
		tok = strings.TrimSpace(string(b))
	}
	if ca == "" && fromDataDir {
		// --tls auto's CA; with acme or files there is none, and the
		// system's roots apply.
		if p := filepath.Join(o.dataDir, app.TLSDir, "ca.crt"); fileExists(p) {
			ca = p
		}
	}
	cl, err := o.clientFrom(base, tok, ca)
	if err == nil {
		cl.workspace = ctxWorkspace
	}
	return cl, err
}

// clientFrom makes a client of the API at base with a token, trusting the
// CA certificate in the file ca (none: the system's roots).
func (connOpts) clientFrom(base, tok, ca string) (*client, error) {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if ca != "" && strings.HasPrefix(base, "https://") {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, fmt.Errorf("read CA certificate: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", ca)
		}
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return &client{base: strings.TrimRight(base, "/"), token: secrets.New(tok),
		http: &http.Client{Transport: tr, Timeout: 5 * time.Minute}}, nil
}

// do sends a JSON request and decodes the JSON answer into out (if not nil).
// It returns the raw body too, for --json.
func (c *client) do(ctx context.Context, method, path string, in, out any) ([]byte, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token.Reveal())
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var ue interface{ Unwrap() error }
		if errors.As(err, &ue) {
			return nil, fmt.Errorf("cannot reach the control plane at %s: %w", c.base, ue.Unwrap())
		}
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 400 {
		var eb struct {
			Error APIError `json:"error"`
		}
		if json.Unmarshal(raw, &eb) != nil || eb.Error.Code == "" {
			return raw, &APIError{Status: resp.StatusCode, Code: "http_error", Message: resp.Status}
		}
		eb.Error.Status = resp.StatusCode
		return raw, &eb.Error
	}
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			return raw, fmt.Errorf("decode answer: %w", err)
		}
	}
	return raw, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
