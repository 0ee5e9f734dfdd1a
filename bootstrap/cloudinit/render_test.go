package cloudinit

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/controlplane/secrets"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

const (
	shaA = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	shaB = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

func goldenParams(t *testing.T) Params {
	t.Helper()
	ca, err := os.ReadFile("testdata/ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	return Params{
		ControlPlaneURL: "https://cp.example.com:8443/",
		CACertPEM:       string(ca),
		AgentSHA256:     map[string]string{ArchAMD64: shaA, ArchARM64: shaB},
		ServerID:        "srv_01HZX3",
		BootstrapToken:  secrets.New("dpb_0123456789abcdef"),
		Hostname:        "web-1",
	}
}

func TestRenderGolden(t *testing.T) {
	t.Parallel()
	hostile := goldenParams(t)
	hostile.ServerID = `srv'; touch pwned; echo '`
	hostile.BootstrapToken = secrets.New("tok$(touch pwned)`touch pwned`\"\\'")
	hostile.Hostname = `web'"$HOME`
	httpDev := goldenParams(t)
	httpDev.ControlPlaneURL = "http://127.0.0.1:8080"
	httpDev.CACertPEM = ""
	httpDev.AgentSHA256 = map[string]string{ArchAMD64: shaA}
	httpDev.Hostname = ""
	// Two pinned release keys (a rotation): both reach the bootstrap JSON.
	withKeys := goldenParams(t)
	withKeys.ReleaseKeys = []string{"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="}
	for name, p := range map[string]Params{"basic": goldenParams(t), "hostile": hostile, "http-loopback": httpDev, "release-keys": withKeys} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := Render(p)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", name+".golden.sh")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("rendered user-data differs from %s (run go test -update and review the diff)\n%s", path, got)
			}
		})
	}
}

// TestRenderSyntax checks the rendered script with sh -n and, when it is
// installed, shellcheck (set DEVPILOT_REQUIRE_SHELLCHECK=1 to insist).
func TestRenderSyntax(t *testing.T) {
	t.Parallel()
	script, err := Render(goldenParams(t))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "user-data.sh")
	if err := os.WriteFile(path, script, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, sh := range []string{"sh", "dash", "bash"} {
		if _, err := exec.LookPath(sh); err != nil {
			continue
		}
		if out, err := exec.Command(sh, "-n", path).CombinedOutput(); err != nil {
			t.Errorf("%s -n: %v\n%s", sh, err, out)
		}
	}
	if _, err := exec.LookPath("shellcheck"); err != nil {
		if os.Getenv("DEVPILOT_REQUIRE_SHELLCHECK") != "" {
			t.Fatal("shellcheck not installed")
		}
		t.Log("shellcheck not installed; skipped")
		return
	}
	if out, err := exec.Command("shellcheck", "--shell=sh", "--severity=style", path).CombinedOutput(); err != nil {
		t.Errorf("shellcheck: %v\n%s", err, out)
	}
}

func TestRenderSize(t *testing.T) {
	t.Parallel()
	p := goldenParams(t)
	p.BootstrapToken = secrets.New(strings.Repeat("t", maxTokenLen))
	p.ServerID = strings.Repeat("'", maxIDLen) // worst case for quoting: 4x
	got, err := Render(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) > MaxUserDataSize/4 {
		t.Errorf("user-data with the largest token is %d bytes; expected far below the %d limit", len(got), MaxUserDataSize)
	}

	// A CA bundle that pushes the script over the limit is refused.
	ca, _ := os.ReadFile("testdata/ca.pem")
	p = goldenParams(t)
	p.CACertPEM = strings.Repeat(string(ca), maxCALen/len(ca))
	if _, err := Render(p); err == nil || !strings.Contains(err.Error(), "bytes") {
		t.Errorf("oversized CA bundle: err = %v, want a size error", err)
	}
}

