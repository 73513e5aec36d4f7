/*
 * libdmio-fio.so: a fio external ioengine over libdmio's public C API
 * (include/dm_io.h). Load it with --ioengine=external:PATH/libdmio-fio.so.
 *
 * One dm_io_client per fio job (thread or process), sized from iodepth and
 * the largest block size. queue() collects io_us, commit() submits each
 * with an asynchronous dm_io(); the notify function runs on the client's
 * completion thread and, once every region of a request is final, puts the
 * io_u on a completion ring that getevents()/event() hand to fio.
 *
 * Options (fio engine options, see fio-engine/README.md):
 *   dmio_timeout=MS   per-IO deadline (0: none)
 *   dmio_memory=private|pages|zerocopy
 *   dmio_faults=SPEC  open the job's files with dm_io_bdev_open_faulty
 *   dmio_legs=P[:P]   further legs mirroring the job's file
 *   dmio_spin=US      poll before sleeping when waiting for all IO in flight
 *
 * fio installs no headers: this file is built against the configured
 * source of the installed fio (scripts/fio-source.sh), so that struct
 * thread_data and struct io_u have the installed binary's layout.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <fio.h>
#include <optgroup.h>

#include "dm_io.h"

#define DMIO_EXPORT __attribute__((visibility("default")))

/* The file plus at most this many legs. */
#define DMIO_MAX_LEGS 15
#define DMIO_MAX_DEVS (DMIO_MAX_LEGS + 1)

enum dmio_mem { MEM_PRIVATE = 0, MEM_PAGES = 1, MEM_ZEROCOPY = 2 };
static const char *const mem_names[] = { "private", "pages", "zerocopy" };

/* Engine options (td->eo); fio wants a pointer-sized pad first. */
struct dmio_options {
	void *pad;
	unsigned int timeout_ms;
	unsigned int memory;
	char *faults;
	char *legs;
	unsigned int spin_us;
};

static struct fio_option options[] = {
	{
		.name = "dmio_timeout",
		.lname = "libdmio per-IO deadline (ms)",
		.type = FIO_OPT_INT,
		.off1 = offsetof(struct dmio_options, timeout_ms),
		.help = "Deadline of each IO in milliseconds (0: none); TIMEOUTs and late completions are counted",
		.def = "0",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "dmio_memory",
		.lname = "libdmio memory mode",
		.type = FIO_OPT_STR,
		.off1 = offsetof(struct dmio_options, memory),
		.help = "Where IO runs: the caller's buffer through private memory, library pages, or zero-copy",
		.def = "private",
		.posval = {
			{ .ival = "private", .oval = MEM_PRIVATE,
			  .help = "fio's buffers as DM_IO_VM memory, IO through the client's private memory" },
			{ .ival = "pages", .oval = MEM_PAGES,
			  .help = "fio's buffers are dm_io_page_alloc pages, passed as DM_IO_PAGE_LIST" },
			{ .ival = "zerocopy", .oval = MEM_ZEROCOPY,
			  .help = "fio's buffers as DM_IO_VM with DM_IO_ZERO_COPY" },
		},
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "dmio_faults",
		.lname = "libdmio fault injection spec",
		.type = FIO_OPT_STR_STORE,
		.off1 = offsetof(struct dmio_options, faults),
		.help = "Open the job's files with dm_io_bdev_open_faulty and this spec (see dm_io_bdev_set_faults)",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "dmio_legs",
		.lname = "libdmio mirror legs",
		.type = FIO_OPT_STR_STORE,
		.off1 = offsetof(struct dmio_options, legs),
		.help = "PATH[:PATH...] (a leg may end in @SPEC for its faults): legs mirroring the job's file",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = "dmio_spin",
		.lname = "libdmio completion spin (us)",
		.type = FIO_OPT_INT,
		.off1 = offsetof(struct dmio_options, spin_us),
		.help = "While waiting for every IO in flight (e.g. QD1), poll this many microseconds before sleeping",
		.def = "50",
		.category = FIO_OPT_C_ENGINE,
		.group = FIO_OPT_G_INVALID,
	},
	{
		.name = NULL,
	},
};

struct dmio_td;

/* One per io_u (io_u->engine_data). The notify fields are written only on
 * the completion thread, and read by fio's thread only after the io_u has
 * come off the completion ring (its mutex orders the two). */
