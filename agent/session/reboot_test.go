package session_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/devpilot/devpilot/agent/agenttest"
	"github.com/devpilot/devpilot/agent/config"
	"github.com/devpilot/devpilot/agent/session"
	"github.com/devpilot/devpilot/shared/protocol"
)

// An agent with a reboot function advertises it, and on the hub's reboot
// request says goodbye, closes normally, reboots and stops.
func TestRebootRequest(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	var reboots atomic.Int32
	h := start(t, config.FromBootstrap(hub.Bootstrap("srv-r")), func(o *session.Options) {
		o.Reboot = func(context.Context) error { reboots.Add(1); return nil }
	})
	agenttest.WaitFor(t, "first heartbeat", func() bool { return len(hub.Heartbeats()) >= 1 })
	if hello := hub.Hellos()[0]; !hello.HasCapability(protocol.CapReboot) {
		t.Fatalf("hello capabilities %v, want %q", hello.Capabilities, protocol.CapReboot)
	}
	if err := hub.Send("srv-r", protocol.TypeReboot, protocol.Reboot{ID: "act_9"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-h.done:
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return after the reboot request")
	}
	if !errors.Is(h.runErr, session.ErrRebooting) || reboots.Load() != 1 {
		t.Errorf("Run = %v after %d reboots, want ErrRebooting after 1", h.runErr, reboots.Load())
	}
	agenttest.WaitFor(t, "goodbye", func() bool { return len(hub.Goodbyes()) == 1 })
	if g := hub.Goodbyes()[0]; g.Reason != protocol.GoodbyeReboot || g.RebootID != "act_9" {
		t.Errorf("goodbye = %+v", g)
	}
	agenttest.WaitFor(t, "close frame", func() bool { return len(hub.CloseCodes()) > 0 })
	if got := hub.CloseCodes(); got[0] != 1000 {
		t.Errorf("close codes %v, want 1000", got)
	}
}

// A failed reboot: the agent reconnects; one without a reboot function
// neither advertises nor obeys a reboot request.
func TestRebootFailsOrIsNotOffered(t *testing.T) {
	t.Parallel()
	hub := agenttest.New(t)
	start(t, config.FromBootstrap(hub.Bootstrap("srv-f")), func(o *session.Options) {
		o.Reboot = func(context.Context) error { return errors.New("no systemd") }
	})
	agenttest.WaitFor(t, "heartbeat", func() bool { return len(hub.Heartbeats()) >= 1 })
	if err := hub.Send("srv-f", protocol.TypeReboot, protocol.Reboot{ID: "act_f"}); err != nil {
		t.Fatal(err)
	}
	agenttest.WaitFor(t, "reconnect after the failed reboot", func() bool { return len(hub.Hellos()) >= 2 })

	old := agenttest.New(t)
	h := start(t, config.FromBootstrap(old.Bootstrap("srv-o")), nil)
	agenttest.WaitFor(t, "heartbeat", func() bool { return len(old.Heartbeats()) >= 1 })
	if len(old.Hellos()[0].Capabilities) != 0 {
		t.Errorf("an agent without Reboot advertised %v", old.Hellos()[0].Capabilities)
	}
	if err := old.Send("srv-o", protocol.TypeReboot, protocol.Reboot{ID: "act_o"}); err != nil {
		t.Fatal(err)
	}
	n := len(old.Heartbeats())
	agenttest.WaitFor(t, "heartbeats go on", func() bool { return len(old.Heartbeats()) > n })
	if len(old.Goodbyes()) != 0 || old.Connections() != 1 {
		t.Errorf("the agent obeyed a reboot it does not offer: goodbyes %v, connections %d", old.Goodbyes(), old.Connections())
	}
	h.stop(t)
}
