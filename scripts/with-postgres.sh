#!/bin/sh
# with-postgres.sh CMD...: run CMD with DEVPILOT_TEST_POSTGRES pointing at a
# throwaway PostgreSQL server, started here from Debian's postgresql package
# in a temporary directory (loopback only, fsync off) and removed after.
# When DEVPILOT_TEST_POSTGRES is already set, CMD runs against that server.
# Without a server installed CMD still runs, and the tests that need one
# fail, saying so.
set -eu

if [ -n "${DEVPILOT_TEST_POSTGRES:-}" ]; then
	exec "$@"
fi
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
	echo "with-postgres: no PostgreSQL server found (apt-get install postgresql); tests that need one will fail" >&2
	exec "$@"
fi

dir=$(mktemp -d /tmp/devpilot-pg.XXXXXX)
chmod 755 "$dir"
run=""
if [ "$(id -u)" = 0 ]; then
	# initdb and postgres refuse to run as root.
	chown postgres "$dir"
	run="runuser -u postgres --"
fi
password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
printf '%s\n' "$password" >"$dir/pw"
chmod 600 "$dir/pw"
[ -z "$run" ] || chown postgres "$dir/pw"
$run "$bindir/initdb" -D "$dir/data" -U devpilot --pwfile="$dir/pw" --auth=scram-sha-256 -E UTF8 >"$dir/initdb.log" 2>&1 ||
	{ cat "$dir/initdb.log" >&2; exit 1; }
rm -f "$dir/pw"

stop() {
	$run "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
	rm -rf "$dir"
}
trap stop EXIT INT TERM

# A random high port; another try if it is taken.
for attempt in 1 2 3 4 5; do
	port=$((20000 + $(od -An -N2 -tu2 /dev/urandom) % 30000))
	if $run "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
		-o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" >/dev/null; then
		break
	fi
	[ "$attempt" -lt 5 ] || { cat "$dir/server.log" >&2; exit 1; }
done

echo "with-postgres: PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port" >&2
export DEVPILOT_TEST_POSTGRES="postgres://devpilot:$password@127.0.0.1:$port/postgres?sslmode=disable"
"$@"
