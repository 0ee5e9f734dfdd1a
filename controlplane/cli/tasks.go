package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/shared/protocol"
)

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error {
	*l = append(*l, s)
	return nil
}

// errTaskFailed is returned when the work itself failed (exit 1, no usage text).
type errTaskFailed struct{ msg string }

func (e *errTaskFailed) Error() string { return e.msg }

func (l *stringList) Type() string { return "strings" }

func tasksCmd(env Env) *cobra.Command {
	return group("tasks", "run commands, unit actions and file writes on a server; list, show, follow and cancel tasks",
		"  devpilot tasks run --server web-1 -- uptime\n  devpilot tasks logs -f task_…",
		taskRunCmd(env), taskListCmd(env), taskShowCmd(env), taskLogsCmd(env), taskCancelCmd(env))
}

// taskRunCmd is `tasks run`: start a task and, unless --detach, follow it.
func taskRunCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{
		Use:   "run --server NAME|ID [flags] -- COMMAND [ARG...]",
		Short: "run a command, a systemd unit action or a file write on a server, and follow it",
		Long: `run starts one task on a server and streams its output: the command's
stdout to stdout, its stderr to stderr. It exits with the command's exit
code (0 when it succeeded); when the task ends without one (canceled, timed
out, refused, agent lost) it exits 255, like ssh. Ctrl-C detaches (exit 130):
the task goes on, and the message says how to follow or cancel it.

Under -o json the output goes to stderr and the final task object to stdout.
With --detach it prints the task's id (-o json: the task object) and returns.`,
		Example: `  devpilot tasks run --server web-1 -- sh -c 'uptime; df -h /'
  devpilot tasks run --server web-1 --systemd nginx.service:restart
  devpilot tasks run --server web-1 --file /etc/app.conf --from app.conf --mode 0640
  id=$(devpilot tasks run --server web-1 --detach -- make backup)`,
		Args: cobra.ArbitraryArgs,
	}, apiVerb, func(v *verb) runFn {
		server := v.fs.String("server", "", "server name or id to run on (required)")
		sysd := v.fs.String("systemd", "", "systemd unit action as UNIT:ACTION, e.g. nginx.service:restart")
		file := v.fs.String("file", "", "write a file at this absolute path on the server")
		from := v.fs.String("from", "", "with --file: local file whose content to write")
		mode := v.fs.String("mode", "", "with --file: octal mode (default 0644)")
		owner := v.fs.String("owner", "", "with --file: owner user")
		group := v.fs.String("group", "", "with --file: owner group")
		dir := v.fs.String("dir", "", "exec: working directory")
		user := v.fs.String("user", "", "exec: run as this user")
		timeout := v.fs.Duration("timeout", 0, "exec: kill the command after this long (default: the deadline)")
		deadline := v.fs.Duration("deadline", 0, "give up on the task after this long (default 1h)")
		var envs stringList
		v.fs.Var(&envs, "env", "exec: environment variable KEY=VALUE (repeat)")
		detach := v.fs.Bool("detach", false, "print the task id and return without waiting")
		_ = v.cmd.RegisterFlagCompletionFunc("server", func(cmd *cobra.Command, args []string, tc string) ([]string, cobra.ShellCompDirective) {
			return completeNames(serverNoun)(v)(cmd, nil, tc)
		})
		return func(ctx context.Context, argv []string) error {
			if *server == "" {
				return usagef("tasks run: --server is required")
			}
			spec := apitypes.TaskSpec{DeadlineS: int(deadline.Round(time.Second) / time.Second)}
			kinds := 0
			if len(argv) > 0 {
				kinds++
				spec.Kind, spec.Argv, spec.Dir, spec.User = protocol.KindExec, argv, *dir, *user
				spec.TimeoutS = int(timeout.Round(time.Second) / time.Second)
				for _, e := range envs {
					k, val, ok := strings.Cut(e, "=")
					if !ok {
						return usagef("--env %q: use KEY=VALUE", e)
					}
					if spec.Env == nil {
						spec.Env = map[string]string{}
					}
					spec.Env[k] = val
				}
			}
			if *sysd != "" {
				kinds++
				unit, action, ok := strings.Cut(*sysd, ":")
				if !ok {
					return usagef("--systemd %q: use UNIT:ACTION, e.g. nginx.service:restart", *sysd)
				}
				spec.Kind, spec.Unit, spec.Action = protocol.KindSystemd, unit, action
			}
			if *file != "" {
				kinds++
				if *from == "" {
					return usagef("--file needs --from LOCAL_FILE")
				}
				b, err := os.ReadFile(*from)
				if err != nil {
					return fmt.Errorf("read %s: %w", *from, err)
				}
				spec.Kind, spec.Path, spec.ContentBase64 = protocol.KindFile, *file, base64.StdEncoding.EncodeToString(b)
				spec.Mode, spec.Owner, spec.Group = *mode, *owner, *group
			}
			if kinds != 1 {
				return usagef("tasks run: give exactly one of a command (after --), --systemd UNIT:ACTION or --file PATH --from LOCAL")
			}
			cl, err := v.connect()
			if err != nil {
				return remoteErr(err)
			}
			id, err := v.resolve(ctx, cl, serverNoun, *server)
			if err != nil {
				return remoteErr(err)
			}
			var t apitypes.Task
			raw, err := cl.do(ctx, "POST", v.path("/servers/"+url.PathEscape(id)+"/tasks"), spec, &t)
			if err != nil {
				return remoteErr(err)
			}
			if *detach {
				return v.print(raw, func() {
					fmt.Fprintln(env.Stdout, t.ID)
					fmt.Fprintf(env.Stderr, "# task %s is %s; follow it with: %s\n", t.ID, t.State, v.again("tasks logs -f "+t.ID))
				})
			}
			if t.State == protocol.TaskQueued {
				fmt.Fprintf(env.Stderr, "# task %s is queued: the server's agent is not connected; waiting for it\n", t.ID)
			}
			return v.follow(ctx, cl, t.ID, 0)
		}
	})
}

