package provision

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/ids"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/store"
	"github.com/devpilot/devpilot/shared/protocol"
	"github.com/devpilot/devpilot/shared/release"
)

// Lifecycle actions (issue 11): a durable job per action, recorded in
// server_actions. Every step is saved before it runs (running) and after
// (done, with the cloud action it started); a cloud step saves the
// ActionRef the provider returned before anything waits on it, so a
// control plane that restarts waits for that same cloud action and never
// starts a second one. A step found "running" without a ref after a crash
// (killed between the cloud call and the save) is adopted from the cloud
// when the cloud can tell (DigitalOcean: the droplet's newest action of
// that type; Vultr: the instance already in the wanted power state), and
// only otherwise repeated.
//
// Server states the actions set: stopped after power_off; offline at the
// start of power_on (the agent's reconnect turns it online).

// StateStopped is a server whose instance is powered off.
const StateStopped = "stopped"

// Action step names.
const (
	ActStepPreflight = "preflight"
	ActStepShutdown  = "shutdown" // graceful shutdown (cloud)
	ActStepWaitShut  = "wait_shutdown"
	ActStepPowerOff  = "power_off" // hard power off (cloud); skipped when already off
	ActStepWaitOff   = "wait_off"
	ActStepPowerOn   = "power_on"
	ActStepWaitOn    = "wait_on"
	ActStepReboot    = "reboot" // asks the agent (graceful), else the cloud's reboot; hard: power_cycle
	ActStepWaitBoot  = "wait_reboot"
	ActStepResize    = "resize"
	ActStepWaitSize  = "wait_resize"
	ActStepFirewall  = "firewall"
	ActStepRename    = "rename"
	ActStepWaitName  = "wait_rename"
	ActStepWaitAgent = "wait_agent"
	ActStepRecord    = "record" // the new size, ports or name saved in Devpilot
)

// ActionLease is how long a control plane's claim on an action lasts
// without renewal; the job renews it every third of that, so another
// control plane takes a dead one's action over within ActionLease.
var ActionLease = 30 * time.Second

// DefaultAgentRebootTimeout is Options.AgentRebootTimeout's default: how
// long a graceful reboot waits for the agent it asked to come back with a
// new boot before it falls back to the cloud's reboot.
const DefaultAgentRebootTimeout = 5 * time.Minute

// How a reboot was made (actionParams.RebootVia), recorded before it starts.
const (
	rebootViaAgent = "agent"
	rebootViaCloud = "cloud"
)

// ShutdownTimeout is how long power_off waits for a graceful shutdown
// before it powers the instance off.
var ShutdownTimeout = 2 * time.Minute

type actionStep struct {
	Name       string                `json:"name"`
	State      string                `json:"state"`
	StartedAt  *time.Time            `json:"started_at"`
	FinishedAt *time.Time            `json:"finished_at"`
	Error      *apitypes.ErrorDetail `json:"error"`
	Ref        *cloud.ActionRef      `json:"ref,omitempty"`
	Detail     string                `json:"detail,omitempty"`
}

// actionParams is what an action was asked to do, plus what it learnt
// (old_size for resize, old_name for rename, old_ports for ports).
type actionParams struct {
	Hard     bool   `json:"hard,omitempty"`
	Force    bool   `json:"force,omitempty"`
	Size     string `json:"size,omitempty"`
	OldSize  string `json:"old_size,omitempty"`
	Ports    []int  `json:"ports,omitempty"`
	OldPorts []int  `json:"old_ports,omitempty"`
	Name     string `json:"name,omitempty"`
	OldName  string `json:"old_name,omitempty"`
	// update_agent: the release, and the agent's version when it was sent.
	Version     string `json:"version,omitempty"`
	FromVersion string `json:"from_version,omitempty"`
	// Graceful reboot: how (agent or cloud), recorded before asking, so
	// a restarted job never asks twice; the agent's boot id before; and
	// the fallback to the cloud's reboot, with why.
	RebootVia   string `json:"reboot_via,omitempty"`
	AgentBoot   string `json:"agent_boot,omitempty"`
	Fallback    bool   `json:"fallback,omitempty"`
	FallbackWhy string `json:"fallback_why,omitempty"`
}

func (p actionParams) view(typ string) map[string]any {
	m := map[string]any{}
	switch typ {
	case apitypes.ActionReboot:
		m["hard"] = p.Hard
		if p.RebootVia != "" {
			m["via"] = p.RebootVia
		}
		if p.Fallback {
			m["fallback"] = p.FallbackWhy
		}
	case apitypes.ActionPowerOff:
		m["force"] = p.Force
	case apitypes.ActionResize:
		m["size"], m["old_size"] = p.Size, p.OldSize
	case apitypes.ActionPorts:
		m["ports"], m["old_ports"] = p.Ports, p.OldPorts
	case apitypes.ActionRename:
		m["name"], m["old_name"] = p.Name, p.OldName
	case apitypes.ActionUpdateAgent:
		m["version"] = p.Version
		if p.FromVersion != "" {
			m["from_version"] = p.FromVersion
		}
	}
	return m
}

