package hub

import (
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