// again is a devpilot command line for the verb's workspace.
func (v *verb) again(verb string) string {
	if v.ws != nil && *v.ws != "default" {
		verb += " --workspace " + *v.ws
	}
	return "devpilot " + verb
}

// follow streams a task's output until it ends and turns its end into the
// exit code: the remote one, or 255 when it has none; 130 on Ctrl-C, with
// the commands to follow or cancel the task, which goes on.
func (v *verb) follow(ctx context.Context, cl *client, id string, after int64) error {
	logs := v.env
	if v.json() {
		logs.Stdout = v.env.Stderr // stdout holds the final task alone
	}
	end, raw, err := followLogs(ctx, logs, cl, *v.ws, id, after)
	if ctx.Err() != nil {
		fmt.Fprintf(v.env.Stderr, "\nDetached from task %s: it goes on on the server.\n  follow it: %s\n  cancel it: %s\n",
			id, v.again("tasks logs -f "+id), v.again("tasks cancel "+id))
		return &exitError{code: ExitInterrupted}
	}
	if err != nil {
		return remoteErr(err)
	}
	if v.json() {
		if err := v.out.raw(raw); err != nil {
			return err
		}
	}
	return taskOutcome(end)
}

// remoteErr reports an error of the CLI itself in a verb that otherwise
// exits with a remote exit code: 255 (usage errors keep 2).
func remoteErr(err error) error {
	if err == nil || errors.Is(err, errUsage) {
		return err
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return err
	}
	return &withCode{code: ExitRemoteUnknown, err: err}
}

