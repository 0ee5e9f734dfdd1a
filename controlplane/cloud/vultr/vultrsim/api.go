package vultrsim

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
)

// Vultr writes dates as "2020-10-10T01:56:20+00:00".
const dateLayout = "2006-01-02T15:04:05-07:00"

type sshKey struct {
	ID      string
	Name    string
	Key     string
	Created time.Time
}

type firewallGroup struct {
	ID          string
	Description string
	Created     time.Time
	Modified    time.Time
	Rules       []*firewallRule
	nextRule    int
}

type firewallRule struct {
	ID         int    `json:"id"`
	Type       string `json:"type"` // deprecated twin of ip_type, still sent
	IPType     string `json:"ip_type"`
	Action     string `json:"action"`
	Protocol   string `json:"protocol"`
	Port       string `json:"port"`
	Subnet     string `json:"subnet"`
	SubnetSize int    `json:"subnet_size"`
	Source     string `json:"source"`
	Notes      string `json:"notes"`
}

type instance struct {
	ID              string
	Label           string
	Hostname        string
	Region          string
	Plan            plan
	OS              osEntry
	Tags            []string
	SSHKeyIDs       []string
	FirewallGroupID string
	UserData        string // base64, as sent
	Created         time.Time
	Status          string
	PowerStatus     string
	ServerStatus    string
	IP              string // allocated at creation, shown once active
	Password        string
	KVM             string

	cancel     context.CancelFunc
	done       chan struct{}
	bootCalled bool
	machine    simrun.Machine // what Boot was given, for reinstall
	busy       bool           // a power action is being carried out
}

const maxFirewallRules = 50

func (s *Sim) apiMux() http.Handler {
	mux := http.NewServeMux()
	route := func(path string, methods map[string]http.HandlerFunc) {
		for m, h := range methods {
			mux.HandleFunc(m+" "+path, h)
		}
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			writeError(w, http.StatusMethodNotAllowed, "Method not allowed.") // UNVERIFIED text
		})
	}
	route("/v2/account", map[string]http.HandlerFunc{"GET": s.authed(s.getAccount)})
	route("/v2/ssh-keys", map[string]http.HandlerFunc{"GET": s.authed(s.listSSHKeys), "POST": s.authed(s.createSSHKey)})
	route("/v2/ssh-keys/{id}", map[string]http.HandlerFunc{"GET": s.authed(s.getSSHKey), "DELETE": s.authed(s.deleteSSHKey)})
	route("/v2/firewalls", map[string]http.HandlerFunc{"GET": s.authed(s.listFirewalls), "POST": s.authed(s.createFirewall)})
	route("/v2/firewalls/{id}", map[string]http.HandlerFunc{"GET": s.authed(s.getFirewall), "PUT": s.authed(s.updateFirewall), "DELETE": s.authed(s.deleteFirewall)})
	route("/v2/firewalls/{id}/rules", map[string]http.HandlerFunc{"GET": s.authed(s.listRules), "POST": s.authed(s.createRule)})
	route("/v2/firewalls/{id}/rules/{rule}", map[string]http.HandlerFunc{"GET": s.authed(s.getRule), "DELETE": s.authed(s.deleteRule)})
	route("/v2/instances", map[string]http.HandlerFunc{"GET": s.authed(s.listInstances), "POST": s.authed(s.createInstance)})
	route("/v2/instances/{id}", map[string]http.HandlerFunc{"GET": s.authed(s.getInstance), "PATCH": s.authed(s.updateInstance), "DELETE": s.authed(s.deleteInstance)})
	route("/v2/instances/{id}/user-data", map[string]http.HandlerFunc{"GET": s.authed(s.getUserData)})
	s.lifecycleRoutes(route)
	// The catalog needs no key (the spec gives these operations security: []).
	route("/v2/regions", map[string]http.HandlerFunc{"GET": s.listRegions})
	route("/v2/regions/{id}/availability", map[string]http.HandlerFunc{"GET": s.availability})
	route("/v2/plans", map[string]http.HandlerFunc{"GET": s.listPlans})
	route("/v2/os", map[string]http.HandlerFunc{"GET": s.listOS})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "Invalid API endpoint.") // UNVERIFIED text
	})
	return mux
}

type authedHandler func(w http.ResponseWriter, r *http.Request, c caller)

func (s *Sim) authed(h authedHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		c, ok := s.authenticate(w, r)
		if !ok {
			return
		}
		h(w, r, c)
	}
}

