/* dmio-bench: the libdmio side of `make bench` (bench/README.md).
 *
 * One measurement per invocation; the result is one JSON object on stdout,
 * live progress goes to stderr when it is a terminal. Built against the
 * *installed* header and library (make install DESTDIR=build/stage), so it
 * measures what users get. bench/bench.py runs it side by side with fio.
 *
 * Modes (see usage()):
 *   rand      random reads (one region) or mirror writes (N regions) at a
 *             constant queue depth, resubmitting from notify; for a time
 *             (--secs) or a fixed number of requests (--count)
 *   timeouts  N timed requests held by fault injection ("hang"): the
 *             distribution of (TIMEOUT notify time - deadline)
 *   mirror    2-leg timed mirror writes with one leg hung: ack latency
 *             (good leg OK + hung leg TIMEOUT), or waiting for all legs
 *   hedge     reads with an occasional injected delay: plain vs DM_IO_READ_ANY
 *   memory    RSS before/after many requests with faults, vs the private bound
 *   memcpy    memcpy cost of one block (for the bounce-copy share)
 *   clients   many clients created and destroyed: threads, RSS, time
 *   multi     many clients at a small queue depth each, some with a hung
 *             device (bench-clients.c)
 *   alt       N clients at QD Q against one client at QD N x Q, alternating
 *             in short phases in one process (bench-clients.c)
 *
 * Files: dmio-bench.c (main), dmio-bench.h (what the parts share),
 * bench-util.c (options, die, clocks, RSS, buffers, progress),
 * bench-stats.c (the latency histogram, the sleep probes), bench-json.c
 * (the JSON output), and one file per mode: bench-rand.c,
 * bench-timeouts.c, bench-mirror.c, bench-hedge.c, bench-memory.c
 * (memory and memcpy).
 *
 * Latencies go into a log-bucketed histogram (HdrHistogram-style: 64
 * linear sub-buckets per power of two, < 1.6 % relative error), recorded
 * only by the client's completion thread (one writer, no locks).
 */
#include "dmio-bench.h"

int main(int argc, char **argv)
{
	tty = isatty(2);
	parse(argc, argv);
	if (!strcmp(opt.mode, "rand"))
		return mode_rand();
	if (!strcmp(opt.mode, "timeouts"))
		return mode_timeouts();
	if (!strcmp(opt.mode, "mirror"))
		return mode_mirror();
	if (!strcmp(opt.mode, "hedge"))
		return mode_hedge();
	if (!strcmp(opt.mode, "memory"))
		return mode_memory();
	if (!strcmp(opt.mode, "memcpy"))
		return mode_memcpy();
	if (!strcmp(opt.mode, "clients"))
		return mode_clients();
	if (!strcmp(opt.mode, "multi"))
		return mode_multi();
	if (!strcmp(opt.mode, "alt"))
		return mode_alt();
	usage();
	return 2;
}
