// Package cluster lets several active control planes serve one PostgreSQL
// database (`devpilot serve --mode active`). Each holds the agent sessions
// that reached it; the database says where every session is held
// (servers.session_holder) and which control planes are alive (their beat
// in control_planes). A message for an agent held elsewhere — a task, a
// cancel, a reboot, an update, a disconnect — goes to its holder as a
// PostgreSQL notification on the holder's channel, and the holder sends it
// on the session.
//
// Notifications are hints: the durable rows stay the truth. A task's row
// says it is queued, so a holder that missed the notification finds it in
// its next sweep (every beat) and sends it then; nothing is lost, only
// delayed. Task rows never travel in a notification (their specs may hold
// secrets): the holder reads and unseals them itself.
package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/hub"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/shared/protocol"
)

// Hub is the local hub's part the cluster uses; *hub.Hub implements it.
type Hub interface {
	Send(ctx context.Context, serverID, typ string, payload any) error
	Status(serverID string) (hub.Status, bool)
	Disconnect(serverID, code string)
	// TakenOver ends the local session of a server that a session on
	// another control plane replaced, counting the takeover.
	TakenOver(serverID, remote string, at time.Time)
}

// Defaults of Options.
const (
	DefaultBeat      = 2 * time.Second
	DefaultDeadAfter = 15 * time.Second
)

// Options configure a Cluster.
type Options struct {
	Store *store.Store // on PostgreSQL; its Self names this control plane
	Hub   Hub
	// Dispatch sends one task to the agent of a server this control plane
	// holds (tasks.Service.Dispatch): a task created on another one, or
	// one the sweep found still queued.
	Dispatch func(serverID, taskID string)
	// Changed is told of a task another control plane changed (new output,
	// a state), so this one's followers wake (tasks.Service.Changed's
	// waiters).
	Changed func(taskID string)
	// Beat is how often this control plane says it is alive and sweeps
	// (DefaultBeat); DeadAfter how long after its last beat another one
	// counts as dead, its sessions over (DefaultDeadAfter).
	Beat, DeadAfter time.Duration
	Logger          *zap.Logger
	Registerer      prometheus.Registerer
	Now             func() time.Time
}

// ErrRouted is Send's answer for a task whose agent another control plane
// holds: the holder was told to send it (and records it sent). It wraps
// hub.ErrNotConnected: the agent is not connected here.
var ErrRouted = fmt.Errorf("%w here: handed to the control plane that holds its session", hub.ErrNotConnected)

// Cluster is this control plane among the others on the database.
type Cluster struct {
	o    Options
	self string
	log  *zap.Logger

	routed   *prometheus.CounterVec
	received *prometheus.CounterVec
	ended    prometheus.Counter
	alive    prometheus.Gauge

	sem chan struct{} // bounds the messages handled at once
	wg  sync.WaitGroup

	cmu     sync.Mutex
	changes map[string]bool // task ids changed here, not yet broadcast
	kick    chan struct{}

	bmu     sync.Mutex
	beats   map[string]time.Time // the control planes' beats as the last beat read them
	stopped bool                 // Run has returned: no more background notifications
}

// Broadcast is the channel every control plane listens on (task changes);
// each also listens on its own (Channel).
const Broadcast = "devpilot_all"

// Channel is control plane id's own notification channel.
func Channel(id string) string { return "devpilot_" + id }

// message is a notification's payload.
type message struct {
	From    string          `json:"from"`
	Kind    string          `json:"kind"` // kindTask, kindSend, kindDisconnect, kindChanged, kindReplaced
	Server  string          `json:"server,omitempty"`
	Task    string          `json:"task,omitempty"`
	Tasks   []string        `json:"tasks,omitempty"`
	Type    string          `json:"type,omitempty"`    // kindSend: the protocol message type
	Payload json.RawMessage `json:"payload,omitempty"` // kindSend: its payload (never a task)
	Code    string          `json:"code,omitempty"`    // kindDisconnect: the close reason
	Remote  string          `json:"remote,omitempty"`  // kindReplaced: the new session's remote address
	At      time.Time       `json:"at,omitzero"`       // kindReplaced: when the new session started
}