// taskListCmd is `tasks list`.
func taskListCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "list [--server NAME|ID] [--state S]", Short: "list tasks, newest first", Args: cobra.NoArgs,
		Example: "  devpilot tasks list --server web-1 --state failed"}, apiVerb, func(v *verb) runFn {
		server := v.fs.String("server", "", "only this server's tasks (name or id)")
		dep := v.fs.String("deployment", "", "only this deployment's tasks")
		state := v.fs.String("state", "", "only tasks in this state")
		limit := v.fs.Int("limit", 50, "at most this many (newest first)")
		return func(ctx context.Context, _ []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			if *server != "" {
				if *server, err = v.resolve(ctx, cl, serverNoun, *server); err != nil {
					return err
				}
			}
			q := url.Values{}
			for k, x := range map[string]string{"server": *server, "deployment": *dep, "state": *state, "limit": strconv.Itoa(*limit)} {
				if x != "" {
					q.Set(k, x)
				}
			}
			items, err := cl.listN(ctx, v.path("/tasks?"+q.Encode()), "tasks", *limit)
			if err != nil {
				return err
			}
			raw, _ := json.Marshal(map[string]any{"tasks": items})
			var all []apitypes.Task
			b, _ := json.Marshal(items)
			if err := json.Unmarshal(b, &all); err != nil {
				return fmt.Errorf("decode tasks: %w", err)
			}
			return v.print(raw, func() {
				rows := [][]string{}
				for _, t := range all {
					rows = append(rows, []string{t.ID, t.ServerID, t.Kind, v.out.paint(stateLine(&t)), exitText(t.ExitCode), ts(&t.CreatedAt), summary(&t)})
				}
				v.out.table([]string{"ID", "SERVER", "KIND", "STATE", "EXIT", "CREATED", "WHAT"}, rows)
			})
		}
	})
}

// taskShowCmd is `tasks show ID`.
func taskShowCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "show TASK-ID", Short: "show a task: state, exit code, times, steps", Args: one("task id"),
		Example: "  devpilot tasks show task_…"}, apiVerb, func(v *verb) runFn {
		return func(ctx context.Context, args []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			var t apitypes.Task
			raw, err := cl.do(ctx, "GET", v.path("/tasks/"+url.PathEscape(args[0])), nil, &t)
			if err != nil {
				return err
			}
			return v.print(raw, func() { showTask(v.out, &t) })
		}
	})
}

// taskLogsCmd is `tasks logs ID`: the output so far, or all of it with -f.
func taskLogsCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "logs TASK-ID [-f]", Short: "print a task's output; -f follows it until the task ends",
		Long: `logs prints what the task wrote so far (stdout to stdout, stderr to stderr).
With -f it follows until the task ends and exits like tasks run does: with
the command's exit code. Under -o json it prints {"chunks": [...]} (with -f:
the output on stderr and the final task on stdout).`,
		Args: one("task id"), Example: "  devpilot tasks logs -f task_…"}, apiVerb, func(v *verb) runFn {
		fol := v.fs.BoolP("follow", "f", false, "follow the output until the task ends")
		after := v.fs.Int64("after", 0, "only output after this chunk sequence number")
		return func(ctx context.Context, args []string) error {
			id := args[0]
			cl, err := v.connect()
			if err != nil {
				return err
			}
			if *fol {
				return v.follow(ctx, cl, id, *after)
			}
			next := *after
			chunks := []apitypes.LogChunk{}
			truncated := false
			for {
				var p apitypes.LogPage
				if _, err := cl.do(ctx, "GET", v.path(fmt.Sprintf("/tasks/%s/logs?after=%d", url.PathEscape(id), next)), nil, &p); err != nil {
					return err
				}
				for _, ch := range p.Chunks {
					if v.json() {
						chunks = append(chunks, ch)
					} else {
						writeChunk(env, ch)
					}
				}
				next = p.Next
				if !p.More {
					truncated = p.Truncated
					break
				}
			}
			return v.printValue(map[string]any{"chunks": chunks, "truncated": truncated}, func() {
				if truncated {
					fmt.Fprintln(env.Stderr, "# output beyond the control plane's per-task limit was dropped")
				}
			})
		}
	})
}

