/* Mirror tests on files with libdmio's fault injection (no root needed).
 * One line per check; timing checks use generous bounds. One program on
 * purpose (over 400 lines): each scenario is a function with its own legs,
 * and run.sh reports them check by check. */
#include "check.h"
#include "mirror.h"

#include <pthread.h>

enum { MB = 1 << 20, RS = 64 * 1024, BS = 4096 };

static struct mirror *open_mirror(unsigned n, const char **paths, const char **faults, unsigned timeout,
				   unsigned quorum, unsigned fail_after, const char *log)
{
	struct mirror_config c;
	mirror_config_init(&c);
	c.nlegs = n;
	for (unsigned i = 0; i < n; i++) {
		c.legs[i] = paths[i];
		c.faults[i] = faults ? faults[i] : NULL;
	}
	c.write_timeout_ms = timeout;
	c.read_timeout_ms = 100;
	c.quorum = quorum;
	c.fail_after_ms = fail_after;
	c.probe_ms = 200;
	c.resync_kbps = 0;
	c.log_path = log;
	struct mirror *m = NULL;
	int rc = mirror_open(&c, &m);
	if (rc) {
		check(0, "mirror_open: %s", mirror_last_error());
		exit(summary("test_mirror"));
	}
	return m;
}

static struct mirror_leg_status leg_status(struct mirror *m, unsigned leg)
{
	struct mirror_status st;
	mirror_status(m, &st);
	return st.legs[leg];
}

static int legs_identical(unsigned n, const char **paths, uint64_t bytes)
{
	for (unsigned i = 1; i < n; i++)
		if (!cmp_legs(paths[0], paths[i], bytes))
			return 0;
	return 1;
}

static void t_basic(void)
{
	const char *p[2] = { tfile("basic0", 4 * MB), tfile("basic1", 4 * MB) };
	struct mirror *m = open_mirror(2, p, NULL, 100, 1, 5000, NULL);
	static unsigned char data[MB], back[MB];
	fill(data, MB, 1);
	int rc = mirror_write(m, 3 * BS, data, MB);
	check(rc == 0, "basic: 1 MiB write across 17 regions acknowledged (rc %d)", rc);
	rc = mirror_read(m, 3 * BS, back, MB);
	check(rc == 0 && !memcmp(data, back, MB), "basic: read back matches (rc %d)", rc);
	check(mirror_write(m, 1, data, BS) == -EINVAL && mirror_write(m, 4 * MB, data, BS) == -EINVAL,
	      "basic: misaligned or out-of-range writes are -EINVAL");
	struct mirror_status st;
	mirror_status(m, &st);
	check(st.legs[0].state == MIRROR_LEG_IN_SYNC && st.legs[1].state == MIRROR_LEG_IN_SYNC &&
		      st.timeouts == 0 && st.writes == 1,
	      "basic: both legs in sync, no timeouts, 1 write");
	mirror_close(m);
	check(legs_identical(2, p, 4 * MB), "basic: legs byte-identical (cmp)");
}

/* A leg slower than the deadline: acks at the deadline, late OKs clean up. */
static void t_deadline(void)
{
	const char *p[2] = { tfile("dl0", 4 * MB), tfile("dl1", 4 * MB) };
	const char *f[2] = { NULL, "delay write=800ms" };
	struct mirror *m = open_mirror(2, p, f, 50, 1, 5000, NULL);
	static unsigned char data[BS];
	double worst = 0, best = 1e9;
	for (int i = 0; i < 8; i++) {
		fill(data, BS, 100 + i);
		double t = now_ms();
		int rc = mirror_write(m, (uint64_t)i * RS, data, BS);
		double took = now_ms() - t;
		if (rc)
			check(0, "deadline: write %d failed: %d", i, rc);
		worst = took > worst ? took : worst;
		best = took < best ? took : best;
	}
	check(worst < 50 + 400 && best >= 40,
	      "deadline: writes acked at the 50 ms deadline, not after the 800 ms leg (%.0f..%.0f ms)", best,
	      worst);
	struct mirror_leg_status s = leg_status(m, 1);
	check(s.timeouts == 8 && s.dirty_regions == 8 && s.late_io == 8,
	      "deadline: slow leg: 8 TIMEOUTs, 8 dirty regions, 8 late IOs (%llu, %llu, %llu)",
	      (unsigned long long)s.timeouts, (unsigned long long)s.dirty_regions, (unsigned long long)s.late_io);
	check(mirror_wait_in_sync(m, 5000), "deadline: late OKs bring the leg in sync");
	s = leg_status(m, 1);
	check(s.late_ok == 8 && s.late_kept_dirty == 0 && s.resynced == 0,
	      "deadline: 8 late OKs cleared the dirty bits themselves (no newer write), no resync (%llu, %llu, %llu)",
	      (unsigned long long)s.late_ok, (unsigned long long)s.late_kept_dirty, (unsigned long long)s.resynced);
	struct dm_io_stats ds;
	dm_io_client_stats(mirror_client(m), &ds, sizeof ds);
	/* >= 8: on a loaded machine the fast leg can miss the deadline too */
	check(ds.late_completions >= 8, "deadline: dm_io_client_stats counts the 8 late completions (%llu)",
	      (unsigned long long)ds.late_completions);
	mirror_close(m);
	check(legs_identical(2, p, 4 * MB), "deadline: legs byte-identical (cmp)");
}

/* v1 times out on the slow leg; v2 and v3 to the same region are acked and
 * queued on the slow leg behind v1. When the slow leg lets v1 through late,
 * v1 must not win: v2 and then v3 land after it, in order, and the slow
 * leg ends in sync with no resync. */
