#!/usr/bin/env bash
# Runs the nbdkit plugin tests (every *.sh here but lib.sh and run.sh), each
# under a time limit. Prints their check lines and "nbdkit: N passed, N failed".
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${OUT:?OUT must name the build directory}"
limit=${TEST_TIMEOUT:-300}
pass=0 fail=0
for t in "$here"/*.sh; do
	case $(basename "$t") in lib.sh | run.sh) continue ;; esac
	[ -n "${T:-}" ] && [ "$(basename "$t" .sh)" != "$T" ] && continue
	log=$(mktemp)
	echo "== $(basename "$t")"
	timeout -k 10 "$limit" bash "$t" >"$log" 2>&1
	rc=$?
	grep -E '^(PASS|FAIL) nbdkit: ' "$log"
	p=$(grep -c '^PASS nbdkit: ' "$log")
	f=$(grep -c '^FAIL nbdkit: ' "$log")
	pass=$((pass + p)) fail=$((fail + f))
	if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then
		fail=$((fail + 1))
		echo "FAIL nbdkit: $(basename "$t") exited $rc$([ $rc -eq 124 ] && echo " (timed out after ${limit}s)")"
		f=1
	fi
	if [ "$f" -gt 0 ]; then
		echo "--- output of $(basename "$t"):"
		grep -vE '^PASS nbdkit: ' "$log" | tail -n 60 | sed 's/^/    /'
	fi
	rm -f "$log"
done
echo "nbdkit: $pass passed, $fail failed"
[ $((pass + fail)) -gt 0 ] || { echo "nbdkit: no test ran"; exit 1; }
[ "$fail" -eq 0 ]