// ACLs each write needs. UNVERIFIED: the spec names the ACLs but not which
// operation needs which; these follow the portal's descriptions
// ("provisioning" deploys, "subscriptions" manages existing servers).
const (
	aclCreateInstance = "provisioning"
	aclManageInstance = "subscriptions"
	aclSSHKeys        = "provisioning"
	aclFirewall       = "firewall"
)

func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "Invalid JSON request body.") // UNVERIFIED text
		return false
	}
	return true
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func (s *Sim) date(t time.Time) string { return t.UTC().Format(dateLayout) }

// ---- account ----

func (s *Sim) getAccount(w http.ResponseWriter, r *http.Request, c caller) {
	name, email := c.opts.Name, c.opts.Email
	if name == "" {
		name = "Simulated User"
	}
	if email == "" {
		email = "user@example.com"
	}
	writeJSON(w, http.StatusOK, map[string]any{"account": map[string]any{
		"name":                name,
		"email":               email,
		"acls":                slices.Clone(c.acls()),
		"balance":             -100.55,
		"pending_charges":     60.25,
		"last_payment_date":   s.date(s.now().AddDate(0, -1, 0)),
		"last_payment_amount": -1.25,
	}})
}

// ---- ssh keys ----

func (s *Sim) sshKeyJSON(k *sshKey) map[string]any {
	return map[string]any{"id": k.ID, "date_created": s.date(k.Created), "name": k.Name, "ssh_key": k.Key}
}

func (s *Sim) listSSHKeys(w http.ResponseWriter, r *http.Request, c caller) {
	s.mu.Lock()
	items := make([]map[string]any, len(s.sshKeys))
	for i, k := range s.sshKeys {
		items[i] = s.sshKeyJSON(k)
	}
	s.mu.Unlock()
	writePage(w, r, "ssh_keys", items)
}

func (s *Sim) createSSHKey(w http.ResponseWriter, r *http.Request, c caller) {
	if !requireACL(w, c, aclSSHKeys) {
		return
	}
	var req struct {
		Name   string `json:"name"`
		SSHKey string `json:"ssh_key"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	key := strings.TrimSpace(req.SSHKey)
	if req.Name == "" || key == "" {
		writeError(w, http.StatusBadRequest, "Missing name or ssh_key.") // UNVERIFIED text
		return
	}
	if !validAuthorizedKey(key) {
		writeError(w, http.StatusBadRequest, "Invalid SSH key.") // UNVERIFIED text
		return
	}
	k := &sshKey{ID: newUUID(), Name: req.Name, Key: key, Created: s.now()}
	s.mu.Lock()
	s.sshKeys = append(s.sshKeys, k)
	body := s.sshKeyJSON(k)
	s.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]any{"ssh_key": body})
}

func validAuthorizedKey(k string) bool {
	f := strings.Fields(k)
	if len(f) < 2 || !strings.HasPrefix(f[0], "ssh-") && !strings.HasPrefix(f[0], "ecdsa-") && !strings.HasPrefix(f[0], "sk-") {
		return false
	}
	_, err := base64.StdEncoding.DecodeString(f[1])
	return err == nil
}

func (s *Sim) findSSHKey(id string) int {
	return slices.IndexFunc(s.sshKeys, func(k *sshKey) bool { return k.ID == id })
}

func (s *Sim) getSSHKey(w http.ResponseWriter, r *http.Request, c caller) {
	s.mu.Lock()
	i := s.findSSHKey(r.PathValue("id"))
	var body map[string]any
	if i >= 0 {
		body = s.sshKeyJSON(s.sshKeys[i])
	}
	s.mu.Unlock()
	if i < 0 {
		writeError(w, http.StatusNotFound, "Invalid SSH key ID.") // UNVERIFIED text
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ssh_key": body})
}

func (s *Sim) deleteSSHKey(w http.ResponseWriter, r *http.Request, c caller) {
	if !requireACL(w, c, aclSSHKeys) {
		return
	}
	s.mu.Lock()
	i := s.findSSHKey(r.PathValue("id"))
	if i >= 0 {
		s.sshKeys = slices.Delete(s.sshKeys, i, i+1)
	}
	s.mu.Unlock()
	if i < 0 {
		writeError(w, http.StatusNotFound, "Invalid SSH key ID.") // UNVERIFIED text
		return
	}
	noContent(w)
}

// ---- firewalls ----

// firewallJSON renders a group; caller holds mu.
func (s *Sim) firewallJSON(g *firewallGroup) map[string]any {
	n := 0
	for _, in := range s.instances {
		if in.FirewallGroupID == g.ID {
			n++
		}
	}
	return map[string]any{
		"id": g.ID, "description": g.Description,
		"date_created": s.date(g.Created), "date_modified": s.date(g.Modified),
		"instance_count": n, "rule_count": len(g.Rules), "max_rule_count": maxFirewallRules,
	}
}

func (s *Sim) findFirewall(id string) *firewallGroup {
	i := slices.IndexFunc(s.firewalls, func(g *firewallGroup) bool { return g.ID == id })
	if i < 0 {
		return nil
	}
	return s.firewalls[i]
}

func notFoundFirewall(w http.ResponseWriter) {
	writeError(w, http.StatusNotFound, "Invalid firewall group ID.") // UNVERIFIED text
}

func (s *Sim) listFirewalls(w http.ResponseWriter, r *http.Request, c caller) {
	s.mu.Lock()
	items := make([]map[string]any, len(s.firewalls))
	for i, g := range s.firewalls {
		items[i] = s.firewallJSON(g)
	}
	s.mu.Unlock()
	writePage(w, r, "firewall_groups", items)
}

func (s *Sim) createFirewall(w http.ResponseWriter, r *http.Request, c caller) {
	if !requireACL(w, c, aclFirewall) {
		return
	}
	var req struct {
		Description string `json:"description"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	now := s.now()
	g := &firewallGroup{ID: newUUID(), Description: req.Description, Created: now, Modified: now}
	s.mu.Lock()
	s.firewalls = append(s.firewalls, g)
	body := s.firewallJSON(g)
	s.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]any{"firewall_group": body})
}

