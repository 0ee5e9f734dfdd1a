// Package integrations connects workspaces to cloud accounts: a credential
// is validated against the provider before it is saved, encrypted at rest,
// re-tested, rotated (validate first, then swap) and removed, each change
// written to the audit log in the same transaction.
package integrations

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
)

// Statuses of an integration.
const (
	StatusValid   = "valid"   // the last validation passed
	StatusInvalid = "invalid" // the last validation failed; see LastError
)

// Connector builds a provider client for a credential. onRefused, when
// not nil, is called whenever the provider refuses the credential (a final
// 401/403 answer: see cloud.Config.OnRefused).
type Connector func(provider string, secret secrets.Value, onRefused func(status int)) (cloud.Provider, error)

// Integration is what the API shows of a stored integration: never the
// secret, only its last four characters.
type Integration struct {
	ID              string
	Provider        string
	AccessKey       string
	SecretKeyHint   string
	Status          string
	WriteAccess     string
	Account         *cloud.Account
	LastValidatedAt *time.Time
	LastError       *ErrorInfo
	CreatedAt       time.Time
	UpdatedAt       time.Time
}

// ErrorInfo is a recorded validation failure.
type ErrorInfo struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
}

// Service manages integrations.
type Service struct {
	store      *store.Store
	keys       *secrets.Keyring
	connect    Connector
	log        *zap.Logger
	now        func() time.Time
	timeout    time.Duration
	catalogTTL time.Duration

	mu          sync.Mutex
	catalog     map[string]cachedCatalog // by integration id
	clients     map[string]client        // by integration id
	lastRefusal map[string]time.Time     // by integration id: when a 401/403 last asked for a check

	checkEvery, checkPoll, recheckEvery time.Duration
	checks                              *checkMetrics
	refused                             chan refusal
	stopChecks                          context.CancelFunc
	checksDone                          chan struct{}
}

type cachedCatalog struct {
	cat     *cloud.Catalog
	expires time.Time
}

// Options configure a Service.
type Options struct {
	Store      *store.Store
	Keys       *secrets.Keyring
	Connect    Connector
	Logger     *zap.Logger
	Now        func() time.Time
	Timeout    time.Duration // per provider call sequence; default 2 min (429s are waited out)
	CatalogTTL time.Duration // default 5 min

	// Background health checks (see StartChecks): every CheckInterval
	// (default 6 h, jittered), looking for due ones every CheckPoll
	// (default CheckInterval/10, from 100 ms to 1 min), and after a 401/403 at
	// most once per RecheckEvery (default 1 min) per integration.
	CheckInterval time.Duration
	CheckPoll     time.Duration
	RecheckEvery  time.Duration
	Registerer    prometheus.Registerer // devpilot_integration_checks_total; nil: none
}

// New returns a Service.
func New(o Options) *Service {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Timeout == 0 {
		o.Timeout = 2 * time.Minute
	}
	if o.CatalogTTL == 0 {
		o.CatalogTTL = 5 * time.Minute
	}
	if o.CheckInterval <= 0 {
		o.CheckInterval = DefaultCheckInterval
	}
	if o.CheckPoll <= 0 {
		o.CheckPoll = min(max(o.CheckInterval/10, 100*time.Millisecond), time.Minute)
	}
	if o.RecheckEvery <= 0 {
		o.RecheckEvery = DefaultRecheckEvery
	}
	return &Service{store: o.Store, keys: o.Keys, connect: o.Connect, log: o.Logger.Named("integrations"),
		now: o.Now, timeout: o.Timeout, catalogTTL: o.CatalogTTL, catalog: map[string]cachedCatalog{},
		clients: map[string]client{}, lastRefusal: map[string]time.Time{},
		checkEvery: o.CheckInterval, checkPoll: o.CheckPoll, recheckEvery: o.RecheckEvery,
		checks: newCheckMetrics(o.Registerer), refused: make(chan refusal, 16)}
}

// Actor is who makes a change, as the audit log records it.
type Actor string

const maxAccessKey = 100

