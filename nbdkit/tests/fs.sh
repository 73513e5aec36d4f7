#!/usr/bin/env bash
# nbdfuse and a real filesystem on a two-leg volume (issue 20 §2):
#   - nbdfuse mounts the export as a file; dd oflag=direct (aligned, and
#     512-byte writes inside and across 4 KiB blocks: read-modify-write in
#     the plugin); with leg 1 hung and leg 0 answering reads in 300 ms, a
#     direct read and a 512-byte write of a block only leg 0 holds succeed;
#     fio --ioengine=io_uring --direct=1, 512 B..64 KiB, crc32c verify;
#   - mkfs.ext4 (1 KiB blocks) on a direct-IO loop device over that file
#     (mkfs and the kernel send 512-byte and 1 KiB requests straight through);
#   - with leg 1 hung ("1:hang writes"), 30 files are written and synced
#     (sync -f, then sync): each returns 0 within SYNC_MAX seconds although
#     the hang lasts HOLD seconds and more;
#   - the leg is released and resynced; e2fsck -fn is clean, every file's
#     sha256 is intact after a read-only remount, and the legs are identical.
# The stack (ext4 over loop over nbdfuse over nbdkit) is torn down top
# first, also on failure or timeout: see teardown.
. "$(dirname "$0")/lib.sh"
setup fs

SYNC_MAX=${SYNC_MAX:-5}  # seconds a sync may take while leg 1 hangs
HOLD=${HOLD:-8}          # the hang lasts at least this long (> SYNC_MAX)
HOLD_MAX=30              # and at most this long, so a stuck sync cannot stall the test
size=$((128 << 20))
fusedir=$tmp/fuse
file=$fusedir/disk
fsdir=$tmp/fs
loopdev=

# Top first: the filesystem, the loop device, nbdfuse; lib.sh's cleanup
# then stops nbdkit. Idempotent; every step bounded.
# (/proc and /sys, not the mounts: a dead nbdfuse leaves a mount stat fails on.)
mounted() { grep -qs " $1 " /proc/self/mounts; }
teardown() {
	: >"$tmp/faults" 2>/dev/null # a hung leg would hold the writes umount makes
	if mounted "$fsdir"; then
		timeout 30 umount "$fsdir" 2>/dev/null || umount -l "$fsdir" 2>/dev/null
	fi
	local f
	for f in /sys/block/loop*/loop/backing_file; do # every loop device over our file
		grep -qsx "$file" "$f" && timeout 30 losetup -d "/dev/$(basename "$(dirname "$(dirname "$f")")")" 2>/dev/null
	done
	loopdev=
	if mounted "$fusedir"; then
		timeout 30 fusermount3 -u "$fusedir" 2>/dev/null || fusermount3 -uz "$fusedir" 2>/dev/null
		local i
		for i in $(seq 1 50); do # nbdfuse exits once unmounted
			kill -0 "$(cat "$tmp/nbdfuse.pid" 2>/dev/null)" 2>/dev/null || break
			sleep 0.1
		done
	fi
}
EXTRA_CLEANUP=teardown
# lib.sh's trap stops nbdkit before EXTRA_CLEANUP: under a mounted stack
# that turns the unmounts into IO errors. Tear the stack down first.
trap 'teardown; cleanup' EXIT

bail() { # a step everything after depends on failed
	echo "FAIL nbdkit: $name: $*; stopping here"
	failed=1
	teardown
	finish
}

truncate -s $size a b
: >faults
check "nbdkit starts on two legs (timeout=50, fault-file)" \
	start_nbdkit leg=a leg=b timeout=50 status=st.json resync-rate=0 fault-file=faults
[ -n "$NBDKIT_PID" ] || bail "nbdkit did not start"

# nbdfuse stays in the foreground; -P writes its pid once it serves. Its
# own session: a timeout's signal to the test's group must not kill it
# under a mounted filesystem (teardown unmounts it, and it exits).
mkdir "$fusedir" "$fsdir"
setsid nbdfuse -P "$tmp/nbdfuse.pid" "$file" --unix "$sock" >nbdfuse.log 2>&1 </dev/null &
for i in $(seq 1 100); do
	[ -s "$tmp/nbdfuse.pid" ] && [ -f "$file" ] && break
	sleep 0.1
