package protocol

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/*.json from the current encoder")

func seq(n int, from byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = from + byte(i)
	}
	return b
}

// golden is one fixture: what Encode(typ, payload) must produce, byte for
// byte, and what decoding the fixture must give back.
type golden struct {
	name    string
	typ     string
	payload any // a pointer to a message struct
}

func goldens() []golden {
	facts := Facts{Hostname: "web-1", OS: "linux", Arch: "amd64", Distro: "Ubuntu 24.04.1 LTS",
		Kernel: "6.8.0-45-generic", CPUs: 2, MemoryMB: 2048, Systemd: true}
	deadline := time.Date(2026, 11, 23, 12, 30, 0, 0, time.UTC)
	started := time.Date(2026, 11, 23, 12, 0, 1, 0, time.UTC)
	finished := time.Date(2026, 11, 23, 12, 0, 9, 500_000_000, time.UTC)
	exit22 := 22
	return []golden{
		{"challenge", TypeChallenge, &Challenge{Nonce: seq(NonceBytes, 0), Protocol: 1}},
		{"hello_enroll", TypeHello, &Hello{ServerID: "srv_01JD3Q7Z8X", Mode: ModeEnroll,
			BootstrapToken: "dpb_example-not-a-real-token", PublicKey: seq(32, 100), Signature: seq(64, 1),
			AgentVersion: "0.1.0", Facts: facts}},
		{"hello_auth", TypeHello, &Hello{ServerID: "srv_01JD3Q7Z8X", Mode: ModeAuth,
			PublicKey: seq(32, 100), Signature: seq(64, 1), AgentVersion: "0.1.0", Facts: facts}},
		{"welcome", TypeWelcome, &Welcome{ServerID: "srv_01JD3Q7Z8X", HeartbeatIntervalS: DefaultHeartbeatS, Protocol: 1}},
		{"error", TypeError, &Error{Code: ErrTokenInvalid, Message: "the bootstrap token is unknown, already used, expired or for another server"}},
		{"heartbeat", TypeHeartbeat, &Heartbeat{Health: Health{UptimeS: 86400, Load1: 0.25, Load5: 0.5, Load15: 1,
			CPUPercent: 12.5, MemTotalMB: 2048, MemUsedMB: 733,
			Disks:        []Disk{{Mount: "/", TotalMB: 51200, UsedMB: 10240}, {Mount: "/var/lib/docker", TotalMB: 102400, UsedMB: 0}},
			AgentVersion: "0.1.0"}}},
		{"task_exec", TypeTask, &Task{ID: "tsk_01JD4A2B3C", Kind: KindExec, Deadline: deadline,
			Exec: &ExecSpec{Argv: []string{"/usr/bin/systemctl", "is-active", "nginx"}, Env: map[string]string{"LANG": "C"},
				Dir: "/srv/app", User: "deploy", TimeoutS: 60, MaxOutputBytes: 65536}}},
		{"task_deploy", TypeTask, &Task{ID: "tsk_01JD4A2B3D", Kind: KindDeploy, Deadline: deadline,
			Deploy: &DeploySpec{Steps: []DeployStep{
				{Name: "config", Kind: KindFile, File: &FileSpec{Path: "/etc/app.conf", ContentBase64: "cG9ydD04MDgwCg==", Mode: "0640", Owner: "root", Group: "app"}},
				{Name: "restart", Kind: KindSystemd, Systemd: &SystemdSpec{Unit: "app.service", Action: "restart"}},
				{Name: "check", Kind: KindExec, Exec: &ExecSpec{Argv: []string{"/usr/bin/curl", "-fsS", "http://127.0.0.1:8080/healthz"}}},
			}}}},
		{"hello_auth_capabilities", TypeHello, &Hello{ServerID: "srv_01JD3Q7Z8X", Mode: ModeAuth,
			PublicKey: seq(32, 100), Signature: seq(64, 1), AgentVersion: "0.2.0", Facts: withBoot(facts),
			Capabilities: []string{CapReboot}}},
		{"reboot", TypeReboot, &Reboot{ID: "act_01JE0R3B00T"}},
		{"goodbye", TypeGoodbye, &Goodbye{Reason: GoodbyeReboot, RebootID: "act_01JE0R3B00T"}},
		{"hello_auth_last_update", TypeHello, &Hello{ServerID: "srv_01JD3Q7Z8X", Mode: ModeAuth,
			PublicKey: seq(32, 100), Signature: seq(64, 1), AgentVersion: "0.3.0", Facts: withBoot(facts),
			Capabilities: []string{CapReboot, CapUpdate},
			LastUpdate:   &LastUpdate{ID: "act_01JE1UPD4TE", Result: UpdateResultRolledBack, From: "0.3.0", To: "0.4.0", Reason: "the new version failed to start 3 times"}}},
		{"welcome_last_update_ack", TypeWelcome, &Welcome{ServerID: "srv_01JD3Q7Z8X", HeartbeatIntervalS: DefaultHeartbeatS, Protocol: 1,
			LastUpdateAck: "act_01JE1UPD4TE"}},
		{"update", TypeUpdate, &Update{ID: "act_01JE1UPD4TE", Version: "0.4.0", URL: "/v1/agent/releases/0.4.0/linux/amd64",
			SHA256: "4f5c1a1f3e0d1b9c2a7e8d6b5c4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a", Signature: "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4/QA==",
			Size: 12582912}},
		{"update_status", TypeUpdateStatus, &UpdateStatus{ID: "act_01JE1UPD4TE", State: UpdateRefused, Error: "signature does not verify against the pinned release keys"}},
		{"goodbye_update", TypeGoodbye, &Goodbye{Reason: GoodbyeUpdate, UpdateID: "act_01JE1UPD4TE"}},
		{"cancel", TypeCancel, &Cancel{TaskID: "tsk_01JD4A2B3C"}},
		{"task_ack", TypeTaskAck, &TaskAck{TaskID: "tsk_01JD4A2B3C", LogSeq: 42, Final: true}},
		{"task_log", TypeTaskLog, &TaskLog{TaskID: "tsk_01JD4A2B3D", Seq: 7, Stream: StreamStdout, Step: 3, Data: []byte("ok\n")}},
		{"task_result", TypeTaskResult, &TaskResult{TaskID: "tsk_01JD4A2B3D", State: TaskFailed, ExitCode: &exit22,
			Reason: "", Error: "step 3 (check) exited 22", StartedAt: started, FinishedAt: &finished, LastLogSeq: 7,
			Steps: []StepResult{
				{Name: "config", Kind: KindFile, State: TaskSucceeded, SHA256: "4f5c1a1f3e0d1b9c2a7e8d6b5c4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a"},
				{Name: "restart", Kind: KindSystemd, State: TaskSucceeded, Unit: &UnitStatus{Name: "app.service", LoadState: "loaded",
					ActiveState: "active", SubState: "running", UnitFile: "enabled"}},
				{Name: "check", Kind: KindExec, State: TaskFailed, ExitCode: &exit22, Error: "exit status 22"},
			}}},
	}
}

func withBoot(f Facts) Facts {
	f.BootID = "2f0c8e3a-6a1b-4d1e-9c57-0f3b8d2a7e41"
	return f
}

// A 1.0 agent's hello (no capabilities, no boot id) still decodes, and says
// it cannot reboot.
func TestOldHelloHasNoCapabilities(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "hello_auth.json"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := Decode(bytes.TrimSpace(b))
	if err != nil {
		t.Fatal(err)
	}
	var h Hello
	if err := DecodeData(e, &h); err != nil {
		t.Fatal(err)
	}
	if h.HasCapability(CapReboot) || h.Facts.BootID != "" {
		t.Errorf("old hello decoded as %+v", h)
	}
	n := Hello{Capabilities: []string{"later", CapReboot}}
	if !n.HasCapability(CapReboot) {
		t.Errorf("HasCapability missed %q", CapReboot)
	}
}

func TestGolden(t *testing.T) {
	for _, g := range goldens() {
		t.Run(g.name, func(t *testing.T) {
			path := filepath.Join("testdata", g.name+".json")
			got, err := Encode(g.typ, g.payload)
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("wire format changed (bump Version if intended, then go test -update):\n got %s\nwant %s", got, want)
			}

			// The fixture still decodes to the same message.
			e, err := Decode(bytes.TrimSpace(want))
			if err != nil {
				t.Fatal(err)
			}
			if e.Type != g.typ || e.V != Version {
				t.Errorf("envelope = v%d %q, want v%d %q", e.V, e.Type, Version, g.typ)
			}
			back := reflect.New(reflect.TypeOf(g.payload).Elem()).Interface()
			if err := DecodeData(e, back); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(back, g.payload) {
				t.Errorf("decoded %+v, want %+v", back, g.payload)
			}
		})
	}
}

func TestDecodeRefuses(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
	}{
		{"not json", []byte("{")},
		{"no type", []byte(`{"v":1}`)},
		{"no version", []byte(`{"type":"hello"}`)},
		{"too large", append(append([]byte(`{"v":1,"type":"task_log","data":"`), bytes.Repeat([]byte("x"), MaxMessageBytes)...), `"}`...)},
	}
	for _, tt := range tests {
		if _, err := Decode(tt.in); err == nil {
			t.Errorf("%s: Decode accepted it", tt.name)
		}
	}
	if err := DecodeData(Envelope{V: 1, Type: TypeHello}, &Hello{}); err == nil {
		t.Errorf("DecodeData accepted an envelope without data")
	}
}

// payloadFor returns a fresh value to decode a message of typ into.
func payloadFor(typ string) any {
	switch typ {
	case TypeChallenge:
		return &Challenge{}
	case TypeHello:
		return &Hello{}
	case TypeWelcome:
		return &Welcome{}
	case TypeError:
		return &Error{}
	case TypeHeartbeat:
		return &Heartbeat{}
	case TypeTask:
		return &Task{}
	case TypeCancel:
		return &Cancel{}
	case TypeTaskAck:
		return &TaskAck{}
	case TypeTaskLog:
		return &TaskLog{}
	case TypeTaskResult:
		return &TaskResult{}
	case TypeReboot:
		return &Reboot{}
	case TypeGoodbye:
		return &Goodbye{}
	case TypeUpdate:
		return &Update{}
	case TypeUpdateStatus:
		return &UpdateStatus{}
	}
	var v any
	return &v
}

// FuzzDecode feeds what an agent (or anyone reaching the hub) could send
// through Decode and DecodeData: no panics, accepted envelopes are valid,
// and what decodes re-encodes to the same message.
func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.json"))
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{`{}`, `null`, `[]`, `{"v":0,"type":"hello","data":{}}`, `{"v":1,"type":"heartbeat","data":null}`,
		`{"v":2,"type":"task","data":{"id":"t1"}}`, `{"v":1,"type":"hello","data":{"public_key":"!!"}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Decode(b)
		if err != nil {
			return
		}
		if e.Type == "" || e.V < MinVersion {
			t.Fatalf("Decode accepted %+v", e)
		}
		v := payloadFor(e.Type)
		if err := DecodeData(e, v); err != nil {
			return
		}
		b2, err := Encode(e.Type, v)
		if err != nil {
			return // re-escaping can grow a message past MaxMessageBytes
		}
		e2, err := Decode(b2)
		if err != nil {
			t.Fatalf("Decode(Encode(x)) failed: %v\n%s", err, b2)
		}
		v2 := payloadFor(e.Type)
		if err := DecodeData(e2, v2); err != nil {
			t.Fatalf("DecodeData(Encode(x)) failed: %v\n%s", err, b2)
		}
		// Compared encoded: omitempty makes an empty list and none the
		// same message ("steps":[] is sent as nothing).
		j1, _ := json.Marshal(v)
		j2, _ := json.Marshal(v2)
		if !bytes.Equal(j1, j2) {
			t.Fatalf("round trip changed the message:\n%s\n%s", j1, j2)
		}
	})
}

// Version skew: every fixture an agent of protocol 1.0 or 1.1 sent or got
// (kept in testdata/v1.0 and testdata/v1.1) still decodes with today's
// code into the same message, with the newer fields empty. The hub's side
// of this promise (it welcomes such agents) is tested in controlplane/hub.
func TestOlderMinorFixturesStillDecode(t *testing.T) {
	types := map[string]any{}
	for _, g := range goldens() {
		types[g.name] = g.payload
	}
	for _, dir := range []string{"v1.0", "v1.1"} {
		files, err := filepath.Glob(filepath.Join("testdata", dir, "*.json"))
		if err != nil || len(files) < 10 {
			t.Fatalf("%s: %d fixtures (%v)", dir, len(files), err)
		}
		for _, f := range files {
			name := strings.TrimSuffix(filepath.Base(f), ".json")
			t.Run(dir+"/"+name, func(t *testing.T) {
				b, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				e, err := Decode(bytes.TrimSpace(b))
				if err != nil {
					t.Fatal(err)
				}
				want, ok := types[name]
				if !ok {
					t.Fatalf("no current message for the old fixture %s", name)
				}
				back := reflect.New(reflect.TypeOf(want).Elem()).Interface()
				if err := DecodeData(e, back); err != nil {
					t.Fatal(err)
				}
				// The old bytes are still what today's encoder writes for
				// the same message: no field was renamed or dropped.
				again, err := Encode(e.Type, back)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(again, bytes.TrimSpace(b)) {
					t.Errorf("old fixture re-encodes differently:\n got %s\nwant %s", again, bytes.TrimSpace(b))
				}
				if h, ok := back.(*Hello); ok && (h.LastUpdate != nil || h.HasCapability(CapUpdate)) {
					t.Errorf("old hello decoded with update fields: %+v", h)
				}
			})
		}
	}
}
