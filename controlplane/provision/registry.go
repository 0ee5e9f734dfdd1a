package provision

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/auth"
	"github.com/devpilot/devpilot/controlplane/hub"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/shared/protocol"
)

// Registry is the hub's view of servers, backed by the store: bootstrap
// tokens are consumed once, agent keys recorded, sessions turn servers
// online and offline, health is saved in batches.
type Registry struct{ s *Service }

// Registry returns the hub.Registry of this service.
func (s *Service) Registry() *Registry { return &Registry{s: s} }

var _ hub.Registry = (*Registry)(nil)

// tokenHash is what the store keeps of a bootstrap token: the sha256 of
// its secret part, as for API tokens.
func tokenHash(token string) ([]byte, bool) {
	_, secret, ok := auth.Parse(strings.TrimSpace(token))
	if !ok {
		return nil, false
	}
	h := sha256.Sum256([]byte(secret))
	return h[:], true
}

func (r *Registry) live(ctx context.Context, serverID string) (store.Server, error) {
	srv, err := r.s.store.Q().GetServer(ctx, "", serverID)
	if errors.Is(err, store.ErrNotFound) {
		return srv, hub.ErrAuthFailed
	}
	if err != nil {
		return srv, err
	}
	if srv.State == StateDeleted || srv.State == StateDeleting {
		return srv, hub.ErrServerDeleted
	}
	return srv, nil
}

