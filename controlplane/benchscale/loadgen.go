package benchscale

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/agent/config"
	"github.com/devpilot/devpilot/agent/sdnotify"
	"github.com/devpilot/devpilot/agent/session"
	"github.com/devpilot/devpilot/shared/protocol"
)

// LoadConfig is one load-generator process: agents From..To-1 of the
// seeded servers, dialing URL from source address SourceIP.
type LoadConfig struct {
	URL       string // the control plane's agent URL
	CAPin     string
	CACertPEM string
	From, To  int
	SourceIP  string // e.g. 127.0.0.2; "" lets the kernel choose
	// Ramp spreads the first dials over this long (a fleet comes up over
	// time; the storm afterwards is the agents' own backoff).
	Ramp time.Duration
}

// Event lines a load generator writes (one per line, space separated):
//
//	up   <agent index> <unix nanos>             a session was welcomed
//	task <task id> <agent index> <unix nanos>   a task message arrived (each delivery)
const (
	eventUp   = "up"
	eventTask = "task"
	eventFail = "fail"
)

// RunLoad runs the agents until ctx ends, writing events to out.
func RunLoad(ctx context.Context, c LoadConfig, out io.Writer) error {
	w := &eventWriter{w: bufio.NewWriterSize(out, 64<<10)}
	go w.flushEvery(ctx, 100*time.Millisecond)
	defer w.flush()
	var dial func(ctx context.Context, network, addr string) (net.Conn, error)
	if c.SourceIP != "" {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(c.SourceIP)}, Timeout: 20 * time.Second}
		dial = d.DialContext
	}
	var wg sync.WaitGroup
	n := c.To - c.From
	for i := c.From; i < c.To; i++ {
		i := i
		cl, err := session.New(session.Options{
			Config:   config.Config{URL: c.URL, CAPin: c.CAPin, CACertPEM: c.CACertPEM, ServerID: ServerID(i)},
			Key:      Key(i),
			Health:   benchHealth{},
			Log:      zap.NewNop(),
			Notifier: &sdnotify.Notifier{Send: func(s string) error { w.up(s, i); return nil }},
			Progress: sdnotify.NewProgress(nil),
			Tasks:    &benchTasks{w: w, idx: i, queue: make(chan protocol.Task, 4)},
			// The agent's own defaults otherwise: backoff 1 s doubling
			// to 60 s with full jitter, reset after a 30 s session.
			NetDialContext: dial,
		})
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if c.Ramp > 0 && n > 1 {
				t := time.NewTimer(time.Duration(int64(c.Ramp) * int64(i-c.From) / int64(n)))
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				}
			}
			_ = cl.Run(ctx)
		}()
	}
	wg.Wait()
	return nil
}

// benchHealth is a fixed, realistic health snapshot (two disks).
type benchHealth struct{}

func (benchHealth) Collect() (protocol.Health, error) {
	return protocol.Health{UptimeS: 86400, Load1: 0.25, Load5: 0.2, Load15: 0.15, CPUPercent: 3.5,
		MemTotalMB: 1024, MemUsedMB: 311, AgentVersion: "bench",
		Disks: []protocol.Disk{{Mount: "/", TotalMB: 25600, UsedMB: 4100}, {Mount: "/boot", TotalMB: 512, UsedMB: 90}}}, nil
}

func (benchHealth) Facts() protocol.Facts {
	return protocol.Facts{Hostname: "bench", OS: "linux", Arch: "amd64", Distro: "Debian GNU/Linux 12 (bookworm)",
		Kernel: "6.1.0", CPUs: 1, MemoryMB: 1024, Systemd: true}
}

// benchTasks answers each task with one line of output and success,
// the way agent/tasks does on the wire (log chunk, then a final result),
// without running anything. A task delivered again (resent by the
// control plane) is reported again and answered with its result only.
type benchTasks struct {
	w     *eventWriter
	idx   int
	queue chan protocol.Task
	mu    sync.Mutex
	done  map[string]bool
}

func (b *benchTasks) HandleMessage(env protocol.Envelope) {
	if env.Type != protocol.TypeTask {
		return // task_ack, cancel
	}
	var t protocol.Task
	if protocol.DecodeData(env, &t) != nil {
		return
	}
	b.w.task(t.ID, b.idx)
	select {
	case b.queue <- t:
	default: // the session is behind; the control plane resends
	}
}

func (b *benchTasks) Serve(ctx context.Context, send func(typ string, v any) error) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case t := <-b.queue:
			b.mu.Lock()
			again := b.done[t.ID]
			if b.done == nil {
				b.done = map[string]bool{}
			}
			b.done[t.ID] = true
			b.mu.Unlock()
			started := time.Now().UTC()
			if !again {
				if err := send(protocol.TypeTaskLog, protocol.TaskLog{TaskID: t.ID, Seq: 1, Stream: "stdout",
					Data: []byte("ok\n")}); err != nil {
					return err
				}
			}
			zero := 0
			fin := time.Now().UTC()
			if err := send(protocol.TypeTaskResult, protocol.TaskResult{TaskID: t.ID, State: protocol.TaskSucceeded,
				ExitCode: &zero, StartedAt: started, FinishedAt: &fin, LastLogSeq: 1}); err != nil {
				return err
			}
		}
	}
}

type eventWriter struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (e *eventWriter) up(status string, idx int) {
	if kind := failureKind(status); kind != "" {
		e.mu.Lock()
		fmt.Fprintf(e.w, "%s %s %d\n", eventFail, kind, idx)
		e.mu.Unlock()
		return
	}
	if !strings.HasPrefix(status, "STATUS=connected to ") {
		return
	}
	e.mu.Lock()
	fmt.Fprintf(e.w, "%s %d %d\n", eventUp, idx, time.Now().UnixNano())
	e.mu.Unlock()
}

// failureKind sorts a failed attempt by what the agent saw, from the
// status line it writes then ("cannot reach …: <error>; retrying in …"):
// busy (refused with a hint), timeout (TCP, TLS or the hello took longer
// than the agent waits), refused (no listener: the control plane is
// down), reset (closed mid-handshake), other. "" is no failure.
func failureKind(status string) string {
	if !strings.HasPrefix(status, "STATUS=cannot reach ") && !strings.HasPrefix(status, "STATUS=disconnected from ") {
		return ""
	}
	switch s := strings.ToLower(status); {
	case strings.Contains(s, "at capacity") || strings.Contains(s, "busy"):
		return "busy"
	case strings.Contains(s, "timeout") || strings.Contains(s, "deadline exceeded"):
		return "timeout"
	case strings.Contains(s, "connection refused"):
		return "refused"
	case strings.Contains(s, "reset by peer") || strings.Contains(s, "eof") || strings.Contains(s, "broken pipe"):
		return "reset"
	default:
		return "other"
	}
}

func (e *eventWriter) task(id string, idx int) {
	e.mu.Lock()
	fmt.Fprintf(e.w, "%s %s %d %d\n", eventTask, id, idx, time.Now().UnixNano())
	e.mu.Unlock()
}

func (e *eventWriter) flush() {
	e.mu.Lock()
	_ = e.w.Flush()
	e.mu.Unlock()
}

func (e *eventWriter) flushEvery(ctx context.Context, d time.Duration) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			e.flush()
		}
	}
}
