package vultrsim

import (
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"time"
)

// The control API, for scripts and `devpilot dev` (tests call the Go
// methods). All bodies are JSON.
//
//	POST   /_sim/keys    {"key":"…","allowed_ips":["192.0.2.1"],"api_disabled":false,"acls":["subscriptions_view"],"name":"…","email":"…"} → 204
//	DELETE /_sim/keys    {"key":"…"} → 204
//	POST   /_sim/faults  Faults (every field optional; only given ones change) → 200 State
//	DELETE /_sim/faults  → 200 State (ResetFaults)
//	GET    /_sim/state   → 200 State
//	GET    /_sim/actions → 200 {instance id: {action type: count}}, deleted instances included
//	DELETE /_sim/instances/{id}            delete it outside Devpilot → 204 (404 unknown)
//	POST   /_sim/instances/{id}/halt       halt it outside Devpilot → 204 (404 unknown)
//	DELETE /_sim/instances/{id}/tags/{tag} remove one of its tags outside Devpilot → 204 (404)
//	POST   /_sim/firewalls/{id}/rules      {"port":"3306"} add an inbound TCP rule outside Devpilot → 204 (404)
//
// The control API has no authentication: serve the simulator on loopback.

// Faults is the body of POST /_sim/faults.
type Faults struct {
	InstanceLimit *int          `json:"instance_limit,omitempty"`
	SoldOut       []SoldOutPlan `json:"sold_out,omitempty"`
	RateLimitNext *int          `json:"rate_limit_next,omitempty"`   // next N requests → 429
	RetryAfterS   *int          `json:"retry_after_s,omitempty"`     // with rate_limit_next: Retry-After seconds, 0 none
	ServerErrNext *int          `json:"server_error_next,omitempty"` // next N requests → 5xx
	ServerErrCode *int          `json:"server_error_status,omitempty"`
	LatencyMS     *int          `json:"latency_ms,omitempty"`
	BootDelayMS   *int          `json:"boot_delay_ms,omitempty"`
}

// SoldOutPlan marks (or, with sold_out false, unmarks) a plan in a region.
type SoldOutPlan struct {
	Region  string `json:"region"`
	Plan    string `json:"plan"`
	SoldOut bool   `json:"sold_out"`
}

// State is what GET /_sim/state reports. Keys appear by their last four
// characters only.
type State struct {
	Keys          []KeyState      `json:"keys"`
	InstanceLimit int             `json:"instance_limit"`
	SoldOut       []SoldOutPlan   `json:"sold_out"`
	RateLimitNext int             `json:"rate_limit_next"`
	ServerErrNext int             `json:"server_error_next"`
	LatencyMS     int64           `json:"latency_ms"`
	BootDelayMS   int64           `json:"boot_delay_ms"`
	Requests      int             `json:"requests"`
	Throttled     int             `json:"throttled"` // 429s from the real per-IP limit (not RateLimitNext)
	Instances     []InstanceState `json:"instances"`
	Firewalls     int             `json:"firewall_groups"`
	SSHKeys       int             `json:"ssh_keys"`
}

// KeyState describes a registered key without revealing it.
type KeyState struct {
	Hint        string   `json:"hint"`
	AllowedIPs  []string `json:"allowed_ips,omitempty"`
	APIDisabled bool     `json:"api_disabled,omitempty"`
	ACLs        []string `json:"acls"`
}

// InstanceState is one simulated instance.
type InstanceState struct {
	ID              string         `json:"id"`
	Label           string         `json:"label"`
	Region          string         `json:"region"`
	Plan            string         `json:"plan"`
	OSID            int            `json:"os_id"`
	Status          string         `json:"status"`
	ServerStatus    string         `json:"server_status"`
	IP              string         `json:"ip"`
	Tags            []string       `json:"tags"`
	FirewallGroupID string         `json:"firewall_group_id"`
	UserData        string         `json:"user_data"` // base64, as sent
	PowerStatus     string         `json:"power_status"`
	Actions         map[string]int `json:"actions"` // accepted API actions by type, create included
}

