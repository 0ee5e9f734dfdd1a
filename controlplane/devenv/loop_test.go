package devenv_test

import (
	"context"
	"net/http"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vultr/govultr/v3"

	"github.com/devpilot/devpilot/controlplane/cloud"
	"github.com/devpilot/devpilot/controlplane/cloud/digitalocean"
	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/shared/protocol"
)

type server struct {
	ID         string `json:"id"`
	Name       string `json:"name"`
	State      string `json:"state"`
	InstanceID string `json:"instance_id"`
	PublicIPv4 string `json:"public_ipv4"`
	Tags       []string
	Steps      []struct {
		Name       string     `json:"name"`
		State      string     `json:"state"`
		StartedAt  *time.Time `json:"started_at"`
		FinishedAt *time.Time `json:"finished_at"`
		Error      *struct{ Code, Message, Hint string }
	} `json:"steps"`
	Health *protocol.Health `json:"health"`
	Agent  struct {
		Connected   bool       `json:"connected"`
		InstalledAt *time.Time `json:"installed_at"`
	} `json:"agent"`
	Error *struct{ Step, Code, Message, Hint string } `json:"error"`
}

const servers = "/v1/workspaces/default/servers"

func (h *harness) createServer(integrationID, name, region, size, image string, ports []int) server {
	h.t.Helper()
	var s server
	body := map[string]any{"integration_id": integrationID, "name": name, "region": region, "size": size, "image": image}
	if ports != nil {
		body["ports"] = ports
	}
	if c := h.call("", "POST", servers, body, &s); c != http.StatusAccepted || s.State != "provisioning" {
		h.t.Fatalf("create server: %d %+v", c, s)
	}
	return s
}

