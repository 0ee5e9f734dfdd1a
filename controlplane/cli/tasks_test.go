package cli

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/tasks"
)

// The README's example plan loads, and every step passes the control
// plane's own validation.
func TestExamplePlanLoads(t *testing.T) {
	t.Parallel()
	req, err := LoadPlan("testdata/plan.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if req.Tag != "devpilot" || req.MaxParallel != 2 || req.DeadlineS != 1800 || len(req.Plan.Steps) != 5 {
		t.Fatalf("plan: %+v", req)
	}
	if _, err := servicePlan(t, req.Plan).Build(); err != nil {
		t.Fatalf("the example plan does not validate: %v", err)
	}
	f := req.Plan.Steps[0]
	content, _ := base64.StdEncoding.DecodeString(f.ContentBase64)
	if f.Mode != "0640" || !strings.HasPrefix(string(content), "listen = \":8080\"\n") {
		t.Fatalf("file step: mode %q content %q", f.Mode, content)
	}
}

func TestPlanRefusals(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "app.conf"), []byte("x=1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "big.bin"), make([]byte, 600<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"typo", "tag: web\nstep:\n  - kind: exec\n", "field step not found"},
		{"two sources", "tag: web\nsteps:\n  - kind: file\n    path: /x\n    content: a\n    from: app.conf\n", "give one of content, from"},
		{"missing from", "tag: web\nsteps:\n  - kind: file\n    path: /x\n    from: nope.conf\n", "nope.conf"},
		// Read no further than a task can carry, so from: /dev/zero ends.
		{"big from", "tag: web\nsteps:\n  - kind: file\n    path: /x\n    from: big.bin\n", "big.bin is larger than 512 KiB"},
		// JSON would send U+FFFD instead of these bytes.
		{"binary argv", "tag: web\nsteps:\n  - kind: exec\n    argv: [!!binary /w==]\n", "step 1 (): argv is not valid UTF-8"},
		{"binary tag", "tag: !!binary 0000\n", "tag is not valid UTF-8"},
		{"endless from", "tag: web\nsteps:\n  - kind: file\n    path: /x\n    from: /dev/zero\n", "/dev/zero is larger than 512 KiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name+".yaml")
			if err := os.WriteFile(p, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadPlan(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
	p := filepath.Join(dir, "ok.yaml")
	if err := os.WriteFile(p, []byte("servers: [srv_a]\nsteps:\n  - kind: file\n    path: /etc/app.conf\n    from: app.conf\n    mode: 0600\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	req, err := LoadPlan(p)
	if err != nil {
		t.Fatal(err)
	}
	if req.Plan.Steps[0].ContentBase64 != base64.StdEncoding.EncodeToString([]byte("x=1\n")) || req.Plan.Steps[0].Mode != "0600" {
		t.Fatalf("from/mode: %+v", req.Plan.Steps[0])
	}
}

// FuzzParsePlan feeds plan files (what `devpilot deploy -f` reads) to
// parsePlan: it never panics or hangs; it accepts only documents whose
// top-level keys are the plan's fields; what it accepts survives the JSON
// trip to the API unchanged (no value silently rewritten on the way);
// inline content arrives as the base64 of exactly that content.
func FuzzParsePlan(f *testing.F) {
	example, err := os.ReadFile("testdata/plan.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	for _, s := range []string{
		"servers: [srv_a]\nsteps:\n  - kind: file\n    path: /etc/app.conf\n    from: app.conf\n    mode: 0600\n",
		"tag: web\nsteps:\n  - kind: exec\n    argv: [\"\\xff\"]\n",
		"tag: web\nsteps:\n  - {kind: exec, argv: [a], env: {A: \"\\x00\"}}\n",
		"a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n",
		"steps: &s [*s]\n", "tag: !!binary aGk=\n", "max_parallel: 1e99\n", "deadline_s: 0x7fffffffffffffff\n",
		"---\ntag: a\n---\ntag: b\n", "tag: [1]\n", "TAG: web\n", "tag: web\ntag: web\n", "? [a]\n: b\n", "",
		"steps:\n  - kind: file\n    content: \"\\uD800\"\n", "steps:\n  - kind: file\n    content: |\n      a\n    from: x\n",
	} {
		f.Add([]byte(s))
	}
	known := map[string]bool{}
	for _, k := range []string{"servers", "tag", "max_parallel", "deadline_s", "steps"} {
		known[k] = true
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var froms []string
		req, err := parsePlan(b, "plan.yaml", func(from string) ([]byte, error) {
			froms = append(froms, from)
			return []byte("from:" + from), nil
		})
		if err != nil {
			return
		}
		var top map[string]any
		if yaml.Unmarshal(b, &top) == nil {
			for k := range top {
				if !known[k] {
					t.Fatalf("accepted unknown field %q", k)
				}
			}
		}
		j, err := json.Marshal(req)
		if err != nil {
			t.Fatalf("an accepted plan does not encode: %v", err)
		}
		var back tasks.DeploymentRequest
		if err := json.Unmarshal(j, &back); err != nil {
			t.Fatal(err)
		}
		if a, b := stringsIn(reflect.ValueOf(req)), stringsIn(reflect.ValueOf(back)); !slices.Equal(a, b) {
			t.Fatalf("the plan's strings change on their way to the API:\n%q\n%q", a, b)
		}
		if back.MaxParallel != req.MaxParallel || back.DeadlineS != req.DeadlineS || len(back.Plan.Steps) != len(req.Plan.Steps) {
			t.Fatalf("the plan changes on its way to the API:\n%+v\n%+v", req, back)
		}
		var pf PlanFile
		if yaml.Unmarshal(b, &pf) != nil || len(pf.Steps) != len(req.Plan.Steps) {
			return
		}
		for i, s := range pf.Steps {
			got := req.Plan.Steps[i].ContentBase64
			switch {
			case s.Content != nil && got != base64.StdEncoding.EncodeToString([]byte(*s.Content)):
				t.Fatalf("step %d: content %q sent as %q", i, *s.Content, got)
			case s.From != "" && (!slices.Contains(froms, s.From) || got != base64.StdEncoding.EncodeToString([]byte("from:"+s.From))):
				t.Fatalf("step %d: from %q sent as %q", i, s.From, got)
			}
		}
		_, _ = servicePlan(t, req.Plan).Build() // the API's own checks take whatever comes
	})
}

// stringsIn returns every string (map keys too) inside v, sorted.
func stringsIn(v reflect.Value) []string {
	var out []string
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.String:
			out = append(out, v.String())
		case reflect.Pointer:
			if !v.IsNil() {
				walk(v.Elem())
			}
		case reflect.Slice, reflect.Array:
			for i := range v.Len() {
				walk(v.Index(i))
			}
		case reflect.Map:
			for it := v.MapRange(); it.Next(); {
				walk(it.Key())
				walk(it.Value())
			}
		case reflect.Struct:
			for i := range v.NumField() {
				walk(v.Field(i))
			}
		}
	}
	walk(v)
	slices.Sort(out)
	return out
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