struct dmio_req {
	struct io_u *io_u;
	struct dmio_td *d;
	unsigned int nregions;
	unsigned int nfinal;
	unsigned int is_write;
	unsigned int cancelling;
	uint8_t dev[DMIO_MAX_DEVS];	/* region index -> device index */
	uint8_t timed_out[DMIO_MAX_DEVS];
	uint8_t final_state[DMIO_MAX_DEVS];
	int final_error[DMIO_MAX_DEVS];
	struct timespec submitted;
	struct dm_io_page_list *pl;	/* pages mode: max_bs / page + 1 entries */
	unsigned int npl;
};

struct dmio_dev {
	char *path;			/* legs only; the file's is fio's */
	char *faults;			/* legs only: @SPEC */
	struct block_device *bdev;
	atomic_int out_of_sync;		/* missed a write: no more IO */
};

struct dmio_td {
	struct thread_data *td;
	struct dmio_options *o;
	struct dm_io_client *cl;
	unsigned int ndevs;		/* 1 + legs */
	struct dmio_dev devs[DMIO_MAX_DEVS];
	struct fio_file *file;		/* the file the legs mirror */

	/* queue() -> commit() */
	struct io_u **pending;
	unsigned int npending;

	/* notify -> getevents(): a ring of iodepth completed io_us */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct io_u **ring;
	unsigned int ring_head, ring_count, ring_size;
	unsigned int waiting_for;	/* getevents' min while it sleeps, else 0 */
	uint64_t spin_ns;
	unsigned int in_flight;		/* submitted, not yet handed to fio (fio's thread only) */
	struct io_u **events;

	/* pages mode: the run of library pages behind fio's buffers */
	struct page **pages;
	size_t npages;
	char *pages_base;

	/* counters (the completion thread writes, the end reads) */
	atomic_ulong timeouts, late, degraded_writes, errors, submitted, completed;
	atomic_ulong max_write_ack_us, max_ack_us;
};

static inline struct dmio_td *dtd(struct thread_data *td)
{
	return td->io_ops_data;
}

static uint64_t ts_us_since(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	int64_t ns = (int64_t)(now.tv_sec - t0->tv_sec) * 1000000000 + (now.tv_nsec - t0->tv_nsec);

	return ns > 0 ? (uint64_t)ns / 1000 : 0;
}

static void atomic_max(atomic_ulong *a, unsigned long v)
{
	unsigned long cur = atomic_load_explicit(a, memory_order_relaxed);

	while (v > cur && !atomic_compare_exchange_weak(a, &cur, v))
		;
}

/* ---- completion -------------------------------------------------------- */

static void ring_push(struct dmio_td *d, struct io_u *io_u)
{
	pthread_mutex_lock(&d->lock);
	d->ring[(d->ring_head + d->ring_count) % d->ring_size] = io_u;
	__atomic_store_n(&d->ring_count, d->ring_count + 1, __ATOMIC_RELEASE);
	if (d->waiting_for && d->ring_count >= d->waiting_for)
		pthread_cond_signal(&d->cond);
	pthread_mutex_unlock(&d->lock);
}

/* Every region is final: the io_u's result, then hand it to fio. */
static void req_complete(struct dmio_req *r)
{
	struct dmio_td *d = r->d;
	struct io_u *io_u = r->io_u;
	unsigned int ok = 0, i;
	int err = 0;

	for (i = 0; i < r->nregions; i++) {
		if (r->final_state[i] == DM_IO_OK)
			ok++;
		else if (!err || r->final_state[i] == DM_IO_ERROR)
			err = r->final_error[i] ? r->final_error[i] : -EIO;
	}
	if (r->is_write && r->nregions > 1 && ok > 0 && ok < r->nregions) {
		/* A mirror write acknowledged by some legs: the others missed
		 * it and are out of sync from now on (no reads, no writes). */
		for (i = 0; i < r->nregions; i++)
			if (r->final_state[i] != DM_IO_OK)
				atomic_store(&d->devs[r->dev[i]].out_of_sync, 1);
		atomic_fetch_add(&d->degraded_writes, 1);
		err = 0;
	} else if (!r->is_write && ok > 0) {
		err = 0;	/* DM_IO_READ_ANY: one OK delivered the data */
	}
	io_u->resid = 0;
	io_u->error = err ? (unsigned int)-err : 0;
	if (err) {
		io_u->resid = io_u->xfer_buflen;
		atomic_fetch_add(&d->errors, 1);
	}
	uint64_t us = ts_us_since(&r->submitted);
	atomic_max(&d->max_ack_us, us);
	if (r->is_write)
		atomic_max(&d->max_write_ack_us, us);
	atomic_fetch_add(&d->completed, 1);
	ring_push(d, io_u);
}