// actionSteps is the plan of an action on a provider.
func actionSteps(typ, provider string, p actionParams) []string {
	switch typ {
	case apitypes.ActionReboot:
		return []string{ActStepReboot, ActStepWaitBoot, ActStepWaitAgent}
	case apitypes.ActionPowerOff:
		if p.Force {
			return []string{ActStepPowerOff, ActStepWaitOff}
		}
		return []string{ActStepShutdown, ActStepWaitShut, ActStepPowerOff, ActStepWaitOff}
	case apitypes.ActionPowerOn:
		return []string{ActStepPowerOn, ActStepWaitOn, ActStepWaitAgent}
	case apitypes.ActionResize:
		if provider == cloud.DigitalOcean {
			return []string{ActStepPreflight, ActStepPowerOff, ActStepWaitOff, ActStepResize, ActStepWaitSize,
				ActStepPowerOn, ActStepWaitOn, ActStepWaitAgent, ActStepRecord}
		}
		return []string{ActStepPreflight, ActStepResize, ActStepWaitSize, ActStepWaitAgent, ActStepRecord}
	case apitypes.ActionPorts:
		return []string{ActStepFirewall, ActStepRecord}
	case apitypes.ActionRename:
		return []string{ActStepRename, ActStepWaitName, ActStepRecord}
	case apitypes.ActionUpdateAgent:
		return []string{ActStepSend, ActStepVerify, ActStepReconnect}
	}
	return nil
}

var serverNameChars = "letters, digits, dots and dashes, starting and ending with a letter or digit"

func validServerName(n string) bool {
	if n == "" || len(n) > 63 {
		return false
	}
	for i, c := range n {
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (c != '-' && c != '.' || i == 0 || i == len(n)-1) {
			return false
		}
	}
	return true
}

// unprocessable is the contract's 422 validation_failed for a request
// whose JSON is fine but whose values are not (the hint names the choices).
func unprocessable(hint, format string, args ...any) *problem.Error {
	e := problem.Validation(hint, format, args...)
	e.Status = 422
	return e
}

// checkAction validates a request at the door and names the valid choices.
func checkAction(req apitypes.ActionRequest) (actionParams, error) {
	var p actionParams
	choices := "Use one of: " + strings.Join(apitypes.ActionTypes, ", ") + "."
	switch req.Type {
	case apitypes.ActionReboot:
		p.Hard = req.Hard
	case apitypes.ActionPowerOff:
		p.Force = req.Force
	case apitypes.ActionPowerOn:
	case apitypes.ActionResize:
		if req.Size == "" {
			return p, unprocessable("Give the size to resize to, e.g. {\"type\":\"resize\",\"size\":\"s-2vcpu-2gb\"}; the integration's catalog lists the sizes.", "resize needs a size")
		}
		p.Size = req.Size
	case apitypes.ActionPorts:
		if len(req.Ports) == 0 || len(req.Ports) > 50 {
			return p, unprocessable("Give 1 to 50 TCP ports, e.g. {\"type\":\"ports\",\"ports\":[22,8080]}.", "ports needs 1 to 50 ports")
		}
		for _, port := range req.Ports {
			if port < 1 || port > 65535 {
				return p, unprocessable("Ports are TCP port numbers from 1 to 65535.", "port %d is out of range", port)
			}
		}
		p.Ports = slices.Clone(req.Ports)
		slices.Sort(p.Ports)
		p.Ports = slices.Compact(p.Ports)
	case apitypes.ActionRename:
		if !validServerName(req.Name) {
			return p, unprocessable("A server name is 1 to 63 "+serverNameChars+".", "name %q is not a valid server name", req.Name)
		}
		p.Name = req.Name
	case apitypes.ActionUpdateAgent:
		if err := release.CheckVersion(req.Version); err != nil {
			return p, unprocessable("Give the agent release to install, e.g. {\"type\":\"update_agent\",\"version\":\"1.4.0\"}; GET /v1/agent-releases lists them.", "%v", err)
		}
		p.Version = req.Version
	default:
		return p, &problem.Error{Status: 422, Code: "validation_failed", Message: fmt.Sprintf("unknown action type %q", req.Type), Hint: choices}
	}
	return p, nil
}

// actionable lists the server states an action may start from.
var actionable = []string{StateOnline, StateOffline, StateStopped, "agent_offline", "unknown"}

// CreateAction validates and records a lifecycle action; its job starts at
// once. A server with an unfinished action answers conflict.
func (s *Service) CreateAction(ctx context.Context, actor, workspaceID, serverID string, req apitypes.ActionRequest) (*apitypes.Action, error) {
	return s.createAction(ctx, ids.New("act"), actor, workspaceID, serverID, req)
}

