package hub

import (
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for the admission options.
const (
	// DefaultAdmissionSlots handshakes do their store work at once: enough
	// to keep the store busy (SQLite serialises writes anyway; its pool
	// has 12 connections, PostgreSQL's 16), few enough that handshakes
	// leave connections for the API, health flushes and tasks.
	DefaultAdmissionSlots = 8
	// DefaultAdmissionQueue handshakes may wait for a slot; past that a
	// handshake is refused busy at once.
	DefaultAdmissionQueue = 1024
	// DefaultAdmissionWait is the longest a handshake waits for a slot
	// before it is refused busy (well under the agent's 20 s handshake
	// timeout).
	DefaultAdmissionWait = 3 * time.Second
	// DefaultBusyRetry is the wait a busy refusal suggests to the agent
	// (which adds up to half of it again as jitter).
	DefaultBusyRetry = 5 * time.Second
)

// Why a handshake was refused busy (label values of
// devpilot_hub_busy_refusals_total).
const (
	busyQueueFull  = "queue_full"   // the admission queue was full
	busyWaited     = "wait_expired" // no slot within the admission wait
	busyAtCapacity = "at_capacity"  // the hub holds Options.MaxAgents connections
	busyStoreSlow  = "store_slow"   // a store call ran out of time (registryWait)
)

// admission bounds the handshakes doing store work (slots) and the ones
// waiting for a slot (queue): in a reconnect storm a handshake waits at
// most wait, never behind thousands of others, and the rest are told to
// come back later instead of timing out.
type admission struct {
	slots   chan struct{}
	queue   int64
	wait    time.Duration
	waiting atomic.Int64
	m       *metrics
	now     func() time.Time

	// The admitted handshakes' completion rate (per second), averaged
	// over rateWindow windows, for the retry hint.
	rmu      sync.Mutex
	winStart time.Time
	winDone  int
	rate     float64
}

// rateWindow is how long completions are counted before the rate moves.
const rateWindow = 2 * time.Second

// maxHint caps the retry hint: with the agent's jitter (up to half
// again) a refused agent is back within 30 s.
const maxHint = 20 * time.Second

func newAdmission(slots, queue int, wait time.Duration, m *metrics) *admission {
	return &admission{slots: make(chan struct{}, slots), queue: int64(queue), wait: wait, m: m, now: time.Now}
}

// completed counts one admitted handshake's end for the rate.
func (a *admission) completed() {
	a.rmu.Lock()
	defer a.rmu.Unlock()
	now := a.now()
	if a.winStart.IsZero() {
		a.winStart = now
	}
	a.winDone++
	if el := now.Sub(a.winStart); el >= rateWindow {
		r := float64(a.winDone) / el.Seconds()
		if a.rate == 0 {
			a.rate = r
		} else {
			a.rate = (a.rate + r) / 2
		}
		a.winStart, a.winDone = now, 0
	}
}

// hint is the wait a busy refusal suggests: at least base, and as long
// as the handshakes waiting now take at the recent completion rate, so
// the agents a storm turned away come back about when there is room
// (each adds jitter) instead of retrying into a full queue.
func (a *admission) hint(base time.Duration) time.Duration {
	a.rmu.Lock()
	rate := a.rate
	a.rmu.Unlock()
	waiting := a.waiting.Load() + int64(cap(a.slots))
	if rate <= 0 {
		return base
	}
	d := time.Duration(float64(waiting) / rate * float64(time.Second))
	return min(max(d, base), max(base, maxHint))
}

// acquire takes a slot, waiting at most a.wait; done (nil when refused)
// gives it back. cause says why it was refused. stop ends the wait early
// (the hub closing): refused with cause "".
func (a *admission) acquire(stop <-chan struct{}) (done func(), cause string) {
	start := time.Now()
	select {
	case a.slots <- struct{}{}:
		return a.admitted(start), ""
	default:
	}
	if a.waiting.Add(1) > a.queue {
		a.waiting.Add(-1)
		return nil, busyQueueFull
	}
	a.m.admissionWaiting.Inc()
	defer func() {
		a.waiting.Add(-1)
		a.m.admissionWaiting.Dec()
	}()
	t := time.NewTimer(a.wait)
	defer t.Stop()
	select {
	case a.slots <- struct{}{}:
		return a.admitted(start), ""
	case <-t.C:
		return nil, busyWaited
	case <-stop:
		return nil, ""
	}
}

func (a *admission) admitted(start time.Time) func() {
	a.m.admissionWait.Observe(time.Since(start).Seconds())
	a.m.admissionInFlight.Inc()
	var once sync.Once
	return func() {
		once.Do(func() {
			<-a.slots
			a.m.admissionInFlight.Dec()
			a.completed()
		})
	}
}

// serverLocks serialises registration + Connected and unregistration +
// Disconnected of one server, so the store sees a server's session starts
// and ends in order. One lock per server with a session starting or
// ending: a handshake waiting on the store holds up only its own server's
// other sessions (a fixed set of stripes let one slow handshake hold up
// every server hashed to its stripe).
type serverLocks struct {
	mu sync.Mutex
	m  map[string]*serverLock
}

type serverLock struct {
	mu    sync.Mutex
	users int // holders and waiters; the entry goes when it reaches 0
}

// lock locks serverID's lock and returns its unlock.
func (l *serverLocks) lock(serverID string) (unlock func()) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*serverLock{}
	}
	e := l.m[serverID]
	if e == nil {
		e = &serverLock{}
		l.m[serverID] = e
	}
	e.users++
	l.mu.Unlock()
	e.mu.Lock()
	return func() {
		e.mu.Unlock()
		l.mu.Lock()
		e.users--
		if e.users == 0 {
			delete(l.m, serverID)
		}
		l.mu.Unlock()
	}
}

// held is how many servers have a lock entry (tests: none left behind).
func (l *serverLocks) held() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}