done
check "nbdfuse mounts the export as $file, size $(stat -c %s "$file" 2>/dev/null) = $size" \
	test "$(stat -c %s "$file" 2>/dev/null)" = $size
[ -f "$file" ] || bail "nbdfuse did not mount the export: $(tail -n 3 nbdfuse.log | tr '\n' ' ')"

# dd, direct IO: 4 MiB in 64 KiB writes, then 512-byte writes inside one
# 4 KiB block and across a block boundary (the plugin reads, merges and
# writes the covering blocks), read back with direct IO.
head -c $((4 << 20)) /dev/urandom >img
check "dd oflag=direct: 4 MiB in 64 KiB writes" \
	timeout 60 dd if=img of="$file" bs=64k oflag=direct conv=notrunc,fsync status=none
head -c 2560 /dev/urandom >small
check "dd oflag=direct: 512-byte writes at unaligned offsets (3 in one block, 2 across a boundary)" \
	bash -c "timeout 30 dd if=small of='$file' bs=512 count=3 seek=2051 oflag=direct conv=notrunc status=none &&
		timeout 30 dd if=small of='$file' bs=512 skip=3 count=2 seek=4103 oflag=direct conv=notrunc status=none"
python3 - img small <<'PY'
import sys
img, small = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
want = bytearray(img)
want[2051 * 512:2054 * 512] = small[:1536]
want[4103 * 512:4105 * 512] = small[1536:2560]
open("want", "wb").write(want)
PY
timeout 60 dd if="$file" of=back bs=64k count=64 iflag=direct status=none
check "dd iflag=direct reads back exactly what was written (cmp)" cmp want back
timeout 30 dd if="$file" of=back1k bs=1024 skip=$((4103 / 2)) count=1 iflag=direct status=none
check "dd iflag=direct: a 1 KiB read at an unaligned offset" \
	cmp back1k <(dd if=want bs=1024 skip=$((4103 / 2)) count=1 status=none)

# Leg 1 hangs, so a block written now is dirty there: reads of it have
# one leg, leg 0, and leg 0 then answers reads in 300 ms (more than twice
# read-timeout): a slow last leg is waited for, never an error. Direct
# 1 KiB read, then a 512-byte write (its read-modify-write reads there).
off=$((8 << 20))
head -c 4096 /dev/urandom >blk
echo "1:hang writes" >faults
sleep 0.3 # the plugin looks at the fault file every 100 ms
timeout 30 dd if=blk of="$file" bs=512 count=2 seek=$((off / 512 + 1)) oflag=direct conv=notrunc status=none
printf '1:hang writes\n0:delay read=300ms\n' >faults
sleep 0.3
t0=$(date +%s%N)
timeout 30 dd if="$file" of=rd bs=1024 count=1 skip=$((off / 1024)) iflag=direct status=none
rc=$?
t_rd=$((($(date +%s%N) - t0) / 1000000))
check "leg 1 hung, leg 0 reading in 300 ms: direct 1 KiB read of a block dirty on leg 1 (rc $rc, ${t_rd} ms)" \
	cmp rd <(head -c 1024 blk | cat <(head -c 512 /dev/zero) - | head -c 1024)
check "leg 1 hung, leg 0 reading in 300 ms: 512-byte direct write into that block (read-modify-write)" \
	timeout 30 dd if=blk of="$file" bs=512 count=1 skip=7 seek=$((off / 512 + 5)) oflag=direct conv=notrunc status=none
