package tlsauto

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"
)

// LoadFiles is `--tls files`: a TLS 1.2+ server configuration serving the
// PEM certificate chain in certFile with the key in keyFile. The pair is
// checked now; afterwards, when either file's size or modification time
// changes (a renewal by certbot or similar), the next handshake loads the new
// pair. If the new pair is unreadable or does not match, the previous one
// keeps being served.
func LoadFiles(certFile, keyFile string) (*tls.Config, error) {
	r := &fileReloader{certFile: certFile, keyFile: keyFile}
	if err := r.reload(); err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return r.get(), nil
		},
	}, nil
}

type fileStamp struct {
	size int64
	mod  time.Time
}

type fileReloader struct {
	certFile, keyFile string

	mu     sync.Mutex
	cert   *tls.Certificate
	stamps [2]fileStamp
}

func stamp(path string) (fileStamp, error) {
	st, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{st.Size(), st.ModTime()}, nil
}

func (r *fileReloader) reload() error {
	cs, err := stamp(r.certFile)
	if err != nil {
		return fmt.Errorf("tlsauto: certificate file: %w", err)
	}
	ks, err := stamp(r.keyFile)
	if err != nil {
		return fmt.Errorf("tlsauto: key file: %w", err)
	}
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("tlsauto: load %s and %s: %w", r.certFile, r.keyFile, err)
	}
	r.mu.Lock()
	r.cert, r.stamps = &c, [2]fileStamp{cs, ks}
	r.mu.Unlock()
	return nil
}

func (r *fileReloader) get() *tls.Certificate {
	cs, cerr := stamp(r.certFile)
	ks, kerr := stamp(r.keyFile)
	r.mu.Lock()
	changed := cerr == nil && kerr == nil && [2]fileStamp{cs, ks} != r.stamps
	cur := r.cert
	r.mu.Unlock()
	if changed {
		if err := r.reload(); err == nil {
			r.mu.Lock()
			cur = r.cert
			r.mu.Unlock()
		}
	}
	return cur
}
