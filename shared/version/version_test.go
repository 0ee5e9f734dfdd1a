package version

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestGet(t *testing.T) {
	t.Parallel()
	full := "0123456789abcdef0123456789abcdef01234567"
	withVCS := func() (*debug.BuildInfo, bool) {
		return &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "fedcba9876543210fedcba9876543210fedcba98"}}}, true
	}
	tagged := func() (*debug.BuildInfo, bool) {
		return &debug.BuildInfo{GoVersion: "go1.99.1", Main: debug.Module{Version: "v0.4.0"}}, true
	}
	none := func() (*debug.BuildInfo, bool) { return nil, false }
	for _, tc := range []struct {
		name, ver, commit string
		read              func() (*debug.BuildInfo, bool)
		want              string
	}{
		{"ldflags win over build info", "v1.2.3", full, withVCS, "v1.2.3 (commit 0123456789ab, go1.99.1)"},
		{"vcs.revision when the linker set no commit", "dev", "", withVCS, "dev (commit fedcba987654, go1.99.1)"},
		{"module version from go install", "dev", "", tagged, "v0.4.0 (commit unknown, go1.99.1)"},
		{"nothing recorded", "", "", none, "dev (commit unknown, " + runtime.Version() + ")"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := get(tc.ver, tc.commit, tc.read).String(); got != tc.want {
				t.Errorf("String() = %q, want %q", got, tc.want)
			}
		})
	}
}

// The agent reports String() as agent_version, which the hub cuts at 64
// bytes: a git-describe version of the usual length must fit whole.
func TestStringFitsAgentVersion(t *testing.T) {
	t.Parallel()
	s := get("v10.20.30-123-g0123456-dirty", "0123456789abcdef0123456789abcdef01234567",
		func() (*debug.BuildInfo, bool) { return nil, false }).String()
	if len(s) > 64 || !strings.Contains(s, "0123456789ab") {
		t.Errorf("String() = %q (%d bytes), want the commit in at most 64 bytes", s, len(s))
	}
}
