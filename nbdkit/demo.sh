#!/usr/bin/env bash
# make demo-nbd: the libdmio mirror served over NBD by nbdkit, on two
# temporary files, while one leg hangs. Needs nbdkit, nbdcopy (libnbd-bin)
# and qemu-img (qemu-utils); `make deps` installs them. About 15 s.
set -u
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
plugin=$root/build/nbdkit-dmio-plugin.so
for t in nbdkit nbdcopy qemu-img python3; do
	command -v $t >/dev/null || { echo "demo-nbd: $t is missing (run 'make deps' as root)"; exit 1; }
done
tmp=$(mktemp -d "${TMPDIR:-/tmp}/dmio-demo-nbd-XXXXXX")
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; sleep 0.3; rm -rf "$tmp"' EXIT
cd "$tmp" || exit 1
sock=$tmp/nbd.sock uri="nbd+unix:///?socket=$tmp/nbd.sock"
t0=$(date +%s.%N)
say() { printf '%6.1f s  %s\n' "$(echo "$(date +%s.%N) - $t0" | bc -l 2>/dev/null || echo 0)" "$*"; }
st() { python3 -c "import json,sys; s=json.load(open('st.json')); print($1)"; }

truncate -s 64M A B
head -c 48M /dev/urandom >image
truncate -s 64M image
: >faults
say "two legs, A and B (64 MiB files); the volume: nbdkit dmio A B timeout=50 (ms)"
nbdkit -U "$sock" -P nbdkit.pid "$plugin" A B timeout=50 resync-rate=32768 fail-after=30000 \
	status=st.json fault-file=faults || exit 1
pid=$(cat nbdkit.pid)
while [ ! -f st.json ] || [ "$(st 'all(l["state"]=="in_sync" for l in s["legs"])')" != True ]; do sleep 0.2; done
say "serving $uri; both legs in sync"
echo "1:hang writes" >faults
sleep 0.3
say "leg B now HANGS: every write to it is held (fault spec 'hang writes')"
say "nbdcopy copies a 48 MiB image into the volume ..."
t1=$(date +%s.%N)
nbdcopy image "$uri" || { echo "demo-nbd: nbdcopy failed"; exit 1; }
t2=$(date +%s.%N)
sleep 1.1 # the status file is rewritten each second
say "nbdcopy done in $(printf '%.2f' "$(echo "$t2 - $t1" | bc -l)") s: it did not wait for leg B"
say "$(st '"status: slowest write acknowledged in %.1f ms (deadline 50; a write waits past it only while no leg has it), %d failed" % (s["max_ack_ms"], s["write_errors"])')"
say "$(st '"status: leg A %s; leg B %s, %d dirty regions, %d TIMEOUTs, %d writes still held" % (s["legs"][0]["state"], s["legs"][1]["state"], s["legs"][1]["dirty_regions"], s["legs"][1]["timeouts"], s["legs"][1]["late_io"])')"
: >faults
say "leg B released: its held writes land late; resync copies the dirty regions from A"
for i in $(seq 1 120); do
	sleep 0.5
	line=$(st '"%d regions to copy; leg B %s" % (s["resync"]["pending"], s["legs"][1]["state"])')
	say "  resync: $line"
	case $line in *in_sync) break ;; esac
done
if qemu-img compare -q -f raw -F raw image "$uri"; then
	say "qemu-img compare: the volume holds the image"
else
	say "qemu-img compare: the volume DIFFERS from the image"; exit 1
fi
kill "$pid"
while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
pid=
if cmp -s A B; then say "cmp: legs A and B are IDENTICAL (byte for byte)"; else say "cmp: legs A and B DIFFER"; exit 1; fi
