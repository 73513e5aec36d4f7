#!/usr/bin/env bash
# Runs the mirror tests: the C programs in $OUT/mirror-tests and the shell
# tests here, each under a time limit. Prints every check line ("PASS
# mirror: ...", "FAIL mirror: ...") and the summary "mirror: N passed, N
# failed". A check that cannot run here prints SKIP; under CI=true that is
# a failure (the test programs report it as FAIL themselves).
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${OUT:?OUT must name the build directory}
export OUT=$out
limit=${TEST_TIMEOUT:-180}
pass=0 fail=0 skip=0

run_one() {
	local name=$1 log rc
	shift
	log=$(mktemp)
	echo "== $name"
	timeout -k 5 "$limit" "$@" >"$log" 2>&1
	rc=$?
	grep -E '^(PASS|FAIL|SKIP) mirror: ' "$log"
	local p f s
	p=$(grep -c '^PASS mirror: ' "$log")
	f=$(grep -c '^FAIL mirror: ' "$log")
	s=$(grep -c '^SKIP mirror: ' "$log")
	pass=$((pass + p)) fail=$((fail + f)) skip=$((skip + s))
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		fail=$((fail + 1))
		if [ "$rc" -eq 124 ]; then
			echo "FAIL mirror: $name timed out after ${limit}s"
		else
			echo "FAIL mirror: $name exited $rc"
		fi
		f=1
	fi
	if [ "$f" -gt 0 ]; then
		echo "--- output of $name:"
		grep -vE '^(PASS|SKIP) mirror: ' "$log" | tail -n 60 | sed 's/^/    /'
	fi
	rm -f "$log"
}

for t in "$out"/mirror-tests/*; do
	[ -x "$t" ] || continue
	run_one "$(basename "$t")" "$t"
done
for t in "$here"/*.sh; do
	[ "$(basename "$t")" = run.sh ] && continue
	run_one "$(basename "$t")" bash "$t"
done

if [ "${CI:-}" = true ] && [ "$skip" -gt 0 ]; then
	echo "FAIL mirror: $skip check(s) skipped under CI"
	fail=$((fail + skip))
fi
echo "mirror: $pass passed, $fail failed"
[ $((pass + fail)) -gt 0 ] || { echo "mirror: no test ran"; exit 1; }
[ "$fail" -eq 0 ]
