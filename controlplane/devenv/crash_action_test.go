package devenv_test

import (
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/bootstrap/sandbox"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean/dosim"
)

// TestControlPlaneKilledDuringActions SIGKILLs `devpilot serve` while each
// step of power_off, power_on and a hard reboot runs, restarts it, and
// checks each action resumes and succeeds with exactly one cloud action of
// each kind (the simulator counts them).
func TestControlPlaneKilledDuringActions(t *testing.T) {
	log := zap.NewNop()
	machines := sandbox.New(sandbox.Options{Dir: filepath.Join(t.TempDir(), "machines"), Logger: log})
	t.Cleanup(func() { _ = machines.Close() })
	do := dosim.New(dosim.Options{Runtime: machines, BootDelay: 100 * time.Millisecond})
	t.Cleanup(do.Close)
	sim := httptest.NewServer(do.Handler())
	t.Cleanup(sim.Close)
	token := "dop_v1_" + strings.Repeat("8", 64)
	do.AddToken(token, true)
	do.SetActionDelay(time.Second) // every cloud action runs long enough to be killed in

	dataDir := t.TempDir()
	addr := freeAddr(t)
	logf, err := os.Create(filepath.Join(t.TempDir(), "serve.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = logf.Close() }()
	p := &serveProc{t: t, dataDir: dataDir, url: "https://" + addr, log: logf, env: databaseEnv(t), args: []string{"serve",
		"--data-dir", dataDir, "--listen", addr, "--digitalocean-api-url", sim.URL, "--agent-dir", agentDir,
		"--log-level", "debug"}}
	p.start()
	t.Cleanup(p.kill)

	var in integration
	if c := p.do("POST", base, map[string]string{"provider": "digitalocean", "access_key": "do", "secret_key": token}, &in); c != 201 {
		t.Fatalf("connect: %d", c)
	}
	var s server
	if c := p.do("POST", servers, map[string]any{"integration_id": in.ID, "name": "crashy", "region": "nyc3",
		"size": "s-1vcpu-1gb", "image": "debian-12"}, &s); c != 202 {
		t.Fatalf("create: %d", c)
	}
	for deadline := time.Now().Add(2 * time.Minute); s.State != "online"; time.Sleep(50 * time.Millisecond) {
		p.do("GET", servers+"/"+s.ID, nil, &s)
		if s.State == "failed" || time.Now().After(deadline) {
			t.Fatalf("server never online: %+v", s)
		}
	}
	droplet, _ := strconv.Atoi(s.InstanceID)

	killed := 0
	for _, body := range []map[string]any{{"type": "power_off"}, {"type": "power_on"}, {"type": "reboot", "hard": true}} {
		var a action
		if c := p.do("POST", servers+"/"+s.ID+"/actions", body, &a); c != 202 {
			t.Fatalf("POST %v: %d", body, c)
		}
		path := servers + "/" + s.ID + "/actions/" + a.ID
		for i := range a.Steps {
			name := a.Steps[i].Name
			deadline := time.Now().Add(2 * time.Minute)
			for {
				p.do("GET", path, nil, &a)
				st := a.Steps[i].State
				if st == "running" {
					p.kill()
					killed++
					p.start()
					break
				}
				if st == "done" || a.State == "succeeded" {
					t.Logf("%s step %s finished before it could be killed", a.Type, name)
					break
				}
				if a.State == "failed" || time.Now().After(deadline) {
					t.Fatalf("%s at step %s: %s %+v (log %s)", a.Type, name, a.State, a.Error, logf.Name())
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		for deadline := time.Now().Add(3 * time.Minute); a.State != "succeeded"; time.Sleep(50 * time.Millisecond) {
			p.do("GET", path, nil, &a)
			if a.State == "failed" || time.Now().After(deadline) {
				t.Fatalf("%s after kills: %s %+v (log %s)", a.Type, a.State, a.Error, logf.Name())
			}
		}
	}
	if killed < 5 {
		t.Errorf("only %d steps were killed while running; the test proved little", killed)
	}
	counts := do.ActionCounts(droplet)
	for typ, want := range map[string]int{"shutdown": 1, "power_on": 1, "power_cycle": 1} {
		if counts[typ] != want {
			t.Errorf("droplet saw %d %s actions after %d kills, want %d (%v)", counts[typ], typ, killed, want, counts)
		}
	}
	if counts["power_off"] > 1 {
		t.Errorf("power_off ran %d times", counts["power_off"])
	}
	t.Logf("killed the control plane %d times; cloud actions %v", killed, counts)
}
