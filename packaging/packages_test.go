package packaging_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

// need returns the path of a tool the test reads packages with; under
// CI=true (.ci/run installs dpkg and rpm) a missing one fails the test.
func need(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is missing (apt-get install %s)", tool, tool)
		}
		t.Skipf("%s is missing (apt-get install %s)", tool, tool)
	}
	return p
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// make packages (scripts/packages.sh) builds the four packages with the
// version from git describe; each holds what README § Install lists, with
// the modes, conffile and maintainer scripts it describes, and the
// binaries carry the release and commit.
func TestMakePackages(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds three binaries and four packages; skipped under -short")
	}
	if runtime.GOARCH != "amd64" {
		t.Skip("the package names below are amd64's")
	}
	dpkgDeb, rpm := need(t, "dpkg-deb"), need(t, "rpm")
	dist := t.TempDir()
	cmd := exec.Command("./scripts/packages.sh", dist)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "VERSION=v1.2.3-4-gabcdef0", "COMMIT=abcdef0123456789abcdef0123456789abcdef01", "ARCHES=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/packages.sh: %v\n%s", err, out)
	}
	const v = "1.2.3+git4.gabcdef0"
	deb := filepath.Join(dist, "devpilot_"+v+"-1_amd64.deb")
	agentDeb := filepath.Join(dist, "devpilot-agent_"+v+"-1_amd64.deb")
	rpmCP := filepath.Join(dist, "devpilot-"+v+"-1.x86_64.rpm")
	rpmAgent := filepath.Join(dist, "devpilot-agent-"+v+"-1.x86_64.rpm")
	for _, p := range []string{deb, agentDeb, rpmCP, rpmAgent} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("make packages did not make %s: %v", filepath.Base(p), err)
		}
	}

	// The control plane's .deb.
	if got := run(t, dpkgDeb, "-f", deb, "Package", "Version", "Architecture"); got != "Package: devpilot\nVersion: "+v+"-1\nArchitecture: amd64\n" {
		t.Errorf("devpilot.deb control:\n%s", got)
	}
	list := run(t, dpkgDeb, "-c", deb)
	for _, want := range []string{
		"-rwxr-xr-x root/root .* ./usr/bin/devpilot$",
		"-rwxr-xr-x root/root .* ./usr/lib/devpilot/agent/devpilot-agent-linux-amd64$",
		"-rwxr-xr-x root/root .* ./usr/lib/devpilot/agent/devpilot-agent-linux-arm64$",
		"-rw-r--r-- root/root .* ./usr/lib/systemd/system/devpilot.service$",
		"-rw-r----- root/root .* ./etc/devpilot/devpilot.env$",
		"-rw-r--r-- root/root .* ./usr/share/doc/devpilot/low-port.conf$",
	} {
		if !matchLine(list, want) {
			t.Errorf("devpilot.deb has no line like %q:\n%s", want, list)
		}
	}
	if strings.Contains(list, "./var/lib/devpilot") {
		t.Errorf("devpilot.deb owns /var/lib/devpilot (removing it must not touch the data):\n%s", list)
	}
	ctl := t.TempDir()
	run(t, dpkgDeb, "-e", deb, ctl)
	if b, _ := os.ReadFile(filepath.Join(ctl, "conffiles")); strings.TrimSpace(string(b)) != "/etc/devpilot/devpilot.env" {
		t.Errorf("conffiles = %q", b)
	}
	for script, want := range map[string]string{"preinst": "useradd --system", "postinst": "try-restart devpilot.service", "prerm": "disable --now devpilot.service"} {
		if b, _ := os.ReadFile(filepath.Join(ctl, script)); !strings.Contains(string(b), want) {
			t.Errorf("%s lacks %q:\n%s", script, want, b)
		}
	}
	root := t.TempDir()
	run(t, dpkgDeb, "-x", deb, root)
	if got := run(t, filepath.Join(root, "usr/bin/devpilot"), "version"); got != "devpilot v1.2.3-4-gabcdef0 (commit abcdef012345, "+runtime.Version()+")\n" {
		t.Errorf("packaged devpilot version: %q", got)
	}
	if got := run(t, filepath.Join(root, "usr/lib/devpilot/agent/devpilot-agent-linux-amd64"), "--version"); !strings.HasPrefix(got, "devpilot-agent v1.2.3-4-gabcdef0 (commit abcdef012345, ") {
		t.Errorf("packaged devpilot-agent --version: %q", got)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "usr/lib/systemd/system/devpilot.service")); !strings.Contains(string(b), "ExecStart=/usr/bin/devpilot serve\n") {
		t.Error("the packaged unit does not start /usr/bin/devpilot serve")
	}

	// The agent's .deb: its unit starts the packaged binary.
	alist := run(t, dpkgDeb, "-c", agentDeb)
	if !matchLine(alist, "-rwxr-xr-x root/root .* ./usr/bin/devpilot-agent$") || !matchLine(alist, "-rw-r--r-- root/root .* ./usr/lib/systemd/system/devpilot-agent.service$") {
		t.Errorf("devpilot-agent.deb:\n%s", alist)
	}
	aroot := t.TempDir()
	run(t, dpkgDeb, "-x", agentDeb, aroot)
	if b, _ := os.ReadFile(filepath.Join(aroot, "usr/lib/systemd/system/devpilot-agent.service")); !strings.Contains(string(b), "\nExecStart=/usr/bin/devpilot-agent run\n") {
		t.Errorf("the agent package's unit does not start /usr/bin/devpilot-agent:\n%s", b)
	}

	// The .rpm files: same contents, config file, scriptlets.
	if got := run(t, rpm, "-qp", "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}\n", rpmCP); got != "devpilot "+v+" 1 x86_64\n" {
		t.Errorf("devpilot.rpm: %q", got)
	}
	rlist := run(t, rpm, "-qlvp", rpmCP)
	for _, want := range []string{
		"-rwxr-xr-x .* root +root .* /usr/bin/devpilot$",
		"-rw-r----- .* root +root .* /etc/devpilot/devpilot.env$",
		"-rwxr-xr-x .* /usr/lib/devpilot/agent/devpilot-agent-linux-arm64$",
		"-rw-r--r-- .* /usr/lib/systemd/system/devpilot.service$",
	} {
		if !matchLine(rlist, want) {
			t.Errorf("devpilot.rpm has no line like %q:\n%s", want, rlist)
		}
	}
	if got := run(t, rpm, "-qcp", rpmCP); got != "/etc/devpilot/devpilot.env\n" {
		t.Errorf("devpilot.rpm config files: %q", got)
	}
	if s := run(t, rpm, "-qp", "--scripts", rpmCP); !strings.Contains(s, "useradd --system") || !strings.Contains(s, "try-restart devpilot.service") {
		t.Errorf("devpilot.rpm scriptlets:\n%s", s)
	}
	if got := run(t, rpm, "-qlp", rpmAgent); got != "/usr/bin/devpilot-agent\n/usr/lib/systemd/system/devpilot-agent.service\n" {
		t.Errorf("devpilot-agent.rpm files: %q", got)
	}
}

func matchLine(text, re string) bool {
	r := regexp.MustCompile(re)
	for _, l := range strings.Split(text, "\n") {
		if r.MatchString(l) {
			return true
		}
	}
	return false
}