func (s *Service) createAction(ctx context.Context, id, actor, workspaceID, serverID string, req apitypes.ActionRequest) (*apitypes.Action, error) {
	p, err := checkAction(req)
	if err != nil {
		return nil, err
	}
	srv, err := s.store.Q().GetServer(ctx, workspaceID, serverID)
	if errors.Is(err, store.ErrNotFound) {
		return nil, problem.NotFound("server " + serverID)
	}
	if err != nil {
		return nil, err
	}
	if !slices.Contains(actionable, srv.State) {
		return nil, problem.Conflict("Wait until the server is online, offline or stopped.",
			"server %s is %s; lifecycle actions need it %s", srv.ID, srv.State, strings.Join(actionable, ", "))
	}
	if req.Type == apitypes.ActionUpdateAgent {
		if err := s.checkUpdateAtDoor(srv.State, srv.FactsJSON, srv.ID, p.Version); err != nil {
			return nil, err
		}
	} else if srv.InstanceID == "" || srv.IntegrationID == "" {
		return nil, problem.Conflict("Reconnect the integration this server was created with.", "server %s has no cloud instance Devpilot can reach", srv.ID)
	}
	if req.Type == apitypes.ActionResize {
		if err := s.resizePreflight(ctx, srv, p.Size); err != nil {
			return nil, err
		}
		p.OldSize = srv.Size
	}
	if req.Type == apitypes.ActionRename {
		p.OldName = srv.Name
	}
	if req.Type == apitypes.ActionPorts {
		_ = json.Unmarshal([]byte(srv.PortsJSON), &p.OldPorts)
	}
	now := s.now().UTC()
	var steps []actionStep
	for _, n := range actionSteps(req.Type, srv.Provider, p) {
		steps = append(steps, actionStep{Name: n, State: StepPending})
	}
	pj, _ := json.Marshal(p)
	sj, _ := json.Marshal(steps)
	a := store.ServerAction{ID: id, WorkspaceID: workspaceID, ServerID: srv.ID, Type: req.Type,
		ParamsJSON: string(pj), State: apitypes.ActionQueued, StepsJSON: string(sj), CreatedBy: actor, CreatedAt: now, UpdatedAt: now}
	if err := s.store.Q().CreateAction(ctx, a); errors.Is(err, store.ErrConflict) {
		return nil, problem.Conflict("Wait for it to finish: GET …/servers/"+srv.ID+"/actions lists it.",
			"server %s has an action in progress", srv.ID)
	} else if err != nil {
		return nil, err
	}
	s.poke()
	return actionView(a), nil
}

// resizePreflight checks a size against the integration's catalog.
func (s *Service) resizePreflight(ctx context.Context, srv store.Server, size string) error {
	cat, err := s.integrations.Catalog(ctx, srv.WorkspaceID, srv.IntegrationID, false)
	if err != nil {
		return err
	}
	want, ok := cat.Size(size)
	if !ok {
		var ids []string
		for _, z := range cat.Sizes {
			if slices.Contains(z.Regions, srv.Region) {
				ids = append(ids, z.ID)
			}
		}
		return &problem.Error{Status: 422, Code: "validation_failed", Message: fmt.Sprintf("size %q is not offered", size),
			Hint: "Sizes available in " + srv.Region + ": " + joinMax(ids, 12) + "."}
	}
	if size == srv.Size {
		return &problem.Error{Status: 422, Code: "validation_failed", Message: "the server already has size " + size, Hint: "Choose another size."}
	}
	if !slices.Contains(want.Regions, srv.Region) {
		return &problem.Error{Status: 422, Code: "unavailable", Message: fmt.Sprintf("size %s is not available in %s", size, srv.Region),
			Hint: "It is available in: " + joinMax(want.Regions, 12) + "."}
	}
	if cur, ok := cat.Size(srv.Size); ok && want.DiskGB < cur.DiskGB {
		return &problem.Error{Status: 422, Code: "validation_failed",
			Message: fmt.Sprintf("size %s has a %d GB disk, smaller than the server's %d GB", size, want.DiskGB, cur.DiskGB),
			Hint:    "A disk cannot shrink on " + srv.Provider + "; choose a size with at least " + strconv.Itoa(cur.DiskGB) + " GB."}
	}
	return nil
}

func actionView(a store.ServerAction) *apitypes.Action {
	var p actionParams
	_ = json.Unmarshal([]byte(a.ParamsJSON), &p)
	var steps []actionStep
	_ = json.Unmarshal([]byte(a.StepsJSON), &steps)
	v := &apitypes.Action{ID: a.ID, ServerID: a.ServerID, Type: a.Type, Params: p.view(a.Type), State: a.State,
		Steps: []apitypes.ActionStep{}, CreatedAt: a.CreatedAt, FinishedAt: a.FinishedAt}
	for _, st := range steps {
		v.Steps = append(v.Steps, apitypes.ActionStep{Name: st.Name, State: st.State, StartedAt: st.StartedAt, FinishedAt: st.FinishedAt,
			Error: st.Error, Detail: st.Detail})
	}
	if a.ErrorJSON != "" {
		var e apitypes.ErrorDetail
		if json.Unmarshal([]byte(a.ErrorJSON), &e) == nil {
			v.Error = &e
		}
	}
	return v
}

