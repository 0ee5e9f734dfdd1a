// Package image builds the control plane's OCI image without a container
// daemon (go-containerregistry: mutate, layout, tarball). The image is
// FROM scratch: a static devpilot binary, the agent builds it serves, CA
// roots for the clouds' APIs, and passwd/group entries for a non-root
// numeric user. `make image` runs packaging/cmd/devpilot-image, which
// calls Build and writes dist/image (OCI layout) and dist/devpilot-image.tar.
package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// What the README's Install section documents; the test reads the built
// image back and checks each against it.
const (
	UID       = 65532 // numeric, so runtimes that refuse named non-root users accept it
	GID       = 65532
	DataDir   = "/data" // the volume: database, keyring, TLS files, owner token
	Port      = "8443/tcp"
	Binary    = "/usr/bin/devpilot"
	AgentDir  = "/usr/lib/devpilot/agent"
	CABundle  = "/etc/ssl/certs/ca-certificates.crt"
	SourceURL = "https://github.com/devpilot/devpilot"
)

// Entrypoint is `devpilot serve`.
var Entrypoint = []string{Binary, "serve"}

// Options are the inputs of one build.
type Options struct {
	Binary   string            // the static devpilot binary for Arch
	Agents   map[string]string // agent builds: file name in AgentDir → path (devpilot-agent-linux-amd64…)
	CABundle string            // PEM roots copied to CABundle (default: this machine's)
	Version  string            // org.opencontainers.image.version
	Revision string            // org.opencontainers.image.revision (git commit)
	Arch     string            // GOARCH of Binary, e.g. amd64
	Created  time.Time         // image and file times; zero: the Unix epoch (reproducible)
}

// Build returns the image.
func Build(o Options) (v1.Image, error) {
	if o.Arch == "" || o.Binary == "" || o.Version == "" {
		return nil, fmt.Errorf("image: binary, arch and version are required")
	}
	if o.CABundle == "" {
		o.CABundle = CABundle
	}
	if o.Created.IsZero() {
		o.Created = time.Unix(0, 0).UTC()
	}
	w := newLayer(o.Created)
	w.dir("etc", 0o755, 0)
	w.file("etc/passwd", 0o644, 0, []byte(fmt.Sprintf("root:x:0:0:root:/root:/sbin/nologin\ndevpilot:x:%d:%d:Devpilot control plane:%s:/sbin/nologin\n", UID, GID, DataDir)))
	w.file("etc/group", 0o644, 0, []byte(fmt.Sprintf("root:x:0:\ndevpilot:x:%d:\n", GID)))
	ca, err := os.ReadFile(o.CABundle)
	if err != nil {
		return nil, fmt.Errorf("image: CA roots (install ca-certificates): %w", err)
	}
	w.dir("etc/ssl", 0o755, 0)
	w.dir("etc/ssl/certs", 0o755, 0)
	w.file(strings.TrimPrefix(CABundle, "/"), 0o644, 0, ca)
	w.dir("tmp", 0o1777, 0)
	w.dir(strings.TrimPrefix(DataDir, "/"), 0o700, UID)
	base, err := w.layer()
	if err != nil {
		return nil, err
	}

	w = newLayer(o.Created)
	bin, err := os.ReadFile(o.Binary)
	if err != nil {
		return nil, fmt.Errorf("image: %w", err)
	}
	w.dir("usr", 0o755, 0)
	w.dir("usr/bin", 0o755, 0)
	w.file(strings.TrimPrefix(Binary, "/"), 0o755, 0, bin)
	w.dir("usr/lib", 0o755, 0)
	w.dir("usr/lib/devpilot", 0o755, 0)
	w.dir(strings.TrimPrefix(AgentDir, "/"), 0o755, 0)
	names := make([]string, 0, len(o.Agents))
	for n := range o.Agents {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		b, err := os.ReadFile(o.Agents[n])
		if err != nil {
			return nil, fmt.Errorf("image: agent build: %w", err)
		}
		w.file(path.Join(strings.TrimPrefix(AgentDir, "/"), n), 0o755, 0, b)
	}
	app, err := w.layer()
	if err != nil {
		return nil, err
	}

	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.AppendLayers(img, base, app)
	if err != nil {
		return nil, fmt.Errorf("image: layers: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image: config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", o.Arch
	cf.Created = v1.Time{Time: o.Created}
	cf.Config = v1.Config{
		User:       fmt.Sprintf("%d:%d", UID, GID),
		Entrypoint: Entrypoint,
		WorkingDir: DataDir,
		Env: []string{
			"DEVPILOT_DATA_DIR=" + DataDir,
			"DEVPILOT_LISTEN=:" + strings.TrimSuffix(Port, "/tcp"),
			"DEVPILOT_AGENT_DIR=" + AgentDir,
			"SSL_CERT_FILE=" + CABundle,
		},
		ExposedPorts: map[string]struct{}{Port: {}},
		Volumes:      map[string]struct{}{DataDir: {}},
		Labels:       Labels(o.Version, o.Revision),
		StopSignal:   "SIGTERM",
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("image: config: %w", err)
	}
	return img, nil
}

// Labels are the image's OCI annotations.
func Labels(version, revision string) map[string]string {
	return map[string]string{
		"org.opencontainers.image.title":       "devpilot",
		"org.opencontainers.image.description": "Devpilot control plane (devpilot serve)",
		"org.opencontainers.image.version":     version,
		"org.opencontainers.image.revision":    revision,
		"org.opencontainers.image.source":      SourceURL,
		"org.opencontainers.image.url":         SourceURL,
	}
}

// layerWriter builds one layer's tar in memory.
type layerWriter struct {
	buf bytes.Buffer
	tw  *tar.Writer
	at  time.Time
	err error
}

func newLayer(at time.Time) *layerWriter {
	w := &layerWriter{at: at}
	w.tw = tar.NewWriter(&w.buf)
	return w
}

func (w *layerWriter) header(h *tar.Header) {
	if w.err == nil {
		h.ModTime, h.Format = w.at, tar.FormatPAX
		w.err = w.tw.WriteHeader(h)
	}
}

func (w *layerWriter) dir(name string, mode int64, uid int) {
	w.header(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: uid, Gid: uid})
}

func (w *layerWriter) file(name string, mode int64, uid int, body []byte) {
	w.header(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Uid: uid, Gid: uid, Size: int64(len(body))})
	if w.err == nil {
		_, w.err = w.tw.Write(body)
	}
}

func (w *layerWriter) layer() (v1.Layer, error) {
	if w.err == nil {
		w.err = w.tw.Close()
	}
	if w.err != nil {
		return nil, fmt.Errorf("image: layer: %w", w.err)
	}
	b := w.buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("image: layer: %w", err)
	}
	return l, nil
}
