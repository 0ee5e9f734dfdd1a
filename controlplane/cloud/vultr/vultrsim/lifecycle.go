package vultrsim

import (
	"context"
	"net/http"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
)

// Instance power actions (VU:paths./instances/{instance-id}/reboot|start|
// halt.post → 204, reinstall → 202), plan upgrades
// (VU:paths./instances/{instance-id}/upgrades.get) and snapshots
// (VU:paths./snapshots). A power action answers 204 at once and is carried
// out in the background by the Runtime (reboot: PowerOff then PowerOn); the
// instance's power_status shows the outcome. Texts the spec does not give
// are marked UNVERIFIED.

const (
	msgNotRunning = "Unable to process request: server is not running." // UNVERIFIED text
	msgBusy       = "Unable to process request: server is busy."        // UNVERIFIED text
	msgNoSnapshot = "Invalid snapshot ID."                              // UNVERIFIED text
)

type snapshot struct {
	ID          string `json:"id"`
	DateCreated string `json:"date_created"`
	Description string `json:"description"`
	Size        int    `json:"size"`
	Compressed  int    `json:"compressed_size"`
	Status      string `json:"status"`
	OSID        int    `json:"os_id"`
	AppID       int    `json:"app_id"`
}

func (s *Sim) lifecycleRoutes(route func(string, map[string]http.HandlerFunc)) {
	route("/v2/instances/{id}/reboot", map[string]http.HandlerFunc{"POST": s.authed(s.powerAction("reboot"))})
	route("/v2/instances/{id}/start", map[string]http.HandlerFunc{"POST": s.authed(s.powerAction("start"))})
	route("/v2/instances/{id}/halt", map[string]http.HandlerFunc{"POST": s.authed(s.powerAction("halt"))})
	route("/v2/instances/{id}/reinstall", map[string]http.HandlerFunc{"POST": s.authed(s.reinstall)})
	route("/v2/instances/{id}/upgrades", map[string]http.HandlerFunc{"GET": s.authed(s.upgrades)})
	route("/v2/snapshots", map[string]http.HandlerFunc{"GET": s.authed(s.listSnapshots), "POST": s.authed(s.createSnapshot)})
	route("/v2/snapshots/{id}", map[string]http.HandlerFunc{"GET": s.authed(s.getSnapshot), "DELETE": s.authed(s.deleteSnapshot)})
}

// canUpgrade: Vultr offers only plans with at least the current disk
// (VU:paths./instances/{instance-id}/upgrades.get lists upgrades only).
func canUpgrade(from, to plan) bool { return to.Disk >= from.Disk && to.ID != from.ID }

// countAction records an accepted API action. Caller holds mu.
func (s *Sim) countAction(id, typ string) {
	if s.counts == nil {
		s.counts = map[string]map[string]int{}
	}
	if s.counts[id] == nil {
		s.counts[id] = map[string]int{}
	}
	s.counts[id][typ]++
}

// ActionCounts returns how many API actions of each type (create, reboot,
// start, halt, reinstall, plan) the simulator accepted for an instance,
// also after it was deleted. Control-API actions are not counted.
func (s *Sim) ActionCounts(id string) map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for k, v := range s.counts[id] {
		out[k] = v
	}
	return out
}

func (s *Sim) powerAction(typ string) authedHandler {
	return func(w http.ResponseWriter, r *http.Request, c caller) {
		if !requireACL(w, c, aclManageInstance) {
			return
		}
		s.mu.Lock()
		in := s.findInstance(r.PathValue("id"))
		if in == nil {
			s.mu.Unlock()
			notFoundInstance(w)
			return
		}
		if in.Status != "active" || in.busy {
			s.mu.Unlock()
			writeError(w, http.StatusBadRequest, msgBusy)
			return
		}
		if typ == "reboot" && in.PowerStatus == "stopped" {
			s.mu.Unlock()
			writeError(w, http.StatusBadRequest, msgNotRunning)
			return
		}
		s.countAction(in.ID, typ)
		in.busy = true
		if typ != "halt" {
			in.ServerStatus = "installingbooting" // booting until the Runtime is done (UNVERIFIED which value)
		}
		booted := in.bootCalled
		s.wg.Add(1)
		s.mu.Unlock()
		go s.carryOut(in, typ, booted)
		noContent(w)
	}
}