// GetAction returns one action of a server.
func (s *Service) GetAction(ctx context.Context, workspaceID, serverID, id string) (*apitypes.Action, error) {
	a, err := s.store.Q().GetAction(ctx, workspaceID, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && a.ServerID != serverID) {
		return nil, problem.NotFound("action " + id)
	}
	if err != nil {
		return nil, err
	}
	return actionView(a), nil
}

// ListActions returns a server's actions, newest first: one page of at
// most limit, and the cursor of the next page ("" on the last).
func (s *Service) ListActions(ctx context.Context, workspaceID, serverID, cursor string, limit int) ([]apitypes.Action, string, error) {
	if _, err := s.store.Q().GetServer(ctx, workspaceID, serverID); errors.Is(err, store.ErrNotFound) {
		return nil, "", problem.NotFound("server " + serverID)
	} else if err != nil {
		return nil, "", err
	}
	as, err := s.store.Q().ListActions(ctx, serverID, cursor, limit+1)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(as) > limit {
		as, next = as[:limit], as[limit-1].ID
	}
	out := make([]apitypes.Action, 0, len(as))
	for _, a := range as {
		out = append(out, *actionView(a))
	}
	return out, next, nil
}

// --- the job

// scheduleActions leases and runs every open action no job of this
// process runs yet; the jobs end with jobs.
func (s *Service) scheduleActions(jobs context.Context) {
	open, err := s.store.Q().OpenActions(jobs)
	if err != nil {
		if jobs.Err() == nil {
			s.log.Error("list open actions", zap.Error(err))
		}
		return
	}
	for _, a := range open {
		key := "action:" + a.ID
		s.mu.Lock()
		_, running := s.jobs[key]
		s.mu.Unlock()
		if running {
			continue
		}
		now := s.now()
		ok, err := s.store.Q().LeaseAction(jobs, a.ID, s.owner, now, now.Add(ActionLease))
		if err != nil || !ok {
			continue // another control plane works on it
		}
		ctx, cancel := context.WithCancel(jobs)
		s.mu.Lock()
		s.jobs[key] = cancel
		s.mu.Unlock()
		s.wg.Add(1)
		go func(id string) {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.jobs, key)
				s.mu.Unlock()
				cancel()
			}()
			s.runAction(ctx, id)
		}(a.ID)
	}
}

type actionJob struct {
	s     *Service
	a     store.ServerAction
	p     actionParams
	steps []actionStep
	srv   store.Server
	cloud cloud.Provider
	lc    cloud.Lifecycle
	log   *zap.Logger
}

var errLeaseLost = errors.New("action lease lost to another control plane")

func (s *Service) runAction(ctx context.Context, id string) {
	a, err := s.store.Q().GetAction(ctx, "", id)
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.wg.Add(1)
	go func() { // renew the lease; losing it stops the job
		defer s.wg.Done()
		t := time.NewTicker(ActionLease / 3)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			now := s.now()
			if ok, err := s.store.Q().LeaseAction(ctx, id, s.owner, now, now.Add(ActionLease)); err == nil && !ok {
				cancel()
				return
			}
		}
	}()
	j := &actionJob{s: s, a: a, log: s.log.With(zap.String("action", id), zap.String("server", a.ServerID), zap.String("type", a.Type))}
	_ = json.Unmarshal([]byte(a.ParamsJSON), &j.p)
	_ = json.Unmarshal([]byte(a.StepsJSON), &j.steps)
	if j.a.State == apitypes.ActionQueued {
		j.a.State = apitypes.ActionRunning
		if err := j.save(ctx); err != nil {
			return
		}
	}
	for i := range j.steps {
		if j.steps[i].State == StepDone {
			continue
		}
		if err := j.step(ctx, i); err != nil {
			if errors.Is(err, errLeaseLost) || ctx.Err() != nil {
				return // resumed by whoever holds the lease next
			}
			j.fail(ctx, i, err)
			return
		}
	}
	now := s.now().UTC()
	j.a.State, j.a.FinishedAt = apitypes.ActionSucceeded, &now
	if err := j.save(ctx); err == nil {
		j.log.Info("action succeeded")
		j.s.actionDone(j.a.ID)
	}
}

