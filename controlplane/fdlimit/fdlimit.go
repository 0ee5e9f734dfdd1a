// Package fdlimit sizes the control plane to its open file limit: it
// raises the soft RLIMIT_NOFILE to the hard limit, says how many agent
// connections fit once files are kept back for everything else (admin
// API, database, logs), and bounds a listener's open connections so the
// agents can never take the last file descriptors.
package fdlimit

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// DefaultReserve files are kept back for the admin API, the console, the
// database, log files and outbound calls to the clouds.
const DefaultReserve = 256

// Slack is how many connections past its agent capacity a bounded
// listener still accepts, so the hub can refuse them busy (with a retry
// hint) instead of closing them unanswered.
const Slack = 128

// Limit is the process's RLIMIT_NOFILE.
type Limit struct {
	Soft, Hard uint64
	Raised     bool // Raise moved Soft up to Hard
}

// Raise sets the soft open file limit to the hard limit (the Go runtime
// does so too at start; this says what came of it) and returns the limit.
// An error (the call filtered, as under a systemd SystemCallFilter that
// denies @resources) leaves the limit as it was and is returned with it.
func Raise() (Limit, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return Limit{}, err
	}
	l := Limit{Soft: rl.Cur, Hard: rl.Max}
	if rl.Cur >= rl.Max {
		return l, nil
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return l, err
	}
	l.Soft, l.Raised = rl.Max, true
	return l, nil
}

// Agents is how many agent connections fit under soft open files with
// reserve kept back (and Slack for busy refusals); at least 1.
func Agents(soft uint64, reserve int) int {
	const most = 1 << 30
	n := int64(min(soft, most)) - int64(reserve) - Slack
	return int(max(n, 1))
}

// Listener bounds ln to n open connections: past n, a connection is
// accepted and closed at once (costing a file descriptor for a moment),
// so the process keeps files for the rest, and the agent backs off and
// redials. onRefuse, if set, is called for each such connection. Accept
// errors for lack of file descriptors are retried after a short pause,
// as net/http does, without ending the accept loop.
func Listener(ln net.Listener, n int, onRefuse func()) net.Listener {
	return &limited{Listener: ln, n: int64(n), onRefuse: onRefuse}
}

type limited struct {
	net.Listener
	n        int64
	open     atomic.Int64
	onRefuse func()
}

// Open is how many of the listener's connections are open.
func Open(ln net.Listener) (int, bool) {
	l, ok := ln.(*limited)
	if !ok {
		return 0, false
	}
	return int(l.open.Load()), true
}

func (l *limited) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return nil, err
		}
		if l.open.Add(1) > l.n {
			l.open.Add(-1)
			_ = c.Close()
			if l.onRefuse != nil {
				l.onRefuse()
			}
			continue
		}
		return &counted{Conn: c, l: l}, nil
	}
}

type counted struct {
	net.Conn
	l    *limited
	once sync.Once
}

func (c *counted) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	return err
}
