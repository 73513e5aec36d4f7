#!/usr/bin/env bash
# Packaging checks: installs libdmio into a temporary DESTDIR (PREFIX=/usr/local)
# and checks what a packager and a C user of the installed library see:
# the files and symlinks, the soname, the exported symbols, a program built
# with pkg-config against the shared library and one linked -static, and
# that `make uninstall` removes everything. Prints one line per check and
# "install: N passed, N failed"; exits 1 if any check failed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"

prefix=/usr/local
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
major=${version%%.*}
cc=${CC:-cc}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dmio-install-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dest=$tmp/root          # DESTDIR
work=$tmp/work          # programs and data files, outside DESTDIR
mkdir -p "$work"
libdir=$dest$prefix/lib
incdir=$dest$prefix/include
pcfile=$libdir/pkgconfig/dmio.pc
app=$root/scripts/pkgconfig-app.c

# Runs the top-level Makefile as a user would, not as a sub-make of `make
# test`: no inherited MAKEFLAGS and no LIBDIR/INCDIR/PCDIR from outside.
run_make() {
	env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u LIBDIR -u INCDIR -u PCDIR \
		make --no-print-directory -C "$root" "$@" PREFIX="$prefix" DESTDIR="$dest"
}

# pkg-config that sees only the DESTDIR, as a packager's sysroot.
dest_pkg_config() {
	PKG_CONFIG_SYSROOT_DIR=$dest PKG_CONFIG_PATH=$libdir/pkgconfig pkg-config "$@"
}

die() {
	echo "$*"
	exit 1
}

# --- the checks; each runs in a subshell with errexit, output to a log ---

check_layout() {
	run_make install || die "make install failed"
	local f
	[ -f "$libdir/libdmio.so.$version" ] && [ ! -L "$libdir/libdmio.so.$version" ] ||
		die "missing regular file $libdir/libdmio.so.$version"
	[ -L "$libdir/libdmio.so.$major" ] || die "libdmio.so.$major is not a symlink"
	[ "$(readlink "$libdir/libdmio.so.$major")" = "libdmio.so.$version" ] ||
		die "libdmio.so.$major -> $(readlink "$libdir/libdmio.so.$major"), want libdmio.so.$version"
	[ -L "$libdir/libdmio.so" ] || die "libdmio.so is not a symlink"
	[ "$(readlink "$libdir/libdmio.so")" = "libdmio.so.$major" ] ||
		die "libdmio.so -> $(readlink "$libdir/libdmio.so"), want libdmio.so.$major"
	[ "$(readlink -f "$libdir/libdmio.so")" = "$(readlink -f "$libdir/libdmio.so.$version")" ] ||
		die "libdmio.so does not resolve to libdmio.so.$version"
	for f in "$libdir/libdmio.a" "$incdir/dm_io.h" "$pcfile"; do
		[ -f "$f" ] || die "missing $f"
	done
	[ "$(stat -c %a "$libdir/libdmio.so.$version")" = 755 ] || die "libdmio.so.$version is not mode 755"
	for f in "$libdir/libdmio.a" "$incdir/dm_io.h" "$pcfile"; do
		[ "$(stat -c %a "$f")" = 644 ] || die "$f is not mode 644"
	done
	cmp -s "$incdir/dm_io.h" include/dm_io.h || die "installed dm_io.h differs from include/dm_io.h"
	! grep -n '@[A-Z]*@' "$pcfile" || die "unsubstituted placeholders in dmio.pc"
}

check_soname() {
	local so
	so=$(readelf -d "$libdir/libdmio.so.$version" | sed -n 's/.*Library soname: \[\(.*\)\].*/\1/p')
	[ "$so" = "libdmio.so.$major" ] || die "SONAME is '$so', want libdmio.so.$major"
}

check_exports() {
	local syms other want missing
	# Defined dynamic symbols, without version suffixes; the version node
	# itself (an absolute symbol some nm versions list) is not a symbol of ours.
	syms=$(nm -D --defined-only "$libdir/libdmio.so.$version" |
		awk '!($2 == "A" && $3 ~ /^LIBDMIO_/) { sub(/@.*/, "", $3); print $3 }' | sort -u)
	[ -n "$syms" ] || die "no dynamic symbols exported"
	other=$(grep -Ev '^dm_io(_.*)?$' <<<"$syms" || true)
	[ -z "$other" ] || die "exported symbols other than dm_io*: $(echo $other)"
	# Every symbol dmio.map makes global is really exported.
	want=$(sed -n '/global:/,/local:/s/^[[:space:]]*\([a-z_]*\);.*/\1/p' dmio.map | sort -u)
	missing=$(comm -23 <(echo "$want") <(echo "$syms"))
	[ -z "$missing" ] || die "symbols in dmio.map but not exported: $(echo $missing)"
}

