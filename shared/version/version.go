// Package version is the build's version, set by the linker:
//
//	-X github.com/devpilot/devpilot/shared/version.Version=v1.2.3
//	-X github.com/devpilot/devpilot/shared/version.Commit=<git commit>
//
// (make build, make packages and make image pass both). A build without
// them falls back to what the Go toolchain recorded (runtime/debug build
// info: the main module's version and vcs.revision, when -buildvcs was on).
package version

import (
	"runtime"
	"runtime/debug"
)

// Version is the release (git describe), or "dev".
var Version = "dev"

// Commit is the full git commit the build came from, or "" when unknown.
var Commit = ""

// Info is what a binary says about its build.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"` // full hash, "" when unknown
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"` // GOOS/GOARCH
}

// Get returns the build's Info: the linker's values first, then the build
// info the toolchain embedded.
func Get() Info {
	return get(Version, Commit, debug.ReadBuildInfo)
}

func get(ver, commit string, read func() (*debug.BuildInfo, bool)) Info {
	i := Info{Version: ver, Commit: commit, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if i.Version == "" {
		i.Version = "dev"
	}
	bi, ok := read()
	if !ok || bi == nil {
		return i
	}
	if bi.GoVersion != "" {
		i.GoVersion = bi.GoVersion
	}
	if i.Version == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		i.Version = bi.Main.Version
	}
	if i.Commit == "" {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				i.Commit = s.Value
			}
		}
	}
	return i
}

// ShortCommit is the commit's first 12 characters, or "unknown".
func (i Info) ShortCommit() string {
	switch {
	case i.Commit == "":
		return "unknown"
	case len(i.Commit) > 12:
		return i.Commit[:12]
	}
	return i.Commit
}

// String is one line, the same in both binaries' --version and in the
// agent_version an agent reports (at most 64 bytes for any git describe
// output of a sane length): "v1.2.3 (commit 0123456789ab, go1.26.8)".
// Platform is left out to keep it short: agents report it in their facts.
func (i Info) String() string {
	return i.Version + " (commit " + i.ShortCommit() + ", " + i.GoVersion + ")"
}

// String is Get().String().
func String() string { return Get().String() }
