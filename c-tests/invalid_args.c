/* Every invalid argument is refused with its documented errno, without
 * writing the out-parameters, and leaves a message in dm_io_last_error():
 * dm_io (NULL/unknown pointers, region counts and ranges, rw/flags bits,
 * memory descriptors, missing notify, closed or read-only devices),
 * dm_io_client_create, dm_io_bdev_open*, the cancel calls, handle get/put
 * and dm_io_page_free of garbage (NULL / ignored, no crash), and
 * dm_io_bdev_set_faults with bad specs. */
#include "helpers.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

enum { BYTES = 8192, S = BYTES / 512 };

static struct dm_io_client *cl;
static struct block_device *dev, *rodev, *closed;
static struct page *pg[2];
static unsigned char buf[BYTES];
static unsigned char foreign[4096] __attribute__((aligned(4096)));
static struct bio_vec bv_short[2], bv_foreign[2], bv_overrun[3];
static struct dm_io_page_list pl_short[1], pl_foreign[2];
static int failures;
static char primed[256];

/* Leaves a known message, so a later check proves the call set its own. */
static void prime(void)
{
	dm_io_bdev_is_direct(NULL);
	snprintf(primed, sizeof(primed), "%s", dm_io_last_error());
}

static void expect_msg(const char *what)
{
	const char *m = dm_io_last_error();
	if (!m || !m[0] || strcmp(m, primed) == 0) {
		fprintf(stderr, "FAIL %s: no message of its own in dm_io_last_error() ('%s')\n", what,
			m ? m : "(null)");
		failures++;
	}
}

static void expect_rc(const char *what, int rc, int want)
{
	if (rc != want) {
		fprintf(stderr, "FAIL %s: returned %d, expected %d (%s)\n", what, rc, want,
			dm_io_last_error());
		failures++;
		return;
	}
	if (want < 0)
		expect_msg(what);
}

struct call {
	struct dm_io_control c;
	struct dm_io_control *cp;
	struct dm_io_region r[4];
	struct dm_io_region *rp;
	unsigned n;
};

typedef void (*mod_fn)(struct call *);

static void m_null_ctrl(struct call *k) { k->cp = NULL; }
static void m_null_regions(struct call *k) { k->rp = NULL; }
static void m_zero_regions(struct call *k) { k->n = 0; }
static void m_too_many(struct call *k) { k->n = 3; }
static void m_read_two(struct call *k) { k->c.rw = DM_IO_READ | DM_IO_SYNC; k->n = 2; }
static void m_count0(struct call *k) { k->r[0].count = 0; }
static void m_count0_read(struct call *k) { k->c.rw = DM_IO_READ | DM_IO_SYNC; k->r[0].count = 0; }
static void m_beyond(struct call *k) { k->r[0].sector = dm_io_bdev_sectors(dev); }
static void m_past_end(struct call *k) { k->r[0].sector = dm_io_bdev_sectors(dev) - 8; }
static void m_overflow(struct call *k) { k->r[0].sector = UINT64_MAX - 1; }
static void m_count_overflow(struct call *k) { k->r[0].count = UINT64_MAX / 256; }
static void m_unaligned(struct call *k) { k->r[0].sector = 1; }
static void m_rw_bits(struct call *k) { k->c.rw |= 0x1000; }
static void m_flags_bits(struct call *k) { k->c.flags = 8; }
static void m_flush_read(struct call *k) { k->c.rw = DM_IO_READ | DM_IO_SYNC | DM_IO_FLUSH; }
static void m_fua_read(struct call *k) { k->c.rw = DM_IO_READ | DM_IO_SYNC | DM_IO_FUA; }
static void m_mem_type(struct call *k) { k->c.memory.type = 7; }
static void m_mem_type_neg(struct call *k) { k->c.memory.type = -1; }
static void m_null_vma(struct call *k) { k->c.memory.ptr.vma = NULL; }
static void m_bv_foreign(struct call *k) { k->c.memory.type = DM_IO_BVEC; k->c.memory.ptr.bv = bv_foreign; }
static void m_bv_null(struct call *k) { k->c.memory.type = DM_IO_BVEC; k->c.memory.ptr.bv = NULL; }
static void m_bv_short(struct call *k) { k->c.memory.type = DM_IO_BVEC; k->c.memory.ptr.bv = bv_short; }
static void m_bv_short_off(struct call *k)
{
	k->c.memory.type = DM_IO_BVEC;
	k->c.memory.ptr.bv = bv_overrun; /* 8192 bytes of data, but offset 1 */
	k->c.memory.offset = 1;
}
static void m_pl_short(struct call *k) { k->c.memory.type = DM_IO_PAGE_LIST; k->c.memory.ptr.pl = pl_short; }
static void m_pl_null(struct call *k) { k->c.memory.type = DM_IO_PAGE_LIST; k->c.memory.ptr.pl = NULL; }
static void m_pl_foreign(struct call *k) { k->c.memory.type = DM_IO_PAGE_LIST; k->c.memory.ptr.pl = pl_foreign; }
static void m_pl_offset(struct call *k)
{
	k->c.memory.type = DM_IO_PAGE_LIST;
	k->c.memory.ptr.pl = pl_foreign + 1; /* one valid page... */
	k->c.memory.offset = 4096;           /* ...entirely skipped */
	k->r[0].count = 8;
}
static void m_async_no_notify(struct call *k) { k->c.rw = DM_IO_WRITE; }
static void m_null_client(struct call *k) { k->c.client = NULL; }
static void m_fake_client(struct call *k) { k->c.client = (struct dm_io_client *)(uintptr_t)0xdeadbeefUL; }
static void m_stack_client(struct call *k) { k->c.client = (struct dm_io_client *)(void *)k; }
static void m_closed_bdev(struct call *k) { k->r[0].bdev = closed; }
static void m_null_bdev(struct call *k) { k->r[0].bdev = NULL; }
static void m_fake_bdev(struct call *k) { k->r[1].bdev = (struct block_device *)(uintptr_t)0xfeedf00dUL; k->n = 2; }
static void m_rdonly_write(struct call *k) { k->r[0].bdev = rodev; }
static void m_rdonly_mirror(struct call *k) { k->r[1].bdev = rodev; k->n = 2; }

