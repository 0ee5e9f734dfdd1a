// Package reconcile compares what each cloud account really holds with the
// store and the hub, so a server's state says what is true: online;
// agent_offline (the instance runs, its agent is silent); stopped (powered
// off, by Devpilot or outside it); lost (the instance no longer exists);
// unknown (the cloud cannot be asked: token refused, API down). Each state
// carries a reason. A state changes only after it was seen on two
// consecutive passes, so one missed heartbeat or one failed list call does
// not flap it. Drift is repaired: a Devpilot tag removed outside Devpilot
// is put back and the audit log says so.
//
// Each pass makes one list-by-tag call per integration (ListInstances with
// the tag every Devpilot server carries), whatever the number of servers.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/store"
)

// Server states the reconciler sets, beside the provisioning ones.
const (
	StateOnline       = "online"
	StateOffline      = "offline"
	StateAgentOffline = "agent_offline"
	StateStopped      = "stopped"
	StateLost         = "lost"
	StateUnknown      = "unknown"
)

// watched are the states the reconciler may move a server out of.
var watched = []string{StateOnline, StateOffline, StateAgentOffline, StateStopped, StateLost, StateUnknown}

// Live is the hub's view of a server's agent.
type Live struct {
	Connected bool
	LastSeen  time.Time
	// LastError is why the agent's last session ended or was refused
	// (the hub's view, e.g. its goodbye or "missed heartbeats"); "" if
	// this control plane saw none.
	LastError string
}

// Options configure a Reconciler.
type Options struct {
	Store    *store.Store
	Provider func(ctx context.Context, workspaceID, integrationID string) (cloud.Provider, error)
	Live     func(serverID string) Live
	Tags     func(srv store.Server) []string // the cloud tags a server must carry
	// Firewall is the firewall a server must have (its name, tag and
	// exactly its ports); nil: firewalls are not checked.
	Firewall func(srv store.Server) (cloud.FirewallSpec, bool)
	// FirewallEvery: firewalls are checked on every n-th pass (they cost
	// one or two calls per server, not one per integration); default 10.
	FirewallEvery int
	Interval      time.Duration // between passes; default 30 s
	Logger        *zap.Logger
	Now           func() time.Time
}

// Reconciler runs passes until Close.
type Reconciler struct {
	o   Options
	log *zap.Logger

	mu     sync.Mutex
	seen   map[string]observation // server id → last pass's observation
	passes int

	runMu  sync.Mutex         // guards cancel: a Start after a Close replaces it
	cancel context.CancelFunc // ends the passes of the current Start
	wg     sync.WaitGroup
}

type observation struct {
	state, reason string
	count         int
}

// New returns a Reconciler; Start runs it.
func New(o Options) *Reconciler {
	if o.Interval <= 0 {
		o.Interval = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.FirewallEvery <= 0 {
		o.FirewallEvery = 10
	}
	r := &Reconciler{o: o, log: o.Logger.Named("reconcile"), seen: map[string]observation{}}
	return r
}

// Start runs a pass every interval in the background, until Close (and
// again after a later Start).
func (r *Reconciler) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	r.runMu.Lock()
	r.cancel = cancel
	r.runMu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		t := time.NewTicker(r.o.Interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			r.Pass(ctx)
		}
	}()
}

// Close stops the passes and waits for the one running.
func (r *Reconciler) Close() {
	r.runMu.Lock()
	if r.cancel != nil {
		r.cancel()
	}
	r.runMu.Unlock()
	r.wg.Wait()
}

// Pass reconciles every integration once.
func (r *Reconciler) Pass(ctx context.Context) {
	q := r.o.Store.Q()
	servers, err := q.CloudServersInStates(ctx, watched...)
	if err != nil {
		if ctx.Err() == nil {
			r.log.Warn("list servers", zap.Error(err))
		}
		return
	}
	open, err := q.OpenActions(ctx)
	if err != nil {
		return
	}
	busy := map[string]bool{}
	for _, a := range open {
		busy[a.ServerID] = true // a lifecycle action owns the state meanwhile
	}
	r.mu.Lock()
	r.passes++
	firewalls := r.o.Firewall != nil && (r.passes-1)%r.o.FirewallEvery == 0
	r.mu.Unlock()
	byIntegration := map[string][]store.Server{}
	for _, s := range servers {
		if busy[s.ID] {
			continue
		}
		byIntegration[s.IntegrationID] = append(byIntegration[s.IntegrationID], s)
	}
	for id, list := range byIntegration {
		r.integration(ctx, id, list, firewalls)
	}
}

