#!/bin/sh
# devpilot package: the system user the control plane runs as.
set -e
if ! getent group devpilot >/dev/null; then
	groupadd --system devpilot
fi
if ! getent passwd devpilot >/dev/null; then
	useradd --system --gid devpilot --home-dir /var/lib/devpilot --no-create-home \
		--shell /usr/sbin/nologin --comment "Devpilot control plane" devpilot
fi
