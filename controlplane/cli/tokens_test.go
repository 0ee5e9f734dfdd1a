package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTokensRecover: on the machine, with the control plane running, a new
// owner token lands in the data dir's owner.token, and the local CLI works
// with it at once. The token itself is never printed.
func TestTokensRecover(t *testing.T) {
	e, _ := startDev(t)
	dir := filepath.Dir(e.EnvFile)
	file := filepath.Join(dir, "owner.token")
	old, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	none := map[string]string{} // no DEVPILOT_TOKEN: the CLI reads the data dir
	r := cli(t, none, "", "tokens", "recover", "--data-dir", dir)
	if r.code != 0 || !strings.Contains(r.stdout, file) || strings.Contains(r.stdout+r.stderr, "dpt_") {
		t.Fatalf("tokens recover: %+v", r)
	}
	now, err := os.ReadFile(file)
	if err != nil || string(now) == string(old) {
		t.Fatalf("owner.token after recover: changed %v, %v", string(now) != string(old), err)
	}
	if r := cli(t, none, "", "keys", "rotate", "--data-dir", dir); r.code != 0 {
		t.Errorf("keys rotate with the recovered token: %+v", r)
	}
	if r := cli(t, none, "", "tokens", "recover", "--data-dir", t.TempDir()); r.code != 1 || !strings.Contains(r.stderr, "no control plane database") {
		t.Errorf("tokens recover in an empty dir: %+v", r)
	}
}

func TestServeRefusesNonPositiveDoorLimits(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--max-unauthenticated", "0"}, {"--body-timeout", "0s"}} {
		r := cli(t, map[string]string{}, "", append([]string{"serve", "--data-dir", t.TempDir()}, args...)...)
		if r.code != 2 || !strings.Contains(r.stderr, "must be positive") {
			t.Errorf("serve %v: %+v", args, r)
		}
	}
}

func TestServeRefusesABadHeartbeatInterval(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"0s", "500ms", "1.5s", "6m"} {
		r := cli(t, map[string]string{}, "", "serve", "--data-dir", t.TempDir(), "--heartbeat-interval", v)
		if r.code != 2 || !strings.Contains(r.stderr, "--heartbeat-interval must be whole seconds from 1s to 5m (default 15s)") {
			t.Errorf("serve --heartbeat-interval %s: %+v", v, r)
		}
	}
}

// A graceful reboot's wait for the agent is bounded both ways: too short
// and every reboot goes through the cloud, too long and a stuck agent's
// server waits an hour.
func TestServeRefusesABadAgentRebootTimeout(t *testing.T) {
	t.Parallel()
	for _, v := range []string{"0s", "9s", "61m"} {
		r := cli(t, map[string]string{}, "", "serve", "--data-dir", t.TempDir(), "--agent-reboot-timeout", v)
		if r.code != 2 || !strings.Contains(r.stderr, "--agent-reboot-timeout must be from 10s to 1h (default 5m0s)") {
			t.Errorf("serve --agent-reboot-timeout %s: %+v", v, r)
		}
	}
}
