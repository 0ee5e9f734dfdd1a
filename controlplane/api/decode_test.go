package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"github.com/devpilot/devpilot/controlplane/apitypes"
	"github.com/devpilot/devpilot/controlplane/problem"
)

// integrationRequest is connectIntegration's body: the one that carries a
// cloud secret.
type integrationRequest = apitypes.ConnectIntegration

// requestTypes are the bodies handlers decode, from the flattest to the
// most nested.
func requestTypes() []func() any {
	return []func() any{
		func() any { return &integrationRequest{} },
		func() any { return &apitypes.CreateServer{} },
		func() any { return &apitypes.TaskSpec{} },
		func() any { return &apitypes.CreateDeployment{} },
	}
}

func decodeBytes(b []byte, v any) error {
	r := httptest.NewRequest("POST", "/v1/x", bytes.NewReader(b))
	return decode(r, v)
}

// decodeMessages are the only shapes decode's error messages take: they
// name fields and byte offsets, never a value from the body.
var decodeMessages = regexp.MustCompile(`^(request body is larger than 1048576 bytes` +
	`|malformed JSON body: (syntax error at byte \d+|field "[A-Za-z0-9_.]{0,200}" must be [][*.A-Za-z0-9_ ]{1,80}` +
	`|unknown field "[a-z_][a-z0-9_]{0,63}"|an unknown field|empty body|the body ends inside the JSON value|data after the JSON value|cannot be decoded))$`)

func TestDecode(t *testing.T) {
	t.Parallel()
	big := `{"provider":"` + strings.Repeat("x", maxBody) + `"}`
	for _, tc := range []struct {
		name, body string
		want       string // "" accepts
	}{
		{"object", `{"provider":"vultr","secret_key":"k"}`, ""},
		{"trailing newline", "{\"provider\":\"vultr\"}\r\n\t ", ""},
		{"trailing brace", `{"provider":"vultr"}}`, "data after the JSON value"},
		{"trailing bracket", `{"provider":"vultr"}]`, "data after the JSON value"},
		{"second value", `{"provider":"vultr"} {}`, "data after the JSON value"},
		{"trailing garbage", `{"provider":"vultr"}x`, "data after the JSON value"},
		{"unknown field", `{"provider":"vultr","secret":"k"}`, `unknown field "secret"`},
		// A field name is echoed only when it looks like one: a secret
		// pasted as a key (a Vultr API key is upper-case) stays out.
		{"unknown secret-like field", `{"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789":"k"}`, "an unknown field"},
		{"unknown long field", `{"` + strings.Repeat("a", 10000) + `":1}`, "an unknown field"},
		{"wrong type", `{"provider":"vultr","secret_key":12345678}`, `field "secret_key" must be string`},
		{"empty", ``, "empty body"},
		{"syntax", `{"provider":}`, "syntax error at byte 13"},
		{"cut short", `{"provider":`, "ends inside the JSON value"},
		{"too large", big, "larger than 1048576 bytes"},
		// The value ends inside the limit; the body does not.
		{"too large after the value", `{"provider":"vultr"}` + strings.Repeat(" ", maxBody), "larger than 1048576 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var v integrationRequest
			err := decodeBytes([]byte(tc.body), &v)
			if tc.want == "" {
				if err != nil || v.Provider != "vultr" {
					t.Fatalf("decode = %v (%+v), want it accepted", err, v)
				}
				return
			}
			var pe *problem.Error
			if !errors.As(err, &pe) || pe.Status != http.StatusBadRequest || pe.Code != "validation_failed" ||
				!strings.Contains(pe.Message, tc.want) || pe.Hint == "" {
				t.Fatalf("decode = %#v, want a validation_failed with a hint and %q", err, tc.want)
			}
			if !decodeMessages.MatchString(pe.Message) {
				t.Errorf("message %q is not one of decode's shapes", pe.Message)
			}
		})
	}
}

// FuzzDecodeRequest feeds request bodies to decode, the one function every
// handler reads JSON with: it never panics; it accepts only one JSON value
// of at most 1 MiB (then what it decoded is what encoding/json reads from
// that value) whose top-level keys are the type's fields; it refuses with
// a validation_failed whose message has one of a few fixed shapes.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"provider":"digitalocean","access_key":"ops","secret_key":"dop_v1_x"}`,
		`{"integration_id":"int_1","name":"web-1","region":"nyc3","size":"s-1vcpu-1gb","image":"debian-12","ports":[22,443]}`,
		`{"kind":"exec","argv":["sh","-c","echo hi"],"env":{"A":"b"},"dir":"/srv","timeout_s":60,"deadline_s":3600}`,
		`{"kind":"deploy","steps":[{"name":"a","kind":"file","path":"/etc/x","content_base64":"eA=="},{"kind":"systemd","unit":"x.service","action":"restart"}]}`,
		`{"servers":["srv_1"],"tag":"web","max_parallel":2,"plan":{"steps":[{"kind":"exec","argv":["true"]}]},"deadline_s":60}`,
		`{"provider":"vultr"}]`, `{} {}`, `{"PROVIDER":"vultr"}`, `{"provider":"a","provider":1}`, `{"a":1}`,
		`{"ports":[1e400]}`, `{"timeout_s":9223372036854775808}`, `{"argv":"x"}`, `{"env":{"A":1}}`, `[]`, `null`, `"x"`,
		"{\"provider\":\"\xff\"}", `{"provider":"\ud800"}`, ` `, `{`,
	} {
		for i := range requestTypes() {
			f.Add([]byte(s), uint8(i))
		}
	}
	f.Fuzz(func(t *testing.T, body []byte, which uint8) {
		types := requestTypes()
		newV := types[int(which)%len(types)]
		v := newV()
		err := decodeBytes(body, v)
		if err != nil {
			var pe *problem.Error
			if !errors.As(err, &pe) || pe.Status != http.StatusBadRequest || pe.Code != "validation_failed" {
				t.Fatalf("decode error %#v is not a validation_failed problem", err)
			}
			if !decodeMessages.MatchString(pe.Message) {
				t.Fatalf("message %q is not one of decode's shapes", pe.Message)
			}
			return
		}
		if len(body) > maxBody {
			t.Fatalf("accepted a %d byte body", len(body))
		}
		if !json.Valid(body) {
			t.Fatalf("accepted %q, which is not exactly one JSON value", body)
		}
		again := newV()
		if err := json.Unmarshal(body, again); err != nil || !reflect.DeepEqual(v, again) {
			t.Fatalf("decode gave %+v, encoding/json gives %+v (%v)", v, again, err)
		}
		var top map[string]json.RawMessage
		if json.Unmarshal(body, &top) == nil {
			known := fieldNames(reflect.TypeOf(v).Elem())
			for k := range top {
				if !known[strings.ToLower(k)] {
					t.Fatalf("accepted unknown field %q in %q", k, body)
				}
			}
		}
	})
}

// fieldNames are a struct's JSON field names (lower case, as encoding/json
// matches them), embedded structs included.
func fieldNames(t reflect.Type) map[string]bool {
	names := map[string]bool{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if f.Anonymous && name == "" {
			for n := range fieldNames(f.Type) {
				names[n] = true
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		names[strings.ToLower(name)] = true
	}
	return names
}
