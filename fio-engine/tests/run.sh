#!/usr/bin/env bash
# Tests of build/libdmio-fio.so: short fio jobs through the engine, one line
# per check, then "fio-engine: N passed, N failed". Nothing is skipped: a
# check that cannot run fails and says why.
#
#   OUT=build ./fio-engine/tests/run.sh [NAME...]   (NAME: run only checks whose name contains it)
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$HERE/../../build}
ENGINE="$OUT/libdmio-fio.so"
FIO=${FIO:-fio}
TIMEOUT=${FIO_TEST_TIMEOUT:-120}
pass=0
fail=0
failed=()

disk_dir=$(mktemp -d /var/tmp/dmio-fio-test.XXXXXX)
shm_dir=$(mktemp -d /dev/shm/dmio-fio-test.XXXXXX)
cleanup() { rm -rf "$disk_dir" "$shm_dir"; }
trap cleanup EXIT

[ -f "$ENGINE" ] || { echo "fio-engine: FAIL: $ENGINE is missing (make fio-engine)"; exit 1; }
command -v "$FIO" >/dev/null || { echo "fio-engine: FAIL: fio is not installed"; exit 1; }

log=""
# run_fio NAME ARGS...: runs one fio job through the engine; its output in $log.
run_fio() {
	local name=$1
	shift
	log="$disk_dir/$name.log"
	(cd "$disk_dir" && timeout "$TIMEOUT" "$FIO" --name="$name" --ioengine="external:$ENGINE" --output-format=normal \
		"$@") >"$log" 2>&1
}

# field KEY: the value of KEY=VALUE in the engine's summary lines.
field() {
	grep -E '^dmio: ' "$log" | grep -v 'dm_io_client_stats' | tr ' ' '\n' | sed -n "s/^$1=//p" | head -1
}
stat_field() {
	grep -E 'dm_io_client_stats' "$log" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -1
}

ok() { echo "  ok   $1"; pass=$((pass + 1)); }
bad() {
	echo "  FAIL $1: $2"
	[ -n "$log" ] && [ -f "$log" ] && sed 's/^/       | /' "$log" | tail -25
	fail=$((fail + 1))
	failed+=("$1")
}
# expect_clean NAME: fio exited 0, its job reported err=0 and the engine its summary.
expect_clean() {
	local name=$1 rc=$2
	if [ "$rc" -ne 0 ]; then bad "$name" "fio exited $rc"; return 1; fi
	if ! grep -q 'err= 0' "$log" || grep -qE 'err= *[1-9]' "$log"; then bad "$name" "a job reported an error"; return 1; fi
	if ! grep -q '^dmio: .*dm_io_client_stats:' "$log"; then bad "$name" "no engine statistics at the end"; return 1; fi
	return 0
}

want() { [ -z "${ONLY:-}" ] || [[ "$1" == *"$ONLY"* ]]; }
ONLY=${1:-}

# 1. verify=crc32c on every memory mode, on a disk file (O_DIRECT) and on a
#    tmpfs file (libdmio falls back to the page cache there).
for mem in private pages zerocopy; do
	for where in disk shm; do
		name="verify-$mem-$where"
		want "$name" || continue
		dir=$disk_dir
		direct=1
		if [ $where = shm ]; then dir=$shm_dir; fi
		run_fio "$name" --filename="$dir/$name" --size=8M --rw=randwrite --bs=4k --iodepth=16 \
			--direct=$direct --verify=crc32c --do_verify=1 --dmio_memory=$mem
		rc=$?
		expect_clean "$name" $rc || continue
		ios=$(field ios)
		if [ "$(field memory)" != "$mem" ]; then bad "$name" "engine ran memory=$(field memory)"; continue; fi
		# 2048 writes and 2048 verify reads.
		if [ "${ios:-0}" -ne 4096 ]; then bad "$name" "engine completed ${ios:-?} IOs, expected 4096"; continue; fi
		if ! grep -qE '^ +READ: .*io=8192KiB' "$log"; then bad "$name" "fio did not read the data back to verify"; continue; fi
		ok "$name (2048 writes + 2048 crc32c-verified reads)"
	done
