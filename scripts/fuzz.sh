#!/bin/sh
# fuzz.sh [PACKAGE...]: run every fuzz target of the module (or of the
# packages given) for FUZZTIME each (default 15s). `go test -fuzz` takes one
# target of one package per run, so the targets are listed with
# `go test -list '^Fuzz'` in each package that has a func Fuzz… and run in
# turn. A finding is written to the package's testdata/fuzz/ (add it to
# the seed corpus when fixed); the script goes on with the other targets
# and fails at the end, with a line per target either way.
set -eu

fuzztime=${FUZZTIME:-15s}
go=${GO:-go}
cd "$(dirname "$0")/.."

if [ $# -eq 0 ]; then
	set -- ./...
fi
pkgs=$($go list -f '{{.ImportPath}} {{.Dir}}' "$@" | while read -r pkg dir; do
	if grep -l -s '^func Fuzz' "$dir"/*_test.go >/dev/null; then
		echo "$pkg"
	fi
done)

summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
failed=0
for pkg in $pkgs; do
	for target in $($go test -list '^Fuzz' "$pkg" | grep '^Fuzz'); do
		echo "== $pkg $target ($fuzztime)"
		start=$(date +%s)
		if $go test -run '^$' -fuzz "^$target\$" -fuzztime "$fuzztime" "$pkg"; then
			result=ok
		else
			result=FAIL
			failed=1
		fi
		printf '%-4s %-50s %-22s %ss\n' "$result" "$pkg" "$target" "$(($(date +%s) - start))" >>"$summary"
	done
done
echo
cat "$summary"
exit "$failed"
