package hub

import (
	"strconv"

	"github.com/devpilot/devpilot/shared/protocol"
)

// decodeHeartbeat is the heartbeat fast path: a scanner for the form
// agents send (encoding/json's output of protocol.Encode), which decodes
// a heartbeat without reflection in about a tenth of encoding/json's
// time. It is ok only when b is a heartbeat that protocol.Decode and
// DecodeData accept too, with the same health (FuzzDecodeHeartbeat).
// Anything it does not recognise is declined, not refused: the general
// path (protocol.Decode, then dispatch) takes it, so an agent that writes
// its JSON differently (key order, escapes, non-ASCII text, unknown
// fields) is slower, never wrong.
//
// Recognised: {"v":N,"type":"heartbeat","data":{"health":{…}}} with
// those envelope keys in that order, the health's known keys in any
// order and each at most once, whitespace between tokens, strings of
// printable ASCII without escapes, integers in int64 range for the
// integer fields, and disks as null or an array of disk objects.
func decodeHeartbeat(b []byte) (protocol.Heartbeat, bool) {
	if len(b) > protocol.MaxMessageBytes {
		return protocol.Heartbeat{}, false
	}
	s := scanner{b: b}
	var hb protocol.Heartbeat
	ok := s.lit(`{`) && s.key("v") && s.version() &&
		s.lit(`,`) && s.key("type") && s.lit(`"`+protocol.TypeHeartbeat+`"`) &&
		s.lit(`,`) && s.key("data") && s.lit(`{`) && s.key("health") && s.health(&hb.Health) && s.lit(`}`) &&
		s.lit(`}`) && s.end()
	return hb, ok
}

// scanner reads JSON tokens from b at i.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// lit consumes t after optional whitespace.
func (s *scanner) lit(t string) bool {
	s.space()
	if len(s.b)-s.i < len(t) || string(s.b[s.i:s.i+len(t)]) != t {
		return false
	}
	s.i += len(t)
	return true
}

// key consumes "k" and the colon.
func (s *scanner) key(k string) bool {
	v, ok := s.str()
	return ok && string(v) == k && s.lit(`:`)
}

func (s *scanner) end() bool {
	s.space()
	return s.i == len(s.b)
}

// str reads a string of printable ASCII without escapes (encoding/json
// would have to undo escapes and check UTF-8; declined instead).
func (s *scanner) str() ([]byte, bool) {
	if !s.lit(`"`) {
		return nil, false
	}
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			v := s.b[start:s.i]
			s.i++
			return v, true
		case c < 0x20 || c > 0x7e || c == '\\':
			return nil, false
		}
		s.i++
	}
	return nil, false
}

// number reads a JSON number's text and says whether it is an integer
// (no fraction or exponent).
func (s *scanner) number() (text []byte, integer bool, ok bool) {
	s.space()
	start := s.i
	if s.i < len(s.b) && s.b[s.i] == '-' {
		s.i++
	}
	switch {
	case s.i < len(s.b) && s.b[s.i] == '0':
		s.i++
	case s.i < len(s.b) && s.b[s.i] >= '1' && s.b[s.i] <= '9':
		s.digits()
	default:
		return nil, false, false
	}
	integer = true
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		if !s.digits() {
			return nil, false, false
		}
		integer = false
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if !s.digits() {
			return nil, false, false
		}
		integer = false
	}
	return s.b[start:s.i], integer, true
}

func (s *scanner) digits() bool {
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	return s.i > start
}

// int64 reads an integer as encoding/json does into an int64: a number
// with a fraction or exponent, or out of range, is an error there.
func (s *scanner) int64(v *int64) bool {
	text, integer, ok := s.number()
	if !ok || !integer {
		return false
	}
	n, err := strconv.ParseInt(string(text), 10, 64)
	*v = n
	return err == nil
}

func (s *scanner) float64(v *float64) bool {
	text, _, ok := s.number()
	if !ok {
		return false
	}
	f, err := strconv.ParseFloat(string(text), 64)
	*v = f
	return err == nil
}

// version reads the envelope's "v", which must be one this hub speaks
// (protocol.Decode refuses an older one).
func (s *scanner) version() bool {
	var v int64
	return s.int64(&v) && v >= protocol.MinVersion
}

// object reads {"k":value,…}, calling field for each key; field reads
// the value. Each key at most once: a repeated key is declined (in
// encoding/json the last wins, which this need not copy).
func (s *scanner) object(field func(k []byte, seen *uint32) bool) bool {
	if !s.lit(`{`) {
		return false
	}
	if s.lit(`}`) {
		return true
	}
	var seen uint32
	for {
		k, ok := s.str()
		if !ok || !s.lit(`:`) || !field(k, &seen) {
			return false
		}
		if s.lit(`}`) {
			return true
		}
		if !s.lit(`,`) {
			return false
		}
	}
}

// once marks bit in seen and says whether it was clear.
func once(seen *uint32, bit uint32) bool {
	if *seen&bit != 0 {
		return false
	}
	*seen |= bit
	return true
}

func (s *scanner) health(h *protocol.Health) bool {
	return s.object(func(k []byte, seen *uint32) bool {
		switch string(k) {
		case "uptime_s":
			return once(seen, 1<<0) && s.int64(&h.UptimeS)
		case "load1":
			return once(seen, 1<<1) && s.float64(&h.Load1)
		case "load5":
			return once(seen, 1<<2) && s.float64(&h.Load5)
		case "load15":
			return once(seen, 1<<3) && s.float64(&h.Load15)
		case "cpu_percent":
			return once(seen, 1<<4) && s.float64(&h.CPUPercent)
		case "mem_total_mb":
			return once(seen, 1<<5) && s.int64(&h.MemTotalMB)
		case "mem_used_mb":
			return once(seen, 1<<6) && s.int64(&h.MemUsedMB)
		case "disks":
			return once(seen, 1<<7) && s.disks(&h.Disks)
		case "agent_version":
			v, ok := s.str()
			h.AgentVersion = string(v)
			return once(seen, 1<<8) && ok
		}
		return false // unknown, or not in the exact case encoding/json writes
	})
}

// disks reads null (no slice, as encoding/json leaves it) or an array of
// disk objects ([] is an empty, non-nil slice, as there).
func (s *scanner) disks(ds *[]protocol.Disk) bool {
	if s.lit(`null`) {
		*ds = nil
		return true
	}
	if !s.lit(`[`) {
		return false
	}
	out := make([]protocol.Disk, 0, 2)
	if s.lit(`]`) {
		*ds = out
		return true
	}
	for {
		var d protocol.Disk
		ok := s.object(func(k []byte, seen *uint32) bool {
			switch string(k) {
			case "mount":
				v, ok := s.str()
				d.Mount = string(v)
				return once(seen, 1<<0) && ok
			case "total_mb":
				return once(seen, 1<<1) && s.int64(&d.TotalMB)
			case "used_mb":
				return once(seen, 1<<2) && s.int64(&d.UsedMB)
			}
			return false
		})
		if !ok {
			return false
		}
		out = append(out, d)
		if s.lit(`]`) {
			*ds = out
			return true
		}
		if !s.lit(`,`) {
			return false
		}
	}
}