static void t_overtake(void)
{
	const char *p[2] = { tfile("ov0", 4 * MB), tfile("ov1", 4 * MB) };
	const char *f[2] = { NULL, "hang writes" };
	struct mirror *m = open_mirror(2, p, f, 50, 1, 60000, NULL);
	static unsigned char v1[RS], v2[RS], v3[RS], back[RS];
	const uint64_t off = 5 * RS;
	fill(v1, RS, 1001);
	fill(v2, RS, 1002);
	fill(v3, RS, 1003);
	mirror_resync_pause(m, 1);
	int rc1 = mirror_write(m, off, v1, RS);
	double t = now_ms();
	int rc2 = mirror_write(m, off, v2, RS);
	double took2 = now_ms() - t;
	int rc3 = mirror_write(m, off, v3, RS);
	check(rc1 == 0 && rc2 == 0 && rc3 == 0, "overtake: v1, v2 and v3 acknowledged (%d, %d, %d)", rc1, rc2, rc3);
	check(took2 < 50, "overtake: v2 acked without waiting (queued on the slow leg, busy with v1): %.1f ms", took2);
	struct mirror_leg_status s = leg_status(m, 1);
	check(s.queued == 2 && s.skipped == 0 && s.late_io == 3,
	      "overtake: v2 and v3 queued on the slow leg behind v1 (queued %llu, skipped %llu, late IO %llu)",
	      (unsigned long long)s.queued, (unsigned long long)s.skipped, (unsigned long long)s.late_io);
	check(mirror_read(m, off, back, RS) == 0 && !memcmp(back, v3, RS),
	      "overtake: mirror reads return v3 meanwhile (the slow leg is dirty, not read)");
	mirror_set_faults(m, 1, ""); /* v1 now lands, late, then v2, then v3 */
	check(mirror_wait_no_late_io(m, 5000), "overtake: v1 and the queued v2, v3 completed on the slow leg");
	s = leg_status(m, 1);
	check(s.late_ok == 1 && s.late_kept_dirty == 1 && s.dirty_regions == 0 && s.resynced == 0,
	      "overtake: the late OK of v1 kept the region dirty (newer writes issued); the queued writes then "
	      "brought the slow leg in sync, no resync (late OK %llu, kept dirty %llu, dirty regions %llu, "
	      "resynced %llu)",
	      (unsigned long long)s.late_ok, (unsigned long long)s.late_kept_dirty,
	      (unsigned long long)s.dirty_regions, (unsigned long long)s.resynced);
	check(read_leg(p[1], off, back, RS) == 0 && !memcmp(back, v3, RS),
	      "overtake: the slow leg holds v3 (v1 landed late and did not win)");
	mirror_resync_pause(m, 0);
	check(mirror_wait_in_sync(m, 5000), "overtake: in sync");
	mirror_close(m);
	check(legs_identical(2, p, 4 * MB), "overtake: legs byte-identical (cmp)");
}

static void t_quorum(void)
{
	const char *p[3] = { tfile("q0", 2 * MB), tfile("q1", 2 * MB), tfile("q2", 2 * MB) };
	const char *f[3] = { NULL, NULL, "hang writes" };
	struct mirror *m = open_mirror(3, p, f, 50, 2, 400, NULL);
	static unsigned char d[BS];
	fill(d, BS, 7);
	check(mirror_write(m, 0, d, BS) == 0, "quorum 2 of 3: acked with one leg hung");
	mirror_set_faults(m, 1, "hang writes");
	double t = now_ms();
	int rc = mirror_write(m, RS, d, BS);
	double took = now_ms() - t;
	check(rc == -EIO && took >= 390 && took < 400 + 400,
	      "quorum 2 of 3: -EIO after fail-after (400 ms) with two legs hung, not at the deadline (%d, %.0f ms)",
	      rc, took);
	mirror_set_faults(m, 1, "");
	mirror_set_faults(m, 2, "");
	check(mirror_wait_in_sync(m, 5000), "quorum: in sync after release");
	mirror_close(m);
	check(legs_identical(3, p, 2 * MB), "quorum: legs byte-identical (cmp)");
}

/* Every leg slower than the deadline: the write is not failed at the
 * deadline, it is acknowledged when the first leg is OK (quorum 1), or
 * when both are (quorum 2). */
static void t_quorum_late(void)
{
	const char *p[2] = { tfile("ql0", 2 * MB), tfile("ql1", 2 * MB) };
	const char *f[2] = { "delay write=60ms", "delay write=60ms" };
	for (unsigned q = 1; q <= 2; q++) {
		struct mirror *m = open_mirror(2, p, f, 50, q, 5000, NULL);
		static unsigned char d[BS];
		int fails = 0;
		double worst = 0, best = 1e9;
		for (int i = 0; i < 4; i++) {
			fill(d, BS, 40 + i);
			double t = now_ms();
			fails += mirror_write(m, (uint64_t)i * RS, d, BS) != 0;
			double took = now_ms() - t;
			worst = took > worst ? took : worst;
			best = took < best ? took : best;
		}
		check(!fails && best >= 55 && worst < 60 + 400,
		      "late quorum %u: writes that miss the 50 ms deadline on both legs are acked when %u leg(s) "
		      "complete at ~60 ms, not failed (%d failed, %.0f..%.0f ms)",
		      q, q, fails, best, worst);
		check(mirror_wait_in_sync(m, 5000), "late quorum %u: both legs in sync by their late OKs", q);
		struct mirror_status st;
		mirror_status(m, &st);
		check(st.write_errors == 0 && st.writes == 4 && st.resynced == 0,
		      "late quorum %u: 4 writes acked, 0 failed, nothing resynced (%llu, %llu, %llu)", q,
		      (unsigned long long)st.writes, (unsigned long long)st.write_errors,
		      (unsigned long long)st.resynced);
		mirror_close(m);
		check(legs_identical(2, p, 2 * MB), "late quorum %u: legs byte-identical (cmp)", q);
	}
	/* A quorum that can no longer be reached fails at once, not after fail-after. */
	const char *g[2] = { "delay write=200ms", "error writes errno=EIO" };
	struct mirror *m = open_mirror(2, p, g, 50, 2, 5000, NULL);
	static unsigned char d[BS];
	fill(d, BS, 49);
	double t = now_ms();
	int rc = mirror_write(m, 0, d, BS);
	double took = now_ms() - t;
	check(rc == -EIO && took < 50 + 400,
	      "late quorum: quorum 2 with one leg in ERROR: -EIO at the deadline, no wait for fail-after (%d, %.0f ms)",
	      rc, took);
	mirror_set_faults(m, 0, "");
	mirror_set_faults(m, 1, "");
	check(mirror_wait_in_sync(m, 5000), "late quorum: in sync after the error leg is repaired");
	mirror_close(m);
	check(legs_identical(2, p, 2 * MB), "late quorum: legs byte-identical (cmp)");
}