func (s *Sim) getFirewall(w http.ResponseWriter, r *http.Request, c caller) {
	s.mu.Lock()
	g := s.findFirewall(r.PathValue("id"))
	var body map[string]any
	if g != nil {
		body = s.firewallJSON(g)
	}
	s.mu.Unlock()
	if g == nil {
		notFoundFirewall(w)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"firewall_group": body})
}

func (s *Sim) updateFirewall(w http.ResponseWriter, r *http.Request, c caller) {
	if !requireACL(w, c, aclFirewall) {
		return
	}
	var req struct {
		Description *string `json:"description"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Description == nil {
		writeError(w, http.StatusBadRequest, "Missing description.") // UNVERIFIED text
		return
	}
	s.mu.Lock()
	g := s.findFirewall(r.PathValue("id"))
	if g != nil {
		g.Description = *req.Description
		g.Modified = s.now()
	}
	s.mu.Unlock()
	if g == nil {
		notFoundFirewall(w)
		return
	}
	noContent(w)
}

func (s *Sim) deleteFirewall(w http.ResponseWriter, r *http.Request, c caller) {
	if !requireACL(w, c, aclFirewall) {
		return
	}
	id := r.PathValue("id")
	s.mu.Lock()
	i := slices.IndexFunc(s.firewalls, func(g *firewallGroup) bool { return g.ID == id })
	if i >= 0 {
		s.firewalls = slices.Delete(s.firewalls, i, i+1)
		// UNVERIFIED: whether Vultr refuses to delete a group still linked
		// to instances; the simulator detaches them.
		for _, in := range s.instances {
			if in.FirewallGroupID == id {
				in.FirewallGroupID = ""
			}
		}
	}
	s.mu.Unlock()
	if i < 0 {
		notFoundFirewall(w)
		return
	}
	noContent(w)
}

func (s *Sim) listRules(w http.ResponseWriter, r *http.Request, c caller) {
	s.mu.Lock()
	g := s.findFirewall(r.PathValue("id"))
	var items []firewallRule
	if g != nil {
		items = make([]firewallRule, len(g.Rules))
		for i, rule := range g.Rules {
			items[i] = *rule
		}
	}
	s.mu.Unlock()
	if g == nil {
		notFoundFirewall(w)
		return
	}
	writePage(w, r, "firewall_rules", items)
}

func (s *Sim) createRule(w http.ResponseWriter, r *http.Request, c caller) {
	if !requireACL(w, c, aclFirewall) {
		return
	}
	var req struct {
		IPType     string `json:"ip_type"`
		Protocol   string `json:"protocol"`
		Subnet     string `json:"subnet"`
		SubnetSize *int   `json:"subnet_size"`
		Port       string `json:"port"`
		Source     string `json:"source"`
		Notes      string `json:"notes"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	rule, msg := validateRule(req.IPType, req.Protocol, req.Subnet, req.SubnetSize, req.Port, req.Source, req.Notes)
	if msg != "" {
		writeError(w, http.StatusBadRequest, msg)
		return
	}
	s.mu.Lock()
	g := s.findFirewall(r.PathValue("id"))
	switch {
	case g == nil:
		s.mu.Unlock()
		notFoundFirewall(w)
		return
	case len(g.Rules) >= maxFirewallRules:
		s.mu.Unlock()
		writeError(w, http.StatusBadRequest, "Firewall group has reached the maximum number of rules.") // UNVERIFIED text
		return
	}
	for _, old := range g.Rules {
		if old.IPType == rule.IPType && old.Protocol == rule.Protocol && old.Port == rule.Port &&
			old.Subnet == rule.Subnet && old.SubnetSize == rule.SubnetSize && old.Source == rule.Source {
			s.mu.Unlock()
			writeError(w, http.StatusBadRequest, "This rule is already defined in the firewall group.") // UNVERIFIED text
			return
		}
	}
	g.nextRule++
	rule.ID = g.nextRule
	g.Rules = append(g.Rules, &rule)
	g.Modified = s.now()
	s.countFirewallChange(g.ID)
	s.mu.Unlock()
	writeJSON(w, http.StatusCreated, map[string]any{"firewall_rule": rule})
}

// validateRule checks a rule the way the spec describes it: v4/v6, one of
// the listed protocols, a subnet of the right family, a port or colon range
// for TCP/UDP only. Error texts are UNVERIFIED.
func validateRule(ipType, protocol, subnet string, size *int, port, source, notes string) (firewallRule, string) {
	if ipType != "v4" && ipType != "v6" {
		return firewallRule{}, "Invalid ip_type. Must be v4 or v6."
	}
	proto := strings.ToLower(protocol)
	switch proto {
	case "icmp", "tcp", "udp", "gre", "esp", "ah":
	default:
		return firewallRule{}, "Invalid protocol."
	}
	if size == nil {
		return firewallRule{}, "Missing subnet_size."
	}
	if source == "" {
		ip := net.ParseIP(subnet)
		if ip == nil || (ipType == "v4") != (ip.To4() != nil) {
			return firewallRule{}, "Invalid subnet for ip_type " + ipType + "."
		}
		bits := 32
		if ipType == "v6" {
			bits = 128
		}
		if *size < 0 || *size > bits {
			return firewallRule{}, "Invalid subnet_size."
		}
	}
	if port != "" {
		if proto != "tcp" && proto != "udp" {
			return firewallRule{}, "Ports may only be set for TCP and UDP rules."
		}
		lo, hi, isRange := strings.Cut(port, ":")
		a, err1 := strconv.Atoi(lo)
		b := a
		var err2 error
		if isRange {
			b, err2 = strconv.Atoi(hi)
		}
		if err1 != nil || err2 != nil || a < 1 || b > 65535 || a > b {
			return firewallRule{}, "Invalid port. Use a port or a colon separated range such as 8000:9000."
		}
	}
	return firewallRule{Type: ipType, IPType: ipType, Action: "accept", Protocol: proto, Port: port,
		Subnet: subnet, SubnetSize: *size, Source: source, Notes: notes}, ""
}

func (s *Sim) ruleByPath(r *http.Request) (*firewallGroup, int, string) {
	g := s.findFirewall(r.PathValue("id"))
	if g == nil {
		return nil, -1, "Invalid firewall group ID."
	}
	id, err := strconv.Atoi(r.PathValue("rule"))
	i := slices.IndexFunc(g.Rules, func(x *firewallRule) bool { return x.ID == id })
	if err != nil || i < 0 {
		return g, -1, "Invalid firewall rule ID." // UNVERIFIED text
	}
	return g, i, ""
}

func (s *Sim) getRule(w http.ResponseWriter, r *http.Request, c caller) {
	s.mu.Lock()
	g, i, msg := s.ruleByPath(r)
	var rule firewallRule
	if msg == "" {
		rule = *g.Rules[i]
	}
	s.mu.Unlock()
	if msg != "" {
		writeError(w, http.StatusNotFound, msg)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"firewall_rule": rule})
}

