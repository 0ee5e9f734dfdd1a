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

	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/secrets"
)

// client talks to the admin API.
type client struct {
	base  string
	token secrets.Value
	http  *http.Client
}

// APIError is an error body from the API.
type APIError struct {
	Status  int
	Code    string `json:"code"`
	Message string `json:"message"`
	Hint    string `json:"hint"`
}

func (e *APIError) Error() string { return e.Message }

// connOpts says where the API is and how to authenticate; anything unset is
// found in the local data directory, so the CLI works on the control
// plane's own machine with no configuration at all.
type connOpts struct {
	url, tokenFile, caCert, dataDir string
}

func (o connOpts) client(getenv func(string) string) (*client, error) {
	base := o.url
	if base == "" {
		b, err := os.ReadFile(filepath.Join(o.dataDir, app.URLFile))
		if err != nil {
			return nil, fmt.Errorf("no API URL: set DEVPILOT_URL or --url, or run on the control plane's machine (no %s in %s)", app.URLFile, o.dataDir)
		}
		base = strings.TrimSpace(string(b))
	}
	tok := getenv("DEVPILOT_TOKEN")
	if tok == "" {
		f := o.tokenFile
		if f == "" {
			f = filepath.Join(o.dataDir, app.OwnerTokenFile)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("no API token: set DEVPILOT_TOKEN or DEVPILOT_TOKEN_FILE (could not read %s)", f)
		}
		tok = strings.TrimSpace(string(b))
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	ca := o.caCert
	if ca == "" && o.url == "" {
		// --tls auto's CA; with acme or files there is none, and the
		// system's roots apply.
		if p := filepath.Join(o.dataDir, app.TLSDir, "ca.crt"); fileExists(p) {
			ca = p
		}
	}
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
