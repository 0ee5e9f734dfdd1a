package hub

import (
	"context"
	"crypto/ed25519"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/devpilot/devpilot/shared/protocol"
)

// A 1.1 agent's capabilities and boot id show in Status; a reboot request
// reaches it; its goodbye becomes the server's last error once it closes.
func TestRebootGoodbyeAndLastError(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	e.reg.addServer("r1", "tok-r1", time.Now().Add(time.Hour))
	pub, priv := newKey(t)
	a := dial(t, e.url)
	a.send(protocol.TypeHello, protocol.Hello{
		ServerID: "r1", Mode: protocol.ModeEnroll, BootstrapToken: "tok-r1", PublicKey: pub,
		Signature: ed25519.Sign(priv, protocol.SignedMessage(a.nonce, "r1")), AgentVersion: "0.2.0",
		Facts:        protocol.Facts{Hostname: "web-1", BootID: "boot-a"},
		Capabilities: []string{protocol.CapReboot},
	})
	a.expectWelcome("r1")
	st, ok := e.hub.Status("r1")
	if !ok || st.BootID != "boot-a" || len(st.Capabilities) != 1 || st.Capabilities[0] != protocol.CapReboot {
		t.Fatalf("status = %+v, %v; want boot-a and the reboot capability", st, ok)
	}
	if _, ok := e.hub.LastError("r1"); ok {
		t.Errorf("a server whose session never ended has a last error")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.hub.Send(ctx, "r1", protocol.TypeReboot, protocol.Reboot{ID: "act_1"}); err != nil {
		t.Fatal(err)
	}
	m := a.read()
	var r protocol.Reboot
	if m.Type != protocol.TypeReboot || protocol.DecodeData(m, &r) != nil || r.ID != "act_1" {
		t.Fatalf("agent got %s %s, want reboot act_1", m.Type, m.Data)
	}
	a.send(protocol.TypeGoodbye, protocol.Goodbye{Reason: protocol.GoodbyeReboot, RebootID: "act_1"})
	_ = a.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, "agent rebooting"), time.Now().Add(time.Second))
	eventually(t, "the session's end", func() bool { _, ok := e.hub.Status("r1"); return !ok })
	le, ok := e.hub.LastError("r1")
	if !ok || !strings.Contains(le.Reason, "goodbye: reboot (act_1)") {
		t.Errorf("last error = %+v, %v; want the goodbye", le, ok)
	}

	// An agent that just drops the connection: the read error is kept.
	b := e.auth(t, "r1", priv)
	_ = b.conn.Close()
	eventually(t, "the second session's end", func() bool { _, ok := e.hub.Status("r1"); return !ok })
	if le, _ := e.hub.LastError("r1"); strings.Contains(le.Reason, "goodbye") || le.Reason == "" {
		t.Errorf("last error after a dropped connection = %q", le.Reason)
	}
}