/* A mirror write may be acknowledged when every region is final or has
 * passed its deadline, and one at least is OK (the rule of
 * examples/mirror): the regions still running are cancelled, and the legs
 * that missed the write drop out of the mirror. */
static void maybe_ack_write(struct dmio_req *r, struct dm_io_handle *hdl)
{
	unsigned int i, ok = 0;

	if (!r->is_write || r->nregions < 2 || r->cancelling)
		return;
	for (i = 0; i < r->nregions; i++) {
		if (r->final_state[i] == DM_IO_OK)
			ok++;
		else if (r->final_state[i] == 0xff && !r->timed_out[i])
			return;
	}
	if (!ok)
		return;
	r->cancelling = 1;
	/* Reentrant or not, the CANCELLED notifications it causes complete
	 * the request through dmio_notify. */
	dm_io_cancel_by_handle(r->d->cl, hdl);
}

static void dmio_notify(struct dm_io_region_state *st, void *context)
{
	struct dmio_req *r = context;
	struct dmio_td *d = r->d;
	unsigned int i = st->index;

	if (i >= r->nregions)
		return;
	if (st->state == DM_IO_TIMEOUT) {
		r->timed_out[i] = 1;
		atomic_fetch_add(&d->timeouts, 1);
		maybe_ack_write(r, st->hdl);
		return;
	}
	if (r->timed_out[i] && (st->state == DM_IO_OK || st->state == DM_IO_ERROR))
		atomic_fetch_add(&d->late, 1);
	r->final_state[i] = (uint8_t)st->state;
	r->final_error[i] = st->error_code;
	if (++r->nfinal == r->nregions) {
		req_complete(r);
		return;
	}
	maybe_ack_write(r, st->hdl);
}

/* ---- submission -------------------------------------------------------- */

static struct page *page_of(struct dmio_td *d, const char *addr)
{
	size_t k = (size_t)(addr - d->pages_base) / DM_IO_PAGE_SIZE;

	return k < d->npages ? d->pages[k] : NULL;
}

static int fill_memory(struct dmio_td *d, struct dmio_req *r, struct io_u *io_u, struct dm_io_memory *m)
{
	char *buf = io_u->xfer_buf;

	memset(m, 0, sizeof(*m));
	if (d->o->memory != MEM_PAGES || !d->pages_base) {
		m->type = DM_IO_VM;
		m->ptr.vma = buf;
		return 0;
	}
	char *first = buf - ((uintptr_t)buf % DM_IO_PAGE_SIZE);
	size_t span = (size_t)(buf - first) + io_u->xfer_buflen;
	unsigned int n = (unsigned int)((span + DM_IO_PAGE_SIZE - 1) / DM_IO_PAGE_SIZE), k;

	if (n > r->npl)
		return -EINVAL;
	for (k = 0; k < n; k++) {
		r->pl[k].page = page_of(d, first + (size_t)k * DM_IO_PAGE_SIZE);
		if (!r->pl[k].page)
			return -EINVAL;
		r->pl[k].next = k + 1 < n ? &r->pl[k + 1] : NULL;
	}
	m->type = DM_IO_PAGE_LIST;
	m->ptr.pl = r->pl;
	m->offset = (unsigned int)(buf - first);
	return 0;
}

