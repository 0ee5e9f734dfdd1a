package tlsauto

import (
	"context"
	"time"
)

// DefaultRenewEvery is how often a serving control plane checks whether its
// auto-mode server certificate is due for renewal (RenewBefore before it
// expires). Daily leaves 29 chances before a due certificate expires.
const DefaultRenewEvery = 24 * time.Hour

// RenewOptions configure Renew. The clock is injectable so tests can move
// time a year forward without sleeping.
type RenewOptions struct {
	Every time.Duration                  // default DefaultRenewEvery
	Now   func() time.Time               // default time.Now
	Tick  <-chan time.Time               // default a ticker of Every; tests send on their own channel
	After func(reissued bool, err error) // called after each check (logging, metrics, tests)
}

// Renew calls Refresh on every tick until ctx ends. The served certificate
// is swapped in place (ServerConfig's GetCertificate reads the current one),
// so new handshakes get the renewed certificate without a restart and
// established connections are untouched. A failed check is reported to
// After and retried at the next tick; the old certificate stays served.
func (b *Bundle) Renew(ctx context.Context, o RenewOptions) {
	if o.Every <= 0 {
		o.Every = DefaultRenewEvery
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	tick := o.Tick
	if tick == nil {
		t := time.NewTicker(o.Every)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick:
			reissued, err := b.Refresh(o.Now())
			if o.After != nil {
				o.After(reissued, err)
			}
		}
	}
}
