package cli

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
	if _, err := req.Plan.Build(); err != nil {
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
	for _, tc := range []struct{ name, yaml, want string }{
		{"typo", "tag: web\nstep:\n  - kind: exec\n", "field step not found"},
		{"two sources", "tag: web\nsteps:\n  - kind: file\n    path: /x\n    content: a\n    from: app.conf\n", "give one of content, from"},
		{"missing from", "tag: web\nsteps:\n  - kind: file\n    path: /x\n    from: nope.conf\n", "nope.conf"},
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
