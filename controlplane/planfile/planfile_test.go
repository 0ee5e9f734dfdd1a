package planfile_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/planfile"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/tasks"
)

func noFiles(string) ([]byte, error) { return nil, errors.New("no local files here") }

func TestParseReadsTheCLIsPlanFormat(t *testing.T) {
	req, err := planfile.Parse([]byte(`tag: web
max_parallel: 2
steps:
  - name: hello
    kind: exec
    argv: ["/bin/sh", "-c", "echo hi"]
  - kind: file
    path: /etc/motd
    content: "hello\n"
    mode: "0644"
`), "form", noFiles)
	if err != nil {
		t.Fatal(err)
	}
	if req.Tag != "web" || req.MaxParallel != 2 || len(req.Plan.Steps) != 2 || req.Plan.Steps[0].Argv[2] != "echo hi" {
		t.Fatalf("parsed %+v", req)
	}
	if got, _ := base64.StdEncoding.DecodeString(req.Plan.Steps[1].ContentBase64); string(got) != "hello\n" {
		t.Errorf("inline content: %q", got)
	}
}

func TestParseRefusals(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field": "steps:\n  - kind: exec\n    argvv: [true]\n",
		"two sources":   "steps:\n  - kind: file\n    path: /x\n    content: a\n    content_base64: YQ==\n",
		"from, no disk": "steps:\n  - kind: file\n    path: /x\n    from: ./x\n",
		"not YAML":      "steps: [\n",
		"binary":        "steps:\n  - kind: exec\n    argv: [!!binary /w==]\n",
	} {
		_, err := planfile.Parse([]byte(doc), "form", noFiles)
		switch {
		case err == nil:
			t.Errorf("%s: accepted", name)
		case !strings.Contains(err.Error(), "plan"):
			t.Errorf("%s: error does not say it is the plan's: %v", name, err)
		}
	}
}

// FuzzParse feeds the console's plan box (untrusted input) to Parse: it
// never panics, and what it accepts is valid UTF-8 text.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"steps:\n  - kind: exec\n    argv: [uptime]\n",
		"tag: web\nsteps:\n  - kind: systemd\n    unit: nginx\n    action: restart\n",
		"steps:\n  - kind: file\n    path: /etc/motd\n    content: hi\n",
		"{\"steps\": [{\"kind\": \"exec\", \"argv\": [\"true\"]}]}",
		"steps: [\n", "", "- a\n- b\n", "steps:\n  - argv: [!!binary /w==]\n",
		"steps:\n  - kind: firewall\n    ports: [22, 8080]\n  - kind: exec\n    argv: [true]\n",
		"steps:\n  - kind: firewall\n    ports: [22, 22, 0, 65536, -1]\n",
		"steps:\n  - kind: exec\n    argv: [a]\n  - kind: firewall\n    ports: [1]\n  - kind: file\n    path: /x\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := planfile.Parse(b, "form", noFiles)
		if err != nil {
			return
		}
		for _, st := range req.Plan.Steps {
			for _, a := range st.Argv {
				if !utf8.ValidString(a) {
					t.Fatalf("accepted non-UTF-8 argv %q", a)
				}
			}
		}
		// What the API's door accepts: firewall ports in range, each once,
		// sorted; every step in exactly one phase, in order.
		phases, err := servicePlan(t, req.Plan).Build()
		if err != nil {
			return
		}
		n := 0
		for _, ph := range phases {
			if ph.Step != n {
				t.Fatalf("phase starts at step %d, want %d", ph.Step, n)
			}
			if ph.Deploy != nil {
				n += len(ph.Deploy.Steps)
				continue
			}
			n++
			for i, p := range ph.Ports {
				if p < 1 || p > 65535 || i > 0 && p <= ph.Ports[i-1] {
					t.Fatalf("accepted ports %v", ph.Ports)
				}
			}
		}
		if n != len(req.Plan.Steps) {
			t.Fatalf("phases cover %d of %d steps", n, len(req.Plan.Steps))
		}
	})
}

func TestParseFirewallStep(t *testing.T) {
	req, err := planfile.Parse([]byte(`servers: [srv_1]
steps:
  - name: open app port
    kind: firewall
    ports: [8080, 22]
  - kind: exec
    argv: [/bin/true]
`), "plan.yaml", noFiles)
	if err != nil {
		t.Fatal(err)
	}
	if s := req.Plan.Steps[0]; s.Kind != "firewall" || len(s.Ports) != 2 || s.Ports[0] != 8080 || s.Ports[1] != 22 {
		t.Fatalf("firewall step parsed as %+v", s)
	}
	phases, err := servicePlan(t, req.Plan).Build()
	if err != nil {
		t.Fatal(err)
	}
	if len(phases) != 2 || phases[0].Deploy != nil || phases[1].Deploy == nil || phases[1].Step != 1 {
		t.Fatalf("phases %+v: want the firewall step, then one deploy task", phases)
	}
	if p := phases[0].Ports; len(p) != 2 || p[0] != 22 || p[1] != 8080 || phases[0].Name != "open app port" {
		t.Errorf("firewall phase %+v: want exactly [22 8080]", phases[0])
	}
}

func TestFirewallStepRefusals(t *testing.T) {
	for name, c := range map[string]struct{ doc, want string }{
		"duplicate":           {"steps:\n  - kind: firewall\n    ports: [22, 80, 22]\n", "port 22 is listed twice"},
		"zero":                {"steps:\n  - kind: firewall\n    ports: [0]\n", "port 0 is out of range"},
		"too high":            {"steps:\n  - kind: firewall\n    ports: [65536]\n", "port 65536 is out of range"},
		"none":                {"steps:\n  - kind: firewall\n", "ports needs 1 to 50 ports"},
		"exec fields":         {"steps:\n  - kind: firewall\n    ports: [22]\n    argv: [/bin/true]\n", "firewall step with exec"},
		"ports on exec":       {"steps:\n  - kind: exec\n    argv: [/bin/true]\n    ports: [22]\n", "exec step with ports"},
		"unknown kind":        {"steps:\n  - kind: firewal\n    ports: [22]\n", "exec, systemd, file, firewall"},
		"later step numbered": {"steps:\n  - kind: firewall\n    ports: [22]\n  - kind: exec\n    argv: []\n", "plan.steps[1]"},
	} {
		req, err := planfile.Parse([]byte(c.doc), "form", noFiles)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		_, err = servicePlan(t, req.Plan).Build()
		var pe *problem.Error
		switch {
		case err == nil:
			t.Errorf("%s: accepted", name)
		case !errors.As(err, &pe):
			t.Errorf("%s: %v is not a problem", name, err)
		case !strings.Contains(pe.Message+" "+pe.Hint, c.want):
			t.Errorf("%s: %q (hint %q) does not say %q", name, pe.Message, pe.Hint, c.want)
		}
	}
}

// servicePlan is what the API makes of a plan it receives: the same JSON
// decoded into the tasks service's Plan (whose Build is the door's check).
func servicePlan(t testing.TB, p apitypes.Plan) tasks.Plan {
	t.Helper()
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var out tasks.Plan
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}