// taskCancelCmd is `tasks cancel ID`.
func taskCancelCmd(env Env) *cobra.Command {
	return verbCmd(env, &cobra.Command{Use: "cancel TASK-ID", Short: "stop a task", Args: one("task id"),
		Example: "  devpilot tasks cancel task_…"}, apiVerb, func(v *verb) runFn {
		return func(ctx context.Context, args []string) error {
			cl, err := v.connect()
			if err != nil {
				return err
			}
			var t apitypes.Task
			raw, err := cl.do(ctx, "POST", v.path("/tasks/"+url.PathEscape(args[0])+"/cancel"), nil, &t)
			if err != nil {
				return err
			}
			return v.print(raw, func() {
				if t.State == protocol.TaskCanceled {
					fmt.Fprintf(env.Stdout, "Task %s canceled.\n", t.ID)
				} else {
					fmt.Fprintf(env.Stdout, "Asked the agent to stop task %s (%s); it reports canceled when it has.\n", t.ID, t.State)
				}
			})
		}
	})
}

func exitText(c *int) string {
	if c == nil {
		return "-"
	}
	return strconv.Itoa(*c)
}

func stateLine(t *apitypes.Task) string {
	s := t.State
	if t.Reason != "" && t.Reason != t.State {
		s += " (" + t.Reason + ")"
	}
	return s
}

// summary is a short description of what a task does.
func summary(t *apitypes.Task) string {
	sp := t.Spec
	switch {
	case sp.Exec != nil:
		s := strings.Join(sp.Exec.Argv, " ")
		if len(s) > 60 {
			s = s[:57] + "..."
		}
		return s
	case sp.Systemd != nil:
		return sp.Systemd.Action + " " + sp.Systemd.Unit
	case sp.File != nil:
		return "write " + sp.File.Path
	case sp.Deploy != nil:
		return fmt.Sprintf("deploy (%d steps)", len(sp.Deploy.Steps))
	}
	return ""
}

func showTask(o *output, t *apitypes.Task) {
	kv := [][2]string{{"ID", t.ID}, {"Server", t.ServerID}, {"Kind", t.Kind}, {"What", summary(t)}, {"State", stateLine(t)},
		{"Exit code", exitText(t.ExitCode)}, {"Attempts", strconv.Itoa(t.Attempts)}, {"Created", ts(&t.CreatedAt) + " by " + t.CreatedBy},
		{"Sent", ts(t.SentAt)}, {"Started", ts(t.StartedAt)}, {"Finished", ts(t.FinishedAt)}, {"Deadline", ts(&t.Deadline)}}
	if t.DeploymentID != "" {
		kv = append(kv, [2]string{"Deployment", t.DeploymentID})
	}
	if t.Error != "" {
		kv = append(kv, [2]string{"Error", t.Error})
	}
	if t.SHA256 != "" {
		kv = append(kv, [2]string{"SHA-256", t.SHA256})
	}
	if t.Unit != nil {
		kv = append(kv, [2]string{"Unit", fmt.Sprintf("%s %s/%s (%s)", t.Unit.Name, t.Unit.ActiveState, t.Unit.SubState, orDash(t.Unit.UnitFile))})
	}
	out := fmt.Sprintf("%d chunks, %d bytes", t.Log.Seq, t.Log.Bytes)
	if t.Log.Truncated {
		out += " (truncated)"
	}
	kv = append(kv, [2]string{"Output", out})
	o.fields(kv)
	if len(t.Steps) > 0 {
		fmt.Fprintln(o.w, "\nSteps:")
		rows := [][]string{}
		for i, s := range t.Steps {
			rows = append(rows, []string{strconv.Itoa(i + 1), orDash(s.Name), s.Kind, s.State, exitText(s.ExitCode), orDash(s.Error)})
		}
		o.table([]string{"#", "NAME", "KIND", "STATE", "EXIT", "ERROR"}, rows)
	}
}