func (j *actionJob) save(ctx context.Context) error {
	sj, _ := json.Marshal(j.steps)
	pj, _ := json.Marshal(j.p)
	j.a.StepsJSON, j.a.ParamsJSON, j.a.UpdatedAt = string(sj), string(pj), j.s.now().UTC()
	// Fresh context: a final save must land even when ctx is ending.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	now := j.s.now()
	ok, err := j.s.store.Q().LeaseAction(sctx, j.a.ID, j.s.owner, now, now.Add(ActionLease))
	if err == nil && !ok {
		return errLeaseLost
	}
	if err != nil {
		return err
	}
	ok, err = j.s.store.Q().SaveAction(sctx, j.a, j.s.owner)
	if err == nil && !ok {
		return errLeaseLost
	}
	return err
}

func (j *actionJob) fail(ctx context.Context, i int, err error) {
	now := j.s.now().UTC()
	e := stepErrorOf(err)
	j.steps[i].State, j.steps[i].FinishedAt, j.steps[i].Error = StepFailed, &now, e
	b, _ := json.Marshal(e)
	j.a.State, j.a.FinishedAt, j.a.ErrorJSON = apitypes.ActionFailed, &now, string(b)
	if serr := j.save(ctx); serr == nil {
		j.log.Warn("action failed", zap.String("step", j.steps[i].Name), zap.String("code", e.Code))
		j.s.actionDone(j.a.ID)
	}
}

func stepErrorOf(err error) *apitypes.ErrorDetail {
	e := &apitypes.ErrorDetail{Code: string(cloud.CodeProviderError), Message: err.Error()}
	var ce *cloud.Error
	var pe *problem.Error
	switch {
	case errors.As(err, &ce):
		e.Code, e.Message, e.Hint = string(ce.Code), ce.Error(), ce.Hint
	case errors.As(err, &pe):
		e.Code, e.Message, e.Hint = pe.Code, pe.Message, pe.Hint
	case errors.Is(err, context.DeadlineExceeded):
		e.Code, e.Hint = "timeout", "The cloud or the agent did not finish in time; look at the server and try again."
	}
	return e
}

func (j *actionJob) provider(ctx context.Context) error {
	if j.lc != nil {
		return nil
	}
	srv, err := j.s.store.Q().GetServer(ctx, "", j.a.ServerID)
	if err != nil {
		return err
	}
	j.srv = srv
	p, err := j.s.integrations.Provider(ctx, srv.WorkspaceID, srv.IntegrationID)
	if err != nil {
		return err
	}
	lc, ok := p.(cloud.Lifecycle)
	if !ok {
		return problem.Conflict("", "provider %s has no lifecycle actions", p.Name())
	}
	j.cloud, j.lc = p, lc
	return nil
}

// step runs step i: recorded running, run, recorded done.
func (j *actionJob) step(ctx context.Context, i int) error {
	if j.a.Type == apitypes.ActionUpdateAgent {
		// The agent's work, not the cloud's: no provider needed.
		srv, err := j.s.store.Q().GetServer(ctx, "", j.a.ServerID)
		if err != nil {
			return err
		}
		j.srv = srv
	} else if err := j.provider(ctx); err != nil {
		return err
	}
	st := &j.steps[i]
	resumed := st.State == StepRunning
	if !resumed {
		now := j.s.now().UTC()
		st.State, st.StartedAt = StepRunning, &now
		if err := j.save(ctx); err != nil {
			return err
		}
	}
	detail, err := j.do(ctx, i, resumed)
	if err != nil {
		return err
	}
	now := j.s.now().UTC()
	st.State, st.FinishedAt, st.Detail = StepDone, &now, detail
	return j.save(ctx)
}

// cloudStep starts a cloud action once: a ref recorded by an earlier run
// is reused; a step resumed without one is adopted from the cloud when it
// can tell.
func (j *actionJob) cloudStep(ctx context.Context, i int, resumed bool, start func() (cloud.ActionRef, error)) (string, error) {
	st := &j.steps[i]
	if st.Ref != nil {
		return "cloud action " + st.Ref.Type + " " + st.Ref.ID + " (recorded)", nil
	}
	if resumed {
		if r, ok := j.adopt(ctx, st.Name); ok {
			st.Ref = &r
			return "cloud action " + r.Type + " " + r.ID + " (adopted after a restart)", j.save(ctx)
		}
	}
	r, err := start()
	if err != nil {
		return "", err
	}
	st.Ref = &r
	if err := j.save(ctx); err != nil {
		return "", err
	}
	return "cloud action " + r.Type + " " + r.ID, nil
}

