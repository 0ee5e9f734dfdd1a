// Package version is the build's version, set by the linker
// (-X github.com/devpilot/devpilot/shared/version.Version=…).
package version

import "runtime/debug"

// Version is the release, or "dev".
var Version = "dev"

// String is the version with the VCS revision when the build recorded one.
func String() string {
	rev := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				rev = s.Value[:12]
			}
		}
	}
	if rev == "" {
		return Version
	}
	return Version + " (" + rev + ")"
}