static int submit_one(struct dmio_td *d, struct io_u *io_u)
{
	struct dmio_req *r = io_u->engine_data;
	struct dm_io_region regions[DMIO_MAX_DEVS];
	struct dm_io_control c;
	static char flush_dummy[DM_IO_PAGE_SIZE];
	unsigned int n = 0, i;
	int rw, ret;

	memset(&c, 0, sizeof(c));
	r->nfinal = 0;
	r->cancelling = 0;
	memset(r->timed_out, 0, sizeof(r->timed_out));
	memset(r->final_state, 0xff, sizeof(r->final_state));

	switch (io_u->ddir) {
	case DDIR_READ:
		rw = DM_IO_READ;
		r->is_write = 0;
		break;
	case DDIR_WRITE:
		rw = DM_IO_WRITE;
		r->is_write = 1;
		break;
	case DDIR_SYNC:
	case DDIR_DATASYNC:
		rw = DM_IO_WRITE | DM_IO_FLUSH;
		r->is_write = 1;
		break;
	default:
		return -EOPNOTSUPP;	/* trim, sync_file_range */
	}

	for (i = 0; i < d->ndevs; i++) {
		struct block_device *b = i == 0 ? FILE_ENG_DATA(io_u->file) : d->devs[i].bdev;

		if (i > 0 && io_u->file != d->file)
			break;
		if (atomic_load(&d->devs[i].out_of_sync) || !b)
			continue;
		regions[n].bdev = b;
		if (rw & DM_IO_FLUSH) {
			regions[n].sector = 0;
			regions[n].count = 0;
		} else {
			regions[n].sector = io_u->offset / DM_IO_SECTOR_SIZE;
			regions[n].count = io_u->xfer_buflen / DM_IO_SECTOR_SIZE;
		}
		r->dev[n] = (uint8_t)i;
		n++;
	}
	if (!n)
		return -EIO;	/* every leg is out of sync */
	if (!(rw & DM_IO_FLUSH) &&
	    (io_u->offset % DM_IO_SECTOR_SIZE || io_u->xfer_buflen % DM_IO_SECTOR_SIZE))
		return -EINVAL;
	if (rw == DM_IO_READ && n > 1)
		rw |= DM_IO_READ_ANY;
	r->nregions = n;

	if (rw & DM_IO_FLUSH) {
		c.memory.type = DM_IO_VM;
		c.memory.ptr.vma = flush_dummy;
	} else {
		ret = fill_memory(d, r, io_u, &c.memory);
		if (ret)
			return ret;
		/* DM_IO_ZERO_COPY is refused with DM_IO_READ_ANY: hedged reads
		 * of a mirror go through private memory. */
		if (d->o->memory == MEM_ZEROCOPY && !(rw & DM_IO_READ_ANY))
			c.flags |= DM_IO_ZERO_COPY;
	}
	c.rw = rw;
	c.notify = dmio_notify;
	c.context = r;
	c.client = d->cl;
	c.timeout = d->o->timeout_ms;
	clock_gettime(CLOCK_MONOTONIC, &r->submitted);
	ret = dm_io(&c, n, regions, NULL);
	if (ret == 0)
		atomic_fetch_add(&d->submitted, 1);
	return ret;
}

static enum fio_q_status dmio_queue(struct thread_data *td, struct io_u *io_u)
{
	struct dmio_td *d = dtd(td);

	fio_ro_check(td, io_u);
	if (io_u->ddir == DDIR_TRIM || io_u->ddir == DDIR_SYNC_FILE_RANGE) {
		io_u->error = EOPNOTSUPP;
		return FIO_Q_COMPLETED;
	}
	if (d->npending == td->o.iodepth)
		return FIO_Q_BUSY;
	d->pending[d->npending++] = io_u;
	return FIO_Q_QUEUED;
}

static int dmio_commit(struct thread_data *td)
{
	struct dmio_td *d = dtd(td);
	struct timespec now;
	unsigned int i;
	int fill = fio_fill_issue_time(td);

	if (fill)
		fio_gettime(&now, NULL);
	for (i = 0; i < d->npending; i++) {
		struct io_u *io_u = d->pending[i];
		int ret;

		d->in_flight++;
		if (fill) {
			memcpy(&io_u->issue_time, &now, sizeof(now));
			io_u_queued(td, io_u);
		}
		ret = submit_one(d, io_u);
		if (ret) {
			/* Not started: complete it with the error. */
			io_u->error = (unsigned int)-ret;
			io_u->resid = io_u->xfer_buflen;
			atomic_fetch_add(&d->errors, 1);
			if (ret == -EINVAL)
				log_err("dmio: dm_io refused an IO at offset %llu, %llu bytes: %s\n",
					io_u->offset, io_u->xfer_buflen, dm_io_last_error());
			ring_push(d, io_u);
		}
	}
	d->npending = 0;
	return 0;
}