// adopt finds the cloud action a crashed run may have started.
func (j *actionJob) adopt(ctx context.Context, name string) (cloud.ActionRef, bool) {
	typ := j.cloudType(name)
	type lister interface {
		ListActions(ctx context.Context, id string) ([]cloud.ActionRef, error)
	}
	if l, ok := j.cloud.(lister); ok {
		refs, err := l.ListActions(ctx, j.srv.InstanceID)
		if err != nil {
			return cloud.ActionRef{}, false
		}
		// Cloud actions recorded by this job or any other of this server's
		// recent actions are not this step's.
		known := map[string]bool{}
		for _, st := range j.steps {
			if st.Ref != nil {
				known[st.Ref.ID] = true
			}
		}
		others, err := j.s.store.Q().ListActions(ctx, j.a.ServerID, "", 100)
		if err != nil {
			return cloud.ActionRef{}, false
		}
		for _, o := range others {
			var steps []actionStep
			_ = json.Unmarshal([]byte(o.StepsJSON), &steps)
			for _, st := range steps {
				if st.Ref != nil {
					known[st.Ref.ID] = true
				}
			}
		}
		var stepStart time.Time
		for _, st := range j.steps {
			if st.Name == name && st.StartedAt != nil {
				stepStart = *st.StartedAt
			}
		}
		for k := len(refs) - 1; k >= 0; k-- {
			// Started no earlier than a minute before the step (clock skew
			// between us and the cloud): an older action of the same type
			// is not this step's.
			recent := refs[k].Started.IsZero() || !refs[k].Started.Before(stepStart.Add(-time.Minute))
			if refs[k].Type == typ && !known[refs[k].ID] && recent && j.newerThanPrevious(refs[k]) {
				return refs[k], true
			}
		}
		return cloud.ActionRef{}, false
	}
	// Vultr: no action ids; the instance's state says whether the power
	// call landed (a reboot cannot be told apart and is repeated).
	in, err := j.cloud.GetInstance(ctx, j.srv.InstanceID)
	if err != nil {
		return cloud.ActionRef{}, false
	}
	switch typ {
	case cloud.PowerShutdown, cloud.PowerOff:
		if in.State == cloud.StateOff {
			return cloud.ActionRef{Provider: j.srv.Provider, Type: typ, Instance: in.ID, Want: cloud.StateOff}, true
		}
	case cloud.PowerOn:
		if in.State == cloud.StateActive {
			return cloud.ActionRef{Provider: j.srv.Provider, Type: typ, Instance: in.ID, Want: cloud.StateActive}, true
		}
	case "resize":
		if in.Size == j.p.Size {
			return cloud.ActionRef{Provider: j.srv.Provider, Type: typ, Instance: in.ID, Want: cloud.StateActive, WantSize: j.p.Size}, true
		}
	case "rename":
		if in.Name == j.p.Name {
			return cloud.ActionRef{Provider: j.srv.Provider, Type: typ, Instance: in.ID}, true
		}
	}
	return cloud.ActionRef{}, false
}

// newerThanPrevious: a DigitalOcean action id is larger than every action
// this job recorded before (ids grow), so an old action of the same type
// is not mistaken for this step's.
func (j *actionJob) newerThanPrevious(r cloud.ActionRef) bool {
	n, _ := strconv.Atoi(r.ID)
	for _, st := range j.steps {
		if st.Ref != nil {
			if m, _ := strconv.Atoi(st.Ref.ID); m >= n {
				return false
			}
		}
	}
	return true
}

func (j *actionJob) cloudType(step string) string {
	switch step {
	case ActStepShutdown:
		return cloud.PowerShutdown
	case ActStepPowerOff:
		return cloud.PowerOff
	case ActStepPowerOn:
		return cloud.PowerOn
	case ActStepReboot:
		if j.p.Hard {
			return cloud.PowerCycle
		}
		return cloud.PowerReboot
	case ActStepWaitBoot: // the fallback of a graceful reboot
		return cloud.PowerReboot
	case ActStepResize:
		return "resize"
	case ActStepRename:
		return "rename"
	}
	return ""
}

// waitPrev waits for the cloud action of step i-1.
func (j *actionJob) waitPrev(ctx context.Context, i int, timeout time.Duration) (string, error) {
	return j.waitRef(ctx, j.steps[i-1], timeout)
}

