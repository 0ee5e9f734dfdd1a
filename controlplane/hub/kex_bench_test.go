package hub

import (
	"crypto/tls"
	"net"
	"net/http/httptest"
	"syscall"
	"testing"
	"time"
)

// BenchmarkTLSKeyExchange is one full TLS 1.3 handshake (both ends, in
// this process, over net.Pipe, httptest's ECDSA certificate) per key
// exchange group: the hybrid post-quantum default X25519MLKEM768 and
// classical X25519. The difference is the price of the PQ default.
//
//	go test -run '^$' -bench TLSKeyExchange ./controlplane/hub/
func BenchmarkTLSKeyExchange(b *testing.B) {
	srv := httptest.NewTLSServer(nil)
	defer srv.Close()
	certs := srv.TLS.Certificates
	for _, g := range []tls.CurveID{tls.X25519MLKEM768, tls.X25519} {
		b.Run(g.String(), func(b *testing.B) {
			// No tickets: over a synchronous pipe the server's ticket write
			// would wait for a client that has stopped reading.
			sc := &tls.Config{Certificates: certs, CurvePreferences: []tls.CurveID{g}, MinVersion: tls.VersionTLS13,
				SessionTicketsDisabled: true}
			cc := &tls.Config{InsecureSkipVerify: true, CurvePreferences: []tls.CurveID{g}, MinVersion: tls.VersionTLS13} //nolint:gosec // in-process benchmark
			cpu0 := cpuTime()
			for b.Loop() {
				a, c := net.Pipe()
				s, cl := tls.Server(a, sc), tls.Client(c, cc)
				errc := make(chan error, 1)
				go func() { errc <- s.Handshake() }()
				if err := cl.Handshake(); err != nil {
					b.Fatal(err)
				}
				if err := <-errc; err != nil {
					b.Fatal(err)
				}
				if st := s.ConnectionState(); st.CurveID != g {
					b.Fatalf("negotiated %v, want %v", st.CurveID, g)
				}
				_ = a.Close() // not s.Close: its close_notify would wait on the pipe
				_ = c.Close()
			}
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/handshake")
		})
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
