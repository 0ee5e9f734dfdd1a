#!/bin/sh
# busy.sh [-n N] CMD...: run CMD while N shell busy loops (default: twice
# the number of cores) keep every core busy, as a loaded CI machine would;
# the loops end with CMD, and CMD's exit status is busy.sh's.
#
# This is how `make test-stress` proves that no test needs an idle machine:
# a test that passes only when the scheduler answers within milliseconds
# fails here. stress-ng --cpu N does the same if it is installed; plain
# shell loops need nothing.
set -eu

n=$(( $(nproc) * 2 ))
if [ "${1:-}" = "-n" ]; then
	n=$2
	shift 2
fi
[ "$#" -gt 0 ] || { echo "usage: busy.sh [-n N] CMD..." >&2; exit 2; }

pids=""
stop() {
	# shellcheck disable=SC2086 # word splitting of the pid list is intended
	[ -z "$pids" ] || kill $pids 2>/dev/null || true
}
trap stop EXIT INT TERM

i=0
while [ "$i" -lt "$n" ]; do
	sh -c 'while :; do :; done' &
	pids="$pids $!"
	i=$((i + 1))
done
echo "busy.sh: $n busy loops beside: $*" >&2

start=$(date +%s)
status=0
"$@" || status=$?
echo "busy.sh: finished in $(( $(date +%s) - start )) s with exit $status; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
exit "$status"
