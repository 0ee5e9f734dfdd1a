package packaging_test

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// scripts/packages.sh turns `git describe` into package versions; dpkg
// and rpm must accept them and order them as the releases are ordered,
// or an upgrade would be refused or go backwards.
func TestPackageVersions(t *testing.T) {
	t.Parallel()
	for describe, want := range map[string]string{
		"v1.2.3":                  "1.2.3",
		"v1.2.3-4-gabcdef0":       "1.2.3+git4.gabcdef0",
		"v1.2.3-4-gabcdef0-dirty": "1.2.3+git4.gabcdef0.dirty",
		"v2.0.0-rc1":              "2.0.0~rc1",
		"v2.0.0-rc1-3-g1234567":   "2.0.0~rc1+git3.g1234567",
		"4dcb4c0":                 "0.0.0+git.g4dcb4c0",
		"abcdef0-dirty":           "0.0.0+git.gabcdef0.dirty",
		"dev":                     "0.0.0+dev",
	} {
		if got := pkgVersion(t, describe); got != want {
			t.Errorf("%s → %q, want %q", describe, got, want)
		}
	}
	dpkg, err := exec.LookPath("dpkg")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("no dpkg to compare versions with (CI runs on Debian)")
		}
		t.Skip("no dpkg to compare versions with")
	}
	// Each is older than the next.
	order := []string{"4dcb4c0", "v1.2.3", "v1.2.3-4-gabcdef0", "v1.2.3-12-g0000000", "v2.0.0-rc1", "v2.0.0-rc1-3-g1234567", "v2.0.0", "v2.0.1"}
	for i := 1; i < len(order); i++ {
		a, b := pkgVersion(t, order[i-1]), pkgVersion(t, order[i])
		if err := exec.Command(dpkg, "--compare-versions", a, "lt", b).Run(); err != nil {
			t.Errorf("dpkg does not order %s (%s) before %s (%s)", a, order[i-1], b, order[i])
		}
	}
}

func pkgVersion(t *testing.T, describe string) string {
	t.Helper()
	out, err := exec.Command("../scripts/packages.sh", "--version-of", describe).Output()
	if err != nil {
		t.Fatalf("packages.sh --version-of %s: %v", describe, err)
	}
	v := strings.TrimSpace(string(out))
	if strings.ContainsAny(v, "- ") {
		t.Errorf("%s → %q: a '-' is the Debian revision separator and invalid in an rpm version", describe, v)
	}
	return v
}
