package integrations

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/events"
	"github.com/devpilot/devpilot/controlplane/store"
)

// Background health checks: every integration is re-validated (the same
// read-only call and write-scope probe as when it was saved) every
// CheckInterval, jittered ±10 % so a fleet's checks spread out, and at once
// (rate-limited per integration) after a provider call with it answered
// 401/403. A control plane claims a due check through the database
// (store.ClaimIntegrationCheck) so several never check the same one.
// Only a verdict on the credential changes its status; a 429, a 5xx or a
// network failure leaves it as it was.

// Check outcomes, the outcome label of devpilot_integration_checks_total.
const (
	OutcomeValid        = "valid"
	OutcomeInvalid      = "invalid"
	OutcomeInconclusive = "inconclusive" // the provider could not answer: no verdict
	OutcomeError        = "error"        // Devpilot's own failure (store, decrypt)
)

// Defaults of the background checks.
const (
	DefaultCheckInterval = 6 * time.Hour
	DefaultRecheckEvery  = time.Minute // at most one refusal-triggered check per integration per minute
)

// ActorHealthCheck is who the audit log says re-validated in the background.
const ActorHealthCheck Actor = "system (health check)"

type checkMetrics struct{ total *prometheus.CounterVec }

func newCheckMetrics(r prometheus.Registerer) *checkMetrics {
	m := &checkMetrics{total: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devpilot_integration_checks_total",
		Help: "Background re-validations of integrations, by outcome (valid, invalid, inconclusive, error)."}, []string{"outcome"})}
	for _, o := range []string{OutcomeValid, OutcomeInvalid, OutcomeInconclusive, OutcomeError} {
		m.total.WithLabelValues(o)
	}
	if r != nil {
		r.MustRegister(m.total)
	}
	return m
}

// jitter spreads d by ±10 %.
func jitter(d time.Duration) time.Duration {
	return d - d/10 + time.Duration(rand.Int64N(int64(d/5)+1))
}

func (s *Service) nextCheck(now time.Time) time.Time { return now.Add(jitter(s.checkEvery)) }

// StartChecks runs the background checks until CloseChecks.
func (s *Service) StartChecks() {
	ctx, cancel := context.WithCancel(context.Background())
	s.stopChecks = cancel
	s.checksDone = make(chan struct{})
	go func() {
		defer close(s.checksDone)
		t := time.NewTicker(s.checkPoll)
		defer t.Stop()
		for {
			s.CheckDue(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case ref := <-s.refused:
				s.checkNow(ctx, ref)
			}
		}
	}()
}

// CloseChecks stops the background checks and waits for the one running.
func (s *Service) CloseChecks() {
	if s.stopChecks != nil {
		s.stopChecks()
		<-s.checksDone
	}
}

// CheckDue re-validates the integrations whose check is due and that this
// control plane claims; it returns how many it checked.
func (s *Service) CheckDue(ctx context.Context) int {
	now := s.now().UTC()
	due, err := s.store.Q().DueIntegrations(ctx, now, 50)
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("list due integration checks", zap.Error(err))
		}
		return 0
	}
	n := 0
	for _, in := range due {
		if ctx.Err() != nil {
			break
		}
		ok, err := s.store.Q().ClaimIntegrationCheck(ctx, in.ID, now, now.Add(s.timeout+time.Minute), false)
		if err != nil || !ok {
			continue // another control plane has it
		}
		s.check(ctx, in.WorkspaceID, in.ID)
		n++
	}
	return n
}

type refusal struct{ workspaceID, id string }

// refusedBy is the hook a stored integration's client calls when the
// provider answers 401/403: a check soon, at most once per RecheckEvery.
func (s *Service) refusedBy(workspaceID, id string) func(int) {
	return func(int) {
		s.mu.Lock()
		last, ok := s.lastRefusal[id]
		now := s.now()
		if ok && now.Sub(last) < s.recheckEvery {
			s.mu.Unlock()
			return
		}
		s.lastRefusal[id] = now
		s.mu.Unlock()
		select {
		case s.refused <- refusal{workspaceID, id}:
		default: // a check is queued already; the periodic pass covers the rest
		}
	}
}

func (s *Service) checkNow(ctx context.Context, r refusal) {
	now := s.now().UTC()
	if ok, err := s.store.Q().ClaimIntegrationCheck(ctx, r.id, now, now.Add(s.timeout+time.Minute), true); err != nil || !ok {
		return
	}
	s.log.Info("provider refused an integration's credential: re-validating", zap.String("integration", r.id))
	s.check(ctx, r.workspaceID, r.id)
}

// check re-validates one claimed integration and schedules its next check.
func (s *Service) check(ctx context.Context, workspaceID, id string) {
	_, outcome, err := s.revalidate(ctx, ActorHealthCheck, workspaceID, id)
	if errors.Is(err, errNoIntegration) {
		return // removed meanwhile
	}
	if outcome == OutcomeError && ctx.Err() == nil {
		s.log.Warn("integration check failed", zap.String("integration", id), zap.Error(err))
	}
	s.checks.total.WithLabelValues(outcome).Inc()
	now := s.now().UTC()
	next := s.nextCheck(now)
	if outcome == OutcomeInconclusive || outcome == OutcomeError {
		// No verdict: try again well before the next full interval.
		next = now.Add(min(jitter(s.checkEvery), jitter(5*time.Minute)))
	}
	if err := s.store.Q().ScheduleIntegrationCheck(context.WithoutCancel(ctx), id, next); err != nil {
		s.log.Warn("schedule integration check", zap.String("integration", id), zap.Error(err))
	}
}

var errNoIntegration = errors.New("integration gone")

// statusEvent appends integration.invalid or integration.valid when a
// check moved the status, in the transaction that records it.
func statusEvent(ctx context.Context, q *store.Queries, before string, in store.Integration, info *ErrorInfo) error {
	if before == in.Status {
		return nil
	}
	data := map[string]string{"provider": in.Provider, "access_key": in.AccessKey, "status": in.Status}
	typ := events.IntegrationValid
	if in.Status == StatusInvalid {
		typ = events.IntegrationInvalid
		if info != nil {
			data["code"], data["message"], data["hint"] = info.Code, info.Message, info.Hint
		}
	}
	_, err := q.AppendEvent(ctx, in.WorkspaceID, typ, in.ID, data)
	return err
}
