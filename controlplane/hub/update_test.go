package hub

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/devpilot/devpilot/shared/protocol"
)

// A 1.2 agent's last_update is passed to the registry, kept in Status and
// acknowledged in the welcome; an agent without one gets no ack. A hostile
// one is bounded.
func TestLastUpdateAcknowledged(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	_, _, priv := e.enroll(t, "u1")
	a := dial(t, e.url)
	lu := &protocol.LastUpdate{ID: "act_1", Result: protocol.UpdateResultRolledBack, From: "1.0.0", To: "1.1.0",
		Reason: strings.Repeat("x", 5000)}
	a.send(protocol.TypeHello, protocol.Hello{ServerID: "u1", Mode: protocol.ModeAuth, PublicKey: priv.Public().(ed25519.PublicKey),
		Signature: ed25519.Sign(priv, protocol.SignedMessage(a.nonce, "u1")), AgentVersion: "1.0.0",
		Capabilities: []string{protocol.CapReboot, protocol.CapUpdate}, LastUpdate: lu})
	w := a.expectWelcome("u1")
	if w.LastUpdateAck != "act_1" {
		t.Errorf("welcome ack = %q, want act_1", w.LastUpdateAck)
	}
	st, _ := e.hub.Status("u1")
	if st.LastUpdate == nil || st.LastUpdate.Result != protocol.UpdateResultRolledBack || len(st.LastUpdate.Reason) > protocol.MaxReasonBytes+3 {
		t.Errorf("status last update = %+v", st.LastUpdate)
	}
	if got := e.reg.lastHello("u1"); got.LastUpdate == nil || got.LastUpdate.ID != "act_1" || len(got.LastUpdate.Reason) > protocol.MaxReasonBytes+3 {
		t.Errorf("registry got last update %+v", got.LastUpdate)
	}
	b := e.auth(t, "u1", priv)
	_ = b
	if st, _ := e.hub.Status("u1"); st.LastUpdate != nil {
		t.Errorf("a hello without last_update kept %+v", st.LastUpdate)
	}
}

// A result protocol 1.2 does not define is recorded as failed, with the
// agent's word in the reason; the update is acknowledged all the same.
func TestLastUpdateWithAnUnknownResultIsAFailure(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	_, _, priv := e.enroll(t, "u1")
	a := dial(t, e.url)
	a.send(protocol.TypeHello, protocol.Hello{ServerID: "u1", Mode: protocol.ModeAuth, PublicKey: priv.Public().(ed25519.PublicKey),
		Signature: ed25519.Sign(priv, protocol.SignedMessage(a.nonce, "u1")), AgentVersion: "1.0.0",
		Capabilities: []string{protocol.CapUpdate}, LastUpdate: &protocol.LastUpdate{ID: "act_2", Result: "half_done",
			From: "1.0.0", To: "1.1.0", Reason: "disk full"}})
	if w := a.expectWelcome("u1"); w.LastUpdateAck != "act_2" {
		t.Errorf("welcome ack = %q, want act_2", w.LastUpdateAck)
	}
	got := e.reg.lastHello("u1").LastUpdate
	if got == nil || got.ID != "act_2" || got.Result != protocol.UpdateResultFailed ||
		got.Reason != `the agent reported result "half_done": disk full` || got.From != "1.0.0" || got.To != "1.1.0" {
		t.Errorf("registry got last update %+v, want failed naming the agent's result", got)
	}
}

// Version skew: agents of protocol 1.0 and 1.1 keep working with this hub.
// Their recorded fixtures (shared/protocol/testdata/v1.0, v1.1) are
// replayed as they are on the wire — only the hello's key, signature and
// server id are replaced to answer this session's challenge — and the hub
// welcomes them, takes their heartbeats and hands their task messages on.
func TestOlderProtocolAgentsAccepted(t *testing.T) {
	t.Parallel()
	for _, ver := range []string{"v1.0", "v1.1"} {
		t.Run(ver, func(t *testing.T) {
			t.Parallel()
			got := make(chan string, 4)
			e := newEnv(t, nil)
			for _, typ := range []string{protocol.TypeTaskLog, protocol.TypeTaskResult} {
				e.hub.Handle(typ, func(_ context.Context, id string, env protocol.Envelope) { got <- id + " " + env.Type })
			}
			dir := filepath.Join("..", "..", "shared", "protocol", "testdata", ver)
			fixture := func(name string) []byte {
				b, err := os.ReadFile(filepath.Join(dir, name+".json"))
				if err != nil {
					t.Fatal(err)
				}
				return []byte(strings.TrimSpace(string(b)))
			}
			id := "old-" + ver
			e.reg.addServer(id, "tok", time.Now().Add(time.Hour))
			pub, priv := newKey(t)
			for i, mode := range []string{"hello_enroll", "hello_auth"} {
				a := dial(t, e.url)
				var env map[string]json.RawMessage
				if err := json.Unmarshal(fixture(mode), &env); err != nil {
					t.Fatal(err)
				}
				var hello map[string]any
				if err := json.Unmarshal(env["data"], &hello); err != nil {
					t.Fatal(err)
				}
				hello["server_id"] = id
				hello["public_key"] = []byte(pub)
				hello["signature"] = ed25519.Sign(priv, protocol.SignedMessage(a.nonce, id))
				if i == 0 {
					hello["bootstrap_token"] = "tok"
				}
				env["data"], _ = json.Marshal(hello)
				b, _ := json.Marshal(env)
				a.sendRaw(b)
				w := a.expectWelcome(id)
				if w.LastUpdateAck != "" {
					t.Errorf("welcome to an old agent acks %q", w.LastUpdateAck)
				}
				if i == 0 {
					continue
				}
				a.sendRaw(fixture("heartbeat"))
				eventually(t, "the old heartbeat", func() bool {
					st, _ := e.hub.Status(id)
					return st.Health != nil && st.Health.UptimeS == 86400
				})
				a.sendRaw(fixture("task_log"))
				a.sendRaw(fixture("task_result"))
				for _, want := range []string{id + " task_log", id + " task_result"} {
					select {
					case g := <-got:
						if g != want {
							t.Errorf("handled %q, want %q", g, want)
						}
					case <-time.After(30 * time.Second):
						t.Fatalf("no %s handled", want)
					}
				}
				st, _ := e.hub.Status(id)
				if st.LastUpdate != nil || len(st.Capabilities) != 0 && ver == "v1.0" {
					t.Errorf("old agent's status %+v", st)
				}
			}
		})
	}
}