done

# 1b. Reads into library pages and zero-copy reads use no private memory
#     (they run in fio's buffers); private memory reads bounce through it.
name="read-memory-paths"
if want "$name"; then
	msg=""
	for mem in private pages zerocopy; do
		run_fio "$name-$mem" --filename="$disk_dir/verify-private-disk" --size=8M --rw=randread --bs=4k \
			--iodepth=8 --direct=1 --number_ios=500 --dmio_memory=$mem
		rc=$?
		expect_clean "$name-$mem" $rc || { msg=x; break; }
		hw=$(stat_field private_bytes_high_water)
		if { [ $mem = private ] && [ "${hw:-0}" -eq 0 ]; } || { [ $mem != private ] && [ "${hw:-1}" -ne 0 ]; }; then
			bad "$name" "dmio_memory=$mem reads: private_bytes_high_water=$hw"
			msg=x
			break
		fi
	done
	[ -z "$msg" ] && ok "$name (private reads bounce; pages and zerocopy reads use no private memory)"
fi

# 2. verify catches corruption: write through the engine, flip a block
#    behind fio's back, then a verify-only pass through the engine must fail.
name="verify-detects-corruption"
if want "$name"; then
	f="$disk_dir/corrupt"
	run_fio "$name-write" --filename="$f" --size=1M --rw=write --bs=4k --iodepth=4 --direct=1 \
		--verify=crc32c --do_verify=0 --verify_state_save=0
	rc=$?
	if expect_clean "$name" $rc; then
		printf 'garbage!' | dd of="$f" bs=1 seek=$((4096 * 37 + 100)) conv=notrunc status=none
		run_fio "$name" --filename="$f" --size=1M --rw=write --bs=4k --iodepth=4 --direct=1 \
			--verify=crc32c --verify_only=1 --verify_state_load=0
		rc=$?
		if [ $rc -ne 0 ] && grep -qE "crc32c: verify failed at file .* offset $((4096 * 37))," "$log"; then
			ok "$name (a flipped block fails crc32c verify read through the engine)"
		else
			bad "$name" "verify-only pass over a corrupted file exited $rc"
		fi
	fi
fi

# 3. A mirror: two legs; writes go to the file and both legs in one dm_io,
#    reads are hedged DM_IO_READ_ANY; afterwards all three hold the same data.
name="legs-verify"
if want "$name"; then
	f="$disk_dir/mirror"
	truncate -s 8M "$disk_dir/legA" "$disk_dir/legB"
	run_fio "$name" --filename="$f" --size=8M --rw=randwrite --bs=4k --iodepth=16 --direct=1 \
		--verify=crc32c --dmio_legs="$disk_dir/legA:$disk_dir/legB" --fsync=64
	rc=$?
	if expect_clean "$name" $rc; then
		regions=$(stat_field regions)
		requests=$(stat_field requests)
		if [ "$(field legs)" != 2 ]; then
			bad "$name" "engine saw $(field legs) legs"
		elif ! cmp -s "$f" "$disk_dir/legA" || ! cmp -s "$f" "$disk_dir/legB"; then
			bad "$name" "the legs differ from the file after the job"
		elif [ "$regions" -ne $((3 * requests)) ]; then
			bad "$name" "$requests requests but $regions regions (expected 3 per request)"
		elif [ "$(field degraded_writes)" != 0 ]; then
			bad "$name" "degraded writes on healthy legs"
		else
			ok "$name (3-way writes incl. flushes, hedged reads, crc32c verified, legs identical)"
		fi
	fi
fi