func checkAccessKey(accessKey string) error {
	if strings.TrimSpace(accessKey) == "" {
		return problem.Validation("Give the key a label, e.g. the name you gave the token at the provider.", "access_key is required")
	}
	if utf8.RuneCountInString(accessKey) > maxAccessKey || strings.ContainsFunc(accessKey, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return problem.Validation("", "access_key must be at most %d printable characters", maxAccessKey)
	}
	return nil
}

func checkSecret(secret secrets.Value) error {
	s := secret.Reveal()
	if s == "" {
		return problem.Validation("Paste the token (DigitalOcean) or API key (Vultr) as secret_key.", "secret_key is required")
	}
	if len(s) > 4096 || strings.ContainsAny(s, " \t\r\n") {
		return problem.Validation("Copy the token again: it must be one line without spaces.", "secret_key is malformed")
	}
	return nil
}

// validate runs the provider's read-only validation for secret.
func (s *Service) validate(ctx context.Context, provider string, secret secrets.Value) (*cloud.Account, error) {
	p, err := s.connect(provider, secret, nil)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", provider, err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	acct, err := p.Validate(ctx)
	if err != nil {
		return nil, err
	}
	if acct.Write == cloud.WriteNo {
		// Providers report a refused write probe as an error themselves;
		// this guards a provider that only sets the flag.
		return nil, &cloud.Error{Code: cloud.CodeInsufficientScope, Provider: provider, Op: "validate",
			Message: "the credential cannot create servers", Hint: "Use a credential with write access."}
	}
	return acct, nil
}

func errorInfo(err error) *ErrorInfo {
	var ce *cloud.Error
	if errors.As(err, &ce) {
		return &ErrorInfo{Code: string(ce.Code), Message: ce.Message, Hint: ce.Hint}
	}
	var pe *problem.Error
	if errors.As(err, &pe) {
		return &ErrorInfo{Code: pe.Code, Message: pe.Message, Hint: pe.Hint}
	}
	return &ErrorInfo{Code: string(cloud.CodeProviderError), Message: "validation failed unexpectedly; see the control plane log"}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only called with plain structs
	}
	return string(b)
}

func view(in store.Integration) *Integration {
	out := &Integration{ID: in.ID, Provider: in.Provider, AccessKey: in.AccessKey, SecretKeyHint: in.SecretHint,
		Status: in.Status, WriteAccess: in.WriteAccess, LastValidatedAt: in.LastValidatedAt,
		CreatedAt: in.CreatedAt, UpdatedAt: in.UpdatedAt}
	if in.AccountJSON != "" && in.AccountJSON != "null" {
		var a cloud.Account
		if json.Unmarshal([]byte(in.AccountJSON), &a) == nil {
			out.Account = &a
		}
	}
	if in.LastErrorJSON != "" {
		var e ErrorInfo
		if json.Unmarshal([]byte(in.LastErrorJSON), &e) == nil {
			out.LastError = &e
		}
	}
	return out
}

func audit(ctx context.Context, q *store.Queries, ws string, actor Actor, action, target string, detail any, at time.Time) error {
	return q.AddAudit(ctx, store.AuditEntry{WorkspaceID: ws, Actor: string(actor), Action: action, Target: target,
		DetailJSON: mustJSON(detail), At: at})
}

