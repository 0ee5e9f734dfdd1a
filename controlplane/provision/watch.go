package provision

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/devpilot/devpilot/controlplane/cloud"
)

// watcher shares instance lists between jobs waiting on the same
// integration and tag: within one poll interval, one list call serves
// every waiting server, which keeps a fleet being provisioned far inside
// the providers' rate limits.
type watcher struct {
	interval time.Duration
	now      func() time.Time
	group    singleflight.Group

	mu    sync.Mutex
	cache map[string]cachedList
}

type cachedList struct {
	at    time.Time
	insts []cloud.Instance
}

func newWatcher(interval time.Duration, now func() time.Time) *watcher {
	return &watcher{interval: interval, now: now, cache: map[string]cachedList{}}
}

func (w *watcher) list(ctx context.Context, key string, fetch func(context.Context) ([]cloud.Instance, error)) ([]cloud.Instance, error) {
	w.mu.Lock()
	c, ok := w.cache[key]
	w.mu.Unlock()
	if ok && w.now().Sub(c.at) < w.interval {
		return c.insts, nil
	}
	v, err, _ := w.group.Do(key, func() (any, error) {
		insts, err := fetch(ctx)
		if err != nil {
			return nil, err
		}
		w.mu.Lock()
		w.cache[key] = cachedList{at: w.now(), insts: insts}
		w.mu.Unlock()
		return insts, nil
	})
	if err != nil {
		return nil, err
	}
	return v.([]cloud.Instance), nil
}

func jsonUnmarshal(s string, v any) error { return json.Unmarshal([]byte(s), v) }