static const struct {
	const char *name;
	mod_fn mod;
	int want;
} cases[] = {
	{ "NULL ctrl", m_null_ctrl, -EINVAL },
	{ "NULL regions", m_null_regions, -EINVAL },
	{ "num_regions 0", m_zero_regions, -EINVAL },
	{ "num_regions > client devices", m_too_many, -EINVAL },
	{ "read with 2 regions", m_read_two, -EINVAL },
	{ "count 0 write without FLUSH", m_count0, -EINVAL },
	{ "count 0 read", m_count0_read, -EINVAL },
	{ "sector at the device end", m_beyond, -EINVAL },
	{ "region past the device end", m_past_end, -EINVAL },
	{ "sector + count overflows", m_overflow, -EINVAL },
	{ "count * 512 overflows", m_count_overflow, -EINVAL },
	{ "unknown rw bits (0x1000)", m_rw_bits, -EINVAL },
	{ "unknown flags bits (8)", m_flags_bits, -EINVAL },
	{ "FLUSH on a read", m_flush_read, -EINVAL },
	{ "FUA on a read", m_fua_read, -EINVAL },
	{ "unknown memory type 7", m_mem_type, -EINVAL },
	{ "unknown memory type -1", m_mem_type_neg, -EINVAL },
	{ "NULL vma", m_null_vma, -EINVAL },
	{ "bio_vec page not from dm_io_page_alloc", m_bv_foreign, -EINVAL },
	{ "NULL bio_vec array", m_bv_null, -EINVAL },
	{ "bio_vec array too short", m_bv_short, -EINVAL },
	{ "bio_vec array too short after offset", m_bv_short_off, -EINVAL },
	{ "page list too short", m_pl_short, -EINVAL },
	{ "NULL page list", m_pl_null, -EINVAL },
	{ "page list page not from dm_io_page_alloc", m_pl_foreign, -EINVAL },
	{ "page list offset past its last page", m_pl_offset, -EINVAL },
	{ "async without notify", m_async_no_notify, -EINVAL },
	{ "NULL client", m_null_client, -EINVAL },
	{ "made-up client pointer", m_fake_client, -EINVAL },
	{ "stack address as client", m_stack_client, -EINVAL },
	{ "closed bdev in a region", m_closed_bdev, -EINVAL },
	{ "NULL bdev in a region", m_null_bdev, -EINVAL },
	{ "made-up bdev in region 1", m_fake_bdev, -EINVAL },
	{ "write to a read-only device", m_rdonly_write, -EBADF },
	{ "mirror write with a read-only leg", m_rdonly_mirror, -EBADF },
};