// Connect validates a credential with the provider and, only if it passes,
// stores it encrypted.
func (s *Service) Connect(ctx context.Context, actor Actor, workspaceID, provider, accessKey string, secret secrets.Value) (*Integration, error) {
	if !slices.Contains(cloud.Providers, provider) {
		return nil, problem.Validation("Use one of: "+strings.Join(cloud.Providers, ", ")+".", "unknown provider %q", provider)
	}
	if err := checkAccessKey(accessKey); err != nil {
		return nil, err
	}
	if err := checkSecret(secret); err != nil {
		return nil, err
	}
	acct, err := s.validate(ctx, provider, secret)
	if err != nil {
		s.log.Info("credential refused", zap.String("provider", provider), zap.String("code", errorInfo(err).Code))
		return nil, err
	}
	now := s.now().UTC()
	in := store.Integration{ID: ids.New("int"), WorkspaceID: workspaceID, Provider: provider, AccessKey: accessKey,
		SecretHint: secret.Hint(), Status: StatusValid, WriteAccess: string(acct.Write), AccountJSON: mustJSON(acct),
		LastValidatedAt: &now, CreatedAt: now, UpdatedAt: now}
	if in.SecretCiphertext, err = s.keys.Encrypt(secret, in.ID); err != nil {
		return nil, fmt.Errorf("encrypt secret: %w", err)
	}
	err = s.store.InTx(ctx, func(q *store.Queries) error {
		if err := q.CreateIntegration(ctx, in); err != nil {
			return err
		}
		if err := q.ScheduleIntegrationCheck(ctx, in.ID, s.nextCheck(now)); err != nil {
			return err
		}
		return audit(ctx, q, workspaceID, actor, "integration.connect", in.ID,
			map[string]string{"provider": provider, "access_key": accessKey}, now)
	})
	if errors.Is(err, store.ErrConflict) {
		return nil, problem.Conflict("Pick another access_key label, or rotate the secret of the existing integration.",
			"a %s integration labelled %q already exists", provider, accessKey)
	}
	if err != nil {
		return nil, fmt.Errorf("save integration: %w", err)
	}
	s.log.Info("integration connected", zap.String("integration", in.ID), zap.String("provider", provider))
	return view(in), nil
}

func (s *Service) get(ctx context.Context, workspaceID, id string) (store.Integration, error) {
	in, err := s.store.Q().GetIntegration(ctx, workspaceID, id)
	if errors.Is(err, store.ErrNotFound) {
		return in, problem.NotFound("integration " + id)
	}
	return in, err
}

// Get returns one integration.
func (s *Service) Get(ctx context.Context, workspaceID, id string) (*Integration, error) {
	in, err := s.get(ctx, workspaceID, id)
	if err != nil {
		return nil, err
	}
	return view(in), nil
}

// List returns a workspace's integrations.
func (s *Service) List(ctx context.Context, workspaceID string) ([]*Integration, error) {
	rows, err := s.store.Q().ListIntegrations(ctx, workspaceID)
	if err != nil {
		return nil, err
	}
	out := make([]*Integration, 0, len(rows))
	for _, in := range rows {
		out = append(out, view(in))
	}
	return out, nil
}

// Provider returns the client of a stored integration. It is shared by
// every caller (provisioning jobs, catalog, tests) until the secret
// changes, so the client-side rate limiter in it bounds all of Devpilot's
// requests with that credential, not each job's.
func (s *Service) Provider(ctx context.Context, workspaceID, id string) (cloud.Provider, error) {
	in, err := s.get(ctx, workspaceID, id)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	c, ok := s.clients[id]
	s.mu.Unlock()
	// The ciphertext changes with the secret (and with a master key
	// rotation, which merely costs a new client).
	if ok && c.ciphertext == in.SecretCiphertext {
		return c.p, nil
	}
	secret, err := s.keys.Decrypt(in.SecretCiphertext, in.ID)
	if err != nil {
		return nil, fmt.Errorf("decrypt secret of %s: %w", in.ID, err)
	}
	p, err := s.connect(in.Provider, secret, s.refusedBy(in.WorkspaceID, in.ID))
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.clients[id] = client{ciphertext: in.SecretCiphertext, p: p}
	s.mu.Unlock()
	return p, nil
}

type client struct {
	ciphertext string
	p          cloud.Provider
}

// Test re-validates a stored credential and records the outcome. A failed
// validation is recorded and returned as the error. A temporary failure
// (rate limit, provider outage, network) is no verdict on the credential:
// the status stays as it was, the attempt is recorded in last_error and
// the audit log, and the error goes back to the caller. A change of status
// appends integration.invalid or integration.valid in the same
// transaction.
func (s *Service) Test(ctx context.Context, actor Actor, workspaceID, id string) (*Integration, error) {
	v, _, err := s.revalidate(ctx, actor, workspaceID, id)
	if errors.Is(err, errNoIntegration) {
		return nil, problem.NotFound("integration " + id)
	}
	return v, err
}

