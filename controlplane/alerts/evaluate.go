package alerts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/events"
	"github.com/devpilot/devpilot/controlplane/store"
)

// Options configure a Service.
type Options struct {
	Store    *store.Store
	Interval time.Duration // between evaluations; default 15 s
	// StaleAfter: a health sample older than this says nothing about now
	// (the agent is silent: the offline rule speaks then); default 2 min.
	StaleAfter time.Duration
	Logger     *zap.Logger
	Now        func() time.Time
	Registerer prometheus.Registerer // devpilot_alerts_firing; nil: none
}

// Service keeps alert rules and runs the evaluator.
type Service struct {
	o      Options
	log    *zap.Logger
	firing *prometheus.GaugeVec

	kick   chan struct{}
	runMu  sync.Mutex         // guards cancel: a Start after a Close replaces it
	cancel context.CancelFunc // ends the evaluations of the current Start
	wg     sync.WaitGroup
	mu     sync.Mutex
	shown  map[string]bool // rule ids the gauge has a series for
}

// New returns a Service; Start runs its evaluator.
func New(o Options) *Service {
	if o.Interval <= 0 {
		o.Interval = 15 * time.Second
	}
	if o.StaleAfter <= 0 {
		o.StaleAfter = 2 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Service{o: o, log: o.Logger.Named("alerts"), kick: make(chan struct{}, 1), shown: map[string]bool{},
		firing: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "devpilot_alerts_firing",
			Help: "Servers on which an alert rule fires now, by rule id."}, []string{"rule"})}
	if o.Registerer != nil {
		o.Registerer.MustRegister(s.firing)
	}
	return s
}

// Start evaluates every interval (and soon after a rule changes) until Close.
func (s *Service) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	s.runMu.Lock()
	s.cancel = cancel
	s.runMu.Unlock()
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(s.o.Interval)
		defer t.Stop()
		for {
			if err := s.Evaluate(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("alert evaluation failed", zap.Error(err))
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-s.kick:
			}
		}
	}()
}

// Close stops the evaluator and waits for it.
func (s *Service) Close() {
	s.runMu.Lock()
	if s.cancel != nil {
		s.cancel()
	}
	s.runMu.Unlock()
	s.wg.Wait()
}

// Kick asks for an evaluation soon.
func (s *Service) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// watched are the server states rules look at; the others (provisioning,
// failed, deleting…) are no alert's business.
var watched = []string{"online", "offline", "agent_offline", "stopped", "lost", "unknown"}

// offline are the states an offline rule counts as offline: the agent is
// silent (after missed heartbeats) or the instance is gone. stopped is
// what the operator asked for; unknown is the cloud's trouble, not the
// server's.
var offline = []string{"offline", "agent_offline", "lost"}

// condition is what one evaluation saw of a rule on a server.
type condition struct {
	holds bool
	since time.Time // when it started to hold, as far as the data shows
	value float64   // percent, or seconds offline
}

// Evaluate runs one pass over every rule of every workspace.
func (s *Service) Evaluate(ctx context.Context) error {
	q := s.o.Store.Q()
	rules, err := q.AlertRulesPage(ctx, "", "", nil, -1)
	if err != nil {
		return err
	}
	if len(rules) == 0 {
		// Nothing to evaluate (a state whose rule is gone is skipped
		// below anyway): not a read of every server each pass.
		s.refreshGauge(ctx)
		return nil
	}
	servers, err := q.ServersInStates(ctx, watched...)
	if err != nil {
		return err
	}
	states, err := q.AlertStates(ctx, "", "", -1)
	if err != nil {
		return err
	}
	type key struct{ rule, server string }
	known := map[key]store.AlertState{}
	for _, st := range states {
		known[key{st.RuleID, st.ServerID}] = st
	}
	slugs := map[string]string{}
	now := s.o.Now().UTC()
	var errs []error
	for _, r := range rules {
		for _, srv := range servers {
			if srv.WorkspaceID != r.WorkspaceID {
				continue
			}
			if r.Tag != "" {
				slug, ok := slugs[srv.WorkspaceID]
				if !ok {
					ws, err := q.WorkspaceByID(ctx, srv.WorkspaceID)
					if err != nil {
						return err
					}
					slug, slugs[srv.WorkspaceID] = ws.Slug, ws.Slug
				}
				if !slices.Contains(serverTags(slug, srv.ID), r.Tag) {
					continue
				}
			}
			k := key{r.ID, srv.ID}
			st, had := known[k]
			delete(known, k)
			c, err := s.condition(ctx, q, r, srv, now)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if had {
				c = c.continuing(r, st, now)
			}
			if !needsChange(r, st, had, c, now) {
				continue
			}
			if err := s.transition(ctx, r, srv.ID, c, now); err != nil {
				errs = append(errs, fmt.Errorf("rule %s on %s: %w", r.ID, srv.ID, err))
			}
		}
	}
	// States whose server left the watched states (deleted, failed…) or
	// no longer carries the rule's tag: the condition no longer holds.
	byID := map[string]store.AlertRule{}
	for _, r := range rules {
		byID[r.ID] = r
	}
	for k, st := range known {
		r, ok := byID[k.rule]
		if !ok || st.State == StateResolved {
			continue
		}
		if err := s.transition(ctx, r, k.server, condition{}, now); err != nil {
			errs = append(errs, err)
		}
	}
	s.refreshGauge(ctx)
	return errors.Join(errs...)
}