// taskOutcome turns a final task into the command's result: nil when it
// succeeded, else the remote exit code (255 when there is none).
func taskOutcome(t *apitypes.Task) error {
	if t.State == protocol.TaskSucceeded {
		return nil
	}
	msg := "task " + t.ID + " " + stateLine(t)
	if t.ExitCode != nil {
		msg += fmt.Sprintf(", exit code %d", *t.ExitCode)
	}
	if t.Error != "" {
		msg += ": " + t.Error
	}
	code := ExitRemoteUnknown
	if t.ExitCode != nil && *t.ExitCode > 0 && *t.ExitCode < 256 {
		code = *t.ExitCode
	}
	return &exitError{code: code, msg: msg}
}

func writeChunk(env Env, c apitypes.LogChunk) {
	data := c.Data
	if data == nil {
		data = []byte(c.Text)
	}
	switch c.Stream {
	case protocol.StreamStdout:
		_, _ = env.Stdout.Write(data)
	case protocol.StreamStderr:
		_, _ = env.Stderr.Write(data)
	default:
		for _, line := range strings.SplitAfter(strings.TrimRight(string(data), "\n"), "\n") {
			fmt.Fprintf(env.Stderr, "# %s\n", strings.TrimRight(line, "\n"))
		}
	}
}

// followLogs streams a task's output (server-sent events) to stdout and
// stderr until the task ends, resuming after the last chunk seen if the
// connection breaks. It returns the final task.
func followLogs(ctx context.Context, env Env, cl *client, ws, id string, after int64) (*apitypes.Task, []byte, error) {
	stream := &http.Client{Transport: cl.http.Transport} // no overall timeout: tasks run for long
	failures := 0
	for {
		end, raw, last, err := followOnce(ctx, env, stream, cl, ws, id, after)
		if end != nil || ctx.Err() != nil {
			return end, raw, ctx.Err()
		}
		var ae *APIError
		if errors.As(err, &ae) {
			return nil, nil, err
		}
		if last > after {
			after, failures = last, 0
		}
		if failures++; failures > 5 {
			return nil, nil, fmt.Errorf("following task %s: %w", id, err)
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(time.Duration(failures) * time.Second):
		}
	}
}

func followOnce(ctx context.Context, env Env, stream *http.Client, cl *client, ws, id string, after int64) (*apitypes.Task, []byte, int64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s%s/tasks/%s/logs?follow=1&after=%d", cl.base, wsPath(ws), url.PathEscape(id), after), nil)
	if err != nil {
		return nil, nil, after, err
	}
	req.Header.Set("Authorization", "Bearer "+cl.token.Reveal())
	req.Header.Set("Accept", "text/event-stream")
	resp, err := stream.Do(req)
	if err != nil {
		return nil, nil, after, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var eb struct {
			Error APIError `json:"error"`
		}
		if json.Unmarshal(raw, &eb) != nil || eb.Error.Code == "" {
			return nil, nil, after, &APIError{Status: resp.StatusCode, Code: "http_error", Message: resp.Status}
		}
		eb.Error.Status = resp.StatusCode
		return nil, nil, after, &eb.Error
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var typ string
	var data bytes.Buffer
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			switch typ {
			case "log":
				var c apitypes.LogChunk
				if err := json.Unmarshal(data.Bytes(), &c); err == nil {
					writeChunk(env, c)
					after = c.Seq
				}
			case "end":
				var t apitypes.Task
				if err := json.Unmarshal(data.Bytes(), &t); err != nil {
					return nil, nil, after, fmt.Errorf("decode end event: %w", err)
				}
				if t.Log.Truncated {
					fmt.Fprintln(env.Stderr, "# output beyond the control plane's per-task limit was dropped")
				}
				return &t, bytes.Clone(data.Bytes()), after, nil
			}
			typ = ""
			data.Reset()
		case strings.HasPrefix(line, "event:"):
			typ = strings.TrimSpace(strings.TrimPrefix(line, "event:"))
		case strings.HasPrefix(line, "data:"):
			data.WriteString(strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, after, err
	}
	return nil, nil, after, io.ErrUnexpectedEOF
}
