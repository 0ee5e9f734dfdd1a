package session_test

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/devpilot/devpilot/agent/agenttest"
	"github.com/devpilot/devpilot/agent/config"
	"github.com/devpilot/devpilot/agent/layout"
	"github.com/devpilot/devpilot/agent/session"
	"github.com/devpilot/devpilot/agent/update"
	"github.com/devpilot/devpilot/shared/protocol"
	"github.com/devpilot/devpilot/shared/release"
)

// server lays out version A as installed and returns its updater.
func updateServer(t *testing.T, key ed25519.PrivateKey) (layout.Paths, *update.Updater) {
	t.Helper()
	p := layout.New(t.TempDir())
	if err := os.MkdirAll(filepath.Dir(p.VersionBinary("A")), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p.VersionBinary("A"), []byte("agent A"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(p.StateDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := update.PointCurrent(p, "A"); err != nil {
		t.Fatal(err)
	}
	return p, update.New(update.Options{Paths: p, Keys: []ed25519.PublicKey{key.Public().(ed25519.PublicKey)}, Version: "A",
		GOOS: "linux", GOARCH: "amd64", Window: time.Minute})
}

func signedUpdate(t *testing.T, key ed25519.PrivateKey, id, version string, body []byte) protocol.Update {
	t.Helper()
	s, err := release.Sign(key, bytes.NewReader(body), version, "linux", "amd64")
	if err != nil {
		t.Fatal(err)
	}
	return protocol.Update{ID: id, Version: version, URL: "/v1/agent/releases/" + version + "/linux/amd64",
		SHA256: s.SHA256, Signature: s.Signature, Size: s.Size}
}

// The hub sends an update: the agent advertises the capability, downloads
// over its pinned TLS channel, reports its progress, says goodbye {update}
// and Run returns ErrUpdating, with current pointing at the new version.
func TestUpdateInstallsAndRestarts(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	key, _ := release.GenerateKey()
	p, upd := updateServer(t, key)
	h := start(t, config.FromBootstrap(hub.Bootstrap("srv-u")), func(o *session.Options) { o.Update = upd })
	agenttest.WaitFor(t, "first heartbeat", func() bool { return len(hub.Heartbeats()) >= 1 })
	if hello := hub.Hellos()[0]; !hello.HasCapability(protocol.CapUpdate) || hello.LastUpdate != nil {
		t.Fatalf("hello %v %+v, want the update capability and no last update", hello.Capabilities, hello.LastUpdate)
	}
	u := signedUpdate(t, key, "act_u1", "B", []byte("agent B"))
	hub.ServeFile(u.URL, []byte("agent B"))
	if err := hub.Send("srv-u", protocol.TypeUpdate, u); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after the update")
	}
	if !errors.Is(h.runErr, session.ErrUpdating) {
		t.Errorf("Run = %v, want ErrUpdating", h.runErr)
	}
	agenttest.WaitFor(t, "goodbye", func() bool { return len(hub.Goodbyes()) == 1 })
	if g := hub.Goodbyes()[0]; g.Reason != protocol.GoodbyeUpdate || g.UpdateID != "act_u1" {
		t.Errorf("goodbye = %+v", g)
	}
	var states []string
	for _, st := range hub.UpdateStatuses() {
		states = append(states, st.State)
	}
	if len(states) == 0 || states[len(states)-1] != protocol.UpdateRestarting {
		t.Errorf("statuses %v, want … restarting", states)
	}
	if update.CurrentVersion(p) != "B" {
		t.Errorf("current = %q", update.CurrentVersion(p))
	}
}

// The hub (a control plane) serves a tampered binary with the real
// release's metadata: the agent refuses it, says so, keeps its session
// and keeps running A.
func TestUpdateTamperedBinaryRefusedOverTheSession(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	key, _ := release.GenerateKey()
	p, upd := updateServer(t, key)
	h := start(t, config.FromBootstrap(hub.Bootstrap("srv-t")), func(o *session.Options) { o.Update = upd })
	agenttest.WaitFor(t, "first heartbeat", func() bool { return len(hub.Heartbeats()) >= 1 })
	u := signedUpdate(t, key, "act_t1", "B", []byte("agent B"))
	hub.ServeFile(u.URL, []byte("evil B"+"!"))
	if err := hub.Send("srv-t", protocol.TypeUpdate, u); err != nil {
		t.Fatal(err)
	}
	agenttest.WaitFor(t, "refusal", func() bool {
		st := hub.UpdateStatuses()
		return len(st) > 0 && st[len(st)-1].State == protocol.UpdateRefused
	})
	if update.CurrentVersion(p) != "A" {
		t.Errorf("current = %q after a refusal", update.CurrentVersion(p))
	}
	n := len(hub.Heartbeats())
	agenttest.WaitFor(t, "the session going on", func() bool { return len(hub.Heartbeats()) > n })
	select {
	case <-h.done:
		t.Fatalf("Run returned %v after a refused update", h.runErr)
	default:
	}
	// The refusal is reported in the next hello, acknowledged, then dropped.
	hub.Kick()
	agenttest.WaitFor(t, "a hello reporting the refusal", func() bool {
		for _, hl := range hub.Hellos() {
			if hl.LastUpdate != nil && hl.LastUpdate.ID == "act_t1" && hl.LastUpdate.Result == protocol.UpdateResultRefused {
				return true
			}
		}
		return false
	})
	agenttest.WaitFor(t, "the ack clearing it", func() bool { return upd.LastUpdate() == nil })
}
