// Package tlsauto gives `devpilot serve` its TLS certificates: in "auto"
// mode a private CA kept in the data dir signs a server certificate for the
// hosts the control plane answers on; in "files" mode a certificate and key
// from disk are served (and reloaded when they change).
//
// Agents trust the control plane by pinning its CA. A pin is
// "sha256/" followed by the standard base64 of the SHA-256 of the CA
// certificate's DER SubjectPublicKeyInfo, the form HPKP used
// (e.g. "sha256/47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="). Because it
// hashes the public key, not the certificate, re-issuing the CA certificate
// from the same key keeps the pin.
package tlsauto

import (
	"github.com/devpilot/devpilot/shared/tlspin"

	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/devpilot/devpilot/shared/atomicfile"
)

// File names inside the TLS directory.
const (
	CACertFile     = "ca.crt"     // 0644
	CAKeyFile      = "ca.key"     // 0600
	ServerCertFile = "server.crt" // 0644, leaf followed by the CA
	ServerKeyFile  = "server.key" // 0600
)

// Validity and renewal policy.
const (
	CAValidity     = 10 * 365 * 24 * time.Hour
	ServerValidity = 365 * 24 * time.Hour
	RenewBefore    = 30 * 24 * time.Hour
	backdate       = time.Hour // tolerate clients whose clock is a little behind
)

// DefaultHosts are always among the server certificate's names.
var DefaultHosts = []string{"localhost", "127.0.0.1", "::1"}

// ErrKeyPerms is returned when a private key file can be read by group or others.
var ErrKeyPerms = errors.New("private key file permissions too open")

// Bundle is the TLS material of auto mode. Its server certificate can be
// renewed while serving (Refresh); ServerConfig picks up the new one.
type Bundle struct {
	// Dir is the directory holding the CA and server files.
	Dir string
	// CACert is the CA certificate and CACertPEM its PEM encoding (what
	// DEVPILOT_CA_CERT / the CLI's --ca-cert want).
	CACert    *x509.Certificate
	CACertPEM []byte
	// CAPin is tlspin.PinOf(CACert): "sha256/<base64 of SHA-256(SPKI)>".
	CAPin string
	// CreatedCA reports that Ensure made a new CA.
	CreatedCA bool

	caKey *ecdsa.PrivateKey

	issueMu sync.Mutex // serialises writes of server.crt/server.key

	mu       sync.RWMutex
	hosts    []string // normalised SANs
	cert     *tls.Certificate
	reissued bool
}

// Ensure makes sure dir (created 0700) holds a CA (ECDSA P-256, 10 years;
// created once and then kept) and a server certificate signed by it for hosts
// plus DefaultHosts (1 year). The server certificate is issued again when
// missing or unreadable, when it expires within 30 days of now, when it was
// not signed by the CA, or when the set of names changed.
//
// hosts are DNS names or IP addresses; a ":port" suffix and IPv6 brackets are
// dropped, as are empty entries and unspecified addresses (0.0.0.0, ::).
func Ensure(dir string, hosts []string, now time.Time) (*Bundle, error) {
	names, ips, err := normaliseHosts(hosts)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("tlsauto: create dir: %w", err)
	}
	b := &Bundle{Dir: dir}
	if err := b.ensureCA(now); err != nil {
		return nil, err
	}
	if _, err := b.ensureServer(names, ips, now); err != nil {
		return nil, err
	}
	return b, nil
}

// Hosts returns the names and addresses the current server certificate is for.
func (b *Bundle) Hosts() []string {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return slices.Clone(b.hosts)
}

// Reissued reports whether the last Ensure or Refresh issued a new server certificate.
func (b *Bundle) Reissued() bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.reissued
}

// NotAfter is when the current server certificate expires.
func (b *Bundle) NotAfter() time.Time {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.cert.Leaf.NotAfter
}

// Certificate returns the current server certificate (leaf, then CA).
func (b *Bundle) Certificate() *tls.Certificate {
	b.mu.RLock()
	defer b.mu.RUnlock()
	return b.cert
}

// Refresh re-runs the server half of Ensure for the same hosts at time now
// (call it e.g. daily from serve; safe to call while serving): it re-issues the certificate if it nears
// expiry, or loads server.crt/server.key if they changed on disk. New TLS
// handshakes on ServerConfig use the result at once.
func (b *Bundle) Refresh(now time.Time) (reissued bool, err error) {
	names, ips, err := normaliseHosts(b.Hosts())
	if err != nil {
		return false, err
	}
	return b.ensureServer(names, ips, now)
}

