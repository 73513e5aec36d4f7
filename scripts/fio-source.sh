#!/usr/bin/env bash
# Fetches and configures the source of the fio installed on this machine, so
# that fio-engine/ can be built against the same `struct io_u` and
# `struct thread_data` layouts as /usr/bin/fio (fio installs no headers).
#
#   scripts/fio-source.sh DIR      prints the configured source tree (DIR/fio-<version>)
#
# The source is Debian's source package of the installed version, fetched
# with `apt-get source` through a private source list: the deb-src lines are
# derived from the machine's own apt configuration (deb822 .sources files and
# one-line .list files), and apt's state for them lives under DIR, so the
# system's apt setup is not changed. The tree is configured with the options
# of debian/rules and cached: a second run only checks it.
# Anything that fails is said loudly and the script exits non-zero.
set -euo pipefail

die() { echo "fio-source: ERROR: $*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 CACHE-DIR"
cache=$(mkdir -p "$1" && cd "$1" && pwd)

command -v fio >/dev/null || die "fio is not installed (apt-get install fio, or make deps as root)"
pkgver=$(dpkg-query -W -f='${Version}' fio 2>/dev/null) || die "fio is not a Debian package here: cannot find its source"
[ -n "$pkgver" ] || die "dpkg does not know the fio package"
upver=${pkgver%-*}
upver=${upver#*:}
fiover=$(fio --version)
[ "$fiover" = "fio-$upver" ] || die "fio --version says '$fiover' but the package is $pkgver: the binary is not the packaged one"

tree="$cache/fio-$upver"
stamp="$tree/.dmio-configured-$pkgver"
if [ -f "$stamp" ] && [ -f "$tree/config-host.h" ] && [ -f "$tree/ioengines.h" ]; then
	echo "$tree"
	exit 0
fi

command -v apt-get >/dev/null || die "apt-get is missing: cannot fetch fio's source"
command -v dpkg-source >/dev/null || die "dpkg-source is missing (apt-get install dpkg-dev, or make deps as root)"

# 1. A private source list with deb-src for every deb source of the machine.
apt_dir="$cache/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/sourceparts"
list="$apt_dir/sources.list"
: >"$list"
tmpl=$(mktemp)
trap 'rm -f "$tmpl"' EXIT
# deb822 files: one stanza per blank-line-separated block.
for f in /etc/apt/sources.list.d/*.sources; do
	[ -f "$f" ] || continue
	awk -v out="$tmpl" '
	function flush() {
		if (types ~ /(^| )deb( |$)/ && uris != "" && suites != "" && enabled != "no") {
			n = split(uris, u, " "); m = split(suites, s, " ")
			for (i = 1; i <= n; i++) for (j = 1; j <= m; j++) {
				opt = (signed != "") ? "[signed-by=" signed "] " : ""
				printf "deb-src %s%s %s %s\n", opt, u[i], s[j], comps >> out
			}
		}
		types = uris = suites = comps = signed = enabled = ""
	}
	/^[ \t]*#/ { next }
	/^[ \t]*$/ { flush(); next }
	{
		key = tolower($1); sub(/:$/, "", key); $1 = ""; sub(/^[ \t]+/, "")
		if (key == "types") types = $0
		else if (key == "uris") uris = $0
		else if (key == "suites") suites = $0
		else if (key == "components") comps = $0
		else if (key == "signed-by") signed = $0
		else if (key == "enabled") enabled = tolower($0)
	}
	END { flush() }' "$f"
done
# One-line files.
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
	[ -f "$f" ] || continue
	sed -n 's/^[[:space:]]*deb[[:space:]]\+/deb-src /p' "$f" >>"$tmpl"
done
sort -u "$tmpl" >"$list"
[ -s "$list" ] || die "no deb sources in /etc/apt: cannot derive deb-src lines for fio's source"
echo "fio-source: private deb-src list $list:" >&2
sed 's/^/fio-source:   /' "$list" >&2

apt_opts=(-o "Dir::Etc::SourceList=$list" -o "Dir::Etc::SourceParts=$apt_dir/sourceparts"
	-o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
	-o Debug::NoLocking=1)
mkdir -p "$apt_dir/cache/archives/partial"
# apt drops privileges to _apt for downloads when it can; the private dirs
# must then let _apt write, else downloads run as the caller.
sandbox=root
if [ "$(id -u)" -eq 0 ] && id _apt >/dev/null 2>&1 && chown -R _apt "$apt_dir/lists" "$apt_dir/cache" 2>/dev/null; then
	sandbox=_apt
fi
[ "$(id -u)" -eq 0 ] && apt_opts+=(-o "APT::Sandbox::User=$sandbox")

echo "fio-source: apt-get update (private lists in $apt_dir/lists)" >&2
apt-get "${apt_opts[@]}" update -qq >&2 || die "apt-get update with the private deb-src list failed (network? see above)"

# 2. The source package of exactly the installed version.
work="$cache/src-$pkgver"
rm -rf "$work"
mkdir -p "$work"
echo "fio-source: apt-get source fio=$pkgver" >&2
(cd "$work" && apt-get "${apt_opts[@]}" source -qq "fio=$pkgver" >&2) \
	|| die "apt-get source fio=$pkgver failed (is that version still on the mirror? see above)"
srcdir=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name "fio-*" | head -1)
[ -n "$srcdir" ] && [ -f "$srcdir/ioengines.h" ] || die "the fetched source has no fio tree with ioengines.h"

# 3. Configure it the way debian/rules does.
rules="$srcdir/debian/rules"
[ -f "$rules" ] || die "no debian/rules in the source package"
# Debian passes its options in a CONFIGURE_FLAGS/override_dh_auto_configure
# line: take the ./configure options from there.
mapfile -t conf < <(sed -n 's/^[[:space:]]*\.\/configure[[:space:]]\+//p' "$rules" | tr ' \t' '\n\n' \
	| grep -- '^--' | grep -v -e '^--prefix' -e '^--cc=' || true)
[ ${#conf[@]} -gt 0 ] || die "no ./configure line in debian/rules: cannot configure fio as Debian does"
# --enable-gfio builds the GTK front end, a separate program: it changes no
# structure the engine sees, and needs gtk+-2.0 headers. Dropped when they
# are missing, and said so.
if printf '%s\n' "${conf[@]}" | grep -qx -- --enable-gfio && ! pkg-config --exists gtk+-2.0 2>/dev/null; then
	echo "fio-source: note: dropping --enable-gfio (gtk+-2.0 headers missing; gfio is a separate program)" >&2
	mapfile -t conf < <(printf '%s\n' "${conf[@]}" | grep -vx -- --enable-gfio)
fi
echo "fio-source: ./configure --prefix=/usr ${conf[*]} (debian/rules)" >&2
(cd "$srcdir" && ./configure --prefix=/usr "${conf[@]}" >"$srcdir/.dmio-configure.log" 2>&1) \
	|| { tail -20 "$srcdir/.dmio-configure.log" >&2; die "fio's ./configure failed"; }
[ -f "$srcdir/config-host.h" ] || die "./configure wrote no config-host.h"

rm -rf "$tree"
mv "$srcdir" "$tree"
touch "$tree/.dmio-configured-$pkgver"
rm -rf "$work"
echo "$tree"
