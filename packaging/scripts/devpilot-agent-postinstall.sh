#!/bin/sh
# devpilot-agent package: the unit is installed, not enabled: the agent
# needs /etc/devpilot-agent/config.json, which `devpilot-agent install
# --bootstrap-file FILE` writes (the control plane's user-data does this
# on servers it provisions).
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	if [ -f /etc/devpilot-agent/config.json ]; then
		systemctl try-restart devpilot-agent.service || true
	fi
fi
