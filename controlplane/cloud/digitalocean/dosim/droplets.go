package dosim

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
)

type droplet struct {
	id       int
	name     string
	region   regionSpec
	size     sizeSpec
	image    imageSpec
	tags     []string
	keys     []string // authorized_keys lines
	userData string
	ip       string
	actionID int
	created  time.Time
	bootAt   time.Time // active from then on, once booted

	off         bool // powered off (by an action or outside Devpilot)
	pending     *action
	snapshotIDs []int

	booted     bool // the Runtime's Boot returned (true at once without a Runtime)
	failed     bool // the Runtime's Boot failed
	cancelBoot context.CancelFunc
	bootDone   chan struct{}
}

type dropletReq struct {
	Name     *string  `json:"name"`
	Names    []string `json:"names"`
	Region   string   `json:"region"`
	Size     string   `json:"size"`
	Image    any      `json:"image"`
	SSHKeys  []any    `json:"ssh_keys"`
	UserData string   `json:"user_data"`
	Tags     []string `json:"tags"`
}

func (s *Sim) dropletByID(id int) *droplet {
	for _, d := range s.droplets {
		if d.id == id {
			return d
		}
	}
	return nil
}

// isActive reports whether d has booted. Caller holds s.mu.
func (s *Sim) isActive(d *droplet) bool {
	return d.booted && !d.failed && !s.now().Before(d.bootAt)
}

// dropletJSON renders a droplet as GET /v2/droplets/{id} does. Caller holds s.mu.
func (s *Sim) dropletJSON(d *droplet) map[string]any {
	status, v4 := "new", []any{}
	switch {
	case d.failed:
		status = "off"
	case d.off || s.isActive(d):
		status = "active"
		if d.off {
			status = "off"
		}
		gw := d.ip[:strings.LastIndexByte(d.ip, '.')] + ".1"
		v4 = append(v4, map[string]any{"ip_address": d.ip, "netmask": "255.255.255.0", "gateway": gw, "type": "public"})
	}
	return map[string]any{
		"id": d.id, "name": d.name, "memory": d.size.Memory, "vcpus": d.size.VCPUs, "disk": d.size.Disk,
		"disk_info": sizeJSON(d.size)["disk_info"], "locked": false, "status": status, "kernel": nil,
		"created_at": d.created.UTC().Format(time.RFC3339), "features": []string{"droplet_agent", "private_networking"},
		"backup_ids": []int{}, "next_backup_window": nil, "snapshot_ids": append([]int{}, d.snapshotIDs...), "image": imageJSON(d.image),
		"volume_ids": []string{}, "size": sizeJSON(d.size), "size_slug": d.size.Slug,
		"networks": map[string]any{"v4": v4, "v6": []any{}}, "region": s.regionJSON(d.region),
		"tags": slices.Clone(d.tags), "vpc_uuid": "760e09ef-dc84-11e8-981e-3cfdfeaae000",
	}
}

// resolveRegion picks the region for a create: an exact slug, a prefix
// ("nyc"), or any live region offering the size when empty.
func (s *Sim) resolveRegion(slug string, size sizeSpec) (regionSpec, bool) {
	if r, ok := findRegion(slug); ok {
		return r, true
	}
	for _, r := range catalogRegions {
		if (slug == "" || strings.HasPrefix(r.Slug, slug)) && r.Available &&
			slices.Contains(size.Regions, r.Slug) && !s.faults.soldOut[r.Slug][size.Slug] {
			return r, true
		}
	}
	return regionSpec{}, false
}

