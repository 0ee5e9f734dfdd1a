package web

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestChartsDrawInsideTheirBox(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 15, 0, 0, 0, time.UTC)
	cases := []struct {
		name      string
		samples   []sample
		n         int    // points drawn
		latest    string // CPU's
		since     string
		firstX    float64
		summaryIn string
	}{
		{"none", nil, 0, "—", "", -1, "no samples yet"},
		{"an hour, one too old", []sample{
			{At: now.Add(-2 * time.Hour), CPUPercent: 50, MemUsedMB: 1, MemTotalMB: 2},
			{At: now.Add(-time.Hour), CPUPercent: 10, MemUsedMB: 1, MemTotalMB: 2},
			{At: now.Add(-30 * time.Minute), CPUPercent: 250, MemUsedMB: 1, MemTotalMB: 2}, // clamped to 100
			{At: now, CPUPercent: 20, MemUsedMB: 1, MemTotalMB: 2},
		}, 3, "20%", "", plotL, "between 10% and 100%"},
		{"young server", []sample{
			{At: now.Add(-5 * time.Minute), CPUPercent: 5},
			{At: now, CPUPercent: 7},
		}, 2, "7%", "14:55:00 UTC", plotL, "since 14:55:00 UTC"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cs := charts(tc.samples, now, time.Hour)
			if len(cs) != 3 || cs[0].Label != "CPU" {
				t.Fatalf("charts: %+v", cs)
			}
			cpu := cs[0]
			if cpu.Samples != tc.n || cpu.Latest != tc.latest || cpu.Since != tc.since || !strings.Contains(cpu.Summary, tc.summaryIn) {
				t.Errorf("cpu chart %+v", cpu)
			}
			for i, pt := range strings.Fields(cpu.Points) {
				xy := strings.Split(pt, ",")
				x, _ := strconv.ParseFloat(xy[0], 64)
				y, _ := strconv.ParseFloat(xy[1], 64)
				if x < plotL || x > plotL+plotW || y < plotT || y > plotT+plotH {
					t.Errorf("point %s outside the plot box", pt)
				}
				if i == 0 && tc.firstX >= 0 && x != tc.firstX {
					t.Errorf("first point at x=%v, want %v", x, tc.firstX)
				}
			}
			if tc.n > 0 && len(strings.Split(cpu.Readout, ";")) != tc.n {
				t.Errorf("readout of %d samples: %q", tc.n, cpu.Readout)
			}
			if len(cpu.YTicks) != 3 || cpu.YTicks[2].Label != "100%" || len(cpu.XTicks) != 3 ||
				cpu.XTicks[2].Label != now.Format("15:04") && cpu.XTicks[2].Label != now.Format("15:04:05") {
				t.Errorf("axes: %+v %+v", cpu.YTicks, cpu.XTicks)
			}
			// Disk has no totals in these samples: nothing is drawn for it.
			if cs[2].Points != "" {
				t.Errorf("disk drawn without data: %q", cs[2].Points)
			}
		})
	}
}
