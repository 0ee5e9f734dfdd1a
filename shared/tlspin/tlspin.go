// Package tlspin pins a TLS peer by the SHA-256 of a certificate's
// SubjectPublicKeyInfo, written "sha256/<base64>" (the HPKP form). Agents
// pin the control plane's CA with it; the control plane computes the pin
// it hands them. Standard library only.
package tlspin

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// PinOf returns cert's pin: "sha256/" + base64(SHA-256(SubjectPublicKeyInfo)).
func PinOf(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256/" + base64.StdEncoding.EncodeToString(sum[:])
}

// ParsePin checks a pin's form and returns the SHA-256 it carries.
func ParsePin(pin string) ([]byte, error) {
	b64, ok := strings.CutPrefix(strings.TrimSpace(pin), "sha256/")
	if !ok {
		return nil, fmt.Errorf("tlspin: pin %q: want sha256/<base64 of the SPKI hash>", pin)
	}
	sum, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(sum) != sha256.Size {
		return nil, fmt.Errorf("tlspin: pin %q: want sha256/ and 44 characters of base64", pin)
	}
	return sum, nil
}

// VerifyPin returns a tls.Config.VerifyPeerCertificate function that accepts
// the connection only if one of the verified chains contains a certificate
// whose public key matches pin. It runs after the normal verification, so
// use it together with RootCAs (not InsecureSkipVerify, which leaves no
// verified chains and is refused); for a client that has only the pin, see
// PinnedClientConfig.
func VerifyPin(pin string) func(rawCerts [][]byte, verifiedChains [][]*x509.Certificate) error {
	want, perr := ParsePin(pin)
	return func(_ [][]byte, chains [][]*x509.Certificate) error {
		if perr != nil {
			return perr
		}
		if len(chains) == 0 {
			return errors.New("tlspin: pin check: no verified certificate chain (is InsecureSkipVerify set?)")
		}
		for _, chain := range chains {
			for _, c := range chain {
				if pinMatches(c, want) {
					return nil
				}
			}
		}
		return fmt.Errorf("tlspin: server certificate does not chain to the pinned CA %s", pin)
	}
}

func pinMatches(c *x509.Certificate, want []byte) bool {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return string(sum[:]) == string(want)
}

// PinnedClientConfig is a TLS 1.2+ client configuration for an agent that
// knows only the CA pin, not the CA certificate: the server sends its CA
// along with its certificate (auto mode does), the CA whose key matches pin
// becomes the only root, and the leaf must chain to it and, when a name is
// known (serverName, else the SNI the client sent), be valid for it. Standard
// verification is replaced, not weakened: with a private CA whose key is
// pinned, only certificates that CA signed are accepted.
func PinnedClientConfig(pin, serverName string) (*tls.Config, error) {
	want, err := ParsePin(pin)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         serverName,
		InsecureSkipVerify: true, // replaced by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			certs := cs.PeerCertificates
			if len(certs) == 0 {
				return errors.New("tlspin: server sent no certificate")
			}
			roots := x509.NewCertPool()
			inter := x509.NewCertPool()
			found := false
			for _, c := range certs {
				if c.IsCA && pinMatches(c, want) {
					roots.AddCert(c)
					found = true
				} else if c != certs[0] {
					inter.AddCert(c)
				}
			}
			if !found {
				return fmt.Errorf("tlspin: server did not present the pinned CA %s", pin)
			}
			name := serverName
			if name == "" {
				name = cs.ServerName
			}
			_, err := certs[0].Verify(x509.VerifyOptions{
				Roots:         roots,
				Intermediates: inter,
				DNSName:       name,
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			})
			if err != nil {
				return fmt.Errorf("tlspin: server certificate not valid under the pinned CA: %w", err)
			}
			return nil
		},
	}, nil
}
