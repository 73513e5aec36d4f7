/*
 * mirror.h - a reference N-way mirror over libdmio (examples/mirror).
 *
 * Every write goes to all legs in one dm_io() with a deadline. It is
 * acknowledged when every leg is OK, or when the deadline has passed (all
 * legs are final or have been notified DM_IO_TIMEOUT) and at least `quorum`
 * legs are OK. With fewer, it waits for late completions and is
 * acknowledged as soon as `quorum` legs are OK; it fails only when the
 * quorum can no longer be reached or after fail_after_ms. Legs that did
 * not make it are marked dirty for the regions they missed in a
 * dirty-region log (a bitmap in memory, optionally persisted on a small
 * log device with DM_IO_FLUSH | DM_IO_FUA). A background thread copies
 * dirty regions from an in-sync leg (resync), throttled, while the mirror
 * keeps serving.
 *
 * Ordering (see mirror_int.h for the details): the mirror never has two writes
 * to the same region in flight on the same leg, so a late write can never
 * land on top of newer data. A write to a region whose previous write is
 * still running on a leg (timed out, not final) is queued on that leg (the
 * leg is dirty meanwhile) and issued there when the previous one ends
 * (queued writes go one at a time, oldest first). A leg
 * is clean again for the region once an OK shows it holds every write issued
 * there (a late write and the queued one after it). Resync of a region on a leg starts only when
 * nothing at all is in flight on that region.
 *
 * Thread safety: mirror_write, mirror_read and mirror_status may be called
 * from any number of threads at once; writes to the same region are
 * serialized (a write waits for the acknowledgement of the previous one).
 * mirror_close must not race with other calls.
 */
#ifndef DMIO_MIRROR_H
#define DMIO_MIRROR_H

#include <dm_io.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define MIRROR_MAX_LEGS 8

/* Called for each noteworthy event (a leg timed out, a late completion, a
 * leg failed or came back, a region resynced...), with a one-line message
 * without a newline. Runs on the library's completion thread, the resync
 * thread or a caller's thread, with the mirror's lock held: it must not
 * call mirror functions. */
typedef void (*mirror_event_fn)(void *ctx, const char *msg);

struct mirror_config {
	unsigned nlegs;                          /* 1..MIRROR_MAX_LEGS */
	const char *legs[MIRROR_MAX_LEGS];        /* block devices or files */
	const char *names[MIRROR_MAX_LEGS];       /* for messages; NULL: "leg0"... */
	const char *faults[MIRROR_MAX_LEGS];      /* fault spec per leg (dm_io_bdev_open_faulty) or NULL */
	unsigned block_size;       /* IO granularity in bytes (default 4096) */
	unsigned region_size;      /* dirty-tracking granularity in bytes (default 64 KiB) */
	unsigned write_timeout_ms; /* deadline of every write (default 100); 0: none, a hung leg stalls writes */
	unsigned read_timeout_ms;  /* per leg before a read tries the next leg (default 100); 0: none */
	unsigned quorum;           /* legs that must be OK to acknowledge a write (default 1) */
	unsigned fail_after_ms;    /* a leg with IO timed out for longer than this is failed, and a write
				    * short of its quorum fails after this long (default 5000) */
	unsigned resync_kbps;      /* resync throttle in KiB/s; 0: unthrottled (default 16384) */
	unsigned probe_ms;         /* how often a failed leg is tried again (default 1000) */
	unsigned queue_depth;      /* dm_io min_ios per leg (default 64) */
	const char *log_path;      /* persisted dirty-region log, or NULL (in memory only) */
	const char *log_faults;    /* fault spec for the log device (tests), or NULL */
	int initial_sync;          /* a new log (or no log): copy everything from leg 0 */
	int resync_paused;         /* start with resync paused (mirror_resync_pause) */
	mirror_event_fn event;
	void *event_ctx;
};

/* Fills in the defaults above (nlegs 0, no legs, no log). */
void mirror_config_init(struct mirror_config *c);

struct mirror;