static void t_error_leg(void)
{
	const char *p[2] = { tfile("e0", 2 * MB), tfile("e1", 2 * MB) };
	const char *f[2] = { NULL, "error writes errno=EIO" };
	struct mirror *m = open_mirror(2, p, f, 100, 1, 5000, NULL);
	static unsigned char d[BS];
	int ok = 1;
	for (int i = 0; i < 4; i++) {
		fill(d, BS, 20 + i);
		ok &= mirror_write(m, (uint64_t)i * RS, d, BS) == 0;
	}
	check(ok, "error leg: writes acked while leg1 fails with EIO");
	struct mirror_leg_status s = leg_status(m, 1);
	check(s.state == MIRROR_LEG_FAILED && s.errors == 1 && s.skipped == 3,
	      "error leg: leg1 failed after its first ERROR, later writes skip it (errors %llu, skipped %llu, %s)",
	      (unsigned long long)s.errors, (unsigned long long)s.skipped, s.fail_reason);
	mirror_set_faults(m, 1, "");
	check(mirror_wait_in_sync(m, 5000), "error leg: repaired leg comes back and is resynced");
	s = leg_status(m, 1);
	check(s.resynced >= 4, "error leg: %llu regions resynced", (unsigned long long)s.resynced);
	mirror_close(m);
	check(legs_identical(2, p, 2 * MB), "error leg: legs byte-identical (cmp)");
}

static void t_fail_after(void)
{
	const char *p[2] = { tfile("fa0", 4 * MB), tfile("fa1", 4 * MB) };
	const char *f[2] = { NULL, "hang writes" };
	struct mirror *m = open_mirror(2, p, f, 30, 1, 300, NULL);
	static unsigned char d[BS];
	double worst = 0, t0 = now_ms();
	int n = 0, fails = 0;
	while (now_ms() - t0 < 800) {
		fill(d, BS, 300 + n);
		double t = now_ms();
		fails += mirror_write(m, (uint64_t)(n % 64) * RS + (uint64_t)(n / 64 % 16) * BS, d, BS) != 0;
		double took = now_ms() - t;
		worst = took > worst ? took : worst;
		n++;
	}
	check(!fails && worst < 30 + 400, "fail-after: %d writes acked, slowest %.0f ms (deadline 30 ms)", n, worst);
	struct mirror_leg_status s = leg_status(m, 1);
	check(s.state == MIRROR_LEG_FAILED && strstr(s.fail_reason, "late"),
	      "fail-after: the hung leg is failed after 300 ms (%s: %s)", mirror_leg_state_name(s.state),
	      s.fail_reason);
	mirror_set_faults(m, 1, "");
	check(mirror_wait_in_sync(m, 10000), "fail-after: released leg comes back and is resynced");
	mirror_close(m);
	check(legs_identical(2, p, 4 * MB), "fail-after: legs byte-identical (cmp)");
}

static void t_reads(void)
{
	const char *p[2] = { tfile("r0", 2 * MB), tfile("r1", 2 * MB) };
	struct mirror *m = open_mirror(2, p, NULL, 100, 1, 5000, NULL);
	static unsigned char d[RS], back[RS];
	fill(d, RS, 55);
	mirror_write(m, 2 * RS, d, RS);
	/* The first read tries leg0 first. */
	mirror_set_faults(m, 0, "error reads errno=EIO");
	int ok = 1;
	for (int i = 0; i < 2; i++) {
		memset(back, 0, RS);
		ok &= mirror_read(m, 2 * RS, back, RS) == 0 && !memcmp(back, d, RS);
	}
	check(ok, "reads: a read ERROR on one leg is retried on the other, data correct");
	check(leg_status(m, 0).read_errors == 1 && leg_status(m, 0).state == MIRROR_LEG_FAILED,
	      "reads: the leg with the read error is failed");
	mirror_set_faults(m, 0, "");
	check(mirror_wait_in_sync(m, 5000), "reads: the leg comes back (probe copy)");
	mirror_set_faults(m, 0, "delay read=1500ms");
	double worst = 0;
	ok = 1;
	for (int i = 0; i < 2; i++) {
		double t = now_ms();
		memset(back, 0, RS);
		ok &= mirror_read(m, 2 * RS, back, RS) == 0 && !memcmp(back, d, RS);
		worst = now_ms() - t > worst ? now_ms() - t : worst;
	}
	check(ok && worst < 100 + 600,
	      "reads: a read slower than its 100 ms timeout moves to the other leg (slowest %.0f ms)", worst);
	struct dm_io_stats ds;
	dm_io_client_stats(mirror_client(m), &ds, sizeof ds);
	check(ds.hedges >= 1, "reads: dm_io counted %llu hedge(s)", (unsigned long long)ds.hedges);
	mirror_close(m);
}

struct bg_write {
	struct mirror *m;
	uint64_t off;
	const void *buf;
	size_t len;
	int rc;
};

static void *bg_write_run(void *arg)
{
	struct bg_write *w = arg;
	w->rc = mirror_write(w->m, w->off, w->buf, w->len);
	return NULL;
}

/* Reads while the good leg stalls and the other hangs. A leg whose write to
 * a region is late is dirty there until the write comes back, so for a
 * moment no leg was in sync: reads of acknowledged data in that region
 * failed with EIO (the nbdkit hung-leg test saw it as fio verify errors).
 * They must wait for the late write instead, and a read sent to the only
 * in-sync leg, which then hangs, must move to the leg that came back. */
static void t_read_late(void)
{
	const char *p[2] = { tfile("rl0", 4 * MB), tfile("rl1", 4 * MB) };
	struct mirror *m = open_mirror(2, p, NULL, 50, 1, 5000, NULL);
	static unsigned char v1[RS], v2[BS], v3[BS], back[RS];
	const uint64_t off = 2 * RS, off3 = 4 * RS;
	fill(v1, RS, 71);
	fill(v2, BS, 72);
	fill(v3, BS, 73);
	mirror_resync_pause(m, 1);
	check(mirror_write(m, off, v1, RS) == 0 && mirror_write(m, off3, v1, RS) == 0, "read-late: regions written");

	/* 1: both legs late for a write to the region (leg 0 300 ms, leg 1 hung). */
	mirror_set_faults(m, 0, "delay write=300ms");
	mirror_set_faults(m, 1, "hang writes");
	struct bg_write w = { m, off, v2, BS, -1 };
	pthread_t th;
	pthread_create(&th, NULL, bg_write_run, &w);
	sleep_ms(120); /* past the 50 ms deadline: both legs dirty, leg 0's write still running */
	double t = now_ms();
	memset(back, 0, BS);
	int rc = mirror_read(m, off + 5 * BS, back, BS);
	double took = now_ms() - t;
	check(rc == 0 && !memcmp(back, v1 + 5 * BS, BS) && took < 3000,
	      "read-late: a read of acknowledged data while every leg's write to its region is late waits for the "
	      "first late write, no EIO (rc %d, %.0f ms)",
	      rc, took);
	pthread_join(th, NULL);
	check(w.rc == 0, "read-late: the write is acknowledged by the late leg (rc %d)", w.rc);
	memset(back, 0, BS);
	check(mirror_read(m, off, back, BS) == 0 && !memcmp(back, v2, BS), "read-late: the written block reads back");

	/* 2: leg 0 late for a write, leg 1 in sync and then hanging reads. */
	mirror_set_faults(m, 1, "");
	check(mirror_wait_no_late_io(m, 5000), "read-late: leg 1's held write completed");
	check(mirror_write(m, off3, v3, BS) == 0, "read-late: write acked by leg 1 while leg 0 is late");
	mirror_set_faults(m, 1, "hang reads");
	t = now_ms();
	memset(back, 0, BS);
	rc = mirror_read(m, off3, back, BS);
	took = now_ms() - t;
	check(rc == 0 && !memcmp(back, v3, BS) && took < 3000,
	      "read-late: a read sent to the only in-sync leg, which hangs, moves to the leg whose late write "
	      "came back (rc %d, %.0f ms; the fail-after limit is 5000 ms)",
	      rc, took);

	mirror_set_faults(m, 0, "");
	mirror_set_faults(m, 1, "");
	mirror_resync_pause(m, 0);
	check(mirror_wait_in_sync(m, 5000), "read-late: in sync afterwards");
	mirror_close(m);
	check(legs_identical(2, p, 4 * MB), "read-late: legs byte-identical (cmp)");
}

