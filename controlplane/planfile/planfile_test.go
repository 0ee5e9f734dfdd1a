package planfile_test

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/devpilot/devpilot/controlplane/planfile"
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
	})
}
