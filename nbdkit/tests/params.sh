#!/usr/bin/env bash
# Bad parameters fail before nbdkit forks: nbdkit exits non-zero, the
# message names the parameter, and nothing is written to any leg or log.
. "$(dirname "$0")/lib.sh"
setup params

truncate -s 8M a b
printf 'leg a data' | dd of=a conv=notrunc status=none
printf 'leg b data' | dd of=b conv=notrunc status=none
sum0=$(cat a b | md5sum)
mkdir adir
run_bad() { # DESCRIPTION WANT-IN-MESSAGE PARAMS...
	local desc=$1 want=$2
	shift 2
	rm -f "$sock" err
	nbdkit -U "$sock" -P "$tmp/bad.pid" "$PLUGIN" "$@" >out 2>err
	local rc=$?
	if [ $rc -eq 0 ]; then
		kill "$(cat "$tmp/bad.pid" 2>/dev/null)" 2>/dev/null
		sleep 0.5
	fi
	check "$desc: exit $rc, '$(grep -m1 dmio err | cut -c1-110)'" \
		bash -c "[ $rc -ne 0 ] && grep -q -- '$want' err && [ ! -e '$tmp/bad.pid' ] && [ ! -e log ] && [ ! -e adir/log ]"
}
run_bad "timeout=abc" "timeout=abc" leg=a leg=b timeout=abc log=log
run_bad "timeout=50ms" "timeout=50ms" leg=a leg=b timeout=50ms log=log
run_bad "timeout=0" "timeout=0" leg=a leg=b timeout=0 log=log
run_bad "timeout= (empty)" "timeout=" leg=a leg=b timeout= log=log
run_bad "read-timeout=-5" "read-timeout=-5" leg=a leg=b read-timeout=-5 log=log
run_bad "quorum above the leg count" "quorum=3" leg=a leg=b quorum=3 log=log
run_bad "quorum=0" "quorum=0" leg=a leg=b quorum=0 log=log
run_bad "fail-after=1e3" "fail-after=1e3" leg=a leg=b fail-after=1e3 log=log
run_bad "region-size=1000" "region-size=1000" leg=a leg=b region-size=1000 log=log
run_bad "resync-rate=fast" "resync-rate=fast" leg=a leg=b resync-rate=fast log=log
run_bad "unknown parameter" "unknown parameter .colour" leg=a leg=b colour=blue log=log
run_bad "no leg" "no leg" log=log
run_bad "a leg that cannot be opened" "/nonexistent/leg" leg=a leg=/nonexistent/leg log=log
run_bad "a leg that is a directory" "adir" leg=a leg=adir log=log
run_bad "a log in a missing directory" "log=$tmp/nodir/log" leg=a leg=b log=nodir/log
run_bad "a status file in a missing directory" "status=$tmp/nodir/st.json" leg=a leg=b status=nodir/st.json
run_bad "fault= on a leg that does not exist" "only 2 legs" leg=a leg=b fault=2:hang
run_bad "nine legs" "at most 8 legs" a b a b a b a b a
ln -s a a-link
run_bad "a leg given twice (through a symlink)" "same file or device" leg=a leg=a-link
run_bad "a log that is a leg" "is leg 1" leg=a leg=b log=b
check "legs untouched by every refused start (md5)" test "$(cat a b | md5sum)" = "$sum0"

# The same parameters, right, start it (bare paths are legs too).
check "good parameters start nbdkit" start_nbdkit a b timeout=50 quorum=2 read-timeout=50 fail-after=1000 \
	region-size=128K resync-rate=0 log=log status=st.json
check "nbdinfo reads the size" bash -c "nbdinfo --size '$uri' | grep -qx 8388608"
stop_nbdkit
check "the log was created" test -s log
sum1=$(cat a b | md5sum)
rm -f err
nbdkit -U "$sock" -P "$tmp/bad.pid" "$PLUGIN" a b region-size=64K log=log >out 2>err
rc=$?
[ $rc -eq 0 ] && kill "$(cat "$tmp/bad.pid")"
check "a log made for another geometry is refused: exit $rc, '$(grep -m1 dmio err | cut -c1-100)'" \
	bash -c "[ $rc -ne 0 ] && grep -q 'another geometry' err"
check "legs untouched by it (md5)" test "$(cat a b | md5sum)" = "$sum1"
finish