// revalidate is Test, saying which outcome it had.
func (s *Service) revalidate(ctx context.Context, actor Actor, workspaceID, id string) (*Integration, string, error) {
	in, err := s.get(ctx, workspaceID, id)
	var pe *problem.Error
	if errors.As(err, &pe) && pe.Code == "not_found" {
		return nil, OutcomeError, errNoIntegration
	}
	if err != nil {
		return nil, OutcomeError, err
	}
	secret, err := s.keys.Decrypt(in.SecretCiphertext, in.ID)
	if err != nil {
		return nil, OutcomeError, fmt.Errorf("decrypt secret of %s: %w", in.ID, err)
	}
	acct, verr := s.validate(ctx, in.Provider, secret)
	now := s.now().UTC()
	detail := map[string]string{}
	var info *ErrorInfo
	outcome := OutcomeValid
	switch {
	case verr != nil && cloud.Temporary(verr):
		info, outcome = errorInfo(verr), OutcomeInconclusive
		detail["outcome"], detail["error"] = "inconclusive", info.Code
		s.log.Info("credential test inconclusive", zap.String("integration", in.ID), zap.String("code", info.Code))
	case verr != nil:
		info, outcome = errorInfo(verr), OutcomeInvalid
		detail["error"] = info.Code
	}
	var saved store.Integration
	err = s.store.InTx(ctx, func(q *store.Queries) error {
		// Re-read in the transaction: the status event is about the
		// change this write makes, whatever another check did meanwhile.
		cur, err := q.GetIntegration(ctx, workspaceID, id)
		if errors.Is(err, store.ErrNotFound) {
			return errNoIntegration
		}
		if err != nil {
			return err
		}
		if cur.SecretCiphertext != in.SecretCiphertext {
			saved = cur // rotated meanwhile: this verdict is about the old secret
			return nil
		}
		before := cur.Status
		cur.UpdatedAt = now
		switch outcome {
		case OutcomeInconclusive:
			cur.LastErrorJSON = mustJSON(info)
		case OutcomeInvalid:
			cur.LastValidatedAt = &now
			cur.Status, cur.LastErrorJSON = StatusInvalid, mustJSON(info)
		default:
			cur.LastValidatedAt = &now
			cur.Status, cur.LastErrorJSON = StatusValid, ""
			cur.WriteAccess, cur.AccountJSON = string(acct.Write), mustJSON(acct)
		}
		detail["status"] = cur.Status
		if err := q.UpdateIntegration(ctx, cur); err != nil {
			return err
		}
		if err := statusEvent(ctx, q, before, cur, info); err != nil {
			return err
		}
		saved = cur
		return audit(ctx, q, workspaceID, actor, "integration.test", id, detail, now)
	})
	if errors.Is(err, errNoIntegration) {
		return nil, OutcomeError, errNoIntegration
	}
	if err != nil {
		return nil, OutcomeError, fmt.Errorf("record test: %w", err)
	}
	if before := in.Status; before != saved.Status {
		s.log.Info("integration status changed", zap.String("integration", id), zap.String("from", before),
			zap.String("to", saved.Status))
	}
	if verr != nil {
		return view(saved), outcome, verr
	}
	return view(saved), outcome, nil
}

