package webhooks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/changefeed"
	"github.com/devpilot/devpilot/controlplane/events"
	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/controlplane/store"
)

type httpDoer interface {
	Do(*http.Request) (*http.Response, error)
}

const (
	fanoutBatch = 500
	claimBatch  = 16
)

// Run fans events out and delivers them until ctx ends. It wakes on this
// process's "events" changes, at most once per Options.MinRound, and
// polls (Options.Poll) for the rest: events other control planes wrote,
// retries coming due.
func (s *Service) Run(ctx context.Context) error {
	feed := s.o.Store.Changes()
	cur := feed.Now()
	tick := time.NewTicker(s.o.Poll)
	defer tick.Stop()
	defer s.wg.Wait()
	spacing := time.NewTimer(0)
	defer spacing.Stop()
	kicked := false
	for {
		// Let the events of a burst collect; a kick (a ping) goes now.
		if !kicked {
			select {
			case <-ctx.Done():
				return nil
			case <-spacing.C:
			case <-s.kick:
			}
		}
		kicked = false
		spacing.Reset(s.o.MinRound)
		if err := s.Step(ctx); err != nil && ctx.Err() == nil {
			s.log.Warn("webhook step failed", zap.Error(err))
		}
	wait:
		for {
			evs, next, ok, wake, err := feed.Since(cur)
			if err != nil { // the store closed
				return nil
			}
			cur = next
			if !ok || slices.ContainsFunc(evs, func(e changefeed.Event) bool { return e.Topic == store.TopicEvents }) {
				break // events were committed meanwhile: go again
			}
			select {
			case <-ctx.Done():
				return nil
			case <-wake: // some change: look at its topic
			case <-tick.C:
				break wait
			case <-s.kick:
				kicked = true
				break wait
			}
		}
	}
}

// Step runs one round: fan out every new event, then make every due
// attempt (sequentially per claim batch, batches until none is due).
func (s *Service) Step(ctx context.Context) error {
	for {
		n, err := s.fanout(ctx)
		if err != nil {
			return fmt.Errorf("fan out: %w", err)
		}
		if n < fanoutBatch {
			break
		}
	}
	for ctx.Err() == nil {
		now := s.o.Now().UTC()
		claimed, err := s.o.Store.Q().ClaimDeliveries(ctx, s.o.Owner, now, now.Add(s.o.Lease), claimBatch)
		if err != nil {
			return err
		}
		if len(claimed) == 0 {
			return nil
		}
		done := make(chan struct{}, len(claimed))
		for _, d := range claimed {
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				defer func() { done <- struct{}{} }()
				if err := s.attempt(ctx, d); err != nil && ctx.Err() == nil {
					s.log.Warn("delivery attempt not recorded", zap.String("delivery", d.ID), zap.Error(err))
				}
			}()
		}
		for range claimed {
			<-done
		}
	}
	return nil
}

// fanout turns events after the cursor into deliveries, in one transaction
// with the cursor's advance; it returns how many events it read.
func (s *Service) fanout(ctx context.Context) (int, error) {
	// Reads first: most rounds find nothing new, and need no write
	// transaction (which PostgreSQL serializes with every other).
	if cur, err := s.o.Store.Q().FanoutCursor(ctx); err != nil {
		return 0, err
	} else if evs, err := s.o.Store.Q().EventsSince(ctx, cur, 1); err != nil || len(evs) == 0 {
		return 0, err
	}
	var n, queued int
	err := s.o.Store.InTx(ctx, func(q *store.Queries) error {
		n, queued = 0, 0
		cur, err := q.FanoutCursor(ctx)
		if err != nil {
			return err
		}
		evs, err := q.EventsSince(ctx, cur, fanoutBatch)
		if err != nil || len(evs) == 0 {
			return err
		}
		n = len(evs)
		hooks, err := q.EnabledWebhooks(ctx)
		if err != nil {
			return err
		}
		now := s.o.Now().UTC()
		for _, e := range evs {
			for _, h := range hooks {
				if h.WorkspaceID != e.Workspace || e.Time.Before(h.CreatedAt) || !subscribed(h, e.Type) {
					continue
				}
				payload, err := json.Marshal(messageOf(e))
				if err != nil {
					return err
				}
				ok, err := q.InsertDelivery(ctx, store.WebhookDelivery{ID: ids.New("dl"), WebhookID: h.ID, WorkspaceID: e.Workspace,
					EventID: e.ID, MessageID: msgID(e.ID), EventType: e.Type, PayloadJSON: string(payload),
					State: store.DeliveryPending, NextAttemptAt: &now, RetryUntil: now.Add(s.o.RetryWindow), CreatedAt: now, UpdatedAt: now})
				if err != nil {
					return err
				}
				if ok {
					queued++
				}
			}
		}
		ok, err := q.AdvanceFanout(ctx, cur, evs[len(evs)-1].ID)
		if err != nil {
			return err
		}
		if !ok {
			return errCursorMoved
		}
		return nil
	})
	if errors.Is(err, errCursorMoved) {
		return 0, nil // another control plane fanned these out
	}
	if queued > 0 {
		s.log.Debug("deliveries queued", zap.Int("events", n), zap.Int("deliveries", queued))
	}
	return n, err
}

