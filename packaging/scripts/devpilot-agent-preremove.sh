#!/bin/sh
# devpilot-agent package: stop the agent when the package is removed.
set -e
case "$1" in
remove | 0) ;;
*) exit 0 ;;
esac
if [ -d /run/systemd/system ]; then
	systemctl disable --now devpilot-agent.service || true
fi