func (s *Sim) deleteRule(w http.ResponseWriter, r *http.Request, c caller) {
	if !requireACL(w, c, aclFirewall) {
		return
	}
	s.mu.Lock()
	g, i, msg := s.ruleByPath(r)
	if msg == "" {
		g.Rules = slices.Delete(g.Rules, i, i+1)
		g.Modified = s.now()
		s.countFirewallChange(g.ID)
	}
	s.mu.Unlock()
	if msg != "" {
		writeError(w, http.StatusNotFound, msg)
		return
	}
	noContent(w)
}

// ---- instances ----

type instanceJSON struct {
	ID               string   `json:"id"`
	OS               string   `json:"os"`
	RAM              int      `json:"ram"`
	Disk             int      `json:"disk"`
	MainIP           string   `json:"main_ip"`
	VCPUCount        int      `json:"vcpu_count"`
	Region           string   `json:"region"`
	Plan             string   `json:"plan"`
	DateCreated      string   `json:"date_created"`
	Status           string   `json:"status"`
	AllowedBandwidth int      `json:"allowed_bandwidth"`
	NetmaskV4        string   `json:"netmask_v4"`
	GatewayV4        string   `json:"gateway_v4"`
	PowerStatus      string   `json:"power_status"`
	ServerStatus     string   `json:"server_status"`
	V6Network        string   `json:"v6_network"`
	V6MainIP         string   `json:"v6_main_ip"`
	V6NetworkSize    int      `json:"v6_network_size"`
	Label            string   `json:"label"`
	InternalIP       string   `json:"internal_ip"`
	KVM              string   `json:"kvm"`
	Hostname         string   `json:"hostname"`
	OSID             int      `json:"os_id"`
	AppID            int      `json:"app_id"`
	ImageID          string   `json:"image_id"`
	FirewallGroupID  string   `json:"firewall_group_id"`
	Features         []string `json:"features"`
	DefaultPassword  string   `json:"default_password,omitempty"`
	Tags             []string `json:"tags"`
	UserScheme       string   `json:"user_scheme"`
}

