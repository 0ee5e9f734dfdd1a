#!/bin/sh
# devpilot package: /var/lib/devpilot (database, keyring, TLS files, owner
# token) is kept on remove and on purge: losing keyring.json makes every
# stored secret unreadable. Delete it yourself when you mean to.
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
