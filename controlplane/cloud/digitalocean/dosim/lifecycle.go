package dosim

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
)

// Droplet actions (DO:resources/droplets/dropletActions_post.yml), tag list
// and delete, droplet delete by tag and firewall droplet assignment.
//
// An accepted action answers 201 {"action": {..., "status": "in-progress"}}
// and completes once the Runtime did it (reboot and power_cycle: PowerOff
// then PowerOn; shutdown and power_off: PowerOff; power_on: PowerOn) and the
// action delay passed. While an action is in progress the droplet refuses
// another with 422 "Droplet already has a pending event." Messages the spec
// does not give are marked UNVERIFIED.

// Action types the simulator carries out.
var simActionTypes = []string{"reboot", "power_cycle", "shutdown", "power_off", "power_on", "resize", "rename", "snapshot"}

// Action types the spec lists that the simulator refuses.
var otherActionTypes = []string{"enable_backups", "disable_backups", "change_backup_policy", "restore",
	"password_reset", "rebuild", "change_kernel", "enable_ipv6"}

const msgPending = "Droplet already has a pending event."

type dropletActionReq struct {
	Type string `json:"type"`
	Size string `json:"size"` // resize
	Disk bool   `json:"disk"` // resize
	Name string `json:"name"` // rename, snapshot
}

// countAction records one accepted action of typ on a droplet. Caller
// holds s.mu.
func (s *Sim) countAction(dropletID int, typ string) {
	if s.counts[dropletID] == nil {
		s.counts[dropletID] = map[string]int{}
	}
	s.counts[dropletID][typ]++
}

// ActionCounts returns how many actions of each type (create included) the
// API accepted for a droplet, also after it was deleted. Actions done
// through the control API ("outside Devpilot") are not counted.
func (s *Sim) ActionCounts(dropletID int) map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int{}
	for k, v := range s.counts[dropletID] {
		out[k] = v
	}
	return out
}

// validateAction checks an action against the droplet's state. Caller
// holds s.mu.
func (s *Sim) validateAction(d *droplet, req *dropletActionReq) (int, string) {
	const unproc = http.StatusUnprocessableEntity
	if !slices.Contains(simActionTypes, req.Type) {
		if slices.Contains(otherActionTypes, req.Type) {
			return unproc, fmt.Sprintf("The simulator does not carry out %q actions.", req.Type) // simulator's own refusal
		}
		return http.StatusBadRequest, fmt.Sprintf("%q is not a valid action type", req.Type) // UNVERIFIED text
	}
	if d.pending != nil || d.failed || (!d.off && !s.isActive(d)) {
		return unproc, msgPending
	}
	switch req.Type {
	case "power_on":
		if !d.off {
			return unproc, "Droplet is already powered on." // UNVERIFIED text
		}
	case "shutdown", "power_off":
		if d.off {
			return unproc, "Droplet is already powered off." // UNVERIFIED text
		}
	case "reboot":
		if d.off {
			return unproc, "Droplet is currently off. Power it on to reboot it." // UNVERIFIED text
		}
	case "resize":
		size, ok := findSize(req.Size)
		if !ok {
			return unproc, "You specified an invalid size for Droplet resize." // UNVERIFIED text
		}
		if !d.off {
			return unproc, "Droplet is currently on. Please power it off to run this event." // UNVERIFIED text
		}
		if !slices.Contains(size.Regions, d.region.Slug) || s.faults.soldOut[d.region.Slug][size.Slug] {
			return unproc, "Size is not available in this region."
		}
		if size.Disk < d.size.Disk {
			// A disk cannot shrink (DO:resources/droplets/models/droplet_actions.yml, resize.disk).
			return unproc, "The requested size has a smaller disk than the Droplet; a disk cannot shrink." // UNVERIFIED text
		}
	case "rename":
		if len(req.Name) > 255 || !dropletNameRe.MatchString(req.Name) {
			return unproc, "Only valid hostname characters are allowed. (a-z, A-Z, 0-9, . and -)"
		}
	}
	return 0, ""
}