// Rotate validates a new secret and only then replaces the stored one; when
// validation fails the old secret stays in place and keeps working.
func (s *Service) Rotate(ctx context.Context, actor Actor, workspaceID, id string, secret secrets.Value) (*Integration, error) {
	if err := checkSecret(secret); err != nil {
		return nil, err
	}
	in, err := s.get(ctx, workspaceID, id)
	if err != nil {
		return nil, err
	}
	acct, err := s.validate(ctx, in.Provider, secret)
	if err != nil {
		return nil, err
	}
	ct, err := s.keys.Encrypt(secret, in.ID)
	if err != nil {
		return nil, fmt.Errorf("encrypt secret: %w", err)
	}
	now := s.now().UTC()
	before := in.Status
	in.SecretCiphertext, in.SecretHint = ct, secret.Hint()
	in.Status, in.LastErrorJSON, in.LastValidatedAt, in.UpdatedAt = StatusValid, "", &now, now
	in.WriteAccess, in.AccountJSON = string(acct.Write), mustJSON(acct)
	err = s.store.InTx(ctx, func(q *store.Queries) error {
		if err := q.UpdateIntegration(ctx, in); err != nil {
			return err
		}
		if err := statusEvent(ctx, q, before, in, nil); err != nil {
			return err
		}
		if err := q.ScheduleIntegrationCheck(ctx, in.ID, s.nextCheck(now)); err != nil {
			return err
		}
		return audit(ctx, q, workspaceID, actor, "integration.rotate", id, map[string]string{"secret_key_hint": in.SecretHint}, now)
	})
	if err != nil {
		return nil, fmt.Errorf("save rotated secret: %w", err)
	}
	s.forgetCatalog(id)
	s.log.Info("integration secret rotated", zap.String("integration", id))
	return view(in), nil
}

// Rename changes the access key label.
func (s *Service) Rename(ctx context.Context, actor Actor, workspaceID, id, accessKey string) (*Integration, error) {
	if err := checkAccessKey(accessKey); err != nil {
		return nil, err
	}
	in, err := s.get(ctx, workspaceID, id)
	if err != nil {
		return nil, err
	}
	old := in.AccessKey
	in.AccessKey, in.UpdatedAt = accessKey, s.now().UTC()
	err = s.store.InTx(ctx, func(q *store.Queries) error {
		if err := q.UpdateIntegration(ctx, in); err != nil {
			return err
		}
		return audit(ctx, q, workspaceID, actor, "integration.rename", id, map[string]string{"from": old, "to": accessKey}, in.UpdatedAt)
	})
	if errors.Is(err, store.ErrConflict) {
		return nil, problem.Conflict("", "a %s integration labelled %q already exists", in.Provider, accessKey)
	}
	if err != nil {
		return nil, err
	}
	return view(in), nil
}

// Remove deletes the integration and its encrypted secret. Nothing in the
// cloud account is touched: servers made through it keep running.
func (s *Service) Remove(ctx context.Context, actor Actor, workspaceID, id string) error {
	err := s.store.InTx(ctx, func(q *store.Queries) error {
		in, err := q.GetIntegration(ctx, workspaceID, id)
		if err != nil {
			return err
		}
		if err := q.DeleteIntegration(ctx, workspaceID, id); err != nil {
			return err
		}
		// Its servers stay, managed through their agents.
		if err := q.DetachIntegration(ctx, id); err != nil {
			return err
		}
		return audit(ctx, q, workspaceID, actor, "integration.remove", id,
			map[string]string{"provider": in.Provider, "access_key": in.AccessKey}, s.now())
	})
	if errors.Is(err, store.ErrNotFound) {
		return problem.NotFound("integration " + id)
	}
	if err != nil {
		return err
	}
	s.forgetCatalog(id)
	return nil
}

// Catalog returns the provider's regions, sizes and images, cached for the
// catalog TTL unless refresh is set.
func (s *Service) Catalog(ctx context.Context, workspaceID, id string, refresh bool) (*cloud.Catalog, error) {
	if _, err := s.get(ctx, workspaceID, id); err != nil {
		return nil, err
	}
	s.mu.Lock()
	c, ok := s.catalog[id]
	s.mu.Unlock()
	if ok && !refresh && s.now().Before(c.expires) {
		return c.cat, nil
	}
	p, err := s.Provider(ctx, workspaceID, id)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	cat, err := p.Catalog(ctx)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.catalog[id] = cachedCatalog{cat: cat, expires: s.now().Add(s.catalogTTL)}
	s.mu.Unlock()
	return cat, nil
}

func (s *Service) forgetCatalog(id string) {
	s.mu.Lock()
	delete(s.catalog, id)
	delete(s.clients, id)
	s.mu.Unlock()
}