static int dmio_getevents(struct thread_data *td, unsigned int min, unsigned int max,
			  const struct timespec *t)
{
	struct dmio_td *d = dtd(td);
	struct timespec deadline;
	unsigned int n;

	if (t) {
		clock_gettime(CLOCK_MONOTONIC, &deadline);
		deadline.tv_sec += t->tv_sec;
		deadline.tv_nsec += t->tv_nsec;
		if (deadline.tv_nsec >= 1000000000L) {
			deadline.tv_sec++;
			deadline.tv_nsec -= 1000000000L;
		}
	}
	/* Waiting for every IO in flight (QD1, or the last ones), spin a
	 * little before sleeping: then the wake-up of this thread by the
	 * completion thread is most of the latency. With other IO in flight
	 * spinning only takes CPU from the threads doing it. */
	if (min && d->spin_ns && min >= d->in_flight) {
		struct timespec t0, now;

		clock_gettime(CLOCK_MONOTONIC, &t0);
		while (__atomic_load_n(&d->ring_count, __ATOMIC_ACQUIRE) < min) {
			__builtin_ia32_pause();
			clock_gettime(CLOCK_MONOTONIC, &now);
			if ((uint64_t)(now.tv_sec - t0.tv_sec) * 1000000000u + (uint64_t)now.tv_nsec -
				    (uint64_t)t0.tv_nsec > d->spin_ns)
				break;
		}
	}
	pthread_mutex_lock(&d->lock);
	while (d->ring_count < min) {
		d->waiting_for = min;
		if (t) {
			if (pthread_cond_timedwait(&d->cond, &d->lock, &deadline) == ETIMEDOUT)
				break;
		} else {
			pthread_cond_wait(&d->cond, &d->lock);
		}
	}
	d->waiting_for = 0;
	n = d->ring_count < max ? d->ring_count : max;
	for (unsigned int i = 0; i < n; i++)
		d->events[i] = d->ring[(d->ring_head + i) % d->ring_size];
	d->ring_head = (d->ring_head + n) % d->ring_size;
	d->ring_count -= n;
	d->in_flight -= n;
	pthread_mutex_unlock(&d->lock);
	return (int)n;
}

static struct io_u *dmio_event(struct thread_data *td, int event)
{
	return dtd(td)->events[event];
}

/* ---- files ------------------------------------------------------------- */

static int dmio_open_file(struct thread_data *td, struct fio_file *f)
{
	struct dmio_td *d = dtd(td);
	struct block_device *b = NULL;
	unsigned int flags = td->o.odirect ? 0 : DM_IO_BDEV_BUFFERED;
	const char *faults = d->o->faults;
	int ret;

	if (!td_write(td) && !(faults && *faults))
		flags |= DM_IO_BDEV_RDONLY;
	if (faults && *faults && td->o.odirect)
		ret = dm_io_bdev_open_faulty(f->file_name, faults, &b);
	else {
		ret = dm_io_bdev_open(f->file_name, flags, &b);
		if (!ret && faults && *faults && (ret = dm_io_bdev_set_faults(b, faults)) != 0)
			dm_io_bdev_close(b);
	}
	if (ret) {
		log_err("dmio: cannot open %s: %s (%s)\n", f->file_name, strerror(-ret), dm_io_last_error());
		td_verror(td, -ret, "dm_io_bdev_open");
		return 1;
	}
	if (d->ndevs > 1) {
		if (d->file && d->file != f) {
			dm_io_bdev_close(b);
			log_err("dmio: dmio_legs mirrors one file; this job has several (%s)\n", f->file_name);
			td_verror(td, EINVAL, "dmio_legs");
			return 1;
		}
		d->file = f;
		uint64_t need = (f->file_offset + f->io_size + DM_IO_SECTOR_SIZE - 1) / DM_IO_SECTOR_SIZE;
		for (unsigned int i = 1; i < d->ndevs; i++) {
			if (dm_io_bdev_sectors(d->devs[i].bdev) < need) {
				dm_io_bdev_close(b);
				log_err("dmio: leg %s has %" PRIu64 " sectors; the job's file needs %" PRIu64 "\n",
					d->devs[i].path, (uint64_t)dm_io_bdev_sectors(d->devs[i].bdev), need);
				td_verror(td, ENOSPC, "dmio_legs");
				return 1;
			}
		}
	}
	FILE_SET_ENG_DATA(f, b);
	return 0;
}

static int dmio_close_file(struct thread_data fio_unused *td, struct fio_file *f)
{
	struct block_device *b = FILE_ENG_DATA(f);

	if (b)
		dm_io_bdev_close(b);
	FILE_SET_ENG_DATA(f, NULL);
	f->fd = -1;
	return 0;
}