// serverTags are the tags a server carries (provision.TagAll,
// TagWorkspace, TagServer), as deployments select them.
func serverTags(slug, id string) []string {
	return []string{"devpilot", "devpilot-ws-" + slug, "devpilot-srv-" + id}
}

func (s *Service) condition(ctx context.Context, q *store.Queries, r store.AlertRule, srv store.Server, now time.Time) (condition, error) {
	d := time.Duration(r.ForS) * time.Second
	if r.Kind == KindOffline {
		if !slices.Contains(offline, srv.State) {
			return condition{}, nil
		}
		// Offline since it last changed state (or was last seen, if
		// later); a pending or firing row keeps the earlier start.
		since := srv.UpdatedAt
		if srv.LastSeenAt != nil && srv.LastSeenAt.After(since) {
			since = *srv.LastSeenAt
		}
		return condition{holds: true, since: since.UTC(), value: now.Sub(since).Seconds()}, nil
	}
	// Every sample from since to the latest at or above the threshold, and
	// the latest one fresh: samples arrive every hub flush, so a single
	// high one (or a single missed heartbeat) is never "for D".
	points, err := q.HealthSince(ctx, srv.ID, now.Add(-d-max(d, s.o.StaleAfter)))
	if err != nil {
		return condition{}, err
	}
	if len(points) == 0 || now.Sub(points[len(points)-1].At) > s.o.StaleAfter {
		return condition{}, nil
	}
	c := condition{}
	for i := len(points) - 1; i >= 0; i-- {
		v, ok := percent(r.Kind, points[i])
		if !ok || v < r.ThresholdPercent {
			break
		}
		if i == len(points)-1 {
			c.value = v
		}
		c.holds, c.since = true, points[i].At.UTC()
	}
	return c, nil
}

func percent(kind string, p store.HealthPoint) (float64, bool) {
	switch kind {
	case KindCPU:
		return p.CPUPercent, true
	case KindMemory:
		if p.MemTotalMB > 0 {
			return 100 * float64(p.MemUsedMB) / float64(p.MemTotalMB), true
		}
	case KindDisk:
		if p.DiskTotalMB > 0 {
			return 100 * float64(p.DiskUsedMB) / float64(p.DiskTotalMB), true
		}
	}
	return 0, false
}

// continuing keeps the start of an offline spell the state row already
// holds: the server row's times move for other reasons while it is offline.
func (c condition) continuing(r store.AlertRule, st store.AlertState, now time.Time) condition {
	if r.Kind == KindOffline && c.holds && (st.State == StatePending || st.State == StateFiring) && st.Since.Before(c.since) {
		c.since, c.value = st.Since, now.Sub(st.Since).Seconds()
	}
	return c
}

// target is the state a rule on a server should be in, given what was seen.
func target(r store.AlertRule, c condition, now time.Time) string {
	switch {
	case !c.holds:
		return ""
	case now.Sub(c.since) >= time.Duration(r.ForS)*time.Second:
		return StateFiring
	}
	return StatePending
}

// needsChange is the cheap check before a transaction: would the state row
// change?
func needsChange(r store.AlertRule, st store.AlertState, had bool, c condition, now time.Time) bool {
	cur := ""
	if had && st.State != StateResolved {
		cur = st.State
	}
	return target(r, c, now) != cur
}

// Event names used by the transitions.
const (
	eventFiring   = events.AlertFiring
	eventResolved = events.AlertResolved
)

