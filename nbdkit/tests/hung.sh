#!/usr/bin/env bash
# fio's nbd engine writes random blocks with crc32c verification (and
# verify_backlog, so blocks are read back while the leg hangs) through the
# plugin while one leg hangs for 4 s: first a leg held by a fault spec, then
# the really hung loop+FUSE device of c-tests/fixtures (reads and writes
# held inside the kernel). fio must end with no error and no verify
# failure, every write and read must complete within the 50 ms deadline +
# 150 ms, and after the release the legs resync to byte-identical.
. "$(dirname "$0")/lib.sh"
setup hung
root=$(cd "$tests_dir/../.." && pwd)
hungdev=$root/c-tests/fixtures/hungdev.sh
size=$((64 << 20))
DEADLINE=50 BOUND=$((50 + 150))

# run_fio NAME HOLD-CMD RELEASE-CMD: fio for 8 s, the leg held from 1 s to 5 s.
run_fio() {
	local tag=$1 hold=$2 release=$3
	(sleep 1; eval "$hold"; sleep 4; eval "$release") &
	local ctl=$!
	timeout -k 5 60 fio --name="$tag" --thread --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k \
		--iodepth=16 --size=32M --verify=crc32c --verify_backlog=256 --verify_fatal=1 --runtime=8 \
		--time_based --output-format=json --output="$tmp/$tag.json" >"$tmp/$tag.out" 2>&1
	local rc=$?
	wait $ctl
	check "$tag: fio exits 0 (rc $rc)" test $rc -eq 0
	python3 - "$tmp/$tag.json" $BOUND >"$tmp/$tag.sum" <<'PY'
import json, sys
t = open(sys.argv[1]).read()
j = json.loads(t[t.index("{"):])["jobs"][0]  # fio's nbd engine prints a line first
bound = float(sys.argv[2])
w, r = j["write"], j["read"]
print(j["error"], w["total_ios"], r["total_ios"], w["clat_ns"]["max"] / 1e6, r["clat_ns"]["max"] / 1e6, bound)
PY
	read -r err nw nr wmax rmax bound <"$tmp/$tag.sum"
	check "$tag: no IO or verify error ($nw writes, $nr verify reads)" \
		bash -c "[ '$err' = 0 ] && [ '${nw:-0}' -gt 1000 ] && [ '${nr:-0}' -gt 1000 ]"
	check "$tag: slowest write ${wmax} ms, slowest read ${rmax} ms <= deadline $DEADLINE + 150 ms" \
		python3 -c "import sys; sys.exit(0 if $wmax <= $bound and $rmax <= $bound else 1)"
}

# --- 1: a fault spec holds leg 1's writes --------------------------------
truncate -s $size a b
: >faults
check "fault spec: nbdkit starts" start_nbdkit a b timeout=$DEADLINE read-timeout=$DEADLINE resync-rate=0 \
	status=st.json fault-file=faults
check "fault spec: initial sync done" wait_in_sync st.json 60
run_fio fault "echo '1:hang writes' >faults" ": >faults"
t1=$(json_field st.json 's["legs"][1]["timeouts"]')
check "fault spec: the hang was real: leg 1 had $t1 TIMEOUTs" test "${t1:-0}" -gt 0
check "fault spec: legs in sync after the release" wait_in_sync st.json 60
stop_nbdkit
check "fault spec: legs byte-identical (cmp)" cmp a b

# --- 2: the really hung loop+FUSE device as leg 1 ----------------------------
hd=$tmp/hd
loop=$("$hungdev" up "$hd" --size $size --owner $$ 2>hd.err)
rc=$?
if [ $rc -ne 0 ] || [ ! -b "$loop" ]; then
	cannot "the hung loop+FUSE device could not be set up (rc $rc): $(tail -n 2 hd.err)"
	finish
fi
EXTRA_CLEANUP="'$hungdev' down '$hd' --rm >/dev/null 2>&1"
rm -f st.json
: >faults
check "hung device: nbdkit starts with leg 1 = $loop" start_nbdkit a "$loop" timeout=$DEADLINE \
	read-timeout=$DEADLINE resync-rate=0 status=st.json
check "hung device: initial sync done" wait_in_sync st.json 60
run_fio hungdev "'$hungdev' ctl '$hd' 'hold 0-$((size - 1))' >/dev/null; echo held >held" \
	"'$hungdev' status '$hd' | head -1 >held_n; '$hungdev' ctl '$hd' release >/dev/null"
check "hung device: IO was really held in the kernel ($(cat held_n 2>/dev/null))" \
	bash -c "read -r _ n <held_n && [ \"\${n:-0}\" -gt 0 ]"
check "hung device: legs in sync after the release" wait_in_sync st.json 60
stop_nbdkit
check "hung device: legs byte-identical (cmp a $loop)" cmp -n $size a "$loop"
finish
