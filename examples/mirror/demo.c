/*
 * mirror-demo: the story of the reference mirror in one screen, on two
 * temporary files with libdmio's built-in fault injection (no root, no
 * setup, about 6 seconds).
 *
 * A two-leg mirror (A, B) writes with a 50 ms deadline. Leg B hangs for a
 * few seconds: writes are still acknowledged on time (on A alone), B's
 * regions are marked dirty, B is failed after 1 s of late IO. When B is
 * released its held writes complete late; regions written again meanwhile
 * stay dirty; resync copies the dirty regions from A while the mirror keeps
 * serving; at the end both legs are identical.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "mirror.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LEG_BYTES (4u << 20)
#define TIMEOUT_MS 50
#define BS 4096

static double t0;

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_until(double t)
{
	while (now_ms() < t) {
		double ms = t - now_ms();
		struct timespec ts = { (time_t)(ms / 1000), (long)((ms - (double)(time_t)(ms / 1000) * 1000) * 1e6) };
		nanosleep(&ts, NULL);
	}
}

static void say_at(double t, const char *fmt, ...)
{
	va_list ap;
	printf("%6.0f ms  ", t - t0);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

/* Mirror events arrive on the library's threads. Leg state changes are
 * queued and told in order; late completions are counted and summed up. */
static pthread_mutex_t evlock = PTHREAD_MUTEX_INITIALIZER;
static struct {
	double t;
	char msg[200];
} evq[16];
static int nev, late_clean, late_newer, late_failed;
static double late_first;

static void on_event(void *ctx, const char *msg)
{
	(void)ctx;
	pthread_mutex_lock(&evlock);
	if ((strstr(msg, "FAILED") || strstr(msg, "BACK")) && nev < 16) {
		evq[nev].t = now_ms();
		snprintf(evq[nev].msg, sizeof(evq[nev].msg), "%s", msg);
		nev++;
	} else if (strstr(msg, "late OK")) {
		if (!late_clean && !late_newer && !late_failed)
			late_first = now_ms();
		if (strstr(msg, "clean again"))
			late_clean++;
		else if (strstr(msg, "newer write"))
			late_newer++;
		else
			late_failed++;
	}
	pthread_mutex_unlock(&evlock);
}

static void tell_late(void)
{
	pthread_mutex_lock(&evlock);
	int n = late_clean + late_newer + late_failed;
	if (n) {
		say_at(late_first, "leg B: %d late completion(s): writes that had timed out landed after all", n);
		if (late_clean)
			say_at(late_first, "       %d: no newer write to their region -> region clean again", late_clean);
		if (late_newer)
			say_at(late_first, "       %d: region written again meanwhile -> stays dirty (older data)",
			       late_newer);
		if (late_failed)
			say_at(late_first, "       %d: leg B is failed -> region stays dirty until resync", late_failed);
	}
	late_clean = late_newer = late_failed = 0;
	pthread_mutex_unlock(&evlock);
}

/* Groups consecutive writes with the same outcome into one line. */
struct run {
	const char *what;
	int first, last;
	double tfirst, lo, hi;
};

static void run_flush(struct run *r)
{
	if (!r->what)
		return;
	printf("%6.0f ms  ", r->tfirst - t0);
	if (r->first == r->last)
		printf("write %d", r->first);
	else
		printf("writes %d-%d", r->first, r->last);
	printf(": acked in %.0f", r->lo);
	if (r->hi - r->lo >= 1)
		printf("-%.0f", r->hi);
	printf(" ms, %s\n", r->what);
	r->what = NULL;
	tell_late();
}

/* Tells the queued leg state changes that happened before `before`
 * (after the line of the writes that came before them). */
