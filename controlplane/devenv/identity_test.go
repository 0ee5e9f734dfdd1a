package devenv_test

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/agent/layout"
	"github.com/devpilot/devpilot/shared/protocol"
)

// TestStolenIdentityQuarantineAndRekey: a copy of a server's identity.key
// runs as a second agent. The two take the session from each other until
// the hub quarantines the server; a task submitted then stays queued. A
// rekey's token enrolls the real agent with a new identity, it comes back
// online and runs the queued task; the copied key is refused as revoked.
func TestStolenIdentityQuarantineAndRekey(t *testing.T) {
	h := start(t)
	s := onlineServers(t, h, 1)[0]
	info, ok := h.env.Machines.Machine(s.InstanceID)
	if !ok || info.AgentPID == 0 {
		t.Fatalf("no agent process for %s: %+v", s.InstanceID, info)
	}
	real := layout.New(info.Root)

	// The impostor: the server's config and identity key on another "machine".
	imp := layout.New(filepath.Join(t.TempDir(), "impostor"))
	for _, f := range [][2]string{{real.ConfigFile(), imp.ConfigFile()}, {real.IdentityKey(), imp.IdentityKey()}} {
		b, err := os.ReadFile(f[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(f[1]), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f[1], b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	began := time.Now()
	impostor := startImpostor(t, imp)

	q := h.waitServer(s.ID, 60*time.Second, "quarantined", func(x server) bool { return x.State == "quarantined" })
	t.Logf("quarantined %v after the impostor started", time.Since(began).Round(10*time.Millisecond))
	var full struct {
		StateReason string `json:"state_reason"`
	}
	h.api("GET", servers+"/"+s.ID, nil, &full)
	if !strings.Contains(full.StateReason, "devpilot servers rekey "+s.ID) || q.Agent.Connected {
		t.Errorf("quarantined server: reason %q, connected %v", full.StateReason, q.Agent.Connected)
	}
	var audit struct {
		Entries []struct {
			Action, Target string
			Detail         struct {
				RemoteAddrs []string `json:"remote_addrs"`
			}
		}
	}
	h.api("GET", "/v1/workspaces/default/audit", nil, &audit)
	found := false
	for _, e := range audit.Entries {
		if e.Action == "agent.identity_conflict" && e.Target == s.ID && len(e.Detail.RemoteAddrs) >= 2 {
			found = true
		}
	}
	if !found {
		t.Errorf("no agent.identity_conflict audit entry with both remote addresses: %+v", audit.Entries)
	}

	task := runTask(t, h.api, s.ID, map[string]any{"kind": "exec", "argv": []string{"sh", "-c", "echo after-rekey"}, "timeout_s": 60})
	// Both agents are refused from now on; by the time the impostor has
	// been told so, the task is still waiting.
	impostor.waitOutput(t, protocol.ErrQuarantined)
	if v := waitTask(t, h.api, task.ID, time.Second, "read", func(e2eTask) bool { return true }); v.State != protocol.TaskQueued {
		t.Fatalf("task on a quarantined server: %+v, want queued", v)
	}

	var rk struct {
		BootstrapToken string `json:"bootstrap_token"`
		Command        string `json:"command"`
	}
	if c := h.api("POST", servers+"/"+s.ID+"/rekey", nil, &rk); c != http.StatusOK || rk.BootstrapToken == "" ||
		!strings.Contains(rk.Command, "devpilot-agent enroll --token-file -") {
		t.Fatalf("rekey: %d %+v", c, rk)
	}
	// The operator runs the enroll command on the real server; the
	// supervisor restarts the agent (here: it exits, the sandbox restarts it).
	enroll := exec.Command(filepath.Join(agentDir, "devpilot-agent"), "enroll", "--token-file", "-",
		"--root-dir", real.Root, "--supervisor", "none")
	enroll.Stdin = strings.NewReader(rk.BootstrapToken + "\n")
	if out, err := enroll.CombinedOutput(); err != nil {
		t.Fatalf("devpilot-agent enroll: %v\n%s", err, out)
	}
	info, _ = h.env.Machines.Machine(s.InstanceID)
	if err := killPID(info.AgentPID, "TERM"); err != nil {
		t.Fatal(err)
	}
	enrolled := time.Now()
	h.waitServer(s.ID, 60*time.Second, "online with the new identity", func(x server) bool { return online(x) && x.Agent.Connected })
	t.Logf("online %v after devpilot-agent enroll and the restart", time.Since(enrolled).Round(10*time.Millisecond))
	if v := waitTask(t, h.api, task.ID, 60*time.Second, "done", final); v.State != protocol.TaskSucceeded ||
		!strings.Contains(logText(t, h.api, task.ID), "after-rekey") {
		t.Errorf("queued task after rekey: %+v", v)
	}

	// The copied key can't come back.
	impostor.stop()
	impostor = startImpostor(t, imp)
	impostor.waitOutput(t, protocol.ErrKeyRevoked)
	if x := h.waitServer(s.ID, time.Second, "read", func(server) bool { return true }); !online(x) || !x.Agent.Connected {
		t.Errorf("the revoked key disturbed the real agent: %+v", x)
	}
}

// impostorProc is a devpilot-agent run with a copied identity.
type impostorProc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

func startImpostor(t *testing.T, p layout.Paths) *impostorProc {
	t.Helper()
	ip := &impostorProc{out: &syncBuffer{}, done: make(chan struct{})}
	ip.cmd = exec.Command(filepath.Join(agentDir, "devpilot-agent"), "run", "--root-dir", p.Root)
	ip.cmd.Stdout, ip.cmd.Stderr = ip.out, ip.out
	if err := ip.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = ip.cmd.Wait(); close(ip.done) }()
	t.Cleanup(ip.stop)
	return ip
}

func (ip *impostorProc) stop() {
	select {
	case <-ip.done:
		return
	default:
	}
	_ = ip.cmd.Process.Kill()
	<-ip.done
}

func (ip *impostorProc) waitOutput(t *testing.T, s string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for !strings.Contains(ip.out.String(), s) {
		select {
		case <-ctx.Done():
			t.Fatalf("impostor never logged %q:\n%s", s, ip.out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
