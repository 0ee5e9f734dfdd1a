// Package backoff computes reconnect delays: exponential with full jitter
// (a uniformly random delay between 0 and min(Cap, Base·2^attempt)), so a
// fleet that lost the control plane at the same moment does not come back
// in lockstep.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Backoff is not safe for concurrent use; each reconnect loop owns one.
type Backoff struct {
	Base time.Duration // first ceiling; default 1s
	Cap  time.Duration // largest ceiling; default 60s
	// Rand returns a float in [0, 1); default math/rand/v2.Float64.
	Rand func() float64

	attempt int
}

// Ceiling is the largest delay the next call to Next may return.
func (b *Backoff) Ceiling() time.Duration {
	base, cp := b.Base, b.Cap
	if base <= 0 {
		base = time.Second
	}
	if cp <= 0 {
		cp = 60 * time.Second
	}
	d := base
	for i := 0; i < b.attempt && d < cp; i++ {
		d *= 2
	}
	return min(d, cp)
}

// Next returns the delay before the next attempt and advances.
func (b *Backoff) Next() time.Duration {
	ceil := b.Ceiling()
	r := b.Rand
	if r == nil {
		r = rand.Float64
	}
	b.attempt++
	return time.Duration(r() * float64(ceil))
}

// Reset starts over after a healthy session.
func (b *Backoff) Reset() { b.attempt = 0 }

// Attempt is how many delays Next has handed out since the last Reset.
func (b *Backoff) Attempt() int { return b.attempt }