/* fio has no descriptor of its own to drop caches through: nothing to do
 * for O_DIRECT, and the page cache of a buffered file stays as it is. */
static int dmio_invalidate(struct thread_data fio_unused *td, struct fio_file fio_unused *f)
{
	return 0;
}

/* fio's size check of a block device reads it through fio's descriptor,
 * which this engine does not open: ask libdmio instead. */
static int dmio_get_file_size(struct thread_data *td, struct fio_file *f)
{
	struct block_device *b;
	int ret;

	if (f->filetype != FIO_TYPE_BLOCK)
		return generic_get_file_size(td, f);
	ret = dm_io_bdev_open(f->file_name, DM_IO_BDEV_RDONLY, &b);
	if (ret) {
		log_err("dmio: cannot open %s for its size: %s\n", f->file_name, strerror(-ret));
		td_verror(td, -ret, "dm_io_bdev_open");
		return 1;
	}
	f->real_file_size = dm_io_bdev_sectors(b) * DM_IO_SECTOR_SIZE;
	dm_io_bdev_close(b);
	fio_file_set_size_known(f);
	return 0;
}

/* ---- memory: dmio_memory=pages ------------------------------------------ */

static int cmp_page_addr(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t)dm_io_page_address(*(struct page *const *)a);
	uintptr_t y = (uintptr_t)dm_io_page_address(*(struct page *const *)b);

	return x < y ? -1 : x > y;
}

/* fio wants one contiguous buffer; pages come one at a time from chunks of
 * 64 in one arena, so allocate until a run of adjacent pages is long
 * enough, and give back the others. */
static int dmio_iomem_alloc(struct thread_data *td, size_t total)
{
	struct dmio_td *d = dtd(td);
	size_t need = (total + DM_IO_PAGE_SIZE - 1) / DM_IO_PAGE_SIZE;
	size_t cap = need * 2 + 256, n = 0, k, run_start = 0, best = SIZE_MAX;
	struct page **all;

	if (d->o->memory != MEM_PAGES) {
		if (posix_memalign((void **)&td->orig_buffer, DM_IO_PAGE_SIZE, total))
			return 1;
		return 0;
	}
	all = calloc(cap, sizeof(*all));
	if (!all)
		return 1;
	while (n < cap && best == SIZE_MAX) {
		size_t batch = n ? 64 : need;

		for (k = 0; k < batch && n < cap; k++) {
			all[n] = dm_io_page_alloc();
			if (!all[n])
				break;
			n++;
		}
		qsort(all, n, sizeof(*all), cmp_page_addr);
		run_start = 0;
		for (k = 1; k <= n; k++) {
			if (k == n || (char *)dm_io_page_address(all[k]) !=
					      (char *)dm_io_page_address(all[k - 1]) + DM_IO_PAGE_SIZE) {
				if (k - run_start >= need) {
					best = run_start;
					break;
				}
				run_start = k;
			}
		}
		if (k < batch && best == SIZE_MAX && n < cap && !all[n])
			break;	/* out of pages */
	}
	if (best == SIZE_MAX) {
		for (k = 0; k < n; k++)
			dm_io_page_free(all[k]);
		free(all);
		log_err("dmio: dmio_memory=pages: no run of %zu adjacent library pages\n", need);
		return 1;
	}
	d->pages = malloc(need * sizeof(*d->pages));
	if (!d->pages) {
		for (k = 0; k < n; k++)
			dm_io_page_free(all[k]);
		free(all);
		return 1;
	}
	for (k = 0; k < n; k++) {
		if (k >= best && k < best + need)
			d->pages[k - best] = all[k];
		else
			dm_io_page_free(all[k]);
	}
	free(all);
	d->npages = need;
	d->pages_base = dm_io_page_address(d->pages[0]);
	td->orig_buffer = d->pages_base;
	return 0;
}

static void dmio_iomem_free(struct thread_data *td)
{
	struct dmio_td *d = dtd(td);

	if (!d || !d->pages) {
		free(td->orig_buffer);
		return;
	}
	for (size_t k = 0; k < d->npages; k++)
		dm_io_page_free(d->pages[k]);
	free(d->pages);
	d->pages = NULL;
	d->npages = 0;
	d->pages_base = NULL;
}