// instanceView renders an instance; caller holds mu.
func (s *Sim) instanceView(in *instance, withPassword bool) instanceJSON {
	v := instanceJSON{
		ID: in.ID, OS: in.OS.Name, RAM: in.Plan.RAM, Disk: in.Plan.Disk, MainIP: "0.0.0.0",
		VCPUCount: in.Plan.VCPUCount, Region: in.Region, Plan: in.Plan.ID, DateCreated: s.date(in.Created),
		Status: in.Status, AllowedBandwidth: in.Plan.Bandwidth, GatewayV4: "0.0.0.0",
		PowerStatus: in.PowerStatus, ServerStatus: in.ServerStatus, Label: in.Label, Hostname: in.Hostname,
		OSID: in.OS.ID, FirewallGroupID: in.FirewallGroupID, Features: []string{},
		Tags: append([]string{}, in.Tags...), UserScheme: "root",
	}
	if in.Status == "active" {
		v.MainIP = in.IP
		v.NetmaskV4 = "255.255.255.0"
		v.GatewayV4 = in.IP[:strings.LastIndexByte(in.IP, '.')] + ".1"
		v.KVM = in.KVM
	}
	if withPassword {
		v.DefaultPassword = in.Password
	}
	return v
}

func (s *Sim) findInstance(id string) *instance {
	i := slices.IndexFunc(s.instances, func(in *instance) bool { return in.ID == id })
	if i < 0 {
		return nil
	}
	return s.instances[i]
}

func notFoundInstance(w http.ResponseWriter) {
	writeError(w, http.StatusNotFound, "Invalid instance ID.") // UNVERIFIED text
}

func (s *Sim) listInstances(w http.ResponseWriter, r *http.Request, c caller) {
	q := r.URL.Query()
	s.mu.Lock()
	items := []instanceJSON{}
	for _, in := range s.instances {
		if t := q.Get("tag"); t != "" && !slices.Contains(in.Tags, t) {
			continue
		}
		if v := q.Get("label"); v != "" && in.Label != v {
			continue
		}
		if v := q.Get("region"); v != "" && in.Region != v {
			continue
		}
		if v := q.Get("firewall_group_id"); v != "" && in.FirewallGroupID != v {
			continue
		}
		view := s.instanceView(in, false)
		if v := q.Get("main_ip"); v != "" && view.MainIP != v {
			continue
		}
		items = append(items, view)
	}
	s.mu.Unlock()
	writePage(w, r, "instances", items)
}

