package cloud

import (
	"context"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"
)

// ActionPoller waits for started cloud actions. A control plane shares one
// among all its jobs: waiters on the same action (same integration and
// ActionRef) share one request per interval, and each request goes through
// the provider's transport, whose limiter keeps the account inside the
// cloud's rate limits (DigitalOcean: GET /v2/actions/{id}).
type ActionPoller struct {
	interval time.Duration
	group    singleflight.Group

	mu    sync.Mutex
	cache map[string]polled
}

type polled struct {
	at time.Time
	st ActionStatus
}

// NewActionPoller polls each action at most once per interval (0: 2 s).
func NewActionPoller(interval time.Duration) *ActionPoller {
	if interval <= 0 {
		interval = 2 * time.Second
	}
	return &ActionPoller{interval: interval, cache: map[string]polled{}}
}

// Wait returns once the action ended (completed or errored) or ctx ends.
// key names the account (an integration id). Errors from the provider are
// returned as they are; the transport already retried what can be retried.
func (p *ActionPoller) Wait(ctx context.Context, lc Lifecycle, key string, ref ActionRef) (ActionStatus, error) {
	k := key + "\x00" + ref.Provider + "\x00" + ref.Type + "\x00" + ref.Instance + "\x00" + ref.ID + "\x00" + ref.Want + "\x00" + ref.WantSize
	for {
		st, err := p.poll(ctx, lc, k, ref)
		if err != nil {
			return ActionStatus{}, err
		}
		if st.Done() {
			p.mu.Lock()
			delete(p.cache, k)
			p.mu.Unlock()
			return st, nil
		}
		t := time.NewTimer(p.interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return ActionStatus{}, ctx.Err()
		case <-t.C:
		}
	}
}

func (p *ActionPoller) poll(ctx context.Context, lc Lifecycle, k string, ref ActionRef) (ActionStatus, error) {
	p.mu.Lock()
	c, ok := p.cache[k]
	p.mu.Unlock()
	if ok && (c.st.Done() || time.Since(c.at) < p.interval) {
		return c.st, nil
	}
	v, err, _ := p.group.Do(k, func() (any, error) {
		st, err := lc.Action(ctx, ref)
		if err != nil {
			return nil, err
		}
		p.mu.Lock()
		p.cache[k] = polled{at: time.Now(), st: st}
		p.mu.Unlock()
		return st, nil
	})
	if err != nil {
		return ActionStatus{}, err
	}
	return v.(ActionStatus), nil
}