var errCursorMoved = errors.New("fan-out cursor moved")

func subscribed(h store.Webhook, typ string) bool {
	var pats []string
	if json.Unmarshal([]byte(h.EventsJSON), &pats) != nil {
		return false
	}
	for _, p := range pats {
		if events.Match(p, typ) {
			return true
		}
	}
	return false
}

// outcome of one attempt.
type outcome struct {
	code    int
	latency time.Duration
	excerpt string
	err     string // "" on success
}

// attempt makes one attempt of a claimed delivery: recorded before (the
// attempt count, under the lease) and after (the outcome, the next try).
func (s *Service) attempt(ctx context.Context, d store.WebhookDelivery) error {
	q := s.o.Store.Q()
	now := s.o.Now().UTC()
	w, err := q.GetWebhook(ctx, "", d.WebhookID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil // deleted with its deliveries
	case err != nil:
		return err
	case !w.Enabled && d.EventID != 0:
		return s.finish(ctx, w, d, store.DeliveryDead, outcome{err: "webhook disabled: " + w.DisabledReason}, now)
	case now.After(d.RetryUntil):
		return s.finish(ctx, w, d, store.DeliveryDead, outcome{err: "no success within the retry window: " + d.Error}, now)
	}
	ok, err := q.StartAttempt(ctx, d.ID, s.o.Owner, d.Attempts, now)
	if err != nil || !ok {
		return err // lease lost: another control plane has it
	}
	d.Attempts++
	res := s.send(ctx, w, d, now)
	if ctx.Err() != nil {
		// Shutting down mid-attempt: record nothing; the lease expires and
		// the attempt is made again (the receiver dedups on webhook-id).
		return nil
	}
	state := store.DeliverySucceeded
	if res.err != "" {
		state = store.DeliveryFailed
	}
	return s.finish(ctx, w, d, state, res, s.o.Now().UTC())
}

// send makes the HTTP request of one attempt.
func (s *Service) send(ctx context.Context, w store.Webhook, d store.WebhookDelivery, now time.Time) outcome {
	secret, err := s.o.Keys.Decrypt(w.SecretCiphertext, w.ID)
	if err != nil {
		return outcome{err: "cannot unseal the webhook's secret (was the master key retired?)"}
	}
	key, err := ParseSecret(secret)
	if err != nil {
		return outcome{err: "the stored secret is malformed"}
	}
	var m Message
	if err := json.Unmarshal([]byte(d.PayloadJSON), &m); err != nil {
		return outcome{err: "stored payload unreadable"}
	}
	b, err := body(w.Format, m)
	if err != nil {
		return outcome{err: "render payload: " + err.Error()}
	}
	ctx, cancel := context.WithTimeout(ctx, AttemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(b))
	if err != nil {
		return outcome{err: "bad url"}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "Devpilot-Webhooks/1")
	req.Header.Set(HeaderID, d.MessageID)
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
	req.Header.Set(HeaderSignature, Sign(key, d.MessageID, now, b))
	start := time.Now()
	resp, err := s.client.Do(req)
	lat := time.Since(start)
	if err != nil {
		return outcome{latency: lat, err: transportError(err)}
	}
	defer func() { _ = resp.Body.Close() }()
	ex, _ := io.ReadAll(io.LimitReader(resp.Body, MaxExcerpt))
	res := outcome{code: resp.StatusCode, latency: lat, excerpt: excerpt(ex)}
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		res.err = fmt.Sprintf("receiver answered %d redirecting to %s; redirects are not followed: set the webhook's url to the final address",
			resp.StatusCode, hostOf(resp.Header.Get("Location")))
	default:
		res.err = fmt.Sprintf("receiver answered %d", resp.StatusCode)
	}
	return res
}

