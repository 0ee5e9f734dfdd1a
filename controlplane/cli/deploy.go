package cli

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/planfile"
	"github.com/devpilot/devpilot/controlplane/tasks"
	"github.com/devpilot/devpilot/shared/protocol"
)

// PlanFile is a deployment plan in YAML (package planfile, shared with
// the console).
type PlanFile = planfile.File

// PlanStep is one step of a plan file.
type PlanStep = planfile.Step

// Plan files and the local files their steps name are read up to these
// sizes: far above what a task can carry (tasks.MaxFileBytes), and never
// a read without end (from: /dev/zero).
const (
	maxPlanBytes     = 4 << 20
	maxPlanFromBytes = tasks.MaxFileBytes
)

// LoadPlan reads a plan file into a deployment request.
func LoadPlan(path string) (apitypes.CreateDeployment, error) {
	b, err := readCapped(path, maxPlanBytes)
	if err != nil {
		return apitypes.CreateDeployment{}, fmt.Errorf("read plan: %w", err)
	}
	return parsePlan(b, path, func(from string) ([]byte, error) {
		if !filepath.IsAbs(from) {
			from = filepath.Join(filepath.Dir(path), from)
		}
		return readCapped(from, maxPlanFromBytes)
	})
}

// readCapped reads a file of at most max bytes.
func readCapped(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer func() { _ = f.Close() }()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d KiB", path, max>>10)
	}
	return b, nil
}

// parsePlan turns a plan file's bytes (from the file called name) into a
// deployment request; readFrom reads a step's from: file.
func parsePlan(b []byte, name string, readFrom func(from string) ([]byte, error)) (apitypes.CreateDeployment, error) {
	return planfile.Parse(b, name, readFrom)
}

func deployCmd(env Env) *cobra.Command {
	var interval time.Duration
	status := verbCmd(env, &cobra.Command{Use: "status DEPLOYMENT-ID", Short: "follow a deployment until it ends (-o json: its state now)",
		Args: one("deployment id"), Example: "  devpilot deploy status dep_…"}, apiVerb, func(v *verb) runFn {
		v.fs.DurationVar(&interval, "poll", time.Second, "how often progress is checked")
		return func(ctx context.Context, args []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			var d apitypes.Deployment
			raw, err := cl.do(ctx, "GET", v.path("/deployments/"+url.PathEscape(args[0])), nil, &d)
			if err != nil {
				return err
			}
			if v.json() {
				return v.out.raw(raw)
			}
			_, err = watchDeployment(ctx, v, cl, &d, interval)
			return err
		}
	})
	c := verbCmd(env, &cobra.Command{
		Use:   "deploy -f PLAN.yaml [--server NAME|ID...|--tag T] [--max-parallel N]",
		Short: "roll a deploy plan across servers in batches (deploy -f plan.yaml; deploy status ID)",
		Long: `deploy runs a plan file's steps on many servers, a batch at a time, and
shows each server's progress; it exits 1 if any server failed. Under -o json
the progress goes to stderr and the final deployment to stdout.`,
		Example: `  devpilot deploy -f plan.yaml
  devpilot deploy -f plan.yaml --server web-1 --server web-2 --max-parallel 2
  devpilot deploy status dep_…`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("deploy: unexpected argument %q (the plan is given with -f; `deploy status ID` follows one)", args[0])
			}
			return nil
		},
	}, apiVerb, func(v *verb) runFn {
		planPath := v.fs.StringP("file", "f", "", "plan file (YAML; see the README)")
		v.fs.StringVar(planPath, "f", "", "the flag's name before cobra, so DEVPILOT_F keeps working")
		_ = v.fs.MarkHidden("f")
		var servers stringList
		v.fs.Var(&servers, "server", "deploy to this server, name or id (repeat; overrides the plan's targets)")
		tag := v.fs.String("tag", "", "deploy to the servers carrying this tag (overrides the plan's targets)")
		par := v.fs.Int("max-parallel", 0, "servers deployed at once (overrides the plan; default 1)")
		deadline := v.fs.Duration("deadline", 0, "each server's deadline (overrides the plan; default 1h)")
		detach := v.fs.Bool("detach", false, "print the deployment id and return without waiting")
		v.fs.DurationVar(&interval, "poll", time.Second, "how often progress is checked")
		return func(ctx context.Context, _ []string) error {
			if *planPath == "" {
				return usagef("deploy: give the plan with -f plan.yaml")
			}
			req, err := LoadPlan(*planPath)
			if err != nil {
				return err
			}
			cl, err := v.connect()
			if err != nil {
				return err
			}
			if len(servers) > 0 || *tag != "" {
				req.Servers, req.Tag = nil, *tag
				for _, s := range servers {
					id, err := v.resolve(ctx, cl, serverNoun, s)
					if err != nil {
						return err
					}
					req.Servers = append(req.Servers, id)
				}
			}
			if *par > 0 {
				req.MaxParallel = *par
			}
			if *deadline > 0 {
				req.DeadlineS = int(deadline.Round(time.Second) / time.Second)
			}
			var d apitypes.Deployment
			raw, err := cl.do(ctx, "POST", v.path("/deployments"), req, &d)
			if err != nil {
				return err
			}
			if *detach {
				return v.print(raw, func() {
					fmt.Fprintln(env.Stdout, d.ID)
					fmt.Fprintf(env.Stderr, "# deployment %s started on %d servers; follow it with: %s\n", d.ID, len(d.Targets), v.again("deploy status "+d.ID))
				})
			}
			fmt.Fprintf(v.progress().w, "Deployment %s: %d servers, %d at a time\n", d.ID, len(d.Targets), d.MaxParallel)
			raw, err = watchDeployment(ctx, v, cl, &d, interval)
			if v.json() && raw != nil {
				if perr := v.out.raw(raw); perr != nil {
					return perr
				}
			}
			return err
		}
	})
	c.AddCommand(status)
	return c
}

