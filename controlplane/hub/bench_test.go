package hub

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/tls"
	"fmt"
	"io"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/devpilot/devpilot/shared/protocol"
)

// The benchmarks run the agents in a child process (this test binary
// re-executed with HUB_BENCH_CHILD=1), so the parent's memory numbers are
// the hub's alone. Agents dial through real loopback WebSockets and do the
// full handshake (challenge, signed auth hello, welcome).
//
//	HUB_BENCH_AGENTS=10000 go test -run '^$' -bench . -benchtime 1x ./controlplane/hub/
//
// HUB_BENCH_TLS=1 serves over TLS (httptest's certificate, Go's default
// key exchange: X25519MLKEM768 first), as `devpilot serve` does; the
// memory benchmark then also reports the RSS delta per agent (VmRSS of
// /proc/self/status).
const (
	benchChildEnv       = "HUB_BENCH_CHILD"
	benchDefaultAgents  = 2000
	benchMaxAgents      = 10000
	benchChildURLEnv    = "HUB_BENCH_URL"
	benchChildNEnv      = "HUB_BENCH_N"
	benchChildWorkers   = 64
	benchChildReadyLine = "ready"
)

func benchAgents(b *testing.B) int {
	n := benchDefaultAgents
	if s := os.Getenv("HUB_BENCH_AGENTS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > benchMaxAgents {
			b.Fatalf("HUB_BENCH_AGENTS=%q: want 1..%d", s, benchMaxAgents)
		}
		n = v
	}
	return n
}

func benchID(i int) string { return fmt.Sprintf("srv-%05d", i) }

func benchKey(i int) ed25519.PrivateKey {
	seed := sha256.Sum256([]byte("hub-bench-" + strconv.Itoa(i)))
	return ed25519.NewKeyFromSeed(seed[:])
}

// benchRegistry knows n enrolled servers and records nothing per session,
// so the memory delta is the hub's.
type benchRegistry struct {
	keys map[string]ed25519.PublicKey
}

func newBenchRegistry(n int) *benchRegistry {
	r := &benchRegistry{keys: make(map[string]ed25519.PublicKey, n)}
	for i := range n {
		r.keys[benchID(i)] = benchKey(i).Public().(ed25519.PublicKey)
	}
	return r
}

func (r *benchRegistry) Enroll(context.Context, string, string, ed25519.PublicKey, protocol.Hello) error {
	return ErrTokenInvalid
}

func (r *benchRegistry) AgentKey(_ context.Context, id string) (AgentKeys, error) {
	if k, ok := r.keys[id]; ok {
		return AgentKeys{Enrolled: k}, nil
	}
	return AgentKeys{}, ErrAuthFailed
}
func (r *benchRegistry) IdentityConflict(context.Context, string, Conflict) error { return nil }
func (r *benchRegistry) Connected(context.Context, string, protocol.Hello, time.Time) error {
	return nil
}
func (r *benchRegistry) Disconnected(context.Context, string, time.Time) error     { return nil }
func (r *benchRegistry) SaveHealth(context.Context, map[string]HealthSample) error { return nil }

// raiseFDLimit lifts RLIMIT_NOFILE to at least need (soft up to hard, and
// hard too when allowed).
func raiseFDLimit(need uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("getrlimit: %w", err)
	}
	if lim.Cur >= need {
		return nil
	}
	lim.Cur = need
	if lim.Max < need {
		lim.Max = need
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("open file limit is below the %d needed and can't be raised (ulimit -n): %w", need, err)
	}
	return nil
}

type childResult struct {
	elapsed  time.Duration // first dial → last welcome
	p50, p99 time.Duration // one handshake
}

// startAgents runs n agents in a child process and waits until all have a
// session; stop closes them and waits for the child.
func startAgents(b *testing.B, url string, n int) (childResult, func()) {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), benchChildEnv+"=1", benchChildURLEnv+"="+url, benchChildNEnv+"="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	stop := func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) != 4 || f[0] != benchChildReadyLine {
		_ = cmd.Process.Kill()
		stop()
		b.Fatalf("agents child: %q, %v", line, err)
	}
	var r childResult
	for i, d := range []*time.Duration{&r.elapsed, &r.p50, &r.p99} {
		v, _ := strconv.ParseInt(f[i+1], 10, 64)
		*d = time.Duration(v)
	}
	return r, stop
}