/* A write to a region whose earlier write is still running late on a leg
 * is queued on that leg, not dropped. When the only other leg then hangs,
 * the next write, queued behind two, is acknowledged by the late leg once
 * it catches up (no EIO), the late leg ends holding every write (clean),
 * and acknowledged data stays readable after the hung leg is failed. */
static void t_queued(void)
{
	const char *p[2] = { tfile("q0", 4 * MB), tfile("q1", 4 * MB) };
	struct mirror *m = open_mirror(2, p, NULL, 50, 1, 2000, NULL);
	static unsigned char v1[RS], w[3][BS], back[RS];
	const uint64_t off = 2 * RS;
	fill(v1, RS, 81);
	for (int i = 0; i < 3; i++)
		fill(w[i], BS, 82 + i);
	mirror_resync_pause(m, 1);
	check(mirror_write(m, off, v1, RS) == 0, "queued: region written");

	mirror_set_faults(m, 0, "delay write=300ms");
	double t = now_ms();
	int rc1 = mirror_write(m, off, w[0], BS);
	int rc2 = mirror_write(m, off + BS, w[1], BS);
	double took = now_ms() - t;
	check(rc1 == 0 && rc2 == 0 && took < 300,
	      "queued: w1 and w2 acknowledged by leg 1 at the deadline, leg 0 late (rc %d %d, %.0f ms)", rc1, rc2,
	      took);
	mirror_set_faults(m, 1, "hang writes");
	t = now_ms();
	int rc = mirror_write(m, off + 2 * BS, w[2], BS);
	took = now_ms() - t;
	check(rc == 0 && took < 1500,
	      "queued: w3, with leg 1 hanging, is queued on leg 0 behind the late w1 and w2 and acknowledged when "
	      "it lands, no EIO (rc %d, %.0f ms; fail-after 2000 ms)",
	      rc, took);
	struct mirror_leg_status s = leg_status(m, 0);
	check(s.queued == 2 && s.skipped == 0, "queued: leg 0 got w2 and w3 queued, not skipped (queued %llu, "
	      "skipped %llu)", (unsigned long long)s.queued, (unsigned long long)s.skipped);

	/* Leg 1's w3 stays stuck: it is failed after fail-after. */
	for (int i = 0; i < 100 && leg_status(m, 1).state != MIRROR_LEG_FAILED; i++)
		sleep_ms(50);
	check(leg_status(m, 1).state == MIRROR_LEG_FAILED, "queued: the hung leg 1 is failed");
	s = leg_status(m, 0);
	check(s.dirty_regions == 0 && s.late_io == 0,
	      "queued: leg 0 holds every write (w1 late, then w2, w3): clean (%llu dirty regions, %llu late IO)",
	      (unsigned long long)s.dirty_regions, (unsigned long long)s.late_io);
	t = now_ms();
	memset(back, 0, BS);
	rc = mirror_read(m, off + 5 * BS, back, BS);
	took = now_ms() - t;
	check(rc == 0 && !memcmp(back, v1 + 5 * BS, BS) && took < 1000,
	      "queued: acknowledged data of the region reads back from leg 0 (rc %d, %.0f ms)", rc, took);
	check(mirror_read(m, off, back, 3 * BS) == 0 && !memcmp(back, w[0], BS) && !memcmp(back + BS, w[1], BS) &&
		      !memcmp(back + 2 * BS, w[2], BS),
	      "queued: w1, w2 and w3 read back");

	mirror_set_faults(m, 0, "");
	mirror_set_faults(m, 1, "");
	check(mirror_wait_no_late_io(m, 5000), "queued: leg 1's stuck w3 completed");
	mirror_resync_pause(m, 0);
	check(mirror_wait_in_sync(m, 5000), "queued: in sync afterwards (leg 1 back through resync)");
	mirror_close(m);
	check(legs_identical(2, p, 4 * MB), "queued: legs byte-identical (cmp)");
}

/* A write must not leave the acknowledged data of a region split over legs
 * none of which will hold it all. Leg 0 misses w1 (skipped: too much late
 * IO). Then leg 1, the only leg that holds w1, has too much late IO when w2
 * comes: skipping it too would leave w1 on leg 1 only and w2 on leg 0 only,
 * and the resync (no leg in sync: one is elected) would lose one of them.
 * Leg 1 takes w2 over its cap; w2 is still acknowledged by leg 0 at the
 * deadline, and every block survives the resync. */
