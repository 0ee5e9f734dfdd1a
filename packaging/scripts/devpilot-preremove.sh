#!/bin/sh
# devpilot package: stop and disable the unit when the package is removed
# (not on an upgrade, where postinstall restarts it).
set -e
# deb: remove | upgrade <new version>; rpm: 0 remove, 1 upgrade.
case "$1" in
remove | 0) ;;
*) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
	systemctl disable --now devpilot.service || true
fi
