// Package cloudinit renders the user-data that brings a bare cloud server to
// an installed devpilot-agent: a POSIX shell script that cloud-init runs as
// is (and the dev sandbox runs unprivileged). The script downloads the agent
// from the control plane over TLS verified against the control plane's CA,
// checks its SHA-256, writes the install contract (protocol.Bootstrap) to a
// 0600 file and runs `devpilot-agent install --bootstrap-file FILE`.
//
// Every value is rendered as data: validated, then single-quoted into
// variable assignments at the top of an otherwise fixed script.
package cloudinit

import (
	"bytes"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/shared/protocol"
	"github.com/devpilot/devpilot/shared/release"
	"github.com/devpilot/devpilot/shared/tlspin"
)

// MaxUserDataSize is the smallest user-data limit of the supported clouds
// (DigitalOcean's 64 KiB); Render refuses to produce anything larger.
const MaxUserDataSize = 64 << 10

// Architectures the script knows, as uname -m maps them.
const (
	ArchAMD64 = "amd64" // uname -m: x86_64
	ArchARM64 = "arm64" // uname -m: aarch64
)

// Limits on single values, far above what the control plane produces.
const (
	maxURLLen      = 2048
	maxIDLen       = 256
	maxTokenLen    = 1024
	maxHostnameLen = 253
	maxCALen       = 32 << 10
)

// Params is what the control plane knows about the server it provisions.
type Params struct {
	// ControlPlaneURL is the base URL agents dial, e.g. https://cp.example.com:8443.
	// It must be https, except http on a loopback host (dev without TLS).
	ControlPlaneURL string
	// CACertPEM is the control plane's CA certificate (PEM). Required for
	// https: the download trusts this CA and nothing else.
	CACertPEM string
	// CAPin is the CA's pin ("sha256/<base64 SPKI hash>"). Empty: derived
	// from CACertPEM. When set it must match the certificate.
	CAPin string
	// AgentSHA256 maps an architecture (ArchAMD64, ArchARM64) to the
	// hex SHA-256 of the devpilot-agent build served for it. At least one.
	AgentSHA256 map[string]string
	// ServerID is the control plane's id for this server.
	ServerID string
	// BootstrapToken is the single-use enrollment token.
	BootstrapToken secrets.Value
	// Hostname is informational (logged by the script); optional.
	Hostname string
	// ReleaseKeys are the agent release public keys (base64 ed25519,
	// shared/release) the agent pins, like the CA: it installs only
	// updates signed by one of them. Optional (none: no updates).
	ReleaseKeys []string
}

// Render validates p and returns the user-data script. Errors never contain
// the bootstrap token.
func Render(p Params) ([]byte, error) {
	v, err := validate(p)
	if err != nil {
		return nil, fmt.Errorf("cloudinit: %w", err)
	}
	var b bytes.Buffer
	b.WriteString(header)
	assign(&b, "url", v.url)
	assign(&b, "server_id", p.ServerID)
	assign(&b, "hostname_hint", p.Hostname)
	assign(&b, "sha256_amd64", v.sha[ArchAMD64])
	assign(&b, "sha256_arm64", v.sha[ArchARM64])
	assign(&b, "curl_proto", v.proto)
	assign(&b, "ca_cert_pem", v.caPEM)
	assign(&b, "bootstrap_json", v.json)
	b.WriteString(body)
	if b.Len() > MaxUserDataSize {
		return nil, fmt.Errorf("cloudinit: user-data is %d bytes, more than the %d the clouds accept", b.Len(), MaxUserDataSize)
	}
	return b.Bytes(), nil
}

func assign(b *bytes.Buffer, name, value string) {
	b.WriteString(name)
	b.WriteByte('=')
	b.WriteString(quote(value))
	b.WriteByte('\n')
}

// quote returns s as one single-quoted POSIX shell word that expands to
// exactly s. Inside single quotes nothing is special except the closing
// quote, which is written as '\” (close, escaped quote, reopen). s must
// not contain NUL, which no shell variable can hold.
func quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

type validated struct {
	url   string
	proto string // curl --proto value
	caPEM string // without the trailing newline (the script adds it)
	sha   map[string]string
	json  string
}