// waitRef waits for the cloud action step st recorded.
func (j *actionJob) waitRef(ctx context.Context, prev actionStep, timeout time.Duration) (string, error) {
	if prev.Ref == nil {
		return "nothing to wait for", nil
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	st, err := j.s.actionPoller.Wait(wctx, j.lc, j.srv.IntegrationID, *prev.Ref)
	if err != nil {
		return "", err
	}
	if st.State == cloud.ActionErrored {
		return "", &cloud.Error{Code: cloud.CodeProviderError, Provider: j.srv.Provider, Op: prev.Name,
			Message: "the cloud reports the " + prev.Ref.Type + " action errored", Hint: "Look at the instance in the cloud's console, then try again."}
	}
	return prev.Ref.Type + " completed", nil
}

// reboot is the reboot step. Graceful (not hard): when the agent is
// connected and offers reboots (protocol 1.1) it is asked, recorded
// before asking; else the cloud's graceful reboot, and the detail says why.
func (j *actionJob) reboot(ctx context.Context, i int, resumed bool) (string, error) {
	st := &j.steps[i]
	power := func() (cloud.ActionRef, error) { return j.lc.Power(ctx, j.srv.InstanceID, j.cloudType(st.Name)) }
	if j.p.Hard {
		return j.cloudStep(ctx, i, resumed, power)
	}
	switch j.p.RebootVia {
	case rebootViaAgent:
		return "asked the agent to reboot (boot " + j.p.AgentBoot + "; recorded before a restart)", nil
	case rebootViaCloud:
		return j.cloudStep(ctx, i, resumed, power)
	}
	why := "the agent is not connected"
	if j.s.live != nil && j.s.o.AskReboot != nil {
		if l, ok := j.s.live(j.srv.ID); ok && l.Connected {
			why = "the agent does not offer reboots (protocol 1.0); the cloud's graceful reboot"
			if slices.Contains(l.Capabilities, protocol.CapReboot) && l.BootID != "" {
				j.p.RebootVia, j.p.AgentBoot = rebootViaAgent, l.BootID
				if err := j.save(ctx); err != nil {
					return "", err
				}
				if err := j.s.o.AskReboot(ctx, j.srv.ID, j.a.ID); err != nil {
					// Perhaps sent, perhaps not: wait_reboot waits for a new
					// boot and falls back to the cloud's reboot after
					// Options.AgentRebootTimeout.
					return "asking the agent failed (" + err.Error() + "); waiting for it anyway", nil
				}
				return "asked the agent to reboot (boot " + l.BootID + ")", nil
			}
		}
	}
	j.p.RebootVia = rebootViaCloud
	if err := j.save(ctx); err != nil {
		return "", err
	}
	d, err := j.cloudStep(ctx, i, false, power)
	if err != nil {
		return "", err
	}
	return why + ": " + d, nil
}

// waitReboot is the wait_reboot step: for the agent's reboot, until it is
// back with a new boot id (no cloud action), falling back to the cloud's
// reboot after Options.AgentRebootTimeout; else for the cloud's action.
func (j *actionJob) waitReboot(ctx context.Context, i int, resumed bool) (string, error) {
	st := &j.steps[i]
	if j.p.RebootVia != rebootViaAgent {
		return j.waitPrev(ctx, i, j.s.o.StepTimeout)
	}
	fallbackResumed := resumed && j.p.Fallback
	if !j.p.Fallback {
		d, err := j.waitNewBoot(ctx)
		if err == nil || !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
			return d, err
		}
		j.p.Fallback = true
		j.p.FallbackWhy = "the agent did not come back with a new boot within " + j.s.o.AgentRebootTimeout.String()
		if err := j.save(ctx); err != nil {
			return "", err
		}
		j.log.Warn("graceful reboot by the agent timed out; using the cloud's reboot")
	}
	d, err := j.cloudStep(ctx, i, fallbackResumed, func() (cloud.ActionRef, error) {
		return j.lc.Power(ctx, j.srv.InstanceID, cloud.PowerReboot)
	})
	if err != nil {
		return "", err
	}
	w, err := j.waitRef(ctx, *st, j.s.o.StepTimeout)
	if err != nil {
		return "", err
	}
	return j.p.FallbackWhy + "; fell back to the cloud's reboot: " + d + ", " + w, nil
}

// waitNewBoot waits until the agent is connected with a boot id other
// than the one before the reboot; context.DeadlineExceeded after
// AgentRebootTimeout.
func (j *actionJob) waitNewBoot(ctx context.Context) (string, error) {
	wake := j.s.waiter(j.srv.ID)
	deadline := time.NewTimer(j.s.o.AgentRebootTimeout)
	defer deadline.Stop()
	for {
		if l, ok := j.s.live(j.srv.ID); ok && l.Connected && l.BootID != "" && l.BootID != j.p.AgentBoot {
			return "the agent is back with a new boot (" + j.p.AgentBoot + " → " + l.BootID + ")", nil
		}
		t := time.NewTimer(j.s.o.PollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", ctx.Err()
		case <-deadline.C:
			t.Stop()
			return "", context.DeadlineExceeded
		case <-wake:
			t.Stop()
		case <-t.C:
		}
	}
}