static void t_split(void)
{
	const char *p[2] = { tfile("sp0", 4 * MB), tfile("sp1", 4 * MB) };
	struct mirror_config c;
	mirror_config_init(&c);
	c.nlegs = 2;
	c.legs[0] = p[0];
	c.legs[1] = p[1];
	c.write_timeout_ms = 50;
	c.read_timeout_ms = 100;
	c.fail_after_ms = 5000;
	c.queue_depth = 8; /* 4 late IOs per leg at most */
	c.resync_kbps = 0;
	c.resync_paused = 1;
	struct mirror *m;
	if (mirror_open(&c, &m)) {
		check(0, "split: open: %s", mirror_last_error());
		return;
	}
	static unsigned char w1[BS], w2[BS], d[BS], back[BS];
	const uint64_t R = 2 * RS;
	fill(w1, BS, 91);
	fill(w2, BS, 92);
	fill(d, BS, 93);

	/* Leg 0 hangs until it has 4 late writes (other regions): w1 skips it. */
	mirror_set_faults(m, 0, "hang writes");
	for (int i = 0; i < 4; i++)
		mirror_write(m, (uint64_t)(10 + i) * RS, d, BS);
	check(mirror_write(m, R, w1, BS) == 0 && leg_status(m, 0).skipped == 1,
	      "split: w1 acknowledged by leg 1, leg 0 skipped (too much late IO)");
	mirror_set_faults(m, 0, "");
	check(mirror_wait_no_late_io(m, 5000), "split: leg 0's late writes landed");

	/* Now leg 1 hangs until it has 4 late writes; w2 goes to the region. */
	mirror_set_faults(m, 1, "hang writes");
	for (int i = 0; i < 4; i++)
		mirror_write(m, (uint64_t)(20 + i) * RS, d, BS);
	double t = now_ms();
	int rc = mirror_write(m, R + BS, w2, BS);
	double took = now_ms() - t;
	struct mirror_leg_status s1 = leg_status(m, 1);
	check(rc == 0 && took < 200 && s1.skipped == 0 && s1.late_io == 5,
	      "split: w2 acknowledged by leg 0 at the deadline (rc %d, %.0f ms) and sent to leg 1 too, over its "
	      "late IO cap (skipped %llu, late IO %llu)",
	      rc, took, (unsigned long long)s1.skipped, (unsigned long long)s1.late_io);
	mirror_set_faults(m, 1, "");
	check(mirror_wait_no_late_io(m, 5000), "split: leg 1's late writes and w2 landed");
	check(leg_status(m, 1).dirty_regions == 0, "split: leg 1 holds every write to the region: in sync");
	check(mirror_read(m, R, back, BS) == 0 && !memcmp(back, w1, BS), "split: w1 reads back");
	check(mirror_read(m, R + BS, back, BS) == 0 && !memcmp(back, w2, BS), "split: w2 reads back");
	mirror_resync_pause(m, 0);
	check(mirror_wait_in_sync(m, 5000), "split: in sync after resync");
	mirror_close(m);
	int bad = 0;
	for (unsigned L = 0; L < 2; L++) {
		bad += read_leg(p[L], R, back, BS) != 0 || memcmp(back, w1, BS) != 0;
		bad += read_leg(p[L], R + BS, back, BS) != 0 || memcmp(back, w2, BS) != 0;
	}
	check(!bad, "split: both legs hold w1 and w2 after the resync (%d wrong)", bad);
	check(legs_identical(2, p, 4 * MB), "split: legs byte-identical (cmp)");
}

/* Chaos: three writers on four shared regions, each owning its own blocks,
 * while a fault thread keeps changing the legs: slow writes (up to 100 ms,
 * the deadline is 20 ms), and one leg at a time hanging its writes for up
 * to 400 ms; with 2 legs and quorum 1, and 3 legs and quorum 2. No leg stays unusable for long (fail-after is 5 s), so no write
 * and no read may fail, every read returns the block's last acknowledged
 * value, and once the faults stop the legs end byte-identical, holding
 * exactly the acknowledged data. */
enum { CHAOS_WRITERS = 3, CHAOS_BLOCKS = 16 }; /* blocks per writer, over 4 regions */

struct chaos {
	struct mirror *m;
	unsigned id;
	volatile int *stop;
	int write_fails, read_fails, mismatches, writes;
	uint32_t last[CHAOS_BLOCKS]; /* the seed of each block's last acknowledged value, 0: none */
};

/* Writer w's block b: blocks interleave over the regions, so writers share
 * regions (and queue behind each other's late writes). */
static uint64_t chaos_off(unsigned w, unsigned b)
{
	return (uint64_t)(b % 4) * RS + (uint64_t)((b / 4) * CHAOS_WRITERS + w) * BS;
}

static void *chaos_writer(void *arg)
{
	struct chaos *c = arg;
	unsigned char d[BS], back[BS];
	uint32_t x = c->id * 2654435761u + 17;
	while (!*c->stop) {
		x = x * 1103515245u + 12345u;
		unsigned b = (x >> 8) % CHAOS_BLOCKS;
		uint32_t seed = x | 1;
		fill(d, BS, seed);
		if (mirror_write(c->m, chaos_off(c->id, b), d, BS) != 0) {
			c->write_fails++;
			c->last[b] = 0; /* undefined after a failed write */
			continue;
		}
		c->writes++;
		c->last[b] = seed;
		unsigned rb = (x >> 16) % CHAOS_BLOCKS;
		if (!c->last[rb])
			continue;
		if (mirror_read(c->m, chaos_off(c->id, rb), back, BS) != 0) {
			c->read_fails++;
			continue;
		}
		fill(d, BS, c->last[rb]);
		c->mismatches += memcmp(d, back, BS) != 0;
	}
	return NULL;
}

