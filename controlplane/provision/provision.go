// Package provision turns a server request into a running, agent-confirmed
// server. The job is durable: every step is recorded in the store before
// and after it runs, a restarted control plane resumes each job at its
// step, and the instance step looks the server's unique tag up before it
// creates anything, so a retry never makes a second instance.
//
// Steps, in order: preflight (catalog and limits) → ssh_key → firewall →
// instance (user-data, tags) → wait_active (running with a public IPv4) →
// wait_agent (the agent enrolled over the hub: the install is confirmed).
// The firewall comes before the instance so a new server never runs
// unprotected, and so Vultr's firewall group can be attached at creation.
package provision

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/hub"
	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/controlplane/integrations"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/shared/protocol"
)

// Server states.
const (
	StateProvisioning = "provisioning"
	StateInstalling   = "installing"
	StateOnline       = "online"
	StateOffline      = "offline"
	StateFailed       = "failed"
	StateDeleting     = "deleting"
	StateDeleted      = "deleted"
	// StateQuarantined is shown (over the stored online/offline state)
	// while two agents used the server's identity key: no sessions, no
	// tasks sent, until `devpilot servers rekey` and a new enrollment.
	StateQuarantined = "quarantined"
)

// States are the states a server can be listed by.
var States = []string{StateProvisioning, StateInstalling, StateOnline, StateOffline, StateFailed, StateDeleting,
	StateDeleted, StateQuarantined}

// Step names and states.
const (
	StepPreflight  = "preflight"
	StepSSHKey     = "ssh_key"
	StepFirewall   = "firewall"
	StepInstance   = "instance"
	StepWaitActive = "wait_active"
	StepWaitAgent  = "wait_agent"

	StepPending = "pending"
	StepRunning = "running"
	StepDone    = "done"
	StepFailed  = "failed"
)

// Steps is the provisioning job, in order.
var Steps = []string{StepPreflight, StepSSHKey, StepFirewall, StepInstance, StepWaitActive, StepWaitAgent}

// DefaultPorts are opened when a request names none.
var DefaultPorts = []int{22, 80, 443}

// Tags every Devpilot server carries.
const TagAll = "devpilot"

// TagWorkspace and TagServer are the per-workspace and per-server tags.
func TagWorkspace(slug string) string { return "devpilot-ws-" + slug }

// TagServer is the tag only this server carries: how a retry finds it.
func TagServer(id string) string { return "devpilot-srv-" + id }

// FirewallName names a server's firewall (DigitalOcean firewall names
// allow letters, digits, dots and dashes only).
func FirewallName(id string) string { return "devpilot-" + strings.ReplaceAll(id, "_", "-") }

// UserDataFunc renders the user-data for a server with its bootstrap token.
type UserDataFunc func(serverID, hostname string, token secrets.Value) ([]byte, error)

// LiveFunc reports what the hub knows of a server's agent right now.
type LiveFunc func(serverID string) (Live, bool)

// Live is the hub's view of an agent session.
type Live struct {
	Connected bool
	Since     time.Time
	LastSeen  time.Time
	Health    *protocol.Health
	// Capabilities and BootID are the session's hello's (protocol 1.1).
	Capabilities []string
	BootID       string
	// AgentVersion is the session's hello's.
	AgentVersion string
}

