package dosim

import (
	"encoding/json"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The control API (no authentication: the simulator listens on loopback):
//
//	GET    /_sim/state   what the simulated account holds and which faults are set (State)
//	POST   /_sim/tokens  {"token": "...", "read_write": true}  register a token (204)
//	DELETE /_sim/tokens  {"token": "..."}                      revoke a token (204)
//	POST   /_sim/faults  FaultsRequest: set any subset of faults (204)
//	DELETE /_sim/faults  clear faults (ResetFaults) (204)
//	GET    /_sim/actions            droplet id -> action type -> count, deleted droplets included
//	DELETE /_sim/droplets/{id}      delete a droplet outside Devpilot (204; 404 unknown)
//	POST   /_sim/droplets/{id}/power_off  power it off outside Devpilot (204; 404 unknown)
//	DELETE /_sim/droplets/{id}/tags/{tag}  remove one of its tags outside Devpilot (204; 404)
//	POST   /_sim/firewalls/{id}/inbound   {"port": 3306} add an inbound TCP rule outside Devpilot (204; 404)

// FaultsRequest is the body of POST /_sim/faults; absent fields are left
// as they are.
type FaultsRequest struct {
	DropletLimit         *int          `json:"droplet_limit,omitempty"`
	AccountStatus        *string       `json:"account_status,omitempty"` // "active", "warning", "locked"
	AccountStatusMessage *string       `json:"account_status_message,omitempty"`
	SoldOut              []SoldOutSpec `json:"sold_out,omitempty"`
	RateLimit            *BurstSpec    `json:"rate_limit,omitempty"`    // next Requests answer 429
	ServerErrors         *BurstSpec    `json:"server_errors,omitempty"` // next Requests answer Status (500)
	LatencyMS            *int          `json:"latency_ms,omitempty"`
	BootDelayMS          *int          `json:"boot_delay_ms,omitempty"`
	ActionDelayMS        *int          `json:"action_delay_ms,omitempty"`
	ScopeAfterValidation *bool         `json:"scope_after_validation,omitempty"`
}

// SoldOutSpec marks a size sold out in a region (SoldOut false restocks it).
type SoldOutSpec struct {
	Region  string `json:"region"`
	Size    string `json:"size"`
	SoldOut bool   `json:"sold_out"`
}

// BurstSpec makes the next Requests API requests fail.
type BurstSpec struct {
	Requests    int `json:"requests"`
	RetryAfterS int `json:"retry_after_s,omitempty"` // 429 only
	Status      int `json:"status,omitempty"`        // 5xx only; 0 means 500
}

// State is the answer of GET /_sim/state.
type State struct {
	Account struct {
		DropletLimit  int    `json:"droplet_limit"`
		Status        string `json:"status"`
		StatusMessage string `json:"status_message"`
	} `json:"account"`
	Tokens    []TokenState    `json:"tokens"`
	Droplets  []DropletState  `json:"droplets"`
	Firewalls []FirewallState `json:"firewalls"`
	SSHKeys   []string        `json:"ssh_keys"` // fingerprints
	Tags      []string        `json:"tags"`
	Faults    struct {
		SoldOut              []SoldOutSpec `json:"sold_out"`
		Pending429           int           `json:"pending_429"`
		Pending5xx           int           `json:"pending_5xx"`
		LatencyMS            int64         `json:"latency_ms"`
		BootDelayMS          int64         `json:"boot_delay_ms"`
		ScopeAfterValidation bool          `json:"scope_after_validation"`
	} `json:"faults"`
}

// TokenState describes a registered token without revealing it.
type TokenState struct {
	Hint      string `json:"hint"` // last 4 characters
	ReadWrite bool   `json:"read_write"`
}

// DropletState is a droplet as the control API shows it.
type DropletState struct {
	ID         int            `json:"id"`
	Name       string         `json:"name"`
	Status     string         `json:"status"`
	Region     string         `json:"region"`
	Size       string         `json:"size"`
	Image      string         `json:"image"`
	Tags       []string       `json:"tags"`
	PublicIPv4 string         `json:"public_ipv4"`
	Actions    map[string]int `json:"actions"` // accepted API actions by type, create included
}

// FirewallState is a firewall as the control API shows it.
type FirewallState struct {
	ID           string   `json:"id"`
	Name         string   `json:"name"`
	Tags         []string `json:"tags"`
	InboundPorts []string `json:"inbound_ports"` // "tcp/22"
	DropletIDs   []int    `json:"droplet_ids"`
}

// State returns a snapshot of the simulated account.
func (s *Sim) State() State {
	s.mu.Lock()
	defer s.mu.Unlock()
	var st State
	st.Account.DropletLimit, st.Account.Status, st.Account.StatusMessage = s.account.dropletLimit, s.account.status, s.account.statusMessage
	st.Tokens = []TokenState{}
	for _, k := range slices.Sorted(maps.Keys(s.tokens)) {
		hint := ""
		if len(k) >= 12 {
			hint = k[len(k)-4:]
		}
		st.Tokens = append(st.Tokens, TokenState{Hint: hint, ReadWrite: s.tokens[k].readWrite})
	}
	st.Droplets = []DropletState{}
	for _, d := range s.droplets {
		ds := DropletState{ID: d.id, Name: d.name, Status: "new", Region: d.region.Slug, Size: d.size.Slug, Image: d.image.Slug, Tags: slices.Clone(d.tags)}
		ds.Actions = map[string]int{}
		for k, v := range s.counts[d.id] {
			ds.Actions[k] = v
		}
		if d.failed || d.off {
			ds.Status = "off"
		} else if s.isActive(d) {
			ds.Status, ds.PublicIPv4 = "active", d.ip
		}
		st.Droplets = append(st.Droplets, ds)
	}
	st.Firewalls = []FirewallState{}
	for _, f := range s.firewalls {
		fs := FirewallState{ID: f.id, Name: f.name, Tags: slices.Clone(f.tags), InboundPorts: []string{}, DropletIDs: append([]int{}, f.dropletID...)}
		for _, r := range f.inbound {
			fs.InboundPorts = append(fs.InboundPorts, r.Protocol+"/"+r.Ports)
		}
		st.Firewalls = append(st.Firewalls, fs)
	}
	st.SSHKeys = []string{}
	for _, k := range s.keys {
		st.SSHKeys = append(st.SSHKeys, k.Fingerprint)
	}
	st.Tags = slices.Clone(s.tags)
	if st.Tags == nil {
		st.Tags = []string{}
	}
	st.Faults.SoldOut = []SoldOutSpec{}
	for _, region := range slices.Sorted(maps.Keys(s.faults.soldOut)) {
		for _, size := range slices.Sorted(maps.Keys(s.faults.soldOut[region])) {
			st.Faults.SoldOut = append(st.Faults.SoldOut, SoldOutSpec{Region: region, Size: size, SoldOut: true})
		}
	}
	st.Faults.Pending429, st.Faults.Pending5xx = s.faults.next429, s.faults.next5xx
	st.Faults.LatencyMS, st.Faults.BootDelayMS = s.faults.latency.Milliseconds(), s.faults.bootDelay.Milliseconds()
	st.Faults.ScopeAfterValidation = s.faults.scopeAfterValidation
	return st
}

// ApplyFaults sets the faults a FaultsRequest names.
func (s *Sim) ApplyFaults(f FaultsRequest) {
	if f.DropletLimit != nil {
		s.SetDropletLimit(*f.DropletLimit)
	}
	if f.AccountStatus != nil || f.AccountStatusMessage != nil {
		s.mu.Lock()
		if f.AccountStatus != nil {
			s.account.status = *f.AccountStatus
		}
		if f.AccountStatusMessage != nil {
			s.account.statusMessage = *f.AccountStatusMessage
		}
		s.mu.Unlock()
	}
	for _, so := range f.SoldOut {
		s.SetSoldOut(so.Region, so.Size, so.SoldOut)
	}
	if f.RateLimit != nil {
		s.FailNext429(f.RateLimit.Requests, time.Duration(f.RateLimit.RetryAfterS)*time.Second)
	}
	if f.ServerErrors != nil {
		s.FailNext5xx(f.ServerErrors.Requests, f.ServerErrors.Status)
	}
	if f.LatencyMS != nil {
		s.SetLatency(time.Duration(*f.LatencyMS) * time.Millisecond)
	}
	if f.BootDelayMS != nil {
		s.SetBootDelay(time.Duration(*f.BootDelayMS) * time.Millisecond)
	}
	if f.ActionDelayMS != nil {
		s.SetActionDelay(time.Duration(*f.ActionDelayMS) * time.Millisecond)
	}
	if f.ScopeAfterValidation != nil {
		s.SetScopeCheckAfterValidation(*f.ScopeAfterValidation)
	}
}

func (s *Sim) controlRoutes(mux *http.ServeMux) {
	bad := func(w http.ResponseWriter, msg string) {
		writeJSON(w, http.StatusBadRequest, map[string]string{"id": "bad_request", "message": msg})
	}
	mux.HandleFunc("GET /_sim/state", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, s.State())
	})
	mux.HandleFunc("POST /_sim/tokens", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Token     string `json:"token"`
			ReadWrite bool   `json:"read_write"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || strings.TrimSpace(req.Token) == "" {
			bad(w, `body must be {"token": "...", "read_write": bool}`)
			return
		}
		s.AddToken(req.Token, req.ReadWrite)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE /_sim/tokens", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Token string `json:"token"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			bad(w, `body must be {"token": "..."}`)
			return
		}
		s.RemoveToken(req.Token)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /_sim/faults", func(w http.ResponseWriter, r *http.Request) {
		var f FaultsRequest
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(&f); err != nil {
			bad(w, "invalid faults body: "+err.Error())
			return
		}
		s.ApplyFaults(f)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("DELETE /_sim/faults", func(w http.ResponseWriter, _ *http.Request) {
		s.ResetFaults()
		w.WriteHeader(http.StatusNoContent)
	})
	notFound := func(w http.ResponseWriter) {
		writeJSON(w, http.StatusNotFound, map[string]string{"id": "not_found", "message": "no such resource in the simulator"})
	}
	done := func(w http.ResponseWriter, ok bool) {
		if !ok {
			notFound(w)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
	mux.HandleFunc("GET /_sim/actions", func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		out := map[string]map[string]int{}
		for id, m := range s.counts {
			out[strconv.Itoa(id)] = maps.Clone(m)
		}
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("DELETE /_sim/droplets/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, _ := strconv.Atoi(r.PathValue("id"))
		done(w, s.DeleteOutside(id))
	})
	mux.HandleFunc("POST /_sim/droplets/{id}/power_off", func(w http.ResponseWriter, r *http.Request) {
		id, _ := strconv.Atoi(r.PathValue("id"))
		ok, err := s.PowerOffOutside(r.Context(), id)
		if err != nil {
			writeJSON(w, http.StatusInternalServerError, map[string]string{"id": "server_error", "message": err.Error()})
			return
		}
		done(w, ok)
	})
	mux.HandleFunc("DELETE /_sim/droplets/{id}/tags/{tag}", func(w http.ResponseWriter, r *http.Request) {
		id, _ := strconv.Atoi(r.PathValue("id"))
		done(w, s.UntagOutside(id, r.PathValue("tag")))
	})
	mux.HandleFunc("POST /_sim/firewalls/{id}/inbound", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Port int `json:"port"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.Port < 1 || req.Port > 65535 {
			bad(w, `body must be {"port": 1..65535}`)
			return
		}
		done(w, s.AddInboundOutside(r.PathValue("id"), req.Port))
	})
}
