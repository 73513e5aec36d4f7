#!/usr/bin/env bash
# Clients no one here wrote, on a two-leg volume: nbdinfo sees the size and
# flags, nbdcopy copies an image in and out, qemu-img converts and compares,
# qemu-io writes at unaligned offsets (read-modify-write), also concurrently
# into one block; zero and trim; both legs end byte-identical.
. "$(dirname "$0")/lib.sh"
setup clients

size=$((32 << 20))
truncate -s $size a b
head -c $((24 << 20)) /dev/urandom >img
truncate -s $size img
check "nbdkit starts on two legs" start_nbdkit leg=a leg=b timeout=200 status=st.json resync-rate=0
nbdinfo --json "$uri" >info.json 2>&1
check "nbdinfo: size $(json_field info.json 's["exports"][0]["export-size"]') = $size" \
	test "$(json_field info.json 's["exports"][0]["export-size"]')" = $size
check "nbdinfo: writable, flush, FUA, multi-conn, zero, trim" test "$(json_field info.json \
	'all(s["exports"][0][k] for k in ("can_flush","can_fua","can_multi_conn","can_zero","can_trim")) and not s["exports"][0]["is_read_only"]')" = True
check "nbdinfo: block sizes 1 / 4096 / 32M (any byte range served)" test "$(json_field info.json \
	'(s["exports"][0]["block_size_minimum"], s["exports"][0]["block_size_preferred"], s["exports"][0]["block_size_maximum"])')" = "(1, 4096, 33554432)"

check "nbdcopy img -> export" nbdcopy img "$uri"
check "nbdcopy export -> out" nbdcopy "$uri" out
check "out = img (cmp)" cmp img out
check "qemu-img compare img with the export" qemu-img compare -q -f raw -F raw img "$uri"
head -c $((8 << 20)) /dev/urandom >img2
truncate -s $size img2
check "qemu-img convert img2 -> export" qemu-img convert -n -f raw -O raw img2 "$uri"
check "qemu-img compare img2 with the export" qemu-img compare -q -f raw -F raw img2 "$uri"

# Unaligned writes (qemu-io sends them as they are: 1 byte, 100 bytes at
# odd offsets, across block boundaries), then two concurrent writes into
# the same block must both land.
qio() { qemu-io -f raw "$uri" "$@" >>qio.log 2>&1; }
check "qemu-io: unaligned writes" qio -c 'write -P 0x11 1 1' -c 'write -P 0x22 4000 200' \
	-c 'write -P 0x33 12287 3' -c 'write -P 0x44 20000 70000'
cp img2 want
python3 - want <<'PY'
import sys
f = open(sys.argv[1], "r+b")
for off, n, b in ((1, 1, 0x11), (4000, 200, 0x22), (12287, 3, 0x33), (20000, 70000, 0x44)):
    f.seek(off); f.write(bytes([b]) * n)
PY
check "unaligned writes read back exactly (qemu-img compare)" qemu-img compare -q -f raw -F raw want "$uri"
ok=1
for i in 1 2 3 4 5; do
	qio -c "aio_write -P 0x5$i $((1048576 + 10)) 100" -c "aio_write -P 0x6$i $((1048576 + 2000)) 100" \
		-c "aio_write -P 0x7$i $((1048576 + 4000)) 96" -c aio_flush \
		-c "read -P 0x5$i $((1048576 + 10)) 100" -c "read -P 0x6$i $((1048576 + 2000)) 100" \
		-c "read -P 0x7$i $((1048576 + 4000)) 96" || ok=0
	grep -q "Pattern verification failed" qio.log && ok=0
done
check "three concurrent unaligned writes into one block, 5 times: none lost" test $ok = 1
check "qemu-io: zero (write -z) and discard" qio -c 'write -z 2097152 65536' -c 'write -z 3000000 5000' \
	-c 'discard 4194304 65536' -c 'read -P 0 2097152 65536' -c 'read -P 0 3000000 5000' -c flush
! grep -q "Pattern verification failed" qio.log
check "zeroed ranges read back as zeroes" test $? = 0

check "status file written" test -s st.json
check "status file: every leg in_sync after the initial sync (no log: leg 0 copied to leg 1)" wait_in_sync st.json 60
stop_nbdkit
check "legs byte-identical after a clean stop (cmp)" cmp a b
check "status file shows both legs in_sync, 0 write errors" test "$(json_field st.json \
	'all(l["state"]=="in_sync" for l in s["legs"]) and s["write_errors"]==0')" = True
finish