const (
	kindTask       = "task"
	kindSend       = "send"
	kindDisconnect = "disconnect"
	kindChanged    = "changed"
	kindReplaced   = "replaced"
)

// New builds a Cluster; Run makes it work.
func New(o Options) *Cluster {
	if o.Beat <= 0 {
		o.Beat = DefaultBeat
	}
	if o.DeadAfter <= 0 {
		o.DeadAfter = DefaultDeadAfter
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	c := &Cluster{o: o, self: o.Store.Self(), log: o.Logger.Named("cluster"), sem: make(chan struct{}, 64),
		changes: map[string]bool{}, kick: make(chan struct{}, 1)}
	c.routed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devpilot_cluster_routed_total",
		Help: "Messages for agents held by another control plane, handed to it, by kind."}, []string{"kind"})
	c.received = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "devpilot_cluster_received_total",
		Help: "Messages another control plane handed this one, by kind."}, []string{"kind"})
	c.ended = prometheus.NewCounter(prometheus.CounterOpts{Name: "devpilot_cluster_dead_sessions_ended_total",
		Help: "Agent sessions of dead control planes this one ended (their servers offline until the agents return)."})
	c.alive = prometheus.NewGauge(prometheus.GaugeOpts{Name: "devpilot_cluster_control_planes",
		Help: "Control planes alive on the database, this one included, at the last beat."})
	self := prometheus.NewGauge(prometheus.GaugeOpts{Name: "devpilot_cluster_self",
		Help:        "1, labelled with this control plane's name in servers.session_holder and control_planes.",
		ConstLabels: prometheus.Labels{"id": c.self}})
	self.Set(1)
	if o.Registerer != nil {
		o.Registerer.MustRegister(c.routed, c.received, c.ended, c.alive, self)
	}
	return c
}

// Join records this control plane's first beat and ends the sessions it
// held before it restarted (and any recorded by no one): call it before
// the hub accepts agents.
func (c *Cluster) Join(ctx context.Context) error {
	now := c.o.Now()
	if err := c.o.Store.Q().BeatControlPlane(ctx, c.self, now); err != nil {
		return fmt.Errorf("cluster: beat: %w", err)
	}
	n, err := c.o.Store.Q().EndSessionsOf(ctx, []string{c.self, ""}, now)
	if err != nil {
		return fmt.Errorf("cluster: end this control plane's old sessions: %w", err)
	}
	c.log.Info("joined the control planes of the database", zap.String("self", c.self), zap.Int("servers_offline", n))
	return nil
}

// Run beats, sweeps and listens until ctx ends; then it leaves (its row is
// deleted, so the others know at once it holds no session).
func (c *Cluster) Run(ctx context.Context) {
	c.wg.Add(2)
	go func() { defer c.wg.Done(); c.listen(ctx) }()
	go func() { defer c.wg.Done(); c.broadcast(ctx) }()
	t := time.NewTicker(c.o.Beat)
	defer t.Stop()
	for {
		c.beat(ctx)
		select {
		case <-ctx.Done():
			c.bmu.Lock()
			c.stopped = true
			c.bmu.Unlock()
			c.wg.Wait()
			lctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := c.o.Store.Q().LeaveControlPlanes(lctx, c.self); err != nil {
				c.log.Warn("leave the control planes", zap.Error(err))
			}
			return
		case <-t.C:
		}
	}
}

