package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/provision"
)

// intList is a repeatable or comma-separated integer flag.
type intList []int

func (l *intList) String() string { return strings.Trim(fmt.Sprint([]int(*l)), "[]") }
func (l *intList) Type() string   { return "ports" }

func (l *intList) Set(s string) error {
	for _, part := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil {
			return fmt.Errorf("%q is not a port number", part)
		}
		*l = append(*l, n)
	}
	return nil
}

// onServer makes a verb acting on one server given by name or id.
func onServer(env Env, c *cobra.Command, setup func(v *verb) func(ctx context.Context, cl *client, id string) error) *cobra.Command {
	if c.Args == nil {
		c.Args = one("server name or id")
	}
	return verbCmd(env, c, apiVerb, func(v *verb) runFn {
		c.ValidArgsFunction = completeNames(serverNoun)(v)
		do := setup(v)
		return func(ctx context.Context, args []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			id, err := v.resolve(ctx, cl, serverNoun, args[0])
			if err != nil {
				return err
			}
			return do(ctx, cl, id)
		}
	})
}

func serversCmd(env Env) *cobra.Command {
	create := serverCreateCmd(env)

	list := serverListCmd(env)

	show := serverShowCmd(env)

	del := serverDelCmd(env)

	rekey := serverRekeyCmd(env)
	verbs := []*cobra.Command{create, list, show, del, rekey}
	verbs = append(verbs, lifecycleCmds(env)...)
	return group("servers", "create, list, show, delete, reboot, resize… servers",
		"  devpilot servers create --integration my-do --name web-1 --region nyc3 --size s-1vcpu-1gb --wait\n  devpilot servers show web-1\n  devpilot servers reboot web-1 --wait",
		verbs...)
}

func healthLine(s *apitypes.Server) string {
	h := s.Health
	if h == nil {
		return "-"
	}
	line := fmt.Sprintf("cpu %.0f%% mem %d/%d MB load %.2f", h.CPUPercent, h.MemUsedMB, h.MemTotalMB, h.Load1)
	if s.HealthAt != nil {
		line += " (" + time.Since(*s.HealthAt).Round(time.Second).String() + " ago)"
	}
	return line
}

func showServer(o *output, s *apitypes.Server) {
	kv := [][2]string{{"id", s.ID}, {"name", s.Name}, {"provider", s.Provider}, {"state", s.State},
		{"region/size/image", s.Region + " / " + s.Size + " / " + s.Image}, {"ports", strings.Trim(fmt.Sprint(s.Ports), "[]")},
		{"instance", orDash(s.InstanceID)}, {"public ipv4", orDash(s.PublicIPv4)}, {"tags", strings.Join(s.Tags, " ")},
		{"agent", agentLine(s)}, {"health", healthLine(s)}}
	if s.Agent.LastUpdate != nil {
		kv = append(kv, [2]string{"last update", lastUpdateLine(s.Agent.LastUpdate)})
	}
	if s.StateReason != "" {
		kv = append(kv, [2]string{"state reason", s.StateReason})
	}
	if s.Error != nil {
		kv = append(kv, [2]string{"error", s.Error.Step + ": " + s.Error.Message}, [2]string{"hint", orDash(s.Error.Hint)})
	}
	o.fields(kv)
	fmt.Fprintln(o.w, "\nSTEPS")
	rows := [][]string{}
	for _, st := range s.Steps {
		took := "-"
		if st.StartedAt != nil && st.FinishedAt != nil {
			took = st.FinishedAt.Sub(*st.StartedAt).Round(time.Millisecond).String()
		}
		note := st.Detail
		if st.Error != nil {
			note = st.Error.Code + ": " + st.Error.Message
		}
		rows = append(rows, []string{st.Name, st.State, ts(st.StartedAt), took, orDash(note)})
	}
	o.table([]string{"STEP", "STATE", "STARTED", "TOOK", "NOTE"}, rows)
	if s.Health != nil && len(s.Health.Disks) > 0 {
		fmt.Fprintln(o.w, "\nDISKS")
		rows = rows[:0]
		for _, d := range s.Health.Disks {
			rows = append(rows, []string{d.Mount, fmt.Sprintf("%d MB", d.UsedMB), fmt.Sprintf("%d MB", d.TotalMB)})
		}
		o.table([]string{"MOUNT", "USED", "TOTAL"}, rows)
	}
	if s.Diagnostics != "" {
		// Collected over SSH when the agent did not confirm the install.
		fmt.Fprintln(o.w, "\nDIAGNOSTICS")
		fmt.Fprintln(o.w, strings.TrimRight(s.Diagnostics, "\n"))
	}
}

