#!/usr/bin/env bash
# Crash: nbdkit is killed with SIGKILL in the middle of a write load while a
# leg hangs (so the legs really differ); restarted with the same log=, it
# resyncs the dirty regions, the legs end byte-identical, and they hold
# every write the client saw acknowledged (ackwriter's log, checked block by
# block by dmio-mirror check). Once with leg 1 hung, once with leg 0.
. "$(dirname "$0")/lib.sh"
setup crash
writer=$OUT/nbdkit-tests/ackwriter
size=$((32 << 20))

crash_with_hung_leg() {
	local H=$1 acked
	rm -f a b log acks st.json
	truncate -s $size a b
	: >faults
	check "leg $H hung: nbdkit starts with a new log" start_nbdkit a b log=log timeout=50 resync-rate=0 \
		fail-after=600000 status=st.json fault-file=faults
	check "leg $H hung: initial sync done" wait_in_sync st.json 60
	echo "$H:hang writes" >faults
	sleep 0.3
	"$writer" "$uri" acks $size 30 >writer.out 2>&1 &
	local wpid=$!
	sleep 2
	SIG=KILL stop_nbdkit
	wait $wpid 2>/dev/null
	kill -9 $wpid 2>/dev/null
	acked=$(wc -l <acks)
	check "leg $H hung: $acked writes acknowledged before SIGKILL" test "$acked" -gt 10
	check "leg $H hung: legs differ after the kill" bash -c '! cmp -s a b'
	: >faults
	check "leg $H hung: restarted with the same log" start_nbdkit a b log=log timeout=50 resync-rate=0 \
		status=st.json
	check "leg $H hung: dirty regions resynced (status in_sync)" wait_in_sync st.json 60
	stop_nbdkit
	check "leg $H hung: legs byte-identical (cmp)" cmp a b
	"$MIRROR" --ack-log acks check a b >check.out 2>&1
	check "leg $H hung: every acknowledged write is on both legs: $(tail -n 1 check.out)" test $? -eq 0
}
crash_with_hung_leg 1
crash_with_hung_leg 0
finish
