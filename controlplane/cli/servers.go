package cli

import (
	"context"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/provision"
)

// intList is a repeatable or comma-separated integer flag.
type intList []int

func (l *intList) String() string { return fmt.Sprint([]int(*l)) }

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

func runServers(ctx context.Context, env Env, args []string) error {
	const what = "server id"
	verbs := map[string]func([]string) error{
		"create": func(args []string) error {
			v := newVerb(env, "servers create")
			var req apitypes.CreateServer
			var ports intList
			v.fs.StringVar(&req.IntegrationID, "integration", "", "integration id (see `devpilot integrations list`)")
			v.fs.StringVar(&req.Name, "name", "", "server name (becomes the hostname)")
			v.fs.StringVar(&req.Region, "region", "", "provider region, e.g. nyc3 or ewr")
			v.fs.StringVar(&req.Size, "size", "", "provider size/plan, e.g. s-1vcpu-1gb or vc2-1c-1gb")
			v.fs.StringVar(&req.Image, "image", "debian-12", "image: provider id or debian-12 / ubuntu-24.04")
			v.fs.Var(&ports, "port", "inbound TCP port to open (repeat or comma-separate; default 22,80,443)")
			wait := v.fs.Bool("wait", false, "show the provisioning steps live until the server is online or failed")
			_, cl, err := v.start(args)
			if err != nil {
				return err
			}
			req.Ports = ports
			var srv apitypes.Server
			raw, err := cl.do(ctx, "POST", v.path("/servers"), req, &srv)
			if err != nil {
				return err
			}
			if *wait {
				return watchServer(ctx, env, cl, *v.ws, srv.ID)
			}
			return v.print(raw, func() {
				fmt.Fprintf(env.Stdout, "Server %s (%s) is %s. Follow it with: devpilot servers show %s\n", srv.ID, srv.Name, srv.State, srv.ID)
			})
		},
		"list": func(args []string) error {
			v := newVerb(env, "servers list")
			_, cl, err := v.start(args)
			if err != nil {
				return err
			}
			var resp struct {
				Servers []apitypes.Server `json:"servers"`
			}
			raw, err := cl.do(ctx, "GET", v.path("/servers"), nil, &resp)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				rows := [][]string{}
				for _, s := range resp.Servers {
					rows = append(rows, []string{s.ID, s.Name, s.Provider, s.Region, s.State, orDash(s.PublicIPv4), healthLine(&s)})
				}
				v.out.table([]string{"ID", "NAME", "PROVIDER", "REGION", "STATE", "IPV4", "HEALTH"}, rows)
			})
		},
		"show": func(args []string) error {
			v := newVerb(env, "servers show")
			id, cl, err := v.startOne(args, what)
			if err != nil {
				return err
			}
			var srv apitypes.Server
			raw, err := cl.do(ctx, "GET", v.path("/servers/"+url.PathEscape(id)), nil, &srv)
			if err != nil {
				return err
			}
			return v.print(raw, func() { showServer(v.out, &srv) })
		},
		"delete": func(args []string) error {
			v := newVerb(env, "servers delete")
			destroy := v.fs.Bool("destroy", false, "also delete the cloud instance and its firewall (default: only forget the server)")
			id, cl, err := v.startOne(args, what)
			if err != nil {
				return err
			}
			q := ""
			if *destroy {
				q = "?destroy=true"
			}
			var srv apitypes.Server
			raw, err := cl.do(ctx, "DELETE", v.path("/servers/"+url.PathEscape(id)+q), nil, &srv)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				if *destroy {
					fmt.Fprintf(env.Stdout, "Deleting %s: its instance and firewall are being destroyed.\n", srv.ID)
				} else {
					fmt.Fprintf(env.Stdout, "Forgot %s; the cloud instance was left alone.\n", srv.ID)
				}
			})
		},
		"rekey": func(args []string) error {
			v := newVerb(env, "servers rekey")
			printOnly := v.fs.Bool("print", false, "don't deliver the token over SSH: print it with the command to run on the server")
			id, cl, err := v.startOne(args, "server id or name")
			if err != nil {
				return err
			}
			var rk apitypes.Rekey
			raw, err := cl.do(ctx, "POST", v.path("/servers/"+url.PathEscape(id)+"/rekey"), apitypes.RekeyRequest{Print: *printOnly}, &rk)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				fmt.Fprintf(env.Stdout, "Server %s (%s): its agent identity key is revoked.\n", rk.Server.ID, rk.Server.Name)
				if rk.Delivered != "" {
					fmt.Fprintf(env.Stdout, "A new bootstrap token was delivered over %s; the agent enrolls a new identity. Watch it with: devpilot servers show %s\n",
						rk.Delivered, rk.Server.ID)
					return
				}
				if rk.DeliveryError != "" {
					fmt.Fprintf(env.Stdout, "Not delivered: %s.\n", rk.DeliveryError)
				}
				fmt.Fprintf(env.Stdout, "Run this on the server, as root, within its validity (until %s), to enroll its agent with a new identity:\n\n  %s\n\n",
					rk.ExpiresAt.Local().Format(time.DateTime), rk.Command)
				fmt.Fprintln(env.Stdout, "Until then the old key is refused (a quarantined server stays quarantined and its tasks wait).")
			})
		},
	}
	return subcommand(env, "servers", args, verbs, []string{"create", "list", "show", "delete", "rekey"})
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
	if a.LastSeenAt != nil {
		line += ", last seen " + ts(a.LastSeenAt)
	}
	return line
}

// watchServer prints each step as it starts and ends until the server is
// online, failed or deleted.
func watchServer(ctx context.Context, env Env, cl *client, ws, id string) error {
	seen := map[string]string{}
	fmt.Fprintf(env.Stdout, "Provisioning %s…\n", id)
	for {
		var srv apitypes.Server
		if _, err := cl.do(ctx, "GET", wsPath(ws)+"/servers/"+url.PathEscape(id), nil, &srv); err != nil {
			return err
		}
		for _, st := range srv.Steps {
			if seen[st.Name] == st.State {
				continue
			}
			seen[st.Name] = st.State
			switch st.State {
			case provision.StepRunning:
				fmt.Fprintf(env.Stdout, "  … %-12s started\n", st.Name)
			case provision.StepDone:
				took := ""
				if st.StartedAt != nil && st.FinishedAt != nil {
					took = st.FinishedAt.Sub(*st.StartedAt).Round(time.Millisecond).String()
				}
				fmt.Fprintf(env.Stdout, "  ✓ %-12s %-8s %s\n", st.Name, took, st.Detail)
			case provision.StepFailed:
				fmt.Fprintf(env.Stdout, "  ✗ %-12s failed\n", st.Name)
			}
		}
		switch srv.State {
		case provision.StateOnline:
			fmt.Fprintf(env.Stdout, "Server %s is online at %s.\n", srv.Name, orDash(srv.PublicIPv4))
			return nil
		case provision.StateFailed:
			e := &APIError{Code: "provisioning_failed", Message: "provisioning failed"}
			if srv.Error != nil {
				e = &APIError{Code: srv.Error.Code, Message: srv.Error.Step + ": " + srv.Error.Message, Hint: srv.Error.Hint}
			}
			return e
		case provision.StateDeleted, provision.StateDeleting:
			return fmt.Errorf("server %s was deleted while provisioning", id)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