// ServerConfig is a TLS 1.2+ server configuration whose GetCertificate
// returns the bundle's current certificate, so a re-issued one is served
// without a restart.
func (b *Bundle) ServerConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return b.Certificate(), nil
		},
	}
}

// ClientConfig is a TLS 1.2+ client configuration that trusts the bundle's
// CA and nothing else.
func (b *Bundle) ClientConfig() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(b.CACert)
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
}

// ---- CA ----

func (b *Bundle) ensureCA(now time.Time) error {
	certPath := filepath.Join(b.Dir, CACertFile)
	keyPath := filepath.Join(b.Dir, CAKeyFile)
	certPEM, certErr := os.ReadFile(certPath)
	if certErr != nil && !errors.Is(certErr, os.ErrNotExist) {
		return fmt.Errorf("tlsauto: read CA: %w", certErr)
	}
	key, keyErr := readKey(keyPath)
	if keyErr != nil && !errors.Is(keyErr, os.ErrNotExist) {
		return keyErr
	}
	switch {
	case certErr == nil && keyErr == nil:
		cert, err := parseCertPEM(certPEM)
		if err != nil {
			return fmt.Errorf("tlsauto: %s: %w", certPath, err)
		}
		if !cert.IsCA {
			return fmt.Errorf("tlsauto: %s is not a CA certificate", certPath)
		}
		if !publicKeyMatches(cert, key) {
			return fmt.Errorf("tlsauto: %s does not belong to %s; restore the matching pair, or remove both to create a new CA (agents must then be given the new pin)", CAKeyFile, CACertFile)
		}
		if !now.Before(cert.NotAfter) {
			return fmt.Errorf("tlsauto: CA in %s expired on %s; remove %s and %s to create a new one (agents must then be given the new pin)",
				b.Dir, cert.NotAfter.Format(time.DateOnly), CACertFile, CAKeyFile)
		}
		b.setCA(cert, certPEM, key)
		return nil
	case certErr == nil: // certificate without its key
		return fmt.Errorf("tlsauto: %s exists but %s is missing; restore it, or remove %s to create a new CA (agents must then be given the new pin)",
			certPath, CAKeyFile, CACertFile)
	case keyErr == nil:
		// Key without certificate: a creation cut short, or a deleted
		// certificate. Re-issue it from the same key, which keeps the pin.
	default:
		var err error
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return fmt.Errorf("tlsauto: generate CA key: %w", err)
		}
		if err := writeKey(keyPath, key); err != nil {
			return err
		}
		b.CreatedCA = true
	}
	suffix := make([]byte, 4)
	if _, err := rand.Read(suffix); err != nil {
		return fmt.Errorf("tlsauto: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{Organization: []string{"Devpilot"}, CommonName: fmt.Sprintf("Devpilot control plane CA %x", suffix)},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(CAValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return fmt.Errorf("tlsauto: create CA certificate: %w", err)
	}
	cert, _ := x509.ParseCertificate(der)
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		return err
	}
	b.setCA(cert, certPEM, key)
	return nil
}

func (b *Bundle) setCA(cert *x509.Certificate, certPEM []byte, key *ecdsa.PrivateKey) {
	b.CACert, b.CACertPEM, b.caKey, b.CAPin = cert, certPEM, key, tlspin.PinOf(cert)
}

// ---- server certificate ----

func (b *Bundle) ensureServer(names []string, ips []net.IP, now time.Time) (bool, error) {
	b.issueMu.Lock()
	defer b.issueMu.Unlock()
	certPath := filepath.Join(b.Dir, ServerCertFile)
	keyPath := filepath.Join(b.Dir, ServerKeyFile)
	want := hostList(names, ips)

	if cur, err := b.loadServer(certPath, keyPath); err != nil {
		if errors.Is(err, ErrKeyPerms) {
			return false, err
		}
		// missing or unusable: issue below
	} else if b.serverOK(cur.Leaf, want, now) {
		b.mu.Lock()
		b.cert, b.hosts, b.reissued = cur, want, false
		b.mu.Unlock()
		return false, nil
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return false, fmt.Errorf("tlsauto: generate server key: %w", err)
	}
	notAfter := now.Add(ServerValidity)
	if notAfter.After(b.CACert.NotAfter) {
		notAfter = b.CACert.NotAfter
	}
	cn := "localhost"
	if len(names) > 0 {
		cn = names[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{Organization: []string{"Devpilot"}, CommonName: cn},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		DNSNames:              names,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, b.CACert, &key.PublicKey, b.caKey)
	if err != nil {
		return false, fmt.Errorf("tlsauto: create server certificate: %w", err)
	}
	// Key first: a crash between the two writes leaves a mismatched pair,
	// which the next run notices and replaces.
	if err := writeKey(keyPath, key); err != nil {
		return false, err
	}
	chainPEM := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), b.CACertPEM...)
	if err := writeFileAtomic(certPath, chainPEM, 0o644); err != nil {
		return false, err
	}
	leaf, _ := x509.ParseCertificate(der)
	tc := &tls.Certificate{Certificate: [][]byte{der, b.CACert.Raw}, PrivateKey: key, Leaf: leaf}
	b.mu.Lock()
	b.cert, b.hosts, b.reissued = tc, want, true
	b.mu.Unlock()
	return true, nil
}

