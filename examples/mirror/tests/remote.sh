#!/usr/bin/env bash
# A leg on another host: the mirror over a local file and an nbdkit export on
# TCP 127.0.0.1, the server paused (SIGSTOP) mid-run and resumed: every write
# is acknowledged at the deadline, the legs end in sync and byte-identical
# (leg B read back with nbdcopy). The scenario is the one `make demo-remote`
# shows (examples/mirror/demo-remote.sh).
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if bash "$here/../demo-remote.sh"; then
	echo "PASS mirror: remote: NBD leg paused and resumed, legs identical (nbdcopy)"
else
	echo "FAIL mirror: remote: NBD leg paused and resumed"
fi