func agentLine(s *apitypes.Server) string {
	a := s.Agent
	if a.InstalledAt == nil {
		return "not installed yet"
	}
	state := "disconnected"
	if a.Connected {
		state = "connected"
	}
	line := state + ", version " + orDash(a.Version)
	if a.OutsideTarget {
		line += " (outside the rollout target " + a.TargetVersion + ")"
	}
	if a.LastSeenAt != nil {
		line += ", last seen " + ts(a.LastSeenAt)
	}
	return line
}

// lastUpdateLine says how the agent's last update ended:
// "rolled back 1.1.0 → 1.0.0: <reason> (act_…, 2026-12-01 10:00:00)".
func lastUpdateLine(lu *apitypes.AgentLastUpdate) string {
	var line string
	switch lu.Result {
	case apitypes.UpdateResultUpdated:
		line = "updated " + lu.FromVersion + " → " + lu.ToVersion
	case apitypes.UpdateResultRolledBack:
		line = "rolled back " + lu.ToVersion + " → " + lu.FromVersion
	case apitypes.UpdateResultRefused:
		line = "refused " + lu.ToVersion + ", stayed on " + lu.FromVersion
	default:
		line = lu.Result + " to install " + lu.ToVersion + ", stayed on " + lu.FromVersion
	}
	if lu.Reason != "" {
		line += ": " + lu.Reason
	}
	line += " (" + lu.ActionID
	if lu.ReportedAt != nil {
		line += ", " + ts(lu.ReportedAt)
	}
	return line + ")"
}

// watchServer prints each step as it starts and ends until the server is
// online, failed or deleted (to stderr under -o json/yaml), and returns
// the server's last answer.
func watchServer(ctx context.Context, v *verb, cl *client, id string) ([]byte, error) {
	seen := map[string]string{}
	w := v.progress().w
	fmt.Fprintf(w, "Provisioning %s…\n", id)
	for {
		var srv apitypes.Server
		raw, err := cl.do(ctx, "GET", v.path("/servers/"+url.PathEscape(id)), nil, &srv)
		if err != nil {
			return nil, err
		}
		for _, st := range srv.Steps {
			if seen[st.Name] == st.State {
				continue
			}
			seen[st.Name] = st.State
			switch st.State {
			case provision.StepRunning:
				fmt.Fprintf(w, "  … %-12s started\n", st.Name)
			case provision.StepDone:
				took := ""
				if st.StartedAt != nil && st.FinishedAt != nil {
					took = st.FinishedAt.Sub(*st.StartedAt).Round(time.Millisecond).String()
				}
				fmt.Fprintf(w, "  ✓ %-12s %-8s %s\n", st.Name, took, st.Detail)
			case provision.StepFailed:
				fmt.Fprintf(w, "  ✗ %-12s failed\n", st.Name)
			}
		}
		switch srv.State {
		case provision.StateOnline:
			fmt.Fprintf(w, "Server %s is online at %s.\n", srv.Name, orDash(srv.PublicIPv4))
			return raw, nil
		case provision.StateFailed:
			e := &APIError{Code: "provisioning_failed", Message: "provisioning failed"}
			if srv.Error != nil {
				e = &APIError{Code: srv.Error.Code, Message: srv.Error.Step + ": " + srv.Error.Message, Hint: srv.Error.Hint}
			}
			if v.json() {
				_ = v.out.raw(raw) // the failed server, for scripts
			}
			return nil, e
		case provision.StateDeleted, provision.StateDeleting:
			return nil, fmt.Errorf("server %s was deleted while provisioning", id)
		}
		select {
		case <-ctx.Done():
			fmt.Fprintf(v.env.Stderr, "\nStopped watching: %s goes on provisioning.\n  follow it: %s\n", srv.Name, v.again("servers show "+srv.Name))
			return nil, &exitError{code: ExitInterrupted}
		case <-time.After(time.Second):
		}
	}
}

func serverCreateCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{
		Use:   "create --integration NAME|ID --name NAME --region R --size S [--image I] [--port P,P] [--wait]",
		Short: "create a server: its instance, firewall and the Devpilot agent",
		Long: `create asks the integration's cloud for an instance and a firewall, and
installs the Devpilot agent on it through cloud-init. See the choices with
devpilot integrations catalog NAME --region R. With --wait it shows each
step as it runs until the server is online (or failed); under -o json the
steps go to stderr and the final server to stdout.`,
		Example: `  devpilot servers create --integration my-do --name web-1 --region nyc3 --size s-1vcpu-1gb --wait
  devpilot servers create --integration my-vultr --name db-1 --region ewr --size vc2-1c-1gb --port 22,5432 -o json`,
		Args: cobra.NoArgs,
	}, apiVerb, func(v *verb) runFn {
		var req apitypes.CreateServer
		var ports intList
		v.fs.StringVar(&req.IntegrationID, "integration", "", "integration name or id (see devpilot integrations list)")
		v.fs.StringVar(&req.Name, "name", "", "server name (becomes the hostname)")
		v.fs.StringVar(&req.Region, "region", "", "provider region, e.g. nyc3 or ewr")
		v.fs.StringVar(&req.Size, "size", "", "provider size/plan, e.g. s-1vcpu-1gb or vc2-1c-1gb")
		v.fs.StringVar(&req.Image, "image", "debian-12", "image: provider id or debian-12 / ubuntu-24.04")
		v.fs.Var(&ports, "port", "inbound TCP port to open (repeat or comma-separate; default 22,80,443)")
		wait := v.fs.Bool("wait", false, "show the provisioning steps live until the server is online or failed")
		_ = v.cmd.RegisterFlagCompletionFunc("integration", func(cmd *cobra.Command, args []string, tc string) ([]string, cobra.ShellCompDirective) {
			return completeNames(integrationNoun)(v)(cmd, nil, tc)
		})
		return func(ctx context.Context, _ []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			if req.IntegrationID != "" {
				if req.IntegrationID, err = v.resolve(ctx, cl, integrationNoun, req.IntegrationID); err != nil {
					return err
				}
			}
			req.Ports = ports
			var srv apitypes.Server
			raw, err := cl.do(ctx, "POST", v.path("/servers"), req, &srv)
			if err != nil {
				return err
			}
			if *wait {
				raw, err := watchServer(ctx, v, cl, srv.ID)
				if err != nil {
					return err
				}
				return v.print(raw, func() {})
			}
			return v.print(raw, func() {
				fmt.Fprintf(env.Stdout, "Server %s (%s) is %s. Follow it with: devpilot servers show %s\n", srv.Name, srv.ID, srv.State, srv.Name)
			})
		}
	})
}

func serverListCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "list [--state S] [--tag T] [--integration NAME|ID] [--name N]", Short: "list servers",
		Example: "  devpilot servers list --state online\n  devpilot servers list --format NAME,STATE,IPV4 --no-header", Args: cobra.NoArgs},
		apiVerb, func(v *verb) runFn {
			state := v.fs.String("state", "", "only servers in this state (online, offline, stopped, failed, …)")
			tag := v.fs.String("tag", "", "only servers with this tag")
			integ := v.fs.String("integration", "", "only servers of this integration (name or id)")
			name := v.fs.String("name", "", "only the server with this name")
			return func(ctx context.Context, _ []string) error {
				cl, err := v.connect()
				if err != nil {
					return err
				}
				if *integ != "" {
					if *integ, err = v.resolve(ctx, cl, integrationNoun, *integ); err != nil {
						return err
					}
				}
				q := url.Values{}
				for k, x := range map[string]string{"state": *state, "tag": *tag, "integration": *integ, "name": *name} {
					if x != "" {
						q.Set(k, x)
					}
				}
				path := v.path("/servers")
				if len(q) > 0 {
					path += "?" + q.Encode()
				}
				items, err := cl.listAll(ctx, path, "servers")
				if err != nil {
					return err
				}
				// Filtered here too: a control plane that ignores the query
				// still gives the right answer.
				var all []apitypes.Server
				kept := []json.RawMessage{}
				for _, raw := range items {
					var s apitypes.Server
					if err := json.Unmarshal(raw, &s); err != nil {
						return fmt.Errorf("decode servers: %w", err)
					}
					if (*state != "" && s.State != *state) || (*tag != "" && !slices.Contains(s.Tags, *tag)) ||
						(*integ != "" && s.IntegrationID != *integ) || (*name != "" && s.Name != *name) {
						continue
					}
					all, kept = append(all, s), append(kept, raw)
				}
				return v.printValue(map[string]any{"servers": kept}, func() {
					rows := [][]string{}
					for _, s := range all {
						rows = append(rows, []string{s.ID, s.Name, s.Provider, s.Region, v.out.paint(s.State), orDash(s.PublicIPv4), agentCol(&s), healthLine(&s)})
					}
					v.out.table([]string{"ID", "NAME", "PROVIDER", "REGION", "STATE", "IPV4", "AGENT", "HEALTH"}, rows)
				})
			}
		})
}