// Options configure the Service.
type Options struct {
	Store        *store.Store
	Keys         *secrets.Keyring
	Integrations *integrations.Service
	UserData     UserDataFunc
	Live         LiveFunc // nil: no live view
	// LiveOf is Live for a server whose row was just read, for the views
	// of Get and List (active mode answers it from the row, not with a
	// read per server); nil: Live.
	LiveOf func(srv store.Server) (Live, bool)
	// SessionsElsewhere: other active control planes hold agent sessions
	// of this database (active mode), so Start leaves online servers be.
	SessionsElsewhere bool
	Disconnect        func(serverID, code string) // ends an agent session, telling it why (protocol.Err*)
	// AskReboot sends the server's agent a reboot request (protocol 1.1)
	// named id; nil: reboots always use the cloud's.
	AskReboot func(ctx context.Context, serverID, id string) error
	// Releases and SendUpdate serve update_agent (agentupdate.go): the
	// release catalogue, and sending the hub's update message (protocol
	// 1.2); nil: updates are refused with a hint.
	Releases     Releases
	SendUpdate   func(ctx context.Context, serverID string, u protocol.Update) error
	Logger       *zap.Logger
	Now          func() time.Time
	AgentTimeout time.Duration // wait_agent deadline; default 15 min
	TokenTTL     time.Duration // bootstrap token lifetime; default 60 min
	PollInterval time.Duration // wait_active polling; default 5 s
	RetryMin     time.Duration // first retry wait of a transient failure; default 2 s
	StepTimeout  time.Duration // how long a step retries transient failures; default 15 min
	// AgentRebootTimeout: how long a graceful reboot waits for the agent
	// to come back with a new boot before the cloud's reboot; default
	// DefaultAgentRebootTimeout.
	AgentRebootTimeout time.Duration
	// Owner names this control plane in lifecycle action leases; the same
	// control plane restarted (same host, same data dir) takes its own
	// leases back at once, others wait for them to expire. "": random.
	Owner string

	// OnAgentConnected is called after every agent session start (the
	// task service resends what the agent has not acknowledged).
	OnAgentConnected func(serverID string)
	// SessionTakenFrom is called when an agent session starting here
	// took the server's session from holder, another control plane of
	// the database (active mode; remote is the new session's address).
	SessionTakenFrom func(serverID, holder, remote string, at time.Time)
	// OnActionDone is called when a lifecycle action this control plane
	// ran succeeded or failed (a deployment's firewall step waits on it).
	OnActionDone func(actionID string)
	// Diagnose collects what went wrong on a server whose agent did not
	// confirm the install in time (e.g. over SSH); its text is stored and
	// shown with the failed step. nil: no diagnostics.
	Diagnose func(ctx context.Context, t DiagnoseTarget) (string, error)
	// EnrollOverSSH hands a rekey's bootstrap token to the server's agent
	// (over SSH with the workspace key: `devpilot-agent enroll
	// --token-file -`, the token on stdin). nil, or when it fails, the
	// token is answered for the operator to run the command.
	EnrollOverSSH func(ctx context.Context, t DiagnoseTarget, token secrets.Value) error
	// Registerer receives the provisioning metrics; nil keeps them unexported.
	Registerer prometheus.Registerer

	// Health history: points older than HealthRetention are pruned
	// (default DefaultHealthRetention), one point per server per
	// HealthResolution is kept (default DefaultHealthResolution).
	HealthRetention  time.Duration
	HealthResolution time.Duration
	// HealthFlushInterval is how often the hub flushes health
	// (hub.Options.FlushInterval; default hub.DefaultFlushInterval). With
	// two or more flushes per history bucket, the history writes are
	// spread over them (Registry.SaveHealth).
	HealthFlushInterval time.Duration
}

// DiagnoseTarget is what Diagnose needs to reach a server.
type DiagnoseTarget struct {
	ServerID    string
	WorkspaceID string
	PublicIPv4  string
	Signer      func(ctx context.Context) (ssh.Signer, error) // the workspace key
}

// Service creates, watches and deletes servers.
type Service struct {
	store        *store.Store
	keys         *secrets.Keyring
	integrations *integrations.Service
	userData     UserDataFunc
	live         LiveFunc
	disconnect   func(string, string)
	log          *zap.Logger
	now          func() time.Time
	o            Options
	watch        *watcher
	actionPoller *cloud.ActionPoller // one for all lifecycle actions (lifecycle.go)
	owner        string              // this process, as action leases name it
	started      time.Time           // when New ran (agents reconnect after a restart)
	m            *metrics

	// ctx ends the jobs of the current Start (cancel, by Close); both
	// are guarded by mu, since a Start after a Close replaces them.
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan struct{}

	// healthBuckets: the history bucket (unix nanos) the last health
	// flush wrote, by server id (Registry.SaveHealth).
	hmu           sync.Mutex
	healthBuckets map[string]int64

	mu      sync.Mutex
	jobs    map[string]context.CancelFunc // running jobs by server id
	waiters map[string]chan struct{}      // wait_agent waiters by server id
}

