package tasks_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/devpilot/devpilot/shared/protocol"
)

// BenchmarkFirstOutput measures, with N agents connected (DEVPILOT_BENCH_AGENTS,
// default 1000), the time from a client sending POST …/servers/{id}/tasks
// to the task's first output chunk being stored by the control plane (the
// chunk's stored timestamp minus the time the request was sent). The fake
// agents answer a task at once with one chunk and a result. Reported:
// p50/p99/max in ms. Sequential requests, then 8 concurrent clients.
//
//	go test -run '^$' -bench FirstOutput -benchtime 2000x ./controlplane/tasks/
func BenchmarkFirstOutput(b *testing.B) {
	n := 1000
	if v, err := strconv.Atoi(os.Getenv("DEVPILOT_BENCH_AGENTS")); err == nil && v > 0 {
		n = v
	}
	c := startCP(b)
	agents := make([]*fakeAgent, n)
	for i := range agents {
		a := c.server(fmt.Sprintf("bench-%d", i))
		a.onTask = func(a *fakeAgent, t protocol.Task) {
			a.send(protocol.TypeTaskLog, protocol.TaskLog{TaskID: t.ID, Seq: 1, Stream: protocol.StreamStdout, Data: []byte("ok\n")})
			now := time.Now()
			a.send(protocol.TypeTaskResult, protocol.TaskResult{TaskID: t.ID, State: protocol.TaskSucceeded, ExitCode: intp(0),
				StartedAt: now, FinishedAt: &now, LastLogSeq: 1})
		}
		agents[i] = a
	}
	start := time.Now()
	for _, a := range agents {
		if err := a.dial(); err != nil {
			b.Fatalf("agent %s: %v", a.id, err)
		}
	}
	b.Cleanup(func() {
		for _, a := range agents {
			a.disconnect()
		}
	})
	b.Logf("%d agents connected in %v", n, time.Since(start).Round(time.Millisecond))

	one := func(a *fakeAgent) time.Duration {
		t0 := time.Now()
		v := c.createTask(a.id, exec("true"))
		ctx := context.Background()
		for {
			ch := c.app.Tasks.Changed(v.ID)
			ls, err := c.app.Store.Q().TaskLogs(ctx, v.ID, 0, 1, 1)
			if err != nil {
				b.Fatal(err)
			}
			if len(ls) > 0 {
				return ls[0].At.Sub(t0)
			}
			select {
			case <-ch:
			case <-time.After(10 * time.Second):
				b.Fatalf("no output for task %s", v.ID)
			}
		}
	}
	report := func(b *testing.B, lat []time.Duration) {
		slices.Sort(lat)
		q := func(p float64) float64 {
			return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
		}
		b.ReportMetric(q(0.50), "p50-ms")
		b.ReportMetric(q(0.99), "p99-ms")
		b.ReportMetric(float64(lat[len(lat)-1].Microseconds())/1000, "max-ms")
		b.ReportMetric(float64(n), "agents")
	}

	b.Run("sequential", func(b *testing.B) {
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := range b.N {
			lat = append(lat, one(agents[(i*7919)%n]))
		}
		b.StopTimer()
		report(b, lat)
	})
	b.Run("8-clients", func(b *testing.B) {
		var mu sync.Mutex
		lat := make([]time.Duration, 0, b.N)
		next := 0
		var wg sync.WaitGroup
		b.ResetTimer()
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					mu.Lock()
					if next >= b.N {
						mu.Unlock()
						return
					}
					i := next
					next++
					mu.Unlock()
					d := one(agents[(i*7919+w)%n])
					mu.Lock()
					lat = append(lat, d)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		b.StopTimer()
		report(b, lat)
	})
}
