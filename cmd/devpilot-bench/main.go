// Command devpilot-bench is the scale benchmark (make bench-scale): see
// controlplane/benchscale. `devpilot-bench run` seeds a database, runs
// bin/devpilot serve and the load generators, and prints the report;
// `devpilot-bench loadgen` is one load-generator process and `devpilot-bench
// lb` one loopback TCP balancer in front of several control planes (run
// starts them).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/devpilot/devpilot/controlplane/benchscale"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: devpilot-bench run [flags] | devpilot-bench loadgen [flags] | devpilot-bench lb [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "run":
		err = run(ctx, os.Args[2:])
	case "loadgen":
		err = loadgen(ctx, os.Args[2:])
	case "lb":
		fs := flag.NewFlagSet("lb", flag.ExitOnError)
		listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
		backends := fs.String("backends", "", "comma-separated host:port of the control planes' agent listeners")
		_ = fs.Parse(os.Args[2:])
		err = benchscale.RunLB(ctx, *listen, strings.Split(*backends, ","), os.Stdout)
	default:
		err = fmt.Errorf("unknown command %q: run, loadgen or lb", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "devpilot-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	var c benchscale.Config
	jsonOut := fs.String("json", "", "also write the report as JSON to this file")
	fs.StringVar(&c.Bin, "bin", "bin/devpilot", "the devpilot binary to serve with")
	fs.StringVar(&c.DataDir, "data-dir", "", "data directory (default: a temporary one, removed afterwards)")
	fs.StringVar(&c.Database, "database", os.Getenv("DEVPILOT_BENCH_DATABASE"), "empty for SQLite, or a postgres:// URL")
	fs.IntVar(&c.Servers, "servers", 100_000, "enrolled servers to seed")
	fs.IntVar(&c.Agents, "agents", 19_500, "agents to connect (at most --servers)")
	fs.IntVar(&c.PerProcess, "per-process", 5000, "agents per load-generator process (each under 20,000 open files)")
	fs.DurationVar(&c.Ramp, "ramp", 20*time.Second, "spread the agents' first dials over this long")
	fs.DurationVar(&c.Idle, "idle", 30*time.Second, "heartbeat measurement window")
	fs.IntVar(&c.Tasks, "tasks", 200, "dispatch samples with 1 and with 8 clients")
	fs.IntVar(&c.StormTasks, "storm-tasks", 200, "tasks submitted right after the restart")
	fs.DurationVar(&c.Timeout, "timeout", 5*time.Minute, "the longest any phase may wait")
	fs.DurationVar(&c.Heartbeat, "heartbeat", 15*time.Second, "the hub's heartbeat interval (serve --heartbeat-interval; 3s gives 6.5k/s at 19,500 agents)")
	fs.IntVar(&c.Replicas, "replicas", 1, "control planes; more than 1: serve --mode active on --database postgres://… behind loopback balancers, and the storm kills one of them")
	_ = fs.Parse(args)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	c.Self = self
	rep, err := benchscale.Run(ctx, c)
	if err != nil {
		return err
	}
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(rep, "", "  ")
		return os.WriteFile(*jsonOut, b, 0o644)
	}
	return nil
}

func loadgen(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("loadgen", flag.ExitOnError)
	var c benchscale.LoadConfig
	fs.StringVar(&c.URL, "url", "", "the control plane's agent URL")
	fs.IntVar(&c.From, "from", 0, "first agent index")
	fs.IntVar(&c.To, "to", 0, "last agent index + 1")
	fs.StringVar(&c.SourceIP, "source", "", "loopback source address to dial from")
	fs.DurationVar(&c.Ramp, "ramp", 0, "spread the first dials over this long")
	_ = fs.Parse(args)
	c.CAPin, c.CACertPEM = os.Getenv("DEVPILOT_BENCH_CA_PIN"), os.Getenv("DEVPILOT_BENCH_CA_PEM")
	return benchscale.RunLoad(ctx, c, os.Stdout)
}
