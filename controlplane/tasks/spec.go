package tasks

import (
	"encoding/base64"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/shared/protocol"
)

// Limits on what a task may ask for.
const (
	DefaultDeadline  = time.Hour
	MaxDeadline      = 7 * 24 * time.Hour
	MaxArgs          = 256
	MaxArgBytes      = 16 << 10
	MaxEnv           = 128
	MaxEnvBytes      = 32 << 10 // one value
	MaxFileBytes     = 512 << 10
	MaxSteps         = 50
	MaxOutputCap     = 64 << 20 // ExecSpec.MaxOutputBytes at most
	maxTaskWireBytes = protocol.MaxMessageBytes - 4<<10
)

// SystemdActions are the actions a systemd task may take.
var SystemdActions = []string{"start", "stop", "restart", "reload", "enable", "disable", "status"}

// Spec is what `POST …/servers/{id}/tasks` takes: a kind and that kind's
// fields, flat.
type Spec struct {
	Kind string `json:"kind"`
	StepFields
	Steps     []Step `json:"steps,omitempty"`      // deploy
	DeadlineS int    `json:"deadline_s,omitempty"` // default 3600
}

// KindFirewall is the plan step the control plane runs itself: the
// server's `ports` lifecycle action, setting its firewall's inbound ports
// to exactly Ports.
const KindFirewall = "firewall"

// MaxPorts bounds a firewall step's ports (as the ports action does).
const MaxPorts = 50

// Step is one step of a deploy task (kind exec, systemd or file) or, in a
// deployment's plan, of kind firewall (Ports).
type Step struct {
	Name string `json:"name,omitempty"`
	Kind string `json:"kind"`
	StepFields
	Ports []int `json:"ports,omitempty"` // firewall
}

// StepFields are the fields of the exec, systemd and file kinds.
type StepFields struct {
	// exec
	Argv           []string          `json:"argv,omitempty"`
	Env            map[string]string `json:"env,omitempty"`
	Dir            string            `json:"dir,omitempty"`
	User           string            `json:"user,omitempty"`
	TimeoutS       int               `json:"timeout_s,omitempty"`
	MaxOutputBytes int64             `json:"max_output_bytes,omitempty"`
	// systemd
	Unit   string `json:"unit,omitempty"`
	Action string `json:"action,omitempty"`
	// file
	Path          string `json:"path,omitempty"`
	ContentBase64 string `json:"content_base64,omitempty"`
	Mode          string `json:"mode,omitempty"`
	Owner         string `json:"owner,omitempty"`
	Group         string `json:"group,omitempty"`
}

// Plan is a deployment's work: the steps of the deploy task each server runs.
type Plan struct {
	Steps []Step `json:"steps"`
}

var (
	envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	userRE   = regexp.MustCompile(`^[a-z_][a-z0-9_.-]{0,31}$|^[0-9]{1,10}$`)
	unitRE   = regexp.MustCompile(`^[A-Za-z0-9:_.@\\-]{1,250}$`)
	modeRE   = regexp.MustCompile(`^0?[0-7]{3,4}$`)
)

func bad(hint, format string, args ...any) error { return problem.Validation(hint, format, args...) }

// deadline validates deadline_s and returns the task's deadline from now.
// The range is checked before multiplying: seconds × 10⁹ overflows
// time.Duration from about 9.2e9 s.
func deadline(now time.Time, s int) (time.Time, error) {
	d := DefaultDeadline
	if s != 0 {
		if !inSeconds(s, MaxDeadline) {
			return time.Time{}, bad("Give deadline_s in seconds, at most 604800 (7 days); default 3600.",
				"deadline_s %d is out of range: give 1 to %d seconds, or 0 for the default %d", s, maxSeconds(MaxDeadline), maxSeconds(DefaultDeadline))
		}
		d = time.Duration(s) * time.Second
	}
	return now.Add(d), nil
}

// inSeconds reports whether 1 <= s <= max in whole seconds, without
// overflowing.
func inSeconds(s int, max time.Duration) bool { return s >= 1 && int64(s) <= maxSeconds(max) }

func maxSeconds(d time.Duration) int64 { return int64(d / time.Second) }

