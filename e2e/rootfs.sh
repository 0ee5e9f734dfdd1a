#!/usr/bin/env bash
# Builds (once) the Debian bookworm root file system the e2e droplet runtime
# boots with systemd-nspawn: systemd, dbus, cloud-init, openssh-server, curl,
# ca-certificates (and locales, which cloud-init's locale module needs),
# from the Debian mirror this machine's apt uses.
#
#   e2e/rootfs.sh [CACHE_DIR]     (default /var/cache/devpilot-e2e)
#
# The result is CACHE_DIR/rootfs-bookworm with a stamp file; it is rebuilt
# only when this script changes. Needs root, debootstrap.
set -euo pipefail

cache="${1:-${DEVPILOT_E2E_CACHE:-/var/cache/devpilot-e2e}}"
target="$cache/rootfs-bookworm"
stamp="$target/.devpilot-e2e-stamp"
want=$(sha256sum "$0" | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
	echo "e2e rootfs: cached at $target"
	exit 0
fi
[ "$(id -u)" = 0 ] || { echo "e2e rootfs: must run as root (debootstrap)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "e2e rootfs: debootstrap not installed (apt-get install debootstrap systemd-container)" >&2; exit 1; }

# The mirror apt uses here (deb822 URIs: or one-line deb entries), else Debian's CDN.
mirror="${DEVPILOT_E2E_MIRROR:-}"
if [ -z "$mirror" ]; then
	mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
		sed -n -e 's/^URIs:[[:space:]]*//p' -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\)[[:space:]]\+bookworm[[:space:]].*/\2/p' |
		tr ' ' '\n' | grep -E '/debian/?$' | head -n1 || true)
fi
mirror="${mirror:-http://deb.debian.org/debian}"
echo "e2e rootfs: debootstrap bookworm from $mirror into $target"

mkdir -p "$cache"
tmp="$cache/rootfs-bookworm.tmp"
rm -rf "$tmp"
start=$(date +%s)
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$tmp" "$mirror"

# Packages with virtual dependencies (cloud-init's python3-cryptography)
# need apt's resolver, not debootstrap's: install them in a chroot.
printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
chmod 0755 "$tmp/usr/sbin/policy-rc.d"
cp /etc/resolv.conf "$tmp/etc/resolv.conf"
mount --bind /proc "$tmp/proc"
trap 'umount "$tmp/proc" 2>/dev/null || true' EXIT
chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	cloud-init openssh-server curl ca-certificates locales
# cloud-init's locale module sets LANG=en_US.UTF-8, which Debian's
# locale-gen only makes when /etc/locale.gen lists it (as images do).
sed -i 's/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/' "$tmp/etc/locale.gen"
chroot "$tmp" locale-gen
chroot "$tmp" apt-get clean
umount "$tmp/proc"
trap - EXIT
rm -f "$tmp/usr/sbin/policy-rc.d"
rm -rf "$tmp"/var/lib/apt/lists/*

# Like a cloud image: cloud-init reads the NoCloud seed only, leaves the
# (shared host) network alone, and lets the workspace key log in as root.
cat >"$tmp/etc/cloud/cloud.cfg.d/90-devpilot-e2e.cfg" <<'CFG'
datasource_list: [ NoCloud, None ]
network: {config: disabled}
disable_root: false
ssh_pwauth: false
CFG
# A fresh machine-id per container (systemd creates it on first boot).
: >"$tmp/etc/machine-id"
rm -f "$tmp/var/lib/dbus/machine-id"
# Host keys are made per instance by cloud-init (ssh_deletekeys), as on a cloud image.
rm -f "$tmp"/etc/ssh/ssh_host_*
# No consoles to wait for in a container.
rm -f "$tmp/etc/systemd/system/getty.target.wants/"* 2>/dev/null || true
: >"$tmp/etc/hostname"

echo "$want" >"$tmp/.devpilot-e2e-stamp"
rm -rf "$target"
mv "$tmp" "$target"
echo "e2e rootfs: built in $(( $(date +%s) - start ))s"