# 4. A leg that hangs every write: with dmio_timeout=100 each write is still
#    acknowledged on time by the other legs, the hung leg drops out of the
#    mirror, and the job finishes and verifies.
name="hung-leg"
if want "$name"; then
	f="$disk_dir/hung"
	truncate -s 8M "$disk_dir/hungA" "$disk_dir/hungB"
	t0=$(date +%s%N)
	run_fio "$name" --filename="$f" --size=8M --rw=randwrite --bs=4k --iodepth=8 --direct=1 \
		--verify=crc32c --dmio_timeout=100 --dmio_legs="$disk_dir/hungA:$disk_dir/hungB@hang writes"
	rc=$?
	took=$((($(date +%s%N) - t0) / 1000000))
	if expect_clean "$name" $rc; then
		ack=$(field max_write_ack_ms)
		if [ "$(field degraded_writes)" -lt 1 ]; then
			bad "$name" "no write was acknowledged without the hung leg"
		elif [ "$(field timeouts)" -lt 1 ]; then
			bad "$name" "no TIMEOUT was counted"
		elif ! awk -v a="$ack" 'BEGIN { exit !(a >= 99 && a < 400) }'; then
			bad "$name" "slowest write acknowledged after $ack ms (deadline 100 ms)"
		elif ! grep -q "leg $disk_dir/hungB is out of sync" "$log"; then
			bad "$name" "the hung leg was not reported out of sync"
		elif ! cmp -s "$f" "$disk_dir/hungA"; then
			bad "$name" "the healthy leg differs from the file"
		else
			ok "$name (writes acked by the healthy legs at the 100 ms deadline, max $ack ms; job took $took ms)"
		fi
	fi
fi

# 5. dmio_faults on the job's file: a slow device past the deadline gives
#    TIMEOUTs and as many late completions, and the IO still completes OK.
name="faults-timeout-late"
if want "$name"; then
	run_fio "$name" --filename="$disk_dir/slow" --size=1M --rw=randread --bs=4k --iodepth=4 --direct=1 \
		--number_ios=40 --dmio_timeout=5 --dmio_faults="delay read=30ms"
	rc=$?
	if expect_clean "$name" $rc; then
		t=$(field timeouts)
		l=$(field late)
		st=$(stat_field late_completions)
		if [ "${t:-0}" -lt 40 ] || [ "$t" != "$l" ] || [ "$st" != "$l" ]; then
			bad "$name" "timeouts=$t late=$l library late_completions=$st (expected 40 of each)"
		else
			ok "$name (40 reads 30 ms late on a 5 ms deadline: $t TIMEOUTs, $l late OKs)"
		fi
	fi
fi

# 6. dmio_faults errors reach fio as io_u->error (positive errno).
name="faults-error-errno"
if want "$name"; then
	run_fio "$name" --filename="$disk_dir/bad" --size=1M --rw=write --bs=4k --iodepth=4 --direct=1 \
		--dmio_faults="error writes sectors=64-71 errno=EIO"
	rc=$?
	if [ $rc -ne 0 ] && grep -qE 'err= *5|Input/output error' "$log" && [ "$(field errors)" -ge 1 ]; then
		ok "$name (an injected EIO ends the job with fio's err=5)"
	else
		bad "$name" "fio exited $rc without reporting EIO"
	fi
fi

# 6b. Two jobs as threads of one fio process: one client each, both verify.
name="two-thread-jobs"
if want "$name"; then
	run_fio "$name" --directory="$disk_dir" --size=4M --rw=randrw --bs=4k --iodepth=8 --direct=1 --thread \
		--numjobs=2 --verify=crc32c --dmio_memory=pages
	rc=$?
	if expect_clean "$name" $rc; then
		n=$(grep -c 'dm_io_client_stats:' "$log")
		if [ "$n" -eq 2 ]; then
			ok "$name (two clients in one process, library pages, crc32c verified)"
		else
			bad "$name" "$n client summaries for two jobs"
		fi
	fi
fi