/* Opens the legs (and the log), loads the log: regions dirty in it, and
 * regions that were being written when the mirror stopped ("active"), are
 * resynced. The mirror's size is the smallest leg rounded down to a whole
 * block (the last region may be partial). Returns 0 or a negative errno (message in mirror_last_error()). */
int mirror_open(const struct mirror_config *c, struct mirror **out);

/* Checks what mirror_open would check, without opening the mirror: the
 * numbers, that every leg opens read-write with a block size dividing
 * block_size, and that the log either has this mirror's geometry or can be
 * created (its directory exists and is writable). Starts no thread, writes
 * nothing (for a daemon that validates before it forks). Returns 0 or a
 * negative errno (message in mirror_last_error()). */
int mirror_validate(const struct mirror_config *c);

/* Whether the directory that would hold a new file `path` exists and is
 * writable (for a log or status file before it is created); its name goes
 * to dir (dirlen bytes). Returns 0 or -ENOENT. */
int mirror_parent_dir_writable(const char *path, char *dir, size_t dirlen);

/* Stops the resync thread, cancels IO still running (its regions stay
 * dirty on that leg), and once every leg IO is final commits the log with
 * no region marked "being written": the next open resyncs only the dirty
 * regions. Then destroys the dm_io client and closes the legs. */
void mirror_close(struct mirror *m);

/* Writes len bytes at off (both multiples of block_size) to every leg and
 * returns when the write is acknowledged. Returns 0 when every leg is OK,
 * or at the write deadline when at least `quorum` legs are OK. When fewer
 * are OK at the deadline, it keeps waiting for the legs still running and
 * returns 0 as soon as `quorum` legs are OK. It returns -EIO only when the
 * quorum can no longer be reached (legs ended in error or were skipped) or
 * fail_after_ms after the call (the data is then undefined, as after a
 * failed block write: some legs may hold it); -EINVAL (misaligned, out of
 * range, or more than 64 regions).
 *
 * With a log, the call also waits for log writes: one before the first
 * write to a region not written in the last 0.5 s ("being written" mark),
 * and one before the acknowledgement only when a leg missed the write and
 * crash recovery, reading the log as it is on disk, would copy the region
 * from a leg that does not hold this write. So a leg that hangs behind a
 * healthy one costs no log write on the acknowledgement path. */
int mirror_write(struct mirror *m, uint64_t off, const void *buf, size_t len);

#define MIRROR_FUA 1u /* mirror_write_flags: each leg writes with DM_IO_FUA */

/* mirror_write with flags (0 or MIRROR_FUA: the data is durable on every
 * leg that is OK for it, before the acknowledgement). */
int mirror_write_flags(struct mirror *m, uint64_t off, const void *buf, size_t len, unsigned flags);
/* mirror_write_flags for any byte range (len >= 1, within the mirror, over
 * at most 64 regions): a partial first or last block is read, merged and
 * written whole (read-modify-write) while the write holds its regions
 * against every other write, so concurrent writes into one block never
 * tear or lose each other. */
int mirror_pwrite(struct mirror *m, uint64_t off, const void *buf, size_t len, unsigned flags);

/* Flushes every leg that is not failed (DM_IO_FLUSH, write_timeout_ms),
 * making the writes acknowledged before the call durable. The write rule
 * applies: 0 when `quorum` legs flushed OK (at the deadline, or later while
 * waiting for late legs up to fail_after_ms), else -EIO. A leg that missed
 * the flush (late, error) gets every region written to it since its last
 * good flush marked dirty (on the log before the return), so resync
 * rewrites them; a flush error fails the leg. Thread-safe. */
int mirror_flush(struct mirror *m);

/* Reads from an in-sync leg with read_timeout_ms per leg; on TIMEOUT or
 * ERROR the next in-sync leg is tried (DM_IO_READ_ANY, hedge delay
 * read_timeout_ms); the last one is waited for up to fail_after_ms. A leg
 * out of sync for the region only while a write to it is late (it timed
 * out and still runs) is waited for, up to fail_after_ms, when no leg is
 * in sync, and tried again when it comes back in sync during a read of the
 * others: a stall of the good leg while another hangs delays reads, it
 * does not fail them. Returns 0, -EIO (no in-sync leg left, and none can
 * come back) or -ETIMEDOUT. */