func (b *Bundle) loadServer(certPath, keyPath string) (*tls.Certificate, error) {
	if err := checkKeyPerms(keyPath); err != nil {
		return nil, err
	}
	tc, err := tls.LoadX509KeyPair(certPath, keyPath) // checks the key matches
	if err != nil {
		return nil, err
	}
	return &tc, nil
}

// serverOK: signed by our CA, valid beyond the renewal window, same names.
func (b *Bundle) serverOK(leaf *x509.Certificate, want []string, now time.Time) bool {
	if leaf == nil || !bytes.Equal(leaf.RawIssuer, b.CACert.RawSubject) || leaf.CheckSignatureFrom(b.CACert) != nil {
		return false
	}
	if now.Before(leaf.NotBefore) || !now.Add(RenewBefore).Before(leaf.NotAfter) {
		return false
	}
	var ips []net.IP
	for _, ip := range leaf.IPAddresses {
		ips = append(ips, normIP(ip))
	}
	return slices.Equal(hostList(sortedUnique(leaf.DNSNames), sortIPs(ips)), want)
}

// ---- hosts ----

func normaliseHosts(hosts []string) (names []string, ips []net.IP, err error) {
	seenIP := map[string]bool{}
	var dns []string
	for _, h := range append(slices.Clone(DefaultHosts), hosts...) {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if host, _, err := net.SplitHostPort(h); err == nil {
			h = host
		}
		h = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
		if ip := net.ParseIP(h); ip != nil {
			if ip.IsUnspecified() {
				continue
			}
			ip = normIP(ip)
			if !seenIP[ip.String()] {
				seenIP[ip.String()] = true
				ips = append(ips, ip)
			}
			continue
		}
		h = strings.TrimSuffix(strings.ToLower(h), ".")
		if !validDNSName(h) {
			return nil, nil, fmt.Errorf("tlsauto: host %q is neither an IP address nor a DNS name", h)
		}
		dns = append(dns, h)
	}
	return sortedUnique(dns), sortIPs(ips), nil
}

func normIP(ip net.IP) net.IP {
	if v4 := ip.To4(); v4 != nil {
		return v4
	}
	return ip
}

func sortIPs(ips []net.IP) []net.IP {
	slices.SortFunc(ips, func(a, b net.IP) int { return strings.Compare(a.String(), b.String()) })
	return ips
}

func sortedUnique(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return slices.Compact(s)
}

func hostList(names []string, ips []net.IP) []string {
	out := slices.Clone(names)
	for _, ip := range ips {
		out = append(out, ip.String())
	}
	return out
}

func validDNSName(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for i, label := range strings.Split(h, ".") {
		if label == "*" && i == 0 {
			continue
		}
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, c := range label {
			if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' && c != '_' {
				return false
			}
		}
	}
	return true
}

// ---- files ----

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n.Add(n, big.NewInt(1))
}

func parseCertPEM(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

func publicKeyMatches(cert *x509.Certificate, key *ecdsa.PrivateKey) bool {
	pub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	return ok && pub.Equal(&key.PublicKey)
}

func checkKeyPerms(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if runtime.GOOS != "windows" && st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("tlsauto: %s has mode %04o and can be read by group or others; run `chmod 600 %s`: %w",
			path, st.Mode().Perm(), path, ErrKeyPerms)
	}
	return nil
}

func readKey(path string) (*ecdsa.PrivateKey, error) {
	if err := checkKeyPerms(path); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tlsauto: read key: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("tlsauto: %s: no PEM block", path)
	}
	var k any
	switch block.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		err = fmt.Errorf("unexpected PEM block %q", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("tlsauto: %s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("tlsauto: %s: not an ECDSA key", path)
	}
	return ek, nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("tlsauto: encode key: %w", err)
	}
	return writeFileAtomic(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// writeFileAtomic writes through atomicfile, so readers see the old or the
// new file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := atomicfile.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("tlsauto: write %s: %w", filepath.Base(path), err)
	}
	return nil
}
