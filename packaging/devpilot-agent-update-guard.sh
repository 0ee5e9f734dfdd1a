#!/bin/sh
# devpilot-agent update guard: restores the previous agent version when an
# update does not come up. Installed by `devpilot-agent install` as
# /usr/lib/devpilot-agent/update-guard.sh; the source of truth is
# packaging/devpilot-agent-update-guard.sh in the Devpilot repository.
#
# It is deliberately not the agent's own code: it works when the new binary
# cannot run at all. Two ways in:
#
#   update-guard.sh start          ExecStartPre= of devpilot-agent.service (and
#                                  the dev sandbox, before each start): counts
#                                  starts under a pending update and rolls back
#                                  after MAX_STARTS, or once the deadline passed.
#   update-guard.sh deadline ID    the transient timer the agent arms with
#                                  systemd-run when it installs update ID: rolls
#                                  back if that update is still pending (the new
#                                  version hangs or is refused by the control
#                                  plane) and restarts the agent.
#
# The pending marker (written by the agent that installs an update, removed
# by the new version once it has an authenticated session):
#   $STATE/update-pending   lines id=… from=… to=… deadline=<unix seconds>
# A rollback points $LIB/current back at versions/<from> and leaves
#   $STATE/update-result.json  {"id","result":"rolled_back","from","to","reason"}
# which the old agent reports to the control plane at its next hello.
#
# Always exits 0 in start mode: a guard failure must never keep the agent
# from starting.
set -u

ROOT="${DEVPILOT_AGENT_ROOT:-}"
LIB="$ROOT/usr/lib/devpilot-agent"
STATE="$ROOT/var/lib/devpilot-agent"
MARK="$STATE/update-pending"
MAX_STARTS="${DEVPILOT_UPDATE_MAX_STARTS:-3}"
MODE="${1:-start}"
WANT_ID="${2:-}"

say() { echo "devpilot-agent update guard: $*" >&2; }

[ -f "$MARK" ] || exit 0

id='' from='' to='' deadline=0
while IFS='=' read -r k v; do
	case "$k" in
	id) id=$v ;;
	from) from=$v ;;
	to) to=$v ;;
	deadline) deadline=$v ;;
	esac
done <"$MARK"

# Values were written by the agent from validated input; refuse anything
# else rather than put it in a path or in JSON.
safe() { case "$1" in '' | *[!A-Za-z0-9._+-]*) return 1 ;; esac; }
if ! safe "$id" || ! safe "$from" || ! safe "$to"; then
	say "unreadable marker $MARK; removing it"
	rm -f "$MARK" "$MARK.starts"
	exit 0
fi
case "$deadline" in '' | *[!0-9]*) deadline=0 ;; esac

rollback() {
	reason=$1
	if [ ! -x "$LIB/versions/$from/devpilot-agent" ]; then
		say "cannot roll back update $id: $LIB/versions/$from/devpilot-agent is missing"
		rm -f "$MARK" "$MARK.starts"
		return 0
	fi
	ln -sfn "versions/$from" "$LIB/current.guard" &&
		{ mv -T "$LIB/current.guard" "$LIB/current" 2>/dev/null || { rm -f "$LIB/current.guard" && ln -sfn "versions/$from" "$LIB/current"; }; }
	printf '{"id":"%s","result":"rolled_back","from":"%s","to":"%s","reason":"%s"}\n' \
		"$id" "$from" "$to" "$reason" >"$STATE/update-result.json.tmp" &&
		mv -f "$STATE/update-result.json.tmp" "$STATE/update-result.json"
	rm -f "$MARK" "$MARK.starts"
	sync 2>/dev/null || :
	say "rolled back update $id: $to -> $from ($reason)"
}

now=$(date +%s)
case "$MODE" in
start)
	if [ "$deadline" -gt 0 ] && [ "$now" -ge "$deadline" ]; then
		rollback "version $to had no session with the control plane by its deadline"
		exit 0
	fi
	n=0
	[ -f "$MARK.starts" ] && n=$(cat "$MARK.starts" 2>/dev/null)
	case "$n" in '' | *[!0-9]*) n=0 ;; esac
	n=$((n + 1))
	if [ "$n" -gt "$MAX_STARTS" ]; then
		rollback "version $to failed to start $MAX_STARTS times"
		exit 0
	fi
	echo "$n" >"$MARK.starts"
	say "starting version $to of update $id (start $n of $MAX_STARTS before a rollback)"
	;;
deadline)
	if [ -n "$WANT_ID" ] && [ "$WANT_ID" != "$id" ]; then
		exit 0
	fi
	rollback "version $to had no session with the control plane by its deadline"
	if [ -z "$ROOT" ] && command -v systemctl >/dev/null 2>&1; then
		systemctl restart devpilot-agent.service || :
	fi
	;;
esac
exit 0