// waitServer polls until cond holds, failing the test after limit.
func (h *harness) waitServer(id string, limit time.Duration, what string, cond func(server) bool) server {
	h.t.Helper()
	deadline := time.Now().Add(limit)
	var s server
	for {
		h.call("", "GET", servers+"/"+id, nil, &s)
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("server %s: not %s after %v: %+v", id, what, limit, s)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func online(s server) bool { return s.State == "online" }

func failed(s server) bool { return s.State == "failed" }

// TestServersComeOnlineOnBothClouds is the whole loop: API → provisioning
// job → simulated cloud → user-data run for real → agent installed and
// enrolled over the hub → online with health.
func TestServersComeOnlineOnBothClouds(t *testing.T) {
	h := start(t)
	v := h.env.Values
	_, do, _ := h.connect("digitalocean", "do", v["DO_SIM_TOKEN"])
	_, vu, _ := h.connect("vultr", "vultr", v["VULTR_SIM_KEY"])

	ports := []int{8080, 22}
	sDO := h.createServer(do.ID, "web-do", "nyc3", "s-1vcpu-1gb", "debian-12", ports)
	sVU := h.createServer(vu.ID, "web-vultr", "ewr", "vc2-1c-1gb", "ubuntu-24.04", ports)

	for _, s := range []server{sDO, sVU} {
		got := h.waitServer(s.ID, 60*time.Second, "online with health", func(s server) bool { return online(s) && s.Health != nil })
		for _, st := range got.Steps {
			if st.State != "done" || st.StartedAt == nil || st.FinishedAt == nil || st.FinishedAt.Before(*st.StartedAt) {
				t.Errorf("%s step %s: %+v", s.Name, st.Name, st)
			}
		}
		if len(got.Steps) != 6 || !got.Agent.Connected || got.Agent.InstalledAt == nil || got.PublicIPv4 == "" {
			t.Errorf("%s: %+v", s.Name, got)
		}
		if got.Health.MemTotalMB <= 0 || len(got.Health.Disks) == 0 || got.Health.AgentVersion == "" {
			t.Errorf("%s health: %+v", s.Name, got.Health)
		}
		want := []string{"devpilot", "devpilot-ws-default", "devpilot-srv-" + s.ID}
		if !slices.Equal(got.Tags, want) {
			t.Errorf("%s tags %v, want %v", s.Name, got.Tags, want)
		}
	}

	// The simulated DigitalOcean account: one droplet with the three tags,
	// one SSH key, one firewall on the server's tag with exactly the ports.
	st := h.env.DO.State()
	var droplets int
	for _, d := range st.Droplets {
		if slices.Contains(d.Tags, "devpilot-srv-"+sDO.ID) {
			droplets++
			for _, tag := range []string{"devpilot", "devpilot-ws-default"} {
				if !slices.Contains(d.Tags, tag) {
					t.Errorf("droplet lacks tag %s: %v", tag, d.Tags)
				}
			}
		}
	}
	if droplets != 1 || len(st.SSHKeys) != 1 || len(st.Firewalls) != 1 {
		t.Fatalf("digitalocean: %d droplets, %d keys, %d firewalls; want 1 each", droplets, len(st.SSHKeys), len(st.Firewalls))
	}
	fw := st.Firewalls[0]
	got := slices.Clone(fw.InboundPorts)
	sort.Strings(got)
	if !slices.Equal(got, []string{"tcp/22", "tcp/8080"}) || !slices.Equal(fw.Tags, []string{"devpilot-srv-" + sDO.ID}) {
		t.Errorf("digitalocean firewall %+v, want tcp/22 and tcp/8080 on the server's tag", fw)
	}

	// The simulated Vultr account, read back through govultr itself.
	vst := h.env.Vultr.State()
	var inst []string
	var group string
	for _, in := range vst.Instances {
		if slices.Contains(in.Tags, "devpilot-srv-"+sVU.ID) {
			inst = append(inst, in.ID)
			group = in.FirewallGroupID
		}
	}
	if len(inst) != 1 || group == "" || vst.SSHKeys != 1 || vst.Firewalls != 1 {
		t.Fatalf("vultr: instances %v, firewall group %q, %d keys, %d groups", inst, group, vst.SSHKeys, vst.Firewalls)
	}
	vc := govultr.NewClient(cloud.NewHTTPClient(cloud.TransportConfig{Token: secrets.New(v["VULTR_SIM_KEY"])}))
	_ = vc.SetBaseURL(v["VULTR_SIM_URL"])
	rules, _, _, err := vc.FirewallRule.List(context.Background(), group, nil)
	if err != nil {
		t.Fatal(err)
	}
	var rp []string
	for _, r := range rules {
		rp = append(rp, r.IPType+"/"+r.Protocol+"/"+r.Port)
	}
	sort.Strings(rp)
	if !slices.Equal(rp, []string{"v4/tcp/22", "v4/tcp/8080", "v6/tcp/22", "v6/tcp/8080"}) {
		t.Errorf("vultr firewall rules %v", rp)
	}

	// Delete with destroy: instance and firewall go, the agent is told to stop.
	var del server
	if c := h.call("", "DELETE", servers+"/"+sDO.ID+"?destroy=true", nil, &del); c != http.StatusAccepted {
		t.Fatalf("delete: %d", c)
	}
	h.waitServer(sDO.ID, 30*time.Second, "deleted", func(s server) bool { return s.State == "deleted" })
	st = h.env.DO.State()
	if len(st.Droplets) != 0 || len(st.Firewalls) != 0 {
		t.Errorf("after destroy: %d droplets, %d firewalls", len(st.Droplets), len(st.Firewalls))
	}
	// Delete without destroy: the cloud is left alone.
	if c := h.call("", "DELETE", servers+"/"+sVU.ID, nil, nil); c != http.StatusAccepted {
		t.Fatalf("forget: %d", c)
	}
	if n := len(h.env.Vultr.State().Instances); n != 1 {
		t.Errorf("forgetting a server must not delete its instance: %d instances", n)
	}
	var list struct{ Servers []server }
	h.call("", "GET", servers, nil, &list)
	if len(list.Servers) != 0 {
		t.Errorf("deleted servers still listed: %+v", list.Servers)
	}
}

func TestPreflightRefusesWithTypedErrors(t *testing.T) {
	h := start(t)
	v := h.env.Values
	_, do, _ := h.connect("digitalocean", "do", v["DO_SIM_TOKEN"])
	h.env.DO.SetSoldOut("nyc3", "s-2vcpu-4gb", true)

	// Refused at the door (422, against the catalog), nothing recorded.
	cases := []struct {
		name, region, size, image, code, hint string
	}{
		{"sold-out", "nyc3", "s-2vcpu-4gb", "debian-12", "unavailable", "available now in"},
		{"bad-image", "nyc3", "s-1vcpu-1gb", "windows-95", "validation_failed", "debian-12"},
		{"bad-size", "nyc3", "s-64vcpu-1tb", "debian-12", "validation_failed", "s-1vcpu-1gb"},
		{"bad-region", "atlantis1", "s-1vcpu-1gb", "debian-12", "validation_failed", "nyc3"},
	}
	for _, c := range cases {
		var ae apiError
		body := map[string]any{"integration_id": do.ID, "name": c.name, "region": c.region, "size": c.size, "image": c.image}
		if code := h.call("", "POST", servers, body, &ae); code != http.StatusUnprocessableEntity || ae.Error.Code != c.code ||
			!strings.Contains(ae.Error.Hint, c.hint) || strings.Contains(ae.Error.Message, "preflight") {
			t.Errorf("%s: %d %+v, want 422 %s with a hint mentioning %q", c.name, code, ae, c.code, c.hint)
		}
	}
	// Sold out after the door's (cached) catalog said otherwise: preflight,
	// with a fresh catalog, refuses and says so once.
	h.env.DO.SetSoldOut("nyc3", "s-2vcpu-2gb", true)
	s := h.createServer(do.ID, "sold-later", "nyc3", "s-2vcpu-2gb", "debian-12", nil)
	got := h.waitServer(s.ID, 20*time.Second, "failed", failed)
	if got.Error == nil || got.Error.Step != "preflight" || got.Error.Code != "unavailable" ||
		!strings.Contains(got.Error.Hint, "available now in") || strings.Contains(got.Error.Message, "preflight") {
		t.Errorf("sold out after the door: error %+v, want preflight unavailable, the step named once", got.Error)
	}
	// A failed server's name can be taken again.
	h.env.DO.SetSoldOut("nyc3", "s-2vcpu-2gb", false)
	h.createServer(do.ID, "sold-later", "nyc3", "s-1vcpu-1gb", "debian-12", nil)
	if n := len(h.env.DO.State().Droplets); n > 1 {
		t.Errorf("preflight failures created droplets: %d", n)
	}

	// At the account's droplet limit.
	s = h.createServer(do.ID, "first", "nyc3", "s-1vcpu-1gb", "debian-12", nil)
	h.waitServer(s.ID, 60*time.Second, "online", online)
	h.env.DO.SetDropletLimit(1)
	s = h.createServer(do.ID, "second", "nyc3", "s-1vcpu-1gb", "debian-12", nil)
	got = h.waitServer(s.ID, 20*time.Second, "failed", failed)
	if got.Error == nil || got.Error.Step != "preflight" || got.Error.Code != "quota_exceeded" || got.Error.Hint == "" {
		t.Errorf("droplet limit: %+v", got.Error)
	}
}

// TestRateLimitAndServerErrorStorms: 429s and 5xx during provisioning slow
// it down but neither fail it nor duplicate anything.
func TestRateLimitAndServerErrorStorms(t *testing.T) {
	h := start(t)
	v := h.env.Values
	_, do, _ := h.connect("digitalocean", "do", v["DO_SIM_TOKEN"])
	_, vu, _ := h.connect("vultr", "vultr", v["VULTR_SIM_KEY"])
	h.env.DO.FailNext429(6, time.Second)
	h.env.Vultr.RateLimitNext(6, time.Second)
	a := h.createServer(do.ID, "storm-do", "nyc3", "s-1vcpu-1gb", "debian-12", nil)
	b := h.createServer(vu.ID, "storm-vultr", "ewr", "vc2-1c-1gb", "debian-12", nil)
	time.Sleep(300 * time.Millisecond)
	h.env.DO.FailNext5xx(6, 503)
	h.env.Vultr.FailNext(6, 500)
	h.waitServer(a.ID, 90*time.Second, "online", online)
	h.waitServer(b.ID, 90*time.Second, "online", online)
	if n := len(h.env.DO.State().Droplets); n != 1 {
		t.Errorf("%d droplets, want 1", n)
	}
	if n := len(h.env.Vultr.State().Instances); n != 1 {
		t.Errorf("%d vultr instances, want 1", n)
	}
}

func TestAgentKilledAndFrozen(t *testing.T) {
	h := start(t)
	v := h.env.Values
	_, do, _ := h.connect("digitalocean", "do", v["DO_SIM_TOKEN"])
	s := h.createServer(do.ID, "resilient", "nyc3", "s-1vcpu-1gb", "debian-12", nil)
	s = h.waitServer(s.ID, 60*time.Second, "online", func(s server) bool { return online(s) && s.Agent.Connected })
	info, ok := h.env.Machines.Machine(s.InstanceID)
	if !ok || info.AgentPID == 0 {
		t.Fatalf("no agent process for %s: %+v", s.InstanceID, info)
	}
	// kill -9: the supervisor restarts it and it reconnects (auth, not enroll).
	if err := killPID(info.AgentPID, "KILL"); err != nil {
		t.Fatal(err)
	}
	h.waitServer(s.ID, 30*time.Second, "reconnected", func(x server) bool {
		i, _ := h.env.Machines.Machine(s.InstanceID)
		return i.AgentRestarts >= 1 && x.State == "online" && x.Agent.Connected
	})
	// SIGSTOP: heartbeats stop; after 3 missed intervals the server is offline.
	info, _ = h.env.Machines.Machine(s.InstanceID)
	if err := killPID(info.AgentPID, "STOP"); err != nil {
		t.Fatal(err)
	}
	h.waitServer(s.ID, 30*time.Second, "offline", func(x server) bool { return x.State == "offline" })
	if err := killPID(info.AgentPID, "CONT"); err != nil {
		t.Fatal(err)
	}
	h.waitServer(s.ID, 90*time.Second, "online again", func(x server) bool { return x.State == "online" && x.Agent.Connected })
}

func killPID(pid int, sig string) error {
	return exec.Command("kill", "-"+sig, strconv.Itoa(pid)).Run()
}

// TestInstanceFoundByTagIsAdopted: a droplet carrying the server's tag
// exists before the instance step runs (an earlier attempt created it and
// died before recording its id). The step adopts it instead of creating a
// second one.
func TestInstanceFoundByTagIsAdopted(t *testing.T) {
	h := start(t)
	v := h.env.Values
	_, do, _ := h.connect("digitalocean", "do", v["DO_SIM_TOKEN"])
	h.env.DO.FailNext5xx(1000, 503) // hold the job in preflight
	s := h.createServer(do.ID, "adopt-me", "nyc3", "s-1vcpu-1gb", "debian-12", nil)

	p, err := digitalocean.New(cloud.Config{Secret: secrets.New(v["DO_SIM_TOKEN"]), BaseURL: v["DO_SIM_URL"]})
	if err != nil {
		t.Fatal(err)
	}
	h.env.DO.ResetFaults()
	orphan, err := p.CreateInstance(context.Background(), cloud.InstanceSpec{Name: "adopt-me", Region: "nyc3",
		Size: "s-1vcpu-1gb", Image: "debian-12-x64", Tags: []string{"devpilot", "devpilot-srv-" + s.ID}})
	if err != nil {
		t.Fatal(err)
	}
	got := h.waitServer(s.ID, 60*time.Second, "past the instance step", func(s server) bool { return s.InstanceID != "" })
	if got.InstanceID != orphan.ID {
		t.Errorf("recorded instance %s, want the existing %s", got.InstanceID, orphan.ID)
	}
	if n := len(h.env.DO.State().Droplets); n != 1 {
		t.Errorf("%d droplets, want 1", n)
	}
}
