#!/usr/bin/env bash
# Runs the C tests in $1 (or only test $2), each under a timeout, and
# prints one line per test and a summary line "N passed, N failed, N skipped".
# A skip (exit 77) prints its reason; under CI (CI=true) a skip fails.
set -u
dir=$1
only=${2:-}
limit=${TEST_TIMEOUT:-120}
# valgrind (3.19) runs io_uring_enter as a non-blocking syscall, holding its
# global lock while a thread waits in the kernel, which stops every other
# thread: under valgrind the tests run on the thread-pool engine unless
# DMIO_ENGINE says otherwise (make test-c-valgrind-uring sets uring with
# DMIO_URING_WAIT=poll, which never waits inside io_uring_enter).
if [ -n "${VALGRIND:-}" ]; then
	[ -n "${DMIO_ENGINE:-}" ] || export DMIO_ENGINE=threads
fi
# Memory checkers keep memory of their own (shadow, quarantine): tests that
# bound RSS say so instead of checking it.
if [ -n "${VALGRIND:-}" ] || [ -n "${SAN:-}" ]; then
	export DMIO_TEST_INSTRUMENTED=1
fi
pass=0 fail=0 skip=0 failed=()
for t in "$dir"/*; do
	[ -x "$t" ] || continue
	name=$(basename "$t")
	[ -n "$only" ] && [ "$name" != "$only" ] && continue
	log=$(mktemp)
	start=$(date +%s%N)
	if [ -n "${VALGRIND:-}" ]; then
		timeout -k 5 $((limit * 4)) valgrind -q --error-exitcode=99 --leak-check=full \
			--show-leak-kinds=definite --errors-for-leak-kinds=definite "$t" >"$log" 2>&1
		rc=$?
		# valgrind must report nothing at all, not just exit 0.
		if [ $rc -eq 0 ] && grep -q '^==[0-9]*== ' "$log"; then rc=98; fi
		(exit $rc)
	else
		timeout -k 5 "$limit" "$t" >"$log" 2>&1
	fi
	rc=$?
	ms=$(( ($(date +%s%N) - start) / 1000000 ))
	secs=$((ms / 1000)).$(printf '%03d' $((ms % 1000)))
	case $rc in
	0) pass=$((pass + 1)); echo "PASS $name (${secs}s)" ;;
	77)
		skip=$((skip + 1))
		echo "SKIP $name: $(tail -n 1 "$log")"
		if [ "${CI:-}" = true ]; then failed+=("$name(skipped in CI)"); fi
		;;
	*)
		fail=$((fail + 1)); failed+=("$name")
		[ $rc -eq 124 ] && echo "FAIL $name: timed out after ${limit}s" || echo "FAIL $name (exit $rc)"
		sed 's/^/    /' "$log" | tail -n 40
		;;
	esac
	rm -f "$log"
done
echo "c-tests: $pass passed, $fail failed, $skip skipped"
if [ ${#failed[@]} -gt 0 ]; then
	echo "c-tests failing: ${failed[*]}"
	exit 1
fi
[ $((pass + fail + skip)) -gt 0 ] || { echo "c-tests: no test ran"; exit 1; }
exit 0