// New returns a Service; Start runs its jobs.
func New(o Options) *Service {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.AgentTimeout == 0 {
		o.AgentTimeout = 15 * time.Minute
	}
	if o.HealthRetention <= 0 {
		o.HealthRetention = DefaultHealthRetention
	}
	if o.HealthResolution <= 0 {
		o.HealthResolution = DefaultHealthResolution
	}
	if o.HealthFlushInterval <= 0 {
		o.HealthFlushInterval = hub.DefaultFlushInterval
	}
	if o.TokenTTL == 0 {
		o.TokenTTL = 60 * time.Minute
	}
	if o.PollInterval == 0 {
		o.PollInterval = 5 * time.Second
	}
	if o.RetryMin == 0 {
		o.RetryMin = 2 * time.Second
	}
	if o.StepTimeout == 0 {
		o.StepTimeout = 15 * time.Minute
	}
	if o.AgentRebootTimeout == 0 {
		o.AgentRebootTimeout = DefaultAgentRebootTimeout
	}
	if o.Disconnect == nil {
		o.Disconnect = func(string, string) {}
	}
	s := &Service{store: o.Store, keys: o.Keys, integrations: o.Integrations, userData: o.UserData, live: o.Live,
		disconnect: o.Disconnect, log: o.Logger.Named("provision"), now: o.Now, o: o, started: time.Now(),
		kick: make(chan struct{}, 1), jobs: map[string]context.CancelFunc{}, waiters: map[string]chan struct{}{}}
	s.watch = newWatcher(o.PollInterval, o.Now)
	s.actionPoller = cloud.NewActionPoller(min(o.PollInterval, 2*time.Second))
	s.owner = o.Owner
	if s.owner == "" {
		s.owner = ids.New("cp")
	}
	s.m = newMetrics(o.Registerer)
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// Start marks servers that were online offline (no agent is connected to
// a process that just started; not with Options.SessionsElsewhere), then resumes every unfinished job and
// keeps picking up new ones until Close. It may start again after Close
// (active mode: a control plane that lost the jobs and won them back).
func (s *Service) Start(ctx context.Context) error {
	if s.o.SessionsElsewhere {
		// Active mode: other control planes hold sessions; each ends its
		// own at its start, and a dead one's when its beat stops
		// (controlplane/cluster).
	} else if err := s.store.Q().MarkAllOffline(ctx, s.now()); err != nil {
		return fmt.Errorf("mark servers offline: %w", err)
	}
	s.mu.Lock()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	jobs := s.ctx
	s.mu.Unlock()
	s.wg.Add(1)
	go s.loop(jobs)
	return nil
}

// Close stops every job (they resume at their step on the next Start).
func (s *Service) Close() {
	s.mu.Lock()
	cancel := s.cancel
	s.mu.Unlock()
	cancel()
	s.wg.Wait()
}

func (s *Service) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *Service) loop(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		s.schedule(ctx)
		s.scheduleActions(ctx)
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-t.C:
		}
	}
}

// schedule starts a job for every server that needs one and has none;
// the jobs end with jobs.
func (s *Service) schedule(jobs context.Context) {
	servers, err := s.store.Q().ServersInStates(jobs, StateProvisioning, StateInstalling, StateDeleting)
	if err != nil {
		if jobs.Err() == nil {
			s.log.Error("list servers to work on", zap.Error(err))
		}
		return
	}
	for _, srv := range servers {
		s.mu.Lock()
		_, running := s.jobs[srv.ID]
		if running {
			s.mu.Unlock()
			continue
		}
		ctx, cancel := context.WithCancel(jobs)
		s.jobs[srv.ID] = cancel
		s.mu.Unlock()
		s.wg.Add(1)
		go func(id, state string) {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.jobs, id)
				s.mu.Unlock()
				cancel()
			}()
			if state == StateDeleting {
				s.runDelete(ctx, id)
			} else {
				s.runProvision(ctx, id)
			}
		}(srv.ID, srv.State)
	}
}

// stopJob cancels a server's running job and waits until it is gone.
func (s *Service) stopJob(id string) {
	for {
		s.mu.Lock()
		cancel, ok := s.jobs[id]
		stopped := s.ctx.Done()
		s.mu.Unlock()
		if !ok {
			return
		}
		cancel()
		select {
		case <-time.After(20 * time.Millisecond):
		case <-stopped:
			return
		}
	}
}

// --- requests