static void tell_events(struct run *r, double before)
{
	pthread_mutex_lock(&evlock);
	int n = nev && evq[0].t < before;
	pthread_mutex_unlock(&evlock);
	if (!n)
		return;
	run_flush(r);
	pthread_mutex_lock(&evlock);
	int k = 0;
	while (k < nev && evq[k].t < before) {
		say_at(evq[k].t, "%s", evq[k].msg);
		k++;
	}
	memmove(evq, evq + k, sizeof(evq[0]) * (size_t)(nev - k));
	nev -= k;
	pthread_mutex_unlock(&evlock);
}

static void run_add(struct run *r, const char *what, int i, double t, double took)
{
	if (r->what != what) {
		run_flush(r);
		*r = (struct run){ what, i, i, t, took, took };
		return;
	}
	r->last = i;
	r->lo = took < r->lo ? took : r->lo;
	r->hi = took > r->hi ? took : r->hi;
}

static int same_files(const char *a, const char *b)
{
	static unsigned char x[1 << 16], y[1 << 16];
	int fa = open(a, O_RDONLY), fb = open(b, O_RDONLY), same = fa >= 0 && fb >= 0;
	for (off_t off = 0; same && off < LEG_BYTES; off += (off_t)sizeof(x))
		same = pread(fa, x, sizeof(x), off) == (ssize_t)sizeof(x) &&
		       pread(fb, y, sizeof(y), off) == (ssize_t)sizeof(y) && !memcmp(x, y, sizeof(x));
	close(fa);
	close(fb);
	return same;
}

