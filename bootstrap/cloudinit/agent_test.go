package cloudinit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestAgentHandler(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	amd, arm := []byte("amd64 build"), []byte("arm64 build, a bit longer")
	if err := os.WriteFile(filepath.Join(dir, "devpilot-agent-linux-amd64"), amd, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "devpilot-agent-linux-arm64"), arm, 0o755); err != nil {
		t.Fatal(err)
	}
	h, sums, err := AgentHandler(dir)
	if err != nil {
		t.Fatal(err)
	}
	if sums[ArchAMD64] != sha(amd) || sums[ArchARM64] != sha(arm) || len(sums) != 2 {
		t.Fatalf("sums = %v", sums)
	}
	// Served bytes are those hashed at start, even if the file changes.
	if err := os.WriteFile(filepath.Join(dir, "devpilot-agent-linux-amd64"), []byte("rebuilt"), 0o755); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	tests := []struct {
		method, path string
		header       map[string]string
		wantStatus   int
		wantBody     []byte
	}{
		{"GET", "/v1/agent/download/linux/amd64", nil, 200, amd},
		{"GET", "/v1/agent/download/linux/arm64", nil, 200, arm},
		{"HEAD", "/v1/agent/download/linux/arm64", nil, 200, nil},
		{"GET", "/v1/agent/download/linux/arm64", map[string]string{"If-None-Match": `"` + sha(arm) + `"`}, 304, nil},
		{"GET", "/v1/agent/download/linux/arm64", map[string]string{"Range": "bytes=0-4"}, 206, arm[:5]},
		{"GET", "/v1/agent/download/linux/riscv64", nil, 404, nil},
		{"GET", "/v1/agent/download/windows/amd64", nil, 404, nil},
		{"GET", "/v1/agent/download/linux", nil, 404, nil},
		{"GET", "/v1/agent/download/linux/amd64/extra", nil, 404, nil},
		{"POST", "/v1/agent/download/linux/amd64", nil, 405, nil},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			t.Parallel()
			req, _ := http.NewRequest(tt.method, srv.URL+tt.path, nil)
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = resp.Body.Close() }()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tt.wantStatus {
				t.Fatalf("status = %d, want %d (%s)", resp.StatusCode, tt.wantStatus, body)
			}
			switch {
			case resp.StatusCode == 404:
				var e struct {
					Error struct{ Code, Message, Hint string }
				}
				if err := json.Unmarshal(body, &e); err != nil || e.Error.Code != "not_found" || e.Error.Hint == "" {
					t.Errorf("404 body = %s (%v), want a JSON not_found error with a hint", body, err)
				}
			case resp.StatusCode/100 == 2:
				arch := tt.path[strings.LastIndex(tt.path, "/")+1:]
				if got := resp.Header.Get("X-Checksum-Sha256"); got != sums[arch] {
					t.Errorf("X-Checksum-Sha256 = %q, want %q", got, sums[arch])
				}
				if got := resp.Header.Get("ETag"); got != `"`+sums[arch]+`"` {
					t.Errorf("ETag = %q", got)
				}
				if tt.method == "GET" && string(body) != string(tt.wantBody) {
					t.Errorf("body = %q, want %q", body, tt.wantBody)
				}
				if resp.StatusCode == 200 {
					full := map[string]int{ArchAMD64: len(amd), ArchARM64: len(arm)}[arch]
					if got := resp.Header.Get("Content-Length"); got != strconv.Itoa(full) {
						t.Errorf("Content-Length = %q, want %d", got, full)
					}
				}
			}
		})
	}
}

func TestAgentHandlerFallback(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" || (runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64") {
		t.Skip("the plain devpilot-agent fallback is for linux/amd64 and linux/arm64 hosts")
	}
	dir := t.TempDir()
	plain := []byte("make build output")
	if err := os.WriteFile(filepath.Join(dir, "devpilot-agent"), plain, 0o755); err != nil {
		t.Fatal(err)
	}
	_, sums, err := AgentHandler(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != 1 || sums[runtime.GOARCH] != sha(plain) {
		t.Errorf("sums = %v, want only %s → the plain build", sums, runtime.GOARCH)
	}

	// A named build wins over the plain one.
	named := []byte("cross build")
	if err := os.WriteFile(filepath.Join(dir, AgentFileName("linux", runtime.GOARCH)), named, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, sums, err = AgentHandler(dir); err != nil || sums[runtime.GOARCH] != sha(named) {
		t.Errorf("sums = %v (%v), want the named build", sums, err)
	}
}

func TestAgentHandlerErrors(t *testing.T) {
	t.Parallel()
	empty := t.TempDir()
	if _, _, err := AgentHandler(empty); err == nil || !strings.Contains(err.Error(), "make build") {
		t.Errorf("empty dir: err = %v, want a hint to run make build", err)
	}
	zero := t.TempDir()
	if err := os.WriteFile(filepath.Join(zero, "devpilot-agent-linux-amd64"), nil, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, _, err := AgentHandler(zero); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty file: err = %v", err)
	}
	if _, _, err := AgentHandler(filepath.Join(empty, "missing")); err == nil {
		t.Error("missing dir accepted")
	}
}
