// Package webhooks delivers a workspace's events to HTTP receivers through
// a durable outbox. A fan-out loop turns each new event of the log into one
// delivery row per matching enabled webhook (in one transaction with the
// cursor it advances); a worker claims due deliveries under a lease, records
// every attempt before and after it is made, signs each request the
// Standard Webhooks way, and retries with exponential backoff and full
// jitter for up to a day. A webhook failing for a day is disabled, with a
// webhook.disabled event. Several control planes on one database share the
// work; one killed mid-attempt has its claims taken over when they expire.
package webhooks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/events"
	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
)

// Defaults of Options.
const (
	DefaultRetryWindow  = 24 * time.Hour   // a delivery is retried this long
	DefaultDisableAfter = 24 * time.Hour   // a webhook failing this long is disabled
	DefaultRetryBase    = 10 * time.Second // first backoff ceiling
	DefaultRetryCap     = time.Hour        // largest backoff ceiling
	DefaultLease        = time.Minute      // a claim outlives an attempt (10 s) with room to record it
	DefaultPoll         = 2 * time.Second  // other control planes' events and due retries
	// DefaultMinRound spaces the rounds this process's own events start:
	// a burst of commits (a reconnect storm's session starts, each batch
	// with its server.online events) is fanned out in a few rounds of
	// many events instead of one round, two write transactions, per
	// commit. A test message (ping) does not wait for it.
	DefaultMinRound = 100 * time.Millisecond
)

// PingType is the type of the test message POST …/ping sends (not an event
// of the log).
const PingType = "webhook.ping"

// Options configure a Service.
type Options struct {
	Store  *store.Store
	Keys   *secrets.Keyring
	Logger *zap.Logger
	Policy Policy
	// Now is the clock (tests advance it to cross a day of retries).
	Now func() time.Time
	// Rand returns a float in [0, 1) for the backoff's jitter.
	Rand func() float64
	// Owner names this control plane in leases (default: a random id).
	Owner        string
	RetryWindow  time.Duration
	DisableAfter time.Duration
	RetryBase    time.Duration
	RetryCap     time.Duration
	Lease        time.Duration
	Poll         time.Duration
	MinRound     time.Duration // see DefaultMinRound
	Registerer   prometheus.Registerer
}

// Service manages webhooks and delivers their events.
type Service struct {
	o       Options
	log     *zap.Logger
	client  httpDoer
	metrics *metrics
	kick    chan struct{}
	wg      sync.WaitGroup
}

// New returns a Service; Run starts its loops.
func New(o Options) *Service {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Owner == "" {
		o.Owner = ids.New("cp")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&o.RetryWindow, DefaultRetryWindow)
	def(&o.DisableAfter, DefaultDisableAfter)
	def(&o.RetryBase, DefaultRetryBase)
	def(&o.RetryCap, DefaultRetryCap)
	def(&o.Lease, DefaultLease)
	def(&o.Poll, DefaultPoll)
	def(&o.MinRound, DefaultMinRound)
	s := &Service{o: o, log: o.Logger.Named("webhooks"), client: o.Policy.Client(), kick: make(chan struct{}, 1)}
	s.metrics = newMetrics(o.Registerer, s)
	return s
}

// Webhook is what the API shows of a webhook: never its secret.
type Webhook struct {
	ID             string
	URL            string
	Events         []string
	Format         string
	Description    string
	Enabled        bool
	DisabledReason string
	FailingSince   *time.Time
	CreatedAt      time.Time
	UpdatedAt      time.Time
}

func view(w store.Webhook) *Webhook {
	var evs []string
	_ = json.Unmarshal([]byte(w.EventsJSON), &evs)
	return &Webhook{ID: w.ID, URL: w.URL, Events: evs, Format: w.Format, Description: w.Description, Enabled: w.Enabled,
		DisabledReason: w.DisabledReason, FailingSince: w.FailingSince, CreatedAt: w.CreatedAt, UpdatedAt: w.UpdatedAt}
}