static int dmio_io_u_init(struct thread_data *td, struct io_u *io_u)
{
	struct dmio_req *r = calloc(1, sizeof(*r));

	if (!r)
		return 1;
	r->io_u = io_u;
	r->d = dtd(td);
	r->npl = (unsigned int)(td_max_bs(td) / DM_IO_PAGE_SIZE + 2);
	r->pl = calloc(r->npl, sizeof(*r->pl));
	if (!r->pl) {
		free(r);
		return 1;
	}
	io_u->engine_data = r;
	return 0;
}

static void dmio_io_u_free(struct thread_data fio_unused *td, struct io_u *io_u)
{
	struct dmio_req *r = io_u->engine_data;

	if (r) {
		free(r->pl);
		free(r);
	}
	io_u->engine_data = NULL;
}

/* ---- setup and teardown -------------------------------------------------- */

static void print_summary(struct dmio_td *d)
{
	struct dm_io_stats st;
	struct thread_data *td = d->td;

	memset(&st, 0, sizeof(st));
	if (dm_io_client_stats(d->cl, &st, sizeof(st)))
		return;
	log_info("dmio: %s: memory=%s timeout=%ums legs=%u engine=%s\n", td->o.name, mem_names[d->o->memory],
		 d->o->timeout_ms, d->ndevs - 1,
		 st.engine == DM_IO_ENGINE_URING ? "io_uring" : st.engine == DM_IO_ENGINE_THREADS ? "threads" : "?");
	log_info("dmio: %s: ios=%lu errors=%lu timeouts=%lu late=%lu degraded_writes=%lu max_ack_ms=%.3f "
		 "max_write_ack_ms=%.3f\n",
		 td->o.name, atomic_load(&d->completed), atomic_load(&d->errors), atomic_load(&d->timeouts),
		 atomic_load(&d->late), atomic_load(&d->degraded_writes), atomic_load(&d->max_ack_us) / 1000.0,
		 atomic_load(&d->max_write_ack_us) / 1000.0);
	for (unsigned int i = 1; i < d->ndevs; i++)
		if (atomic_load(&d->devs[i].out_of_sync))
			log_info("dmio: %s: leg %s is out of sync (missed a write)\n", td->o.name, d->devs[i].path);
	if (d->ndevs > 1 && atomic_load(&d->devs[0].out_of_sync))
		log_info("dmio: %s: the job's file is out of sync (missed a write)\n", td->o.name);
	log_info("dmio: %s: dm_io_client_stats: requests=%" PRIu64 " regions=%" PRIu64 " in_flight=%" PRIu64
		 " ok=%" PRIu64 " timeouts=%" PRIu64 " cancelled=%" PRIu64 " errors=%" PRIu64
		 " late_completions=%" PRIu64 " hedges=%" PRIu64 " private_bytes_in_use=%" PRIu64
		 " private_bytes_high_water=%" PRIu64 " private_bytes_bound=%" PRIu64 " memory_waits=%" PRIu64 "\n",
		 td->o.name, st.requests, st.regions, st.regions_in_flight, st.ok, st.timeouts, st.cancelled,
		 st.errors, st.late_completions, st.hedges, st.private_bytes_in_use, st.private_bytes_high_water,
		 st.private_bytes_bound, st.memory_waits);
}

static void dmio_cleanup(struct thread_data *td)
{
	struct dmio_td *d = dtd(td);

	if (!d)
		return;
	if (d->cl) {
		print_summary(d);
		dm_io_client_destroy(d->cl);
	}
	for (unsigned int i = 1; i < d->ndevs; i++) {
		if (d->devs[i].bdev)
			dm_io_bdev_close(d->devs[i].bdev);
		free(d->devs[i].path);
	}
	pthread_mutex_destroy(&d->lock);
	pthread_cond_destroy(&d->cond);
	free(d->pending);
	free(d->ring);
	free(d->events);
	free(d);
	td->io_ops_data = NULL;
}

static struct ioengine_ops ioengine;

