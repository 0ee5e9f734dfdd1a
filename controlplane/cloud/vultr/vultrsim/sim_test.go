package vultrsim_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/devpilot/devpilot/controlplane/cloud/contract"
	"github.com/devpilot/devpilot/controlplane/cloud/simrun"
	"github.com/devpilot/devpilot/controlplane/cloud/vultr/vultrsim"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const key = "sim-test-key-0123456789"

type fakeRuntime struct {
	mu        sync.Mutex
	booted    map[string]simrun.Machine
	destroyed []string
}

func (f *fakeRuntime) Boot(ctx context.Context, m simrun.Machine) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.booted == nil {
		f.booted = map[string]simrun.Machine{}
	}
	f.booted[m.ID] = m
	return nil
}

func (f *fakeRuntime) Destroy(ctx context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.destroyed = append(f.destroyed, id)
	return nil
}

type env struct {
	sim *vultrsim.Sim
	srv *httptest.Server
	rt  *fakeRuntime
}

func newEnv(t *testing.T, opts vultrsim.Options) *env {
	t.Helper()
	rt := &fakeRuntime{}
	if opts.Runtime == nil {
		opts.Runtime = rt
	}
	sim := vultrsim.New(opts)
	// Every exchange is held to the Vultr OpenAPI spec.
	h, rec := contract.Vultr(t).Middleware(sim.Handler())
	srv := httptest.NewServer(h)
	t.Cleanup(func() {
		srv.Close()
		sim.Close()
		rec.AssertClean(t)
	})
	sim.AddKey(key, vultrsim.KeyOptions{})
	return &env{sim: sim, srv: srv, rt: rt}
}

// do sends a request with key (none when "") and returns status, headers, body.
func (e *env) do(t *testing.T, method, path, key string, body any) (int, http.Header, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

func TestAuthErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t, vultrsim.Options{})
	e.sim.AddKey("blocked-key-0123456789", vultrsim.KeyOptions{AllowedIPs: []string{"192.0.2.10", "198.51.100.0/24"}})
	e.sim.AddKey("allowed-key-0123456789", vultrsim.KeyOptions{AllowedIPs: []string{"127.0.0.0/8"}})
	e.sim.AddKey("disabled-key-0123456789", vultrsim.KeyOptions{APIDisabled: true})
	tests := []struct {
		name, key  string
		wantStatus int
		wantBody   string
	}{
		{"no key", "", 401, `{"error":"Invalid API token.","status":401}`},
		{"unknown key", "nope", 401, `{"error":"Invalid API token.","status":401}`},
		{"blocked ip", "blocked-key-0123456789", 401, `{"error":"Unauthorized IP address: 127.0.0.1","status":401}`},
		{"allowed subnet", "allowed-key-0123456789", 200, ""},
		{"api disabled", "disabled-key-0123456789", 401, ""},
		{"owner", key, 200, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, h, body := e.do(t, "GET", "/v2/account", tc.key, nil)
			if status != tc.wantStatus {
				t.Fatalf("status %d, want %d: %s", status, tc.wantStatus, body)
			}
			if ct := h.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if tc.wantBody != "" && string(body) != tc.wantBody {
				t.Errorf("body %s, want %s", body, tc.wantBody)
			}
		})
	}
}

func TestAccountACLsAndForbiddenWrites(t *testing.T) {
	t.Parallel()
	e := newEnv(t, vultrsim.Options{})
	const viewer = "viewer-key-0123456789"
	e.sim.AddKey(viewer, vultrsim.KeyOptions{ACLs: []string{"subscriptions_view"}})
	_, _, body := e.do(t, "GET", "/v2/account", viewer, nil)
	var acct struct {
		Account struct {
			ACLs []string `json:"acls"`
		} `json:"account"`
	}
	if err := json.Unmarshal(body, &acct); err != nil || len(acct.Account.ACLs) != 1 {
		t.Fatalf("account %s (%v)", body, err)
	}
	status, _, body := e.do(t, "POST", "/v2/firewalls", viewer, map[string]string{"description": "x"})
	if status != 403 || string(body) != `{"error":"You are not allowed to perform that action.","status":403}` {
		t.Fatalf("create firewall as viewer: %d %s", status, body)
	}
	if status, _, _ := e.do(t, "GET", "/v2/firewalls", viewer, nil); status != 200 {
		t.Fatalf("list firewalls as viewer: %d", status)
	}
}

