package benchscale

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver

	"github.com/devpilot/devpilot/controlplane/tcplb"
)

// startReplicas starts the control planes: the first alone (it makes the
// TLS files, the keyring and the owner token), then the others with
// copies of them, as every control plane of a database shares them; with
// more than one, the balancers first.
func (r *run) startReplicas(ctx context.Context) error {
	if len(r.cps) > 1 {
		if err := r.startBalancers(ctx); err != nil {
			return err
		}
	}
	if err := r.startReplica(ctx, r.cps[0]); err != nil {
		return err
	}
	for _, rp := range r.cps[1:] {
		for _, f := range []string{"keyring.json", "owner.token", "tls/ca.crt", "tls/ca.key", "tls/server.crt", "tls/server.key"} {
			if err := copyFile(filepath.Join(r.cps[0].dir, f), filepath.Join(rp.dir, f)); err != nil {
				return err
			}
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, len(r.cps))
	for _, rp := range r.cps[1:] {
		wg.Add(1)
		go func() { defer wg.Done(); errs[rp.k] = r.startReplica(ctx, rp) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	if len(r.cps) > 1 {
		r.logf("%d control planes ready (serve --mode active), agents through %d balancers", len(r.cps), len(r.lbs))
	}
	return nil
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o600)
}

// startBalancers starts one `devpilot-bench lb` process per load
// generator (each holds two files per agent: under the 20,000-file limit
// at the default 5,000 agents a process), in front of every replica's
// agent listener.
func (r *run) startBalancers(ctx context.Context) error {
	var backends []string
	for _, rp := range r.cps {
		backends = append(backends, fmt.Sprintf("127.0.0.1:%d", rp.agPort))
	}
	n := (r.c.Agents + r.c.PerProcess - 1) / r.c.PerProcess
	for range n {
		port, err := freePort()
		if err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, r.c.Self, "lb", "--listen", fmt.Sprintf("127.0.0.1:%d", port),
			"--backends", strings.Join(backends, ","))
		cmd.Stderr = r.c.Log
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		p := &proc{cmd: cmd, done: make(chan struct{})}
		go func() { _ = cmd.Wait(); close(p.done) }()
		r.lbs = append(r.lbs, p)
		r.lbPorts = append(r.lbPorts, port)
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && strings.TrimSpace(line) != "ready" {
			err = fmt.Errorf("it said %q, not ready", line)
		}
		if err != nil {
			return fmt.Errorf("bench: balancer on port %d did not start: %w", port, err)
		}
		go func() { _, _ = io.Copy(io.Discard, out) }()
	}
	return nil
}

// RunLB is `devpilot-bench lb`: a balancer on listen in front of
// backends until ctx ends; it prints "ready" once listening.
func RunLB(ctx context.Context, listen string, backends []string, out io.Writer) error {
	lb, err := tcplb.Listen(listen, backends)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "ready")
	<-ctx.Done()
	return lb.Close()
}

// heldBy lists the agent indexes whose sessions replica rp holds (from
// servers.session_holder, rp named by its devpilot_cluster_self).
func (r *run) heldBy(ctx context.Context, rp *replica) ([]int, error) {
	m, err := r.metricsOf(rp)
	if err != nil {
		return nil, err
	}
	self := ""
	for k := range m {
		if strings.HasPrefix(k, "devpilot_cluster_self{") {
			self = label(k)
		}
	}
	if self == "" {
		return nil, fmt.Errorf("bench: replica %d reports no devpilot_cluster_self", rp.k)
	}
	db, err := sql.Open("pgx", r.c.Database)
	if err != nil {
		return nil, err
	}
	defer func() { _ = db.Close() }()
	rows, err := db.QueryContext(ctx, `SELECT id FROM servers WHERE session_holder = $1`, self)
	if err != nil {
		return nil, err
	}
	defer func() { _ = rows.Close() }()
	var out []int
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		if i, err := strconv.Atoi(strings.TrimPrefix(id, "srv_bench")); err == nil && i < r.c.Agents {
			out = append(out, i)
		}
	}
	return out, rows.Err()
}

// stormReplicas SIGKILLs replica 0 (the first started: it runs the jobs)
// and does not restart it: its agents redial through the balancers, which
// skip it, and land on the others. Measured from the kill: when 99% and
// all of the agents are connected again, the tasks submitted right after
// the kill to the killed replica's agents (delivered once each?), and
// /healthz of the survivors throughout.
func (r *run) stormReplicas(ctx context.Context) (StormReport, error) {
	var s StormReport
	victim := r.cps[0]
	held, err := r.heldBy(ctx, victim)
	if err != nil {
		return s, err
	}
	if len(held) == 0 {
		return s, fmt.Errorf("bench: replica 0 holds no agent session")
	}
	r.logf("storm: replica 0 holds %d of %d agents", len(held), r.c.Agents)
	s.Moved = len(held)
	r.takeFailures()
	victim.dead = true // from now on the samples are the survivors'
	atKill, err := r.sample()
	if err != nil {
		return s, err
	}
	killed := time.Now()
	_ = victim.p.cmd.Process.Signal(syscall.SIGKILL)
	<-victim.p.done
	hctx, stopHealthz := context.WithCancel(ctx)
	hdone := make(chan struct{})
	go func() { defer close(hdone); r.pollHealthz(hctx, &s) }()

	subs := make([]*stormTask, r.c.StormTasks)
	for k := range subs {
		subs[k] = &stormTask{idx: held[rand.IntN(len(held))]}
	}
	wg := r.submitStorm(ctx, subs)

	r.waitBack(ctx, killed, &s)
	if back, err := r.sample(); err == nil {
		w := back.at.Sub(killed).Seconds()
		s.HandshakesPerS = (back.handshakes - atKill.handshakes) / w
		s.ServeCores = (back.cpu - atKill.cpu).Seconds() / w
		s.LoadCores = (back.loadCPU - atKill.loadCPU).Seconds() / w
	}
	wg.Wait()
	stopHealthz()
	<-hdone
	if end, err := r.sample(); err == nil {
		s.Refusals = end.refusals
	}
	s.AgentFailures = r.takeFailures()
	r.tallyStorm(&s, subs, killed)
	return s, nil
}