int mirror_read(struct mirror *m, uint64_t off, void *buf, size_t len);

/* Replaces the injected faults of a leg (dm_io_bdev_set_faults). */
int mirror_set_faults(struct mirror *m, unsigned leg, const char *spec);

/* Pauses (1) or resumes (0) the resync thread (tests, maintenance). */
void mirror_resync_pause(struct mirror *m, int paused);

/* Waits until every leg is in sync (not failed, no dirty region, no IO
 * running late) or ms pass; returns 1 when in sync. */
int mirror_wait_in_sync(struct mirror *m, int ms);

/* Waits until no leg has timed-out IO still running, or ms pass. */
int mirror_wait_no_late_io(struct mirror *m, int ms);

enum mirror_leg_state {
	MIRROR_LEG_IN_SYNC = 0, /* every region up to date */
	MIRROR_LEG_DIRTY = 1,   /* serving, some regions to resync (or IO late) */
	MIRROR_LEG_FAILED = 2,  /* no IO sent, except resync probes */
};

struct mirror_leg_status {
	const char *path;
	const char *name;
	enum mirror_leg_state state;
	const char *fail_reason;      /* "" unless failed */
	uint64_t dirty_regions;
	uint64_t late_io;             /* timed-out IO still running now */
	uint64_t timeouts;            /* write TIMEOUT notifications */
	uint64_t late_ok;             /* OK after TIMEOUT */
	uint64_t late_kept_dirty;     /* ... that left the region dirty (newer write) */
	uint64_t late_errors;         /* ERROR/CANCELLED after TIMEOUT */
	uint64_t errors;              /* write ERRORs */
	uint64_t skipped;             /* writes not sent (failed, too much late IO) */
	uint64_t queued;              /* writes queued behind an earlier IO still running on the
	                                 region, sent when it ends */
	uint64_t resynced;            /* regions copied to this leg */
	uint64_t read_errors;
	uint64_t read_slow;           /* reads that had to move to another leg */
	uint64_t failures;            /* times the leg was failed */
};

struct mirror_status {
	unsigned nlegs;
	uint64_t size;                /* bytes */
	uint64_t nregions;
	unsigned region_size;
	uint64_t writes;              /* mirror_write calls acknowledged with 0 */
	uint64_t writes_degraded;     /* ... with some leg not OK */
	uint64_t write_errors;        /* mirror_write calls that failed */
	double max_ack_ms;            /* slowest acknowledgement */
	uint64_t reads, read_errors;
	uint64_t timeouts;            /* all legs */
	uint64_t late_completions;    /* all legs */
	uint64_t resynced;            /* regions copied, all legs */
	uint64_t resync_pending;      /* (leg, region) pairs dirty now */
	int resync_paused;
	uint64_t log_commits;         /* log writes (0 without a log) */
	uint64_t flushes, flush_errors; /* mirror_flush calls, and those that failed */
	uint64_t log_errors;
	int log;                      /* 1 when persisted */
	struct mirror_leg_status legs[MIRROR_MAX_LEGS];
};

void mirror_status(struct mirror *m, struct mirror_status *st);
/* Prints the status in a few human-readable lines. */
void mirror_status_print(struct mirror *m, FILE *f);
const char *mirror_leg_state_name(enum mirror_leg_state s);

/* The dm_io client (for dm_io_client_stats). */
struct dm_io_client *mirror_client(struct mirror *m);
/* The size in bytes; the block size; the region size. */
uint64_t mirror_size(const struct mirror *m);
unsigned mirror_block_size(const struct mirror *m);
unsigned mirror_region_size(const struct mirror *m);

/* Message of this thread's last failed mirror_open. */
const char *mirror_last_error(void);

#endif
