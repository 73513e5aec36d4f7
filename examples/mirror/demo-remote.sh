#!/usr/bin/env bash
# make demo-remote: a two-leg mirror whose leg B lives on an NBD server
# (nbdkit's memory plugin on TCP 127.0.0.1). The server is paused mid-run
# (SIGSTOP: a host that stops answering without closing its connection);
# writes keep being acknowledged at the 50 ms deadline; the server resumes,
# leg B is resynced, and B, read back through the NBD export by nbdcopy (a
# client libdmio did not write), is byte-identical to leg A. Exits 1 if
# anything differs. Needs nbdkit and nbdcopy (`make deps` installs them).
set -u
bin=${OUT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/build}/dmio-mirror
for t in nbdkit nbdcopy python3; do
	command -v $t >/dev/null || { echo "demo-remote: $t is missing (run 'make deps' as root)"; exit 1; }
done
tmp=$(mktemp -d "${DMIO_TEST_DIR:-/var/tmp}/dmio-demo-remote-XXXXXX")
pid=
trap '[ -n "$pid" ] && kill -CONT "$pid" 2>/dev/null && kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT
cd "$tmp" || exit 1
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$port" memory 16M 2>nbdkit.err &
pid=$!
for _ in $(seq 1 100); do
	python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
	sleep 0.1
done
B="nbd://127.0.0.1:$port/"
truncate -s 16M A
t0=$(date +%s.%N)
say() { printf '%6.2f s  %s\n' "$(echo "$(date +%s.%N) - $t0" | bc -l 2>/dev/null || echo 0)" "$*"; }
say "leg A: a local file; leg B: $B (nbdkit memory 16M), deadline 50 ms"
{
	for i in $(seq 0 15); do echo "write $((i * 65536)) 65536 $((i + 1))"; done
	sleep 1
	kill -STOP "$pid"
	echo "# server paused"
	for i in $(seq 16 47); do echo "write $((i * 65536)) 65536 $((i + 1))"; done
	echo "status"
	sleep 2
	kill -CONT "$pid"
	echo "# server resumed"
	echo "wait-sync 30000"
	echo "read 0 1048576"
	echo "status"
	echo "quit"
} | "$bin" --timeout 50 --fail-after 60000 shell "$PWD/A" "$B" >shell.out 2>&1
rc=$?
acked=$(grep -c ': acked' shell.out)
slow=$(sed -n 's/^write [0-9]* [0-9]*: acked (\([0-9.]*\) ms)$/\1/p' shell.out | sort -n | tail -1)
say "$acked of 48 writes acknowledged; slowest ack ${slow} ms (16 before the pause, 32 while B was paused)"
say "status while paused: $(grep -m1 '^  leg1 ' shell.out | sed "s|^ *leg1 $B: ||; s/;.*//")"
say "server resumed: $(grep '^wait-sync' shell.out); after it: $(grep '^  timeouts' shell.out | tail -1 | sed 's/^ *//')"
say "nbdcopy reads leg B back through the NBD export"
nbdcopy "$B" B.img || { echo "demo-remote: nbdcopy failed"; exit 1; }
if [ "$rc" -eq 0 ] && [ "$acked" -eq 48 ] && grep -q '^wait-sync: in sync' shell.out && cmp -s A B.img; then
	say "leg A and leg B (as nbdcopy read it) are byte-identical"
	exit 0
fi
echo "demo-remote: FAILED (shell exit $rc, $acked acked); shell output:"
sed 's/^/    /' shell.out
exit 1