// beat says this control plane is alive, ends the sessions of the dead,
// and sends the queued tasks of its own agents that a lost notification
// left behind.
func (c *Cluster) beat(ctx context.Context) {
	now := c.o.Now()
	q := c.o.Store.Q()
	if err := q.BeatControlPlane(ctx, c.self, now); err != nil {
		if ctx.Err() == nil {
			c.log.Warn("beat", zap.Error(err))
		}
		return
	}
	if cps, err := q.ControlPlanes(ctx, now.Add(-c.o.DeadAfter)); err == nil {
		c.alive.Set(float64(len(cps)))
		beats := make(map[string]time.Time, len(cps))
		for _, cp := range cps {
			beats[cp.ID] = cp.BeatAt
		}
		c.bmu.Lock()
		c.beats = beats
		c.bmu.Unlock()
	}
	dead, err := q.DeadHolders(ctx, now.Add(-c.o.DeadAfter))
	if err == nil && len(dead) > 0 {
		n, err := q.EndSessionsOf(ctx, dead, now)
		if err == nil {
			c.ended.Add(float64(n))
			c.log.Info("ended the sessions of control planes that stopped beating",
				zap.Strings("control_planes", dead), zap.Int("servers_offline", n))
		}
	}
	if err != nil && ctx.Err() == nil {
		c.log.Warn("end dead control planes' sessions", zap.Error(err))
	}
	c.sweep(ctx, now.Add(-c.o.Beat))
}

// sweep sends the tasks of this control plane's agents still queued since
// before before.
func (c *Cluster) sweep(ctx context.Context, before time.Time) {
	ts, err := c.o.Store.Q().QueuedTasksHeld(ctx, c.self, before, 1000)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("sweep queued tasks", zap.Error(err))
		}
		return
	}
	for _, t := range ts {
		c.o.Dispatch(t.ServerID, t.ID)
	}
}

