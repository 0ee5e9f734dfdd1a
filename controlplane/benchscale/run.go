package benchscale

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/devpilot/devpilot/controlplane/tlsauto"
	"github.com/devpilot/devpilot/shared/tlspin"
)

// Config is one benchmark run.
type Config struct {
	Bin      string // bin/devpilot
	Self     string // this executable, started as the load generators
	DataDir  string // "" : a temporary directory, removed afterwards
	Database string // "" SQLite, or postgres://
	Servers  int    // seeded servers (default 100,000)
	Agents   int    // agents connected (default min(Servers, 19,500))
	// PerProcess agents per load-generator process (each under its
	// 20,000 open files; default 5,000), each on its own loopback source
	// address 127.0.0.2, .3, …
	PerProcess int
	Ramp       time.Duration // the first dials spread over this (default 20 s)
	Idle       time.Duration // heartbeat window measured (default 30 s)
	Tasks      int           // dispatch samples per client count (default 200)
	StormTasks int           // tasks submitted right after the restart (default 200)
	Heartbeat  time.Duration // the hub's heartbeat interval (default 15 s, the product's)
	Timeout    time.Duration // the longest any wait may take (default 5 min)
	// Replicas control planes (default 1). More than one: `serve --mode
	// active` on one PostgreSQL, the agents dialing through loopback TCP
	// balancers (one `devpilot-bench lb` process per load generator, each
	// under the open-file limit) that spread them over every replica; the
	// storm SIGKILLs the one running the jobs and measures its agents'
	// move to the others (see replicas.go).
	Replicas int
	Out      io.Writer // the report (text)
	Log      io.Writer // progress lines
}

// Report is what Run measured.
type Report struct {
	Servers, Agents, Processes int
	Connected                  int     // agents connected at once
	RSSPerAgentKB              float64 // (RSS with agents − RSS before) / agents
	RSSMB                      float64
	// What the Go runtime says it holds for the agents, per agent
	// (go_memstats_*, with agents − before): heap spans in use, goroutine
	// stacks. RSS − both is GC headroom, freed memory not yet returned to
	// the kernel, and the runtime's own.
	HeapPerAgentKB, StackPerAgentKB float64
	HandshakeCPUms                  float64        // serve CPU / handshakes, from the start until 95% connected
	LoadHandshakeCPUms              float64        // the load generators' CPU / handshakes, the same window
	Handshakes                      int            // in that window
	ConnectS, Connect95S            float64        // start → all connected, → 95%
	ConnectFailures                 map[string]int // failed attempts the agents saw in the connect phase, by kind
	HeartbeatsPerS                  float64
	HeartbeatCores                  float64 // serve CPU (cores) during the idle window
	LoadHeartbeatCores              float64 // the load generators' CPU (cores), the same window
	// Sessions lost while idle (settling interval and idle window): the
	// agents' failed attempts by kind and serve's handshakes meanwhile.
	// An idle fleet should lose none.
	IdleFailures         map[string]int
	IdleHandshakes       int
	Dispatch1, Dispatch8 Latency // accepted → first output
	Storm                StormReport
}

// Latency is a distribution in milliseconds.
type Latency struct {
	N             int
	P50, P99, Max float64
	Lost          int // no output within the timeout
}

// StormReport is what the SIGKILL + restart measured.
type StormReport struct {
	ReadyAfterS       float64            // kill → /readyz 200
	Back99S, Back100S float64            // ready → 99% / 100% connected (-1: not within the timeout)
	Back              int                // connected at the end
	Refusals          map[string]float64 // by reason (devpilot_hub_auth_failures_total, busy causes)
	AgentFailures     map[string]int     // failed attempts the agents saw, by kind (down time included)
	// From ready until every agent is back: the handshakes the restarted
	// serve completed per second, and the CPU (cores) of serve and of
	// the load generators meanwhile (on one machine they share it).
	HandshakesPerS, ServeCores, LoadCores float64
	HealthzFailures                       int // /healthz polls (every 250 ms) that failed or took > 1 s
	HealthzPolls                          int
	HealthzMaxMS                          float64
	Tasks                                 Latency // accepted → first output
	AfterAgentMaxS                        float64 // task delivered − max(accepted, its agent's welcome), worst case
	Delivered                             int     // tasks delivered
	DeliveredTwice                        int
	// Replicas > 1: the killed replica's agents, which moved (there is no
	// restart: ReadyAfterS is 0, Back99S and Back100S count from the kill).
	Moved int
}