static void t_chaos(unsigned nlegs, unsigned quorum)
{
	const char *p[3] = { tfile("ch0", 4 * MB), tfile("ch1", 4 * MB), tfile("ch2", 4 * MB) };
	struct mirror *m = open_mirror(nlegs, p, NULL, 20, quorum, 5000, NULL);
	volatile int stop = 0;
	struct chaos cs[CHAOS_WRITERS];
	pthread_t th[CHAOS_WRITERS];
	for (unsigned i = 0; i < CHAOS_WRITERS; i++) {
		cs[i] = (struct chaos){ .m = m, .id = i, .stop = &stop };
		pthread_create(&th[i], NULL, chaos_writer, &cs[i]);
	}
	uint32_t x = 4242 + nlegs;
	unsigned hung = nlegs; /* the leg hanging its writes, nlegs: none */
	int hangs = 0, changes = 0;
	double t0 = now_ms();
	while (now_ms() - t0 < 4000) {
		x = x * 1103515245u + 12345u;
		unsigned leg = (x >> 8) % nlegs, what = (x >> 12) % 4;
		char spec[64];
		if (what == 0 && hung == nlegs) {
			snprintf(spec, sizeof(spec), "hang writes");
			hung = leg;
			hangs++;
		} else if (what == 1) {
			spec[0] = 0;
			if (hung == leg)
				hung = nlegs;
		} else {
			snprintf(spec, sizeof(spec), "delay write=%ums", 5 + (x >> 16) % 96);
			if (hung == leg)
				hung = nlegs;
		}
		mirror_set_faults(m, leg, spec);
		changes++;
		sleep_ms(50 + (x >> 20) % 350);
	}
	for (unsigned L = 0; L < nlegs; L++)
		mirror_set_faults(m, L, "");
	stop = 1;
	int wf = 0, rf = 0, mm = 0, n = 0;
	for (unsigned i = 0; i < CHAOS_WRITERS; i++) {
		pthread_join(th[i], NULL);
		wf += cs[i].write_fails;
		rf += cs[i].read_fails;
		mm += cs[i].mismatches;
		n += cs[i].writes;
	}
	struct mirror_status st;
	mirror_status(m, &st);
	unsigned long long queued = 0, skipped = 0, failures = 0;
	for (unsigned L = 0; L < nlegs; L++) {
		queued += st.legs[L].queued;
		skipped += st.legs[L].skipped;
		failures += st.legs[L].failures;
	}
	check(n > 50 && !wf && !rf && !mm,
	      "chaos, %u legs, quorum %u: %d writes from %d threads through %d fault changes (%d hangs of one "
	      "leg): %d write and %d read failures, %d stale reads (queued %llu, skipped %llu, timeouts %llu)",
	      nlegs, quorum, n, CHAOS_WRITERS, changes, hangs, wf, rf, mm, queued, skipped,
	      (unsigned long long)st.timeouts);
	check(failures == 0, "chaos, %u legs: no leg was failed", nlegs);
	check(mirror_wait_in_sync(m, 10000), "chaos, %u legs: in sync once the faults stop", nlegs);
	mirror_close(m);
	int bad = 0;
	static unsigned char d[BS], back[BS];
	for (unsigned w = 0; w < CHAOS_WRITERS; w++)
		for (unsigned b = 0; b < CHAOS_BLOCKS; b++) {
			if (!cs[w].last[b])
				continue;
			fill(d, BS, cs[w].last[b]);
			for (unsigned L = 0; L < nlegs; L++)
				bad += read_leg(p[L], chaos_off(w, b), back, BS) != 0 || memcmp(d, back, BS) != 0;
		}
	check(!bad, "chaos, %u legs: every leg holds every block's last acknowledged value (%d wrong)", nlegs, bad);
	check(legs_identical(nlegs, p, 4 * MB), "chaos, %u legs: legs byte-identical (cmp)", nlegs);
}

/* Initial sync, throttled, while writes go on. */
static void t_resync_progress(void)
{
	const char *p[2] = { tfile("s0", 4 * MB), tfile("s1", 4 * MB) };
	static unsigned char d[BS];
	fill(d, BS, 9);
	int fd = open(p[0], O_WRONLY);
	for (int i = 0; i < 1024; i++)
		if (pwrite(fd, d, BS, (off_t)i * BS) != BS)
			break;
	close(fd);
	struct mirror_config c;
	mirror_config_init(&c);
	c.nlegs = 2;
	c.legs[0] = p[0];
	c.legs[1] = p[1];
	c.initial_sync = 1;
	c.resync_kbps = 4096; /* 64 regions of 64 KiB: about 1 s */
	struct mirror *m;
	if (mirror_open(&c, &m)) {
		check(0, "resync: open: %s", mirror_last_error());
		return;
	}
	struct mirror_status st;
	mirror_status(m, &st);
	uint64_t first = st.resync_pending;
	check(first == 64, "resync: initial sync: 64 regions dirty on leg1 (%llu)", (unsigned long long)first);
	double worst = 0;
	for (int i = 0; i < 20; i++) {
		fill(d, BS, 500 + i);
		double t = now_ms();
		mirror_write(m, (uint64_t)(i * 3 % 64) * RS + BS, d, BS);
		worst = now_ms() - t > worst ? now_ms() - t : worst;
		sleep_ms(10);
	}
	mirror_status(m, &st);
	check(st.resync_pending > 0 && st.resync_pending < first && st.writes == 20,
	      "resync: progress visible (%llu of %llu left after 0.2 s), mirror kept serving (slowest write %.1f ms)",
	      (unsigned long long)st.resync_pending, (unsigned long long)first, worst);
	check(mirror_wait_in_sync(m, 10000), "resync: throttled initial sync completes");
	mirror_close(m);
	check(legs_identical(2, p, 4 * MB), "resync: legs byte-identical (cmp)");
}

/* Dirty state survives close/reopen through the persisted log. */
static void t_log_reopen(void)
{
	const char *p[2] = { tfile("l0", 2 * MB), tfile("l1", 2 * MB) };
	const char *log = tfile("l.log", 0);
	const char *f[2] = { NULL, "hang writes" };
	struct mirror *m = open_mirror(2, p, f, 50, 1, 60000, log);
	static unsigned char d[BS];
	for (int i = 0; i < 3; i++) {
		fill(d, BS, 70 + i);
		mirror_write(m, (uint64_t)i * 5 * RS, d, BS);
	}
	struct mirror_status st;
	mirror_status(m, &st);
	check(st.legs[1].dirty_regions == 3 && st.log_commits >= 2,
	      "log: 3 regions dirty on the hung leg, log written (%llu commits)", (unsigned long long)st.log_commits);
	mirror_close(m); /* the held writes are cancelled, never land */
	check(!cmp_legs(p[0], p[1], 2 * MB), "log: legs differ after close with the leg hung");
	m = open_mirror(2, p, NULL, 50, 1, 60000, log);
	mirror_status(m, &st);
	check(st.legs[1].dirty_regions >= 3, "log: reopened mirror knows the dirty regions (%llu)",
	      (unsigned long long)st.legs[1].dirty_regions);
	check(mirror_wait_in_sync(m, 5000), "log: dirty regions resynced after reopen");
	mirror_close(m);
	check(legs_identical(2, p, 2 * MB), "log: legs byte-identical (cmp)");
}

/* Legs whose size is not a whole number of regions: the mirror is the
 * smallest leg rounded down to a block, its last region partial; that
 * region is written and resynced like any other. mirror_validate checks
 * without opening or writing. */