/* The legs: PATH[@SPEC][:PATH[@SPEC]...]; each is opened read-write. */
static int open_legs(struct dmio_td *d, const char *spec)
{
	char *copy = strdup(spec), *save = NULL, *p;

	if (!copy)
		return -ENOMEM;
	for (p = strtok_r(copy, ":", &save); p; p = strtok_r(NULL, ":", &save)) {
		char *at = strchr(p, '@');
		struct dmio_dev *dev;
		int ret;

		if (!*p)
			continue;
		if (d->ndevs == DMIO_MAX_DEVS) {
			log_err("dmio: dmio_legs: at most %d legs\n", DMIO_MAX_LEGS);
			free(copy);
			return -EINVAL;
		}
		dev = &d->devs[d->ndevs];
		if (at)
			*at++ = '\0';
		dev->path = strdup(p);
		if (at && *at)
			ret = dm_io_bdev_open_faulty(p, at, &dev->bdev);
		else
			ret = dm_io_bdev_open(p, d->td->o.odirect ? 0 : DM_IO_BDEV_BUFFERED, &dev->bdev);
		if (ret) {
			log_err("dmio: dmio_legs: cannot open %s: %s (%s)\n", p, strerror(-ret), dm_io_last_error());
			free(copy);
			return ret;
		}
		d->ndevs++;
	}
	free(copy);
	return 0;
}

static int dmio_init(struct thread_data *td)
{
	struct dmio_td *d;
	unsigned long long max_bs = td_max_bs(td);
	unsigned int depth = td->o.iodepth, max_size;
	int ret;

	/* A cheap check that this engine was built against the installed
	 * fio's layout: fio's thread_data must point back at us. */
	if (td->io_ops != &ioengine || !td->eo || depth == 0 || depth > 65536 || max_bs == 0 || max_bs > (1u << 30)) {
		fprintf(stderr, "dmio: struct thread_data does not look like fio's (io_ops %p, engine %p, iodepth %u): "
				"libdmio-fio.so was built against another fio version than the one running\n",
			(void *)td->io_ops, (void *)&ioengine, depth);
		return 1;
	}
	d = calloc(1, sizeof(*d));
	if (!d)
		return 1;
	d->td = td;
	d->o = td->eo;
	d->ndevs = 1;
	d->spin_ns = (uint64_t)d->o->spin_us * 1000;
	pthread_mutex_init(&d->lock, NULL);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&d->cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	td->io_ops_data = d;
	d->pending = calloc(depth, sizeof(*d->pending));
	d->ring = calloc(depth, sizeof(*d->ring));
	d->events = calloc(depth, sizeof(*d->events));
	d->ring_size = depth;
	if (!d->pending || !d->ring || !d->events)
		goto fail;
	if (d->o->legs && *d->o->legs && open_legs(d, d->o->legs))
		goto fail;
	if (d->ndevs > 1 && td->o.nr_files > 1) {
		log_err("dmio: dmio_legs mirrors the job's one file, and this job has %u: their offsets would alias\n",
			td->o.nr_files);
		goto fail;
	}
	max_size = (unsigned int)((max_bs + DM_IO_PAGE_SIZE - 1) / DM_IO_PAGE_SIZE * DM_IO_PAGE_SIZE);
	ret = dm_io_client_create(d->ndevs, depth, max_size, &d->cl);
	if (ret) {
		log_err("dmio: dm_io_client_create(%u, %u, %u): %s (%s)\n", d->ndevs, depth, max_size, strerror(-ret),
			dm_io_last_error());
		goto fail;
	}
	/* Hedged reads of a mirror move to the next leg at the deadline
	 * (without one, only when a leg ends in ERROR). */
	if (d->ndevs > 1 && d->o->timeout_ms)
		dm_io_client_set_hedge(d->cl, d->o->timeout_ms);
	return 0;
fail:
	dmio_cleanup(td);
	return 1;
}

static struct ioengine_ops ioengine = {
	.name = "dmio",
	.version = FIO_IOOPS_VERSION,
	.flags = FIO_MEMALIGN | FIO_ASYNCIO_SETS_ISSUE_TIME,
	.init = dmio_init,
	.queue = dmio_queue,
	.commit = dmio_commit,
	.getevents = dmio_getevents,
	.event = dmio_event,
	.cleanup = dmio_cleanup,
	.open_file = dmio_open_file,
	.close_file = dmio_close_file,
	.invalidate = dmio_invalidate,
	.get_file_size = dmio_get_file_size,
	.iomem_alloc = dmio_iomem_alloc,
	.iomem_free = dmio_iomem_free,
	.io_u_init = dmio_io_u_init,
	.io_u_free = dmio_io_u_free,
	.option_struct_size = sizeof(struct dmio_options),
	.options = options,
};

DMIO_EXPORT void get_ioengine(struct ioengine_ops **ops);
void get_ioengine(struct ioengine_ops **ops)
{
	*ops = &ioengine;
}
