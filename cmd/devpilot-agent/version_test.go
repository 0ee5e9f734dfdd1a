package main

import (
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
)

// What the Makefile's ldflags stamp is what `devpilot-agent --version`
// prints: release, commit and the Go toolchain, on one line.
func TestVersionFlagPrintsBuildStamp(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the binary; skipped under -short")
	}
	bin := filepath.Join(t.TempDir(), "devpilot-agent")
	const pkg = "github.com/devpilot/devpilot/shared/version"
	build := exec.Command("go", "build", "-o", bin, "-ldflags",
		"-X "+pkg+".Version=v9.8.7-3-gabcdef0 -X "+pkg+".Commit=abcdef0123456789abcdef0123456789abcdef01", ".")
	build.Env = append(build.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	for _, arg := range []string{"--version", "version"} {
		out, err := exec.Command(bin, arg).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", arg, err, out)
		}
		want := "devpilot-agent v9.8.7-3-gabcdef0 (commit abcdef012345, " + runtime.Version() + ")\n"
		if string(out) != want {
			t.Errorf("devpilot-agent %s = %q, want %q", arg, out, want)
		}
	}
}