static void dm_io_cases(void)
{
	static unsigned char sentinel_target;
	struct dm_io_handle *const sentinel = (struct dm_io_handle *)(void *)&sentinel_target;
	unsigned bs = dm_io_bdev_block_size(dev);
	for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct call k;
		memset(&k, 0, sizeof(k));
		k.c = make_ctrl(cl, DM_IO_WRITE | DM_IO_SYNC, vm_mem(buf, 0), NULL, NULL);
		k.cp = &k.c;
		k.r[0] = (struct dm_io_region){ dev, 8, S };
		k.r[1] = (struct dm_io_region){ dev, 64, S };
		k.r[2] = (struct dm_io_region){ dev, 128, S };
		k.rp = k.r;
		k.n = 1;
		cases[i].mod(&k);
		struct dm_io_handle *h = sentinel;
		prime();
		int rc = dm_io(k.cp, k.n, k.rp, &h);
		expect_rc(cases[i].name, rc, cases[i].want);
		if (h != sentinel) {
			fprintf(stderr, "FAIL %s: *hdl written on failure\n", cases[i].name);
			failures++;
		}
	}
	/* Misaligned sector: only meaningful when blocks are above 512 bytes. */
	if (bs > 512) {
		struct call k;
		memset(&k, 0, sizeof(k));
		k.c = make_ctrl(cl, DM_IO_WRITE | DM_IO_SYNC, vm_mem(buf, 0), NULL, NULL);
		k.r[0] = (struct dm_io_region){ dev, 8, S };
		m_unaligned(&k);
		prime();
		expect_rc("sector not aligned to the block size", dm_io(&k.c, 1, k.r, NULL), -EINVAL);
	}
	/* Sanity: the base request is valid; reading a read-only device works. */
	struct dm_io_region r = { dev, 8, S };
	struct dm_io_control c = make_ctrl(cl, DM_IO_WRITE | DM_IO_SYNC, vm_mem(buf, 0), NULL, NULL);
	expect_rc("valid base request", dm_io(&c, 1, &r, NULL), 0);
	expect_rc("read from a read-only device", sync_io(cl, DM_IO_READ, rodev, 8, S, buf, 0), 0);
}

static void create_cases(void)
{
	static unsigned char sentinel_target;
	struct dm_io_client *const sentinel = (struct dm_io_client *)(void *)&sentinel_target;
	static const struct {
		const char *name;
		unsigned d, m, s;
		int want;
	} cc[] = {
		{ "client devices 0", 0, 1, 4096, -EINVAL },
		{ "client min_ios 0", 1, 0, 4096, -EINVAL },
		{ "client max_size 0", 1, 1, 0, -EINVAL },
		{ "client devices 100000", 100000, 1, 4096, -EINVAL },
		{ "client devices 1025", 1025, 1, 4096, -EINVAL },
		{ "client memory above RAM", 1024, 1000000, 1 << 20, -ENOMEM },
	};
	for (unsigned i = 0; i < sizeof(cc) / sizeof(cc[0]); i++) {
		struct dm_io_client *out = sentinel;
		prime();
		expect_rc(cc[i].name, dm_io_client_create(cc[i].d, cc[i].m, cc[i].s, &out), cc[i].want);
		if (out != sentinel) {
			fprintf(stderr, "FAIL %s: *cl written on failure\n", cc[i].name);
			failures++;
		}
	}
	prime();
	expect_rc("client NULL cl", dm_io_client_create(1, 1, 4096, NULL), -EINVAL);
}