type createInstanceReq struct {
	Region          string   `json:"region"`
	Plan            string   `json:"plan"`
	OSID            *int     `json:"os_id"`
	ISOID           string   `json:"iso_id"`
	SnapshotID      string   `json:"snapshot_id"`
	AppID           *int     `json:"app_id"`
	ImageID         string   `json:"image_id"`
	Label           string   `json:"label"`
	Hostname        string   `json:"hostname"`
	SSHKeyIDs       []string `json:"sshkey_id"`
	UserData        string   `json:"user_data"`
	Tags            []string `json:"tags"` // govultr sends null when unset
	Tag             string   `json:"tag"`  // deprecated
	FirewallGroupID string   `json:"firewall_group_id"`
}

// Create error texts: "Invalid plan chosen." is OBSERVED
// (terraform-provider-vultr#377); the others are UNVERIFIED.
const (
	msgInvalidRegion = "Invalid region chosen."
	msgInvalidPlan   = "Invalid plan chosen."
	msgPlanNotHere   = "Server add failed: The selected plan is not available in the selected location."
	msgNoOS          = "Server add failed: You must choose an operating system, application, snapshot or ISO."
	msgInvalidOS     = "Invalid operating system chosen."
	msgInvalidKey    = "Invalid SSH key ID."
	msgInvalidFW     = "Invalid firewall group ID."
	msgUserData      = "Invalid user_data: it must be base64 encoded."
	// Based on the v1-era text (API-NOTES §7); the v2 wording is UNVERIFIED.
	msgInstanceLimit = "Server add failed: You have reached the maximum number of active virtual machines for this account. For security reasons, please contact our support team to have the limit raised."
	// UNVERIFIED: Vultr's out-of-stock text is not public.
	msgSoldOut = "Server add failed: The selected plan is currently unavailable in this location. Please choose a different location or plan."
)

func (s *Sim) createInstance(w http.ResponseWriter, r *http.Request, c caller) {
	if !requireACL(w, c, aclCreateInstance) {
		return
	}
	var req createInstanceReq
	if !decodeBody(w, r, &req) {
		return
	}
	var userData []byte
	if req.UserData != "" {
		var err error
		if userData, err = base64.StdEncoding.DecodeString(req.UserData); err != nil {
			writeError(w, http.StatusBadRequest, msgUserData)
			return
		}
	}

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		writeError(w, http.StatusServiceUnavailable, "The simulator is shutting down.")
		return
	}
	in, status, msg := s.newInstance(req)
	if msg != "" {
		s.mu.Unlock()
		writeError(w, status, msg)
		return
	}
	s.instances = append(s.instances, in)
	s.countAction(in.ID, "create")
	delay := s.bootDelay
	m := simrun.Machine{
		Provider: "vultr", ID: in.ID, Hostname: in.Hostname, Region: in.Region, PublicIPv4: in.IP,
		Tags: slices.Clone(in.Tags), UserData: userData,
	}
	for _, id := range in.SSHKeyIDs {
		if i := s.findSSHKey(id); i >= 0 {
			m.SSHAuthorizedKeys = append(m.SSHAuthorizedKeys, s.sshKeys[i].Key)
		}
	}
	ctx, cancel := context.WithCancel(s.ctx)
	in.cancel, in.done, in.machine = cancel, make(chan struct{}), m
	body := s.instanceView(in, true)
	s.wg.Add(1)
	s.mu.Unlock()

	go s.boot(ctx, in, m, delay)
	writeJSON(w, http.StatusAccepted, map[string]any{"instance": body})
}

