#!/usr/bin/env bash
# The dmio-mirror command line as a script uses it: malformed numbers are
# refused with a message naming the option (exit 2, nothing opened), "no
# deadline" is said with 'none', the shell exits 1 after a failed command and
# ends `status` with a line a script can wait for, and a write that misses
# its deadline on every leg is acknowledged when a leg completes, not failed.
set -u
bin=${OUT:?}/dmio-mirror
tmp=$(mktemp -d "${DMIO_TEST_DIR:-/var/tmp}/dmio-mirror-cli-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || exit 1
failed=0
check() {
	local desc=$1
	shift
	if "$@"; then
		echo "PASS mirror: cli: $desc"
	else
		echo "FAIL mirror: cli: $desc"
		failed=1
	fi
}
truncate -s 4M a b

# Bad option values: exit 2, the option named, the legs untouched.
for bad in "--timeout abc" "--timeout 50ms" "--timeout 0" "--timeout -1" "--read-timeout 1.5" \
	"--quorum 0" "--quorum 3" "--fail-after 0" "--block-size 4k" "--resync-rate x" "--fault 2:hang" \
	"--fault x:hang" "--seconds 0"; do
	# shellcheck disable=SC2086
	"$bin" $bad status a b >out 2>err
	rc=$?
	opt=${bad%% *}
	check "'$bad' refused (exit $rc): $(head -c 120 err)" \
		bash -c "[ $rc -eq 2 ] && grep -q -- '$opt' err && [ ! -s out ]"
done
check "legs untouched by the refused runs" bash -c "cmp -s a b && ! grep -q . <(tr -d '\\0' <a)"

# 'none' is the explicit no-deadline choice.
"$bin" --timeout none --read-timeout none status a b >out 2>&1
check "'--timeout none' accepted (exit $?)" grep -q '^mirror: 2 legs' out

# The shell: replies, the status marker, exit status.
printf 'write 0 4096 7\nread 0 4096 7\nstatus\nquit\n' | "$bin" shell a b >sh1 2>&1
rc=$?
check "shell with good commands exits 0 (exit $rc)" test $rc -eq 0
check "status output ends with 'end status'" bash -c "grep -A100 '^mirror:' sh1 | grep -q '^end status\$'"
check "write and read replies" bash -c "grep -q '^write 0 4096: acked' sh1 && grep -q '^read 0 4096: matches seed' sh1"
for badcmd in "write 1 4096 7" "write 0 4096" "write 0 4k 7" "read 0 4096 8" "frobnicate" "fault 9 hang writes"; do
	printf 'write 0 4096 7\n%s\nstatus\n' "$badcmd" | "$bin" shell a b >sh2 2>&1
	rc=$?
	check "shell exits 1 after '$badcmd' failed (exit $rc): $(grep ERROR sh2 | head -1)" \
		bash -c "[ $rc -eq 1 ] && grep -q ERROR sh2 && grep -q '^end status\$' sh2"
done

# Both legs slower than the 50 ms deadline: acknowledged, not EIO.
printf 'write 0 4096 1\nwrite 65536 4096 2\nwait-sync 3000\nread 0 4096 1\nread 65536 4096 2\nstatus\n' |
	"$bin" -t 50 --fault '0:delay write=60ms' --fault '1:delay write=60ms' shell a b >sh3 2>&1
rc=$?
check "writes late on every leg are acked when a leg completes (exit $rc): $(grep '^write' sh3 | tr '\n' ' ')" \
	bash -c "[ $rc -eq 0 ] && [ \$(grep -c ': acked' sh3) -eq 2 ] && grep -q '0 failed' sh3"
check "legs identical afterwards (cmp)" cmp a b

if [ $failed -ne 0 ]; then
	for f in sh1 sh2 sh3; do
		[ -f $f ] && { echo "--- $f"; tail -n 12 $f; }
	done
	exit 1
fi
exit 0
