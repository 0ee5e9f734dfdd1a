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
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"gopkg.in/yaml.v3"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/tasks"
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

func runTasks(ctx context.Context, env Env, args []string) error {
	verbs := map[string]func([]string) error{
		"run":    func(args []string) error { return runTaskRun(ctx, env, args) },
		"list":   func(args []string) error { return runTaskList(ctx, env, args) },
		"show":   func(args []string) error { return runTaskShow(ctx, env, args) },
		"logs":   func(args []string) error { return runTaskLogs(ctx, env, args) },
		"cancel": func(args []string) error { return runTaskCancel(ctx, env, args) },
	}
	return subcommand(env, "tasks", args, verbs, []string{"run", "list", "show", "logs", "cancel"})
}

// runTaskRun is `tasks run`: start a task and, unless --detach, follow it.
func runTaskRun(ctx context.Context, env Env, args []string) error {
	// Everything after "--" is the command, flags or not.
	var argv []string
	for i, a := range args {
		if a == "--" {
			args, argv = args[:i], args[i+1:]
			break
		}
	}
	v := newVerb(env, "tasks run")
	server := v.fs.String("server", "", "server id to run on (required)")
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
	pos, err := v.parse(args)
	if err != nil {
		return err
	}
	argv = append(pos, argv...)
	if *server == "" {
		return usagef("tasks run: --server is required")
	}
	spec := tasks.Spec{DeadlineS: int(deadline.Round(time.Second) / time.Second)}
	kinds := 0
	if len(argv) > 0 {
		kinds++
		spec.Kind, spec.Argv, spec.Dir, spec.User = protocol.KindExec, argv, *dir, *user
		spec.TimeoutS = int(timeout.Round(time.Second) / time.Second)
		for _, e := range envs {
			k, v, ok := strings.Cut(e, "=")
			if !ok {
				return usagef("--env %q: use KEY=VALUE", e)
			}
			if spec.Env == nil {
				spec.Env = map[string]string{}
			}
			spec.Env[k] = v
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
		return err
	}
	var t apitypes.Task
	raw, err := cl.do(ctx, "POST", v.path("/servers/"+url.PathEscape(*server)+"/tasks"), spec, &t)
	if err != nil {
		return err
	}
	if *detach {
		return v.print(raw, func() {
			fmt.Fprintf(env.Stdout, "Task %s is %s. Follow it with: devpilot tasks logs -f %s\n", t.ID, t.State, t.ID)
		})
	}
	if t.State == protocol.TaskQueued {
		fmt.Fprintf(env.Stderr, "# task %s is queued: the server's agent is not connected; waiting for it\n", t.ID)
	}
	end, err := followLogs(ctx, env, cl, *v.ws, t.ID, 0)
	if err != nil {
		return err
	}
	return taskOutcome(end)
}

// runTaskList is `tasks list`.
func runTaskList(ctx context.Context, env Env, args []string) error {
	v := newVerb(env, "tasks list")
	server := v.fs.String("server", "", "only this server's tasks")
	dep := v.fs.String("deployment", "", "only this deployment's tasks")
	state := v.fs.String("state", "", "only tasks in this state")
	limit := v.fs.Int("limit", 50, "at most this many (newest first)")
	_, cl, err := v.start(args)
	if err != nil {
		return err
	}
	q := url.Values{}
	for k, v := range map[string]string{"server": *server, "deployment": *dep, "state": *state, "limit": strconv.Itoa(*limit)} {
		if v != "" {
			q.Set(k, v)
		}
	}
	var resp struct {
		Tasks []apitypes.Task `json:"tasks"`
	}
	raw, err := cl.do(ctx, "GET", v.path("/tasks?"+q.Encode()), nil, &resp)
	if err != nil {
		return err
	}
	return v.print(raw, func() {
		rows := [][]string{}
		for _, t := range resp.Tasks {
			rows = append(rows, []string{t.ID, t.ServerID, t.Kind, stateLine(&t), exitText(t.ExitCode), ts(&t.CreatedAt), summary(&t)})
		}
		v.out.table([]string{"ID", "SERVER", "KIND", "STATE", "EXIT", "CREATED", "WHAT"}, rows)
	})
}

// runTaskShow is `tasks show ID`.
func runTaskShow(ctx context.Context, env Env, args []string) error {
	v := newVerb(env, "tasks show")
	id, cl, err := v.startOne(args, "task id")
	if err != nil {
		return err
	}
	var t apitypes.Task
	raw, err := cl.do(ctx, "GET", v.path("/tasks/"+url.PathEscape(id)), nil, &t)
	if err != nil {
		return err
	}
	return v.print(raw, func() { showTask(v.out, &t) })
}

// runTaskLogs is `tasks logs ID`: the output so far, or all of it with -f.
func runTaskLogs(ctx context.Context, env Env, args []string) error {
	v := newVerb(env, "tasks logs")
	fol := v.fs.Bool("f", false, "follow the output until the task ends")
	v.fs.BoolVar(fol, "follow", false, "same as -f")
	after := v.fs.Int64("after", 0, "only output after this chunk sequence number")
	id, cl, err := v.startOne(args, "task id")
	if err != nil {
		return err
	}
	if *fol {
		end, err := followLogs(ctx, env, cl, *v.ws, id, *after)
		if err != nil {
			return err
		}
		return taskOutcome(end)
	}
	next := *after
	for {
		var p apitypes.LogPage
		if _, err := cl.do(ctx, "GET", v.path(fmt.Sprintf("/tasks/%s/logs?after=%d", url.PathEscape(id), next)), nil, &p); err != nil {
			return err
		}
		for _, ch := range p.Chunks {
			writeChunk(env, ch)
		}
		next = p.Next
		if !p.More {
			if p.Truncated {
				fmt.Fprintln(env.Stderr, "# output beyond the control plane's per-task limit was dropped")
			}
			return nil
		}
	}
}

// runTaskCancel is `tasks cancel ID`.
func runTaskCancel(ctx context.Context, env Env, args []string) error {
	v := newVerb(env, "tasks cancel")
	id, cl, err := v.startOne(args, "task id")
	if err != nil {
		return err
	}
	var t apitypes.Task
	raw, err := cl.do(ctx, "POST", v.path("/tasks/"+url.PathEscape(id)+"/cancel"), nil, &t)
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

// taskOutcome turns a final task into the command's result.
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
	return &errTaskFailed{msg}
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
func followLogs(ctx context.Context, env Env, cl *client, ws, id string, after int64) (*apitypes.Task, error) {
	stream := &http.Client{Transport: cl.http.Transport} // no overall timeout: tasks run for long
	failures := 0
	for {
		end, last, err := followOnce(ctx, env, stream, cl, ws, id, after)
		if end != nil || ctx.Err() != nil {
			return end, ctx.Err()
		}
		var ae *APIError
		if errors.As(err, &ae) {
			return nil, err
		}
		if last > after {
			after, failures = last, 0
		}
		if failures++; failures > 5 {
			return nil, fmt.Errorf("following task %s: %w", id, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Duration(failures) * time.Second):
		}
	}
}

func followOnce(ctx context.Context, env Env, stream *http.Client, cl *client, ws, id string, after int64) (*apitypes.Task, int64, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s%s/tasks/%s/logs?follow=1&after=%d", cl.base, wsPath(ws), url.PathEscape(id), after), nil)
	if err != nil {
		return nil, after, err
	}
	req.Header.Set("Authorization", "Bearer "+cl.token.Reveal())
	req.Header.Set("Accept", "text/event-stream")
	resp, err := stream.Do(req)
	if err != nil {
		return nil, after, err
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var eb struct {
			Error APIError `json:"error"`
		}
		if json.Unmarshal(raw, &eb) != nil || eb.Error.Code == "" {
			return nil, after, &APIError{Status: resp.StatusCode, Code: "http_error", Message: resp.Status}
		}
		eb.Error.Status = resp.StatusCode
		return nil, after, &eb.Error
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
					return nil, after, fmt.Errorf("decode end event: %w", err)
				}
				if t.Log.Truncated {
					fmt.Fprintln(env.Stderr, "# output beyond the control plane's per-task limit was dropped")
				}
				return &t, after, nil
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
		return nil, after, err
	}
	return nil, after, io.ErrUnexpectedEOF
}

// --- deploy

// PlanFile is a deployment plan in YAML (see testdata/plan.yaml). A file
// step may give its content inline (content) or from a local file
// (from, relative to the plan file) instead of content_base64.
type PlanFile struct {
	Servers     []string   `yaml:"servers"`
	Tag         string     `yaml:"tag"`
	MaxParallel int        `yaml:"max_parallel"`
	DeadlineS   int        `yaml:"deadline_s"`
	Steps       []PlanStep `yaml:"steps"`
}

// PlanStep is one step of a plan file.
type PlanStep struct {
	Name           string            `yaml:"name"`
	Kind           string            `yaml:"kind"`
	Argv           []string          `yaml:"argv"`
	Env            map[string]string `yaml:"env"`
	Dir            string            `yaml:"dir"`
	User           string            `yaml:"user"`
	TimeoutS       int               `yaml:"timeout_s"`
	MaxOutputBytes int64             `yaml:"max_output_bytes"`
	Unit           string            `yaml:"unit"`
	Action         string            `yaml:"action"`
	Path           string            `yaml:"path"`
	Content        *string           `yaml:"content"`
	From           string            `yaml:"from"`
	ContentBase64  string            `yaml:"content_base64"`
	Mode           string            `yaml:"mode"`
	Owner          string            `yaml:"owner"`
	Group          string            `yaml:"group"`
}

// Plan files and the local files their steps name are read up to these
// sizes: far above what a task can carry (tasks.MaxFileBytes), and never
// a read without end (from: /dev/zero).
const (
	maxPlanBytes     = 4 << 20
	maxPlanFromBytes = tasks.MaxFileBytes
)

// LoadPlan reads a plan file into a deployment request.
func LoadPlan(path string) (tasks.DeploymentRequest, error) {
	b, err := readCapped(path, maxPlanBytes)
	if err != nil {
		return tasks.DeploymentRequest{}, fmt.Errorf("read plan: %w", err)
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
func parsePlan(b []byte, name string, readFrom func(from string) ([]byte, error)) (tasks.DeploymentRequest, error) {
	var req tasks.DeploymentRequest
	var pf PlanFile
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&pf); err != nil {
		return req, fmt.Errorf("plan %s: %w", name, err)
	}
	if err := plainText(pf); err != nil {
		return req, fmt.Errorf("plan %s: %w", name, err)
	}
	req = tasks.DeploymentRequest{Servers: pf.Servers, Tag: pf.Tag, MaxParallel: pf.MaxParallel, DeadlineS: pf.DeadlineS}
	for i, s := range pf.Steps {
		st := tasks.Step{Name: s.Name, Kind: s.Kind, StepFields: tasks.StepFields{Argv: s.Argv, Env: s.Env, Dir: s.Dir, User: s.User,
			TimeoutS: s.TimeoutS, MaxOutputBytes: s.MaxOutputBytes, Unit: s.Unit, Action: s.Action, Path: s.Path,
			ContentBase64: s.ContentBase64, Mode: s.Mode, Owner: s.Owner, Group: s.Group}}
		sources := 0
		if s.Content != nil {
			sources++
			st.ContentBase64 = base64.StdEncoding.EncodeToString([]byte(*s.Content))
		}
		if s.From != "" {
			sources++
			data, err := readFrom(s.From)
			if err != nil {
				return req, fmt.Errorf("plan step %d (%s): %w", i+1, s.Name, err)
			}
			st.ContentBase64 = base64.StdEncoding.EncodeToString(data)
		}
		if s.ContentBase64 != "" {
			sources++
		}
		if sources > 1 {
			return req, fmt.Errorf("plan step %d (%s): give one of content, from and content_base64", i+1, s.Name)
		}
		req.Plan.Steps = append(req.Plan.Steps, st)
	}
	return req, nil
}

// plainText refuses a plan whose values are not valid UTF-8 (YAML's
// !!binary can make them so): JSON would turn such bytes into U+FFFD, so
// the servers would get something other than the plan says. Binary file
// content goes in content (sent as base64) or content_base64.
func plainText(pf PlanFile) error {
	bad := func(where string, vs ...string) error {
		for _, v := range vs {
			if !utf8.ValidString(v) {
				return fmt.Errorf("%s is not valid UTF-8 text (binary file content goes in content or content_base64)", where)
			}
		}
		return nil
	}
	if err := bad("tag", pf.Tag); err != nil {
		return err
	}
	if err := bad("servers", pf.Servers...); err != nil {
		return err
	}
	for i, s := range pf.Steps {
		where := fmt.Sprintf("step %d (%s)", i+1, strings.ToValidUTF8(s.Name, "?"))
		if err := bad(where+": argv", s.Argv...); err != nil {
			return err
		}
		for k, v := range s.Env {
			if err := bad(where+": env", k, v); err != nil {
				return err
			}
		}
		if err := bad(where, s.Name, s.Kind, s.Dir, s.User, s.Unit, s.Action, s.Path, s.From, s.ContentBase64, s.Mode, s.Owner, s.Group); err != nil {
			return err
		}
	}
	return nil
}

func runDeploy(ctx context.Context, env Env, args []string) error {
	v := newVerb(env, "deploy")
	planPath := v.fs.String("f", "", "plan file (YAML; see the README)")
	var servers stringList
	v.fs.Var(&servers, "server", "deploy to this server id (repeat; overrides the plan's targets)")
	tag := v.fs.String("tag", "", "deploy to the servers carrying this tag (overrides the plan's targets)")
	par := v.fs.Int("max-parallel", 0, "servers deployed at once (overrides the plan; default 1)")
	deadline := v.fs.Duration("deadline", 0, "each server's deadline (overrides the plan; default 1h)")
	detach := v.fs.Bool("detach", false, "print the deployment id and return without waiting")
	interval := v.fs.Duration("poll", time.Second, "how often progress is checked")
	pos, err := v.parse(args)
	if err != nil {
		return err
	}
	if len(pos) == 2 && pos[0] == "status" {
		cl, err := v.connect()
		if err != nil {
			return err
		}
		var d apitypes.Deployment
		raw, err := cl.do(ctx, "GET", v.path("/deployments/"+url.PathEscape(pos[1])), nil, &d)
		if err != nil {
			return err
		}
		if v.out.json {
			v.out.raw(raw)
			return nil
		}
		return watchDeployment(ctx, env, cl, *v.ws, &d, *interval)
	}
	if len(pos) > 0 {
		return usagef("deploy: unexpected argument %q (the plan is given with -f; `deploy status ID` follows one)", pos[0])
	}
	if *planPath == "" {
		return usagef("deploy: give the plan with -f plan.yaml")
	}
	req, err := LoadPlan(*planPath)
	if err != nil {
		return err
	}
	if len(servers) > 0 || *tag != "" {
		req.Servers, req.Tag = servers, *tag
	}
	if *par > 0 {
		req.MaxParallel = *par
	}
	if *deadline > 0 {
		req.DeadlineS = int(deadline.Round(time.Second) / time.Second)
	}
	cl, err := v.connect()
	if err != nil {
		return err
	}
	var d apitypes.Deployment
	raw, err := cl.do(ctx, "POST", v.path("/deployments"), req, &d)
	if err != nil {
		return err
	}
	if *detach {
		return v.print(raw, func() {
			fmt.Fprintf(env.Stdout, "Deployment %s started on %d servers. Follow it with: devpilot deploy status %s\n", d.ID, len(d.Targets), d.ID)
		})
	}
	fmt.Fprintf(env.Stdout, "Deployment %s: %d servers, %d at a time\n", d.ID, len(d.Targets), d.MaxParallel)
	return watchDeployment(ctx, env, cl, *v.ws, &d, *interval)
}

// watchDeployment prints each server's progress until the deployment ends;
// an error if any server failed.
func watchDeployment(ctx context.Context, env Env, cl *client, ws string, d *apitypes.Deployment, interval time.Duration) error {
	seen := map[string]string{}
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
			fmt.Fprintln(env.Stdout, line)
		}
		if d.State != tasks.DeployRunning {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(interval):
		}
		// A fresh value: decoding into the old one would merge its Counts map.
		var next apitypes.Deployment
		if _, err := cl.do(ctx, "GET", wsPath(ws)+"/deployments/"+url.PathEscape(d.ID), nil, &next); err != nil {
			return err
		}
		*d = next
	}
	counts := []string{}
	for _, k := range sortedKeys(d.Counts) {
		counts = append(counts, fmt.Sprintf("%d %s", d.Counts[k], k))
	}
	fmt.Fprintf(env.Stdout, "Deployment %s %s: %s\n", d.ID, d.State, strings.Join(counts, ", "))
	if d.State != tasks.DeploySucceeded {
		msg := "deployment " + d.ID + " " + d.State
		if d.Error != "" {
			msg += ": " + d.Error
		}
		return &errTaskFailed{msg}
	}
	return nil
}