// newInstance validates a create request against the catalog, the
// account's resources and the faults. Caller holds mu.
func (s *Sim) newInstance(req createInstanceReq) (*instance, int, string) {
	bad := http.StatusBadRequest
	if !slices.ContainsFunc(regions, func(x region) bool { return x.ID == req.Region }) {
		return nil, bad, msgInvalidRegion
	}
	pi := slices.IndexFunc(s.plans, func(p plan) bool { return p.ID == req.Plan })
	if pi < 0 {
		return nil, bad, msgInvalidPlan
	}
	p := s.plans[pi]
	if !slices.Contains(p.Locations, req.Region) {
		return nil, bad, msgPlanNotHere
	}
	if req.OSID == nil {
		if req.ISOID != "" || req.SnapshotID != "" || req.AppID != nil || req.ImageID != "" {
			// The simulator deploys operating systems only.
			return nil, bad, msgInvalidOS
		}
		return nil, bad, msgNoOS
	}
	oi := slices.IndexFunc(osList, func(o osEntry) bool { return o.ID == *req.OSID })
	if oi < 0 || !osList[oi].installable() {
		return nil, bad, msgInvalidOS
	}
	for _, id := range req.SSHKeyIDs {
		if s.findSSHKey(id) < 0 {
			return nil, bad, msgInvalidKey
		}
	}
	if req.FirewallGroupID != "" && s.findFirewall(req.FirewallGroupID) == nil {
		return nil, bad, msgInvalidFW
	}
	if s.soldOut[req.Region][p.ID] {
		return nil, bad, msgSoldOut
	}
	if s.limit > 0 && len(s.instances) >= s.limit {
		return nil, bad, msgInstanceLimit
	}
	tags := slices.Clone(req.Tags)
	if tags == nil {
		tags = []string{}
	}
	if req.Tag != "" && !slices.Contains(tags, req.Tag) {
		tags = append(tags, req.Tag)
	}
	hostname := req.Hostname
	if hostname == "" {
		hostname = "vultr.guest"
	}
	s.ipSeq++
	return &instance{
		ID: newUUID(), Label: req.Label, Hostname: hostname, Region: req.Region, Plan: p, OS: osList[oi],
		Tags: tags, SSHKeyIDs: slices.Clone(req.SSHKeyIDs), FirewallGroupID: req.FirewallGroupID,
		UserData: req.UserData, Created: s.now(), Status: "pending", PowerStatus: "running", ServerStatus: "none",
		IP: testNetIP(s.ipSeq), Password: randomPassword(),
		KVM: "https://my.vultr.com/subs/vps/novnc/api.php?data=" + randomHex(16),
	}, 0, ""
}