// transportError says why a request failed without repeating its URL
// (whose path may be a Slack-style secret).
func transportError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	switch {
	case errors.Is(err, errRefusedAddr):
		return err.Error()
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Sprintf("no answer within %s", AttemptTimeout)
	}
	return err.Error()
}

func excerpt(b []byte) string {
	if !utf8.Valid(b) {
		return fmt.Sprintf("(%d bytes, not UTF-8)", len(b))
	}
	return string(b)
}

// backoff is the delay before attempt n+1 after n failed attempts:
// uniformly random in [0, min(RetryCap, RetryBase·2^(n-1))] ("full
// jitter", as the agent's reconnect loop uses), so receivers that come
// back are not hit by every queued delivery at once.
func (s *Service) backoff(n int) time.Duration {
	ceil := s.o.RetryBase
	for i := 1; i < n && ceil < s.o.RetryCap; i++ {
		ceil *= 2
	}
	ceil = min(ceil, s.o.RetryCap)
	r := s.o.Rand
	if r == nil {
		r = rand.Float64
	}
	return time.Duration(r() * float64(ceil))
}

// finish records an attempt's outcome, schedules the next one or ends the
// delivery, keeps the webhook's failure clock, and disables a webhook that
// has failed for DisableAfter, all in one transaction.
func (s *Service) finish(ctx context.Context, w store.Webhook, d store.WebhookDelivery, state string, res outcome, now time.Time) error {
	d.State, d.UpdatedAt, d.NextAttemptAt, d.DeliveredAt = state, now, nil, nil
	if res.code != 0 || res.err != "" || state == store.DeliverySucceeded {
		d.ResponseCode, d.LatencyMS, d.ResponseExcerpt = res.code, res.latency.Milliseconds(), res.excerpt
	}
	d.Error = res.err
	switch state {
	case store.DeliverySucceeded:
		d.DeliveredAt = &now
	case store.DeliveryFailed:
		next := now.Add(s.backoff(d.Attempts))
		if next.After(d.RetryUntil) {
			d.State = store.DeliveryDead
			d.Error = res.err + "; no success within the retry window"
		} else {
			d.NextAttemptAt = &next
		}
	}
	var disabled, recorded bool
	err := s.o.Store.InTx(ctx, func(q *store.Queries) error {
		ok, err := q.FinishAttempt(ctx, d, s.o.Owner)
		if err != nil || !ok {
			return err // !ok: the lease was lost; its new holder records
		}
		recorded = true
		if d.EventID == 0 || d.Attempts == 0 {
			return nil // pings and attempts never made say nothing of the receiver
		}
		if state == store.DeliverySucceeded {
			return q.SetWebhookFailing(ctx, w.ID, nil)
		}
		if err := q.SetWebhookFailing(ctx, w.ID, &now); err != nil {
			return err
		}
		cur, err := q.GetWebhook(ctx, "", w.ID)
		if err != nil || !cur.Enabled || cur.FailingSince == nil || now.Sub(*cur.FailingSince) < s.o.DisableAfter {
			return err
		}
		reason := fmt.Sprintf("every delivery failed for %s (since %s); last: %s",
			s.o.DisableAfter, cur.FailingSince.UTC().Format(time.RFC3339), res.err)
		if disabled, err = q.DisableWebhook(ctx, w.ID, reason, now); err != nil || !disabled {
			return err
		}
		_, err = q.AppendEvent(ctx, w.WorkspaceID, events.WebhookDisabled, w.ID,
			map[string]string{"reason": reason, "url_host": hostOf(w.URL), "failing_since": cur.FailingSince.UTC().Format(time.RFC3339)})
		return err
	})
	if err != nil || !recorded {
		return err
	}
	s.metrics.outcome(d.State)
	log := s.log.With(zap.String("webhook", w.ID), zap.String("delivery", d.ID), zap.Int("attempt", d.Attempts))
	switch {
	case disabled:
		log.Warn("webhook disabled after a day of failures", zap.String("last_error", res.err))
	case d.State == store.DeliveryFailed:
		log.Debug("delivery attempt failed", zap.String("error", res.err), zap.Timep("next_attempt_at", d.NextAttemptAt))
	case d.State == store.DeliveryDead:
		log.Info("delivery given up", zap.String("error", d.Error))
	}
	return nil
}
