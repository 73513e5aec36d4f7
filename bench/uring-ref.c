/* uring-ref: a bare io_uring read loop with libdmio's system-call pattern,
 * the reference that splits a libdmio/fio gap into its parts (bench/README.md).
 *
 * Random O_DIRECT reads at a constant queue depth, on one thread, the way
 * libdmio's completion thread drives its own ring: registered buffers (the
 * private memory), a ring with COOP_TASKRUN | SINGLE_ISSUER | DEFER_TASKRUN,
 * sleep until at least one completion, take every completion there is, and
 * for each one start the next read at once (one io_uring_enter each; the
 * last one joins the next wait).
 *
 * With --copy, each completed read is copied once from its registered
 * buffer into a second buffer before the next read starts: the one copy
 * libdmio's bounce memory costs per read. Without it the loop is as
 * zero-copy as fio. libdmio/this-with-copy is then what the library itself
 * costs, and this-with-copy/this-without is what the copy costs. The copy
 * is libdmio's own (src/memory/copy.rs): 32-byte AVX2 loads and stores
 * (16-byte SSE2 without AVX2), not glibc's memcpy, whose rep movsb runs at
 * half speed in some processes on the benchmark's AMD EPYC.
 *
 * With --rw write and one --dev per leg, it writes mirror requests: each
 * request writes one buffer to every leg at the same offset, and its buffer
 * starts the next request only when every leg's write has completed, as a
 * mirror (and libdmio's resubmit-from-notify loop) must. --independent
 * instead restarts every write on its own completion, round-robin over the
 * legs, as fio does with the same number of writes in flight (queue depth x
 * legs). mirror/independent is what waiting for every leg costs;
 * libdmio/mirror is what the library costs beyond that. With --copy, each
 * request's data is first copied into its registered buffer.
 *
 * One JSON object on stdout, like dmio-bench.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <liburing.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* The bounce copy as libdmio does it (src/memory/copy.rs). */
#if defined(__x86_64__)
__attribute__((target("avx2"))) static void copy_avx2(unsigned char *d, const unsigned char *s, size_t n)
{
	size_t i = 0;
	for (; i + 128 <= n; i += 128) {
		__m256i a = _mm256_loadu_si256((const __m256i *)(s + i));
		__m256i b = _mm256_loadu_si256((const __m256i *)(s + i + 32));
		__m256i c = _mm256_loadu_si256((const __m256i *)(s + i + 64));
		__m256i e = _mm256_loadu_si256((const __m256i *)(s + i + 96));
		_mm256_storeu_si256((__m256i *)(d + i), a);
		_mm256_storeu_si256((__m256i *)(d + i + 32), b);
		_mm256_storeu_si256((__m256i *)(d + i + 64), c);
		_mm256_storeu_si256((__m256i *)(d + i + 96), e);
	}
	memcpy(d + i, s + i, n - i);
}

static void copy_sse2(unsigned char *d, const unsigned char *s, size_t n)
{
	size_t i = 0;
	for (; i + 64 <= n; i += 64) {
		__m128i a = _mm_loadu_si128((const __m128i *)(s + i));
		__m128i b = _mm_loadu_si128((const __m128i *)(s + i + 16));
		__m128i c = _mm_loadu_si128((const __m128i *)(s + i + 32));
		__m128i e = _mm_loadu_si128((const __m128i *)(s + i + 48));
		_mm_storeu_si128((__m128i *)(d + i), a);
		_mm_storeu_si128((__m128i *)(d + i + 16), b);
		_mm_storeu_si128((__m128i *)(d + i + 32), c);
		_mm_storeu_si128((__m128i *)(d + i + 48), e);
	}
	memcpy(d + i, s + i, n - i);
}

static void bounce_copy(unsigned char *d, const unsigned char *s, size_t n)
{
	static int avx2 = -1;
	if (n < 1024) {
		memcpy(d, s, n);
		return;
	}
	if (avx2 < 0)
		avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
	if (avx2)
		copy_avx2(d, s, n);
	else
		copy_sse2(d, s, n);
}
#else
static void bounce_copy(unsigned char *d, const unsigned char *s, size_t n)
{
	memcpy(d, s, n);
}
#endif