func (s *Sim) postDropletAction(c *call) {
	var req dropletActionReq
	if !c.decode(&req) {
		return
	}
	id, _ := strconv.Atoi(c.r.PathValue("id"))
	check := func() (*droplet, int, string) {
		d := s.dropletByID(id)
		if d == nil {
			return nil, http.StatusNotFound, "The resource you were accessing could not be found."
		}
		st, msg := s.validateAction(d, &req)
		return d, st, msg
	}
	s.mu.Lock()
	_, st, msg := check()
	s.mu.Unlock()
	if st != 0 {
		c.fail(st, msg)
		return
	}
	if !c.writeAllowed() {
		return
	}
	s.mu.Lock()
	d, st, msg := check()
	if st == 0 && s.closed {
		st, msg = http.StatusServiceUnavailable, "The simulator is shut down."
	}
	if st != 0 {
		s.mu.Unlock()
		c.fail(st, msg)
		return
	}
	now := s.now()
	a := &action{id: s.nextAct, dropletID: d.id, typ: req.Type, region: d.region.Slug, started: now}
	s.nextAct++
	s.actions[a.id] = a
	s.countAction(d.id, req.Type)
	d.pending = a
	s.startAction(d, a, req)
	body := s.actionJSON(a)
	s.mu.Unlock()
	c.json(http.StatusCreated, map[string]any{"action": body})
}

// startAction carries an accepted action out in the background. Caller
// holds s.mu.
func (s *Sim) startAction(d *droplet, a *action, req dropletActionReq) {
	power, _ := s.runtime.(simrun.Power)
	mid := strconv.Itoa(d.id)
	var steps []func(context.Context) error
	if power != nil && d.booted {
		switch req.Type {
		case "reboot", "power_cycle":
			steps = []func(context.Context) error{
				func(ctx context.Context) error { return power.PowerOff(ctx, mid) },
				func(ctx context.Context) error { return power.PowerOn(ctx, mid) },
			}
		case "shutdown", "power_off":
			steps = append(steps, func(ctx context.Context) error { return power.PowerOff(ctx, mid) })
		case "power_on":
			steps = append(steps, func(ctx context.Context) error { return power.PowerOn(ctx, mid) })
		}
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		var err error
		for _, step := range steps {
			if err = step(s.ctx); err != nil {
				break
			}
		}
		s.awaitActionDelay(a.started)
		s.mu.Lock()
		defer s.mu.Unlock()
		a.done, a.doneAt, a.errored = true, s.now(), err != nil
		if d.pending == a {
			d.pending = nil
		}
		if err != nil {
			s.log.Warn("simulated droplet action failed", zap.Int("droplet", d.id), zap.String("type", a.typ), zap.Error(err))
			return
		}
		switch req.Type {
		case "shutdown", "power_off":
			d.off = true
		case "power_on", "power_cycle":
			d.off = false
		case "resize":
			if sz, ok := findSize(req.Size); ok {
				d.size = sz
			}
		case "rename":
			d.name = req.Name
		case "snapshot":
			d.snapshotIDs = append(d.snapshotIDs, a.id)
		}
	}()
}

// awaitActionDelay returns once the action delay (as it is now, or as
// SetActionDelay changes it meanwhile) passed since started.
func (s *Sim) awaitActionDelay(started time.Time) {
	for {
		s.mu.Lock()
		left := started.Add(s.faults.actionDelay).Sub(s.now())
		changed := s.delayChanged
		s.mu.Unlock()
		if left <= 0 {
			return
		}
		t := time.NewTimer(left)
		select {
		case <-t.C:
		case <-changed:
			t.Stop()
		case <-s.ctx.Done():
			t.Stop()
			return
		}
	}
}

func (s *Sim) listDropletActions(c *call) {
	id, _ := strconv.Atoi(c.r.PathValue("id"))
	s.mu.Lock()
	d := s.dropletByID(id)
	out := []map[string]any{}
	if d != nil {
		ids := []int{}
		for aid, a := range s.actions {
			if a.dropletID == id {
				ids = append(ids, aid)
			}
		}
		slices.Sort(ids)
		for _, aid := range ids {
			out = append(out, s.actionJSON(s.actions[aid]))
		}
	}
	s.mu.Unlock()
	if d == nil {
		c.fail(http.StatusNotFound, "The resource you were accessing could not be found.")
		return
	}
	page, links, m := paginate(c, out)
	c.json(http.StatusOK, map[string]any{"actions": page, "links": links, "meta": m})
}