// carryOut runs a power action on the Runtime and records its outcome.
func (s *Sim) carryOut(in *instance, typ string, booted bool) {
	defer s.wg.Done()
	power, _ := s.runtime.(simrun.Power)
	var err error
	if power != nil && booted {
		switch typ {
		case "reboot":
			if err = power.PowerOff(s.ctx, in.ID); err == nil {
				err = power.PowerOn(s.ctx, in.ID)
			}
		case "halt":
			err = power.PowerOff(s.ctx, in.ID)
		case "start":
			err = power.PowerOn(s.ctx, in.ID)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	in.busy = false
	if typ != "halt" {
		in.ServerStatus = "ok"
	}
	if err != nil {
		s.log.Warn("simulated power action failed", zap.String("instance", in.ID), zap.String("type", typ), zap.Error(err))
		return
	}
	switch typ {
	case "halt":
		in.PowerStatus = "stopped"
	case "start", "reboot":
		in.PowerStatus = "running"
	}
}

// reinstall is POST /v2/instances/{id}/reinstall: the disk is wiped and the
// image and user-data run again (202 with the instance, status pending).
func (s *Sim) reinstall(w http.ResponseWriter, r *http.Request, c caller) {
	if !requireACL(w, c, aclManageInstance) {
		return
	}
	var req struct {
		Hostname string `json:"hostname"`
	}
	if r.ContentLength != 0 && !decodeBody(w, r, &req) {
		return
	}
	s.mu.Lock()
	in := s.findInstance(r.PathValue("id"))
	if in == nil {
		s.mu.Unlock()
		notFoundInstance(w)
		return
	}
	if in.Status != "active" || in.busy {
		s.mu.Unlock()
		writeError(w, http.StatusBadRequest, msgBusy)
		return
	}
	s.countAction(in.ID, "reinstall")
	if req.Hostname != "" {
		in.Hostname, in.machine.Hostname = req.Hostname, req.Hostname
	}
	in.Status, in.PowerStatus, in.ServerStatus = "pending", "running", "none"
	oldCancel, oldDone, booted, m := in.cancel, in.done, in.bootCalled, in.machine
	ctx, cancel := context.WithCancel(s.ctx)
	in.cancel, in.done, in.bootCalled = cancel, make(chan struct{}), false
	body := s.instanceView(in, false)
	delay := s.bootDelay
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		oldCancel()
		<-oldDone
		if booted && s.runtime != nil {
			dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			if err := s.runtime.Destroy(dctx, in.ID); err != nil {
				s.log.Warn("reinstall: destroy simulated instance", zap.String("instance", in.ID), zap.Error(err))
			}
			dcancel()
		}
		s.boot(ctx, in, m, delay)
	}()
	writeJSON(w, http.StatusAccepted, map[string]any{"instance": body})
}

func (s *Sim) upgrades(w http.ResponseWriter, r *http.Request, c caller) {
	s.mu.Lock()
	in := s.findInstance(r.PathValue("id"))
	var plans []string
	if in != nil {
		for _, p := range s.plans {
			if slices.Contains(p.Locations, in.Region) && !s.soldOut[in.Region][p.ID] && canUpgrade(in.Plan, p) {
				plans = append(plans, p.ID)
			}
		}
	}
	s.mu.Unlock()
	if in == nil {
		notFoundInstance(w)
		return
	}
	if plans == nil {
		plans = []string{}
	}
	typ := r.URL.Query().Get("type")
	up := map[string]any{}
	if typ == "" || typ == "all" || typ == "plans" {
		up["plans"] = plans
	}
	if typ == "" || typ == "all" || typ == "os" {
		up["os"] = []any{}
	}
	if typ == "" || typ == "all" || typ == "applications" {
		up["applications"] = []any{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"upgrades": up})
}

func (s *Sim) listSnapshots(w http.ResponseWriter, r *http.Request, c caller) {
	s.mu.Lock()
	out := make([]snapshot, 0, len(s.snapshots))
	for _, sn := range s.snapshots {
		out = append(out, *sn)
	}
	s.mu.Unlock()
	writePage(w, r, "snapshots", out)
}

func (s *Sim) createSnapshot(w http.ResponseWriter, r *http.Request, c caller) {
	if !requireACL(w, c, aclManageInstance) {
		return
	}
	var req struct {
		InstanceID  string `json:"instance_id"`
		Description string `json:"description"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.findInstance(req.InstanceID)
	if in == nil {
		writeError(w, http.StatusBadRequest, "Invalid instance ID.") // UNVERIFIED text
		return
	}
	s.countAction(in.ID, "snapshot")
	sn := &snapshot{ID: newUUID(), DateCreated: s.date(s.now()), Description: req.Description,
		Size: in.Plan.Disk << 30, Compressed: in.Plan.Disk << 28, Status: "complete", OSID: in.OS.ID}
	s.snapshots = append(s.snapshots, sn)
	body := *sn
	body.Status = "pending" // the create answer shows it being taken
	writeJSON(w, http.StatusCreated, map[string]any{"snapshot": body})
}

func (s *Sim) getSnapshot(w http.ResponseWriter, r *http.Request, c caller) {
	s.mu.Lock()
	i := slices.IndexFunc(s.snapshots, func(x *snapshot) bool { return x.ID == r.PathValue("id") })
	var body snapshot
	if i >= 0 {
		body = *s.snapshots[i]
	}
	s.mu.Unlock()
	if i < 0 {
		writeError(w, http.StatusNotFound, msgNoSnapshot)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"snapshot": body})
}

func (s *Sim) deleteSnapshot(w http.ResponseWriter, r *http.Request, c caller) {
	if !requireACL(w, c, aclManageInstance) {
		return
	}
	s.mu.Lock()
	n := len(s.snapshots)
	s.snapshots = slices.DeleteFunc(s.snapshots, func(x *snapshot) bool { return x.ID == r.PathValue("id") })
	gone := len(s.snapshots) < n
	s.mu.Unlock()
	if !gone {
		writeError(w, http.StatusNotFound, msgNoSnapshot)
		return
	}
	noContent(w)
}

// --- outside Devpilot (control API) ---

// DeleteOutside deletes an instance as the Vultr portal would: not counted.
func (s *Sim) DeleteOutside(ctx context.Context, id string) bool {
	s.mu.Lock()
	i := slices.IndexFunc(s.instances, func(in *instance) bool { return in.ID == id })
	var in *instance
	if i >= 0 {
		in = s.instances[i]
		s.instances = slices.Delete(s.instances, i, i+1)
	}
	s.mu.Unlock()
	if in == nil {
		return false
	}
	in.cancel()
	<-in.done
	s.mu.Lock()
	booted := in.bootCalled
	s.mu.Unlock()
	if booted && s.runtime != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := s.runtime.Destroy(dctx, id); err != nil {
			s.log.Warn("destroy simulated instance", zap.String("instance", id), zap.Error(err))
		}
	}
	return true
}

// PowerOffOutside halts an instance as the portal (or `poweroff` on it)
// would; the Runtime stops the machine.
func (s *Sim) PowerOffOutside(ctx context.Context, id string) (bool, error) {
	s.mu.Lock()
	in := s.findInstance(id)
	booted := in != nil && in.bootCalled
	s.mu.Unlock()
	if in == nil {
		return false, nil
	}
	if power, ok := s.runtime.(simrun.Power); ok && booted {
		if err := power.PowerOff(ctx, id); err != nil {
			return true, err
		}
	}
	s.mu.Lock()
	in.PowerStatus = "stopped"
	s.mu.Unlock()
	return true, nil
}

// AddRuleOutside adds an inbound TCP rule open to the world (IPv4) to a
// firewall group, as an edit in the portal would.
func (s *Sim) AddRuleOutside(groupID string, port string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.findFirewall(groupID)
	if g == nil {
		return false
	}
	rule, msg := validateRule("v4", "tcp", "0.0.0.0", intPtr(0), port, "", "added outside Devpilot")
	if msg != "" {
		return false
	}
	g.nextRule++
	rule.ID = g.nextRule
	g.Rules = append(g.Rules, &rule)
	g.Modified = s.now()
	return true
}

// UntagOutside removes a tag from an instance, as the portal would.
func (s *Sim) UntagOutside(id, tag string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.findInstance(id)
	if in == nil || !slices.Contains(in.Tags, tag) {
		return false
	}
	in.Tags = slices.DeleteFunc(in.Tags, func(t string) bool { return t == tag })
	return true
}

func intPtr(n int) *int { return &n }