// State returns a snapshot of the simulator.
func (s *Sim) State() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := State{
		InstanceLimit: s.limit, RateLimitNext: s.next429, ServerErrNext: s.next5xx,
		LatencyMS: s.latency.Milliseconds(), BootDelayMS: s.bootDelay.Milliseconds(), Requests: s.requests, Throttled: s.throttled,
		Firewalls: len(s.firewalls), SSHKeys: len(s.sshKeys),
		Keys: []KeyState{}, SoldOut: []SoldOutPlan{}, Instances: []InstanceState{},
	}
	for k, o := range s.keys {
		hint := ""
		if len(k) >= 12 {
			hint = k[len(k)-4:]
		}
		acls := o.ACLs
		if acls == nil {
			acls = allACLs
		}
		st.Keys = append(st.Keys, KeyState{Hint: hint, AllowedIPs: o.AllowedIPs, APIDisabled: o.APIDisabled, ACLs: slices.Clone(acls)})
	}
	for region, plans := range s.soldOut {
		for p := range plans {
			st.SoldOut = append(st.SoldOut, SoldOutPlan{Region: region, Plan: p, SoldOut: true})
		}
	}
	for _, in := range s.instances {
		st.Instances = append(st.Instances, InstanceState{
			ID: in.ID, Label: in.Label, Region: in.Region, Plan: in.Plan.ID, OSID: in.OS.ID,
			Status: in.Status, ServerStatus: in.ServerStatus, IP: in.IP, Tags: slices.Clone(in.Tags),
			FirewallGroupID: in.FirewallGroupID, UserData: in.UserData,
			PowerStatus: in.PowerStatus, Actions: maps.Clone(s.counts[in.ID]),
		})
		if st.Instances[len(st.Instances)-1].Actions == nil {
			st.Instances[len(st.Instances)-1].Actions = map[string]int{}
		}
	}
	return st
}

// Apply sets the faults that f names.
func (s *Sim) Apply(f Faults) {
	if f.InstanceLimit != nil {
		s.SetInstanceLimit(*f.InstanceLimit)
	}
	for _, so := range f.SoldOut {
		s.SetSoldOut(so.Region, so.Plan, so.SoldOut)
	}
	if f.RateLimitNext != nil {
		ra := 0
		if f.RetryAfterS != nil {
			ra = *f.RetryAfterS
		}
		s.RateLimitNext(*f.RateLimitNext, time.Duration(ra)*time.Second)
	}
	if f.ServerErrNext != nil {
		code := 0
		if f.ServerErrCode != nil {
			code = *f.ServerErrCode
		}
		s.FailNext(*f.ServerErrNext, code)
	}
	if f.LatencyMS != nil {
		s.SetLatency(time.Duration(*f.LatencyMS) * time.Millisecond)
	}
	if f.BootDelayMS != nil {
		s.SetBootDelay(time.Duration(*f.BootDelayMS) * time.Millisecond)
	}
}

func (s *Sim) controlMux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /_sim/keys", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Key string `json:"key"`
			KeyOptions
		}
		if !decodeBody(w, r, &req) {
			return
		}
		if req.Key == "" {
			writeError(w, http.StatusBadRequest, "key is required")
			return
		}
		s.AddKey(req.Key, req.KeyOptions)
		noContent(w)
	})
	mux.HandleFunc("DELETE /_sim/keys", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Key string `json:"key"`
		}
		if !decodeBody(w, r, &req) {
			return
		}
		s.RemoveKey(req.Key)
		noContent(w)
	})
	mux.HandleFunc("POST /_sim/faults", func(w http.ResponseWriter, r *http.Request) {
		var f Faults
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			writeError(w, http.StatusBadRequest, "invalid faults: "+err.Error())
			return
		}
		for _, so := range f.SoldOut {
			if so.Region == "" || so.Plan == "" {
				writeError(w, http.StatusBadRequest, "sold_out entries need region and plan")
				return
			}
		}
		s.Apply(f)
		writeJSON(w, http.StatusOK, s.State())
	})
	mux.HandleFunc("DELETE /_sim/faults", func(w http.ResponseWriter, r *http.Request) {
		s.ResetFaults()
		writeJSON(w, http.StatusOK, s.State())
	})
	mux.HandleFunc("GET /_sim/state", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.State())
	})
	done := func(w http.ResponseWriter, ok bool) {
		if !ok {
			writeError(w, http.StatusNotFound, "no such resource in the simulator")
			return
		}
		noContent(w)
	}
	mux.HandleFunc("GET /_sim/actions", func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		out := map[string]map[string]int{}
		for id, m := range s.counts {
			out[id] = maps.Clone(m)
		}
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("DELETE /_sim/instances/{id}", func(w http.ResponseWriter, r *http.Request) {
		done(w, s.DeleteOutside(r.Context(), r.PathValue("id")))
	})
	mux.HandleFunc("POST /_sim/instances/{id}/halt", func(w http.ResponseWriter, r *http.Request) {
		ok, err := s.PowerOffOutside(r.Context(), r.PathValue("id"))
		if err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		done(w, ok)
	})
	mux.HandleFunc("DELETE /_sim/instances/{id}/tags/{tag}", func(w http.ResponseWriter, r *http.Request) {
		done(w, s.UntagOutside(r.PathValue("id"), r.PathValue("tag")))
	})
	mux.HandleFunc("POST /_sim/firewalls/{id}/rules", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Port string `json:"port"`
		}
		if !decodeBody(w, r, &req) {
			return
		}
		done(w, s.AddRuleOutside(r.PathValue("id"), req.Port))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "unknown control endpoint")
	})
	return mux
}