func (j *actionJob) do(ctx context.Context, i int, resumed bool) (string, error) {
	st := &j.steps[i]
	id := j.srv.InstanceID
	q := j.s.store.Q()
	switch st.Name {
	case ActStepPreflight:
		in, err := j.cloud.GetInstance(ctx, id)
		if err != nil {
			return "", err
		}
		return "instance " + in.ID + " is " + in.State + ", size " + in.Size, nil
	case ActStepShutdown, ActStepPowerOff, ActStepPowerOn:
		in, err := j.cloud.GetInstance(ctx, id)
		if err != nil {
			return "", err
		}
		if st.Ref == nil && (st.Name != ActStepPowerOn && in.State == cloud.StateOff || st.Name == ActStepPowerOn && in.State == cloud.StateActive) {
			return "skipped: the instance is " + in.State + " already", nil
		}
		if st.Name == ActStepPowerOn {
			// The agent's reconnect turns an offline server online.
			if _, err := q.SetServerState(ctx, j.srv.ID, StateOffline, j.s.now(), StateStopped); err != nil {
				return "", err
			}
		}
		return j.cloudStep(ctx, i, resumed, func() (cloud.ActionRef, error) { return j.lc.Power(ctx, id, j.cloudType(st.Name)) })
	case ActStepReboot:
		return j.reboot(ctx, i, resumed)
	case ActStepWaitBoot:
		return j.waitReboot(ctx, i, resumed)
	case ActStepResize:
		return j.cloudStep(ctx, i, resumed, func() (cloud.ActionRef, error) { return j.lc.Resize(ctx, id, j.p.Size) })
	case ActStepRename:
		return j.cloudStep(ctx, i, resumed, func() (cloud.ActionRef, error) { return j.lc.Rename(ctx, id, j.p.Name) })
	case ActStepWaitShut:
		d, err := j.waitPrev(ctx, i, ShutdownTimeout)
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			return "graceful shutdown did not finish in " + ShutdownTimeout.String() + "; powering off", nil
		}
		return d, err
	case ActStepWaitOff:
		d, err := j.waitPrev(ctx, i, j.s.o.StepTimeout)
		if err != nil {
			return "", err
		}
		if _, err := q.SetServerState(ctx, j.srv.ID, StateStopped, j.s.now(), StateOnline, StateOffline, "agent_offline", "unknown"); err != nil {
			return "", err
		}
		return d, nil
	case ActStepWaitOn, ActStepWaitSize, ActStepWaitName:
		return j.waitPrev(ctx, i, j.s.o.StepTimeout)
	case ActStepWaitAgent:
		return j.waitAgentBack(ctx, *st.StartedAt)
	case ActStepSend:
		return j.sendUpdate(ctx, resumed)
	case ActStepVerify, ActStepReconnect:
		return j.waitUpdate(ctx, st.Name)
	case ActStepFirewall:
		fw := cloud.FirewallSpec{Name: FirewallName(j.srv.ID), Tag: TagServer(j.srv.ID), Ports: j.p.Ports}
		fid, err := j.cloud.EnsureFirewall(ctx, fw)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("firewall %s allows exactly %v", fid, j.p.Ports), nil
	case ActStepRecord:
		now := j.s.now()
		switch j.a.Type {
		case apitypes.ActionResize:
			return "size " + j.p.OldSize + " → " + j.p.Size, q.SetServerSize(ctx, j.srv.ID, j.p.Size, now)
		case apitypes.ActionRename:
			if err := q.SetServerName(ctx, j.srv.ID, j.p.Name, now); errors.Is(err, store.ErrConflict) {
				return "", problem.Conflict("Choose another name.", "another server in the workspace is named %s", j.p.Name)
			} else if err != nil {
				return "", err
			}
			return "name " + j.p.OldName + " → " + j.p.Name, nil
		case apitypes.ActionPorts:
			b, _ := json.Marshal(j.p.Ports)
			return fmt.Sprintf("ports %v → %v", j.p.OldPorts, j.p.Ports), q.SetServerPorts(ctx, j.srv.ID, string(b), now)
		}
	}
	return "", fmt.Errorf("unknown action step %q", st.Name)
}

// waitAgentBack waits until the server's agent is connected and heard
// from after since (the hub's live view: a new session after a reboot or
// power on, or a heartbeat on a session that survived, e.g. a Vultr plan
// change); without a live view, until the stored last_seen_at is.
func (j *actionJob) waitAgentBack(ctx context.Context, since time.Time) (string, error) {
	wake := j.s.waiter(j.srv.ID)
	deadline := time.NewTimer(j.s.o.AgentTimeout)
	defer deadline.Stop()
	for {
		if j.s.live != nil {
			if l, ok := j.s.live(j.srv.ID); ok && l.Connected && l.LastSeen.After(since) {
				return "agent heard from at " + l.LastSeen.UTC().Format(time.RFC3339) + " (session since " + l.Since.UTC().Format(time.RFC3339) + ")", nil
			}
		} else {
			srv, err := j.s.store.Q().GetServer(ctx, "", j.srv.ID)
			if err != nil {
				return "", err
			}
			if srv.State == StateOnline && srv.LastSeenAt != nil && srv.LastSeenAt.After(since) {
				return "agent back at " + srv.LastSeenAt.UTC().Format(time.RFC3339), nil
			}
		}
		t := time.NewTimer(j.s.o.PollInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", ctx.Err()
		case <-deadline.C:
			t.Stop()
			return "", &problem.Error{Status: 504, Code: "timeout", Message: "the agent did not reconnect within " + j.s.o.AgentTimeout.String(),
				Hint: "The instance is up in the cloud; look at the agent on the server (journalctl -u devpilot-agent)."}
		case <-wake:
			t.Stop()
		case <-t.C:
		}
	}
}
