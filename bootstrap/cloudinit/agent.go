package cloudinit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"
)

// AgentDownloadPath is the route the user-data downloads the agent from,
// with {os} and {arch} path values (linux; amd64 or arm64).
const AgentDownloadPath = "/v1/agent/download/{os}/{arch}"

// AgentFileName is the name AgentHandler looks for in its directory, e.g.
// devpilot-agent-linux-amd64.
func AgentFileName(goos, arch string) string { return "devpilot-agent-" + goos + "-" + arch }

type agentBuild struct {
	body    []byte
	sha     string
	modTime time.Time
}

// AgentHandler serves GET/HEAD /v1/agent/download/{os}/{arch} from the
// devpilot-agent builds in dir (devpilot-agent-linux-amd64,
// devpilot-agent-linux-arm64; on a Linux host a plain devpilot-agent stands
// in for the host's own architecture when its named file is missing, which
// is what `make build` produces). The builds are read and hashed once, here,
// so what is served always matches the returned arch→sha256 map (feed it
// to Params.AgentSHA256) even if the files change later. Responses carry
// Content-Length, ETag (the sha256) and X-Checksum-Sha256; unknown os/arch
// get 404 with a JSON error.
func AgentHandler(dir string) (http.Handler, map[string]string, error) {
	builds := map[string]*agentBuild{}
	for _, arch := range []string{ArchAMD64, ArchARM64} {
		names := []string{AgentFileName("linux", arch)}
		if runtime.GOOS == "linux" && runtime.GOARCH == arch {
			names = append(names, "devpilot-agent")
		}
		for _, name := range names {
			b, err := readBuild(filepath.Join(dir, name))
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, nil, fmt.Errorf("agent builds: %w", err)
			}
			builds[arch] = b
			break
		}
	}
	if len(builds) == 0 {
		return nil, nil, fmt.Errorf("agent builds: none in %s (want %s or %s; run make build)",
			dir, AgentFileName("linux", ArchAMD64), AgentFileName("linux", ArchARM64))
	}
	sums := map[string]string{}
	for arch, b := range builds {
		sums[arch] = b.sha
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+AgentDownloadPath, func(w http.ResponseWriter, r *http.Request) {
		goos, arch := r.PathValue("os"), r.PathValue("arch")
		b := builds[arch]
		if goos != "linux" || b == nil {
			notFound(w, fmt.Sprintf("no devpilot-agent build for %s/%s", goos, arch),
				"the control plane serves linux/amd64 and linux/arm64 builds it was started with")
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/octet-stream")
		h.Set("ETag", `"`+b.sha+`"`)
		h.Set("X-Checksum-Sha256", b.sha)
		h.Set("Cache-Control", "no-cache")
		h.Set("Content-Disposition", `attachment; filename="devpilot-agent"`)
		// ServeContent sets Content-Length and answers Range and
		// If-None-Match against the ETag set above.
		http.ServeContent(w, r, "", b.modTime, bytes.NewReader(b.body))
	})
	mux.HandleFunc("GET /v1/agent/download/", func(w http.ResponseWriter, r *http.Request) {
		notFound(w, "no such agent download", "use GET /v1/agent/download/linux/{amd64|arm64}")
	})
	return mux, sums, nil
}

func readBuild(path string) (*agentBuild, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	body, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(body) == 0 {
		return nil, fmt.Errorf("%s: empty file", path)
	}
	sum := sha256.Sum256(body)
	return &agentBuild{body: body, sha: hex.EncodeToString(sum[:]), modTime: fi.ModTime()}, nil
}

func notFound(w http.ResponseWriter, msg, hint string) {
	body, _ := json.Marshal(map[string]any{"error": map[string]string{"code": "not_found", "message": msg, "hint": hint}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)+1))
	w.WriteHeader(http.StatusNotFound)
	_, _ = w.Write(append(body, '\n'))
}