// CreateRequest is what `POST …/servers` takes.
type CreateRequest struct {
	IntegrationID string
	Name          string
	Region        string
	Size          string
	Image         string
	Ports         []int
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

func (r *CreateRequest) check() error {
	switch {
	case r.IntegrationID == "":
		return problem.Validation("List integrations with `devpilot integrations list`.", "integration_id is required")
	case !nameRE.MatchString(r.Name):
		return problem.Validation("Use 1-63 lowercase letters, digits and dashes (it becomes the hostname).", "invalid server name %q", r.Name)
	case r.Region == "" || r.Size == "" || r.Image == "":
		return problem.Validation("See `devpilot integrations catalog <id>` for regions, sizes and images.", "region, size and image are required")
	}
	if len(r.Ports) == 0 {
		r.Ports = slices.Clone(DefaultPorts)
	}
	if len(r.Ports) > 20 {
		return problem.Validation("", "at most 20 inbound ports")
	}
	seen := map[int]bool{}
	for _, p := range r.Ports {
		if p < 1 || p > 65535 {
			return problem.Validation("Ports are TCP port numbers from 1 to 65535.", "port %d is not between 1 and 65535", p)
		}
		if seen[p] {
			return problem.Validation("List each port once.", "port %d is listed twice", p)
		}
		seen[p] = true
	}
	sort.Ints(r.Ports)
	return nil
}

// Create records a server and its pending steps and starts its job; it
// answers at once.
func (s *Service) Create(ctx context.Context, actor string, workspaceID string, req CreateRequest) (*Server, error) {
	if err := req.check(); err != nil {
		return nil, err
	}
	in, err := s.integrations.Get(ctx, workspaceID, req.IntegrationID)
	if err != nil {
		return nil, err
	}
	// Checked at the door against the (briefly cached) catalog, so a bad
	// choice is refused now with the valid ones rather than failing at
	// preflight; preflight checks again with a fresh catalog. A provider
	// that cannot answer for now (429, 5xx, network) does not refuse the
	// request: the job's preflight asks again with its retries, as it did
	// before there was a check at the door. A refusal that lasts (a revoked
	// token, no API access) is answered now.
	cat, err := s.integrations.Catalog(ctx, workspaceID, in.ID, false)
	switch {
	case err != nil && cloud.Temporary(err) && ctx.Err() == nil && errors.As(err, new(*cloud.Error)):
		s.log.Info("catalog unavailable at the door; preflight will check the choice",
			zap.String("integration", in.ID), zap.Error(err))
	case err != nil:
		return nil, err
	default:
		if _, _, _, err := CheckChoice(cat, in.Provider, "", req.Region, req.Size, req.Image); err != nil {
			return nil, err
		}
	}
	ports, _ := json.Marshal(req.Ports)
	now := s.now().UTC()
	srv := store.Server{ID: ids.New("srv"), WorkspaceID: workspaceID, IntegrationID: in.ID, Provider: in.Provider,
		Name: req.Name, Region: req.Region, Size: req.Size, Image: req.Image, PortsJSON: string(ports),
		State: StateProvisioning, AgentTimeoutS: int(s.o.AgentTimeout / time.Second), CreatedAt: now, UpdatedAt: now}
	err = s.store.InTx(ctx, func(q *store.Queries) error {
		if err := q.CreateServer(ctx, srv, Steps); err != nil {
			return err
		}
		detail, _ := json.Marshal(map[string]any{"name": req.Name, "provider": in.Provider, "region": req.Region,
			"size": req.Size, "image": req.Image, "ports": req.Ports})
		return q.AddAudit(ctx, store.AuditEntry{WorkspaceID: workspaceID, Actor: actor, Action: "server.create",
			Target: srv.ID, DetailJSON: string(detail), At: now})
	})
	if errors.Is(err, store.ErrConflict) {
		return nil, problem.Conflict("Pick another name, or delete the existing server first.", "a server named %q already exists", req.Name)
	}
	if err != nil {
		return nil, err
	}
	s.log.Info("server requested", zap.String("server", srv.ID), zap.String("provider", in.Provider), zap.String("name", req.Name))
	s.poke()
	return s.Get(ctx, workspaceID, srv.ID)
}

// Delete forgets a server, or with destroy deletes its instance and
// firewall first. Either way its agent session is ended.
func (s *Service) Delete(ctx context.Context, actor, workspaceID, id string, destroy bool) (*Server, error) {
	srv, err := s.store.Q().GetServer(ctx, workspaceID, id)
	if errors.Is(err, store.ErrNotFound) || srv.State == StateDeleted {
		return nil, problem.NotFound("server " + id)
	}
	if err != nil {
		return nil, err
	}
	if destroy && srv.IntegrationID == "" {
		return nil, problem.Conflict("Delete the instance in the provider's console, then delete the server here without destroy.",
			"server %s has no integration any more, so Devpilot cannot destroy its instance", id)
	}
	now := s.now().UTC()
	err = s.store.InTx(ctx, func(q *store.Queries) error {
		if err := q.MarkDeleted(ctx, id, destroy, now); err != nil {
			return err
		}
		return q.AddAudit(ctx, store.AuditEntry{WorkspaceID: workspaceID, Actor: actor, Action: "server.delete",
			Target: id, DetailJSON: fmt.Sprintf(`{"destroy":%t}`, destroy), At: now})
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, problem.Conflict("", "server %s is already being deleted", id)
	}
	if err != nil {
		return nil, err
	}
	// The state changed first, so the scheduler cannot start provisioning
	// again; now stop a job that is running. (One that is inside a create
	// call finishes it; with destroy, the delete job, which starts only
	// after it, finds that instance by the server's tag.)
	s.stopJob(id)
	s.disconnect(id, protocol.ErrServerDeleted)
	s.poke()
	return s.Get(ctx, workspaceID, id)
}

// --- views

// Server is what the API shows of a server.
type Server struct {
	ID            string
	Name          string
	Provider      string
	IntegrationID string
	Region        string
	Size          string
	Image         string
	Ports         []int
	State         string
	StateReason   string
	QuarantinedAt *time.Time
	InstanceID    string
	PublicIPv4    string
	Tags          []string
	Steps         []StepView
	Health        *protocol.Health
	HealthAt      *time.Time
	Agent         AgentView
	Error         *StepError
	Diagnostics   string // collected when the install did not confirm
	CreatedAt     time.Time
	UpdatedAt     time.Time
}

// StepView is one provisioning step.
type StepView struct {
	Name       string
	State      string
	Attempts   int
	StartedAt  *time.Time
	FinishedAt *time.Time
	Error      *StepError
	Detail     string
}

// StepError is a step's failure.
type StepError struct {
	Step    string `json:"step,omitempty"`
	Code    string `json:"code"`
	Message string `json:"message"`
	Hint    string `json:"hint,omitempty"`
}

// AgentView is the agent's side of a server.
type AgentView struct {
	Connected   bool
	Version     string
	InstalledAt *time.Time
	LastSeenAt  *time.Time
	Facts       *protocol.Facts
	// TargetVersion is the workspace's agent target version (its last
	// succeeded rollout's, issue 13); OutsideTarget marks an agent on
	// another release.
	TargetVersion string
	OutsideTarget bool
	// LastUpdate is the agent's last update outcome (hello.last_update);
	// nil before one.
	LastUpdate *LastUpdateView
}

// LastUpdateView is an agent update's outcome and when it was recorded.
type LastUpdateView struct {
	protocol.LastUpdate
	ReportedAt *time.Time
}

func (s *Service) view(ctx context.Context, srv store.Server) (*Server, error) {
	steps, err := s.store.Q().Steps(ctx, srv.ID)
	if err != nil {
		return nil, err
	}
	v := &Server{ID: srv.ID, Name: srv.Name, Provider: srv.Provider, IntegrationID: srv.IntegrationID,
		Region: srv.Region, Size: srv.Size, Image: srv.Image, State: srv.State, InstanceID: srv.InstanceID,
		PublicIPv4: srv.PublicIPv4, Steps: []StepView{}, HealthAt: srv.HealthAt, CreatedAt: srv.CreatedAt, UpdatedAt: srv.UpdatedAt,
		Agent: AgentView{Version: srv.AgentVersion, InstalledAt: srv.InstalledAt, LastSeenAt: srv.LastSeenAt}}
	_ = json.Unmarshal([]byte(srv.PortsJSON), &v.Ports)
	if target, err := s.store.Q().WorkspaceAgentTarget(ctx, srv.WorkspaceID); err == nil && target != "" {
		v.Agent.TargetVersion = target
		v.Agent.OutsideTarget = srv.AgentVersion != "" && releaseOf(srv.AgentVersion) != target
	}
	if ws, err := s.store.Q().WorkspaceByID(ctx, srv.WorkspaceID); err == nil {
		v.Tags = []string{TagAll, TagWorkspace(ws.Slug), TagServer(srv.ID)}
	}
	for _, st := range steps {
		sv := StepView{Name: st.Name, State: st.State, Attempts: st.Attempts, StartedAt: st.StartedAt,
			FinishedAt: st.FinishedAt, Detail: st.Detail}
		if st.ErrorJSON != "" {
			sv.Error = &StepError{}
			_ = json.Unmarshal([]byte(st.ErrorJSON), sv.Error)
		}
		v.Steps = append(v.Steps, sv)
	}
	if srv.ErrorJSON != "" {
		v.Error = &StepError{}
		_ = json.Unmarshal([]byte(srv.ErrorJSON), v.Error)
	}
	switch {
	case len(srv.AgentPublicKey) == 0 && len(srv.RevokedAgentKey) > 0:
		v.StateReason = "rekeyed: waiting for the real agent to enroll with the new bootstrap token " +
			"(on the server: devpilot-agent enroll --token-file FILE); the old identity key is refused"
	case srv.State == StateStopped || srv.State == "agent_offline" || srv.State == "lost" || srv.State == "unknown":
		// Set by the reconciler (controlplane/reconcile) or a power_off action.
		v.StateReason, _ = s.store.Q().ServerStateReason(ctx, srv.ID)
		if v.StateReason == "" && srv.State == StateStopped {
			v.StateReason = "the instance is powered off; start it with a power_on action"
		}
	case srv.QuarantinedAt != nil:
		v.StateReason = srv.QuarantineReason + ". No tasks are sent (queued ones wait) and the key is refused. " +
			"Fix: devpilot servers rekey " + srv.ID + " issues a new bootstrap token for the real agent and revokes the key."
	}
	if srv.QuarantinedAt != nil {
		v.State, v.QuarantinedAt = StateQuarantined, srv.QuarantinedAt
	}
	if srv.State == StateFailed {
		v.Diagnostics, _ = s.store.Q().Diagnostics(ctx, srv.ID)
	}
	if srv.HealthJSON != "" {
		v.Health = &protocol.Health{}
		_ = json.Unmarshal([]byte(srv.HealthJSON), v.Health)
	}
	if srv.AgentLastUpdate != "" {
		lu := &LastUpdateView{ReportedAt: srv.AgentLastUpdateAt}
		if json.Unmarshal([]byte(srv.AgentLastUpdate), &lu.LastUpdate) == nil {
			v.Agent.LastUpdate = lu
		}
	}
	if srv.FactsJSON != "" {
		v.Agent.Facts = &protocol.Facts{}
		_ = json.Unmarshal([]byte(srv.FactsJSON), v.Agent.Facts)
	}
	liveOf := s.o.LiveOf
	if liveOf == nil && s.live != nil {
		liveOf = func(srv store.Server) (Live, bool) { return s.live(srv.ID) }
	}
	if liveOf != nil && srv.State != StateDeleted {
		if l, ok := liveOf(srv); ok {
			v.Agent.Connected = l.Connected
			if l.Health != nil && (v.HealthAt == nil || l.LastSeen.After(*v.HealthAt)) {
				v.Health, v.HealthAt = l.Health, &l.LastSeen
			}
			if v.Agent.LastSeenAt == nil || l.LastSeen.After(*v.Agent.LastSeenAt) {
				v.Agent.LastSeenAt = &l.LastSeen
			}
		}
	}
	return v, nil
}

// Get returns one server.
func (s *Service) Get(ctx context.Context, workspaceID, id string) (*Server, error) {
	srv, err := s.store.Q().GetServer(ctx, workspaceID, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, problem.NotFound("server " + id)
	}
	if err != nil {
		return nil, err
	}
	return s.view(ctx, srv)
}

// List returns a workspace's servers matching f (without a state, not
// the deleted ones), oldest first.
func (s *Service) List(ctx context.Context, workspaceID string, f store.ServerFilter) ([]*Server, error) {
	if f.State != "" && !slices.Contains(States, f.State) {
		return nil, problem.Validation("States: "+strings.Join(States, ", ")+".", "unknown state %q", f.State)
	}
	rows, err := s.store.Q().ServersPage(ctx, workspaceID, f)
	if err != nil {
		return nil, err
	}
	out := make([]*Server, 0, len(rows))
	for _, r := range rows {
		v, err := s.view(ctx, r)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func errorJSON(step string, err error) string {
	e := StepError{Step: step, Code: string(cloud.CodeProviderError), Message: err.Error()}
	var ce *cloud.Error
	var pe *problem.Error
	switch {
	case errors.As(err, &ce):
		e.Code, e.Message, e.Hint = string(ce.Code), ce.Error(), ce.Hint
		if ce.Op == step {
			// The step is named beside the message already (shown as
			// "preflight: digitalocean: …", not "preflight: … preflight: …").
			op := *ce
			op.Op = ""
			e.Message = op.Error()
		}
	case errors.As(err, &pe):
		e.Code, e.Message, e.Hint = pe.Code, pe.Message, pe.Hint
	}
	b, _ := json.Marshal(e)
	return string(b)
}

func joinMax(list []string, n int) string {
	if len(list) > n {
		return strings.Join(list[:n], ", ") + fmt.Sprintf(" and %d more", len(list)-n)
	}
	return strings.Join(list, ", ")
}