# 6c. The same through libdmio's thread-pool engine (DMIO_ENGINE=threads):
#     every memory mode, two legs, verify; and the hung leg.
name="threads-engine"
if want "$name"; then
	msg=""
	truncate -s 8M "$disk_dir/thrA" "$disk_dir/thrB"
	for mem in private pages zerocopy; do
		DMIO_ENGINE=threads run_fio "$name-$mem" --filename="$disk_dir/thr" --size=8M --rw=randwrite --bs=4k \
			--iodepth=16 --direct=1 --verify=crc32c --dmio_memory=$mem --dmio_legs="$disk_dir/thrA:$disk_dir/thrB"
		rc=$?
		expect_clean "$name-$mem" $rc || { msg=x; break; }
		if [ "$(field engine)" != threads ]; then bad "$name" "ran on engine=$(field engine)"; msg=x; break; fi
	done
	if [ -z "$msg" ]; then
		DMIO_ENGINE=threads run_fio "$name-hung" --filename="$disk_dir/thr" --size=8M --rw=randwrite --bs=4k \
			--iodepth=8 --direct=1 --verify=crc32c --dmio_timeout=100 \
			--dmio_legs="$disk_dir/thrA:$disk_dir/thrB@hang writes"
		rc=$?
		if expect_clean "$name-hung" $rc; then
			ack=$(field max_write_ack_ms)
			if [ "$(field degraded_writes)" -ge 1 ] && awk -v a="$ack" 'BEGIN { exit !(a >= 99 && a < 400) }'; then
				ok "$name (3 memory modes x 2 legs verified, hung leg acked at the deadline: max $ack ms)"
			else
				bad "$name" "hung leg: degraded_writes=$(field degraded_writes) max_write_ack_ms=$ack"
			fi
		fi
	fi
fi

# 6d. valgrind memcheck over fio with the engine (--thread: the job runs in
#     the process valgrind watches), on each libdmio engine (io_uring with
#     DMIO_URING_WAIT=poll, as in make test-c-valgrind-uring): library pages,
#     two legs, one hung, deadline and verify. valgrind.supp holds ld.so's own
#     $ORIGIN reads. No error may be reported.
name="valgrind"
if want "$name"; then
	if ! command -v valgrind >/dev/null; then
		bad "$name" "valgrind is not installed (make deps)"
	else
		msg=""
		truncate -s 1M "$disk_dir/vgA" "$disk_dir/vgB"
		for eng in threads uring; do
			log="$disk_dir/$name-$eng.log"
			(cd "$disk_dir" && DMIO_ENGINE=$eng DMIO_URING_WAIT=poll timeout 300 valgrind -q \
				--suppressions="$HERE/valgrind.supp" --error-exitcode=9 --leak-check=no \
				"$FIO" --name="$name" --thread --ioengine="external:$ENGINE" --filename="$disk_dir/vg" --size=1M \
				--rw=randwrite --bs=4k --iodepth=8 --direct=1 --verify=crc32c --dmio_memory=pages \
				--dmio_legs="$disk_dir/vgA:$disk_dir/vgB@hang writes" --dmio_timeout=100) >"$log" 2>&1
			rc=$?
			expect_clean "$name-$eng" $rc || { msg=x; break; }
			if grep -q '^==[0-9]*==' "$log" || [ "$(field degraded_writes)" -lt 1 ]; then
				bad "$name-$eng" "memcheck reported errors, or the hung leg was not dropped"
				msg=x
				break
			fi
		done
		[ -z "$msg" ] && ok "$name (memcheck clean on both libdmio engines: pages, 2 legs, one hung, verify)"
	fi
fi

# 7. fsync/fdatasync io_us are DM_IO_FLUSH writes with count 0.
name="flush"
if want "$name"; then
	run_fio "$name" --filename="$disk_dir/flush" --size=1M --rw=write --bs=4k --iodepth=4 --direct=1 \
		--fsync=8 --end_fsync=1
	rc=$?
	if expect_clean "$name" $rc; then
		req=$(stat_field requests)
		syncs=$(sed -n 's/.*issued rwts: total=[0-9]*,[0-9]*,[0-9]*,\([0-9]*\).*/\1/p' "$log")
		# 256 writes; fio issues a sync at least after every 8th (and at the end).
		if [ "${syncs:-0}" -ge 32 ] && [ "${req:-0}" -ge $((256 + syncs)) ]; then
			ok "$name (256 writes and $((req - 256)) DM_IO_FLUSH requests for fio's $syncs syncs + end_fsync)"
		else
			bad "$name" "$req dm_io requests for 256 writes and ${syncs:-?} syncs"
		fi
	fi
fi

echo "fio-engine: $pass passed, $fail failed${failed:+ (${failed[*]})}"
[ $fail -eq 0 ]