func TestRenderRejects(t *testing.T) {
	t.Parallel()
	const token = "dpb_SECRET_never_in_errors"
	ca, err := os.ReadFile("testdata/ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		mutate  func(*Params)
		wantErr string
	}{
		{"empty url", func(p *Params) { p.ControlPlaneURL = "" }, "control plane url: required"},
		{"plain http remote", func(p *Params) { p.ControlPlaneURL = "http://cp.example.com" }, "loopback"},
		{"ftp", func(p *Params) { p.ControlPlaneURL = "ftp://cp.example.com" }, "want https"},
		{"no host", func(p *Params) { p.ControlPlaneURL = "https:///x" }, "scheme://host"},
		{"relative", func(p *Params) { p.ControlPlaneURL = "cp.example.com" }, "scheme://host"},
		{"userinfo", func(p *Params) { p.ControlPlaneURL = "https://u:p@cp.example.com" }, "user info"},
		{"query", func(p *Params) { p.ControlPlaneURL = "https://cp.example.com/?a=1" }, "query"},
		{"space", func(p *Params) { p.ControlPlaneURL = "https://cp.example.com/ x" }, "space"},
		{"newline in url", func(p *Params) { p.ControlPlaneURL = "https://cp.example.com/\nrm -rf /" }, "control character"},
		{"https without CA", func(p *Params) { p.CACertPEM = "" }, "ca cert: required"},
		{"garbage CA", func(p *Params) { p.CACertPEM = "not a cert" }, "PEM CERTIFICATE"},
		{"CA with trailing junk", func(p *Params) { p.CACertPEM = string(ca) + "'; rm -rf /" }, "nothing else"},
		{"private key in CA", func(p *Params) {
			p.CACertPEM = string(ca) + "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
		}, "CERTIFICATE only"},
		{"bad pin form", func(p *Params) { p.CAPin = "md5/abc" }, "ca pin"},
		{"pin of another key", func(p *Params) { p.CAPin = "sha256/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" }, "matches no certificate"},
		{"no sha", func(p *Params) { p.AgentSHA256 = nil }, "no architecture"},
		{"unknown arch", func(p *Params) { p.AgentSHA256 = map[string]string{"riscv64": shaA} }, "unknown architecture"},
		{"short sha", func(p *Params) { p.AgentSHA256 = map[string]string{ArchAMD64: "abc"} }, "64 hex"},
		{"sha injection", func(p *Params) { p.AgentSHA256 = map[string]string{ArchAMD64: shaA[:60] + "';x"} }, "64 hex"},
		{"no server id", func(p *Params) { p.ServerID = "" }, "server id: required"},
		{"newline in server id", func(p *Params) { p.ServerID = "a\nb" }, "control character"},
		{"NUL in server id", func(p *Params) { p.ServerID = "a\x00b" }, "control character"},
		{"no token", func(p *Params) { p.BootstrapToken = secrets.Value{} }, "bootstrap token: required"},
		{"newline in token", func(p *Params) { p.BootstrapToken = secrets.New(token + "\n") }, "bootstrap token: contains a control character"},
		{"NUL in token", func(p *Params) { p.BootstrapToken = secrets.New(token + "\x00") }, "bootstrap token: contains a control character"},
		{"invalid utf-8 token", func(p *Params) { p.BootstrapToken = secrets.New(token + "\xff") }, "UTF-8"},
		{"huge token", func(p *Params) { p.BootstrapToken = secrets.New(strings.Repeat(token, 100)) }, "longer than"},
		{"newline in hostname", func(p *Params) { p.Hostname = "web\n'; rm -rf / #" }, "hostname: contains a control character"},
		{"escape in hostname", func(p *Params) { p.Hostname = "web\x1b[2J" }, "control character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := goldenParams(t)
			p.BootstrapToken = secrets.New(token)
			tt.mutate(&p)
			out, err := Render(p)
			if err == nil {
				t.Fatalf("Render accepted it:\n%s", out)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("err = %q, want it to mention %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), "SECRET") {
				t.Errorf("error leaks the bootstrap token: %q", err)
			}
		})
	}
}

