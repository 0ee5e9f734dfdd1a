package image_test

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/devpilot/devpilot/packaging/image"
)

// Builds the image the way make image does (a real static binary, the
// OCI layout and the tarball in a temp dir), reads both back and checks
// the config the README's Install section documents, and that the binary
// in the layers is there, executable and runs.
func TestImage(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("builds the control plane; skipped under -short")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "devpilot")
	const pkg = "github.com/devpilot/devpilot/shared/version"
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "-ldflags",
		"-s -w -X "+pkg+".Version=v7.7.7 -X "+pkg+".Commit=0123456789abcdef0123456789abcdef01234567", "../../cmd/devpilot")
	build.Env = append(build.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	agent := filepath.Join(dir, "devpilot-agent-linux-"+runtime.GOARCH)
	if err := os.WriteFile(agent, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	img, err := image.Build(image.Options{Binary: bin, Agents: map[string]string{filepath.Base(agent): agent},
		Version: "v7.7.7", Revision: "0123456789abcdef0123456789abcdef01234567", Arch: runtime.GOARCH})
	if err != nil {
		t.Fatal(err)
	}
	lay, tb := filepath.Join(dir, "image"), filepath.Join(dir, "devpilot-image.tar")
	if err := image.WriteLayout(lay, "devpilot:v7.7.7", img); err != nil {
		t.Fatal(err)
	}
	if err := image.WriteTarball(tb, "devpilot:v7.7.7", img); err != nil {
		t.Fatal(err)
	}

	p, err := layout.FromPath(lay)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 || im.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != "v7.7.7" {
		t.Fatalf("layout index = %+v, want one image tagged v7.7.7", im.Manifests)
	}
	fromLayout, err := p.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	fromTar, err := tarball.ImageFromPath(tb, nil)
	if err != nil {
		t.Fatal(err)
	}
	dl, _ := fromLayout.Digest()
	cl, _ := fromTar.ConfigName()
	cw, _ := fromLayout.ConfigName()
	if cl != cw {
		t.Errorf("tarball config %s, layout config %s: not the same image", cl, cw)
	}
	t.Logf("image %s", dl)

	cf, err := fromLayout.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if c.User != "65532:65532" {
		t.Errorf("User = %q, want the numeric non-root 65532:65532", c.User)
	}
	if want := []string{"/usr/bin/devpilot", "serve"}; !reflect.DeepEqual(c.Entrypoint, want) {
		t.Errorf("Entrypoint = %q, want %q", c.Entrypoint, want)
	}
	if _, ok := c.ExposedPorts["8443/tcp"]; !ok || len(c.ExposedPorts) != 1 {
		t.Errorf("ExposedPorts = %v, want 8443/tcp", c.ExposedPorts)
	}
	if _, ok := c.Volumes["/data"]; !ok || len(c.Volumes) != 1 {
		t.Errorf("Volumes = %v, want /data", c.Volumes)
	}
	for k, v := range map[string]string{
		"org.opencontainers.image.version":  "v7.7.7",
		"org.opencontainers.image.revision": "0123456789abcdef0123456789abcdef01234567",
		"org.opencontainers.image.source":   "https://github.com/devpilot/devpilot",
	} {
		if c.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, c.Labels[k], v)
		}
	}
	env := map[string]bool{}
	for _, e := range c.Env {
		env[e] = true
	}
	for _, e := range []string{"DEVPILOT_DATA_DIR=/data", "DEVPILOT_LISTEN=:8443", "DEVPILOT_AGENT_DIR=/usr/lib/devpilot/agent"} {
		if !env[e] {
			t.Errorf("Env %q lacks %s", c.Env, e)
		}
	}
	if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}

	// The flattened file system: the binary executable, the data dir
	// the user's own and private, the user in /etc/passwd.
	files := map[string]*tar.Header{}
	rc := mutate.Extract(fromLayout)
	defer func() { _ = rc.Close() }()
	tr := tar.NewReader(rc)
	extracted := filepath.Join(dir, "extracted-devpilot")
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimSuffix(h.Name, "/")] = h
		if h.Name == "usr/bin/devpilot" {
			f, err := os.OpenFile(extracted, os.O_CREATE|os.O_WRONLY, 0o755)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil { //nolint:gosec // our own test image
				t.Fatal(err)
			}
			_ = f.Close()
		}
	}
	if h := files["usr/bin/devpilot"]; h == nil || h.Mode&0o111 != 0o111 || h.Typeflag != tar.TypeReg {
		t.Fatalf("usr/bin/devpilot in the image: %+v, want an executable file", h)
	}
	if h := files["data"]; h == nil || h.Uid != 65532 || h.Mode&0o777 != 0o700 {
		t.Errorf("data in the image: %+v, want 0700 owned by 65532", h)
	}
	for _, f := range []string{"etc/passwd", "etc/ssl/certs/ca-certificates.crt", "usr/lib/devpilot/agent/devpilot-agent-linux-" + runtime.GOARCH} {
		if files[f] == nil {
			t.Errorf("%s missing from the image", f)
		}
	}
	out, err := exec.Command(extracted, "version").CombinedOutput()
	if err != nil || string(out) != "devpilot v7.7.7 (commit 0123456789ab, "+runtime.Version()+")\n" {
		t.Errorf("the image's devpilot version: %q, %v", out, err)
	}
}