func (s *Sim) getDropletAction(c *call) {
	id, _ := strconv.Atoi(c.r.PathValue("id"))
	aid, _ := strconv.Atoi(c.r.PathValue("action"))
	s.mu.Lock()
	a, ok := s.actions[aid]
	ok = ok && a.dropletID == id
	var body map[string]any
	if ok {
		body = s.actionJSON(a)
	}
	s.mu.Unlock()
	if !ok {
		c.fail(http.StatusNotFound, "The resource you were accessing could not be found.")
		return
	}
	c.json(http.StatusOK, map[string]any{"action": body})
}

// --- tags ---

func (s *Sim) listTags(c *call) {
	s.mu.Lock()
	out := make([]map[string]any, 0, len(s.tags))
	for _, t := range s.tags {
		out = append(out, s.tagJSON(c, t))
	}
	s.mu.Unlock()
	page, links, m := paginate(c, out)
	c.json(http.StatusOK, map[string]any{"tags": page, "links": links, "meta": m})
}

// deleteTag removes a tag from the account and from every resource that
// carries it (DO:resources/tags/tags_delete.yml).
func (s *Sim) deleteTag(c *call) {
	if !c.writeAllowed() {
		return
	}
	s.mu.Lock()
	name, ok := s.findTag(c.r.PathValue("name"), false)
	if ok {
		s.dropTag(name)
	}
	s.mu.Unlock()
	if !ok {
		c.fail(http.StatusNotFound, "tag not found")
		return
	}
	c.noContent()
}

// tagResources is POST/DELETE /v2/tags/{name}/resources
// (DO:resources/tags/tags_assign_resources.yml): 204; only droplets are
// simulated.
func (s *Sim) tagResources(add bool) func(*call) {
	return func(c *call) {
		var req struct {
			Resources []struct {
				ID   string `json:"resource_id"`
				Type string `json:"resource_type"`
			} `json:"resources"`
		}
		if !c.decode(&req) {
			return
		}
		check := func() (string, []*droplet, int, string) {
			name, ok := s.findTag(c.r.PathValue("name"), false)
			if !ok {
				return "", nil, http.StatusNotFound, "tag not found"
			}
			if len(req.Resources) == 0 {
				return "", nil, http.StatusBadRequest, "resources must not be empty" // UNVERIFIED text
			}
			var ds []*droplet
			for _, r := range req.Resources {
				id, err := strconv.Atoi(r.ID)
				d := s.dropletByID(id)
				if r.Type != "droplet" || err != nil || d == nil {
					return "", nil, http.StatusNotFound, "The resource you were accessing could not be found."
				}
				ds = append(ds, d)
			}
			return name, ds, 0, ""
		}
		s.mu.Lock()
		_, _, st, msg := check()
		s.mu.Unlock()
		if st != 0 {
			c.fail(st, msg)
			return
		}
		if !c.writeAllowed() {
			return
		}
		s.mu.Lock()
		name, ds, st, msg := check()
		for _, d := range ds {
			has := slices.Contains(d.tags, name)
			if add && !has {
				d.tags = append(d.tags, name)
			}
			if !add && has {
				d.tags = slices.DeleteFunc(d.tags, func(t string) bool { return t == name })
			}
		}
		s.mu.Unlock()
		if st != 0 {
			c.fail(st, msg)
			return
		}
		c.noContent()
	}
}

// dropTag deletes a tag everywhere. Caller holds s.mu.
func (s *Sim) dropTag(name string) {
	s.tags = slices.DeleteFunc(s.tags, func(t string) bool { return t == name })
	for _, d := range s.droplets {
		d.tags = slices.DeleteFunc(d.tags, func(t string) bool { return t == name })
	}
	for _, f := range s.firewalls {
		f.tags = slices.DeleteFunc(f.tags, func(t string) bool { return t == name })
	}
}