static void t_partial(void)
{
	const char *p[2] = { tfile("pa0", 2 * MB + 3 * BS + 100), tfile("pa1", 2 * MB + 5 * BS) };
	struct mirror_config c;
	mirror_config_init(&c);
	c.nlegs = 2;
	c.legs[0] = p[0];
	c.legs[1] = p[1];
	check(mirror_validate(&c) == 0, "partial: mirror_validate accepts the legs (%s)", mirror_last_error());
	c.legs[1] = "/nonexistent/leg";
	check(mirror_validate(&c) == -ENOENT && strstr(mirror_last_error(), "/nonexistent/leg"),
	      "partial: mirror_validate names a missing leg (%s)", mirror_last_error());
	c.legs[1] = p[1];
	c.log_path = "/nonexistent-dir/log";
	check(mirror_validate(&c) == -ENOENT && strstr(mirror_last_error(), "/nonexistent-dir"),
	      "partial: mirror_validate refuses a log in a missing directory (%s)", mirror_last_error());
	c.log_path = NULL;
	c.legs[1] = p[0];
	check(mirror_validate(&c) == -EINVAL && strstr(mirror_last_error(), "same file"),
	      "partial: mirror_validate refuses a leg given twice (%s)", mirror_last_error());
	c.legs[1] = p[1];
	c.log_path = p[1];
	check(mirror_validate(&c) == -EINVAL && strstr(mirror_last_error(), "the log"),
	      "partial: mirror_validate refuses a log that is a leg (%s)", mirror_last_error());
	c.log_path = NULL;
	c.quorum = 3;
	check(mirror_validate(&c) == -EINVAL, "partial: mirror_validate refuses quorum 3 of 2 (%s)",
	      mirror_last_error());
	const char *f[2] = { NULL, "hang writes" };
	struct mirror *m = open_mirror(2, p, f, 50, 1, 60000, NULL);
	check(mirror_size(m) == 2 * MB + 3 * BS, "partial: size = smallest leg rounded down to a block (%llu)",
	      (unsigned long long)mirror_size(m));
	static unsigned char d[3 * BS], back[3 * BS];
	fill(d, 3 * BS, 77);
	check(mirror_write(m, 2 * MB, d, 3 * BS) == 0, "partial: write of the partial last region acked");
	check(mirror_write(m, 2 * MB + BS, d, 3 * BS) == -EINVAL, "partial: write past the end is -EINVAL");
	mirror_set_faults(m, 1, "");
	check(mirror_wait_in_sync(m, 5000), "partial: the partial region is resynced");
	check(mirror_read(m, 2 * MB, back, 3 * BS) == 0 && !memcmp(back, d, 3 * BS), "partial: read back matches");
	mirror_close(m);
	check(legs_identical(2, p, 2 * MB + 3 * BS), "partial: legs byte-identical up to the end (cmp)");
}

/* Flush follows the write rule; a leg that misses a flush gets the regions
 * written to it since its last good flush marked dirty. Flushes are writes
 * of sector 0 with no data, so "hang writes sectors=0-0" holds only them
 * (and writes of sector 0, which the test does not make). */
static void t_flush(void)
{
	const char *p[2] = { tfile("fl0", 2 * MB), tfile("fl1", 2 * MB) };
	struct mirror *m = open_mirror(2, p, NULL, 50, 1, 600, NULL);
	static unsigned char d[BS];
	for (int i = 1; i <= 3; i++) {
		fill(d, BS, 60 + i);
		mirror_write(m, (uint64_t)i * RS + BS, d, BS);
	}
	check(mirror_flush(m) == 0, "flush: all legs flushed");
	fill(d, BS, 64);
	int rc = mirror_write_flags(m, 4 * RS + BS, d, BS, MIRROR_FUA);
	check(rc == 0, "flush: a FUA write is acked (%d)", rc);
	mirror_write(m, 6 * RS + BS, d, BS);
	mirror_set_faults(m, 1, "hang writes sectors=0-0");
	mirror_resync_pause(m, 1);
	double t = now_ms();
	rc = mirror_flush(m);
	double took = now_ms() - t;
	struct mirror_leg_status s = leg_status(m, 1);
	check(rc == 0 && took < 50 + 400, "flush: acked at the deadline with leg1's flush hung (%d, %.0f ms)", rc, took);
	check(s.dirty_regions == 2 && s.state == MIRROR_LEG_DIRTY,
	      "flush: leg1 missed it: the 2 regions written since its last good flush are dirty, not the 3 before (%llu)",
	      (unsigned long long)s.dirty_regions);
	mirror_close(m);
	m = open_mirror(2, p, NULL, 50, 2, 600, NULL);
	mirror_set_faults(m, 1, "hang writes sectors=0-0");
	t = now_ms();
	rc = mirror_flush(m);
	took = now_ms() - t;
	check(rc == -EIO && took >= 590 && took < 600 + 400,
	      "flush: quorum 2 with leg1's flush hung: -EIO after fail-after (600 ms), not at the deadline (%d, %.0f ms)",
	      rc, took);
	mirror_set_faults(m, 1, "");
	check(mirror_wait_in_sync(m, 5000), "flush: in sync after release");
	struct mirror_status st;
	mirror_status(m, &st);
	check(st.flushes == 1 && st.flush_errors == 1, "flush: counted (%llu flushes, %llu failed)",
	      (unsigned long long)st.flushes, (unsigned long long)st.flush_errors);
	mirror_close(m);
	check(legs_identical(2, p, 2 * MB), "flush: legs byte-identical (cmp)");
}

/* A clean close leaves no region marked "being written": the next open
 * has nothing to resync. */
static void t_log_close(void)
{
	const char *p[2] = { tfile("lc0", 2 * MB), tfile("lc1", 2 * MB) };
	const char *log = tfile("lc.log", 0);
	struct mirror *m = open_mirror(2, p, NULL, 100, 1, 5000, log);
	static unsigned char d[BS];
	for (int i = 0; i < 8; i++) {
		fill(d, BS, 80 + i);
		mirror_write(m, (uint64_t)i * 3 * RS, d, BS);
	}
	mirror_close(m);
	m = open_mirror(2, p, NULL, 100, 1, 5000, log);
	mirror_resync_pause(m, 1);
	struct mirror_status st;
	mirror_status(m, &st);
	check(st.resync_pending == 0 && st.legs[0].dirty_regions == 0 && st.legs[1].dirty_regions == 0,
	      "log close: after a clean close the reopened mirror has no region to resync (%llu pending)",
	      (unsigned long long)st.resync_pending);
	mirror_close(m);
}

/* With a log, a write acknowledged at the deadline with one leg late needs
 * no log write on the acknowledgement path when the log already leads crash
 * recovery to a leg that holds the write; it needs one when it does not. The
 * log device is slowed to 150 ms per write so that each commit shows. */