int main(void)
{
	char dir[] = "/var/tmp/dmio-mirror-demo-XXXXXX", a[64], b[64];
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	snprintf(a, sizeof(a), "%s/legA.img", dir);
	snprintf(b, sizeof(b), "%s/legB.img", dir);
	for (int i = 0; i < 2; i++) {
		int fd = open(i ? b : a, O_CREAT | O_TRUNC | O_RDWR, 0600);
		if (fd < 0 || ftruncate(fd, LEG_BYTES) != 0) {
			perror("create leg");
			return 1;
		}
		close(fd);
	}

	struct mirror_config c;
	mirror_config_init(&c);
	c.nlegs = 2;
	c.legs[0] = a;
	c.legs[1] = b;
	c.names[0] = "leg A";
	c.names[1] = "leg B";
	c.write_timeout_ms = TIMEOUT_MS;
	c.fail_after_ms = 1000;
	c.probe_ms = 200;
	c.resync_kbps = 4096;
	c.event = on_event;
	struct mirror *m;
	t0 = now_ms();
	if (mirror_open(&c, &m)) {
		fprintf(stderr, "mirror_open: %s\n", mirror_last_error());
		return 1;
	}
	printf("libdmio %s mirror demo: legs A and B (%u MiB files in %s), %u KiB regions,\n"
	       "every write goes to both legs in one dm_io() with a %d ms deadline; quorum 1.\n\n",
	       dm_io_version(), LEG_BYTES >> 20, dir, mirror_region_size(m) / 1024, TIMEOUT_MS);

	unsigned char buf[BS];
	struct run run = { 0 };
	struct mirror_status st, prev;
	/* Act 1: writes 5-9 with leg B slower than the deadline. Act 2: leg
	 * B hangs from write 12 to write 40. Writes 41-60 during resync. */
	const int writes = 60, slow_at = 5, slow_end = 10, hang_at = 12, release_at = 41;
	double next = now_ms(), worst = 0;
	int resyncing = 0;
	mirror_status(m, &prev);
	for (int i = 1; i <= writes; i++) {
		sleep_until(next);
		next += 80;
		tell_events(&run, now_ms());
		if (i == slow_at || i == slow_end || i == hang_at || i == release_at)
			run_flush(&run);
		if (i == slow_at) {
			mirror_set_faults(m, 1, "delay write=150ms");
			say_at(now_ms(), "leg B turns SLOW (injected: each write takes 150 ms)");
		} else if (i == slow_end) {
			mirror_set_faults(m, 1, "");
			say_at(now_ms(), "leg B is fast again");
		} else if (i == hang_at) {
			mirror_set_faults(m, 1, "hang writes");
			say_at(now_ms(), "leg B HANGS (injected: its writes are held, like stuck kernel IO)");
		} else if (i == release_at) {
			mirror_set_faults(m, 1, "");
			say_at(now_ms(), "leg B released: its held writes complete now, late");
			sleep_until(now_ms() + 20);
			tell_late();
			tell_events(&run, now_ms());
			mirror_status(m, &st);
			say_at(now_ms(), "resync: %llu dirty region(s) left to copy from A to B (throttled to %u KiB/s)",
			       (unsigned long long)st.resync_pending, c.resync_kbps);
			resyncing = 1;
		}
		uint64_t off = (uint64_t)((i * 5) % 24) * mirror_region_size(m) + (uint64_t)(i % 16) * BS;
		memset(buf, i, sizeof(buf));
		double t = now_ms();
		int rc = mirror_write(m, off, buf, BS);
		double took = now_ms() - t;
		worst = took > worst ? took : worst;
		mirror_status(m, &st);
		const char *what;
		if (rc)
			what = "WRITE FAILED";
		else if (st.legs[1].timeouts > prev.legs[1].timeouts)
			what = "leg B TIMED OUT at the deadline: acked with A, region dirty on B";
		else if (st.legs[1].queued > prev.legs[1].queued)
			what = "leg B still busy with an older write there: queued behind it, acked with A, region dirty on B";
		else if (st.legs[1].skipped > prev.legs[1].skipped)
			what = st.legs[1].state == MIRROR_LEG_FAILED ?
				       "leg B is failed, not written: acked with A, region dirty on B" :
				       "leg B has too much late IO: not sent, region dirty on B";
		else if (resyncing)
			what = "both legs OK (resync running meanwhile)";
		else if (st.resync_pending)
			what = "both legs OK (B still has dirty regions)";
		else
			what = "both legs OK";
		tell_events(&run, t);
		run_add(&run, what, i, t, took);
		if (resyncing && !st.resync_pending && st.legs[1].state == MIRROR_LEG_IN_SYNC) {
			run_flush(&run);
			say_at(now_ms(), "resync done: %llu region(s) copied, leg B in sync", (unsigned long long)st.resynced);
			resyncing = 0;
		}
		prev = st;
	}
	run_flush(&run);
	int ok = mirror_wait_in_sync(m, 5000);
	tell_events(&run, now_ms());
	tell_late();
	mirror_status(m, &st);
	if (resyncing)
		say_at(now_ms(), "resync %s: %llu region(s) copied", ok ? "done" : "NOT done",
		       (unsigned long long)st.resynced);
	say_at(now_ms(), "all %d writes acknowledged, the slowest in %.0f ms (deadline %d ms)", writes, worst,
	       TIMEOUT_MS);

	struct dm_io_stats ds;
	dm_io_client_stats(mirror_client(m), &ds, sizeof ds);
	mirror_close(m);
	int same = same_files(a, b);
	say_at(now_ms(), "legs A and B are %s", same ? "IDENTICAL (byte for byte)" : "DIFFERENT");
	printf("\ndm_io_client_stats: %llu requests, %llu regions, %llu OK, %llu TIMEOUT notifications,\n"
	       "  %llu late completions, %llu cancelled, %llu errors, private memory high water %llu KiB "
	       "of %llu KiB, engine %s\n",
	       (unsigned long long)ds.requests, (unsigned long long)ds.regions, (unsigned long long)ds.ok,
	       (unsigned long long)ds.timeouts, (unsigned long long)ds.late_completions,
	       (unsigned long long)ds.cancelled, (unsigned long long)ds.errors,
	       (unsigned long long)ds.private_bytes_high_water / 1024,
	       (unsigned long long)ds.private_bytes_bound / 1024,
	       ds.engine == DM_IO_ENGINE_URING ? "io_uring" : ds.engine == DM_IO_ENGINE_AIO ? "aio" : "threads");
	unlink(a);
	unlink(b);
	rmdir(dir);
	return ok && same ? 0 : 1;
}