// Enroll implements hub.Registry.
func (r *Registry) Enroll(ctx context.Context, serverID, token string, pub ed25519.PublicKey, hello protocol.Hello) error {
	srv, err := r.live(ctx, serverID)
	if errors.Is(err, hub.ErrAuthFailed) {
		return hub.ErrTokenInvalid
	}
	if err != nil {
		return err
	}
	hash, ok := tokenHash(token)
	if !ok {
		return hub.ErrTokenInvalid
	}
	now := r.s.now().UTC()
	err = r.s.store.InTx(ctx, func(q *store.Queries) error {
		used, err := q.UseBootstrapToken(ctx, hash, serverID, now)
		if err != nil {
			return err
		}
		if !used {
			return hub.ErrTokenInvalid
		}
		if err := q.SaveAgentKey(ctx, serverID, pub, now); err != nil {
			return err
		}
		return q.AddAudit(ctx, store.AuditEntry{WorkspaceID: srv.WorkspaceID, Actor: "agent:" + serverID,
			Action: "agent.enroll", Target: serverID, DetailJSON: `{"agent_version":` + jsonString(hello.AgentVersion) + `}`, At: now})
	})
	if err != nil {
		return err
	}
	r.s.log.Info("agent enrolled", zap.String("server", serverID), zap.String("agent_version", hello.AgentVersion))
	return nil
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// AgentKey implements hub.Registry with one narrow read (store.AgentAuthOf).
func (r *Registry) AgentKey(ctx context.Context, serverID string) (hub.AgentKeys, error) {
	a, err := r.s.store.Q().AgentAuthOf(ctx, serverID)
	if errors.Is(err, store.ErrNotFound) {
		return hub.AgentKeys{}, hub.ErrAuthFailed
	}
	if err != nil {
		return hub.AgentKeys{}, err
	}
	if a.State == StateDeleted || a.State == StateDeleting {
		return hub.AgentKeys{}, hub.ErrServerDeleted
	}
	k := hub.AgentKeys{Quarantined: a.Quarantined}
	if len(a.PublicKey) == ed25519.PublicKeySize {
		k.Enrolled = ed25519.PublicKey(a.PublicKey)
	}
	if len(a.RevokedKey) == ed25519.PublicKeySize {
		k.Revoked = ed25519.PublicKey(a.RevokedKey)
	}
	if k.Enrolled == nil && k.Revoked == nil {
		return k, hub.ErrAuthFailed
	}
	return k, nil
}

// IdentityConflict implements hub.Registry: the server is quarantined and
// the audit log says what the hub saw (remote addresses, no keys).
func (r *Registry) IdentityConflict(ctx context.Context, serverID string, c hub.Conflict) error {
	srv, err := r.live(ctx, serverID)
	if err != nil {
		return err
	}
	at := c.At.UTC()
	reason := fmt.Sprintf("two agents used this server's identity key: its session was taken over %d times within %s, from %s",
		c.Replacements, c.Window, strings.Join(c.Remotes, ", "))
	err = r.s.store.InTx(ctx, func(q *store.Queries) error {
		first, err := q.Quarantine(ctx, serverID, reason, at)
		if err != nil || !first {
			return err
		}
		detail, _ := json.Marshal(map[string]any{"replacements": c.Replacements, "window_s": int(c.Window / time.Second),
			"remote_addrs": c.Remotes})
		return q.AddAudit(ctx, store.AuditEntry{WorkspaceID: srv.WorkspaceID, Actor: "hub", Action: "agent.identity_conflict",
			Target: serverID, DetailJSON: string(detail), At: at})
	})
	if err != nil {
		return err
	}
	r.s.log.Warn("server quarantined: identity conflict", zap.String("server", serverID), zap.Strings("remotes", c.Remotes))
	// Wherever the other session is held (in active mode, perhaps on
	// another control plane), it ends too.
	r.s.disconnect(serverID, protocol.ErrQuarantined)
	return nil
}

// Connected implements hub.Registry: the first session confirms the
// install; later ones bring an offline server back online.
//
// One conditional write (store.StartAgentSession); only when it finds no
// live server does a read say why.
func (r *Registry) Connected(ctx context.Context, serverID string, hello protocol.Hello, at time.Time) error {
	facts, _ := json.Marshal(hello.Facts)
	// An installing server turns online when its job records wait_agent
	// done; an offline one right here.
	ok, was, err := r.s.store.StartAgentSessionFrom(ctx, store.SessionStart{ID: serverID, Version: hello.AgentVersion, FactsJSON: string(facts),
		Capabilities: strings.Join(hello.Capabilities, " "), At: at})
	if err != nil {
		return err
	}
	if ok && was != "" && was != r.s.store.Self() && r.s.o.SessionTakenFrom != nil {
		r.s.o.SessionTakenFrom(serverID, was, hub.RemoteOf(ctx), at)
	}
	if !ok {
		if _, err := r.live(ctx, serverID); err != nil {
			return err
		}
		return hub.ErrServerDeleted // deleted between the two statements
	}
	if hello.LastUpdate != nil {
		// Before the welcome acknowledges it (protocol 1.2): the
		// update_agent action reads it from here.
		b, _ := json.Marshal(hello.LastUpdate)
		if err := r.s.store.Q().SetAgentLastUpdate(ctx, serverID, string(b), at); err != nil {
			return err
		}
		r.s.log.Info("agent update outcome", zap.String("server", serverID), zap.String("update", hello.LastUpdate.ID),
			zap.String("result", hello.LastUpdate.Result), zap.String("from", hello.LastUpdate.From),
			zap.String("to", hello.LastUpdate.To), zap.String("reason", hello.LastUpdate.Reason))
	}
	r.s.wake(serverID)
	if r.s.o.OnAgentConnected != nil {
		r.s.o.OnAgentConnected(serverID)
	}
	return nil
}

// Disconnected implements hub.Registry: an online server goes offline,
// unless its agent is already back on another control plane (the
// session's holder moved: store.EndAgentSession).
func (r *Registry) Disconnected(ctx context.Context, serverID string, at time.Time) error {
	_, err := r.s.store.Q().EndAgentSession(ctx, serverID, at)
	return err
}

// AgentError implements hub.ErrorRecorder: the server's last agent error,
// named by agent_offline (controlplane/reconcile).
func (r *Registry) AgentError(ctx context.Context, serverID, reason string, _ time.Time) error {
	return r.s.store.Q().SetAgentLastError(ctx, serverID, reason)
}

// SaveHealth implements hub.Registry: each server's latest health, and a
// point in its history bucket, in batched transactions
// (store.SaveHealthBatch); then history older than the retention is pruned.
// A server whose previous flush already wrote its current bucket only
// gets its latest health written (at 30 s flushes and 1 min buckets that
// halves the history writes: the bucket keeps one sample).
//
// With two or more flushes per bucket, half of the servers (laterHalf)
// take their bucket's point from a sample in the bucket's second half, so
// each flush of a bucket writes half of the history instead of the first
// writing all of it and the next none (at 100,000 servers on PostgreSQL
// that flush was 1.2 s, the others 0.5–0.6 s). A server of that half
// whose agent falls silent in the first half of a bucket has no point in
// it (its latest health still has the last sample).
func (r *Registry) SaveHealth(ctx context.Context, latest map[string]hub.HealthSample) error {
	res := r.s.o.HealthResolution
	spread := r.s.o.HealthFlushInterval <= res/2
	r.s.hmu.Lock()
	written := r.s.healthBuckets
	r.s.hmu.Unlock()
	buckets := make(map[string]int64, len(latest))
	rows := make([]store.HealthRow, 0, len(latest))
	for id, h := range latest {
		b, err := json.Marshal(h.Health)
		if err != nil {
			return err
		}
		p := store.HealthPoint{At: h.At, CPUPercent: h.Health.CPUPercent, Load1: h.Health.Load1,
			MemUsedMB: h.Health.MemUsedMB, MemTotalMB: h.Health.MemTotalMB}
		for _, d := range h.Health.Disks {
			if d.Mount == "/" || len(h.Health.Disks) == 1 {
				p.DiskUsedMB, p.DiskTotalMB = d.UsedMB, d.TotalMB
			}
		}
		start := h.At.UTC().Truncate(res)
		bucket := start.UnixNano()
		prev, ok := written[id]
		same := ok && prev == bucket
		if !same && spread && h.At.Sub(start) < res/2 && laterHalf(id) {
			// This bucket's point comes from a later flush.
			same = true
			if ok {
				buckets[id] = prev
			}
		} else {
			buckets[id] = bucket
		}
		rows = append(rows, store.HealthRow{ServerID: id, HealthJSON: string(b), Point: p, SameBucket: same})
	}
	// SaveHealthBatch writes them in id order (row locks taken in one order).
	if err := r.s.store.SaveHealthBatch(ctx, rows, res, 0); err != nil {
		return err // some batches may be saved: the next flush writes their buckets again
	}
	// Only this flush's servers: one that went quiet drops out.
	r.s.hmu.Lock()
	r.s.healthBuckets = buckets
	r.s.hmu.Unlock()
	return r.s.store.Q().PruneHealth(ctx, r.s.now().Add(-r.s.o.HealthRetention))
}

// laterHalf says whether server id is of the half whose history points
// come from the second half of their bucket (an FNV-1a hash of the id).
func laterHalf(id string) bool {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return h.Sum32()&1 == 1
}

// Health history defaults (Options.HealthRetention, HealthResolution).
const (
	DefaultHealthRetention  = 24 * time.Hour
	DefaultHealthResolution = time.Minute
)

// HealthRetention is how long health history is kept.
func (s *Service) HealthRetention() time.Duration { return s.o.HealthRetention }

// HealthSince returns a server's stored health samples since t.
func (s *Service) HealthSince(ctx context.Context, workspaceID, id string, t time.Time) ([]store.HealthPoint, error) {
	if _, err := s.Get(ctx, workspaceID, id); err != nil {
		return nil, err
	}
	return s.store.Q().HealthSince(ctx, id, t)
}