// validateDroplet checks a create body and resolves what it names.
// Caller holds s.mu.
func (s *Sim) validateDroplet(req *dropletReq, d *droplet) (int, string) {
	const unproc = http.StatusUnprocessableEntity
	if req.Name == nil {
		if req.Names != nil {
			return unproc, "creating several droplets with names is not supported by the simulator"
		}
		return unproc, "Name is required"
	}
	if len(*req.Name) > 255 || !dropletNameRe.MatchString(*req.Name) {
		return unproc, "Only valid hostname characters are allowed. (a-z, A-Z, 0-9, . and -)"
	}
	size, ok := findSize(req.Size)
	if !ok {
		return unproc, "You specified an invalid size for Droplet creation."
	}
	image, ok := findImage(req.Image)
	if !ok {
		return unproc, "You specified an invalid image for Droplet creation."
	}
	region, ok := s.resolveRegion(req.Region, size)
	if !ok {
		return unproc, "You specified an invalid region for Droplet creation."
	}
	if !region.Available {
		return unproc, "Region is not available"
	}
	if !slices.Contains(size.Regions, region.Slug) || s.faults.soldOut[region.Slug][size.Slug] {
		return unproc, "Size is not available in this region."
	}
	if len(req.UserData) > MaxUserData {
		return unproc, "user_data may not exceed 64 KiB"
	}
	for _, t := range req.Tags {
		if !validTag(t) {
			return unproc, fmt.Sprintf("tag %q contains invalid characters", t)
		}
	}
	var bad []string
	var keys []string
	for _, ref := range req.SSHKeys {
		var k *sshKey
		switch v := ref.(type) {
		case string:
			_, k = s.findKey(v)
		case float64:
			_, k = s.findKey(strconv.FormatFloat(v, 'f', -1, 64))
		}
		if k == nil {
			bad = append(bad, fmt.Sprint(ref))
			continue
		}
		keys = append(keys, k.PublicKey)
	}
	if len(bad) > 0 {
		return unproc, strings.Join(bad, ", ") + " are invalid key identifiers for Droplet creation."
	}
	*d = droplet{name: *req.Name, region: region, size: size, image: image, keys: keys, userData: req.UserData}
	return 0, ""
}

func (s *Sim) allocIP() string {
	n := s.nextIP % 506
	s.nextIP++
	if n < 253 {
		return fmt.Sprintf("203.0.113.%d", n+2)
	}
	return fmt.Sprintf("192.0.2.%d", n-253+2)
}

func (s *Sim) createDroplet(c *call) {
	var req dropletReq
	if !c.decode(&req) {
		return
	}
	var d droplet
	s.mu.Lock()
	st, msg := s.validateDroplet(&req, &d)
	s.mu.Unlock()
	if st != 0 {
		c.fail(st, msg)
		return
	}
	if !c.writeAllowed() {
		return
	}
	s.mu.Lock()
	if st, msg := s.validateDroplet(&req, &d); st != 0 { // keys may have gone meanwhile
		s.mu.Unlock()
		c.fail(st, msg)
		return
	}
	if len(s.droplets) >= s.account.dropletLimit {
		s.mu.Unlock()
		c.fail(http.StatusUnprocessableEntity, "creating this/these droplet(s) will exceed your droplet limit")
		return
	}
	if s.closed {
		s.mu.Unlock()
		c.error(http.StatusServiceUnavailable, "service_unavailable", "The simulator is shut down.")
		return
	}
	now := s.now()
	d.id, d.ip, d.actionID, d.created, d.bootAt = s.nextDrop, s.allocIP(), s.nextAct, now, now.Add(s.faults.bootDelay)
	s.nextDrop++
	s.nextAct++
	for _, t := range req.Tags {
		name := s.ensureTag(t)
		if !slices.Contains(d.tags, name) {
			d.tags = append(d.tags, name)
		}
	}
	if d.tags == nil {
		d.tags = []string{}
	}
	dp := &d
	s.droplets = append(s.droplets, dp)
	s.actions[d.actionID] = &action{id: d.actionID, dropletID: d.id, typ: "create", region: d.region.Slug, started: now}
	s.countAction(d.id, "create")
	if s.runtime == nil {
		d.booted = true
	} else {
		s.startBoot(dp)
	}
	body := s.dropletJSON(dp)
	body["status"] = "new" // the 202 answer always shows the droplet being created
	body["networks"] = map[string]any{"v4": []any{}, "v6": []any{}}
	actionID := d.actionID
	s.mu.Unlock()

	c.json(http.StatusAccepted, map[string]any{
		"droplet": body,
		"links": map[string]any{"actions": []any{map[string]any{
			"id": actionID, "rel": "create", "href": fmt.Sprintf("http://%s/v2/actions/%d", c.r.Host, actionID),
		}}},
	})
}

