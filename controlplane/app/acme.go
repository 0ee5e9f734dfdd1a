package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// LetsEncrypt is the ACME directory --tls acme uses by default.
const LetsEncrypt = "https://acme-v02.api.letsencrypt.org/directory"

// ACMEDir is where certificates and the ACME account key are cached, under
// the data dir (0700; autocert writes the files 0600).
const ACMEDir = "acme"

// acmeManager builds the certificate manager for --tls acme: certificates
// for the public URL's host (or ACMEDomains) from the ACME directory,
// proved with the TLS-ALPN-01 challenge on this listener, cached in the
// data dir and renewed before they expire. The CA must reach the domain on
// port 443, so the listener serves there (directly or through a TCP
// forwarder, not a TLS-terminating proxy).
func (a *App) acmeManager() (*autocert.Manager, []string, error) {
	domains := a.cfg.ACMEDomains
	if len(domains) == 0 && a.cfg.PublicURL != "" {
		if u, err := url.Parse(a.cfg.PublicURL); err == nil && u.Hostname() != "" {
			domains = []string{u.Hostname()}
		}
	}
	if len(domains) == 0 {
		return nil, nil, errors.New("--tls acme needs the name to get a certificate for: set --public-url https://NAME (or --acme-domain)")
	}
	if a.cfg.AgentCAFile == "" {
		return nil, nil, errors.New("--tls acme: set --agent-ca-file to the root certificate your ACME CA chains to, " +
			"which agents pin (Let's Encrypt: ISRG Root X1, /usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt on Debian)")
	}
	dir := a.cfg.ACMEDirectory
	if dir == "" {
		dir = LetsEncrypt
	}
	client := &acme.Client{DirectoryURL: dir, UserAgent: "devpilot"}
	if a.cfg.ACMECAFile != "" {
		// A private ACME CA (step-ca, Pebble) whose API certificate the
		// system does not trust.
		b, err := os.ReadFile(a.cfg.ACMECAFile)
		if err != nil {
			return nil, nil, fmt.Errorf("acme ca file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, nil, fmt.Errorf("acme ca file %s holds no PEM certificate", a.cfg.ACMECAFile)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		client.HTTPClient = &http.Client{Transport: tr, Timeout: time.Minute}
	}
	m := &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		Cache:      autocert.DirCache(filepath.Join(a.cfg.DataDir, ACMEDir)),
		HostPolicy: autocert.HostWhitelist(domains...),
		Email:      a.cfg.ACMEEmail,
		Client:     client,
	}
	return m, domains, nil
}

// acmeTLSConfig serves the manager's certificates and answers its
// TLS-ALPN-01 challenges. Only HTTP/1.1 is offered, as in the other modes:
// agents' WebSocket upgrades need it.
func acmeTLSConfig(m *autocert.Manager) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: m.GetCertificate,
		NextProtos:     []string{"http/1.1", acme.ALPNProto},
	}
}

// warmCertificates asks for each domain's certificate once the listener
// serves (the CA's challenge connects to it), so the first agent does not
// wait for it and a problem (a DNS name not pointing here, port 443 closed,
// the CA's rate limit) is in the log at start, not at a user's first
// request. It gives up when ctx ends.
func (a *App) warmCertificates(ctx context.Context, m *autocert.Manager, domains []string) {
	for _, d := range domains {
		for attempt := 1; ; attempt++ {
			// GetCertificate cannot be cancelled (autocert bounds it at 5
			// minutes): wait for it here only while ctx lasts.
			type result struct {
				c   *tls.Certificate
				err error
			}
			got := make(chan result, 1)
			go func() {
				c, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: d,
					CipherSuites: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}})
				got <- result{c, err}
			}()
			var r result
			select {
			case <-ctx.Done():
				return
			case r = <-got:
			}
			if r.err == nil {
				if r.c.Leaf != nil {
					a.log.Info("acme: certificate ready", zap.String("domain", d),
						zap.Time("not_after", r.c.Leaf.NotAfter), zap.String("issuer", r.c.Leaf.Issuer.CommonName))
				}
				break
			}
			a.log.Warn("acme: no certificate yet; agents and browsers cannot connect by name until there is one",
				zap.String("domain", d), zap.Int("attempt", attempt), zap.Error(r.err),
				zap.String("hint", "the name must resolve to this host and the CA must reach this listener on port 443"))
			select {
			case <-ctx.Done():
				return
			case <-time.After(min(time.Duration(attempt)*30*time.Second, 10*time.Minute)):
			}
		}
	}
}