static void open_cases(const char *good_path)
{
	static unsigned char sentinel_target;
	struct block_device *const sentinel = (struct block_device *)(void *)&sentinel_target;
	struct block_device *b = sentinel;
	char missing[400];
	snprintf(missing, sizeof(missing), "%s/does-not-exist", test_dir());

	prime();
	expect_rc("open NULL path", dm_io_bdev_open(NULL, 0, &b), -EINVAL);
	prime();
	expect_rc("open nonexistent", dm_io_bdev_open(missing, 0, &b), -ENOENT);
	prime();
	expect_rc("open /dev/null", dm_io_bdev_open("/dev/null", 0, &b), -ENOTBLK);
	prime();
	expect_rc("open unknown flag", dm_io_bdev_open(good_path, 4, &b), -EINVAL);
	prime();
	expect_rc("open NULL out", dm_io_bdev_open(good_path, 0, NULL), -EINVAL);
	prime();
	expect_rc("open_fd -1", dm_io_bdev_open_fd(-1, 0, &b), -EBADF);
	prime();
	expect_rc("open_faulty bad spec", dm_io_bdev_open_faulty(good_path, "explode", &b), -EINVAL);
	prime();
	expect_rc("open_faulty NULL spec", dm_io_bdev_open_faulty(good_path, NULL, &b), -EINVAL);
	if (b != sentinel) {
		fprintf(stderr, "FAIL open: *bdev written on failure\n");
		failures++;
	}
	/* Queries on unknown handles. */
	prime();
	if (dm_io_bdev_sectors(closed) != 0 || dm_io_bdev_block_size(closed) != 0) {
		fprintf(stderr, "FAIL sectors/block_size of a closed device are not 0\n");
		failures++;
	}
	dm_io_bdev_sectors(NULL);
	expect_msg("dm_io_bdev_sectors(NULL)");
	dm_io_client_create(0, 0, 0, NULL); /* another message, to see is_direct's own */
	snprintf(primed, sizeof(primed), "%s", dm_io_last_error());
	expect_rc("is_direct of a closed device", dm_io_bdev_is_direct(closed), -EINVAL);
	dm_io_bdev_close(NULL);   /* ignored */
	dm_io_bdev_close(closed); /* already closed: ignored */
	dm_io_client_destroy(NULL);
}

static void fault_cases(void)
{
	static const char *bad[] = {
		"delay", "delay read=5parsecs", "error errno=EWHAT", "error sectors=9-3",
		"hang sometimes", "explode", "flakey up=1s", "error errno=0", "delay 10 years",
	};
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char what[80];
		snprintf(what, sizeof(what), "set_faults '%s'", bad[i]);
		prime();
		expect_rc(what, dm_io_bdev_set_faults(dev, bad[i]), -EINVAL);
	}
	prime();
	expect_rc("set_faults NULL spec", dm_io_bdev_set_faults(dev, NULL), -EINVAL);
	prime();
	expect_rc("set_faults closed device", dm_io_bdev_set_faults(closed, ""), -EINVAL);
	prime();
	expect_rc("set_faults NULL device", dm_io_bdev_set_faults(NULL, ""), -EINVAL);
	expect_rc("set_faults none", dm_io_bdev_set_faults(dev, "none"), 0);
}