: >faults
timeout 30 dd if="$file" of=rd bs=4096 count=1 skip=$((off / 4096)) iflag=direct status=none
check "that block reads back as written" cmp rd <(python3 -c '
import sys
b = open("blk", "rb").read()
w = bytearray(4096)
w[512:1536] = b[:1024]
w[2560:3072] = b[3584:4096]
sys.stdout.buffer.write(w)')

# fio, io_uring, O_DIRECT: random writes of 512 B..64 KiB at 512-byte
# alignment (many partial blocks, concurrent ones in one block), then
# every block read back and checked against its crc32c.
check "fio io_uring direct=1 randwrite 512..64k, verify=crc32c: exit 0" \
	timeout 120 fio --name=uring --filename="$file" --ioengine=io_uring --direct=1 \
	--rw=randwrite --bsrange=512-64k --blockalign=512 --iodepth=16 --offset=16M --size=24M \
	--verify=crc32c --do_verify=1 --verify_fatal=1 --runtime=60 \
	--output-format=json --output=fio.json
fio_sum=$(json_field fio.json \
	'"%d %d %d" % (sum(j["error"] for j in s["jobs"]), sum(j["write"]["io_bytes"] for j in s["jobs"]), sum(j["read"]["io_bytes"] for j in s["jobs"]))' 2>/dev/null)
read -r fio_err fio_w fio_r <<<"${fio_sum:-x 0 0}"
check "fio: errors ${fio_err:-?} (want 0), $fio_w bytes written, $fio_r bytes read back for verify" \
	test "$fio_err" = 0 -a "$fio_w" = $((24 << 20)) -a "$fio_r" = $((24 << 20))

# A direct-IO loop device over the nbdfuse file.
loopdev=$(losetup --direct-io=on -f --show "$file" 2>losetup.err)
if [ -z "$loopdev" ]; then
	cannot "losetup --direct-io=on refused ($(cat losetup.err)); trying without direct IO"
	loopdev=$(losetup -f --show "$file" 2>>losetup.err)
fi
[ -n "$loopdev" ] || bail "no loop device over $file: $(cat losetup.err)"
dio=$(cat "/sys/block/${loopdev#/dev/}/loop/dio" 2>/dev/null)
check "loop device $loopdev over the nbdfuse file with direct IO (loop/dio=$dio)" test "$dio" = 1

# 1 KiB blocks: the filesystem's own metadata and journal IO is then
# mostly partial 4 KiB blocks, read-modify-written by the plugin.
check "mkfs.ext4 -b 1024 on $loopdev" timeout 120 mkfs.ext4 -q -F -b 1024 "$loopdev"
check "mount the new ext4" timeout 60 mount "$loopdev" "$fsdir"
mountpoint -q "$fsdir" || bail "the filesystem mkfs.ext4 made does not mount: $(dmesg 2>/dev/null | tail -n 3 | tr '\n' ' ')"
check "every leg in_sync before the hang" wait_in_sync st.json 60

# Leg 1 hangs; files are written and synced while it does.
echo "1:hang writes" >faults
sleep 0.3 # the plugin looks at the fault file every 100 ms
t_hang=$(date +%s%N)
(
	t0=$(date +%s%N) wrc=0
	for i in $(seq 1 20); do
		head -c $((((i * 37) % 19 + 1) * 65536 + i * 513)) /dev/urandom >"$fsdir/f$i" || wrc=1
	done
	mkdir "$fsdir/d" || wrc=1
	for i in $(seq 1 10); do head -c $((i * 4000 + 17)) /dev/urandom >"$fsdir/d/s$i" || wrc=1; done
	t1=$(date +%s%N)
	sync -f "$fsdir" 2>>"$tmp/sync.err"
	src=$?
	t2=$(date +%s%N)
	sync 2>>"$tmp/sync.err"
	grc=$?
	t3=$(date +%s%N)
	(cd "$fsdir" && find . -type f | sort | xargs sha256sum) >"$tmp/sums"
	echo "$(((t1 - t0) / 1000000)) $(((t2 - t1) / 1000000)) $(((t3 - t2) / 1000000)) $wrc $src $grc" >"$tmp/times"
) &
wpid=$!
# Hold the hang at least HOLD s, and until the writer is done (at most HOLD_MAX s).
for i in $(seq 1 $((HOLD_MAX * 10))); do
	el=$((($(date +%s%N) - t_hang) / 1000000))
	[ $el -ge $((HOLD * 1000)) ] && ! kill -0 $wpid 2>/dev/null && break
	[ $el -ge $((HOLD_MAX * 1000)) ] && break
	sleep 0.1
done
writer_done=1
kill -0 $wpid 2>/dev/null && writer_done=0
sleep 1.2 # a status rewrite after the writes, while still hung
hung=$(json_field st.json '"%s %d %d" % (s["legs"][1]["state"], s["legs"][1]["dirty_regions"], s["legs"][1]["timeouts"])' 2>/dev/null)
: >faults # release leg 1
held=$((($(date +%s%N) - t_hang) / 1000000))
wait $wpid
read -r t_write t_syncfs t_sync wrc src grc <<<"$(cat times 2>/dev/null || echo x x x x x x)"
check "writer (30 files, sync -f, sync) done while leg 1 still hung (hang held ${held} ms)" \
	test $writer_done = 1 -a $held -ge $((HOLD * 1000))
# Dirty, or failed once the hang outlasts fail-after (5 s): either way out
# of sync, with regions to resync and writes that timed out on it.
out_of_sync() {
	set -- $hung
	case ${1:-} in dirty | failed) ;; *) return 1 ;; esac
	[ "${2:-0}" -gt 0 ] && [ "${3:-0}" -gt 0 ]
}
check "while leg 1 hangs: leg 1 out of sync with timeouts (state, dirty regions, timeouts: $hung)" out_of_sync
check "files written while leg 1 hangs, no error (${t_write} ms)" test "$wrc" = 0
check "sync -f of the filesystem while leg 1 hangs: exit $src, ${t_syncfs} ms <= ${SYNC_MAX} s" \
	test "$src" = 0 -a "$t_syncfs" != x -a "${t_syncfs:-x}" -le $((SYNC_MAX * 1000)) 2>/dev/null