// testNetIP hands out documentation addresses (RFC 5737): 203.0.113.0/24,
// then 198.51.100.0/24, then 192.0.2.0/24, .10 to .254 in each.
func testNetIP(n int) string {
	nets := []string{"203.0.113", "198.51.100", "192.0.2"}
	per := 245
	n--
	return fmt.Sprintf("%s.%d", nets[(n/per)%len(nets)], 10+n%per)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func randomPassword() string {
	const alphabet = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789#{}[]"
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

// boot waits out the boot delay, asks the Runtime to boot the machine and
// marks the instance active.
func (s *Sim) boot(ctx context.Context, in *instance, m simrun.Machine, delay time.Duration) {
	defer s.wg.Done()
	defer close(in.done)
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
	if ctx.Err() != nil {
		return
	}
	if s.runtime != nil {
		s.mu.Lock()
		in.bootCalled = true
		s.mu.Unlock()
		if err := s.runtime.Boot(ctx, m); err != nil {
			s.log.Warn("boot simulated instance", zap.String("instance", in.ID), zap.Error(err))
			s.mu.Lock()
			// The machine never came up: running but not "ok", as a VM
			// stuck in boot looks from the API.
			in.Status, in.ServerStatus = "active", "installingbooting"
			s.mu.Unlock()
			return
		}
	}
	s.mu.Lock()
	in.Status, in.PowerStatus, in.ServerStatus = "active", "running", "ok"
	s.mu.Unlock()
	s.log.Info("simulated instance active", zap.String("instance", in.ID), zap.String("ip", in.IP))
}

func (s *Sim) getInstance(w http.ResponseWriter, r *http.Request, c caller) {
	s.mu.Lock()
	in := s.findInstance(r.PathValue("id"))
	var body instanceJSON
	if in != nil {
		body = s.instanceView(in, false)
	}
	s.mu.Unlock()
	if in == nil {
		notFoundInstance(w)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"instance": body})
}

func (s *Sim) updateInstance(w http.ResponseWriter, r *http.Request, c caller) {
	if !requireACL(w, c, aclManageInstance) {
		return
	}
	var req struct {
		Label           *string  `json:"label"`
		Tags            []string `json:"tags"` // govultr sends null when unset
		FirewallGroupID *string  `json:"firewall_group_id"`
		UserData        *string  `json:"user_data"`
		Plan            string   `json:"plan"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	if req.UserData != nil {
		if _, err := base64.StdEncoding.DecodeString(*req.UserData); err != nil {
			writeError(w, http.StatusBadRequest, msgUserData)
			return
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	in := s.findInstance(r.PathValue("id"))
	if in == nil {
		notFoundInstance(w)
		return
	}
	if req.FirewallGroupID != nil && *req.FirewallGroupID != "" && s.findFirewall(*req.FirewallGroupID) == nil {
		writeError(w, http.StatusBadRequest, msgInvalidFW)
		return
	}
	if req.Plan != "" && req.Plan != in.Plan.ID {
		pi := slices.IndexFunc(s.plans, func(p plan) bool { return p.ID == req.Plan })
		if pi < 0 || !slices.Contains(s.plans[pi].Locations, in.Region) || !canUpgrade(in.Plan, s.plans[pi]) {
			writeError(w, http.StatusBadRequest, msgInvalidPlan)
			return
		}
		in.Plan = s.plans[pi]
		s.countAction(in.ID, "plan")
	}
	if req.Label != nil {
		in.Label = *req.Label
	}
	if req.Tags != nil {
		in.Tags = slices.Clone(req.Tags)
	}
	if req.FirewallGroupID != nil {
		in.FirewallGroupID = *req.FirewallGroupID
	}
	if req.UserData != nil {
		in.UserData = *req.UserData
	}
	writeJSON(w, http.StatusAccepted, map[string]any{"instance": s.instanceView(in, false)})
}

func (s *Sim) deleteInstance(w http.ResponseWriter, r *http.Request, c caller) {
	if !requireACL(w, c, aclManageInstance) {
		return
	}
	id := r.PathValue("id")
	s.mu.Lock()
	i := slices.IndexFunc(s.instances, func(in *instance) bool { return in.ID == id })
	var in *instance
	if i >= 0 {
		in = s.instances[i]
		s.instances = slices.Delete(s.instances, i, i+1)
	}
	s.mu.Unlock()
	if in == nil {
		notFoundInstance(w)
		return
	}
	in.cancel()
	<-in.done
	s.mu.Lock()
	booted := in.bootCalled
	s.mu.Unlock()
	if booted && s.runtime != nil {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 30*time.Second)
		defer cancel()
		if err := s.runtime.Destroy(ctx, id); err != nil {
			s.log.Warn("destroy simulated instance", zap.String("instance", id), zap.Error(err))
		}
	}
	noContent(w)
}

func (s *Sim) getUserData(w http.ResponseWriter, r *http.Request, c caller) {
	s.mu.Lock()
	in := s.findInstance(r.PathValue("id"))
	var data string
	if in != nil {
		data = in.UserData
	}
	s.mu.Unlock()
	if in == nil {
		notFoundInstance(w)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"user_data": map[string]any{"data": data}})
}

// ---- catalog ----

func (s *Sim) listRegions(w http.ResponseWriter, r *http.Request) {
	writePage(w, r, "regions", regions)
}

func planTypeMatches(filter, typ string) bool {
	switch filter {
	case "", "all":
		return true
	case "voc":
		return strings.HasPrefix(typ, "voc")
	}
	return filter == typ
}

func (s *Sim) listPlans(w http.ResponseWriter, r *http.Request) {
	typ := r.URL.Query().Get("type")
	s.mu.Lock()
	items := []plan{}
	for _, p := range s.plans {
		if planTypeMatches(typ, p.Type) {
			p.Locations = slices.Clone(p.Locations)
			items = append(items, p)
		}
	}
	s.mu.Unlock()
	writePage(w, r, "plans", items)
}

func (s *Sim) availability(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !slices.ContainsFunc(regions, func(x region) bool { return x.ID == id }) {
		writeError(w, http.StatusNotFound, "Invalid region ID.") // UNVERIFIED status and text
		return
	}
	typ := r.URL.Query().Get("type")
	s.mu.Lock()
	avail := []string{}
	for _, p := range s.plans {
		if planTypeMatches(typ, p.Type) && slices.Contains(p.Locations, id) && !s.soldOut[id][p.ID] {
			avail = append(avail, p.ID)
		}
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, map[string]any{"available_plans": avail})
}

func (s *Sim) listOS(w http.ResponseWriter, r *http.Request) {
	writePage(w, r, "os", osList)
}