// startBoot asks the Runtime to boot d in the background. Caller holds
// s.mu and has checked that the simulator is not closed.
func (s *Sim) startBoot(d *droplet) {
	ctx, cancel := context.WithCancel(s.ctx)
	d.cancelBoot, d.bootDone = cancel, make(chan struct{})
	m := simrun.Machine{
		Provider: cloud.DigitalOcean, ID: strconv.Itoa(d.id), Hostname: d.name, Region: d.region.Slug,
		PublicIPv4: d.ip, Tags: slices.Clone(d.tags), SSHAuthorizedKeys: slices.Clone(d.keys), UserData: []byte(d.userData),
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(d.bootDone)
		defer cancel()
		err := s.runtime.Boot(ctx, m)
		s.mu.Lock()
		defer s.mu.Unlock()
		if err != nil {
			d.failed = true
			if ctx.Err() == nil {
				s.log.Warn("simulated droplet failed to boot", zap.Int("droplet", d.id), zap.Error(err))
			}
			return
		}
		d.booted = true
	}()
}

func (s *Sim) listDroplets(c *call) {
	q := c.r.URL.Query()
	tag, name := q.Get("tag_name"), q.Get("name")
	s.mu.Lock()
	out := []map[string]any{}
	for _, d := range s.droplets {
		if tag != "" && !slices.Contains(d.tags, tag) {
			continue
		}
		if name != "" && d.name != name {
			continue
		}
		out = append(out, s.dropletJSON(d))
	}
	s.mu.Unlock()
	page, links, m := paginate(c, out)
	c.json(http.StatusOK, map[string]any{"droplets": page, "links": links, "meta": m})
}

func (s *Sim) getDroplet(c *call) {
	id, _ := strconv.Atoi(c.r.PathValue("id"))
	s.mu.Lock()
	d := s.dropletByID(id)
	var body map[string]any
	if d != nil {
		body = s.dropletJSON(d)
	}
	s.mu.Unlock()
	if d == nil {
		c.fail(http.StatusNotFound, "The resource you were accessing could not be found.")
		return
	}
	c.json(http.StatusOK, map[string]any{"droplet": body})
}

func (s *Sim) deleteDroplet(c *call) {
	if !c.writeAllowed() {
		return
	}
	id, _ := strconv.Atoi(c.r.PathValue("id"))
	if !s.removeDroplet(c.r.Context(), id) {
		c.fail(http.StatusNotFound, "The resource you were accessing could not be found.")
		return
	}
	c.noContent()
}

// removeDroplet deletes a droplet and destroys what the Runtime runs for
// it; false when there is no such droplet.
func (s *Sim) removeDroplet(ctx context.Context, id int) bool {
	s.mu.Lock()
	d := s.dropletByID(id)
	if d != nil {
		s.droplets = slices.DeleteFunc(s.droplets, func(x *droplet) bool { return x == d })
		for _, f := range s.firewalls {
			f.dropletID = slices.DeleteFunc(f.dropletID, func(x int) bool { return x == id })
		}
	}
	s.mu.Unlock()
	if d == nil {
		return false
	}
	if d.cancelBoot != nil {
		d.cancelBoot()
		<-d.bootDone
		// Destroy even when the request or the simulator is going away:
		// whatever the runtime started must not outlive the droplet.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if err := s.runtime.Destroy(ctx, strconv.Itoa(d.id)); err != nil {
			s.log.Warn("simulated droplet not destroyed cleanly", zap.Int("droplet", d.id), zap.Error(err))
		}
	}
	return true
}