static void die(const char *what, int err)
{
	fprintf(stderr, "uring-ref: %s: %s\n", what, strerror(err));
	exit(2);
}

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static double cpu_seconds(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
	       ru.ru_stime.tv_usec / 1e6;
}

/* xorshift64*, as in dmio-bench. */
static uint64_t rnd(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 0x2545F4914F6CDD1Dull;
}

#define MAX_LEGS 8

static struct {
	const char *dev[MAX_LEGS];
	unsigned ndev, bs, qd;
	double secs, warmup;
	uint64_t span;
	int copy, write, independent;
} opt = { .bs = 4096, .qd = 32, .secs = 3, .warmup = 0.5 };

static struct io_uring ring;
static unsigned char *priv, *dst;
static uint64_t blocks, rng = 0x9E3779B97F4A7C15ull;
static int fd[MAX_LEGS];
/* Per slot: legs still running (mirror writes); next leg (independent writes). */
static unsigned left[4096], next_leg;

static struct io_uring_sqe *sqe(void)
{
	struct io_uring_sqe *s = io_uring_get_sqe(&ring);
	if (!s)
		die("io_uring_get_sqe", EBUSY);
	return s;
}

/* Starts the next request on buffer `slot`: a read, a mirror write to every
 * leg, or one independent write to the next leg. */
