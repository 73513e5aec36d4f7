#!/usr/bin/env bash
# Crash consistency of the persisted dirty-region log, with the dmio-mirror
# CLI as a separate process killed with SIGKILL:
#
# 1. One leg hangs (injected; leg 1, then leg 0): every write times out on it
#    and is acknowledged at the deadline. Killed mid-stream, then reopened
#    without faults: the dirty regions are resynced, the legs are identical
#    (cmp) and both hold every acknowledged write (or a newer one).
# 2. A write is in flight on a slow leg at the kill, before its deadline, so
#    no leg is dirty yet; the log marked its region "being written" before
#    the write was issued: the reopened mirror resyncs it (legs identical).
set -u
bin=${OUT:?}/dmio-mirror
tmp=$(mktemp -d "${DMIO_TEST_DIR:-/var/tmp}/dmio-mirror-crash-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || exit 1

failed=0
check() {
	local desc=$1
	shift
	if "$@"; then
		echo "PASS mirror: crash: $desc"
	else
		echo "FAIL mirror: crash: $desc"
		failed=1
	fi
}
dirty_of_leg() { sed -n "s/^  leg$1 [^:]*: [a-z-]*[^,]*, \\([0-9]*\\) dirty regions.*/\\1/p" "$2"; }

# --- 1 -------------------------------------------------------------------
# Leg H hangs. With H = 1 the log already leads recovery to leg 0, which
# holds every acked write: acks need no dirty-bit commit. With H = 0 each
# first ack in a region commits leg 0's dirty bit, so recovery copies from 1.
crash_hung_leg() {
	local H=$1
	rm -f a b log acks
	truncate -s 8M a b
	"$bin" --log log --timeout 50 --fail-after 600000 --fault "$H:hang writes" --seconds 60 \
		--ack-log acks workload a b >w1.out 2>&1 &
	pid=$!
	sleep 2
	kill -9 $pid
	wait $pid 2>/dev/null
	acked=$(wc -l <acks)
	check "leg $H hung: workload acknowledged $acked writes before SIGKILL" test "$acked" -gt 5
	check "leg $H hung: legs differ after the kill (leg $H missed the writes)" bash -c '! cmp -s a b'
	"$bin" --log log status a b >s1.out 2>&1
	d=$(dirty_of_leg "$H" s1.out)
	check "leg $H hung: reopened log has leg $H dirty (${d:-?} regions)" test "${d:-0}" -gt 0
	"$bin" --log log --seconds 60 resync a b >r1.out 2>&1
	rc=$?
	n=$(sed -n 's/.*in sync, \([0-9]*\) region(s) copied.*/\1/p' r1.out)
	check "leg $H hung: resync after the crash copied the ${d:-?} dirty regions: $(tail -n 1 r1.out)" \
		test $rc -eq 0 -a "${n:-0}" -ge "${d:-1}"
	check "leg $H hung: legs byte-identical after resync (cmp)" cmp a b
	"$bin" --ack-log acks check a b >c1.out 2>&1
	rc=$?
	check "leg $H hung: every acknowledged write is on both legs: $(tail -n 1 c1.out)" test $rc -eq 0
	"$bin" --log log status a b >s1b.out 2>&1
	check "leg $H hung: log clean after resync" grep -q "^  leg$H [^:]*: in-sync, 0 dirty" s1b.out
}
crash_hung_leg 1
crash_hung_leg 0

# --- 2 -------------------------------------------------------------------
rm -f a b log acks2
truncate -s 8M a b
"$bin" --log log --timeout 10000 --fault '1:delay write=5s' --seconds 60 \
	--ack-log acks2 workload a b >w2.out 2>&1 &
pid=$!
sleep 1
kill -9 $pid
wait $pid 2>/dev/null
check "a write was in flight at the kill (none acknowledged yet)" test ! -s acks2
check "legs differ after the kill (leg 0 has the write, leg 1 not)" bash -c '! cmp -s a b'
"$bin" --log log status a b >s2.out 2>&1
d=$(dirty_of_leg 1 s2.out)
check "reopened: the region being written is dirty on leg 1 (${d:-?})" test "${d:-0}" -ge 1
"$bin" --log log --seconds 60 resync a b >r2.out 2>&1
rc=$?
n=$(sed -n 's/.*in sync, \([0-9]*\) region(s) copied.*/\1/p' r2.out)
check "resync after the crash: $(tail -n 1 r2.out)" test $rc -eq 0 -a "${n:-0}" -ge 1
check "legs byte-identical after resync (cmp)" cmp a b

if [ $failed -ne 0 ]; then
	for f in w1 s1 r1 c1 s1b w2 s2 r2; do
		[ -f $f.out ] && { echo "--- $f.out"; tail -n 12 $f.out; }
	done
	exit 1
fi
exit 0