static void t_log_ack(void)
{
	const char *p[2] = { tfile("la0", 2 * MB), tfile("la1", 2 * MB) };
	const char *log = tfile("la.log", 0);
	static const unsigned slow_legs[2] = { 1, 0 };
	for (unsigned k = 0; k < 2; k++) {
		unsigned slow = slow_legs[k];
		const char *f[2] = { slow == 0 ? "delay write=400ms" : NULL, slow == 1 ? "delay write=400ms" : NULL };
		struct mirror_config c;
		mirror_config_init(&c);
		c.nlegs = 2;
		c.legs[0] = p[0];
		c.legs[1] = p[1];
		c.faults[0] = f[0];
		c.faults[1] = f[1];
		c.write_timeout_ms = 50;
		c.log_path = log;
		c.log_faults = "delay write=150ms";
		c.resync_paused = 1;
		struct mirror *m;
		if (mirror_open(&c, &m)) {
			check(0, "log ack: open: %s", mirror_last_error());
			return;
		}
		static unsigned char d[BS];
		double took[3];
		for (int i = 0; i < 3; i++) {
			fill(d, BS, 90 + i);
			double t = now_ms();
			int rc = mirror_write(m, (uint64_t)i * BS, d, BS); /* one region, three blocks */
			took[i] = now_ms() - t;
			if (rc)
				check(0, "log ack: write %d failed: %d", i, rc);
		}
		if (slow == 1)
			check(took[0] >= 190 && took[0] < 200 + 300 && took[1] < 50 + 100 && took[2] < 50 + 100,
			      "log ack, leg1 late: first write = active-mark commit + deadline (%.0f ms), the next "
			      "writes to the region (queued on the busy leg1) are acked with no commit (%.0f, %.0f ms)",
			      took[0], took[1], took[2]);
		else
			check(took[0] >= 340 && took[0] < 350 + 300 && took[1] < 50 + 100 && took[2] < 50 + 100,
			      "log ack, leg0 late: first write = active-mark commit + deadline + dirty commit "
			      "(%.0f ms: recovery would have copied from leg0), the next ones need none (%.0f, %.0f ms)",
			      took[0], took[1], took[2]);
		mirror_set_faults(m, slow, "");
		mirror_wait_no_late_io(m, 5000);
		mirror_resync_pause(m, 0);
		check(mirror_wait_in_sync(m, 5000), "log ack, leg%u late: in sync after resync", slow);
		mirror_close(m);
		check(legs_identical(2, p, 2 * MB), "log ack, leg%u late: legs byte-identical (cmp)", slow);
	}
}

/* Several threads writing the same few regions while a leg is slower than
 * the deadline: the legs must end identical. */
struct stress {
	struct mirror *m;
	int id, fails;
};

/* 10 writes, each to its own region (64 regions: thread id spreads them). */
static void *slow_writer(void *arg)
{
	struct stress *s = arg;
	unsigned char d[BS];
	for (int i = 0; i < 10; i++) {
		fill(d, BS, (uint32_t)(s->id * 100 + i));
		s->fails += mirror_write(s->m, (uint64_t)((s->id * 10 + i) % 64) * RS, d, BS) != 0;
	}
	return NULL;
}

static void *stress_thread(void *arg)
{
	struct stress *s = arg;
	unsigned char d[BS];
	uint32_t x = (uint32_t)s->id * 7919u + 1;
	for (int i = 0; i < 150; i++) {
		x = x * 1103515245u + 12345u;
		fill(d, BS, x);
		s->fails += mirror_write(s->m, (uint64_t)((x >> 8) % 64) * BS, d, BS) != 0;
	}
	return NULL;
}

/* Both legs slower than the deadline under concurrent writes: the late IO
 * reaches the cap (queue_depth 8: 4 late IOs per leg), and a write that
 * would skip both legs waits for late IO to drain instead of failing. */
static void t_backpressure(void)
{
	const char *p[2] = { tfile("bp0", 4 * MB), tfile("bp1", 4 * MB) };
	struct mirror_config c;
	mirror_config_init(&c);
	c.nlegs = 2;
	c.legs[0] = p[0];
	c.legs[1] = p[1];
	c.faults[0] = "delay write=120ms";
	c.faults[1] = "delay write=120ms";
	c.write_timeout_ms = 50;
	c.queue_depth = 8;
	c.resync_kbps = 0;
	struct mirror *m;
	if (mirror_open(&c, &m)) {
		check(0, "backpressure: open: %s", mirror_last_error());
		return;
	}
	pthread_t th[8];
	struct stress s[8];
	for (int i = 0; i < 8; i++) {
		s[i] = (struct stress){ m, 100 + i, 0 };
		pthread_create(&th[i], NULL, slow_writer, &s[i]);
	}
	int fails = 0;
	for (int i = 0; i < 8; i++) {
		pthread_join(th[i], NULL);
		fails += s[i].fails;
	}
	struct mirror_status st;
	mirror_status(m, &st);
	check(!fails && st.timeouts > 0,
	      "backpressure: 80 concurrent writes, every leg slower than the deadline: all acked, none failed "
	      "(%d failed, %llu timeouts, slowest ack %.0f ms)",
	      fails, (unsigned long long)st.timeouts, st.max_ack_ms);
	check(mirror_wait_in_sync(m, 10000), "backpressure: in sync afterwards");
	mirror_close(m);
	check(legs_identical(2, p, 4 * MB), "backpressure: legs byte-identical (cmp)");
}

static void t_stress(void)
{
	const char *p[2] = { tfile("st0", 2 * MB), tfile("st1", 2 * MB) };
	const char *f[2] = { "delay write=2ms", "delay write=25ms" };
	struct mirror *m = open_mirror(2, p, f, 20, 1, 60000, NULL);
	pthread_t th[4];
	struct stress s[4];
	for (int i = 0; i < 4; i++) {
		s[i] = (struct stress){ m, i, 0 };
		pthread_create(&th[i], NULL, stress_thread, &s[i]);
	}
	int fails = 0;
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		fails += s[i].fails;
	}
	struct mirror_status st;
	mirror_status(m, &st);
	check(!fails, "stress: 600 writes from 4 threads to 4 regions acked (%llu timeouts, %llu late kept dirty)",
	      (unsigned long long)st.timeouts, (unsigned long long)st.legs[1].late_kept_dirty);
	mirror_set_faults(m, 0, "");
	mirror_set_faults(m, 1, "");
	check(mirror_wait_in_sync(m, 10000), "stress: in sync afterwards");
	mirror_close(m);
	check(legs_identical(2, p, 2 * MB), "stress: legs byte-identical (cmp)");
}

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	t_basic();
	t_deadline();
	t_overtake();
	t_quorum();
	t_quorum_late();
	t_error_leg();
	t_fail_after();
	t_reads();
	t_read_late();
	t_queued();
	t_split();
	t_chaos(2, 1);
	t_chaos(3, 2);
	t_resync_progress();
	t_log_reopen();
	t_log_close();
	t_flush();
	t_partial();
	t_log_ack();
	t_backpressure();
	t_stress();
	return summary("test_mirror");
}