// Spec is what a user sets on a webhook; nil fields of an update keep
// their value.
type Spec struct {
	URL         *string
	Events      []string // nil: unchanged (create: ["*"])
	Format      *string
	Secret      secrets.Value // zero: generated at create, unchanged at update
	Description *string
	Enabled     *bool
}

const (
	maxPatterns    = 50
	maxDescription = 200
)

func checkEvents(pats []string) error {
	if len(pats) == 0 {
		return invalid(`Subscribe to "*" for every event, or list types and families such as "server.*", "task.failed".`,
			"events must list at least one pattern")
	}
	if len(pats) > maxPatterns {
		return invalid(`Use a family pattern such as "server.*" instead of listing each type.`, "events may list at most %d patterns", maxPatterns)
	}
	for _, p := range pats {
		if err := events.ValidPattern(p); err != nil {
			var pe *problem.Error
			if errors.As(err, &pe) {
				return invalid(pe.Hint, "%s", pe.Message)
			}
			return err
		}
	}
	return nil
}

func checkFormat(f string) error {
	if !slices.Contains(Formats, f) {
		return invalid("Use one of: "+strings.Join(Formats, ", ")+
			" (slack posts {\"text\": …} for Slack and Mattermost incoming webhooks).", "unknown format %q", f)
	}
	return nil
}

func checkDescription(d string) error {
	if utf8.RuneCountInString(d) > maxDescription || strings.ContainsFunc(d, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return invalid("", "description must be at most %d printable characters", maxDescription)
	}
	return nil
}

func audit(ctx context.Context, q *store.Queries, ws, actor, action, target string, detail any, at time.Time) error {
	b, _ := json.Marshal(detail)
	return q.AddAudit(ctx, store.AuditEntry{WorkspaceID: ws, Actor: actor, Action: action, Target: target, DetailJSON: string(b), At: at})
}

// Create validates and saves a webhook. The signing secret (the one given,
// or a generated one) is returned this once; it is stored sealed.
func (s *Service) Create(ctx context.Context, actor, workspaceID string, sp Spec) (*Webhook, secrets.Value, error) {
	if sp.URL == nil {
		return nil, secrets.Value{}, invalid("Give the receiver's https URL.", "url is required")
	}
	u, err := s.o.Policy.CheckURL(*sp.URL)
	if err != nil {
		return nil, secrets.Value{}, err
	}
	if sp.Events == nil {
		sp.Events = []string{"*"}
	}
	if err := checkEvents(sp.Events); err != nil {
		return nil, secrets.Value{}, err
	}
	format := FormatRaw
	if sp.Format != nil {
		format = *sp.Format
	}
	if err := checkFormat(format); err != nil {
		return nil, secrets.Value{}, err
	}
	desc := ""
	if sp.Description != nil {
		desc = *sp.Description
	}
	if err := checkDescription(desc); err != nil {
		return nil, secrets.Value{}, err
	}
	secret := sp.Secret
	if secret.IsZero() {
		secret = NewSecret()
	} else if _, err := ParseSecret(secret); err != nil {
		return nil, secrets.Value{}, err
	}
	enabled := sp.Enabled == nil || *sp.Enabled
	now := s.o.Now().UTC()
	evs, _ := json.Marshal(sp.Events)
	w := store.Webhook{ID: ids.New("wh"), WorkspaceID: workspaceID, URL: u.String(), EventsJSON: string(evs), Format: format,
		Description: desc, Enabled: enabled, CreatedBy: actor, CreatedAt: now, UpdatedAt: now}
	if w.SecretCiphertext, err = s.o.Keys.Encrypt(secret, w.ID); err != nil {
		return nil, secrets.Value{}, fmt.Errorf("seal webhook secret: %w", err)
	}
	err = s.o.Store.InTx(ctx, func(q *store.Queries) error {
		if err := q.CreateWebhook(ctx, w); err != nil {
			return err
		}
		return audit(ctx, q, workspaceID, actor, "webhook.create", w.ID, map[string]any{"host": u.Host, "events": sp.Events, "format": format}, now)
	})
	if err != nil {
		return nil, secrets.Value{}, fmt.Errorf("save webhook: %w", err)
	}
	s.log.Info("webhook created", zap.String("webhook", w.ID), zap.String("host", u.Host))
	return view(w), secret, nil
}