// listen handles this control plane's notifications, listening again
// (and sweeping for what it missed) when the connection drops.
func (c *Cluster) listen(ctx context.Context) {
	wait := time.Second
	for ctx.Err() == nil {
		ready := func() { wait = time.Second; c.sweep(ctx, c.o.Now()) }
		err := c.o.Store.ListenMany(ctx, []string{Channel(c.self), Broadcast}, ready, func(payload string) { c.handle(ctx, payload) })
		if ctx.Err() != nil {
			return
		}
		c.log.Warn("listen for other control planes' messages; again shortly", zap.Error(err), zap.Duration("in", wait))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// parse reads a notification's payload: anyone who may connect to the
// database can send one, so it is checked like any input.
func parse(payload string) (message, error) {
	var m message
	if err := json.Unmarshal([]byte(payload), &m); err != nil {
		return m, err
	}
	switch m.Kind {
	case kindChanged:
		return m, nil
	case kindTask:
		if m.Task == "" {
			return m, errors.New("a task message names no task")
		}
	case kindSend:
		if m.Type == "" || m.Type == protocol.TypeTask || len(m.Payload) == 0 {
			return m, fmt.Errorf("a %q message with no payload, or a task's (tasks go by id)", m.Type)
		}
	case kindDisconnect, kindReplaced:
	default:
		return m, fmt.Errorf("unknown message kind %q", m.Kind)
	}
	if m.Server == "" {
		return m, fmt.Errorf("a %s message names no server", m.Kind)
	}
	return m, nil
}

func (c *Cluster) handle(ctx context.Context, payload string) {
	m, err := parse(payload)
	if err != nil {
		c.log.Warn("unreadable message from another control plane", zap.Error(err))
		return
	}
	if m.From == c.self {
		return // our own broadcast
	}
	c.received.WithLabelValues(m.Kind).Inc()
	if m.Kind == kindChanged {
		if c.o.Changed != nil {
			for _, id := range m.Tasks {
				c.o.Changed(id)
			}
		}
		return
	}
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer func() { <-c.sem }()
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		switch m.Kind {
		case kindTask:
			c.o.Dispatch(m.Server, m.Task)
		case kindSend:
			if err := c.o.Hub.Send(sctx, m.Server, m.Type, m.Payload); err != nil {
				c.log.Info("send a message handed over by another control plane", zap.String("server", m.Server),
					zap.String("type", m.Type), zap.String("from", m.From), zap.Error(err))
			}
		case kindDisconnect:
			c.o.Hub.Disconnect(m.Server, m.Code)
		case kindReplaced:
			c.o.Hub.TakenOver(m.Server, m.Remote, m.At)
		}
	}()
}

// holder finds the live control plane holding serverID's session other
// than this one ("" none).
func (c *Cluster) holder(ctx context.Context, serverID string) (store.Session, string, error) {
	s, err := c.o.Store.Q().SessionOf(ctx, serverID, c.o.Now().Add(-c.o.DeadAfter))
	if err != nil {
		return s, "", err
	}
	if !s.Alive || s.Holder == c.self {
		return s, "", nil
	}
	return s, s.Holder, nil
}

func (c *Cluster) notify(ctx context.Context, to string, m message) error {
	m.From = c.self
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := c.o.Store.Q().Notify(ctx, Channel(to), string(b)); err != nil {
		return fmt.Errorf("hand %s for %s to control plane %s: %w", m.Kind, m.Server, to, err)
	}
	c.routed.WithLabelValues(m.Kind).Inc()
	return nil
}

// Send delivers a message to serverID's agent: on this control plane's
// session, or handed to the one holding it. A task is handed over by id
// (ErrRouted: the holder records it sent); any other message with its
// payload (nil: the holder sends it when the notification arrives). With
// no live session anywhere: hub.ErrNotConnected.
func (c *Cluster) Send(ctx context.Context, serverID, typ string, payload any) error {
	err := c.o.Hub.Send(ctx, serverID, typ, payload)
	if !errors.Is(err, hub.ErrNotConnected) {
		return err
	}
	_, to, herr := c.holder(ctx, serverID)
	if herr != nil || to == "" {
		return err
	}
	if typ == protocol.TypeTask {
		t, ok := payload.(protocol.Task)
		if !ok {
			return fmt.Errorf("cluster: a task message carries %T", payload)
		}
		if err := c.notify(ctx, to, message{Kind: kindTask, Server: serverID, Task: t.ID}); err != nil {
			return err
		}
		return ErrRouted
	}
	raw, err := json.Marshal(payload)
	if err != nil {
		return err
	}
	return c.notify(ctx, to, message{Kind: kindSend, Server: serverID, Type: typ, Payload: raw})
}

// Replaced tells holder, which held serverID's agent session until a
// session from remote started here at at, to end its session and count
// the takeover (Hub.TakenOver): two agents with one identity key that
// keep replacing each other on different control planes are quarantined
// as on one. A holder that is this control plane (its hub replaced its
// own session) or not alive by the last beats read is not told. The
// notification goes in the background: the handshake does not wait.
func (c *Cluster) Replaced(serverID, holder, remote string, at time.Time) {
	if holder == "" || holder == c.self {
		return
	}
	c.bmu.Lock()
	beat, ok := c.beats[holder]
	if !ok || !beat.After(c.o.Now().Add(-c.o.DeadAfter)) || c.stopped {
		c.bmu.Unlock()
		return
	}
	c.wg.Add(1)
	c.bmu.Unlock()
	go func() {
		defer c.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.notify(ctx, holder, message{Kind: kindReplaced, Server: serverID, Remote: remote, At: at}); err != nil {
			c.log.Warn("tell the previous holder of a session it was replaced", zap.String("server", serverID),
				zap.String("holder", holder), zap.Error(err))
		}
	}()
}

// Disconnect ends serverID's agent session, here or on its holder.
func (c *Cluster) Disconnect(serverID, code string) {
	if _, ok := c.o.Hub.Status(serverID); ok {
		c.o.Hub.Disconnect(serverID, code)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, to, err := c.holder(ctx, serverID); err == nil && to != "" {
		if err := c.notify(ctx, to, message{Kind: kindDisconnect, Server: serverID, Code: code}); err != nil {
			c.log.Warn("disconnect an agent held elsewhere", zap.String("server", serverID), zap.Error(err))
		}
	}
}

// Status is the hub's Status for a session held here, or what the database
// says of one held by a live control plane elsewhere (ok false: neither).
func (c *Cluster) Status(serverID string) (hub.Status, bool) {
	if st, ok := c.o.Hub.Status(serverID); ok {
		return st, ok
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, to, err := c.holder(ctx, serverID)
	if err != nil || to == "" {
		return hub.Status{}, false
	}
	return remoteStatus(s), true
}

// StatusOf is Status for a server whose row was just read (a page of the
// server list): a session held elsewhere is told from the row (its
// holder, start, hello and latest health) and the holders' beats as this
// control plane's last beat read them, without a database read. A
// holder's beat is up to one beat older here than in the database, so a
// control plane that just died may show its sessions for a beat longer.
func (c *Cluster) StatusOf(srv store.Server) (hub.Status, bool) {
	if st, ok := c.o.Hub.Status(srv.ID); ok {
		return st, ok
	}
	if srv.SessionHolder == "" || srv.SessionHolder == c.self {
		return hub.Status{}, false
	}
	c.bmu.Lock()
	beat, ok := c.beats[srv.SessionHolder]
	c.bmu.Unlock()
	if !ok || !beat.After(c.o.Now().Add(-c.o.DeadAfter)) {
		return hub.Status{}, false
	}
	return remoteStatus(store.Session{Holder: srv.SessionHolder, Since: srv.SessionStartedAt, LastSeen: srv.LastSeenAt,
		AgentVersion: srv.AgentVersion, Capabilities: strings.Fields(srv.AgentCapabilities), FactsJSON: srv.FactsJSON,
		HealthJSON: srv.HealthJSON, Alive: true}), true
}

// remoteStatus is the hub.Status of a session another control plane holds.
func remoteStatus(s store.Session) hub.Status {
	st := hub.Status{Connected: true, AgentVersion: s.AgentVersion, Capabilities: s.Capabilities}
	if s.Since != nil {
		st.Since = *s.Since
	}
	if s.LastSeen != nil {
		st.LastSeen = *s.LastSeen
	}
	var f protocol.Facts
	if json.Unmarshal([]byte(s.FactsJSON), &f) == nil {
		st.BootID = f.BootID
	}
	if s.HealthJSON != "" {
		var h protocol.Health
		if json.Unmarshal([]byte(s.HealthJSON), &h) == nil {
			st.Health = &h
		}
	}
	return st
}

// TaskChanged tells the other control planes that a task changed here, so
// their followers of it wake; changes that come while one notification is
// sent go together in the next, at most every broadcastEvery.
func (c *Cluster) TaskChanged(taskID string) {
	c.cmu.Lock()
	c.changes[taskID] = true
	c.cmu.Unlock()
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// broadcast sends the task changes TaskChanged collected.
func (c *Cluster) broadcast(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		}
		c.cmu.Lock()
		ids := make([]string, 0, len(c.changes))
		for id := range c.changes {
			ids = append(ids, id)
		}
		clear(c.changes)
		c.cmu.Unlock()
		for len(ids) > 0 {
			n := min(len(ids), 200) // 200 ids of ~30 bytes: under the payload limit
			b, _ := json.Marshal(message{From: c.self, Kind: kindChanged, Tasks: ids[:n]})
			if err := c.o.Store.Q().Notify(ctx, Broadcast, string(b)); err != nil && ctx.Err() == nil {
				c.log.Debug("broadcast task changes", zap.Error(err))
			}
			ids = ids[n:]
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(broadcastEvery):
		}
	}
}

// broadcastEvery spaces the task-change notifications: a follower on
// another control plane waits up to this long more for a chunk of output.
const broadcastEvery = 5 * time.Millisecond
