#!/bin/sh
# devpilot package: data dir and env file ownership; enable the unit on a
# first install (it is started by the operator once DEVPILOT_PUBLIC_URL is
# set), restart it on an upgrade if it was running.
set -e
install -d -m 0700 -o devpilot -g devpilot /var/lib/devpilot
chown devpilot:devpilot /var/lib/devpilot
chmod 0700 /var/lib/devpilot
chown root:devpilot /etc/devpilot /etc/devpilot/devpilot.env
chmod 0750 /etc/devpilot
chmod 0640 /etc/devpilot/devpilot.env

# deb: configure <old version, empty on a first install>; rpm: 1 install, 2 upgrade.
upgrade=
case "$1" in
configure) [ -n "$2" ] && upgrade=1 ;;
[0-9]*) [ "$1" -ge 2 ] && upgrade=1 ;;
esac

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	if [ -n "$upgrade" ]; then
		systemctl try-restart devpilot.service || true
	else
		systemctl enable devpilot.service || true
	fi
fi
