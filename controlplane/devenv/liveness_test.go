package devenv_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/devpilot/devpilot/controlplane/devenv"
	"github.com/devpilot/devpilot/controlplane/store/storetest"
)

const reconcileEvery = 500 * time.Millisecond

// startReconciling is start with brisk reconcile passes.
func startReconciling(t *testing.T) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), logs: &syncBuffer{}, out: &syncBuffer{}}
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	log := zap.New(zapcore.NewCore(enc, zapcore.AddSync(h.logs), zapcore.DebugLevel))
	env, err := devenv.Start(context.Background(), devenv.Config{
		DataDir: h.dir, Database: storetest.Database(t), Listen: "127.0.0.1:0", Logger: log, Out: h.out, BootDelay: 10 * time.Millisecond,
		AgentDir: agentDir, HeartbeatInterval: time.Second, PollInterval: 50 * time.Millisecond, ReconcileInterval: reconcileEvery,
		ReconcileFirewallEvery: 1,
	})
	if err != nil {
		t.Fatalf("start dev environment: %v", err)
	}
	h.env = env
	t.Cleanup(func() {
		if err := env.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		h.client.CloseIdleConnections()
	})
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(env.App.CACertPEM) {
		t.Fatal("no CA certificate")
	}
	h.client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	h.token = h.env.Values["DEVPILOT_TOKEN"]
	return h
}

type liveServer struct {
	State       string `json:"state"`
	StateReason string `json:"state_reason"`
}

func (h *harness) waitState(id, state string, limit time.Duration) liveServer {
	h.t.Helper()
	deadline := time.Now().Add(limit)
	var s liveServer
	for {
		h.call("", "GET", servers+"/"+id, nil, &s)
		if s.State == state {
			return s
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("server %s: not %s after %v: %+v", id, state, limit, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLivenessExplainsItself: a frozen agent on a running instance shows
// agent_offline, a droplet powered off outside Devpilot shows stopped, a
// Devpilot tag removed outside is put back (and audited), and an instance
// deleted outside shows lost, each with a reason.
func TestLivenessExplainsItself(t *testing.T) {
	h := startReconciling(t)
	_, do, _ := h.connect("digitalocean", "do", h.env.Values["DO_SIM_TOKEN"])
	_, vu, _ := h.connect("vultr", "vultr", h.env.Values["VULTR_SIM_KEY"])
	sDO := h.createServer(do.ID, "live-do", "nyc3", "s-1vcpu-1gb", "debian-12", nil)
	sVU := h.createServer(vu.ID, "live-vultr", "ewr", "vc2-1c-1gb", "debian-12", nil)
	sDO = h.waitServer(sDO.ID, 90*time.Second, "online", online)
	sVU = h.waitServer(sVU.ID, 90*time.Second, "online", online)
	dropletID, _ := strconv.Atoi(sDO.InstanceID)

	// A frozen agent: heartbeats stop, the instance runs.
	info, ok := h.env.Machines.Machine(sVU.InstanceID)
	if !ok || info.AgentPID == 0 {
		t.Fatalf("no agent for %s: %+v", sVU.InstanceID, info)
	}
	if err := killPID(info.AgentPID, "STOP"); err != nil {
		t.Fatal(err)
	}
	got := h.waitState(sVU.ID, "agent_offline", time.Minute)
	if got.StateReason == "" {
		t.Error("agent_offline without a reason")
	}
	// The hub closed the frozen agent's session: that is its last error.
	if !strings.Contains(got.StateReason, "last error: missed heartbeats") {
		t.Errorf("agent_offline reason %q does not name the last error", got.StateReason)
	}
	// Kept in the database too (migration 00014), for other control planes
	// and after a restart.
	if le, err := h.env.App.Store.Q().AgentLastError(context.Background(), sVU.ID); err != nil || le != "missed heartbeats" {
		t.Errorf("stored last error = %q, %v; want missed heartbeats", le, err)
	}
	t.Logf("agent_offline: %s", got.StateReason)
	if err := killPID(info.AgentPID, "CONT"); err != nil {
		t.Fatal(err)
	}
	h.waitState(sVU.ID, "online", time.Minute)

	// A Devpilot tag removed outside Devpilot is put back and audited.
	tag := "devpilot-srv-" + sDO.ID
	if !h.env.DO.UntagOutside(dropletID, tag) {
		t.Fatal("untag outside")
	}
	deadline := time.Now().Add(time.Minute)
	for {
		var audit struct {
			Entries []struct{ Action, Target string } `json:"entries"`
		}
		h.call("", "GET", "/v1/workspaces/default/audit", nil, &audit)
		tagged := false
		for _, d := range h.env.DO.State().Droplets {
			if d.ID == dropletID && slices.Contains(d.Tags, tag) {
				tagged = true
			}
		}
		audited := slices.ContainsFunc(audit.Entries, func(e struct{ Action, Target string }) bool {
			return e.Action == "server.drift.tag" && e.Target == sDO.ID
		})
		if tagged && audited {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tag not put back (%v) or not audited (%v): %+v", tagged, audited, audit.Entries)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// A firewall rule added outside Devpilot is removed again and audited.
	var fwID string
	for _, fw := range h.env.DO.State().Firewalls {
		if slices.Contains(fw.Tags, tag) {
			fwID = fw.ID
		}
	}
	if fwID == "" || !h.env.DO.AddInboundOutside(fwID, 3306) {
		t.Fatalf("no firewall for %s to edit", sDO.ID)
	}
	deadline = time.Now().Add(time.Minute)
	for {
		var audit struct {
			Entries []struct{ Action, Target string } `json:"entries"`
		}
		h.call("", "GET", "/v1/workspaces/default/audit", nil, &audit)
		var ports []string
		for _, fw := range h.env.DO.State().Firewalls {
			if fw.ID == fwID {
				ports = fw.InboundPorts
			}
		}
		audited := slices.ContainsFunc(audit.Entries, func(e struct{ Action, Target string }) bool {
			return e.Action == "server.drift.firewall" && e.Target == sDO.ID
		})
		if !slices.Contains(ports, "tcp/3306") && audited {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("firewall rule added outside not removed (%v) or not audited (%v)", ports, audited)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Powered off outside Devpilot: stopped.
	if ok, err := h.env.DO.PowerOffOutside(context.Background(), dropletID); !ok || err != nil {
		t.Fatalf("power off outside: %v %v", ok, err)
	}
	got = h.waitState(sDO.ID, "stopped", time.Minute)
	t.Logf("stopped: %s", got.StateReason)

	// Deleted outside Devpilot: lost within two passes (plus slack for
	// this loaded machine), never merely offline.
	start := time.Now()
	if !h.env.Vultr.DeleteOutside(context.Background(), sVU.InstanceID) {
		t.Fatal("delete outside")
	}
	got = h.waitState(sVU.ID, "lost", time.Minute)
	t.Logf("lost after %v (interval %v): %s", time.Since(start).Round(time.Millisecond), reconcileEvery, got.StateReason)
}
