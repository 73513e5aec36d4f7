# lib.sh - shared by the nbdkit plugin tests (sourced). Each test:
#   . "$(dirname "$0")/lib.sh"; setup NAME
#   start_nbdkit leg=a leg=b ...     # nbdkit on a unix socket, daemonized
#   check "what" command...          # prints PASS/FAIL nbdkit: NAME: what
#   finish                           # stops nbdkit, exits 1 if a check failed
# Servers listen only on unix sockets in the test's own temporary directory.
set -u
: "${OUT:?OUT must name the build directory}"
PLUGIN=$OUT/nbdkit-dmio-plugin.so
MIRROR=$OUT/dmio-mirror
tests_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
failed=0
NBDKIT_PID=

setup() {
	name=$1
	tmp=$(mktemp -d "${DMIO_TEST_DIR:-/var/tmp}/dmio-nbdkit-$name-XXXXXX")
	trap cleanup EXIT
	cd "$tmp" || exit 1
	sock=$tmp/nbd.sock
	uri="nbd+unix:///?socket=$sock"
}

cleanup() {
	stop_nbdkit
	[ -n "${EXTRA_CLEANUP:-}" ] && eval "$EXTRA_CLEANUP"
	cd /
	rm -rf "$tmp"
}

check() {
	local desc=$1
	shift
	if "$@"; then
		echo "PASS nbdkit: $name: $desc"
	else
		echo "FAIL nbdkit: $name: $desc"
		failed=1
	fi
}

# A message that says why a check could not run: a failure, never a skip.
cannot() {
	echo "FAIL nbdkit: $name: cannot run here: $*"
	failed=1
}

# Starts nbdkit with the plugin on $sock; waits until it serves (nbdkit's
# parent exits once the socket listens, with a non-zero status on bad
# parameters, before it forks). Returns nbdkit's exit status.
start_nbdkit() {
	rm -f "$sock" nbdkit.pid
	nbdkit -U "$sock" -P "$tmp/nbdkit.pid" ${NBDKIT_FLAGS:-} "$PLUGIN" "$@" 2>>"$tmp/nbdkit.log"
	local rc=$?
	[ $rc -eq 0 ] || return $rc
	local i
	for i in $(seq 1 100); do
		[ -s "$tmp/nbdkit.pid" ] && [ -S "$sock" ] && break
		sleep 0.05
	done
	NBDKIT_PID=$(cat "$tmp/nbdkit.pid" 2>/dev/null)
	[ -n "$NBDKIT_PID" ]
}

# Stops nbdkit (SIGTERM: clean close; SIG=KILL for a crash), waits for it.
stop_nbdkit() {
	[ -n "${NBDKIT_PID:-}" ] || return 0
	kill "-${SIG:-TERM}" "$NBDKIT_PID" 2>/dev/null
	local i
	for i in $(seq 1 200); do
		kill -0 "$NBDKIT_PID" 2>/dev/null || break
		sleep 0.05
	done
	kill -KILL "$NBDKIT_PID" 2>/dev/null
	NBDKIT_PID=
}

# Waits (at most $2 seconds) until the status file says every leg is in sync.
wait_in_sync() {
	local st=$1 secs=${2:-30} i
	for i in $(seq 1 $((secs * 10))); do
		if [ -f "$st" ] && python3 - "$st" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
sys.exit(0 if all(l["state"] == "in_sync" for l in s["legs"]) else 1)
PY
		then return 0; fi
		sleep 0.1
	done
	return 1
}

# A field of the status file: json_field FILE 'expr' (python, s = the JSON).
json_field() {
	python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print($2)" "$1"
}

finish() {
	stop_nbdkit
	if [ $failed -ne 0 ] && [ -f "$tmp/nbdkit.log" ]; then
		echo "--- nbdkit.log (last 30 lines)"
		tail -n 30 "$tmp/nbdkit.log"
	fi
	exit $failed
}