check "sync while leg 1 hangs: exit $grc, ${t_sync} ms <= ${SYNC_MAX} s" \
	test "$grc" = 0 -a "$t_sync" != x -a "${t_sync:-x}" -le $((SYNC_MAX * 1000)) 2>/dev/null
[ -s sync.err ] && sed 's/^/    /' sync.err
check "sha256 of 30 files recorded" test "$(wc -l <sums 2>/dev/null)" = 30

check "leg 1 resynced after the release: every leg in_sync" wait_in_sync st.json 60
check "umount" timeout 60 umount "$fsdir"
blockdev --flushbufs "$loopdev" 2>/dev/null # read what the volume holds, not the cache
timeout 120 e2fsck -fn "$loopdev" >fsck.log 2>&1
rc=$?
check "e2fsck -fn clean (exit $rc)" test $rc = 0
[ $rc = 0 ] || sed 's/^/    /' fsck.log | tail -n 20
check "mount read-only" timeout 60 mount -o ro "$loopdev" "$fsdir"
bad=$(cd "$fsdir" 2>/dev/null && timeout 60 sha256sum -c --quiet "$tmp/sums" 2>&1)
sums_ok() { [ -z "$bad" ] && [ -s "$tmp/sums" ] && mountpoint -q "$fsdir"; }
check "every file's sha256 intact after the remount ($([ -z "$bad" ] && echo "all 30 OK" ||
	echo "$(grep -c . <<<"$bad") bad: $(head -n 1 <<<"$bad")"))" sums_ok
[ -z "$bad" ] || head -n 10 <<<"$bad" | sed 's/^/    /'
check "umount" timeout 60 umount "$fsdir"
check "losetup -d $loopdev" timeout 30 losetup -d "$loopdev"
loopdev=
check "fusermount3 -u" timeout 30 fusermount3 -u "$fusedir"
teardown
check "status: no write, flush or read errors" test "$(json_field st.json \
	's["write_errors"] == 0 and s["flush_errors"] == 0 and s["read_errors"] == 0')" = True
stop_nbdkit
check "legs byte-identical after a clean stop (cmp)" cmp a b
finish
