/* The mirror with one leg on a really hung block device: a loop device
 * (direct IO) over the hangfs FUSE daemon holding every request
 * (c-tests/fixtures/hungdev.h; needs root and /dev/fuse), one leg slower
 * than the deadline (injected "delay write=300ms") and one healthy but
 * delayed leg ("delay write=10ms").
 *
 *  - writes keep being acknowledged within the deadline + a generous bound
 *    while the hung leg's IO is stuck in the kernel, and the hung leg is
 *    failed after fail_after_ms;
 *  - v1 to a region is stuck on the hung leg, v2 to the same region is
 *    acknowledged; on release v1 lands late on the hung leg and must not win:
 *    the region stays dirty and resync puts v2 there;
 *  - reads are served by the other legs within the read timeout + bound;
 *  - after release and resync all three legs are byte-identical (cmp). */
#include "check.h"
#include "hungdev.h"
#include "mirror.h"

enum { DEV = 16 << 20, RS = 64 * 1024, BS = 4096, TIMEOUT = 100, BOUND = 400 };

int main(void)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	struct hungdev *h = hungdev_up(DEV);
	if (!h) {
		skip_check("hung leg (loop device over a blocking FUSE file)", hungdev_skip_reason());
		return summary("test_hung");
	}
	const char *p[3] = { tfile("h0", DEV), tfile("h1", DEV), hungdev_path(h) };
	struct mirror_config c;
	mirror_config_init(&c);
	c.nlegs = 3;
	c.legs[0] = p[0];
	c.legs[1] = p[1];
	c.legs[2] = p[2];
	c.faults[0] = "delay write=10ms";
	c.faults[1] = "delay write=300ms";
	c.write_timeout_ms = TIMEOUT;
	c.read_timeout_ms = 100;
	c.fail_after_ms = 1000;
	c.probe_ms = 200;
	c.resync_kbps = 0;
	struct mirror *m;
	if (mirror_open(&c, &m)) {
		check(0, "hung: mirror_open: %s", mirror_last_error());
		return summary("test_hung");
	}
	static unsigned char v1[RS], v2[RS], back[RS], d[BS];
	const uint64_t R = 7 * RS;
	fill(v1, RS, 1);
	fill(v2, RS, 2);

	/* Everything on the hung device now hangs inside the kernel. */
	check(hungdev_ctl(h, "hold all") == 0, "hung: hangfs holds all IO of %s", p[2]);
	/* Reads rotate over the legs; the third starts on the hung leg, gets
	 * no answer and moves on after the 100 ms read timeout. */
	double t, took, worst = 0;
	int bad = 0;
	for (int i = 0; i < 3; i++) {
		memset(back, 0xAB, RS);
		t = now_ms();
		bad += mirror_read(m, R, back, RS) != 0 || back[0] || memcmp(back, back + 1, RS - 1);
		took = now_ms() - t;
		worst = took > worst ? took : worst;
	}
	check(!bad && worst >= 90 && worst < 100 + BOUND,
	      "hung: 3 reads served, the one that started on the hung leg moved on in %.0f ms", worst);

	mirror_resync_pause(m, 1);
	t = now_ms();
	int rc = mirror_write(m, R, v1, RS);
	took = now_ms() - t;
	check(rc == 0 && took < TIMEOUT + BOUND, "hung: v1 acknowledged in %.0f ms (deadline %d ms)", took, TIMEOUT);
	check(hungdev_held(h) >= 1, "hung: v1 is stuck in the kernel on the hung leg (%d held in FUSE)",
	      hungdev_held(h));
	t = now_ms();
	rc = mirror_write(m, R, v2, RS);
	took = now_ms() - t;
	check(rc == 0 && took < TIMEOUT + BOUND, "hung: v2 to the same region acknowledged in %.0f ms", took);

	/* A stream of writes over 3 s: the hung leg gets failed meanwhile. */
	double t0 = now_ms();
	int n = 0, fails = 0;
	worst = 0;
	while (now_ms() - t0 < 3000) {
		fill(d, BS, 1000 + n);
		uint64_t off = (uint64_t)((n * 37) % 256) * RS + (uint64_t)(n % 16) * BS;
		if (off / RS == R / RS)
			off += RS;
		t = now_ms();
		fails += mirror_write(m, off, d, BS) != 0;
		took = now_ms() - t;
		worst = took > worst ? took : worst;
		n++;
	}
	check(!fails && worst < TIMEOUT + BOUND,
	      "hung: %d writes in 3 s all acknowledged, slowest %.0f ms (deadline %d ms + %d ms bound)", n, worst,
	      TIMEOUT, BOUND);
	struct mirror_status st;
	mirror_status(m, &st);
	check(st.legs[2].state == MIRROR_LEG_FAILED,
	      "hung: the hung leg is failed (%s), %llu dirty regions, %llu IOs stuck",
	      st.legs[2].fail_reason, (unsigned long long)st.legs[2].dirty_regions,
	      (unsigned long long)st.legs[2].late_io);
	check(st.legs[1].timeouts > 0 && st.legs[1].late_ok > 0,
	      "hung: the 300 ms leg timed out %llu times and completed late %llu times",
	      (unsigned long long)st.legs[1].timeouts, (unsigned long long)st.legs[1].late_ok);

	/* Reads avoid the hung leg. */
	worst = 0;
	bad = 0;
	for (int i = 0; i < 6; i++) {
		t = now_ms();
		bad += mirror_read(m, R, back, RS) != 0 || memcmp(back, v2, RS) != 0;
		took = now_ms() - t;
		worst = took > worst ? took : worst;
	}
	check(!bad && worst < 100 + BOUND, "hung: 6 reads return v2, slowest %.0f ms", worst);

	/* Release: v1 (and everything else held) completes late. */
	check(hungdev_ctl(h, "release") == 0, "hung: hangfs releases the held IO");
	check(mirror_wait_no_late_io(m, 20000), "hung: every stuck IO completed late after the release");
	mirror_status(m, &st);
	check(st.legs[2].late_ok > 0 && st.legs[2].late_kept_dirty > 0,
	      "hung: %llu late OKs on the hung leg, %llu of them kept their region dirty (newer writes)",
	      (unsigned long long)st.legs[2].late_ok, (unsigned long long)st.legs[2].late_kept_dirty);
	check(read_leg(p[2], R, back, RS) == 0 && !memcmp(back, v1, RS),
	      "hung: before resync the hung leg holds the late v1 (it really landed late)");
	mirror_resync_pause(m, 0);
	t = now_ms();
	int synced = mirror_wait_in_sync(m, 30000);
	mirror_status(m, &st);
	check(synced, "hung: resync brought all legs in sync in %.0f ms (%llu regions copied)", now_ms() - t,
	      (unsigned long long)st.resynced);
	check(read_leg(p[2], R, back, RS) == 0 && !memcmp(back, v2, RS),
	      "hung: the overtaken v1 did not win: the hung leg holds v2");
	mirror_status_print(m, stdout);
	struct dm_io_stats ds;
	dm_io_client_stats(mirror_client(m), &ds, sizeof ds);
	printf("dm_io stats: %llu requests, %llu timeouts, %llu late completions, %llu hedges\n",
	       (unsigned long long)ds.requests, (unsigned long long)ds.timeouts,
	       (unsigned long long)ds.late_completions, (unsigned long long)ds.hedges);
	uint64_t size = mirror_size(m);
	mirror_close(m);
	check(cmp_legs(p[0], p[1], size) && cmp_legs(p[0], p[2], size),
	      "hung: all three legs byte-identical (cmp, %llu bytes)", (unsigned long long)size);
	hungdev_down(h);
	return summary("test_hung");
}
