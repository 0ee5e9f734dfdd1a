// Command devpilot-image writes the control plane's OCI image (make image):
//
//	devpilot-image --binary bin/linux-amd64/devpilot --agent-dir DIR \
//	  --version v1.2.3 --revision COMMIT --arch amd64 --out dist
//
// It writes DIR/image (an OCI image layout) and DIR/devpilot-image.tar (for
// `docker load` / `podman load`), both tagged devpilot:VERSION. No
// container daemon is needed.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/devpilot/devpilot/packaging/image"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "devpilot-image:", err)
		os.Exit(1)
	}
}

var badTag = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

func run(args []string) error {
	fs := flag.NewFlagSet("devpilot-image", flag.ContinueOnError)
	bin := fs.String("binary", "", "static devpilot binary for --arch")
	agentDir := fs.String("agent-dir", "", "directory with devpilot-agent-linux-* builds to ship")
	ver := fs.String("version", "", "release (git describe)")
	rev := fs.String("revision", "", "git commit")
	arch := fs.String("arch", "amd64", "GOARCH of --binary")
	out := fs.String("out", "dist", "output directory")
	repo := fs.String("repository", "devpilot", "image name the tag is written under")
	if err := fs.Parse(args); err != nil {
		return err
	}
	agents := map[string]string{}
	if *agentDir != "" {
		m, err := filepath.Glob(filepath.Join(*agentDir, "devpilot-agent-linux-*"))
		if err != nil {
			return err
		}
		for _, p := range m {
			agents[filepath.Base(p)] = p
		}
		if len(agents) == 0 {
			return fmt.Errorf("no devpilot-agent-linux-* builds in %s", *agentDir)
		}
	}
	img, err := image.Build(image.Options{Binary: *bin, Agents: agents, Version: *ver, Revision: *rev, Arch: *arch})
	if err != nil {
		return err
	}
	tag := strings.TrimLeft(badTag.ReplaceAllString(*ver, "-"), ".-")
	if len(tag) > 128 {
		tag = tag[:128]
	}
	ref := *repo + ":" + tag
	if err := image.WriteLayout(filepath.Join(*out, "image"), ref, img); err != nil {
		return err
	}
	if err := image.WriteTarball(filepath.Join(*out, "devpilot-image.tar"), ref, img); err != nil {
		return err
	}
	d, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Printf("%s %s: %s/image (OCI layout), %s/devpilot-image.tar\n", ref, d, *out, *out)
	return nil
}