func serverShowCmd(env Env) *cobra.Command {
	return onServer(env, &cobra.Command{Use: "show NAME|ID", Short: "show a server: state, steps, agent, health", Example: "  devpilot servers show web-1"},
		func(v *verb) func(ctx context.Context, cl *client, id string) error {
			return func(ctx context.Context, cl *client, id string) error {
				var srv apitypes.Server
				raw, err := cl.do(ctx, "GET", v.path("/servers/"+url.PathEscape(id)), nil, &srv)
				if err != nil {
					return err
				}
				return v.print(raw, func() { showServer(v.out, &srv) })
			}
		})
}

func serverDelCmd(env Env) *cobra.Command {
	return onServer(env, &cobra.Command{Use: "delete NAME|ID [--destroy [--force]]", Short: "forget a server, or with --destroy delete its instance and firewall too",
		Example: "  devpilot servers delete web-1\n  devpilot servers delete web-1 --destroy --force"},
		func(v *verb) func(ctx context.Context, cl *client, id string) error {
			destroy := v.fs.Bool("destroy", false, "also delete the cloud instance and its firewall (default: only forget the server)")
			force := v.fs.Bool("force", false, "with --destroy: don't ask for confirmation")
			return func(ctx context.Context, cl *client, id string) error {
				q := ""
				if *destroy {
					if err := confirm(env, *force, fmt.Sprintf("Destroy server %s's cloud instance and firewall? Its disk is lost.", id)); err != nil {
						return err
					}
					q = "?destroy=true"
				}
				var srv apitypes.Server
				raw, err := cl.do(ctx, "DELETE", v.path("/servers/"+url.PathEscape(id)+q), nil, &srv)
				if err != nil {
					return err
				}
				return v.print(raw, func() {
					if *destroy {
						fmt.Fprintf(env.Stdout, "Deleting %s (%s): its instance and firewall are being destroyed.\n", srv.Name, srv.ID)
					} else {
						fmt.Fprintf(env.Stdout, "Forgot %s (%s); the cloud instance was left alone.\n", srv.Name, srv.ID)
					}
				})
			}
		})
}

func serverRekeyCmd(env Env) *cobra.Command {
	return onServer(env, &cobra.Command{Use: "rekey NAME|ID [--print]", Short: "revoke the agent's identity key and give the agent a new bootstrap token",
		Example: "  devpilot servers rekey web-1\n  devpilot servers rekey web-1 --print"},
		func(v *verb) func(ctx context.Context, cl *client, id string) error {
			printOnly := v.fs.Bool("print", false, "don't deliver the token over SSH: print it with the command to run on the server")
			return func(ctx context.Context, cl *client, id string) error {
				var rk apitypes.Rekey
				raw, err := cl.do(ctx, "POST", v.path("/servers/"+url.PathEscape(id)+"/rekey"), apitypes.RekeyRequest{Print: *printOnly}, &rk)
				if err != nil {
					return err
				}
				return v.print(raw, func() {
					fmt.Fprintf(env.Stdout, "Server %s (%s): its agent identity key is revoked.\n", rk.Server.ID, rk.Server.Name)
					if rk.Delivered != "" {
						fmt.Fprintf(env.Stdout, "A new bootstrap token was delivered over %s; the agent enrolls a new identity. Watch it with: devpilot servers show %s\n",
							rk.Delivered, rk.Server.Name)
						return
					}
					if rk.DeliveryError != "" {
						fmt.Fprintf(env.Stdout, "Not delivered: %s.\n", rk.DeliveryError)
					}
					fmt.Fprintf(env.Stdout, "Run this on the server, as root, within its validity (until %s), to enroll its agent with a new identity:\n\n  %s\n\n",
						rk.ExpiresAt.Local().Format(time.DateTime), rk.Command)
					fmt.Fprintln(env.Stdout, "Until then the old key is refused (a quarantined server stays quarantined and its tasks wait).")
				})
			}
		})
}