// watchDeployment prints each server's progress until the deployment ends
// (to stderr under -o json/yaml) and returns its last answer; an error if
// any server failed.
func watchDeployment(ctx context.Context, v *verb, cl *client, d *apitypes.Deployment, interval time.Duration) ([]byte, error) {
	w := v.progress().w
	seen := map[string]string{}
	var raw []byte
	for {
		for _, t := range d.Targets {
			if seen[t.ServerID] == t.State {
				continue
			}
			seen[t.ServerID] = t.State
			if t.State == tasks.TargetPending {
				continue
			}
			line := fmt.Sprintf("  batch %d  %-24s %s", t.Batch, t.ServerID, t.State)
			if t.ExitCode != nil && t.State != protocol.TaskSucceeded {
				line += fmt.Sprintf(" (exit %d)", *t.ExitCode)
			}
			if t.Reason != "" && t.Reason != t.State {
				line += " (" + t.Reason + ")"
			}
			for i, s := range t.Steps {
				if s.State != protocol.TaskSucceeded && s.State != tasks.TargetSkipped {
					line += fmt.Sprintf(" — step %d %s %s", i+1, orDash(s.Name), s.State)
					break
				}
			}
			if t.TaskID != "" && protocol.Final(t.State) && t.State != protocol.TaskSucceeded {
				line += "  (devpilot tasks logs " + t.TaskID + ")"
			}
			fmt.Fprintln(w, line)
		}
		if d.State != tasks.DeployRunning && raw != nil {
			break
		}
		if d.State != tasks.DeployRunning {
			// The answer that started the watch: fetch it once for -o json.
			var err error
			if raw, err = cl.do(ctx, "GET", v.path("/deployments/"+url.PathEscape(d.ID)), nil, nil); err != nil {
				return nil, err
			}
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(interval):
		}
		// A fresh value: decoding into the old one would merge its Counts map.
		var next apitypes.Deployment
		var err error
		if raw, err = cl.do(ctx, "GET", v.path("/deployments/"+url.PathEscape(d.ID)), nil, &next); err != nil {
			return nil, err
		}
		*d = next
	}
	counts := []string{}
	for _, k := range sortedKeys(d.Counts) {
		counts = append(counts, fmt.Sprintf("%d %s", d.Counts[k], k))
	}
	fmt.Fprintf(w, "Deployment %s %s: %s\n", d.ID, d.State, strings.Join(counts, ", "))
	if d.State != tasks.DeploySucceeded {
		msg := "deployment " + d.ID + " " + d.State
		if d.Error != "" {
			msg += ": " + d.Error
		}
		return raw, &errTaskFailed{msg}
	}
	return raw, nil
}
