//go:build e2e

package e2e_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
	"github.com/devpilot/devpilot/e2e/nspawn"
)

// maxExposure is the most `systemd-analyze security devpilot` may score
// (0 best, 10 worst). devpilot.service measures 1.1 in bookworm's systemd
// 252: what is left is what a control plane needs — AF_INET/AF_INET6
// (the clouds' APIs, agents, clients), no IPAddressDeny, a syscall filter
// of @system-service, and a user that owns its data. 1.5 leaves room for
// another systemd's weights; loosening the sandbox noticeably (dropping
// ProtectSystem, PrivateUsers or the capability bounding set) fails here.
const maxExposure = 1.5

// controlPlaneDeb is the devpilot .deb to install: DEVPILOT_E2E_DEB (make
// e2e builds it with make packages), or one built now into dir.
func controlPlaneDeb(t *testing.T, dir string) string {
	t.Helper()
	if p := os.Getenv("DEVPILOT_E2E_DEB"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("DEVPILOT_E2E_DEB: %v (make packages builds it)", err)
		}
		return p
	}
	return buildDeb(t, dir)
}

// buildDeb runs scripts/packages.sh for the devpilot .deb alone; env may
// set VERSION.
func buildDeb(t *testing.T, dir string, env ...string) string {
	t.Helper()
	cmd := exec.Command("./scripts/packages.sh", dir)
	cmd.Dir = ".."
	cmd.Env = append(append(os.Environ(), "ARCHES=amd64", "PACKAGES=devpilot", "PACKAGERS=deb"), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the .deb: %v\n%s", err, out)
	}
	m, _ := filepath.Glob(filepath.Join(dir, "devpilot_*_amd64.deb"))
	if len(m) != 1 {
		t.Fatalf("build the .deb: want one devpilot_*_amd64.deb in %s, got %v", dir, m)
	}
	return m[0]
}

