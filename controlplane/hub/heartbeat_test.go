package hub

import (
	"math"
	"reflect"
	"testing"

	"github.com/devpilot/devpilot/shared/protocol"
)

// The one-pass heartbeat decoder accepts exactly what the general path
// (protocol.Decode, then DecodeData) accepts as a heartbeat, with the same
// health; anything else is left to the general path.
func FuzzDecodeHeartbeat(f *testing.F) {
	hb, _ := protocol.Encode(protocol.TypeHeartbeat, protocol.Heartbeat{Health: protocol.Health{UptimeS: 5, Load1: 0.5,
		CPUPercent: 12, MemTotalMB: 1000, MemUsedMB: 10, Disks: []protocol.Disk{{Mount: "/", TotalMB: 50, UsedMB: 5}}}})
	for _, s := range []string{string(hb), `{"v":1,"type":"heartbeat"}`, `{"v":0,"type":"heartbeat","data":{}}`,
		`{"v":1,"type":"heartbeat","data":null}`, `{"v":1,"type":"heartbeat","data":{"health":{"load1":"x"}}}`,
		`{"v":1,"type":"task_log","data":{"heartbeat":1}}`, `{"type":"heartbeat","v":1,"data":{},"type":"hello"}`,
		`{"v":1,"type":"heartbeat","data":{"health":{}}} trailing`, `{"v":1,"type":"heartbeat","data":[]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fast, ok := decodeHeartbeat(b)
		if !ok {
			return
		}
		env, err := protocol.Decode(b)
		if err != nil || env.Type != protocol.TypeHeartbeat {
			t.Fatalf("one-pass decoder accepted %q; the general path: %+v, %v", b, env, err)
		}
		var slow protocol.Heartbeat
		if err := protocol.DecodeData(env, &slow); err != nil {
			t.Fatalf("one-pass decoder accepted %q; DecodeData: %v", b, err)
		}
		if !reflect.DeepEqual(fast, slow) {
			t.Fatalf("%q: one pass %+v, general path %+v", b, fast, slow)
		}
	})
}

// What agents send (protocol.Encode's output) takes the fast path, with
// the health encoding/json would decode; text the fast path declines
// (escapes, non-ASCII) still decodes on the general path.
func FuzzHeartbeatFastPathTakesAgentOutput(f *testing.F) {
	f.Add(int64(86400), 0.25, 3.5, int64(1024), int64(311), "/", "1.4.2", uint8(2), false)
	f.Add(int64(-1), math.Copysign(0, -1), 1e300, int64(-9223372036854775808), int64(9223372036854775807), "/mnt/my disk", "", uint8(0), true)
	f.Add(int64(0), 5e-324, 100.0, int64(0), int64(0), "/données", "v<2>&", uint8(1), false)
	f.Fuzz(func(t *testing.T, uptime int64, load, cpu float64, total, used int64, mount, version string, disks uint8, nilDisks bool) {
		h := protocol.Health{UptimeS: uptime, Load1: load, Load5: load / 2, Load15: -load, CPUPercent: cpu,
			MemTotalMB: total, MemUsedMB: used, AgentVersion: version}
		if !nilDisks {
			h.Disks = []protocol.Disk{}
			for i := range int(disks % 20) {
				h.Disks = append(h.Disks, protocol.Disk{Mount: mount, TotalMB: total - int64(i), UsedMB: used})
			}
		}
		b, err := protocol.Encode(protocol.TypeHeartbeat, protocol.Heartbeat{Health: h})
		if err != nil {
			return // NaN or ±Inf: encoding/json refuses them, so no agent sends them
		}
		got, ok := decodeHeartbeat(b)
		if !ok {
			if plainASCII(mount) && plainASCII(version) && len(b) <= protocol.MaxMessageBytes {
				t.Fatalf("the fast path declined an agent's heartbeat: %s", b)
			}
			return
		}
		env, err := protocol.Decode(b)
		var want protocol.Heartbeat
		if err == nil {
			err = protocol.DecodeData(env, &want)
		}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: fast path %+v, general path %+v (%v)", b, got, want, err)
		}
	})
}

// plainASCII is text encoding/json writes as is: printable ASCII other
// than the quote, the backslash and <, >, & (escaped as \u003c…).
func plainASCII(s string) bool {
	for _, c := range []byte(s) {
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

func TestHeartbeatFastPathDeclinesWhatItDoesNotKnow(t *testing.T) {
	for _, s := range []string{
		`{"v":1,"type":"heartbeat","data":{"health":{"uptime_s":1,"uptime_s":2}}}`, // repeated key
		`{"v":1,"type":"heartbeat","data":{"health":{"UPTIME_S":1}}}`,              // another case
		`{"v":1,"type":"heartbeat","data":{"health":{"swap_mb":1}}}`,               // a newer agent's field
		`{"type":"heartbeat","v":1,"data":{"health":{}}}`,                          // another key order
		`{"v":1,"type":"heartbeat","data":{"health":{"agent_version":"\u0031"}}}`,  // an escape
		`{"v":1,"type":"heartbeat","data":{"health":{"mem_total_mb":1.0}}}`,        // not an integer
		`{"v":1,"type":"heartbeat","data":{"health":{"load1":01}}}`,                // not JSON
		`{"v":1,"type":"heartbeat","data":{"health":{}}}x`,
	} {
		if hb, ok := decodeHeartbeat([]byte(s)); ok {
			t.Errorf("fast path took %s: %+v", s, hb)
		}
	}
	hb, ok := decodeHeartbeat([]byte(" {\n\"v\" : 2 , \"type\":\"heartbeat\",\"data\":{\"health\":{\"disks\":[ ],\"load1\":1e2}}}\r\n"))
	if !ok || hb.Health.Load1 != 100 || hb.Health.Disks == nil || len(hb.Health.Disks) != 0 {
		t.Errorf("whitespace between tokens: %+v, %v", hb, ok)
	}
}

// go test -run '^$' -bench DecodeHeartbeat -benchmem ./controlplane/hub/
func BenchmarkDecodeHeartbeat(b *testing.B) {
	msg, err := protocol.Encode(protocol.TypeHeartbeat, protocol.Heartbeat{Health: protocol.Health{UptimeS: 86400,
		Load1: 0.25, Load5: 0.2, Load15: 0.15, CPUPercent: 3.5, MemTotalMB: 1024, MemUsedMB: 311, AgentVersion: "1.4.2",
		Disks: []protocol.Disk{{Mount: "/", TotalMB: 25600, UsedMB: 4100}, {Mount: "/boot", TotalMB: 512, UsedMB: 90}}}})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("fast", func(b *testing.B) {
		for b.Loop() {
			if _, ok := decodeHeartbeat(msg); !ok {
				b.Fatal("declined")
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		for b.Loop() {
			env, err := protocol.Decode(msg)
			var hb protocol.Heartbeat
			if err == nil {
				err = protocol.DecodeData(env, &hb)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}