static void handle_cases(void)
{
	int local;
	void *garbage[] = { NULL, (void *)1, (void *)(uintptr_t)0xdeadbeefUL, &local, buf,
			    (void *)(uintptr_t)UINTPTR_MAX };
	for (unsigned i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
		prime();
		if (dm_io_handle_get(garbage[i]) != NULL || dm_io_handle_put(garbage[i]) != NULL) {
			fprintf(stderr, "FAIL handle get/put of garbage %p did not return NULL\n",
				garbage[i]);
			failures++;
		}
		expect_msg("handle get/put of garbage");
	}

	/* A handle of another client. */
	struct dm_io_client *other = make_client(1, 1, 4096);
	struct block_device *hung = make_faulty_dev("hung", 1 << 20, "hang", NULL);
	struct tracker t;
	tracker_init(&t, 1);
	struct dm_io_region r = { hung, 8, 8 };
	struct dm_io_control c = make_ctrl(other, DM_IO_WRITE, vm_mem(buf, 0), tracker_notify, &t);
	struct dm_io_handle *h = NULL;
	expect_rc("submit on the other client", dm_io(&c, 1, &r, &h), 0);
	prime();
	expect_rc("cancel_by_handle with another client's handle", dm_io_cancel_by_handle(cl, h),
		  -EINVAL);
	if (tracker_finals(&t) != 0) {
		fprintf(stderr, "FAIL cancel with the wrong client ended the request\n");
		failures++;
	}
	prime();
	expect_rc("cancel_by_handle NULL handle", dm_io_cancel_by_handle(cl, NULL), -EINVAL);
	prime();
	expect_rc("cancel_by_handle garbage handle",
		  dm_io_cancel_by_handle(cl, (struct dm_io_handle *)(void *)&local), -EINVAL);
	prime();
	expect_rc("cancel_by_handle NULL client", dm_io_cancel_by_handle(NULL, h), -EINVAL);
	prime();
	expect_rc("cancel_by_device NULL device", dm_io_cancel_by_device(cl, NULL), -EINVAL);
	prime();
	expect_rc("cancel_by_device closed device", dm_io_cancel_by_device(cl, closed), -EINVAL);
	prime();
	expect_rc("cancel_by_device NULL client", dm_io_cancel_by_device(NULL, hung), -EINVAL);
	expect_rc("cancel_by_handle with the right client", dm_io_cancel_by_handle(other, h), 1);
	CHECK(tracker_wait(&t, 2000), "cancelled request not notified");
	CHECK(dm_io_handle_put(h) == NULL, "put");
	dm_io_client_destroy(other);
	CHECK_OK(dm_io_bdev_set_faults(hung, ""));
	dm_io_bdev_close(hung);
}

static void page_cases(void)
{
	struct page *p = dm_io_page_alloc();
	CHECK(p && dm_io_page_address(p), "dm_io_page_alloc");
	CHECK(((uintptr_t)dm_io_page_address(p) % DM_IO_PAGE_SIZE) == 0, "page not aligned");
	prime();
	dm_io_page_free((struct page *)(void *)foreign); /* not a page: ignored */
	expect_msg("dm_io_page_free of a non-page");
	foreign[0] = 1; /* still ours */
	dm_io_page_free(p);
	prime();
	dm_io_page_free(p); /* double free: ignored */
	expect_msg("dm_io_page_free twice");
	dm_io_page_free(NULL);
	CHECK(dm_io_page_address(NULL) == NULL, "dm_io_page_address(NULL)");
}

int main(void)
{
	const char *path = make_file("dev", 1 << 20);
	CHECK_OK(dm_io_bdev_open(path, 0, &dev));
	check_block_size(dev);
	CHECK_OK(dm_io_bdev_open(make_file("ro", 1 << 20), DM_IO_BDEV_RDONLY, &rodev));
	CHECK_OK(dm_io_bdev_open(make_file("closed", 1 << 20), 0, &closed));
	dm_io_bdev_close(closed);
	cl = make_client(2, 2, 4096);
	for (int i = 0; i < 2; i++)
		CHECK((pg[i] = dm_io_page_alloc()) != NULL, "dm_io_page_alloc");
	bv_short[0] = (struct bio_vec){ pg[0], 4096, 0 };
	bv_short[1] = (struct bio_vec){ NULL, 0, 0 };
	bv_foreign[0] = (struct bio_vec){ (struct page *)(void *)foreign, 4096, 0 };
	bv_foreign[1] = (struct bio_vec){ pg[0], 4096, 0 };
	bv_overrun[0] = (struct bio_vec){ pg[0], 4096, 0 };
	bv_overrun[1] = (struct bio_vec){ pg[1], 4096, 0 };
	bv_overrun[2] = (struct bio_vec){ NULL, 0, 0 };
	pl_short[0] = (struct dm_io_page_list){ NULL, pg[0] };
	pl_foreign[0] = (struct dm_io_page_list){ &pl_foreign[1], (struct page *)(void *)foreign };
	pl_foreign[1] = (struct dm_io_page_list){ NULL, pg[1] };

	dm_io_cases();
	create_cases();
	open_cases(path);
	fault_cases();
	handle_cases();
	page_cases();

	dm_io_client_destroy(cl);
	dm_io_bdev_close(dev);
	dm_io_bdev_close(rodev);
	for (int i = 0; i < 2; i++)
		dm_io_page_free(pg[i]);
	CHECK(failures == 0, "%d invalid-argument checks failed (see above)", failures);
	return 0;
}
