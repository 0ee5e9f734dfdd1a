package cloudinit

import (
	"bufio"
	"bytes"
	"strings"
	"time"
)

// LogPrefix starts every progress line the script prints on stdout, which
// cloud-init captures into /var/log/cloud-init-output.log:
//
//	devpilot-bootstrap: <RFC 3339 UTC time> <phase> [details]
const LogPrefix = "devpilot-bootstrap:"

// Phases the script reports, in order; PhaseFailed replaces the rest when
// a step fails.
const (
	PhaseStart      = "start"
	PhaseDownloaded = "downloaded"
	PhaseVerified   = "verified"
	PhaseInstalled  = "installed"
	PhaseFailed     = "failed"
)

// ParsePhases reads a cloud-init output log and returns the time of the
// first line of each phase it finds. Other lines (including the script's
// "devpilot-bootstrap: error: ..." lines) are ignored.
func ParsePhases(log []byte) map[string]time.Time {
	out := map[string]time.Time{}
	sc := bufio.NewScanner(bytes.NewReader(log))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), LogPrefix+" ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) < 2 {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, f[0])
		if err != nil {
			continue
		}
		if _, seen := out[f[1]]; !seen {
			out[f[1]] = t
		}
	}
	return out
}