// Build checks a Spec and turns it into the protocol task (without id and
// deadline).
func (s Spec) Build() (protocol.Task, error) {
	t := protocol.Task{Kind: s.Kind}
	switch s.Kind {
	case protocol.KindDeploy:
		if !s.empty() {
			return t, bad("A deploy task takes only steps (and deadline_s); put the fields in its steps.", "deploy task with fields outside its steps")
		}
		for i, st := range s.Steps {
			if st.Kind == KindFirewall {
				return t, bad("A firewall step runs on the control plane: put it in a deployment's plan (POST …/deployments), or use the server's ports action.",
					"steps[%d]: kind firewall is only allowed in a deployment's plan", i)
			}
		}
		d, err := buildSteps(s.Steps, "", 0)
		if err != nil {
			return t, err
		}
		t.Deploy = d
	case protocol.KindExec, protocol.KindSystemd, protocol.KindFile:
		if len(s.Steps) > 0 {
			return t, bad("Only kind deploy takes steps.", "%s task with steps", s.Kind)
		}
		st, err := buildStep(s.Kind, s.StepFields, "")
		if err != nil {
			return t, err
		}
		t.Exec, t.Systemd, t.File = st.Exec, st.Systemd, st.File
	case "":
		return t, bad("Set kind to exec, systemd, file or deploy.", "kind is required")
	default:
		return t, bad("Set kind to exec, systemd, file or deploy.", "unknown task kind %q", s.Kind)
	}
	return t, nil
}

// Phase is a run of a plan: either agent steps (one deploy task per
// server) or one firewall step the control plane runs.
type Phase struct {
	Deploy *protocol.DeploySpec `json:"deploy,omitempty"`
	Ports  []int                `json:"ports,omitempty"` // firewall: exactly these inbound ports
	Name   string               `json:"name,omitempty"`  // firewall step's name
	Step   int                  `json:"step"`            // index of its first step in the plan
}

