package provision

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/cloud"
)

// FuzzCheckAction feeds arbitrary action bodies (what a user POSTs) through
// the door check: it never panics, accepts only the six types, and what it
// accepts has a plan and valid fields.
func FuzzCheckAction(f *testing.F) {
	for _, seed := range []string{
		`{"type":"reboot","hard":true}`, `{"type":"power_off","force":false}`, `{"type":"power_on"}`,
		`{"type":"resize","size":"s-2vcpu-2gb"}`, `{"type":"ports","ports":[22,8080,22]}`, `{"type":"rename","name":"web-2"}`,
		`{"type":"ports","ports":[0]}`, `{"type":"rename","name":"-x"}`, `{"type":"explode"}`, `{}`, `{"type":"ports","ports":[]}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req apitypes.ActionRequest
		if json.Unmarshal(body, &req) != nil {
			return
		}
		p, err := checkAction(req)
		if err != nil {
			return
		}
		if !slices.Contains(apitypes.ActionTypes, req.Type) {
			t.Fatalf("accepted unknown type %q", req.Type)
		}
		for _, prov := range cloud.Providers {
			if len(actionSteps(req.Type, prov, p)) == 0 {
				t.Fatalf("accepted %q with no plan on %s", req.Type, prov)
			}
		}
		switch req.Type {
		case apitypes.ActionPorts:
			if len(p.Ports) == 0 || !slices.IsSorted(p.Ports) || len(slices.Compact(slices.Clone(p.Ports))) != len(p.Ports) {
				t.Fatalf("ports %v not a sorted set", p.Ports)
			}
			for _, port := range p.Ports {
				if port < 1 || port > 65535 {
					t.Fatalf("accepted port %d", port)
				}
			}
		case apitypes.ActionRename:
			if !validServerName(p.Name) {
				t.Fatalf("accepted name %q", p.Name)
			}
		case apitypes.ActionResize:
			if p.Size == "" {
				t.Fatal("accepted an empty size")
			}
		}
	})
}