func (c *Config) defaults() {
	if c.Servers <= 0 {
		c.Servers = 100_000
	}
	if c.Agents <= 0 {
		c.Agents = min(c.Servers, 19_500)
	}
	c.Agents = min(c.Agents, c.Servers)
	if c.PerProcess <= 0 {
		c.PerProcess = 5000
	}
	c.PerProcess = min(c.PerProcess, 19_000)
	if c.Ramp <= 0 {
		c.Ramp = 20 * time.Second
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 15 * time.Second
	}
	if c.Idle <= 0 {
		c.Idle = 30 * time.Second
	}
	// Shorter than an interval, the window could miss every heartbeat.
	c.Idle = max(c.Idle, c.Heartbeat)
	if c.Tasks <= 0 {
		c.Tasks = 200
	}
	if c.StormTasks <= 0 {
		c.StormTasks = 200
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Minute
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.Out == nil {
		c.Out = os.Stdout
	}
	if c.Log == nil {
		c.Log = os.Stderr
	}
}

// run is the state of one benchmark.
type run struct {
	c        Config
	dir      string
	cps      []*replica    // the control planes; cps[0] serves from dir
	rr       atomic.Uint64 // round robin over the live replicas (api)
	lbs      []*proc       // replicas > 1: the balancers, one per load generator
	lbPorts  []int
	client   *http.Client
	token    string
	pin, pem string

	mu     sync.Mutex
	fails  map[string]int     // failed attempts the agents saw, by kind (failureKind), since the last take
	ups    map[int][]int64    // agent → welcome times
	tasks  map[string][]int64 // task id → delivery times
	waitT  map[string]chan struct{}
	gens   []*exec.Cmd
	genErr chan error
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// replica is one control plane.
type replica struct {
	k               int
	dir             string
	apiPort, agPort int
	p               *proc
	dead            bool // SIGKILLed by the storm, not restarted (replicas > 1)
}

// Run runs the benchmark and writes its report; it stops everything it
// started before returning.
func Run(ctx context.Context, c Config) (Report, error) {
	c.defaults()
	if c.Replicas > 1 && c.Database == "" {
		return Report{}, errors.New("bench: --replicas > 1 needs --database postgres://… (serve --mode active)")
	}
	r := &run{c: c, fails: map[string]int{}, ups: map[int][]int64{}, tasks: map[string][]int64{}, waitT: map[string]chan struct{}{},
		genErr: make(chan error, 64)}
	r.dir = c.DataDir
	if r.dir == "" {
		d, err := os.MkdirTemp("", "devpilot-bench-")
		if err != nil {
			return Report{}, err
		}
		defer func() { _ = os.RemoveAll(d) }()
		r.dir = d
	}
	defer r.stopAll()
	rep := Report{Servers: c.Servers, Agents: c.Agents}

	r.logf("seeding %d enrolled servers", c.Servers)
	t0 := time.Now()
	if err := Seed(ctx, r.dir, c.Database, c.Servers); err != nil {
		return rep, err
	}
	r.logf("seeded in %s", time.Since(t0).Round(time.Millisecond))
	var err error
	for k := range c.Replicas {
		rp := &replica{k: k, dir: r.dir}
		if k > 0 {
			rp.dir = filepath.Join(r.dir, fmt.Sprintf("cp%d", k))
		}
		if rp.apiPort, err = freePort(); err != nil {
			return rep, err
		}
		if rp.agPort, err = freePort(); err != nil {
			return rep, err
		}
		r.cps = append(r.cps, rp)
	}
	if err := r.startReplicas(ctx); err != nil {
		return rep, err
	}
	if err := r.prepareClient(); err != nil {
		return rep, err
	}
	base, err := r.sample()
	if err != nil {
		return rep, err
	}

	// Connect phase.
	rep.Processes = (c.Agents + c.PerProcess - 1) / c.PerProcess
	r.logf("starting %d agents in %d load-generator processes", c.Agents, rep.Processes)
	if err := r.startLoad(ctx, rep.Processes); err != nil {
		return rep, err
	}
	start := time.Now()
	at95, all, err := r.connectPhase(ctx, c.Agents, c.Ramp+c.Timeout)
	if err != nil {
		return rep, err
	}
	rep.Connected = int(all.connected)
	rep.ConnectS, rep.Connect95S = all.at.Sub(start).Seconds(), at95.at.Sub(start).Seconds()
	rep.ConnectFailures = r.takeFailures()
	// Until 95%: the last agents are those that failed an attempt and
	// wait out their backoff, while serve's CPU goes to heartbeats.
	rep.Handshakes = int(at95.handshakes - base.handshakes)
	if rep.Handshakes > 0 {
		rep.HandshakeCPUms = (at95.cpu - base.cpu).Seconds() * 1000 / float64(rep.Handshakes)
		rep.LoadHandshakeCPUms = (at95.loadCPU - base.loadCPU).Seconds() * 1000 / float64(rep.Handshakes)
	}

	// Idle: heartbeats only. Settle one interval first (the ramp's
	// first heartbeats), then measure.
	r.logf("settling %s, then measuring heartbeats for %s", c.Heartbeat, c.Idle)
	if err := sleep(ctx, c.Heartbeat); err != nil {
		return rep, err
	}
	s1, err := r.sample()
	if err != nil {
		return rep, err
	}
	if err := sleep(ctx, c.Idle); err != nil {
		return rep, err
	}
	s2, err := r.sample()
	if err != nil {
		return rep, err
	}
	w := s2.at.Sub(s1.at).Seconds()
	rep.IdleFailures = r.takeFailures()
	rep.IdleHandshakes = int(s2.handshakes - all.handshakes)
	rep.HeartbeatsPerS = (s2.heartbeats - s1.heartbeats) / w
	rep.HeartbeatCores = (s2.cpu - s1.cpu).Seconds() / w
	rep.LoadHeartbeatCores = (s2.loadCPU - s1.loadCPU).Seconds() / w
	rep.RSSMB = float64(s2.rss) / (1 << 20)
	rep.RSSPerAgentKB = float64(s2.rss-base.rss) / 1024 / float64(max(rep.Connected, 1))
	rep.HeapPerAgentKB = (s2.heapInuse - base.heapInuse) / 1024 / float64(max(rep.Connected, 1))
	rep.StackPerAgentKB = (s2.stackInuse - base.stackInuse) / 1024 / float64(max(rep.Connected, 1))

	// Dispatch.
	r.logf("dispatch: %d tasks one client at a time, then %d with 8 clients", c.Tasks, c.Tasks)
	rep.Dispatch1 = r.dispatch(ctx, 1, c.Tasks)
	rep.Dispatch8 = r.dispatch(ctx, 8, c.Tasks)

	// Storm.
	if c.Replicas > 1 {
		r.logf("storm: SIGKILL the control plane running the jobs; its agents move to the others")
		rep.Storm, err = r.stormReplicas(ctx)
	} else {
		r.logf("storm: SIGKILL the control plane and restart it")
		rep.Storm, err = r.storm(ctx)
	}
	if err != nil {
		return rep, err
	}
	rep.Write(c.Out, c)
	return rep, nil
}

func (r *run) logf(format string, args ...any) {
	fmt.Fprintf(r.c.Log, "%s bench: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// startReplica starts replica rp's `devpilot serve` and waits for /readyz.
func (r *run) startReplica(ctx context.Context, rp *replica) error {
	log, err := os.OpenFile(filepath.Join(rp.dir, "serve.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	public := rp.agPort
	if len(r.cps) > 1 {
		public = r.lbPorts[0] // the balancers: any of them names the same replicas
	}
	args := []string{"serve", "--data-dir", rp.dir, "--listen", fmt.Sprintf("127.0.0.1:%d", rp.apiPort),
		"--agent-listen", fmt.Sprintf("127.0.0.1:%d", rp.agPort),
		"--public-url", fmt.Sprintf("https://127.0.0.1:%d", public), "--log-level", "warn",
		"--heartbeat-interval", r.c.Heartbeat.String()}
	if len(r.cps) > 1 {
		args = append(args, "--mode", "active")
	}
	cmd := exec.Command(r.c.Bin, args...)
	if r.c.Database != "" {
		// Not --database: serve refuses a URL with a password in its argv,
		// which any user can read in the process list.
		cmd.Env = append(os.Environ(), "DEVPILOT_DATABASE="+r.c.Database)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return fmt.Errorf("start %s: %w", r.c.Bin, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); _ = log.Close(); close(p.done) }()
	rp.p = p
	return r.waitReady(ctx, rp)
}

func (r *run) waitReady(ctx context.Context, rp *replica) error {
	deadline := time.Now().Add(r.c.Timeout)
	for time.Now().Before(deadline) {
		select {
		case <-rp.p.done:
			return fmt.Errorf("devpilot serve exited: see %s", filepath.Join(rp.dir, "serve.log"))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if r.client == nil {
			if r.prepareClient() != nil {
				continue
			}
		}
		resp, err := r.client.Get(r.apiOf(rp, "/readyz"))
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
	}
	return errors.New("devpilot serve not ready within the timeout")
}

// prepareClient reads the CA and the owner token from the data dir.
func (r *run) prepareClient() error {
	caPEM, err := os.ReadFile(filepath.Join(r.cps[0].dir, "tls", tlsauto.CACertFile))
	if err != nil {
		return err
	}
	tok, err := os.ReadFile(filepath.Join(r.cps[0].dir, "owner.token"))
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return errors.New("bench: no CA certificate in the data dir")
	}
	der, err := pemDecode(caPEM)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	r.pem, r.pin = string(caPEM), tlspin.PinOf(ca)
	r.token = strings.TrimSpace(string(tok))
	r.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, MaxIdleConnsPerHost: 32}}
	return nil
}

// api is path on the next live replica (round robin, as a balancer in
// front of their APIs would spread requests).
func (r *run) api(path string) string {
	live := r.live()
	return r.apiOf(live[int(r.rr.Add(1))%len(live)], path)
}

func (r *run) apiOf(rp *replica, path string) string {
	return fmt.Sprintf("https://127.0.0.1:%d%s", rp.apiPort, path)
}

// live is the replicas the storm did not kill.
func (r *run) live() []*replica {
	var out []*replica
	for _, rp := range r.cps {
		if !rp.dead {
			out = append(out, rp)
		}
	}
	return out
}

// startLoad starts the load-generator processes and reads their events.
func (r *run) startLoad(ctx context.Context, n int) error {
	for k := range n {
		from := k * r.c.PerProcess
		to := min(from+r.c.PerProcess, r.c.Agents)
		port := r.cps[0].agPort
		if len(r.cps) > 1 {
			port = r.lbPorts[k]
		}
		cmd := exec.Command(r.c.Self, "loadgen", "--url", fmt.Sprintf("https://127.0.0.1:%d", port),
			"--from", strconv.Itoa(from), "--to", strconv.Itoa(to), "--source", fmt.Sprintf("127.0.0.%d", 2+k),
			"--ramp", r.c.Ramp.String())
		cmd.Env = append(os.Environ(), "DEVPILOT_BENCH_CA_PIN="+r.pin, "DEVPILOT_BENCH_CA_PEM="+r.pem)
		cmd.Stderr = r.c.Log
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		r.gens = append(r.gens, cmd)
		go r.readEvents(out)
	}
	return nil
}

func (r *run) readEvents(out io.Reader) {
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		switch {
		case len(f) == 3 && f[0] == eventUp:
			i, _ := strconv.Atoi(f[1])
			t, _ := strconv.ParseInt(f[2], 10, 64)
			r.mu.Lock()
			r.ups[i] = append(r.ups[i], t)
			r.mu.Unlock()
		case len(f) == 3 && f[0] == eventFail:
			r.mu.Lock()
			r.fails[f[1]]++
			r.mu.Unlock()
		case len(f) == 4 && f[0] == eventTask:
			t, _ := strconv.ParseInt(f[3], 10, 64)
			r.mu.Lock()
			r.tasks[f[1]] = append(r.tasks[f[1]], t)
			r.mu.Unlock()
		}
	}
}

// counts is "kind n, …" by kind, or "none".
func counts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// takeFailures returns the agents' failed attempts counted since the last
// call.
func (r *run) takeFailures() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.fails
	r.fails = map[string]int{}
	return f
}

// stopAll ends the load generators and the control plane.
func (r *run) stopAll() {
	for _, g := range r.gens {
		_ = g.Process.Signal(syscall.SIGTERM)
	}
	for _, g := range r.gens {
		done := make(chan struct{})
		go func() { _ = g.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = g.Process.Kill()
			<-done
		}
	}
	for _, rp := range r.cps {
		if rp.p == nil {
			continue
		}
		_ = rp.p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, rp := range r.cps {
		if rp.p == nil {
			continue
		}
		select {
		case <-rp.p.done:
		case <-time.After(60 * time.Second):
			_ = rp.p.cmd.Process.Kill()
			<-rp.p.done
		}
	}
	for _, lb := range r.lbs {
		_ = lb.cmd.Process.Kill()
		<-lb.done
	}
}

// sample is the control plane's counters at one moment.
type sample struct {
	at                    time.Time
	cpu                   time.Duration
	rss                   int64
	connected, heartbeats float64
	heapInuse, stackInuse float64       // bytes
	loadCPU               time.Duration // the load generators' CPU, all together
	handshakes            float64       // welcomed + refused
	refusals              map[string]float64
}

func (r *run) sample() (sample, error) {
	s := sample{at: time.Now(), refusals: map[string]float64{}}
	for _, rp := range r.live() {
		cpu, rss, err := procStat(rp.p.cmd.Process.Pid)
		if err != nil {
			return s, err
		}
		s.cpu += cpu
		s.rss += rss
	}
	s.loadCPU = r.loadCPU()
	m, err := r.metrics()
	if err != nil {
		return s, err
	}
	s.connected = m["devpilot_hub_agents_connected"]
	s.heapInuse, s.stackInuse = m["go_memstats_heap_inuse_bytes"], m["go_memstats_stack_inuse_bytes"]
	s.heartbeats = m["devpilot_hub_heartbeats_total"]
	for k, v := range m {
		switch {
		case strings.HasPrefix(k, "devpilot_hub_auth_failures_total{"):
			s.refusals[label(k)] += v
			s.handshakes += v
		case strings.HasPrefix(k, "devpilot_hub_busy_refusals_total{"):
			s.refusals["busy: "+label(k)] += v
		}
	}
	s.handshakes += m["devpilot_hub_sessions_total"]
	return s, nil
}

func label(k string) string {
	i, j := strings.IndexByte(k, '"'), strings.LastIndexByte(k, '"')
	if i < 0 || j <= i {
		return k
	}
	return k[i+1 : j]
}

// metrics scrapes every live replica's /metrics into name{labels} →
// value, summed over them.
func (r *run) metrics() (map[string]float64, error) {
	m := map[string]float64{}
	for _, rp := range r.live() {
		one, err := r.metricsOf(rp)
		if err != nil {
			return nil, err
		}
		for k, v := range one {
			m[k] += v
		}
	}
	return m, nil
}

// metricsOf scrapes one replica's /metrics.
func (r *run) metricsOf(rp *replica) (map[string]float64, error) {
	resp, err := r.client.Get(r.apiOf(rp, "/metrics"))
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || !strings.HasPrefix(line, "devpilot_") && !strings.HasPrefix(line, "go_memstats_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, sc.Err()
}

// loadCPU is the load generators' CPU time (user+system) so far.
func (r *run) loadCPU() time.Duration {
	var sum time.Duration
	for _, g := range r.gens {
		if cpu, _, err := procStat(g.Process.Pid); err == nil {
			sum += cpu
		}
	}
	return sum
}

// procStat is a process's CPU time (user+system) and RSS.
func procStat(pid int) (time.Duration, int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	// Fields after the name: state is f[0]; utime, stime are 14, 15 (f[11], f[12]); rss pages 24 (f[21]).
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	rss, _ := strconv.ParseInt(f[21], 10, 64)
	const hz = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / hz, rss * int64(os.Getpagesize()), nil
}

// scrapeEvery is how often the benchmark reads /metrics while it waits
// for agents: often enough for the times it reports (seconds), seldom
// enough not to load the control plane it measures. At 4 scrapes a second
// the scrapes took a tenth of serve's CPU in the connect phase.
const scrapeEvery = time.Second

// connectPhase samples until n agents are connected; it returns the
// first sample with 95% of them and the one with all.
func (r *run) connectPhase(ctx context.Context, n int, timeout time.Duration) (at95, all sample, err error) {
	deadline := time.Now().Add(timeout)
	for {
		s, err := r.sample()
		if err == nil {
			if at95.at.IsZero() && int(s.connected)*100 >= n*95 {
				at95 = s
			}
			if int(s.connected) >= n {
				return at95, s, nil
			}
		}
		if time.Now().After(deadline) {
			return at95, s, fmt.Errorf("bench: %v of %d agents connected after %s", s.connected, n, timeout)
		}
		if err := sleep(ctx, scrapeEvery); err != nil {
			return at95, s, err
		}
	}
}

// submit creates an exec task for agent i's server and returns its id
// and when the API accepted it.
func (r *run) submit(i int) (string, time.Time, error) {
	body := `{"kind":"exec","argv":["/bin/true"],"timeout_s":60}`
	req, _ := http.NewRequest(http.MethodPost, r.api("/v1/workspaces/default/servers/"+ServerID(i)+"/tasks"), strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+r.token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return "", time.Time{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	at := time.Now()
	var out struct {
		ID string `json:"id"`
	}
	if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusCreated {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return "", at, fmt.Errorf("create task: %s: %s", resp.Status, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return "", at, err
	}
	return out.ID, at, nil
}

// firstOutput follows a task's log until its first chunk.
func (r *run) firstOutput(ctx context.Context, id string, timeout time.Duration) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.api("/v1/workspaces/default/tasks/"+id+"/logs?follow=1"), nil)
	req.Header.Set("Authorization", "Bearer "+r.token)
	c := *r.client
	c.Timeout = 0
	resp, err := c.Do(req)
	if err != nil {
		return time.Time{}, err
	}
	defer func() { _ = resp.Body.Close() }()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if sc.Text() == "event: log" {
			return time.Now(), nil
		}
	}
	return time.Time{}, fmt.Errorf("task %s: no output", id)
}

// dispatch measures accepted → first output for n tasks on random
// connected agents, with clients concurrent clients.
func (r *run) dispatch(ctx context.Context, clients, n int) Latency {
	var mu sync.Mutex
	var ms []float64
	lost := 0
	work := make(chan int)
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				i := rand.IntN(r.c.Agents)
				// Follow first, so the first chunk can't be missed, then submit.
				id, at, err := r.submit(i)
				var got time.Time
				if err == nil {
					got, err = r.firstOutput(ctx, id, 30*time.Second)
				}
				mu.Lock()
				if err != nil {
					lost++
				} else {
					ms = append(ms, float64(got.Sub(at).Microseconds())/1000)
				}
				mu.Unlock()
			}
		}()
	}
	for k := range n {
		select {
		case work <- k:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	return latency(ms, lost)
}

func latency(ms []float64, lost int) Latency {
	l := Latency{N: len(ms), Lost: lost}
	if len(ms) == 0 {
		return l
	}
	slices.Sort(ms)
	q := func(p float64) float64 { return ms[min(len(ms)-1, int(p*float64(len(ms))))] }
	l.P50, l.P99, l.Max = q(0.50), q(0.99), ms[len(ms)-1]
	return l
}

// storm SIGKILLs the control plane, restarts it and measures the return.
func (r *run) storm(ctx context.Context) (StormReport, error) {
	var s StormReport
	r.takeFailures() // the idle and dispatch phases'
	killed := time.Now()
	cp := r.cps[0]
	_ = cp.p.cmd.Process.Signal(syscall.SIGKILL)
	<-cp.p.done
	// /healthz is polled from the restart on, every 250 ms.
	hctx, stopHealthz := context.WithCancel(ctx)
	hdone := make(chan struct{})
	if err := r.startReplica(ctx, cp); err != nil {
		stopHealthz()
		return s, err
	}
	ready := time.Now()
	s.ReadyAfterS = ready.Sub(killed).Seconds()
	go func() { defer close(hdone); r.pollHealthz(hctx, &s) }()

	// Tasks for servers whose agents are (mostly) not back yet.
	subs := make([]*stormTask, r.c.StormTasks)
	for k := range subs {
		subs[k] = &stormTask{idx: rand.IntN(r.c.Agents)}
	}
	wg := r.submitStorm(ctx, subs)

	atReady, err := r.sample()
	if err != nil {
		stopHealthz()
		return s, err
	}
	r.waitBack(ctx, ready, &s)
	if back, err := r.sample(); err == nil {
		w := back.at.Sub(atReady.at).Seconds()
		s.HandshakesPerS = (back.handshakes - atReady.handshakes) / w
		s.ServeCores = (back.cpu - atReady.cpu).Seconds() / w
		s.LoadCores = (back.loadCPU - atReady.loadCPU).Seconds() / w
	}
	wg.Wait()
	stopHealthz()
	<-hdone

	end, err := r.sample()
	if err == nil {
		s.Refusals = end.refusals
	}
	s.AgentFailures = r.takeFailures()
	r.tallyStorm(&s, subs, killed)
	return s, nil
}

// waitBack samples until every agent is connected (or the timeout from
// from passed), recording in s when 99% and all were, in seconds from from.
func (r *run) waitBack(ctx context.Context, from time.Time, s *StormReport) {
	s.Back99S, s.Back100S = -1, -1
	deadline := from.Add(r.c.Timeout)
	for time.Now().Before(deadline) {
		m, err := r.metrics()
		if err == nil {
			n := int(m["devpilot_hub_agents_connected"])
			s.Back = n
			if s.Back99S < 0 && n*100 >= r.c.Agents*99 {
				s.Back99S = time.Since(from).Seconds()
			}
			if n >= r.c.Agents {
				s.Back100S = time.Since(from).Seconds()
				return
			}
		}
		if err := sleep(ctx, scrapeEvery); err != nil {
			return
		}
	}
}

// pollHealthz polls /healthz (of the live replicas in turn) every 250 ms
// until ctx ends, counting into s.
func (r *run) pollHealthz(ctx context.Context, s *StormReport) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		t0 := time.Now()
		resp, err := r.client.Get(r.api("/healthz"))
		d := time.Since(t0)
		if err == nil {
			_ = resp.Body.Close()
		}
		s.HealthzPolls++
		s.HealthzMaxMS = max(s.HealthzMaxMS, float64(d.Microseconds())/1000)
		if err != nil || resp.StatusCode != http.StatusOK || d > time.Second {
			s.HealthzFailures++
		}
	}
}

// stormTask is one task submitted during a storm.
type stormTask struct {
	id  string
	idx int
	at  time.Time
	out time.Time
	err error
}

// submitStorm submits the tasks at once (8 clients), each then followed
// on its own, so every task is accepted while the storm is on; the
// returned group ends when every task has output or gave up.
func (r *run) submitStorm(ctx context.Context, subs []*stormTask) *sync.WaitGroup {
	var wg sync.WaitGroup
	work := make(chan *stormTask)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range work {
				t.id, t.at, t.err = r.submit(t.idx)
				if t.err == nil {
					wg.Add(1)
					go func() {
						defer wg.Done()
						t.out, t.err = r.firstOutput(ctx, t.id, r.c.Timeout)
					}()
				}
			}
		}()
	}
	go func() {
		for _, t := range subs {
			work <- t
		}
		close(work)
	}()
	return &wg
}