func benchHub(b *testing.B, n int) (*Hub, string) {
	b.Helper()
	if err := raiseFDLimit(uint64(n) + 256); err != nil {
		b.Fatal(err)
	}
	h := New(Options{
		Registry: newBenchRegistry(n),
		// Idle agents: no pings or deadlines firing during the measurement.
		HeartbeatInterval: 10 * time.Minute,
	})
	srv := httptest.NewUnstartedServer(h)
	if benchTLS() {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	b.Cleanup(func() {
		h.Close()
		srv.Close()
	})
	return h, "ws" + strings.TrimPrefix(srv.URL, "http") + protocol.Path
}

func benchTLS() bool { return os.Getenv("HUB_BENCH_TLS") == "1" }

// vmRSS is this process's resident set (VmRSS), in bytes.
func vmRSS(b *testing.B) int64 {
	st, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, l := range strings.Split(string(st), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	b.Fatal("no VmRSS in /proc/self/status")
	return 0
}

func waitConnected(b *testing.B, h *Hub, n int) {
	b.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for h.Connected() != n {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d agents connected", h.Connected(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func writeHeapProfile(b *testing.B, path string) {
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	if err := pprof.WriteHeapProfile(f); err != nil {
		b.Fatal(err)
	}
}

func heapStack() (heap, stack uint64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse, ms.StackInuse
}

// BenchmarkIdleConnectionMemory reports the hub's heap+stack per idle,
// authenticated agent session (B/conn), plus the split and goroutines/conn.
func BenchmarkIdleConnectionMemory(b *testing.B) {
	n := benchAgents(b)
	h, url := benchHub(b, n)
	for range b.N {
		heap0, stack0 := heapStack()
		debug.FreeOSMemory()
		rss0 := vmRSS(b)
		g0 := runtime.NumGoroutine()
		_, stop := startAgents(b, url, n)
		waitConnected(b, h, n)
		heap1, stack1 := heapStack()
		// What the kernel sees, after a GC (heapStack ran two) with the
		// freed pages left to the runtime's scavenger as in production;
		// so it includes the GC's headroom and the runtime's spare spans.
		rss1 := vmRSS(b)
		g1 := runtime.NumGoroutine()
		if path := os.Getenv("HUB_BENCH_HEAPPROFILE"); path != "" {
			writeHeapProfile(b, path)
		}
		b.ReportMetric(float64(int64(heap1+stack1)-int64(heap0+stack0))/float64(n), "B/conn")
		b.ReportMetric(float64(int64(heap1)-int64(heap0))/float64(n), "heap-B/conn")
		b.ReportMetric(float64(int64(stack1)-int64(stack0))/float64(n), "stack-B/conn")
		b.ReportMetric(float64(g1-g0)/float64(n), "goroutines/conn")
		b.ReportMetric(float64(rss1-rss0)/float64(n), "RSS-B/conn")
		stop()
		waitConnected(b, h, 0)
	}
	b.ReportMetric(float64(n), "agents")
}

// BenchmarkHandshakeRate reports agents/s completing dial → challenge →
// signed hello → welcome, 64 at a time, and one handshake's p50/p99. The
// agents' side (signing, dialing) shares the CPUs with the hub.
func BenchmarkHandshakeRate(b *testing.B) {
	n := benchAgents(b)
	h, url := benchHub(b, n)
	var total time.Duration
	var last childResult
	for range b.N {
		r, stop := startAgents(b, url, n)
		waitConnected(b, h, n)
		total += r.elapsed
		last = r
		stop()
		waitConnected(b, h, 0)
	}
	b.ReportMetric(float64(n*b.N)/total.Seconds(), "agents/s")
	b.ReportMetric(float64(last.p50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(last.p99.Microseconds()), "p99-µs")
	b.ReportMetric(float64(n), "agents")
}

// benchChild is the agents' process: dial n sessions, print
// "ready <elapsed> <p50> <p99>" (ns), keep them open (answering pings)
// until stdin closes.
func benchChild() int {
	url := os.Getenv(benchChildURLEnv)
	n, _ := strconv.Atoi(os.Getenv(benchChildNEnv))
	if err := raiseFDLimit(uint64(n) + 256); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	keys := make([]ed25519.PrivateKey, n)
	for i := range n {
		keys[i] = benchKey(i)
	}
	dialer := &websocket.Dialer{ReadBufferSize: 1024, WriteBufferSize: 1024, HandshakeTimeout: time.Minute,
		// The benchmark's own loopback server, httptest's certificate.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}} //nolint:gosec // loopback benchmark
	conns := make([]*websocket.Conn, n)
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for range benchChildWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || failed.Load() != nil {
					return
				}
				t0 := time.Now()
				c, err := benchHandshake(dialer, url, i, keys[i])
				if err != nil {
					failed.Store(err)
					return
				}
				lat[i] = time.Since(t0)
				conns[i] = c
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := failed.Load(); err != nil {
		fmt.Fprintln(os.Stderr, "agent handshake:", err)
		return 1
	}
	for _, c := range conns {
		go func() {
			for {
				if _, _, err := c.ReadMessage(); err != nil {
					return
				}
			}
		}()
	}
	slices.Sort(lat)
	fmt.Printf("%s %d %d %d\n", benchChildReadyLine, elapsed, lat[n/2], lat[n*99/100])
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		_ = c.Close()
	}
	return 0
}

func benchHandshake(d *websocket.Dialer, url string, i int, key ed25519.PrivateKey) (*websocket.Conn, error) {
	c, _, err := d.Dial(url, nil)
	if err != nil {
		return nil, err
	}
	_, b, err := c.ReadMessage()
	var ch protocol.Challenge
	if err == nil {
		var e protocol.Envelope
		if e, err = protocol.Decode(b); err == nil {
			err = protocol.DecodeData(e, &ch)
		}
	}
	if err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("challenge: %w", err)
	}
	id := benchID(i)
	b, _ = protocol.Encode(protocol.TypeHello, protocol.Hello{
		ServerID: id, Mode: protocol.ModeAuth, PublicKey: key.Public().(ed25519.PublicKey),
		Signature: ed25519.Sign(key, protocol.SignedMessage(ch.Nonce, id)), AgentVersion: "bench",
	})
	if err := c.WriteMessage(websocket.TextMessage, b); err != nil {
		_ = c.Close()
		return nil, err
	}
	_, b, err = c.ReadMessage()
	if err != nil || !strings.Contains(string(b), `"welcome"`) {
		_ = c.Close()
		return nil, fmt.Errorf("welcome: %q %w", b, err)
	}
	return c, nil
}
