package app

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// DefaultEventsRetention is how long the event log keeps an event.
const DefaultEventsRetention = 30 * 24 * time.Hour

// pruneEvents deletes events older than the retention, at start and then
// hourly, until ctx ends. Several control planes on one database may all
// prune: a delete of what is already gone deletes nothing.
func (a *App) pruneEvents(ctx context.Context) {
	keep := a.cfg.EventsRetention
	if keep <= 0 {
		keep = DefaultEventsRetention
	}
	now := time.Now
	if a.cfg.Clock != nil {
		now = a.cfg.Clock
	}
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		n, err := a.Store.Q().PruneEvents(ctx, now().Add(-keep))
		switch {
		case err != nil && ctx.Err() == nil:
			a.log.Warn("prune events", zap.Error(err))
		case n > 0:
			a.log.Info("pruned old events", zap.Int64("events", n), zap.Duration("retention", keep))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
