#!/bin/sh
# scripts/packages.sh DIST: the .deb and .rpm packages of devpilot and
# devpilot-agent (make packages). Needs only Go: binaries are built here
# (static, CGO_ENABLED=0), packages by nfpm (tools/go.mod).
#   VERSION  git describe output (the Makefile's), turned into PKG_VERSION
#   COMMIT   the git commit stamped into the binaries
#   PACKAGES, PACKAGERS  subsets of "devpilot devpilot-agent" and "deb rpm"
#   ARCHES   package architectures (default amd64); the control-plane
#            package of each carries the agent builds for amd64 and arm64
set -eu
DIST=${1:-dist}
GO=${GO:-go}
VERSION=${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
COMMIT=${COMMIT:-$(git rev-parse HEAD 2>/dev/null || true)}
ARCHES=${ARCHES:-amd64}
PACKAGES=${PACKAGES:-devpilot devpilot-agent} # a subset for tests
PACKAGERS=${PACKAGERS:-deb rpm}

# pkg_version turns git describe output into a version dpkg and rpm both
# accept and order correctly: v1.2.3 → 1.2.3; v1.2.3-4-gabcdef0 →
# 1.2.3+git4.gabcdef0 (after 1.2.3); v2.0.0-rc1 → 2.0.0~rc1; an untagged abcdef0 →
# 0.0.0+git.gabcdef0; -dirty → .dirty. No '-' survives (rpm forbids it in
# a version and dpkg would read it as the Debian revision).
pkg_version() {
	v=${1#v}
	dirty=
	case "$v" in *-dirty) v=${v%-dirty} dirty=.dirty ;; esac
	if printf '%s' "$v" | grep -Eq '^[0-9]+\.[0-9A-Za-z.~-]*-[0-9]+-g[0-9a-f]+$'; then
		hash=${v##*-}
		rest=${v%-*}
		n=${rest##*-}
		base=${rest%-*}
		v="$base+git$n.$hash"
	elif printf '%s' "$v" | grep -Eq '^[0-9]+\.'; then
		: # a release tag
	elif [ "$v" = dev ] || [ -z "$v" ]; then
		v=0.0.0+dev
	else
		v="0.0.0+git.g$v" # an untagged commit
	fi
	# What is left of a '-' is a pre-release (v2.0.0-rc1): '~' sorts it
	# before the release in both dpkg and rpm.
	printf '%s%s\n' "$(printf '%s' "$v" | tr '-' '~' | tr -c 'A-Za-z0-9.+~\n' '.')" "$dirty"
}

if [ "${1:-}" = "--version-of" ]; then
	pkg_version "$2"
	exit 0
fi

PKG_VERSION=$(pkg_version "$VERSION")
LDFLAGS="-s -w -X github.com/devpilot/devpilot/shared/version.Version=$VERSION -X github.com/devpilot/devpilot/shared/version.Commit=$COMMIT"
NFPM="$GO tool -modfile=$(pwd)/tools/go.mod nfpm"
mkdir -p "$DIST"
for arch in $ARCHES; do
	stage="$DIST/stage/$arch"
	rm -rf "$stage"
	mkdir -p "$stage/agent"
	CGO_ENABLED=0 GOOS=linux GOARCH=$arch $GO build -trimpath -ldflags "$LDFLAGS" -o "$stage/devpilot" ./cmd/devpilot
	for a in amd64 arm64; do
		CGO_ENABLED=0 GOOS=linux GOARCH=$a $GO build -trimpath -ldflags "$LDFLAGS" -o "$stage/agent/devpilot-agent-linux-$a" ./cmd/devpilot-agent
	done
	# The packaged agent lives in /usr/bin (a package may not own
	# /usr/local); `devpilot-agent install` lays /usr/local/bin itself.
	# A packaged agent is updated by the package manager, not by
	# update_agent: no versions/current link, no update guard.
	sed -e 's|^ExecStart=/usr/lib/devpilot-agent/current/devpilot-agent |ExecStart=/usr/bin/devpilot-agent |' \
		-e '/^ExecStartPre=.*update-guard.sh/d' packaging/devpilot-agent.service >"$stage/devpilot-agent.service"
	grep -q '^ExecStart=/usr/bin/devpilot-agent run$' "$stage/devpilot-agent.service"
	for pkg in $PACKAGES; do
		for fmt in $PACKAGERS; do
			STAGE=$stage PKG_ARCH=$arch PKG_VERSION=$PKG_VERSION \
				$NFPM package --config "packaging/nfpm/$pkg.yaml" --packager "$fmt" --target "$DIST/"
		done
	done
done
ls -l "$DIST"/*.deb "$DIST"/*.rpm 2>/dev/null || true
