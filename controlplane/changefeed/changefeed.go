// Package changefeed tells in-process listeners that some kind of state
// changed: the store publishes a topic ("servers", "tasks",
// "deployments") after each committed write to the tables behind it, and
// the console's event stream turns those into server-sent events so pages
// refresh what they show without polling.
//
// A feed keeps the most recent events in a ring, so a listener that
// reconnects with the last id it saw gets what it missed, or learns that
// it missed too much (or that the process restarted) and must reload.
// Events carry only a topic: never a row, an id or a value.
package changefeed

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// DefaultSize is how many events a feed remembers.
const DefaultSize = 4096

// Event is one change.
type Event struct {
	Seq   uint64
	Topic string
}

// Feed is a sequence of change events. The zero value is not usable; use
// New.
type Feed struct {
	epoch string

	mu     sync.Mutex
	seq    uint64
	ring   []Event // ring[(seq-1) % len] is the newest
	wake   chan struct{}
	closed bool
}

// New returns a feed remembering size events (DefaultSize when size <= 0).
func New(size int) *Feed {
	if size <= 0 {
		size = DefaultSize
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return &Feed{epoch: hex.EncodeToString(b), ring: make([]Event, size), wake: make(chan struct{})}
}

// Publish records one event per topic and wakes every waiter. A closed
// feed ignores it.
func (f *Feed) Publish(topics ...string) {
	if f == nil || len(topics) == 0 {
		return
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	for _, t := range topics {
		f.seq++
		f.ring[(f.seq-1)%uint64(len(f.ring))] = Event{Seq: f.seq, Topic: t}
	}
	ch := f.wake
	f.wake = make(chan struct{})
	f.mu.Unlock()
	close(ch)
}

// Close wakes every waiter for the last time; Since then reports closed.
func (f *Feed) Close() {
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.closed {
		f.closed = true
		close(f.wake)
	}
}

// Cursor is a position in the feed: the last event a listener saw.
type Cursor struct {
	epoch string
	seq   uint64
}

// ID is the cursor as an opaque event id ("<epoch>-<seq>").
func (c Cursor) ID() string { return c.epoch + "-" + strconv.FormatUint(c.seq, 10) }

// EventID is e's id, what a listener resumes from after seeing it.
func (f *Feed) EventID(e Event) string { return Cursor{epoch: f.epoch, seq: e.Seq}.ID() }

// Now is the cursor at the newest event: a new listener starts here.
func (f *Feed) Now() Cursor {
	f.mu.Lock()
	defer f.mu.Unlock()
	return Cursor{epoch: f.epoch, seq: f.seq}
}

// Resume turns an id from Cursor.ID back into a cursor. ok is false when
// the id is malformed, from another process (a restart) or too old for
// the ring: the listener missed events and must reload what it shows.
func (f *Feed) Resume(id string) (c Cursor, ok bool) {
	epoch, n, found := strings.Cut(id, "-")
	seq, err := strconv.ParseUint(n, 10, 64)
	f.mu.Lock()
	defer f.mu.Unlock()
	if !found || err != nil || epoch != f.epoch || seq > f.seq || f.seq-seq > uint64(len(f.ring)) {
		return Cursor{epoch: f.epoch, seq: f.seq}, false
	}
	return Cursor{epoch: f.epoch, seq: seq}, true
}

// ErrClosed is Since's error once the feed is closed.
var ErrClosed = fmt.Errorf("changefeed: closed")

// Since returns the events after c (oldest first), the cursor after them,
// and a channel closed at the next Publish. Take the channel and the
// events together, as here, so no event falls between them. ok is false
// when c fell out of the ring (the listener must reload); then next is
// the newest position.
func (f *Feed) Since(c Cursor) (evs []Event, next Cursor, ok bool, wake <-chan struct{}, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, c, true, nil, ErrClosed
	}
	next = Cursor{epoch: f.epoch, seq: f.seq}
	if c.epoch != f.epoch || c.seq > f.seq || f.seq-c.seq > uint64(len(f.ring)) {
		return nil, next, false, f.wake, nil
	}
	for s := c.seq + 1; s <= f.seq; s++ {
		evs = append(evs, f.ring[(s-1)%uint64(len(f.ring))])
	}
	return evs, next, true, f.wake, nil
}
