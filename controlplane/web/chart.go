package web

import (
	"fmt"
	"strings"
	"time"

	"github.com/devpilot/devpilot/controlplane/apitypes"
)

// sample is one stored health sample (GET …/servers/{id}/health).
type sample = apitypes.HealthSample

// Chart geometry: the SVG viewBox is ChartW × ChartH; the plot, values
// 0-100 %, is the box at (plotL, plotT) of plotW × plotH, with the y axis's
// labels to its left and the time axis's below.
const (
	ChartW = 320
	ChartH = 150
	plotL  = 40
	plotT  = 10
	plotW  = ChartW - plotL - 10
	plotH  = ChartH - plotT - 28
)

// chart is one inline SVG line chart of a percentage, with axes.
type chart struct {
	Label   string // "CPU"
	Latest  string // "12%"
	Points  string // polyline points in the viewBox
	Area    string // polygon points (line closed down to the axis)
	Summary string // text alternative for screen readers
	Samples int
	Since   string // where the time axis starts, when later than the window's start
	LastX   string // the latest sample, marked with a dot (one sample draws no line)
	LastY   string
	YTicks  []tick // 0 %, 50 %, 100 %
	XTicks  []tick // start, middle, end of the window (UTC)
	// Readout is every sample as "x y label" separated by ";", for the
	// script's hover and keyboard readout.
	Readout string
	// Plot box, for the template.
	L, T, R, B int
}

// tick is an axis mark: its position (y for the value axis, x for time)
// and label.
type tick struct {
	At     string
	Label  string
	Anchor string // text-anchor: the time axis's ends stay inside the box
}

// charts draws CPU, memory and disk use over the window ending at now.
func charts(ss []sample, now time.Time, window time.Duration) []chart {
	metrics := []struct {
		label string
		value func(sample) (float64, bool)
	}{
		{"CPU", func(s sample) (float64, bool) { return s.CPUPercent, true }},
		{"Memory", func(s sample) (float64, bool) { return ratio(s.MemUsedMB, s.MemTotalMB) }},
		{"Disk", func(s sample) (float64, bool) { return ratio(s.DiskUsedMB, s.DiskTotalMB) }},
	}
	out := make([]chart, 0, len(metrics))
	start := now.Add(-window)
	// A young server's few minutes would be a sliver at the right edge:
	// its axis starts at its first sample instead (and says so).
	since := ""
	for _, s := range ss {
		if !s.At.Before(start) {
			if first := s.At; now.Sub(first) < window {
				start = first
				if now.Sub(start) < time.Minute {
					start = now.Add(-time.Minute)
				}
				since = start.UTC().Format("15:04:05 UTC")
			}
			break
		}
	}
	span := now.Sub(start)
	xOf := func(t time.Time) float64 { return plotL + float64(t.Sub(start))/float64(span)*plotW }
	yOf := func(v float64) float64 { return plotT + plotH - v/100*plotH }
	clock := "15:04"
	if span < 10*time.Minute {
		clock = "15:04:05"
	}
	var yTicks, xTicks []tick
	for _, v := range []float64{0, 50, 100} {
		yTicks = append(yTicks, tick{At: fmt.Sprintf("%.1f", yOf(v)), Label: fmt.Sprintf("%.0f%%", v)})
	}
	for i, f := range []float64{0, 0.5, 1} {
		t := start.Add(time.Duration(f * float64(span)))
		xTicks = append(xTicks, tick{At: fmt.Sprintf("%.1f", xOf(t)), Label: t.UTC().Format(clock), Anchor: []string{"start", "middle", "end"}[i]})
	}
	for _, m := range metrics {
		ch := chart{Label: m.label, Latest: "—", Since: since, YTicks: yTicks, XTicks: xTicks,
			L: plotL, T: plotT, R: plotL + plotW, B: plotT + plotH}
		var pts, readout []string
		var lo, hi, last float64 = 101, -1, 0
		var firstX, lastX float64
		for _, s := range ss {
			v, ok := m.value(s)
			if !ok || s.At.Before(start) || s.At.After(now) {
				continue
			}
			v = min(max(v, 0), 100)
			x, y := xOf(s.At), yOf(v)
			if len(pts) == 0 {
				firstX = x
			}
			lastX = x
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", x, y))
			readout = append(readout, fmt.Sprintf("%.1f %.1f %s: %.0f%% at %s", x, y, m.label, v, s.At.UTC().Format("15:04:05 UTC")))
			lo, hi, last = min(lo, v), max(hi, v), v
		}
		ch.Samples = len(pts)
		if len(pts) > 0 {
			ch.Points = strings.Join(pts, " ")
			ch.Readout = strings.Join(readout, ";")
			ch.Area = fmt.Sprintf("%.1f,%d %s %.1f,%d", firstX, plotT+plotH, ch.Points, lastX, plotT+plotH)
			ch.Latest = fmt.Sprintf("%.0f%%", last)
			ch.LastX, ch.LastY = fmt.Sprintf("%.1f", lastX), fmt.Sprintf("%.1f", yOf(last))
			ch.Summary = fmt.Sprintf("%s use over the last hour: %d samples, between %.0f%% and %.0f%%, now %.0f%%.",
				m.label, len(pts), lo, hi, last)
			if since != "" {
				ch.Summary = fmt.Sprintf("%s use since %s: %d samples, between %.0f%% and %.0f%%, now %.0f%%.",
					m.label, since, len(pts), lo, hi, last)
			}
		} else {
			ch.Summary = m.label + " use over the last hour: no samples yet."
		}
		out = append(out, ch)
	}
	return out
}

func ratio(used, total int64) (float64, bool) {
	if total <= 0 {
		return 0, false
	}
	return float64(used) * 100 / float64(total), true
}
