// Package config reads and writes the agent's configuration file
// (/etc/devpilot-agent/config.json, mode 0600).
//
// The file holds the bootstrap token only until the first enrollment
// succeeds: the agent then rewrites it without the token (atomically), and
// from then on authenticates with its identity key alone.
package config

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/devpilot/devpilot/shared/atomicfile"
	"github.com/devpilot/devpilot/shared/protocol"
	"github.com/devpilot/devpilot/shared/release"
	"github.com/devpilot/devpilot/shared/tlspin"
)

// Config is what the agent needs to reach and authenticate to the control plane.
type Config struct {
	URL       string `json:"url"`         // control plane base URL (https)
	CAPin     string `json:"ca_pin"`      // sha256/<base64> of the control plane CA's SPKI
	CACertPEM string `json:"ca_cert_pem"` // that CA (public)
	ServerID  string `json:"server_id"`
	// BootstrapToken is present only until the first enrollment succeeds.
	BootstrapToken string `json:"bootstrap_token,omitempty"`
	// ReleaseKeys are the pinned agent release public keys (base64
	// ed25519): updates signed by none of them are refused.
	ReleaseKeys []string `json:"release_keys,omitempty"`
}

// FromBootstrap converts an install contract into a configuration.
func FromBootstrap(b protocol.Bootstrap) Config {
	return Config{URL: b.URL, CAPin: b.CAPin, CACertPEM: b.CACertPEM, ServerID: b.ServerID, BootstrapToken: b.BootstrapToken,
		ReleaseKeys: b.ReleaseKeys}
}

// Enrolled reports whether the agent has enrolled (no token left).
func (c Config) Enrolled() bool { return c.BootstrapToken == "" }

// Validate checks the URL, the pin and that the CA certificate matches it.
func (c Config) Validate() error {
	if _, err := ConnectURL(c.URL); err != nil {
		return err
	}
	if c.ServerID == "" {
		return errors.New("config: server_id is empty")
	}
	if _, err := tlspin.ParsePin(c.CAPin); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if c.CACertPEM != "" {
		ca, err := ParseCA(c.CACertPEM)
		if err != nil {
			return err
		}
		if got := tlspin.PinOf(ca); got != strings.TrimSpace(c.CAPin) {
			return fmt.Errorf("config: ca_cert_pem does not match ca_pin (certificate pin is %s, want %s)", got, c.CAPin)
		}
	}
	if _, err := c.ReleasePublicKeys(); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

// ReleasePublicKeys decodes ReleaseKeys.
func (c Config) ReleasePublicKeys() ([]ed25519.PublicKey, error) {
	var out []ed25519.PublicKey
	for _, k := range c.ReleaseKeys {
		pub, err := release.ParsePublicKey(k)
		if err != nil {
			return nil, err
		}
		out = append(out, pub)
	}
	return out, nil
}

// ParseCA decodes the first certificate in a PEM text.
func ParseCA(pemText string) (*x509.Certificate, error) {
	block, _ := pem.Decode([]byte(pemText))
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("config: ca_cert_pem holds no PEM certificate")
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("config: ca_cert_pem: %w", err)
	}
	return c, nil
}

// ConnectURL turns the control plane base URL into the hub's WebSocket URL
// (wss://host[:port]/prefix/v1/agent/connect). Only https/wss are accepted.
func ConnectURL(base string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(base))
	if err != nil {
		return nil, fmt.Errorf("config: url: %w", err)
	}
	switch u.Scheme {
	case "https", "wss":
	default:
		return nil, fmt.Errorf("config: url %q: want https://host[:port]", base)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("config: url %q has no host", base)
	}
	u.Scheme = "wss"
	u.Path = strings.TrimSuffix(u.Path, "/") + protocol.Path
	u.RawQuery, u.Fragment, u.User = "", "", nil
	return u, nil
}

// Load reads and validates a configuration file.
func Load(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("config: %s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("%w (in %s)", err, path)
	}
	return c, nil
}

// Marshal is the file's exact content.
func (c Config) Marshal() []byte {
	b, _ := json.MarshalIndent(c, "", "  ") // plain strings cannot fail
	return append(b, '\n')
}

// Save writes the configuration atomically with mode 0600.
func Save(path string, c Config) error {
	if err := atomicfile.WriteFile(path, c.Marshal(), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
