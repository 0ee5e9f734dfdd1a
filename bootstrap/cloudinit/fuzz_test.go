package cloudinit

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/devpilot/devpilot/controlplane/secrets"
	"github.com/devpilot/devpilot/shared/protocol"
)

// assignments are the variables the script's header assigns, in order;
// every one holds one single-quoted word.
var assignments = []string{"url", "server_id", "hostname_hint", "sha256_amd64", "sha256_arm64", "curl_proto", "ca_cert_pem", "bootstrap_json"}

// parseScript splits rendered user-data into its fixed header, its
// assignments and its fixed body. It fails unless the script is exactly
// header, then name='…' lines in the order of assignments (a value made
// only of single-quoted runs and \' — nothing a shell expands), then body.
// It returns each variable's value as the shell would see it.
func parseScript(t *testing.T, script []byte) map[string]string {
	t.Helper()
	s, ok := strings.CutPrefix(string(script), header)
	if !ok {
		t.Fatalf("script does not start with the fixed header:\n%s", script)
	}
	vals := map[string]string{}
	for _, name := range assignments {
		rest, ok := strings.CutPrefix(s, name+"=")
		if !ok {
			t.Fatalf("want the assignment of %s next, got %.80q", name, s)
		}
		var v strings.Builder
		for {
			switch {
			case strings.HasPrefix(rest, "'"):
				end := strings.IndexByte(rest[1:], '\'')
				if end < 0 {
					t.Fatalf("%s: unterminated single quote", name)
				}
				v.WriteString(rest[1 : 1+end])
				rest = rest[2+end:]
				continue
			case strings.HasPrefix(rest, `\'`):
				v.WriteByte('\'')
				rest = rest[2:]
				continue
			case strings.HasPrefix(rest, "\n"):
				rest = rest[1:]
			default:
				t.Fatalf("%s: unquoted text in its value: %.80q", name, rest)
			}
			break
		}
		if v.Len() == 0 && !strings.HasPrefix(s[len(name)+1:], "''\n") {
			t.Fatalf("%s: an empty value is written as ''", name)
		}
		vals[name] = v.String()
		s = rest
	}
	if s != body {
		t.Fatalf("script does not end with the fixed body; after the assignments:\n%s", s)
	}
	return vals
}

// FuzzRender renders user-data from hostile values: Render either refuses
// (and its error never holds the bootstrap token), or yields the fixed
// header and body around the eight single-quoted assignments, each of
// which expands to exactly the value given (or its validated form), so
// the script runs the same commands whatever the input.
func FuzzRender(f *testing.F) {
	ca, err := os.ReadFile("testdata/ca.pem")
	if err != nil {
		f.Fatal(err)
	}
	f.Add("https://cp.example.com:8443/", "srv_01HZX3", "dpb_0123456789abcdef", "web-1", "", shaA, true)
	f.Add("http://127.0.0.1:8080", "srv_1", "tok", "", "", shaB, false)
	f.Add("https://cp.example.com/x'y", `srv'; touch pwned; echo '`, "tok$(touch pwned)`touch pwned`\"\\'", `web'"$HOME`, "", shaA, true)
	f.Add("https://h/$(id)", "s\nrm -rf /", "t\x00", "h\r\n", "sha256/AAAA", "zz", true)
	f.Add("http://localhost./a%27b", "'", "''", "\\", "sha256/"+strings.Repeat("A", 43)+"=", strings.ToUpper(shaA), false)
	f.Add("https://[::1]:1/p?q#f", "é", "\u2028", "\x7f", " ", " "+shaA+" ", true)
	f.Fuzz(func(t *testing.T, rawURL, serverID, token, hostname, pin, sha string, withCA bool) {
		p := Params{ControlPlaneURL: rawURL, CAPin: pin, AgentSHA256: map[string]string{ArchAMD64: sha},
			ServerID: serverID, BootstrapToken: secrets.New(token), Hostname: hostname}
		if withCA {
			p.CACertPEM = string(ca)
		}
		script, err := Render(p)
		if err != nil {
			if len(token) >= 4 && strings.Contains(err.Error(), token) {
				p.BootstrapToken = secrets.New("\x01other")
				if _, err2 := Render(p); err2 == nil || !strings.Contains(err2.Error(), token) {
					t.Fatalf("the error holds the bootstrap token: %v", err)
				}
			}
			return
		}
		v := parseScript(t, script)
		if v["server_id"] != serverID || v["hostname_hint"] != hostname {
			t.Fatalf("server_id %q hostname %q expand to %q %q", serverID, hostname, v["server_id"], v["hostname_hint"])
		}
		if v["curl_proto"] != "=https" && v["curl_proto"] != "=http" {
			t.Fatalf("curl_proto = %q", v["curl_proto"])
		}
		if !strings.HasPrefix(v["url"], strings.TrimPrefix(v["curl_proto"], "=")+"://") {
			t.Fatalf("url %q does not have the scheme curl is limited to (%s)", v["url"], v["curl_proto"])
		}
		if want := strings.ToLower(strings.TrimSpace(sha)); v["sha256_amd64"] != want || v["sha256_arm64"] != "" {
			t.Fatalf("sha256 = %q/%q, want %q", v["sha256_amd64"], v["sha256_arm64"], want)
		}
		if withCA != (v["ca_cert_pem"] != "") || (withCA && v["ca_cert_pem"]+"\n" != strings.TrimSpace(string(ca))+"\n") {
			t.Fatalf("ca_cert_pem = %q", v["ca_cert_pem"])
		}
		var b protocol.Bootstrap
		dec := json.NewDecoder(bytes.NewReader([]byte(v["bootstrap_json"])))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&b); err != nil || dec.More() {
			t.Fatalf("bootstrap_json %q: %v", v["bootstrap_json"], err)
		}
		if b.URL != v["url"] || b.ServerID != serverID || b.BootstrapToken != token || (withCA && b.CAPin == "") {
			t.Fatalf("bootstrap_json = %+v, want url %q server %q and the token", b, v["url"], serverID)
		}
	})
}
