package hub

import (
	"strings"
	"unicode/utf8"

	"github.com/devpilot/devpilot/shared/protocol"
)

// Bounds on the health the hub keeps of a heartbeat. An agent is
// authenticated but not trusted: what it reports is stored, and shown in
// every GET servers, so it is cut to a small, sane snapshot on arrival.
const (
	MaxDisks        = 32  // the first ones reported are kept
	MaxMountBytes   = 256 // a longer mount path is cut (on a rune boundary)
	MaxVersionBytes = 64  // agent_version
	MaxLoad         = 1e6 // load averages are clamped to 0..MaxLoad
	MaxPercent      = 100 // cpu_percent is clamped to 0..100
)

// boundHealth returns h cut to the bounds above: at most MaxDisks disks,
// strings cut and valid UTF-8, counts and sizes not negative, percentages
// 0..100, and used never above total.
func boundHealth(h protocol.Health) protocol.Health {
	out := protocol.Health{
		UptimeS:      max(h.UptimeS, 0),
		Load1:        clamp(h.Load1, MaxLoad),
		Load5:        clamp(h.Load5, MaxLoad),
		Load15:       clamp(h.Load15, MaxLoad),
		CPUPercent:   clamp(h.CPUPercent, MaxPercent),
		MemTotalMB:   max(h.MemTotalMB, 0),
		AgentVersion: cut(h.AgentVersion, MaxVersionBytes),
	}
	out.MemUsedMB = min(max(h.MemUsedMB, 0), out.MemTotalMB)
	if h.Disks != nil {
		out.Disks = make([]protocol.Disk, 0, min(len(h.Disks), MaxDisks))
	}
	for _, d := range h.Disks[:min(len(h.Disks), MaxDisks)] {
		total := max(d.TotalMB, 0)
		out.Disks = append(out.Disks, protocol.Disk{Mount: cut(d.Mount, MaxMountBytes), TotalMB: total, UsedMB: min(max(d.UsedMB, 0), total)})
	}
	return out
}

// clamp bounds v to 0..hi; NaN (which JSON cannot carry) becomes 0.
func clamp(v, hi float64) float64 {
	if !(v > 0) {
		return 0
	}
	return min(v, hi)
}

// cut returns s as valid UTF-8 of at most n bytes, cut on a rune boundary.
func cut(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i]
}
