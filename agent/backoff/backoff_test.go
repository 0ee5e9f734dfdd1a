package backoff_test

import (
	"testing"
	"time"

	"github.com/devpilot/devpilot/agent/backoff"
)

func TestCeilingsDoubleUpToCapAndReset(t *testing.T) {
	t.Parallel()
	b := &backoff.Backoff{Base: time.Second, Cap: 60 * time.Second, Rand: func() float64 { return 0.999999 }}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60, 60}
	for i, w := range want {
		w *= time.Second
		if c := b.Ceiling(); c != w {
			t.Fatalf("attempt %d: ceiling %v, want %v", i, c, w)
		}
		d := b.Next()
		if d > w || d < w*99/100 {
			t.Fatalf("attempt %d: delay %v with rand≈1, want just under %v", i, d, w)
		}
	}
	// Many attempts later the doubling must not overflow past the cap.
	for range 200 {
		if d := b.Next(); d > 60*time.Second || d < 0 {
			t.Fatalf("delay %v out of [0, cap]", d)
		}
	}
	b.Reset()
	if c := b.Ceiling(); c != time.Second {
		t.Fatalf("after reset ceiling %v, want base", c)
	}
}

func TestFullJitterBounds(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		r    float64
		want time.Duration
	}{
		{"zero", 0, 0},
		{"half", 0.5, 4 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := &backoff.Backoff{Base: time.Second, Cap: time.Minute, Rand: func() float64 { return tc.r }}
			b.Next()
			b.Next()
			b.Next()
			if d := b.Next(); d != tc.want { // 4th attempt: ceiling 8s
				t.Errorf("delay %v, want %v", d, tc.want)
			}
		})
	}
	// Default source: every delay within [0, ceiling], and not all equal.
	b := &backoff.Backoff{Base: 100 * time.Millisecond, Cap: time.Second}
	seen := map[time.Duration]bool{}
	for range 50 {
		b.Reset()
		for range 3 {
			b.Next()
		}
		c := b.Ceiling()
		d := b.Next()
		if d < 0 || d > c {
			t.Fatalf("delay %v out of [0, %v]", d, c)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Errorf("only %d distinct delays in 50: no jitter?", len(seen))
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	var b backoff.Backoff
	if b.Ceiling() != time.Second {
		t.Errorf("default base %v", b.Ceiling())
	}
	for range 20 {
		b.Next()
	}
	if b.Ceiling() != time.Minute {
		t.Errorf("default cap %v", b.Ceiling())
	}
}