static void queue_req(unsigned slot)
{
	unsigned char *buf = priv + (size_t)slot * opt.bs;
	uint64_t off = (rnd(&rng) % blocks) * opt.bs;
	if (!opt.write) {
		struct io_uring_sqe *s = sqe();
		io_uring_prep_read_fixed(s, fd[0], buf, opt.bs, off, 0);
		io_uring_sqe_set_data64(s, slot);
		return;
	}
	if (opt.copy)
		bounce_copy(buf, dst + (size_t)slot * opt.bs, opt.bs);
	unsigned first = opt.independent ? next_leg++ % opt.ndev : 0;
	unsigned legs = opt.independent ? 1 : opt.ndev;
	left[slot] = legs;
	for (unsigned l = first; l < first + legs; l++) {
		struct io_uring_sqe *s = sqe();
		io_uring_prep_write_fixed(s, fd[l], buf, opt.bs, off, 0);
		io_uring_sqe_set_data64(s, slot);
	}
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "dev", required_argument, 0, 'd' },	 { "bs", required_argument, 0, 'b' },
		{ "qd", required_argument, 0, 'q' },	 { "secs", required_argument, 0, 's' },
		{ "warmup", required_argument, 0, 'w' }, { "span", required_argument, 0, 'p' },
		{ "copy", no_argument, 0, 'c' },	 { "rw", required_argument, 0, 'r' },
		{ "independent", no_argument, 0, 'i' },	 { 0, 0, 0, 0 }
	};
	for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
		switch (c) {
		case 'd':
			if (opt.ndev == MAX_LEGS)
				die("too many --dev", E2BIG);
			opt.dev[opt.ndev++] = optarg;
			break;
		case 'b': opt.bs = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'q': opt.qd = (unsigned)strtoul(optarg, NULL, 0); break;
		case 's': opt.secs = atof(optarg); break;
		case 'w': opt.warmup = atof(optarg); break;
		case 'p': opt.span = strtoull(optarg, NULL, 0); break;
		case 'c': opt.copy = 1; break;
		case 'r':
			if (strcmp(optarg, "read") && strcmp(optarg, "write"))
				die("--rw must be read or write", EINVAL);
			opt.write = !strcmp(optarg, "write");
			break;
		case 'i': opt.independent = 1; break;
		default:
			fprintf(stderr, "usage: uring-ref --dev P [--dev P2 ...] [--rw read|write] "
					"[--independent] [--bs B] [--qd Q] [--secs S] [--warmup W] "
					"[--span B] [--copy]\n");
			return 2;
		}
	}
	if (!opt.ndev || (opt.ndev > 1 && !opt.write) || opt.bs == 0 || opt.bs % 512 || opt.qd == 0 ||
	    opt.qd > 1024)
		die("arguments", EINVAL);
	/* Independent writes keep as many writes in flight as the mirror does. */
	unsigned nbuf = opt.independent ? opt.qd * opt.ndev : opt.qd;
	if (nbuf > 4096)
		die("arguments", EINVAL);
	off_t size = 0;
	for (unsigned l = 0; l < opt.ndev; l++) {
		fd[l] = open(opt.dev[l], (opt.write ? O_RDWR : O_RDONLY) | O_DIRECT);
		if (fd[l] < 0)
			die(opt.dev[l], errno);
		off_t sz = lseek(fd[l], 0, SEEK_END);
		if (sz <= 0)
			die("device size", sz < 0 ? errno : EINVAL);
		size = l == 0 || sz < size ? sz : size;
	}
	if (opt.span && opt.span < (uint64_t)size)
		size = (off_t)opt.span;
	blocks = (uint64_t)size / opt.bs;
	if (blocks == 0)
		die("device smaller than one block", EINVAL);

	struct io_uring_params p = { .flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
					      IORING_SETUP_DEFER_TASKRUN };
	unsigned entries = opt.qd * opt.ndev * 2;
	int rc = io_uring_queue_init_params(entries, &ring, &p);
	if (rc == -EINVAL) /* a kernel before 6.1: a plain ring, as libdmio falls back to */
		rc = io_uring_queue_init(entries, &ring, 0);
	if (rc)
		die("io_uring_queue_init", -rc);
	size_t len = (size_t)opt.bs * nbuf;
	if (posix_memalign((void **)&priv, 4096, len) || posix_memalign((void **)&dst, 4096, len))
		die("posix_memalign", ENOMEM);
	memset(priv, 0, len);
	memset(dst, 0x5A, len);
	struct iovec iov = { priv, len };
	if ((rc = io_uring_register_buffers(&ring, &iov, 1)))
		die("io_uring_register_buffers", -rc);

	for (unsigned i = 0; i < nbuf; i++)
		queue_req(i);
	/* n: requests done (reads, mirror writes, or single writes). */
	uint64_t t_start = now_ns(), t0 = 0, n = 0, n0 = 0;
	uint64_t warm = t_start + (uint64_t)(opt.warmup * 1e9);
	uint64_t end = warm + (uint64_t)(opt.secs * 1e9);
	double c0 = 0;
	unsigned slots[4096];
	for (;;) {
		if ((rc = io_uring_submit_and_wait(&ring, 1)) < 0 && rc != -EINTR)
			die("io_uring_submit_and_wait", -rc);
		struct io_uring_cqe *cqe;
		unsigned head, got = 0, seen = 0;
		io_uring_for_each_cqe(&ring, head, cqe)
		{
			if (cqe->res != (int)opt.bs)
				die(opt.write ? "write" : "read", cqe->res < 0 ? -cqe->res : EIO);
			seen++;
			unsigned slot = (unsigned)cqe->user_data;
			if (!opt.write || --left[slot] == 0)
				slots[got++] = slot;
		}
		io_uring_cq_advance(&ring, seen);
		for (unsigned k = 0; k < got; k++) {
			size_t off = (size_t)slots[k] * opt.bs;
			if (opt.copy && !opt.write)
				bounce_copy(dst + off, priv + off, opt.bs);
			queue_req(slots[k]);
			if (k + 1 < got)
				io_uring_submit(&ring);
		}
		n += got;
		uint64_t t = now_ns();
		if (!t0 && t >= warm) {
			t0 = t;
			n0 = n;
			c0 = cpu_seconds();
		}
		if (t >= end)
			break;
	}
	double secs = (double)(now_ns() - t0) / 1e9, cpu = cpu_seconds() - c0;
	double ios = (double)(n - n0);
	unsigned per_req = opt.write && !opt.independent ? opt.ndev : 1;
	printf("{\"tool\": \"uring-ref\", \"rw\": \"%s\", \"legs\": %u, \"independent\": %d, "
	       "\"copy\": %d, \"bs\": %u, \"qd\": %u, \"iops\": %.1f, \"regions_per_s\": %.1f, "
	       "\"cpu\": {\"us_per_request\": %.4f}}\n",
	       opt.write ? "write" : "read", opt.ndev, opt.independent, opt.copy, opt.bs, opt.qd,
	       ios / secs, ios * per_req / secs, ios ? cpu * 1e6 / ios : 0.0);
	return 0;
}
