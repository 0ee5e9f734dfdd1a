package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// FuzzYAMLOutput feeds API answers (JSON from the control plane) to -o
// yaml: it never panics, and whatever it prints reads back as the same
// value the JSON held (no string turned into a number or a bool, no key
// lost).
func FuzzYAMLOutput(f *testing.F) {
	for _, s := range []string{
		`{"servers":[{"id":"srv_aaaaaaaaaaaaaaaa","name":"web-1","state":"online","ports":[22,80],"health":null}],"next":""}`,
		`{"name":"123","on":"yes","off":"no","null":"~","empty":"","n":1.5e3,"neg":-0,"t":true}`,
		`{"multi":"a\nb\n","colon":"a: b","hash":"# c","dash":"- x","quote":"'\"","uni":"\u00e9\u2028","tab":"\t"}`,
		`[]`, `{}`, `"x"`, `null`, `[[[]]]`, `{"a":{"b":{"c":[1,{"d":"e"}]}}}`, `{"":""}`, `{"0x10":"0x10","1_000":"1_000"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var want any
		if json.Unmarshal(b, &want) != nil {
			return // the CLI prints the API's JSON only
		}
		var out bytes.Buffer
		o := &output{format: "yaml", w: &out}
		if err := o.raw(b); err != nil {
			return // refusing is fine; printing something else is not
		}
		var got any
		if err := yaml.Unmarshal(out.Bytes(), &got); err != nil {
			t.Fatalf("-o yaml printed what does not read back (%v):\n%s", err, out.String())
		}
		if !sameValue(want, got) {
			t.Fatalf("-o yaml changed the value:\njson %#v\nyaml %#v\n%s", want, got, out.String())
		}
	})
}

// sameValue compares a JSON-decoded value with a YAML-decoded one: numbers
// by value (YAML gives ints), everything else exactly.
func sameValue(j, y any) bool {
	switch jv := j.(type) {
	case float64:
		switch yv := y.(type) {
		case int:
			return float64(yv) == jv
		case float64:
			return yv == jv
		case uint64:
			return float64(yv) == jv
		}
		return false
	case map[string]any:
		ym, ok := y.(map[string]any)
		if !ok || len(ym) != len(jv) {
			return false
		}
		for k, v := range jv {
			if yv, ok := ym[k]; !ok || !sameValue(v, yv) {
				return false
			}
		}
		return true
	case []any:
		ys, ok := y.([]any)
		if !ok || len(ys) != len(jv) {
			return false
		}
		for i := range jv {
			if !sameValue(jv[i], ys[i]) {
				return false
			}
		}
		return true
	}
	return reflect.DeepEqual(j, y)
}

// FuzzConfig feeds config files (written by devpilot login, but edited by
// hand too) to loadConfig: it never panics, and a config it accepts saves
// and loads back the same.
func FuzzConfig(f *testing.F) {
	f.Add([]byte("current: prod\ncontexts:\n  prod:\n    url: https://cp:8443\n    token: dpt_x\n    ca_cert: /etc/ca.crt\n"))
	f.Add([]byte("contexts: ~\n"))
	f.Add([]byte("current: [1]\n"))
	f.Add([]byte("a: &a [x]\nb: [*a, *a]\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := t.TempDir()
		env := Env{Getenv: func(k string) string {
			if k == "XDG_CONFIG_HOME" {
				return dir
			}
			return ""
		}}
		p := filepath.Join(dir, "devpilot", "config.yaml")
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, _, err := loadConfig(env)
		if err != nil {
			return
		}
		if _, err := saveConfig(env, cfg); err != nil {
			if strings.Contains(err.Error(), "write config") {
				t.Fatalf("save: %v", err)
			}
			return
		}
		back, _, err := loadConfig(env)
		if err != nil || !reflect.DeepEqual(cfg, back) {
			t.Fatalf("a config does not survive save and load (%v):\n%#v\n%#v", err, cfg, back)
		}
		if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("saved config mode %v (%v)", st.Mode(), err)
		}
	})
}