// tallyStorm counts the storm's tasks: output latency, deliveries (once,
// twice) and the delay after their agent's return.
func (r *run) tallyStorm(s *StormReport, subs []*stormTask, killed time.Time) {
	var ms []float64
	lost := 0
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range subs {
		if t == nil || t.err != nil {
			lost++
			continue
		}
		ms = append(ms, float64(t.out.Sub(t.at).Microseconds())/1000)
		deliveries := r.tasks[t.id]
		if len(deliveries) > 0 {
			s.Delivered++
		}
		if len(deliveries) > 1 {
			s.DeliveredTwice++
		}
		// The agent's return: its last welcome before the delivery.
		var back int64
		for _, u := range r.ups[t.idx] {
			if len(deliveries) > 0 && u <= deliveries[0] {
				back = max(back, u)
			}
		}
		// From the later of its acceptance and its agent's return.
		from := max(back, t.at.UnixNano())
		if back >= killed.UnixNano() && len(deliveries) > 0 {
			s.AfterAgentMaxS = max(s.AfterAgentMaxS, float64(deliveries[0]-from)/1e9)
		}
	}
	s.Tasks = latency(ms, lost)
}

// Write prints the report for people.
func (rep Report) Write(w io.Writer, c Config) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("devpilot bench-scale: %d servers seeded, %d agents in %d load-generator processes, heartbeat %s, %d replica(s) (%s)",
		rep.Servers, rep.Agents, rep.Processes, c.Heartbeat, c.Replicas, dbName(c.Database))
	p("  agents connected at once        %d", rep.Connected)
	p("  serve RSS                       %.0f MB, %.1f KB per agent (above the RSS before agents)", rep.RSSMB, rep.RSSPerAgentKB)
	p("    of which Go heap, stacks      %.1f KB, %.1f KB per agent (in use; the rest: GC headroom, freed pages)", rep.HeapPerAgentKB, rep.StackPerAgentKB)
	p("  connect phase                   95%% in %.1f s, all in %.1f s; agents' failed attempts: %s", rep.Connect95S, rep.ConnectS, counts(rep.ConnectFailures))
	p("  handshake CPU                   %.2f ms per handshake (%d handshakes until 95%% connected); the load generators' %.2f ms", rep.HandshakeCPUms, rep.Handshakes, rep.LoadHandshakeCPUms)
	p("  heartbeats                      %.0f/s costing %.2f cores (idle window); the load generators' %.2f cores", rep.HeartbeatsPerS, rep.HeartbeatCores, rep.LoadHeartbeatCores)
	p("  sessions lost while idle        %d handshakes; agents' failed attempts: %s", rep.IdleHandshakes, counts(rep.IdleFailures))
	p("  dispatch, 1 client              p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d tasks, %d without output)", rep.Dispatch1.P50, rep.Dispatch1.P99, rep.Dispatch1.Max, rep.Dispatch1.N, rep.Dispatch1.Lost)
	p("  dispatch, 8 clients             p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d tasks, %d without output)", rep.Dispatch8.P50, rep.Dispatch8.P99, rep.Dispatch8.Max, rep.Dispatch8.N, rep.Dispatch8.Lost)
	s := rep.Storm
	if c.Replicas > 1 {
		p("  storm: SIGKILL one replica      (the one running the jobs, not restarted) holding %d agents", s.Moved)
		p("  storm: kill → 99%% back          %.1f s (on the other %d replicas)", s.Back99S, c.Replicas-1)
		p("  storm: kill → 100%% back         %.1f s (%d of %d back)", s.Back100S, s.Back, rep.Agents)
	} else {
		p("  storm: SIGKILL → ready          %.1f s", s.ReadyAfterS)
		p("  storm: ready → 99%% back         %.1f s", s.Back99S)
		p("  storm: ready → 100%% back        %.1f s (%d of %d back)", s.Back100S, s.Back, rep.Agents)
	}
	p("  storm: until back               %.0f handshakes/s; serve %.2f cores, the load generators %.2f", s.HandshakesPerS, s.ServeCores, s.LoadCores)
	keys := make([]string, 0, len(s.Refusals))
	for k := range s.Refusals {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var parts []string
	for _, k := range keys {
		if s.Refusals[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", k, s.Refusals[k]))
		}
	}
	if len(parts) == 0 {
		parts = []string{"none"}
	}
	p("  storm: refusals                 %s", strings.Join(parts, ", "))
	p("  storm: agents' failed attempts  %s (the control plane's down time included)", counts(s.AgentFailures))
	p("  storm: /healthz                 %d of %d polls failed or over 1 s, slowest %.0f ms", s.HealthzFailures, s.HealthzPolls, s.HealthzMaxMS)
	p("  storm: tasks                    %d submitted, %d delivered, %d delivered twice, accepted → first output p50 %.2f s, max %.2f s; at most %.2f s after their agent's return",
		s.Tasks.N+s.Tasks.Lost, s.Delivered, s.DeliveredTwice, s.Tasks.P50/1000, s.Tasks.Max/1000, s.AfterAgentMaxS)
}

func dbName(dsn string) string {
	if dsn == "" {
		return "SQLite"
	}
	return "PostgreSQL"
}

func pemDecode(b []byte) ([]byte, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("bench: no certificate in the CA file")
	}
	return blk.Bytes, nil
}