// integration reconciles the servers of one integration with one list call.
func (r *Reconciler) integration(ctx context.Context, integrationID string, servers []store.Server, firewalls bool) {
	p, err := r.o.Provider(ctx, servers[0].WorkspaceID, integrationID)
	var insts []cloud.Instance
	if err == nil {
		insts, err = p.ListInstances(ctx, "devpilot")
	}
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		reason := unknownReason(err)
		for _, s := range servers {
			r.observe(ctx, s, StateUnknown, reason)
		}
		return
	}
	byID := make(map[string]int, len(insts))
	for i, in := range insts {
		byID[in.ID] = i
	}
	for _, s := range servers {
		i, ok := byID[s.InstanceID]
		if !ok {
			r.observe(ctx, s, StateLost, fmt.Sprintf("instance %s no longer exists in %s (deleted outside Devpilot?); delete this server or create it again", s.InstanceID, s.Provider))
			continue
		}
		in := insts[i]
		r.repairTags(ctx, p, s, in)
		if firewalls {
			r.repairFirewall(ctx, p, s)
		}
		live := r.o.Live(s.ID)
		switch {
		case in.State == cloud.StateOff:
			r.observe(ctx, s, StateStopped, "the instance is powered off (by a power_off action or outside Devpilot); start it with a power_on action")
		case live.Connected:
			r.observe(ctx, s, StateOnline, "")
		case in.State == cloud.StateActive:
			reason := "the instance is running but its agent is silent"
			if !live.LastSeen.IsZero() {
				reason += fmt.Sprintf(" for %s (last seen %s)", r.o.Now().Sub(live.LastSeen).Round(time.Second), live.LastSeen.UTC().Format(time.RFC3339))
			} else if s.LastSeenAt != nil {
				reason += fmt.Sprintf(" for %s (last seen %s)", r.o.Now().Sub(*s.LastSeenAt).Round(time.Second), s.LastSeenAt.UTC().Format(time.RFC3339))
			}
			if live.LastError != "" {
				reason += "; last error: " + live.LastError
			}
			reason += "; look at the agent on the server (journalctl -u devpilot-agent)"
			r.observe(ctx, s, StateAgentOffline, reason)
		}
	}
}

func unknownReason(err error) string {
	switch cloud.CodeOf(err) {
	case cloud.CodeInvalidCredentials:
		return "the cloud refused the integration's token (revoked or expired?); rotate it with PUT …/integrations/{id}/secret"
	case cloud.CodeInsufficientScope, cloud.CodeIPNotAllowed:
		return "the cloud refused the integration's token for listing instances: " + err.Error()
	case cloud.CodeRateLimited:
		return "the cloud API is rate limiting this account; the state is checked again next pass"
	}
	var ce *cloud.Error
	if errors.As(err, &ce) {
		return "the cloud API cannot be asked right now (" + ce.Error() + ")"
	}
	return "the cloud API cannot be asked right now: " + err.Error()
}

// observe records a pass's observation and applies it once seen twice in
// a row.
func (r *Reconciler) observe(ctx context.Context, s store.Server, state, reason string) {
	r.mu.Lock()
	o := r.seen[s.ID]
	if o.state == state {
		o.count++
	} else {
		o = observation{state: state, count: 1}
	}
	o.reason = reason
	r.seen[s.ID] = o
	r.mu.Unlock()
	if o.count < 2 {
		return
	}
	if s.State == state && state == StateOnline {
		return
	}
	changed, err := r.o.Store.Q().SetServerLiveness(ctx, s.ID, state, reason, r.o.Now(), watched...)
	if err != nil || !changed {
		return
	}
	if s.State != state {
		r.log.Info("server state changed", zap.String("server", s.ID), zap.String("from", s.State), zap.String("to", state), zap.String("reason", reason))
	}
}

// repairTags puts back a Devpilot tag removed outside Devpilot, and
// audits it.
func (r *Reconciler) repairTags(ctx context.Context, p cloud.Provider, s store.Server, in cloud.Instance) {
	lc, ok := p.(cloud.Lifecycle)
	if !ok || r.o.Tags == nil {
		return
	}
	for _, tag := range r.o.Tags(s) {
		if slices.Contains(in.Tags, tag) {
			continue
		}
		if err := lc.Tag(ctx, in.ID, tag); err != nil {
			r.log.Warn("put a removed tag back", zap.String("server", s.ID), zap.String("tag", tag), zap.Error(err))
			continue
		}
		_ = r.o.Store.Q().AddAudit(ctx, store.AuditEntry{WorkspaceID: s.WorkspaceID, Actor: "reconciler", Action: "server.drift.tag",
			Target: s.ID, DetailJSON: fmt.Sprintf(`{"tag":%q,"repaired":"tag removed outside Devpilot was put back"}`, tag), At: r.o.Now()})
	}
}

// repairFirewall makes the server's firewall allow exactly its ports again
// when someone edited it outside Devpilot, and audits it.
func (r *Reconciler) repairFirewall(ctx context.Context, p cloud.Provider, s store.Server) {
	fr, ok := p.(cloud.FirewallRepairer)
	if !ok {
		return
	}
	spec, ok := r.o.Firewall(s)
	if !ok {
		return
	}
	id, changed, err := fr.RepairFirewall(ctx, spec)
	if err != nil {
		r.log.Warn("check firewall", zap.String("server", s.ID), zap.Error(err))
		return
	}
	if !changed {
		return
	}
	r.log.Info("firewall edited outside Devpilot put back", zap.String("server", s.ID), zap.String("firewall", id))
	_ = r.o.Store.Q().AddAudit(ctx, store.AuditEntry{WorkspaceID: s.WorkspaceID, Actor: "reconciler", Action: "server.drift.firewall",
		Target: s.ID, DetailJSON: fmt.Sprintf(`{"firewall":%q,"ports":%s,"repaired":"rules edited outside Devpilot were put back"}`, id, portsJSON(spec.Ports)), At: r.o.Now()})
}

func portsJSON(ports []int) string {
	b := []byte{'['}
	for i, p := range ports {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, "%d", p)
	}
	return string(append(b, ']'))
}