func validate(p Params) (validated, error) {
	var v validated
	u, err := checkURL(p.ControlPlaneURL)
	if err != nil {
		return v, err
	}
	v.url = strings.TrimRight(u.String(), "/")
	v.proto = "=" + u.Scheme

	pin := strings.TrimSpace(p.CAPin)
	v.caPEM = strings.TrimSpace(strings.ReplaceAll(p.CACertPEM, "\r\n", "\n"))
	switch {
	case v.caPEM != "":
		if pin, err = checkCA(v.caPEM, pin); err != nil {
			return v, err
		}
	case u.Scheme == "https":
		return v, errors.New("ca cert: required for an https control plane URL (the download trusts only this CA)")
	case pin != "":
		return v, errors.New("ca pin: set without the CA certificate")
	}

	v.sha = map[string]string{}
	for arch, sum := range p.AgentSHA256 {
		if arch != ArchAMD64 && arch != ArchARM64 {
			return v, fmt.Errorf("agent sha256: unknown architecture %q (want %s or %s)", arch, ArchAMD64, ArchARM64)
		}
		sum = strings.ToLower(strings.TrimSpace(sum))
		if b, err := hex.DecodeString(sum); err != nil || len(b) != 32 {
			return v, fmt.Errorf("agent sha256 for %s: want 64 hex digits", arch)
		}
		v.sha[arch] = sum
	}
	if len(v.sha) == 0 {
		return v, errors.New("agent sha256: no architecture given (is the agent build missing?)")
	}

	if err := checkText("server id", p.ServerID, maxIDLen, true); err != nil {
		return v, err
	}
	if err := checkText("bootstrap token", p.BootstrapToken.Reveal(), maxTokenLen, true); err != nil {
		return v, err
	}
	if err := checkText("hostname", p.Hostname, maxHostnameLen, false); err != nil {
		return v, err
	}

	if len(p.ReleaseKeys) > 8 {
		return v, errors.New("release keys: at most 8")
	}
	for _, k := range p.ReleaseKeys {
		if _, err := release.ParsePublicKey(k); err != nil {
			return v, err
		}
	}
	caForJSON := ""
	if v.caPEM != "" {
		caForJSON = v.caPEM + "\n"
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(protocol.Bootstrap{
		URL:            v.url,
		CAPin:          pin,
		CACertPEM:      caForJSON,
		ServerID:       p.ServerID,
		BootstrapToken: p.BootstrapToken.Reveal(),
		ReleaseKeys:    p.ReleaseKeys,
	}); err != nil {
		return v, errors.New("bootstrap json: cannot encode")
	}
	v.json = strings.TrimSuffix(buf.String(), "\n")
	return v, nil
}

func checkURL(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("control plane url: required")
	}
	if len(raw) > maxURLLen {
		return nil, fmt.Errorf("control plane url: longer than %d bytes", maxURLLen)
	}
	if i := strings.IndexFunc(raw, func(r rune) bool { return r <= ' ' || r == 0x7f }); i >= 0 {
		return nil, errors.New("control plane url: contains a space or control character")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, errors.New("control plane url: not a valid URL")
	}
	if u.Host == "" || u.Opaque != "" {
		return nil, fmt.Errorf("control plane url %q: want scheme://host[:port][/path]", raw)
	}
	if u.User != nil {
		return nil, errors.New("control plane url: must not contain user info")
	}
	if u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return nil, fmt.Errorf("control plane url %q: must not have a query or fragment", raw)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !isLoopback(u.Hostname()) {
			return nil, fmt.Errorf("control plane url %q: http is allowed only on a loopback host (dev); use https", raw)
		}
	default:
		return nil, fmt.Errorf("control plane url %q: want https", raw)
	}
	return u, nil
}

func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkCA parses the CA certificate(s) and returns the pin to hand the
// agent: pin itself if it matches one of them, else the first one's.
func checkCA(caPEM, pin string) (string, error) {
	if len(caPEM) > maxCALen {
		return "", fmt.Errorf("ca cert: longer than %d bytes", maxCALen)
	}
	if err := checkText("ca cert", strings.ReplaceAll(caPEM, "\n", ""), maxCALen, true); err != nil {
		return "", err
	}
	var certs []*x509.Certificate
	rest := []byte(caPEM)
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return "", fmt.Errorf("ca cert: unexpected PEM block %q (want CERTIFICATE only)", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return "", fmt.Errorf("ca cert: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 || len(bytes.TrimSpace(rest)) != 0 {
		return "", errors.New("ca cert: want one or more PEM CERTIFICATE blocks and nothing else")
	}
	if pin == "" {
		return tlspin.PinOf(certs[0]), nil
	}
	if _, err := tlspin.ParsePin(pin); err != nil {
		return "", fmt.Errorf("ca pin: %w", err)
	}
	if !slices.ContainsFunc(certs, func(c *x509.Certificate) bool { return tlspin.PinOf(c) == pin }) {
		return "", fmt.Errorf("ca pin %s: matches no certificate in the CA PEM", pin)
	}
	return pin, nil
}

// checkText rejects what makes no sense in a one-line value: invalid UTF-8,
// NUL, newlines and other control characters. It never quotes the value
// (it may be a secret).
func checkText(what, s string, maxLen int, required bool) error {
	switch {
	case s == "" && required:
		return fmt.Errorf("%s: required", what)
	case len(s) > maxLen:
		return fmt.Errorf("%s: longer than %d bytes", what, maxLen)
	case !utf8.ValidString(s):
		return fmt.Errorf("%s: not valid UTF-8", what)
	}
	for _, r := range s {
		if r < ' ' || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return fmt.Errorf("%s: contains a control character (newline, NUL, ...)", what)
		}
	}
	return nil
}