func TestRenderAccepts(t *testing.T) {
	t.Parallel()
	ca, _ := os.ReadFile("testdata/ca.pem")
	tests := []struct {
		name string
		p    func(*Params)
	}{
		{"http 127.0.0.1", func(p *Params) { p.ControlPlaneURL = "http://127.0.0.1:8080"; p.CACertPEM = "" }},
		{"http localhost with CA", func(p *Params) { p.ControlPlaneURL = "http://localhost:8080" }},
		{"http ipv6 loopback", func(p *Params) { p.ControlPlaneURL = "http://[::1]:8080"; p.CACertPEM = "" }},
		{"https with base path", func(p *Params) { p.ControlPlaneURL = "https://example.com/devpilot" }},
		{"CRLF CA", func(p *Params) { p.CACertPEM = strings.ReplaceAll(string(ca), "\n", "\r\n") }},
		{"uppercase sha", func(p *Params) { p.AgentSHA256 = map[string]string{ArchARM64: strings.ToUpper(shaA)} }},
		{"no hostname", func(p *Params) { p.Hostname = "" }},
		{"unicode hostname", func(p *Params) { p.Hostname = "café-1" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := goldenParams(t)
			tt.p(&p)
			if _, err := Render(p); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestQuote checks that a quoted word expands to exactly the input in a
// real shell, whatever the input holds.
func TestQuote(t *testing.T) {
	t.Parallel()
	inputs := []string{
		"", "plain", "'", "''", "a'b", `'\''`, `"`, `\`, `\'`, "$HOME", "${x:-y}", "$(touch pwned)",
		"`touch pwned`", "; rm -rf /", "'; rm -rf / #", "a\nb", "a\tb\r\n", "!", "*", "~", "#", "\\n",
		"ünïcödé ✓", "-n", "--", "%s%d", "\x7f\x01",
	}
	var script strings.Builder
	for _, s := range inputs {
		script.WriteString("printf '%s\\000' " + quote(s) + "\n")
	}
	for _, sh := range []string{"sh", "dash", "bash"} {
		if _, err := exec.LookPath(sh); err != nil {
			continue
		}
		dir := t.TempDir()
		cmd := exec.Command(sh, "-c", script.String())
		cmd.Dir = dir
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v", sh, err)
		}
		got := strings.Split(string(out), "\x00")
		got = got[:len(got)-1]
		if len(got) != len(inputs) {
			t.Fatalf("%s: got %d words, want %d", sh, len(got), len(inputs))
		}
		for i := range inputs {
			if got[i] != inputs[i] {
				t.Errorf("%s: quote(%q) expanded to %q", sh, inputs[i], got[i])
			}
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%s: quoting let a command run: %v", sh, ents)
		}
	}
}

func TestParsePhases(t *testing.T) {
	t.Parallel()
	log := []byte("Cloud-init v. 24.1 running\n" +
		"devpilot-bootstrap: 2026-01-02T03:04:05.123456789Z start server_id=srv hostname=\n" +
		"devpilot-bootstrap: error: something\n" +
		"devpilot-bootstrap: 2026-01-02T03:04:06Z downloaded arch=amd64\n" +
		"devpilot-bootstrap: 2026-01-02T03:04:09Z downloaded again\n" +
		"devpilot-bootstrap: not-a-time verified\n")
	got := ParsePhases(log)
	want := map[string]time.Time{
		PhaseStart:      time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC),
		PhaseDownloaded: time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC),
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if !got[k].Equal(v) {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

func TestRenderRefusesBadReleaseKey(t *testing.T) {
	t.Parallel()
	p := goldenParams(t)
	p.ReleaseKeys = []string{"AAEC'; touch pwned; '"}
	if _, err := Render(p); err == nil || !strings.Contains(err.Error(), "release public key") {
		t.Errorf("bad release key: %v", err)
	}
}