// Build checks a plan and splits it into phases: consecutive exec, systemd
// and file steps make one deploy task; each firewall step is its own phase.
func (p Plan) Build() ([]Phase, error) {
	if len(p.Steps) == 0 || len(p.Steps) > MaxSteps {
		return nil, bad("Give 1 to 50 steps, each with a kind ("+strings.Join(PlanStepKinds, ", ")+") and its fields.", "plan.steps: %d steps", len(p.Steps))
	}
	var out []Phase
	var run []Step
	start := 0
	flush := func() error {
		if len(run) == 0 {
			return nil
		}
		d, err := buildSteps(run, "plan.", start)
		if err != nil {
			return err
		}
		out = append(out, Phase{Deploy: d, Step: start})
		run = nil
		return nil
	}
	for i, st := range p.Steps {
		if !slices.Contains(PlanStepKinds, st.Kind) {
			return nil, bad("A plan step's kind is one of: "+strings.Join(PlanStepKinds, ", ")+".", "plan.steps[%d]: unknown kind %q", i, st.Kind)
		}
		if st.Kind != KindFirewall {
			if len(st.Ports) > 0 {
				return nil, bad("Only a firewall step takes ports.", "plan.steps[%d]: %s step with ports", i, st.Kind)
			}
			if len(run) == 0 {
				start = i
			}
			run = append(run, st)
			continue
		}
		if err := flush(); err != nil {
			return nil, err
		}
		where := fmt.Sprintf("plan.steps[%d]", i)
		if len(st.Name) > 100 {
			return nil, bad("", "%s: name is longer than 100 characters", where)
		}
		if !st.empty() {
			return nil, bad("A firewall step takes only ports, e.g. {\"kind\":\"firewall\",\"ports\":[22,8080]}.", "%s: firewall step with exec, systemd or file fields", where)
		}
		ports, err := CheckPorts(st.Ports, where+": ")
		if err != nil {
			return nil, err
		}
		out = append(out, Phase{Ports: ports, Name: st.Name, Step: i})
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}

// PlanStepKinds are the kinds of a deployment plan's steps.
var PlanStepKinds = []string{protocol.KindExec, protocol.KindSystemd, protocol.KindFile, KindFirewall}

// CheckPorts validates a firewall step's ports as the ports action does:
// 1 to 50 TCP ports, each 1..65535, none twice. It returns them sorted.
func CheckPorts(ports []int, where string) ([]int, error) {
	if len(ports) == 0 || len(ports) > MaxPorts {
		return nil, bad("Give 1 to 50 TCP ports, e.g. ports: [22, 8080]; they become exactly the server's inbound ports.", "%sports needs 1 to 50 ports, got %d", where, len(ports))
	}
	out := slices.Clone(ports)
	for _, p := range out {
		if p < 1 || p > 65535 {
			return nil, bad("Ports are TCP port numbers from 1 to 65535.", "%sport %d is out of range", where, p)
		}
	}
	slices.Sort(out)
	for i := 1; i < len(out); i++ {
		if out[i] == out[i-1] {
			return nil, bad("List each port once.", "%sport %d is listed twice", where, out[i])
		}
	}
	return out, nil
}

func buildSteps(steps []Step, prefix string, offset int) (*protocol.DeploySpec, error) {
	if len(steps) == 0 || len(steps) > MaxSteps {
		return nil, bad("Give 1 to 50 steps, each with a kind (exec, systemd or file) and its fields.", "%ssteps: %d steps", prefix, len(steps))
	}
	d := &protocol.DeploySpec{}
	for i, st := range steps {
		where := fmt.Sprintf("%ssteps[%d]", prefix, offset+i)
		if len(st.Name) > 100 {
			return nil, bad("", "%s: name is longer than 100 characters", where)
		}
		if st.Kind == protocol.KindDeploy || st.Kind == "" {
			return nil, bad("A step's kind is exec, systemd or file.", "%s: kind %q is not allowed in a step", where, st.Kind)
		}
		ds, err := buildStep(st.Kind, st.StepFields, where+": ")
		if err != nil {
			return nil, err
		}
		ds.Name = st.Name
		d.Steps = append(d.Steps, ds)
	}
	return d, nil
}

func buildStep(kind string, f StepFields, where string) (protocol.DeployStep, error) {
	st := protocol.DeployStep{Kind: kind}
	exec := f.Argv != nil || f.Env != nil || f.Dir != "" || f.User != "" || f.TimeoutS != 0 || f.MaxOutputBytes != 0
	sysd := f.Unit != "" || f.Action != ""
	file := f.Path != "" || f.ContentBase64 != "" || f.Mode != "" || f.Owner != "" || f.Group != ""
	switch kind {
	case protocol.KindExec:
		if sysd || file {
			return st, bad("An exec task takes argv, env, dir, user, timeout_s and max_output_bytes.", "%sexec task with systemd or file fields", where)
		}
		e, err := checkExec(f, where)
		if err != nil {
			return st, err
		}
		st.Exec = e
	case protocol.KindSystemd:
		if exec || file {
			return st, bad("A systemd task takes unit and action.", "%ssystemd task with exec or file fields", where)
		}
		if !unitRE.MatchString(f.Unit) {
			return st, bad("Name a unit such as nginx.service.", "%sinvalid systemd unit %q", where, f.Unit)
		}
		if !known(f.Action) {
			return st, bad("Use one of: "+strings.Join(SystemdActions, ", ")+".", "%sunknown systemd action %q", where, f.Action)
		}
		st.Systemd = &protocol.SystemdSpec{Unit: f.Unit, Action: f.Action}
	case protocol.KindFile:
		if exec || sysd {
			return st, bad("A file task takes path, content_base64, mode, owner and group.", "%sfile task with exec or systemd fields", where)
		}
		fs, err := checkFile(f, where)
		if err != nil {
			return st, err
		}
		st.File = fs
	default:
		return st, bad("Set kind to exec, systemd or file.", "%sunknown kind %q", where, kind)
	}
	return st, nil
}

func known(action string) bool {
	for _, a := range SystemdActions {
		if a == action {
			return true
		}
	}
	return false
}

func checkExec(f StepFields, where string) (*protocol.ExecSpec, error) {
	if len(f.Argv) == 0 || f.Argv[0] == "" {
		return nil, bad("Give the program and its arguments, e.g. [\"systemctl\", \"status\", \"nginx\"]; no shell is involved unless you name one.",
			"%sargv must not be empty", where)
	}
	if len(f.Argv) > MaxArgs {
		return nil, bad("", "%sargv has %d arguments (at most %d)", where, len(f.Argv), MaxArgs)
	}
	for i, a := range f.Argv {
		if len(a) > MaxArgBytes {
			return nil, bad("Write long input to a file with a file task instead.", "%sargv[%d] is longer than %d bytes", where, i, MaxArgBytes)
		}
		if strings.IndexByte(a, 0) >= 0 {
			return nil, bad("", "%sargv[%d] contains a NUL byte", where, i)
		}
	}
	if len(f.Env) > MaxEnv {
		return nil, bad("", "%senv has %d variables (at most %d)", where, len(f.Env), MaxEnv)
	}
	for k, v := range f.Env {
		if !envKeyRE.MatchString(k) || len(k) > 256 {
			return nil, bad("Environment names are letters, digits and underscores, not starting with a digit.", "%sinvalid environment variable name %q", where, k)
		}
		if len(v) > MaxEnvBytes || strings.IndexByte(v, 0) >= 0 {
			return nil, bad("", "%senv %s: value too long or contains a NUL byte", where, k)
		}
	}
	if f.Dir != "" && !absClean(f.Dir) {
		return nil, bad("Give an absolute, clean path such as /srv/app.", "%sdir %q is not an absolute path", where, f.Dir)
	}
	if f.User != "" && !userRE.MatchString(f.User) {
		return nil, bad("Give a user name such as www-data, or a numeric uid.", "%sinvalid user %q", where, f.User)
	}
	if f.TimeoutS != 0 && !inSeconds(f.TimeoutS, protocol.MaxTimeoutS*time.Second) {
		return nil, bad("timeout_s is in seconds; 0 means until the task's deadline.",
			"%stimeout_s %d is out of range: give 1 to %d seconds, or 0 for the task's deadline", where, f.TimeoutS, protocol.MaxTimeoutS)
	}
	if f.MaxOutputBytes < 0 || f.MaxOutputBytes > MaxOutputCap {
		return nil, bad("0 means the agent's default (1 MiB).", "%smax_output_bytes %d is out of range (at most %d)", where, f.MaxOutputBytes, MaxOutputCap)
	}
	return &protocol.ExecSpec{Argv: f.Argv, Env: f.Env, Dir: f.Dir, User: f.User, TimeoutS: f.TimeoutS, MaxOutputBytes: f.MaxOutputBytes}, nil
}

func checkFile(f StepFields, where string) (*protocol.FileSpec, error) {
	if !absClean(f.Path) || strings.HasSuffix(f.Path, "/") || f.Path == "/" {
		return nil, bad("Give an absolute, clean file path such as /etc/myapp/config.toml.", "%spath %q is not an absolute file path", where, f.Path)
	}
	raw, err := base64.StdEncoding.DecodeString(f.ContentBase64)
	if err != nil {
		return nil, bad("Encode the file's bytes with standard base64 (e.g. `base64 -w0 file`).", "%scontent_base64 is not valid base64", where)
	}
	if len(raw) > MaxFileBytes {
		return nil, bad("Files up to 512 KiB travel in a task; fetch bigger ones with an exec task (e.g. curl).", "%sfile content is %d bytes (at most %d)", where, len(raw), MaxFileBytes)
	}
	mode := f.Mode
	if mode == "" {
		mode = "0644"
	}
	if !modeRE.MatchString(mode) {
		return nil, bad("Give the mode in octal, e.g. \"0644\" or \"0600\".", "%smode %q is not an octal file mode", where, f.Mode)
	}
	if m, _ := strconv.ParseUint(mode, 8, 32); m > 0o7777 {
		return nil, bad("Give the mode in octal, at most 7777.", "%smode %q is out of range", where, f.Mode)
	}
	for _, n := range []struct{ what, v string }{{"owner", f.Owner}, {"group", f.Group}} {
		if n.v != "" && !userRE.MatchString(n.v) {
			return nil, bad("Give a user or group name, or a numeric id.", "%sinvalid %s %q", where, n.what, n.v)
		}
	}
	return &protocol.FileSpec{Path: f.Path, ContentBase64: f.ContentBase64, Mode: mode, Owner: f.Owner, Group: f.Group}, nil
}

func absClean(p string) bool {
	if len(p) > 4096 || !strings.HasPrefix(p, "/") || strings.IndexByte(p, 0) >= 0 {
		return false
	}
	return path.Clean(p) == p
}

func (f StepFields) empty() bool {
	return f.Argv == nil && f.Env == nil && f.Dir == "" && f.User == "" && f.TimeoutS == 0 && f.MaxOutputBytes == 0 &&
		f.Unit == "" && f.Action == "" && f.Path == "" && f.ContentBase64 == "" && f.Mode == "" && f.Owner == "" && f.Group == ""
}

// checkWire makes sure the task fits in one protocol message.
func checkWire(t protocol.Task) error {
	b, err := protocol.Encode(protocol.TypeTask, t)
	if err != nil || len(b) > maxTaskWireBytes {
		return bad("Split the work into several tasks, or fetch large files with an exec task.", "the task is too large to send to an agent (over %d bytes encoded)", maxTaskWireBytes)
	}
	return nil
}