check_pkgconfig_shared() {
	local mv flags out
	mv=$(dest_pkg_config --modversion dmio) || die "pkg-config does not find dmio"
	[ "$mv" = "$version" ] || die "pkg-config --modversion says $mv, want $version"
	flags=$(dest_pkg_config --cflags --libs dmio)
	echo "flags: $flags"
	# shellcheck disable=SC2086
	"$cc" -std=c99 -Wall -Wextra -Werror -pedantic "$app" $flags -o "$work/app-shared" ||
		die "cannot build against the installed shared library"
	LD_LIBRARY_PATH=$libdir ldd "$work/app-shared" |
		grep -q "libdmio.so.$major => $libdir/libdmio.so.$major " ||
		die "app is not linked against $libdir/libdmio.so.$major"
	truncate -s 1M "$work/shared.img"
	out=$(LD_LIBRARY_PATH=$libdir "$work/app-shared" "$work/shared.img") || die "app failed: $out"
	echo "$out"
	[ "$out" = "libdmio $version: sync write+read of 65536 bytes OK" ] ||
		die "unexpected output (want version $version)"
}

check_pkgconfig_static() {
	local flags out
	flags=$(dest_pkg_config --static --cflags --libs dmio)
	echo "flags: $flags"
	# shellcheck disable=SC2086
	"$cc" -static -std=c99 -Wall -Wextra -Werror -pedantic "$app" $flags -o "$work/app-static" ||
		die "cannot link -static with pkg-config --static (Libs.private in pkgconfig/dmio.pc.in?)"
	! readelf -l "$work/app-static" | grep -q INTERP || die "static app has a program interpreter"
	! readelf -d "$work/app-static" | grep -q NEEDED || die "static app needs shared libraries"
	file "$work/app-static" | grep -q 'statically linked' || die "file(1) does not call it static"
	truncate -s 1M "$work/static.img"
	out=$(env -u LD_LIBRARY_PATH "$work/app-static" "$work/static.img") || die "app failed: $out"
	echo "$out"
	[ "$out" = "libdmio $version: sync write+read of 65536 bytes OK" ] ||
		die "unexpected output (want version $version)"
}

# The nbdkit plugin: installed in DESTDIR + nbdkit's plugindir, it loads
# with no LD_LIBRARY_PATH (libdmio is linked in), exports only plugin_init,
# and `nbdkit dmio` finds it by its short name once it is in the real
# plugindir (shown in a private mount namespace, so the system is untouched).
check_nbdkit_plugin() {
	local plugindir so syms
	plugindir=$(pkg-config --variable=plugindir nbdkit) || die "pkg-config finds no nbdkit (nbdkit-plugin-dev)"
	so=$dest$plugindir/nbdkit-dmio-plugin.so
	[ -f "$so" ] || die "missing $so"
	[ "$(stat -c %a "$so")" = 755 ] || die "$so is not mode 755"
	! ldd "$so" | grep -q libdmio || die "the plugin needs libdmio.so: $(ldd "$so" | grep libdmio)"
	syms=$(nm -D --defined-only "$so" | awk '{print $3}' | tr '\n' ' ')
	[ "$syms" = "plugin_init " ] || die "the plugin exports more than plugin_init: $syms"
	env -u LD_LIBRARY_PATH nbdkit "$so" --dump-plugin | grep -q '^dmio_parameters=leg,' ||
		die "nbdkit $so --dump-plugin failed"
	[ "$(id -u)" -eq 0 ] || die "checking 'nbdkit dmio' needs root (a private mount namespace)"
	unshare -m sh -c "mount -t tmpfs dmio-plugins '$plugindir' && cp '$so' '$plugindir/' &&
		env -u LD_LIBRARY_PATH nbdkit dmio --dump-plugin" >"$work/dump.txt" 2>&1 ||
		die "'nbdkit dmio --dump-plugin' failed: $(tail -n 3 "$work/dump.txt")"
	grep -q '^dmio_parameters=leg,' "$work/dump.txt" || die "'nbdkit dmio --dump-plugin' lists no parameters"
}

check_uninstall() {
	local left
	run_make uninstall || die "make uninstall failed"
	left=$(cd "$dest" && find . ! -type d | sort)
	[ -z "$left" ] || die "left behind in DESTDIR after uninstall: $(echo $left)"
}

# --- runner ---

pass=0 fail=0
run_check() {
	local desc=$1 fn=$2 log=$tmp/log rc
	set +e
	(set -e; "$fn") >"$log" 2>&1
	rc=$?
	set -e
	if [ $rc -eq 0 ]; then
		pass=$((pass + 1))
		echo "PASS install: $desc"
	else
		fail=$((fail + 1))
		echo "FAIL install: $desc"
		tail -n 30 "$log" | sed 's/^/    /'
	fi
}

run_check "make install: .so.$version, .so.$major and .so symlinks, .a, dm_io.h, dmio.pc" check_layout
run_check "SONAME of libdmio.so.$version is libdmio.so.$major" check_soname
run_check "libdmio.so exports only dm_io* symbols (all of dmio.map)" check_exports
run_check "pkg-config app linked to the shared library: sync write+read, version $version" check_pkgconfig_shared
run_check "pkg-config --static app linked -static: runs without libdmio.so" check_pkgconfig_static
run_check "nbdkit plugin installed in nbdkit's plugindir, loads without LD_LIBRARY_PATH, 'nbdkit dmio' finds it" \
	check_nbdkit_plugin
run_check "make uninstall leaves nothing in DESTDIR" check_uninstall

echo "install: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
