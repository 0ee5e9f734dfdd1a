package contract

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Exception is one place where the real API or SDK (API-NOTES [OBSERVED] or
// [SDK-RUN]) beats the published spec. Every exception names one provider, one
// method and one spec path, and says exactly what it relaxes.
type Exception struct {
	Provider string
	Method   string // "POST"
	Path     string // spec path with the server base, e.g. "/v2/droplets"
	// NullAsAbsent lists top-level request-body fields that are removed before
	// validation when their value is JSON null (and only then).
	NullAsAbsent []string
	// Why says what reality does and where that is recorded.
	Why string
}

// exceptions is the whole list. Keep entries narrow: method + path + fields.
var exceptions = []Exception{
	{
		// godo's DropletCreateRequest has `ssh_keys` and `tags` without omitempty,
		// so nil slices go out as JSON null, e.g.
		// {"name":"x",...,"ssh_keys":null,...,"tags":null}. The spec types both as
		// arrays; the real API accepts the request. API-NOTES §5 "godo request body [SDK-RUN]".
		Provider: ProviderDigitalOcean, Method: "POST", Path: "/v2/droplets",
		NullAsAbsent: []string{"ssh_keys", "tags"},
		Why:          "godo sends nil slices as null in droplet create (API-NOTES §5 [SDK-RUN])",
	},
	{
		// godo's FirewallRequest has no omitempty on its slices:
		// {"name":"fw","inbound_rules":null,"outbound_rules":null,"droplet_ids":null,"tags":null}.
		// API-NOTES §4 "godo … [SDK-RUN]. The simulator must accept null."
		Provider: ProviderDigitalOcean, Method: "POST", Path: "/v2/firewalls",
		NullAsAbsent: []string{"inbound_rules", "outbound_rules", "droplet_ids", "tags"},
		Why:          "godo sends nil slices as null in firewall create (API-NOTES §4 [SDK-RUN])",
	},
	{
		// Same FirewallRequest struct is used by Firewalls.Update (PUT). API-NOTES §4 [SDK-RUN].
		Provider: ProviderDigitalOcean, Method: "PUT", Path: "/v2/firewalls/{firewall_id}",
		NullAsAbsent: []string{"inbound_rules", "outbound_rules", "droplet_ids", "tags"},
		Why:          "godo sends nil slices as null in firewall update (API-NOTES §4 [SDK-RUN])",
	},
	{
		// govultr's InstanceCreateReq always sends "tags":null and
		// "block_devices":null when unset (API-NOTES §5 [SDK-RUN]). The Dec-2023
		// spec types tags as an array. block_devices is not in the spec at all;
		// unknown fields pass anyway (no additionalProperties:false in the Vultr
		// spec), it is listed so the null is documented in one place.
		Provider: ProviderVultr, Method: "POST", Path: "/v2/instances",
		NullAsAbsent: []string{"tags", "block_devices"},
		Why:          "govultr sends tags:null and block_devices:null on instance create (API-NOTES §5 [SDK-RUN])",
	},
	{
		// govultr's InstanceUpdateReq has `tags` ([]string) and `ddos_protection`
		// (*bool) without omitempty, so an update that does not touch them sends
		// null for both. Same SDK behaviour as above (API-NOTES §5 [SDK-RUN]; the
		// struct tags are in govultr instance.go).
		Provider: ProviderVultr, Method: "PATCH", Path: "/v2/instances/{instance-id}",
		NullAsAbsent: []string{"tags", "ddos_protection"},
		Why:          "govultr sends tags:null and ddos_protection:null on instance update (govultr InstanceUpdateReq, API-NOTES §5)",
	},
}

// Fields the SDKs send or read that the Vultr Dec-2023 spec lacks (vpc_only,
// app_variables, block_devices, region connectivity, …; SOURCES.md caveat) need
// no exception: the Vultr spec never sets additionalProperties:false, so extra
// request and response fields validate.

func exceptionsFor(provider string) []Exception {
	var out []Exception
	for _, e := range exceptions {
		if e.Provider == provider {
			out = append(out, e)
		}
	}
	return out
}

// requestException returns the exception for one operation, if any.
func (s *Spec) requestException(method, path string) *Exception {
	for i := range s.exceptions {
		e := &s.exceptions[i]
		if e.Method == method && e.Path == path {
			return e
		}
	}
	return nil
}

// dropNulls removes the named top-level fields whose value is JSON null. It
// returns body unchanged when it is not a JSON object or nothing matched.
func dropNulls(body []byte, fields []string) []byte {
	var obj map[string]json.RawMessage
	if len(fields) == 0 || json.Unmarshal(body, &obj) != nil {
		return body
	}
	changed := false
	for _, f := range fields {
		if v, ok := obj[f]; ok && strings.TrimSpace(string(v)) == "null" {
			delete(obj, f)
			changed = true
		}
	}
	if !changed {
		return body
	}
	out, err := json.Marshal(obj)
	if err != nil {
		return body
	}
	return out
}

// Generic error statuses: answers an operation may give although its spec
// entry does not list them, because the provider documents them for every call.

// doGenericStatus: 401, 403, 404, 422, 429 and 5xx. DigitalOcean's spec lists
// 401/404/429/500 on most operations but not, for example, the 422s godo users
// see on droplet create ("…will exceed your droplet limit", "Size is not
// available in this region.") or SSH key create ("SSH Key is already in use on
// your account"), API-NOTES §3 and §7 [OBSERVED]; description.yml "HTTP
// Statuses" says every 4xx/5xx carries the {id, message} body.
//
// 409 is there too: DigitalOcean's shared responses define `conflict` (409)
// with the same body (API-NOTES §7), and a firewall create with a name in use
// answers it (observed in harmony-one/harmony-ops#374), though the firewall
// operations do not list it.
func doGenericStatus(status int) bool {
	switch status {
	case 401, 403, 404, 409, 422, 429:
		return true
	}
	return status >= 500 && status <= 599
}

// vultrGenericStatus: Vultr's response-code table (VU:info.description) lists
// 400, 401, 403, 404, 429 and 500 for the whole API, while most operations
// list only some of them (GET /account lists only 200; 429 appears almost
// nowhere). 422 is not in Vultr's table and is therefore not generic.
func vultrGenericStatus(status int) bool {
	switch status {
	case 400, 401, 403, 404, 429:
		return true
	}
	return status >= 500 && status <= 599
}

// doErrorShape checks DigitalOcean's error body {"id","message","request_id"?}
// (DO:shared/models/error.yml; API-NOTES §7).
func doErrorShape(_ int, body []byte) []string {
	var e map[string]any
	if err := json.Unmarshal(body, &e); err != nil {
		return []string{fmt.Sprintf("error body is not a JSON object (%v); DigitalOcean sends {\"id\":\"…\",\"message\":\"…\"}", err)}
	}
	var out []string
	for _, f := range []string{"id", "message"} {
		if v, ok := e[f].(string); !ok || v == "" {
			out = append(out, fmt.Sprintf("error body: $.%s must be a non-empty string (DigitalOcean error shape {\"id\",\"message\"})", f))
		}
	}
	if v, ok := e["request_id"]; ok {
		if _, isStr := v.(string); !isStr {
			out = append(out, "error body: $.request_id must be a string")
		}
	}
	return out
}

// vultrErrorShape checks Vultr's observed error body {"error":"…","status":N}
// (API-NOTES §1 and §7 [OBSERVED]; the spec itself only says "an error
// attribute" and gives error responses no schema).
func vultrErrorShape(status int, body []byte) []string {
	var e map[string]any
	if err := json.Unmarshal(body, &e); err != nil {
		return []string{fmt.Sprintf("error body is not a JSON object (%v); Vultr sends {\"error\":\"…\",\"status\":%d}", err, status)}
	}
	var out []string
	if v, ok := e["error"].(string); !ok || v == "" {
		out = append(out, "error body: $.error must be a non-empty string (Vultr error shape {\"error\",\"status\"})")
	}
	if v, ok := e["status"].(float64); !ok || int(v) != status {
		out = append(out, fmt.Sprintf("error body: $.status must be the HTTP status %d (Vultr error shape {\"error\",\"status\"})", status))
	}
	return out
}
