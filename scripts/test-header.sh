#!/usr/bin/env bash
# Header checks: include/dm_io.h compiles without a warning as C99 and C11
# (-pedantic -Wstrict-prototypes) and as C++11 and C++17 (-pedantic), with
# gcc/g++ and clang/clang++ when installed, each with and without
# -DDM_IO_PROPOSAL_NAMES. The test program takes the address of every
# function dmio.map exports (so each must be declared by the header) and is
# linked against build/libdmio.so and run (so C++ sees them with C linkage).
# Prints one line per compiler and standard and "header: N passed, N failed".
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
[ -e build/libdmio.so ] || { echo "header: build/libdmio.so missing: run 'make' first"; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dmio-header-XXXXXX")
trap 'rm -rf "$tmp"' EXIT

funcs=$(sed -n '/global:/,/local:/s/^[[:space:]]*\([a-z_][a-z0-9_]*\);.*/\1/p' dmio.map)
[ -n "$funcs" ] || { echo "header: no global symbols found in dmio.map"; exit 1; }

# One source, valid C and C++. System headers first: the proposal names
# (OK, ERROR...) are macros and may clash with names used inside them.
{
	cat <<'EOF'
#include <stddef.h>
#include <string.h>
#include <dm_io.h>
#include <dm_io.h> /* twice: the include guard works */

typedef void (*any_fn)(void);
/* Every function of dmio.map, declared by the header. */
static const any_fn exported[] = {
EOF
	for f in $funcs; do
		printf '\t(any_fn)%s,\n' "$f"
	done
	cat <<'EOF'
};

static void on_region(struct dm_io_region_state *st, void *context)
{
	(void)context;
	if (st->state == DM_IO_TIMEOUT && st->error_code == 0)
		st->index = 0;
}

int main(void)
{
	struct dm_io_region reg = { NULL, 8, 8 };
	struct dm_io_control c;
	enum dm_io_state s = DM_IO_OK;
	sector_t n = DM_IO_SECTOR_SIZE;
	size_t i, nonnull = 0;

	memset(&c, 0, sizeof(c));
	c.memory.type = DM_IO_BVEC;
	c.memory.ptr.bv = NULL;
	c.rw = DM_IO_WRITE | DM_IO_SYNC | DM_IO_FLUSH | DM_IO_FUA;
	c.notify = on_region;
	c.flags = DM_IO_CANCEL_ON_TIMEOUT;
	for (i = 0; i < sizeof(exported) / sizeof(exported[0]); i++)
		nonnull += exported[i] != NULL;
#ifdef DM_IO_PROPOSAL_NAMES
	{
		int names[] = { OK, TIMEOUT, CANCELLED, ERROR, IO_PAGE_LIST, IO_BVEC, IO_VM };
		int prefixed[] = { DM_IO_OK, DM_IO_TIMEOUT, DM_IO_CANCELLED, DM_IO_ERROR,
				   DM_IO_PAGE_LIST, DM_IO_BVEC, DM_IO_VM };
		if (memcmp(names, prefixed, sizeof(names)) != 0)
			return 1;
	}
#endif
	return nonnull != sizeof(exported) / sizeof(exported[0]) || reg.count != 8 ||
	       n != 512 || s != DM_IO_OK || dm_io_version() == NULL;
}
EOF
} >"$tmp/use.c"
cp "$tmp/use.c" "$tmp/use.cpp"

warn="-Wall -Wextra -Werror -pedantic"
link="-L$root/build -ldmio -Wl,-rpath,$root/build"
pass=0 fail=0 skip=0

# check COMPILER LANGUAGE-FLAGS SOURCE
check() {
	local cc=$1 std=$2 src=$3 extra=$4 variant ok=1 log=$tmp/log
	for variant in "" -DDM_IO_PROPOSAL_NAMES; do
		# shellcheck disable=SC2086
		if ! { "$cc" $std $warn $extra $variant -Iinclude "$src" $link -o "$tmp/a.out" &&
			"$tmp/a.out"; } >"$log" 2>&1; then
			ok=0
			echo "FAIL header: $cc $std${variant:+ $variant}"
			sed 's/^/    /' "$log" | head -n 30
		fi
	done
	if [ $ok = 1 ]; then
		pass=$((pass + 1))
		echo "PASS header: $cc $std -pedantic, plain and -DDM_IO_PROPOSAL_NAMES"
	else
		fail=$((fail + 1))
	fi
}

for pair in "gcc g++" "clang clang++"; do
	set -- $pair
	if ! command -v "$1" >/dev/null 2>&1 || ! command -v "$2" >/dev/null 2>&1; then
		echo "SKIP header: $1/$2 not installed"
		skip=$((skip + 1))
		# CI installs clang (scripts/deps.sh): there a skip is a failure.
		[ "${CI:-}" = true ] && fail=$((fail + 1))
		continue
	fi
	check "$1" -std=c99 "$tmp/use.c" -Wstrict-prototypes
	check "$1" -std=c11 "$tmp/use.c" -Wstrict-prototypes
	check "$2" -std=c++11 "$tmp/use.cpp" ""
	check "$2" -std=c++17 "$tmp/use.cpp" ""
done

# The header's namespace: outside the DM_IO_PROPOSAL_NAMES opt-in, every
# macro is DM_IO_-prefixed (a library constant that leaks out, such as an
# internal pub const that cbindgen picked up, would collide with C code).
leaked=$(awk '/^#if(def)? .*DM_IO_PROPOSAL_NAMES/ { opt = 1 } opt && /^#endif/ { opt = 0; next }
	!opt && /^#define / && $2 !~ /^DM_IO_/ { print $2 }' include/dm_io.h | tr '\n' ' ')
if [ -z "$leaked" ]; then
	pass=$((pass + 1))
	echo "PASS header: every macro is DM_IO_-prefixed (bare names only under DM_IO_PROPOSAL_NAMES)"
else
	fail=$((fail + 1))
	echo "FAIL header: macros without the DM_IO_ prefix: $leaked"
fi

echo "header: $pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
