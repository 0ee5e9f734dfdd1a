package dosim

import (
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

type ruleTarget struct {
	Addresses        []string `json:"addresses,omitempty"`
	DropletIDs       []int    `json:"droplet_ids,omitempty"`
	LoadBalancerUIDs []string `json:"load_balancer_uids,omitempty"`
	KubernetesIDs    []string `json:"kubernetes_ids,omitempty"`
	Tags             []string `json:"tags,omitempty"`
}

func (t *ruleTarget) empty() bool {
	return t == nil || len(t.Addresses)+len(t.DropletIDs)+len(t.LoadBalancerUIDs)+len(t.KubernetesIDs)+len(t.Tags) == 0
}

type fwRule struct {
	Protocol     string      `json:"protocol"`
	Ports        string      `json:"ports"`
	Sources      *ruleTarget `json:"sources,omitempty"`
	Destinations *ruleTarget `json:"destinations,omitempty"`
}

type firewall struct {
	id        string
	name      string
	created   time.Time
	reads     int // answers given; "waiting" only in the create answer
	inbound   []fwRule
	outbound  []fwRule
	dropletID []int
	tags      []string
}

type firewallReq struct {
	Name          string   `json:"name"`
	InboundRules  []fwRule `json:"inbound_rules"`  // JSON null accepted
	OutboundRules []fwRule `json:"outbound_rules"` // JSON null accepted
	DropletIDs    []int    `json:"droplet_ids"`
	Tags          []string `json:"tags"`
}

func (f *firewall) json(status string) map[string]any {
	nn := func(r []fwRule) []fwRule {
		if r == nil {
			return []fwRule{}
		}
		return r
	}
	ids := f.dropletID
	if ids == nil {
		ids = []int{}
	}
	tags := f.tags
	if tags == nil {
		tags = []string{}
	}
	return map[string]any{
		"id": f.id, "name": f.name, "status": status, "created_at": f.created.UTC().Format(time.RFC3339),
		"pending_changes": []any{}, "inbound_rules": nn(f.inbound), "outbound_rules": nn(f.outbound),
		"droplet_ids": ids, "tags": tags,
	}
}

// normPorts checks a rule's ports: one port, a dash range, "0" or "all".
func normPorts(proto, p string) (string, bool) {
	if proto == "icmp" {
		return "0", true
	}
	if p == "0" || p == "all" {
		return "0", true
	}
	lo, hi, isRange := strings.Cut(p, "-")
	a, err := strconv.Atoi(lo)
	if err != nil || a < 1 || a > 65535 {
		return "", false
	}
	if isRange {
		b, err := strconv.Atoi(hi)
		if err != nil || b < a || b > 65535 {
			return "", false
		}
	}
	return p, true
}

// validateFirewall checks a create/update body and canonicalises tag
// names in place. It returns the status and message of the first problem.
// Caller holds s.mu.
func (s *Sim) validateFirewall(req *firewallReq, selfID string) (int, string) {
	if !firewallNameRe.MatchString(req.Name) {
		return http.StatusUnprocessableEntity, "name must be at least 2 characters of letters, numbers, dots and dashes, starting with a letter or number"
	}
	for _, f := range s.firewalls {
		if f.name == req.Name && f.id != selfID {
			return http.StatusConflict, "duplicate name"
		}
	}
	if len(req.InboundRules)+len(req.OutboundRules) == 0 {
		return http.StatusUnprocessableEntity, "must specify at least one inbound or outbound rule"
	}
	checkTags := func(tags []string) (int, string) {
		for i, t := range tags {
			name, ok := s.findTag(t, true)
			if !ok {
				return http.StatusUnprocessableEntity, fmt.Sprintf("tag %q does not exist", t)
			}
			tags[i] = name
		}
		return 0, ""
	}
	checkRules := func(rules []fwRule, inbound bool) (int, string) {
		for i := range rules {
			r := &rules[i]
			switch r.Protocol {
			case "tcp", "udp", "icmp":
			default:
				return http.StatusUnprocessableEntity, "invalid protocol"
			}
			p, ok := normPorts(r.Protocol, r.Ports)
			if !ok {
				return http.StatusUnprocessableEntity, "invalid port range"
			}
			r.Ports = p
			target := r.Destinations
			if inbound {
				target, r.Destinations = r.Sources, nil
			} else {
				r.Sources = nil
			}
			if target.empty() {
				if inbound {
					return http.StatusUnprocessableEntity, "inbound rules must specify sources"
				}
				return http.StatusUnprocessableEntity, "outbound rules must specify destinations"
			}
			for _, a := range target.Addresses {
				if _, err := netip.ParsePrefix(a); err != nil {
					if _, err := netip.ParseAddr(a); err != nil {
						return http.StatusUnprocessableEntity, "invalid address"
					}
				}
			}
			if st, msg := checkTags(target.Tags); st != 0 {
				return st, msg
			}
		}
		return 0, ""
	}
	if st, msg := checkRules(req.InboundRules, true); st != 0 {
		return st, msg
	}
	if st, msg := checkRules(req.OutboundRules, false); st != 0 {
		return st, msg
	}
	for _, id := range req.DropletIDs {
		if s.dropletByID(id) == nil {
			return http.StatusUnprocessableEntity, fmt.Sprintf("droplet %d does not exist", id)
		}
	}
	return checkTags(req.Tags)
}

func (s *Sim) findFirewall(id string) (int, *firewall) {
	for i, f := range s.firewalls {
		if f.id == id {
			return i, f
		}
	}
	return -1, nil
}

func (s *Sim) listFirewalls(c *call) {
	s.mu.Lock()
	out := make([]map[string]any, 0, len(s.firewalls))
	for _, f := range s.firewalls {
		f.reads++
		out = append(out, f.json("succeeded"))
	}
	s.mu.Unlock()
	page, links, m := paginate(c, out)
	c.json(http.StatusOK, map[string]any{"firewalls": page, "links": links, "meta": m})
}

func (s *Sim) createFirewall(c *call) {
	var req firewallReq
	if !c.decode(&req) {
		return
	}
	s.mu.Lock()
	st, msg := s.validateFirewall(&req, "")
	s.mu.Unlock()
	if st != 0 {
		c.fail(st, msg)
		return
	}
	if !c.writeAllowed() {
		return
	}
	s.mu.Lock()
	if st, msg := s.validateFirewall(&req, ""); st != 0 { // state may have moved
		s.mu.Unlock()
		c.fail(st, msg)
		return
	}
	f := &firewall{
		id: uuid.NewString(), name: req.Name, created: s.now(),
		inbound: req.InboundRules, outbound: req.OutboundRules, dropletID: req.DropletIDs, tags: req.Tags,
	}
	s.firewalls = append(s.firewalls, f)
	body := f.json("waiting")
	s.mu.Unlock()
	c.json(http.StatusAccepted, map[string]any{"firewall": body})
}

func (s *Sim) getFirewall(c *call) {
	s.mu.Lock()
	_, f := s.findFirewall(c.r.PathValue("id"))
	var body map[string]any
	if f != nil {
		f.reads++
		body = f.json("succeeded")
	}
	s.mu.Unlock()
	if f == nil {
		c.fail(http.StatusNotFound, "The resource you were accessing could not be found.")
		return
	}
	c.json(http.StatusOK, map[string]any{"firewall": body})
}

func (s *Sim) updateFirewall(c *call) {
	var req firewallReq
	if !c.decode(&req) {
		return
	}
	id := c.r.PathValue("id")
	s.mu.Lock()
	_, f := s.findFirewall(id)
	st, msg := 0, ""
	if f == nil {
		st, msg = http.StatusNotFound, "The resource you were accessing could not be found."
	} else {
		st, msg = s.validateFirewall(&req, id)
	}
	s.mu.Unlock()
	if st != 0 {
		c.fail(st, msg)
		return
	}
	if !c.writeAllowed() {
		return
	}
	s.mu.Lock()
	_, f = s.findFirewall(id)
	if f == nil {
		s.mu.Unlock()
		c.fail(http.StatusNotFound, "The resource you were accessing could not be found.")
		return
	}
	f.name, f.inbound, f.outbound, f.dropletID, f.tags = req.Name, req.InboundRules, req.OutboundRules, req.DropletIDs, req.Tags
	if s.fwUpdates == nil {
		s.fwUpdates = map[string]int{}
	}
	s.fwUpdates[id]++
	body := f.json("succeeded")
	s.mu.Unlock()
	c.json(http.StatusOK, map[string]any{"firewall": body})
}

func (s *Sim) deleteFirewall(c *call) {
	if !c.writeAllowed() {
		return
	}
	s.mu.Lock()
	i, f := s.findFirewall(c.r.PathValue("id"))
	if f != nil {
		s.firewalls = slices.Delete(s.firewalls, i, i+1)
	}
	s.mu.Unlock()
	if f == nil {
		c.fail(http.StatusNotFound, "The resource you were accessing could not be found.")
		return
	}
	c.noContent()
}

func (s *Sim) firewallTags(add bool) func(*call) {
	return func(c *call) {
		var req struct {
			Tags []string `json:"tags"`
		}
		if !c.decode(&req) {
			return
		}
		s.mu.Lock()
		_, f := s.findFirewall(c.r.PathValue("id"))
		st, msg := 0, ""
		if f == nil {
			st, msg = http.StatusNotFound, "The resource you were accessing could not be found."
		} else if len(req.Tags) == 0 {
			st, msg = http.StatusUnprocessableEntity, "tags must not be empty"
		} else {
			for i, t := range req.Tags {
				name, ok := s.findTag(t, true)
				if !ok {
					st, msg = http.StatusUnprocessableEntity, fmt.Sprintf("tag %q does not exist", t)
					break
				}
				req.Tags[i] = name
			}
		}
		s.mu.Unlock()
		if st != 0 {
			c.fail(st, msg)
			return
		}
		if !c.writeAllowed() {
			return
		}
		s.mu.Lock()
		if _, f = s.findFirewall(c.r.PathValue("id")); f != nil {
			for _, t := range req.Tags {
				has := slices.Contains(f.tags, t)
				if add && !has {
					f.tags = append(f.tags, t)
				}
				if !add && has {
					f.tags = slices.DeleteFunc(f.tags, func(x string) bool { return x == t })
				}
			}
		}
		s.mu.Unlock()
		if f == nil {
			c.fail(http.StatusNotFound, "The resource you were accessing could not be found.")
			return
		}
		c.noContent()
	}
}