func (s *Service) get(ctx context.Context, workspaceID, id string) (store.Webhook, error) {
	w, err := s.o.Store.Q().GetWebhook(ctx, workspaceID, id)
	if errors.Is(err, store.ErrNotFound) {
		return w, problem.NotFound("webhook " + id)
	}
	return w, err
}

// Get returns one webhook.
func (s *Service) Get(ctx context.Context, workspaceID, id string) (*Webhook, error) {
	w, err := s.get(ctx, workspaceID, id)
	if err != nil {
		return nil, err
	}
	return view(w), nil
}

// List returns a page of a workspace's webhooks, oldest first.
func (s *Service) List(ctx context.Context, workspaceID string, after *store.Cursor, limit int) ([]*Webhook, error) {
	rows, err := s.o.Store.Q().WebhooksPage(ctx, workspaceID, after, limit)
	if err != nil {
		return nil, err
	}
	out := make([]*Webhook, 0, len(rows))
	for _, w := range rows {
		out = append(out, view(w))
	}
	return out, nil
}

// Update changes a webhook's settings. Enabling a disabled webhook clears
// its reason and failure clock; its dead deliveries stay dead (redeliver
// them by hand).
func (s *Service) Update(ctx context.Context, actor, workspaceID, id string, sp Spec) (*Webhook, error) {
	w, err := s.get(ctx, workspaceID, id)
	if err != nil {
		return nil, err
	}
	changed := []string{}
	if sp.URL != nil {
		u, err := s.o.Policy.CheckURL(*sp.URL)
		if err != nil {
			return nil, err
		}
		w.URL = u.String()
		changed = append(changed, "url")
	}
	if sp.Events != nil {
		if err := checkEvents(sp.Events); err != nil {
			return nil, err
		}
		b, _ := json.Marshal(sp.Events)
		w.EventsJSON = string(b)
		changed = append(changed, "events")
	}
	if sp.Format != nil {
		if err := checkFormat(*sp.Format); err != nil {
			return nil, err
		}
		w.Format = *sp.Format
		changed = append(changed, "format")
	}
	if sp.Description != nil {
		if err := checkDescription(*sp.Description); err != nil {
			return nil, err
		}
		w.Description = *sp.Description
		changed = append(changed, "description")
	}
	if !sp.Secret.IsZero() {
		if _, err := ParseSecret(sp.Secret); err != nil {
			return nil, err
		}
		if w.SecretCiphertext, err = s.o.Keys.Encrypt(sp.Secret, w.ID); err != nil {
			return nil, fmt.Errorf("seal webhook secret: %w", err)
		}
		changed = append(changed, "secret")
	}
	if sp.Enabled != nil {
		if *sp.Enabled && !w.Enabled {
			w.DisabledReason, w.FailingSince = "", nil
		}
		if !*sp.Enabled && w.Enabled {
			w.DisabledReason = "disabled by " + actor
		}
		w.Enabled = *sp.Enabled
		changed = append(changed, "enabled")
	}
	w.UpdatedAt = s.o.Now().UTC()
	err = s.o.Store.InTx(ctx, func(q *store.Queries) error {
		if err := q.UpdateWebhook(ctx, w); err != nil {
			return err
		}
		return audit(ctx, q, workspaceID, actor, "webhook.update", w.ID, map[string]any{"changed": changed}, w.UpdatedAt)
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, problem.NotFound("webhook " + id)
	}
	if err != nil {
		return nil, fmt.Errorf("save webhook: %w", err)
	}
	return view(w), nil
}

// Delete removes a webhook and its delivery log.
func (s *Service) Delete(ctx context.Context, actor, workspaceID, id string) error {
	err := s.o.Store.InTx(ctx, func(q *store.Queries) error {
		if err := q.DeleteWebhook(ctx, workspaceID, id); err != nil {
			return err
		}
		return audit(ctx, q, workspaceID, actor, "webhook.delete", id, map[string]any{}, s.o.Now().UTC())
	})
	if errors.Is(err, store.ErrNotFound) {
		return problem.NotFound("webhook " + id)
	}
	return err
}

// Delivery is one entry of a webhook's delivery log.
type Delivery = store.WebhookDelivery

// Deliveries returns a page of a webhook's deliveries, newest first.
func (s *Service) Deliveries(ctx context.Context, workspaceID, id string, after *store.Cursor, limit int) ([]Delivery, error) {
	if _, err := s.get(ctx, workspaceID, id); err != nil {
		return nil, err
	}
	return s.o.Store.Q().DeliveriesPage(ctx, id, after, limit)
}

// Redeliver queues a delivery again now, with a fresh retry window. The
// receiver gets the same webhook-id, so it can tell a repeat.
func (s *Service) Redeliver(ctx context.Context, actor, workspaceID, id, deliveryID string) (Delivery, error) {
	if _, err := s.get(ctx, workspaceID, id); err != nil {
		return Delivery{}, err
	}
	now := s.o.Now().UTC()
	err := s.o.Store.InTx(ctx, func(q *store.Queries) error {
		if err := q.Redeliver(ctx, id, deliveryID, now, now.Add(s.o.RetryWindow)); err != nil {
			return err
		}
		return audit(ctx, q, workspaceID, actor, "webhook.redeliver", id, map[string]any{"delivery": deliveryID}, now)
	})
	if errors.Is(err, store.ErrNotFound) {
		return Delivery{}, problem.NotFound("delivery " + deliveryID)
	}
	if err != nil {
		return Delivery{}, err
	}
	s.Kick()
	return s.o.Store.Q().GetDelivery(ctx, id, deliveryID)
}

// Ping queues a test message (type webhook.ping) to a webhook, enabled or
// not, and returns its delivery; its outcome shows in the delivery log.
func (s *Service) Ping(ctx context.Context, actor, workspaceID, id string) (Delivery, error) {
	w, err := s.get(ctx, workspaceID, id)
	if err != nil {
		return Delivery{}, err
	}
	now := s.o.Now().UTC()
	data, _ := json.Marshal(map[string]string{"message": "Test message from Devpilot: this webhook is reachable.", "webhook": w.ID})
	payload, _ := json.Marshal(Message{Type: PingType, Subject: w.ID, Time: now, Data: data, Workspace: workspaceID})
	did := ids.New("dl")
	d := Delivery{ID: did, WebhookID: w.ID, WorkspaceID: workspaceID, MessageID: "ping_" + did, EventType: PingType,
		PayloadJSON: string(payload), State: store.DeliveryPending, NextAttemptAt: &now, RetryUntil: now.Add(s.o.RetryWindow),
		CreatedAt: now, UpdatedAt: now}
	err = s.o.Store.InTx(ctx, func(q *store.Queries) error {
		if _, err := q.InsertDelivery(ctx, d); err != nil {
			return err
		}
		return audit(ctx, q, workspaceID, actor, "webhook.ping", w.ID, map[string]any{"delivery": did}, now)
	})
	if err != nil {
		return Delivery{}, err
	}
	s.Kick()
	return d, nil
}

// Kick wakes the worker (a delivery was queued in this process).
func (s *Service) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// hostOf is a URL's host for logs: never the path or query, which may be
// the secret of a Slack-style webhook URL.
func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(invalid url)"
	}
	return u.Host
}

// invalid is a 422 validation_failed: the request was well-formed JSON but
// a value is refused (the message names it, the hint the valid choices).
func invalid(hint, format string, args ...any) *problem.Error {
	e := problem.Validation(hint, format, args...)
	e.Status = http.StatusUnprocessableEntity
	return e
}
