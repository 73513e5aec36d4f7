#!/usr/bin/env bash
# Installs the system packages the test suites need, when run as root on
# Debian; otherwise lists what is missing and fails loudly.
set -euo pipefail
need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
for p in gcc g++ make pkg-config valgrind clang libclang-rt-14-dev fuse3 libfuse3-dev util-linux fio liburing-dev python3 \
	nbdkit nbdkit-plugin-dev libnbd-bin libnbd-dev qemu-utils e2fsprogs nbd-server dpkg-dev; do
	have_pkg "$p" || need+=("$p")
done
if [ ${#need[@]} -eq 0 ]; then
	echo "deps: all system packages present"
	exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! have_cmd apt-get; then
	echo "deps: MISSING system packages: ${need[*]} (run 'make test' as root on Debian, or install them)" >&2
	exit 1
fi
echo "deps: installing ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "deps: installed ${need[*]}"
