package devenv_test

import (
	"net/http"
	"slices"
	"sort"
	"strconv"
	"testing"
	"time"
)

type action struct {
	ID       string         `json:"id"`
	ServerID string         `json:"server_id"`
	Type     string         `json:"type"`
	Params   map[string]any `json:"params"`
	State    string         `json:"state"`
	Steps    []struct {
		Name       string     `json:"name"`
		State      string     `json:"state"`
		StartedAt  *time.Time `json:"started_at"`
		FinishedAt *time.Time `json:"finished_at"`
		Error      *struct{ Code, Message, Hint string }
		Detail     string `json:"detail"`
	} `json:"steps"`
	Error      *struct{ Code, Message, Hint string } `json:"error"`
	FinishedAt *time.Time                            `json:"finished_at"`
}

// act posts an action and waits for it to succeed, logging each step's time.
func (h *harness) act(srv server, body map[string]any) action {
	h.t.Helper()
	var a action
	path := servers + "/" + srv.ID + "/actions"
	if c := h.call("", "POST", path, body, &a); c != http.StatusAccepted || a.ID == "" || a.State != "queued" {
		h.t.Fatalf("POST %v: %d %+v", body, c, a)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for a.State != "succeeded" {
		if a.State == "failed" || time.Now().After(deadline) {
			h.t.Fatalf("%s on %s: %s, error %+v, steps %+v", a.Type, srv.Name, a.State, a.Error, a.Steps)
		}
		time.Sleep(50 * time.Millisecond)
		h.call("", "GET", path+"/"+a.ID, nil, &a)
	}
	for _, st := range a.Steps {
		if st.State != "done" || st.StartedAt == nil || st.FinishedAt == nil {
			h.t.Errorf("%s step %s: %+v", a.Type, st.Name, st)
			continue
		}
		h.t.Logf("%s %s %-14s %v", srv.Name, a.Type, st.Name, st.FinishedAt.Sub(*st.StartedAt).Round(time.Millisecond))
	}
	return a
}

// TestLifecycleActionsOnBothClouds: on each simulated cloud, with real
// sandboxed agents, power off → stopped → power on → online (the agent back
// by itself), graceful and hard reboot, resize to a larger size, ports
// [22,80,443] → [22,8080] (the cloud firewall holds exactly that) and
// rename; the simulators count each cloud action once.
func TestLifecycleActionsOnBothClouds(t *testing.T) {
	h := start(t)
	v := h.env.Values
	_, do, _ := h.connect("digitalocean", "do", v["DO_SIM_TOKEN"])
	_, vu, _ := h.connect("vultr", "vultr", v["VULTR_SIM_KEY"])
	sDO := h.createServer(do.ID, "life-do", "nyc3", "s-1vcpu-1gb", "debian-12", []int{22, 80, 443})
	sVU := h.createServer(vu.ID, "life-vultr", "ewr", "vc2-1c-1gb", "debian-12", []int{22, 80, 443})
	for _, c := range []struct {
		srv          server
		bigger       string
		counts       func(string) map[string]int
		off, on, hot string // the cloud's action names
	}{
		{sDO, "s-2vcpu-2gb", func(id string) map[string]int { n, _ := strconv.Atoi(id); return h.env.DO.ActionCounts(n) }, "shutdown", "power_on", "power_cycle"},
		{sVU, "vc2-1c-2gb", h.env.Vultr.ActionCounts, "halt", "start", "reboot"},
	} {
		srv := h.waitServer(c.srv.ID, 90*time.Second, "online", online)

		// A conflicting second action and a bad one are refused at the door.
		var e apiError
		if code := h.call("", "POST", servers+"/"+srv.ID+"/actions", map[string]any{"type": "explode"}, &e); code != 422 || e.Error.Code != "validation_failed" {
			t.Errorf("unknown type: %d %+v", code, e)
		}
		if code := h.call("", "POST", servers+"/"+srv.ID+"/actions", map[string]any{"type": "resize", "size": "nope"}, &e); code != 422 {
			t.Errorf("unknown size: %d %+v", code, e)
		}

		h.act(srv, map[string]any{"type": "power_off"})
		got := h.waitServer(srv.ID, 30*time.Second, "stopped", func(s server) bool { return s.State == "stopped" })
		if got.Agent.Connected {
			t.Errorf("%s: agent still connected while stopped", srv.Name)
		}
		h.act(srv, map[string]any{"type": "power_on"})
		h.waitServer(srv.ID, 30*time.Second, "online after power on", online)
		h.act(srv, map[string]any{"type": "reboot"})
		h.act(srv, map[string]any{"type": "reboot", "hard": true})
		h.waitServer(srv.ID, 30*time.Second, "online after reboot", online)

		a := h.act(srv, map[string]any{"type": "resize", "size": c.bigger})
		if a.Params["old_size"] == nil || a.Params["size"] != c.bigger {
			t.Errorf("resize params %v", a.Params)
		}
		var s2 struct {
			Size  string `json:"size"`
			Ports []int  `json:"ports"`
			Name  string `json:"name"`
		}
		h.call("", "GET", servers+"/"+srv.ID, nil, &s2)
		if s2.Size != c.bigger {
			t.Errorf("%s size after resize = %s", srv.Name, s2.Size)
		}

		h.act(srv, map[string]any{"type": "ports", "ports": []int{8080, 22}})
		h.call("", "GET", servers+"/"+srv.ID, nil, &s2)
		if !slices.Equal(s2.Ports, []int{22, 8080}) {
			t.Errorf("%s ports = %v", srv.Name, s2.Ports)
		}
		h.act(srv, map[string]any{"type": "rename", "name": srv.Name + "-2"})
		h.call("", "GET", servers+"/"+srv.ID, nil, &s2)
		if s2.Name != srv.Name+"-2" {
			t.Errorf("name after rename = %s", s2.Name)
		}

		var list struct {
			Actions []action `json:"actions"`
			Next    string   `json:"next"`
		}
		h.call("", "GET", servers+"/"+srv.ID+"/actions?limit=3", nil, &list)
		if len(list.Actions) != 3 || list.Next == "" || list.Actions[0].Type != "rename" {
			var types []string
			for _, a := range list.Actions {
				types = append(types, a.Type)
			}
			t.Errorf("first page: %v, next %q; want rename first", types, list.Next)
		}

		counts := c.counts(srv.InstanceID)
		for _, typ := range []string{c.off, c.on, c.hot} {
			if counts[typ] < 1 {
				t.Errorf("%s: cloud action %s never ran: %v", srv.Name, typ, counts)
			}
		}
		t.Logf("%s cloud actions: %v", srv.Name, counts)
	}

	// The DigitalOcean firewall holds exactly tcp/22 and tcp/8080.
	for _, fw := range h.env.DO.State().Firewalls {
		got := slices.Clone(fw.InboundPorts)
		sort.Strings(got)
		if !slices.Equal(got, []string{"tcp/22", "tcp/8080"}) {
			t.Errorf("digitalocean firewall %s: %v, want tcp/22 and tcp/8080", fw.Name, got)
		}
	}
}
