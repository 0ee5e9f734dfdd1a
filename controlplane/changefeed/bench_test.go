package changefeed_test

import (
	"sync"
	"testing"

	"github.com/devpilot/devpilot/controlplane/changefeed"
)

// BenchmarkFanOut: one change reaching 100 listeners (open console
// pages), each reading it from the feed as the event stream does.
func BenchmarkFanOut(b *testing.B) {
	const listeners = 100
	f := changefeed.New(0)
	var ready, got, done sync.WaitGroup
	stop := make(chan struct{})
	for range listeners {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			c := f.Now()
			first := true
			for {
				evs, next, _, wake, err := f.Since(c)
				if err != nil {
					return
				}
				c = next
				if first {
					first = false
					ready.Done()
				} else if len(evs) > 0 {
					got.Add(-len(evs))
				}
				select {
				case <-wake:
				case <-stop:
					return
				}
			}
		}()
	}
	ready.Wait()
	b.ResetTimer()
	for range b.N {
		got.Add(listeners)
		f.Publish("servers")
		got.Wait()
	}
	b.StopTimer()
	close(stop)
	f.Close()
	done.Wait()
}