func TestPagination(t *testing.T) {
	t.Parallel()
	e := newEnv(t, vultrsim.Options{})
	var ids []string
	cursor := ""
	pages := 0
	for {
		path := "/v2/regions?per_page=7"
		if cursor != "" {
			path += "&cursor=" + cursor
		}
		status, _, body := e.do(t, "GET", path, "", nil)
		if status != 200 {
			t.Fatalf("%s: %d %s", path, status, body)
		}
		var page struct {
			Regions []struct{ ID string } `json:"regions"`
			Meta    struct {
				Total int `json:"total"`
				Links struct{ Next, Prev string }
			} `json:"meta"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatal(err)
		}
		if pages == 0 && page.Meta.Links.Prev != "" {
			t.Errorf("first page has prev %q", page.Meta.Links.Prev)
		}
		if pages > 0 && page.Meta.Links.Prev == "" {
			t.Errorf("page %d has no prev", pages+1)
		}
		for _, r := range page.Regions {
			ids = append(ids, r.ID)
		}
		pages++
		if page.Meta.Links.Next == "" {
			if len(ids) != page.Meta.Total {
				t.Fatalf("walked %d regions, total says %d", len(ids), page.Meta.Total)
			}
			break
		}
		cursor = page.Meta.Links.Next
	}
	if pages < 3 {
		t.Errorf("only %d pages of 7", pages)
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Errorf("region %s on two pages", id)
		}
		seen[id] = true
	}
	if status, _, _ := e.do(t, "GET", "/v2/regions?cursor=garbage!", "", nil); status != 400 {
		t.Errorf("bad cursor: %d", status)
	}
}

func TestSoldOutAvailability(t *testing.T) {
	t.Parallel()
	e := newEnv(t, vultrsim.Options{})
	e.sim.SetSoldOut("ams", "vc2-1c-1gb", true)
	_, _, body := e.do(t, "GET", "/v2/regions/ams/availability", "", nil)
	if strings.Contains(string(body), `"vc2-1c-1gb"`) {
		t.Errorf("sold-out plan still available: %s", body)
	}
	_, _, body = e.do(t, "GET", "/v2/regions/ewr/availability?type=vc2", "", nil)
	if !strings.Contains(string(body), `"vc2-1c-1gb"`) || strings.Contains(string(body), "vhf-") {
		t.Errorf("ewr vc2 availability: %s", body)
	}
	_, _, body = e.do(t, "GET", "/v2/plans?type=vc2", "", nil)
	if !strings.Contains(string(body), `"ams"`) {
		t.Errorf("plans no longer list ams: %s", body)
	}
	status, _, body := e.do(t, "POST", "/v2/instances", key, map[string]any{"region": "ams", "plan": "vc2-1c-1gb", "os_id": 2136})
	if status != 400 || !strings.Contains(string(body), "unavailable") {
		t.Errorf("create sold out: %d %s", status, body)
	}
}

func TestInstanceLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t, vultrsim.Options{BootDelay: 5 * time.Millisecond})
	_, _, body := e.do(t, "POST", "/v2/ssh-keys", key, map[string]string{"name": "k", "ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@host"})
	var k struct {
		SSHKey struct{ ID string } `json:"ssh_key"`
	}
	_ = json.Unmarshal(body, &k)
	if status, _, body := e.do(t, "GET", "/v2/ssh-keys/"+k.SSHKey.ID, key, nil); status != 200 || !strings.Contains(string(body), "me@host") {
		t.Errorf("get ssh key: %d %s", status, body)
	}
	ud := base64.StdEncoding.EncodeToString([]byte("#cloud-config\n"))
	status, _, body := e.do(t, "POST", "/v2/instances", key, map[string]any{
		"region": "ewr", "plan": "vc2-1c-1gb", "os_id": 2136, "label": "web", "hostname": "web",
		"sshkey_id": []string{k.SSHKey.ID}, "user_data": ud, "tags": nil, "block_devices": nil,
	})
	if status != 202 {
		t.Fatalf("create: %d %s", status, body)
	}
	var created struct {
		Instance struct {
			ID              string `json:"id"`
			Status          string `json:"status"`
			MainIP          string `json:"main_ip"`
			ServerStatus    string `json:"server_status"`
			DefaultPassword string `json:"default_password"`
		} `json:"instance"`
	}
	if err := json.Unmarshal(body, &created); err != nil {
		t.Fatal(err)
	}
	in := created.Instance
	if in.Status != "pending" || in.MainIP != "0.0.0.0" || in.ServerStatus != "none" || in.DefaultPassword == "" {
		t.Fatalf("created instance %s", body)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, _, body = e.do(t, "GET", "/v2/instances/"+in.ID, key, nil)
		if strings.Contains(string(body), `"status":"active"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never active: %s", body)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !strings.Contains(string(body), `"main_ip":"203.0.113.`) || !strings.Contains(string(body), `"server_status":"ok"`) || strings.Contains(string(body), "default_password") {
		t.Errorf("active instance %s", body)
	}
	e.rt.mu.Lock()
	m := e.rt.booted[in.ID]
	e.rt.mu.Unlock()
	if string(m.UserData) != "#cloud-config\n" || len(m.SSHAuthorizedKeys) != 1 || m.Hostname != "web" || m.PublicIPv4 == "" {
		t.Errorf("runtime got %+v", m)
	}
	// govultr's update sends tags and ddos_protection as null when unset.
	_, _, body = e.do(t, "POST", "/v2/firewalls", key, map[string]string{"description": "web"})
	var g struct {
		FirewallGroup struct{ ID string } `json:"firewall_group"`
	}
	_ = json.Unmarshal(body, &g)
	status, _, body = e.do(t, "PATCH", "/v2/instances/"+in.ID, key, map[string]any{"label": "web-renamed", "tags": nil, "ddos_protection": nil, "firewall_group_id": g.FirewallGroup.ID})
	if status != 202 || !strings.Contains(string(body), `"label":"web-renamed"`) || !strings.Contains(string(body), `"firewall_group_id":"`+g.FirewallGroup.ID+`"`) {
		t.Errorf("patch: %d %s", status, body)
	}
	if _, _, body = e.do(t, "GET", "/v2/firewalls/"+g.FirewallGroup.ID, key, nil); !strings.Contains(string(body), `"instance_count":1`) {
		t.Errorf("group after attach %s", body)
	}
	if status, _, body = e.do(t, "GET", "/v2/instances?firewall_group_id="+g.FirewallGroup.ID, key, nil); status != 200 || !strings.Contains(string(body), in.ID) {
		t.Errorf("list by firewall group: %d %s", status, body)
	}
	_, _, body = e.do(t, "GET", "/v2/instances/"+in.ID+"/user-data", key, nil)
	if string(body) != `{"user_data":{"data":"`+ud+`"}}` {
		t.Errorf("user data %s", body)
	}
	if status, _, _ := e.do(t, "DELETE", "/v2/instances/"+in.ID, key, nil); status != 204 {
		t.Fatalf("delete: %d", status)
	}
	e.rt.mu.Lock()
	destroyed := append([]string(nil), e.rt.destroyed...)
	e.rt.mu.Unlock()
	if len(destroyed) != 1 || destroyed[0] != in.ID {
		t.Errorf("destroyed %v", destroyed)
	}
	if status, _, body := e.do(t, "DELETE", "/v2/instances/"+in.ID, key, nil); status != 404 {
		t.Errorf("second delete: %d %s", status, body)
	}
	for range 2 {
		e.do(t, "DELETE", "/v2/ssh-keys/"+k.SSHKey.ID, key, nil)
	}
	if status, _, _ := e.do(t, "GET", "/v2/ssh-keys/"+k.SSHKey.ID, key, nil); status != 404 {
		t.Errorf("deleted ssh key: %d", status)
	}
}

func TestFirewallRules(t *testing.T) {
	t.Parallel()
	e := newEnv(t, vultrsim.Options{})
	_, _, body := e.do(t, "POST", "/v2/firewalls", key, map[string]string{"description": "web"})
	var g struct {
		FirewallGroup struct{ ID string } `json:"firewall_group"`
	}
	_ = json.Unmarshal(body, &g)
	id := g.FirewallGroup.ID
	tests := []struct {
		name string
		rule map[string]any
		want int
	}{
		{"v4 port", map[string]any{"ip_type": "v4", "protocol": "tcp", "subnet": "0.0.0.0", "subnet_size": 0, "port": "22"}, 201},
		{"v6 range", map[string]any{"ip_type": "v6", "protocol": "tcp", "subnet": "::", "subnet_size": 0, "port": "8000:9000"}, 201},
		{"duplicate", map[string]any{"ip_type": "v4", "protocol": "tcp", "subnet": "0.0.0.0", "subnet_size": 0, "port": "22"}, 400},
		{"dash range", map[string]any{"ip_type": "v4", "protocol": "tcp", "subnet": "0.0.0.0", "subnet_size": 0, "port": "8000-9000"}, 400},
		{"v6 subnet on v4", map[string]any{"ip_type": "v4", "protocol": "tcp", "subnet": "::", "subnet_size": 0, "port": "80"}, 400},
		{"port on icmp", map[string]any{"ip_type": "v4", "protocol": "icmp", "subnet": "0.0.0.0", "subnet_size": 0, "port": "80"}, 400},
		{"bad ip_type", map[string]any{"ip_type": "v5", "protocol": "tcp", "subnet": "0.0.0.0", "subnet_size": 0}, 400},
	}
	for _, tc := range tests {
		if status, _, body := e.do(t, "POST", "/v2/firewalls/"+id+"/rules", key, tc.rule); status != tc.want {
			t.Errorf("%s: %d %s", tc.name, status, body)
		}
	}
	_, _, body = e.do(t, "GET", "/v2/firewalls/"+id, key, nil)
	if !strings.Contains(string(body), `"rule_count":2`) || !strings.Contains(string(body), `"max_rule_count":50`) {
		t.Errorf("group %s", body)
	}
	if status, _, body := e.do(t, "GET", "/v2/firewalls/"+id+"/rules/2", key, nil); status != 200 || !strings.Contains(string(body), `"ip_type":"v6"`) {
		t.Errorf("get rule: %d %s", status, body)
	}
	if status, _, _ := e.do(t, "PUT", "/v2/firewalls/"+id, key, map[string]string{"description": "renamed"}); status != 204 {
		t.Errorf("put group: %d", status)
	}
	if status, _, _ := e.do(t, "DELETE", "/v2/firewalls/"+id+"/rules/1", key, nil); status != 204 {
		t.Errorf("delete rule: %d", status)
	}
	_, _, body = e.do(t, "GET", "/v2/firewalls/"+id+"/rules", key, nil)
	if !strings.Contains(string(body), `"port":"8000:9000"`) || strings.Contains(string(body), `"port":"22"`) {
		t.Errorf("rules after delete %s", body)
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	e := newEnv(t, vultrsim.Options{})
	e.sim.RateLimitNext(1, 2*time.Second)
	status, h, body := e.do(t, "GET", "/v2/account", key, nil)
	if status != 429 || h.Get("Retry-After") != "2" || string(body) != `{"error":"Rate limit reached","status":429}` {
		t.Errorf("429: %d %q %s", status, h.Get("Retry-After"), body)
	}
	e.sim.FailNext(1, 503)
	if status, _, _ := e.do(t, "GET", "/v2/account", key, nil); status != 503 {
		t.Errorf("5xx: %d", status)
	}
	if status, _, _ := e.do(t, "GET", "/v2/account", key, nil); status != 200 {
		t.Errorf("after faults: %d", status)
	}
	e.sim.SetInstanceLimit(0)
}

func TestRealRateLimit(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	e := newEnv(t, vultrsim.Options{Now: func() time.Time { return now }, RateLimit: 3})
	var got []int
	for range 4 {
		status, _, _ := e.do(t, "GET", "/v2/os", "", nil)
		got = append(got, status)
	}
	if got[2] != 200 || got[3] != 429 {
		t.Errorf("statuses within one second: %v", got)
	}
	if n := e.sim.State().Throttled; n != 1 {
		t.Errorf("throttled %d", n)
	}
}

func TestControlAPI(t *testing.T) {
	t.Parallel()
	e := newEnv(t, vultrsim.Options{})
	if status, _, body := e.do(t, "POST", "/_sim/keys", "", map[string]any{"key": "ctl-key-0123456789", "allowed_ips": []string{"192.0.2.1"}}); status != 204 {
		t.Fatalf("add key: %d %s", status, body)
	}
	if status, _, body := e.do(t, "GET", "/v2/account", "ctl-key-0123456789", nil); status != 401 || !strings.Contains(string(body), "Unauthorized IP address") {
		t.Errorf("blocked key from control API: %d %s", status, body)
	}
	status, _, body := e.do(t, "POST", "/_sim/faults", "", map[string]any{
		"instance_limit": 3, "sold_out": []map[string]any{{"region": "ewr", "plan": "vc2-1c-1gb", "sold_out": true}},
		"server_error_next": 2, "boot_delay_ms": 10,
	})
	if status != 200 {
		t.Fatalf("faults: %d %s", status, body)
	}
	var st vultrsim.State
	_, _, body = e.do(t, "GET", "/_sim/state", "", nil)
	if err := json.Unmarshal(body, &st); err != nil {
		t.Fatal(err)
	}
	if st.InstanceLimit != 3 || len(st.SoldOut) != 1 || st.ServerErrNext != 2 || st.BootDelayMS != 10 {
		t.Errorf("state %+v", st)
	}
	if strings.Contains(string(body), key) || strings.Contains(string(body), "ctl-key-0123456789") {
		t.Errorf("state reveals a key: %s", body)
	}
	if status, _, _ := e.do(t, "POST", "/_sim/faults", "", map[string]any{"bogus": 1}); status != 400 {
		t.Errorf("unknown fault field: %d", status)
	}
	e.do(t, "DELETE", "/_sim/faults", "", nil)
	if st := e.sim.State(); st.InstanceLimit != 0 || len(st.SoldOut) != 0 || st.ServerErrNext != 0 {
		t.Errorf("after reset %+v", st)
	}
}