// TestDebPackage installs the control-plane package in a booted Debian
// container as an operator would, starts devpilot.service, provisions a
// server (itself a booted container, on the DigitalOcean simulator this
// test serves) whose agent comes online, and removes the package.
func TestDebPackage(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	deb := controlPlaneDeb(t, filepath.Join(dir, "dist"))

	logs := &syncBuffer{}
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(logs), zapcore.DebugLevel))
	rt, err := nspawn.New(nspawn.Options{RootFS: rootFS(), Dir: filepath.Join(dir, "machines"), Logger: log.Named("nspawn")})
	if err != nil {
		t.Fatalf("nspawn runtime: %v", err)
	}
	sim := dosim.New(dosim.Options{Logger: log.Named("dosim"), Runtime: rt, BootDelay: 100 * time.Millisecond})
	const doToken = "dop_v1_e2e_package_token_0123456789abcdef"
	sim.AddToken(doToken, true)
	simSrv := httptest.NewServer(sim.Handler())
	var cp *nspawn.Machine
	t.Cleanup(func() {
		if t.Failed() {
			dumpMachines(t, rt, logs, cp)
		}
		simSrv.Close()
		sim.Close()
		if err := rt.Close(); err != nil {
			t.Errorf("close containers: %v", err)
		}
	})

	// The control plane's container: a plain Debian system.
	timing := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const cpID = "devpilot-control-plane"
	if err := rt.Boot(ctx, simrun.Machine{Provider: "digitalocean", ID: cpID, Hostname: "devpilot-cp",
		PublicIPv4: "192.0.2.10", UserData: []byte("#cloud-config\n{}\n")}); err != nil {
		t.Fatalf("boot the control plane's container: %v", err)
	}
	cp, _ = rt.Machine(cpID)
	waitFor(t, 3*time.Minute, "the container's systemd up", func() string {
		out, _ := sh(t, cp, "systemctl is-system-running --wait")
		if out == "running" || out == "degraded" {
			return ""
		}
		return out
	})
	t.Logf("container %s booted in %v", cp.Name, time.Since(timing).Round(time.Millisecond))

	installDeb(t, cp, deb)

	// Configure as the env file says, then start.
	port := freeTCPPort(t)
	url := fmt.Sprintf("https://127.0.0.1:%d", port)
	conf := fmt.Sprintf("\n# e2e\nDEVPILOT_LISTEN=127.0.0.1:%d\nDEVPILOT_PUBLIC_URL=%s\nDEVPILOT_DIGITALOCEAN_API_URL=%s\n", port, url, simSrv.URL)
	if out, code := sh(t, cp, "printf '%s' '"+conf+"' >>/etc/devpilot/devpilot.env"); code != 0 {
		t.Fatalf("configure: %s", out)
	}
	timing = time.Now()
	if out, code := sh(t, cp, "systemctl start devpilot 2>&1"); code != 0 {
		t.Fatalf("systemctl start devpilot: exit %d: %s", code, out)
	}
	// Type=notify: start returned, so READY=1 came.
	t.Logf("systemctl start devpilot returned (READY=1) after %v", time.Since(timing).Round(time.Millisecond))
	for prop, want := range map[string]string{"ActiveState": "active", "SubState": "running", "StatusText": "serving", "Type": "notify", "User": "devpilot"} {
		if out, _ := sh(t, cp, "systemctl show devpilot -p "+prop+" --value"); out != want {
			t.Errorf("devpilot.service %s=%q, want %q", prop, out, want)
		}
	}
	// systemd stamps this at READY and at each WATCHDOG=1.
	watchdogAt, _ := sh(t, cp, "systemctl show devpilot -p WatchdogTimestampMonotonic --value")
	if out, _ := sh(t, cp, "ps -o user= -p $(systemctl show devpilot -p MainPID --value)"); out != "devpilot" {
		t.Errorf("the control plane runs as %q, want devpilot", out)
	}
	secOut, _ := sh(t, cp, "systemd-analyze security devpilot --no-pager 2>&1")
	score := exposure(t, secOut)
	t.Logf("systemd-analyze security devpilot: overall exposure %.1f (bound %.1f)", score, maxExposure)
	if score > maxExposure {
		t.Errorf("exposure %.1f > %.1f:\n%s", score, maxExposure, secOut)
	}

	// The API as an operator's client sees it: the CA and owner token the
	// first start left in the data dir.
	ca, err := os.ReadFile(filepath.Join(cp.Root, "var/lib/devpilot/tls/ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := os.ReadFile(filepath.Join(cp.Root, "var/lib/devpilot/owner.token"))
	if err != nil {
		t.Fatal(err)
	}
	if out, _ := sh(t, cp, "stat -c '%a %U' /var/lib/devpilot/owner.token"); out != "600 devpilot" {
		t.Errorf("owner token file: %s, want 600 devpilot", out)
	}
	// Canary: the owner token reached the file only, not the journal
	// (stdout and stderr of the unit), which is kept on disk.
	if n, _ := sh(t, cp, "journalctl -u devpilot --no-pager -o cat | grep -cF '"+strings.TrimSpace(string(tok))+"'"); n != "0" {
		t.Errorf("the owner token is in the journal (%s lines)", n)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	api := &apiClient{url: url, token: strings.TrimSpace(string(tok)),
		c: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}}
	defer api.c.CloseIdleConnections()

	var in apitypes.Integration
	if code := api.do(t, "POST", integrations, map[string]string{"provider": "digitalocean", "access_key": "e2e", "secret_key": doToken}, &in); code != http.StatusCreated || in.Status != "valid" {
		t.Fatalf("connect digitalocean: %d %+v", code, in)
	}
	timing = time.Now()
	// The operator's CLI on the control plane's machine: as the devpilot
	// user it finds URL, CA and owner token in the data dir.
	out, code := sh(t, cp, "runuser -u devpilot -- devpilot servers create --data-dir /var/lib/devpilot --json "+
		"--integration "+in.ID+" --name pkg-e2e --region nyc3 --size s-1vcpu-1gb --image debian-12 2>&1")
	var srv apitypes.Server
	if err := json.Unmarshal([]byte(out), &srv); code != 0 || err != nil || srv.ID == "" {
		t.Fatalf("devpilot servers create in the container: exit %d, %v:\n%s", code, err, out)
	}
	waitFor(t, 6*time.Minute, "the server online with its agent connected", func() string {
		if errs := rt.Failures(); len(errs) > 0 {
			t.Fatalf("a container failed to boot: %v", errs)
		}
		var s apitypes.Server
		api.do(t, "GET", servers+"/"+srv.ID, nil, &s)
		if s.State == "online" && s.Agent.Connected && s.Agent.InstalledAt != nil {
			return ""
		}
		b, _ := json.Marshal(s)
		return string(b)
	})
	t.Logf("server %s online, agent connected, %v after create", srv.ID, time.Since(timing).Round(time.Millisecond))
	if out, _ := sh(t, cp, "runuser -u devpilot -- devpilot servers list --data-dir /var/lib/devpilot"); !strings.Contains(out, "pkg-e2e") || !strings.Contains(out, "online") {
		t.Errorf("devpilot servers list in the container:\n%s", out)
	}
	// The agent it installed is the package's build: the same version line.
	cpVersion, _ := sh(t, cp, "devpilot version")
	var online apitypes.Server
	api.do(t, "GET", servers+"/"+srv.ID, nil, &online)
	if "devpilot "+online.Agent.Version != cpVersion {
		t.Errorf("agent_version %q, want the packaged build's %q", online.Agent.Version, strings.TrimPrefix(cpVersion, "devpilot "))
	}

	// The watchdog is fed: a passing self-check every WatchdogSec/3 (20 s).
	waitFor(t, 2*time.Minute, "a watchdog ping after READY", func() string {
		out, _ := sh(t, cp, "systemctl show devpilot -p WatchdogTimestampMonotonic --value")
		if out != watchdogAt && out != "" && out != "0" {
			return ""
		}
		return "WatchdogTimestampMonotonic still " + out
	})

	upgradeDeb(t, cp, api, filepath.Join(dir, "upgrade"), srv.ID)
	checkWatchdog(t, cp)
	removePackage(t, cp)
}

// installDeb installs the package and checks what it laid out.
func installDeb(t *testing.T, cp *nspawn.Machine, deb string) {
	// Install.
	timing := time.Now()
	if err := copyFile(deb, filepath.Join(cp.Root, "root", filepath.Base(deb))); err != nil {
		t.Fatal(err)
	}
	if out, code := sh(t, cp, "cd /root && apt-get install -y ./"+filepath.Base(deb)+" 2>&1"); code != 0 {
		t.Fatalf("apt-get install the .deb: exit %d\n%s", code, out)
	}
	t.Logf("installed %s in %v", filepath.Base(deb), time.Since(timing).Round(time.Millisecond))
	for script, want := range map[string]string{
		"id -un devpilot; getent passwd devpilot | cut -d: -f6,7":     "devpilot\n/var/lib/devpilot:/usr/sbin/nologin",
		"stat -c '%a %U:%G' /var/lib/devpilot":                        "700 devpilot:devpilot",
		"stat -c '%a %U:%G' /etc/devpilot/devpilot.env":               "640 root:devpilot",
		"dpkg-query -W -f '${Conffiles}' devpilot | awk '{print $1}'": "/etc/devpilot/devpilot.env",
		"systemctl is-enabled devpilot":                               "enabled",
		"systemctl is-active devpilot":                                "inactive",
		"ls /usr/lib/devpilot/agent":                                  "devpilot-agent-linux-amd64\ndevpilot-agent-linux-arm64",
	} {
		if out, _ := sh(t, cp, script); out != want {
			t.Errorf("%s:\n%s\nwant:\n%s", script, out, want)
		}
	}

}

// upgradeDeb installs a newer package over the running one.
func upgradeDeb(t *testing.T, cp *nspawn.Machine, api *apiClient, dir, serverID string) {
	// Upgrade: a newer package restarts the running service, which keeps
	// its data and gets its agent back.
	timing := time.Now()
	newer := buildDeb(t, dir, "VERSION=v99.0.0")
	if err := copyFile(newer, filepath.Join(cp.Root, "root", filepath.Base(newer))); err != nil {
		t.Fatal(err)
	}
	pid, _ := sh(t, cp, "systemctl show devpilot -p MainPID --value")
	if out, code := sh(t, cp, "cd /root && apt-get install -y ./"+filepath.Base(newer)+" 2>&1"); code != 0 {
		t.Fatalf("apt-get install the newer .deb: exit %d\n%s", code, out)
	}
	if out, _ := sh(t, cp, "systemctl show devpilot -p MainPID --value"); out == pid || out == "0" {
		t.Errorf("after the upgrade the control plane's pid is %s (was %s): not restarted", out, pid)
	}
	if out, _ := sh(t, cp, "systemctl show devpilot -p StatusText --value; devpilot version"); !strings.HasPrefix(out, "serving\ndevpilot v99.0.0 ") {
		t.Errorf("after the upgrade: %q, want the new version serving", out)
	}
	waitFor(t, 3*time.Minute, "the server's agent back after the upgrade", func() string {
		var s apitypes.Server
		if code := api.do(t, "GET", servers+"/"+serverID, nil, &s); code != http.StatusOK {
			return fmt.Sprintf("GET server: %d", code)
		}
		if s.State == "online" && s.Agent.Connected {
			return ""
		}
		b, _ := json.Marshal(s)
		return string(b)
	})
	t.Logf("upgraded to %s and the agent reconnected in %v", filepath.Base(newer), time.Since(timing).Round(time.Millisecond))

}

// checkWatchdog proves the unit's watchdog is fed and fires.
func checkWatchdog(t *testing.T, cp *nspawn.Machine) {
	// The watchdog under systemd, quickened by a drop-in (WatchdogSec=6,
	// a self-check every 2 s): a serving control plane keeps its pid across
	// several periods; a hung one (SIGSTOP) is killed and restarted.
	timing := time.Now()
	if out, code := sh(t, cp, "mkdir -p /etc/systemd/system/devpilot.service.d && "+
		"printf '[Service]\\nWatchdogSec=6\\n' >/etc/systemd/system/devpilot.service.d/e2e-watchdog.conf && "+
		"systemctl daemon-reload && systemctl restart devpilot 2>&1"); code != 0 {
		t.Fatalf("restart with WatchdogSec=6: exit %d: %s", code, out)
	}
	pid, _ := sh(t, cp, "systemctl show devpilot -p MainPID --value")
	pings := map[string]bool{}
	waitFor(t, 2*time.Minute, "three watchdog pings from one process", func() string {
		at, _ := sh(t, cp, "systemctl show devpilot -p WatchdogTimestampMonotonic --value")
		pings[at] = true
		if now, _ := sh(t, cp, "systemctl show devpilot -p MainPID --value"); now != pid {
			t.Fatalf("the watchdog restarted a serving control plane (pid %s → %s)", pid, now)
		}
		if len(pings) > 3 {
			return ""
		}
		return fmt.Sprintf("%d distinct ping times", len(pings))
	})
	sh(t, cp, "kill -STOP "+pid)
	waitFor(t, 2*time.Minute, "the hung control plane restarted by the watchdog", func() string {
		now, _ := sh(t, cp, "systemctl show devpilot -p MainPID --value")
		state, _ := sh(t, cp, "systemctl show devpilot -p ActiveState --value")
		if now != pid && now != "0" && state == "active" {
			return ""
		}
		return "pid " + now + ", " + state
	})
	if out, _ := sh(t, cp, "journalctl -u devpilot --no-pager | grep -c 'Watchdog timeout'"); out == "0" || out == "" {
		t.Errorf("no watchdog timeout in the journal: %q", out)
	}
	t.Logf("watchdog: pings kept a serving process, SIGSTOP → restarted in %v", time.Since(timing).Round(time.Millisecond))
	sh(t, cp, "rm -r /etc/systemd/system/devpilot.service.d && systemctl daemon-reload")

}

// removePackage removes the package: the service stops, the data stays.
func removePackage(t *testing.T, cp *nspawn.Machine) {
	// Remove: the service stops, the data stays.
	timing := time.Now()
	if out, code := sh(t, cp, "apt-get remove -y devpilot 2>&1"); code != 0 {
		t.Fatalf("apt-get remove devpilot: exit %d\n%s", code, out)
	}
	t.Logf("removed in %v", time.Since(timing).Round(time.Millisecond))
	if out, _ := sh(t, cp, "systemctl is-active devpilot; pgrep -u devpilot -c devpilot"); out != "inactive\n0" {
		t.Errorf("after apt-get remove: %q, want inactive and no devpilot process", out)
	}
	if out, _ := sh(t, cp, "stat -c '%a %U' /var/lib/devpilot /var/lib/devpilot/keyring.json /var/lib/devpilot/owner.token | tr '\\n' ' '; test -s /var/lib/devpilot/devpilot.db && echo db"); out != "700 devpilot 600 devpilot 600 devpilot db" {
		t.Errorf("data dir after remove: %q, want it kept whole", out)
	}
	if out, code := sh(t, cp, "test ! -e /usr/bin/devpilot && test ! -e /usr/lib/systemd/system/devpilot.service && echo gone"); code != 0 || out != "gone" {
		t.Errorf("binary or unit left after remove: %q", out)
	}
}

var exposureRE = regexp.MustCompile(`Overall exposure level for devpilot\.service: ([0-9.]+)`)

func exposure(t *testing.T, out string) float64 {
	t.Helper()
	m := exposureRE.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security: no overall exposure level in:\n%s", out)
	}
	f, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

type apiClient struct {
	url, token string
	c          *http.Client
}

func (a *apiClient) do(t *testing.T, method, path string, body, out any) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, a.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	resp, err := a.c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer func() { _ = resp.Body.Close() }()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && len(raw) > 0 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("%s %s: decode %q: %v", method, path, raw, err)
		}
	}
	return resp.StatusCode
}

func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = ln.Close() }()
	return ln.Addr().(*net.TCPAddr).Port
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, 0o644)
}

// dumpMachines logs the control plane's journal and each server's.
func dumpMachines(t *testing.T, rt *nspawn.Runtime, logs *syncBuffer, cp *nspawn.Machine) {
	l := logs.String()
	if len(l) > 10000 {
		l = l[len(l)-10000:]
	}
	t.Logf("test process log (tail):\n%s", l)
	for _, m := range rt.Machines() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		cmd := "tail -n 40 /var/log/cloud-init-output.log; journalctl -u devpilot-agent --no-pager -n 60; systemctl --failed --no-pager"
		if m == cp {
			cmd = "journalctl -u devpilot --no-pager -n 150; systemctl status devpilot --no-pager; cat /etc/devpilot/devpilot.env"
		}
		out, _ := m.Exec(ctx, "sh", "-c", cmd)
		cancel()
		t.Logf("container %s:\n%s", m.Name, out)
	}
}
