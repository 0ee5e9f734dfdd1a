package httpguard

import (
	"container/list"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Throttle defaults: a client address may fail to authenticate 20 times
// in a row, then once every 3 s; the table remembers 10,000 addresses.
const (
	DefaultFailureBurst = 20
	DefaultFailureEvery = 3 * time.Second
	DefaultMaxClients   = 10000
)

// ThrottleOptions configure a Throttle.
type ThrottleOptions struct {
	Burst      int           // failures allowed at once
	Every      time.Duration // one more failure allowed per Every
	MaxClients int           // addresses remembered; the least recently failing are forgotten first
	Now        func() time.Time
}

// Throttle budgets failed authentications (bad bearer tokens on the API,
// which the console's sign-in goes through too) per client address. It is
// consulted only after a token failed: a valid token is never refused, from
// any address, however many failures that address has.
type Throttle struct {
	o ThrottleOptions

	mu      sync.Mutex
	clients map[netip.Prefix]*list.Element // of *client
	lru     *list.List                     // most recent failure first
}

type client struct {
	key netip.Prefix
	lim *rate.Limiter
}

// NewThrottle builds a Throttle.
func NewThrottle(o ThrottleOptions) *Throttle {
	if o.Burst <= 0 {
		o.Burst = DefaultFailureBurst
	}
	if o.Every <= 0 {
		o.Every = DefaultFailureEvery
	}
	if o.MaxClients <= 0 {
		o.MaxClients = DefaultMaxClients
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Throttle{o: o, clients: map[netip.Prefix]*list.Element{}, lru: list.New()}
}

// Fail records a failed authentication from key. It reports whether the
// address is over its budget, and then when it may try again.
func (t *Throttle) Fail(key netip.Prefix) (throttled bool, retryAfter time.Duration) {
	now := t.o.Now()
	t.mu.Lock()
	defer t.mu.Unlock()
	var c *client
	if e, ok := t.clients[key]; ok {
		t.lru.MoveToFront(e)
		c = e.Value.(*client)
	} else {
		if t.lru.Len() >= t.o.MaxClients {
			old := t.lru.Back()
			t.lru.Remove(old)
			delete(t.clients, old.Value.(*client).key)
		}
		c = &client{key: key, lim: rate.NewLimiter(rate.Every(t.o.Every), t.o.Burst)}
		t.clients[key] = t.lru.PushFront(c)
	}
	if c.lim.AllowN(now, 1) {
		return false, 0
	}
	r := c.lim.ReserveN(now, 1)
	d := r.DelayFrom(now)
	r.CancelAt(now)
	return true, d
}

// Clients is how many addresses the table holds.
func (t *Throttle) Clients() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lru.Len()
}