// deleteDropletsByTag is DELETE /v2/droplets?tag_name=
// (DO:resources/droplets/droplets_destroy_byTag.yml): 204, also when no
// droplet carries the tag.
func (s *Sim) deleteDropletsByTag(c *call) {
	tag := c.r.URL.Query().Get("tag_name")
	if tag == "" {
		c.fail(http.StatusBadRequest, "tag_name is required to delete droplets in bulk") // UNVERIFIED text
		return
	}
	if !c.writeAllowed() {
		return
	}
	s.mu.Lock()
	var ids []int
	for _, d := range s.droplets {
		if slices.Contains(d.tags, tag) {
			ids = append(ids, d.id)
			s.countAction(d.id, "destroy_by_tag")
		}
	}
	s.mu.Unlock()
	for _, id := range ids {
		s.removeDroplet(c.r.Context(), id)
	}
	c.noContent()
}

// firewallDroplets is POST/DELETE /v2/firewalls/{id}/droplets
// {"droplet_ids": [...]} (DO:resources/firewalls/firewalls_assign_droplets.yml).
func (s *Sim) firewallDroplets(add bool) func(*call) {
	return func(c *call) {
		var req struct {
			DropletIDs []int `json:"droplet_ids"`
		}
		if !c.decode(&req) {
			return
		}
		check := func() (*firewall, int, string) {
			_, f := s.findFirewall(c.r.PathValue("id"))
			if f == nil {
				return nil, http.StatusNotFound, "The resource you were accessing could not be found."
			}
			if len(req.DropletIDs) == 0 {
				return nil, http.StatusBadRequest, "droplet_ids must not be empty" // UNVERIFIED text
			}
			for _, id := range req.DropletIDs {
				if s.dropletByID(id) == nil {
					return nil, http.StatusBadRequest, fmt.Sprintf("droplet %d does not exist", id) // UNVERIFIED text
				}
			}
			return f, 0, ""
		}
		s.mu.Lock()
		_, st, msg := check()
		s.mu.Unlock()
		if st != 0 {
			c.fail(st, msg)
			return
		}
		if !c.writeAllowed() {
			return
		}
		s.mu.Lock()
		f, st, msg := check()
		if st == 0 {
			for _, id := range req.DropletIDs {
				has := slices.Contains(f.dropletID, id)
				if add && !has {
					f.dropletID = append(f.dropletID, id)
				}
				if !add && has {
					f.dropletID = slices.DeleteFunc(f.dropletID, func(x int) bool { return x == id })
				}
			}
		}
		s.mu.Unlock()
		if st != 0 {
			c.fail(st, msg)
			return
		}
		c.noContent()
	}
}

// --- outside Devpilot (control API) ---

// DeleteOutside deletes a droplet as the DigitalOcean control panel would:
// not through the API, not counted. False when there is no such droplet.
func (s *Sim) DeleteOutside(id int) bool {
	return s.removeDroplet(s.ctx, id)
}

// PowerOffOutside powers a droplet off as the control panel (or `poweroff`
// on the droplet) would, with the Runtime stopping the machine. False when
// there is no such droplet.
func (s *Sim) PowerOffOutside(ctx context.Context, id int) (bool, error) {
	s.mu.Lock()
	d := s.dropletByID(id)
	booted := d != nil && d.booted
	s.mu.Unlock()
	if d == nil {
		return false, nil
	}
	if power, ok := s.runtime.(simrun.Power); ok && booted {
		if err := power.PowerOff(ctx, strconv.Itoa(id)); err != nil {
			return true, err
		}
	}
	s.mu.Lock()
	d.off = true
	s.mu.Unlock()
	return true, nil
}

// AddInboundOutside adds an inbound TCP rule (open to the world) to a
// firewall, as an edit in the control panel would. False when there is no
// such firewall.
func (s *Sim) AddInboundOutside(firewallID string, port int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, f := s.findFirewall(firewallID)
	if f == nil {
		return false
	}
	f.inbound = append(f.inbound, fwRule{Protocol: "tcp", Ports: strconv.Itoa(port),
		Sources: &ruleTarget{Addresses: []string{"0.0.0.0/0", "::/0"}}})
	return true
}

// UntagOutside removes a tag from one droplet, as the control panel would.
func (s *Sim) UntagOutside(id int, tag string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.dropletByID(id)
	if d == nil || !slices.Contains(d.tags, tag) {
		return false
	}
	d.tags = slices.DeleteFunc(d.tags, func(t string) bool { return t == tag })
	return true
}