// transition moves a rule's state on a server to what c says, re-reading
// the row inside the transaction: whichever control plane gets there
// first makes the change and appends its event; the others find nothing
// left to do.
func (s *Service) transition(ctx context.Context, r store.AlertRule, serverID string, c condition, now time.Time) error {
	var fired, resolved bool
	err := s.o.Store.InTx(ctx, func(q *store.Queries) error {
		st, err := q.AlertState(ctx, r.ID, serverID)
		had := err == nil
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if had && st.State == StateResolved {
			had = false
		}
		if had {
			c = c.continuing(r, st, now)
		}
		want := target(r, c, now)
		switch {
		case want == StatePending && (!had || st.State != StatePending):
			return q.PutAlertState(ctx, store.AlertState{RuleID: r.ID, ServerID: serverID, WorkspaceID: r.WorkspaceID,
				State: StatePending, Since: c.since, Value: c.value, UpdatedAt: now})
		case want == StateFiring && (!had || st.State != StateFiring):
			fired = true
			t := now
			if err := q.PutAlertState(ctx, store.AlertState{RuleID: r.ID, ServerID: serverID, WorkspaceID: r.WorkspaceID,
				State: StateFiring, Since: c.since, Value: c.value, FiredAt: &t, UpdatedAt: now}); err != nil {
				return err
			}
			return appendEvent(ctx, q, r, serverID, eventFiring, c.value, c.since, now, "")
		case want == "" && had && st.State == StatePending:
			return q.DeleteAlertState(ctx, r.ID, serverID) // never fired: nothing to say
		case want == "" && had && st.State == StateFiring:
			resolved = true
			t := now
			st.State, st.ResolvedAt, st.UpdatedAt = StateResolved, &t, now
			if c.value != 0 {
				st.Value = c.value
			}
			if err := q.PutAlertState(ctx, st); err != nil {
				return err
			}
			return appendEvent(ctx, q, r, serverID, eventResolved, st.Value, st.Since, now, "")
		}
		return nil
	})
	if err != nil {
		return err
	}
	switch {
	case fired:
		s.log.Info("alert firing", zap.String("rule", r.ID), zap.String("name", r.Name), zap.String("server", serverID),
			zap.Float64("value", c.value))
	case resolved:
		s.log.Info("alert resolved", zap.String("rule", r.ID), zap.String("name", r.Name), zap.String("server", serverID))
	}
	return nil
}

// eventData is the payload of alert.firing and alert.resolved.
type eventData struct {
	Rule       string    `json:"rule"` // rule id
	RuleName   string    `json:"rule_name"`
	Kind       string    `json:"kind"`
	Threshold  *float64  `json:"threshold_percent,omitempty"`
	ForS       int       `json:"for_s"`
	Server     string    `json:"server"`
	Value      float64   `json:"value"`
	Since      time.Time `json:"since"`
	ResolvedAt string    `json:"resolved_at,omitempty"`
	Reason     string    `json:"reason,omitempty"`
}

func appendEvent(ctx context.Context, q *store.Queries, r store.AlertRule, serverID, typ string, value float64, since, now time.Time, reason string) error {
	d := eventData{Rule: r.ID, RuleName: r.Name, Kind: r.Kind, ForS: r.ForS, Server: serverID, Value: value, Since: since.UTC(), Reason: reason}
	if r.Kind != KindOffline {
		t := r.ThresholdPercent
		d.Threshold = &t
	}
	if typ == eventResolved {
		d.ResolvedAt = now.UTC().Format(time.RFC3339Nano)
	}
	_, err := q.AppendEvent(ctx, r.WorkspaceID, typ, serverID, d)
	return err
}

func audit(ctx context.Context, q *store.Queries, actor, ws, action, target string, detail any, at time.Time) error {
	b, err := json.Marshal(detail)
	if err != nil {
		return err
	}
	return q.AddAudit(ctx, store.AuditEntry{WorkspaceID: ws, Actor: actor, Action: action, Target: target, DetailJSON: string(b), At: at})
}

// refreshGauge sets devpilot_alerts_firing from the database (the truth
// every control plane shares): a series for every rule, 0 while it fires
// nowhere, so `devpilot_alerts_firing > 0` can alert and a rule that
// stops firing reads 0 rather than vanishing. A deleted rule's series
// goes.
func (s *Service) refreshGauge(ctx context.Context) {
	rules, err := s.o.Store.Q().AlertRulesPage(ctx, "", "", nil, -1)
	if err != nil {
		return
	}
	states, err := s.o.Store.Q().AlertStates(ctx, "", StateFiring, -1)
	if err != nil {
		return
	}
	counts := map[string]int{}
	for _, r := range rules {
		counts[r.ID] = 0
	}
	for _, st := range states {
		if _, ok := counts[st.RuleID]; ok {
			counts[st.RuleID]++
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range s.shown {
		if _, ok := counts[id]; !ok {
			s.firing.DeleteLabelValues(id)
			delete(s.shown, id)
		}
	}
	for id, n := range counts {
		s.firing.WithLabelValues(id).Set(float64(n))
		s.shown[id] = true
	}
}
