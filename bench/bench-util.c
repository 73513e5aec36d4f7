/* bench-util.c - the driver's plumbing: its options (--dev, --bs...) and
 * their parsing, die(), sleeping, CPU time and RSS, the devices' common
 * size, buffers (aligned, or library page lists) and the live progress
 * line on a terminal. */
#include "dmio-bench.h"

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

/* ---------------------------------------------------------------- utils */

void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "dmio-bench: ");
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " [libdmio: %s]\n", dm_io_last_error());
	exit(2);
}

void sleep_ns(uint64_t ns)
{
	struct timespec ts = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

double cpu_seconds(double *user, double *sys)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	*user = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6;
	*sys = (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
	return *user + *sys;
}

long rss_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kib = -1;
	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

/* -------------------------------------------------------------- options */

struct bench_opt opt = {
	.rw = "read",
	.bs = 4096,
	.qd = 32,
	.secs = 3,
	.warmup = 0.5,
	.n = 10000,
	.timeout_ms = 10,
	.hedge_ms = 2,
	.label = "",
	.seed = 0x9E3779B97F4A7C15ull,
};

void usage(void)
{
	fprintf(stderr,
		"usage: dmio-bench MODE [options]\n"
		"  rand     --dev P [--dev P..] --rw read|write --bs B --qd Q (--secs S [--warmup W] | --count N) [--span B]\n"
		"           [--zero-copy]   (DM_IO_ZERO_COPY: IO in the request's own buffer, no private memory)\n"
		"           [--pages]       (buffers are page lists of dm_io_page_alloc pages)\n"
		"  any mode: [--refuse-uring] (a seccomp filter makes io_uring_setup fail with EPERM, as the\n"
		"           default profiles of Docker and Kubernetes do: the library falls back to AIO)\n"
		"  timeouts --dev P --n N --timeout MS [--spread MS]\n"
		"  mirror   --dev GOOD --dev HUNG --qd Q --n N --timeout MS [--wait-all --secs S] [--healthy]\n"
		"  hedge    --dev A --dev B --qd Q --secs S --faults SPEC [--hedge MS | --plain] [--span B]\n"
		"  memory   --dev A --dev B --qd Q --n N [--span B]\n"
		"  memcpy   --bs B\n"
		"  clients  --n N --qd Q --bs B   (N clients created and destroyed: threads, RSS, time)\n"
		"  multi    --dev P --n N --qd Q --bs B --secs S [--warmup W] [--hung K --timeout MS [--hung-fuse]]\n"
		"           (--hung-fuse: the K clients read a loop device over a FUSE daemon that holds every\n"
		"           read, c-tests/fixtures/hungdev.h, instead of P through a fault rule; needs root)\n"
		"  alt      --dev P --n N --qd Q --bs B --secs S [--warmup W] [--phase-ms MS]\n"
		"           (N clients at QD Q against one client at QD N x Q, alternating A B B A in phases\n"
		"           of MS (200) in one process; S seconds of phases per side)\n");
	exit(2);
}

void parse(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "dev", required_argument, 0, 'd' },	{ "rw", required_argument, 0, 'r' },
		{ "bs", required_argument, 0, 'b' },	{ "qd", required_argument, 0, 'q' },
		{ "secs", required_argument, 0, 's' },	{ "warmup", required_argument, 0, 'w' },
		{ "count", required_argument, 0, 'c' }, { "span", required_argument, 0, 'S' },
		{ "n", required_argument, 0, 'n' },	{ "timeout", required_argument, 0, 't' },
		{ "spread", required_argument, 0, 'p' }, { "hedge", required_argument, 0, 'h' },
		{ "faults", required_argument, 0, 'f' }, { "wait-all", no_argument, 0, 'W' },
		{ "healthy", no_argument, 0, 'H' },	{ "plain", no_argument, 0, 'P' },
		{ "label", required_argument, 0, 'l' }, { "seed", required_argument, 0, 'e' },
		{ "zero-copy", no_argument, 0, 'Z' },	{ "pages", no_argument, 0, 'G' },
		{ "hung", required_argument, 0, 'k' },	{ "hung-fuse", no_argument, 0, 'F' },
		{ "refuse-uring", no_argument, 0, 'U' }, { "phase-ms", required_argument, 0, 'm' },
		{ 0, 0, 0, 0 },
	};
	if (argc < 2)
		usage();
	opt.mode = argv[1];
	optind = 2;
	int c;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'd':
			if (opt.ndev == MAX_LEGS)
				die("at most %d devices", MAX_LEGS);
			opt.dev[opt.ndev++] = optarg;
			break;
		case 'r': opt.rw = optarg; break;
		case 'b': opt.bs = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'q': opt.qd = (unsigned)strtoul(optarg, NULL, 0); break;
		case 's': opt.secs = strtod(optarg, NULL); break;
		case 'w': opt.warmup = strtod(optarg, NULL); break;
		case 'c': opt.count = strtoull(optarg, NULL, 0); break;
		case 'S': opt.span = strtoull(optarg, NULL, 0); break;
		case 'n': opt.n = strtoull(optarg, NULL, 0); break;
		case 't': opt.timeout_ms = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'p': opt.spread_ms = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'h': opt.hedge_ms = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'f': opt.faults = optarg; break;
		case 'W': opt.wait_all = 1; break;
		case 'H': opt.healthy = 1; break;
		case 'P': opt.plain = 1; break;
		case 'Z': opt.zero_copy = 1; break;
		case 'G': opt.pages = 1; break;
		case 'U': opt.refuse_uring = 1; break;
		case 'l': opt.label = optarg; break;
		case 'e': opt.seed = strtoull(optarg, NULL, 0); break;
		case 'k': opt.hung = (unsigned)strtoul(optarg, NULL, 0); break;
		case 'F': opt.hung_fuse = 1; break;
		case 'm': opt.phase_ms = (unsigned)strtoul(optarg, NULL, 0); break;
		default: usage();
		}
	}
	if (opt.bs == 0 || opt.bs % 512 || opt.qd == 0)
		die("--bs must be a multiple of 512, --qd at least 1");
	if (opt.refuse_uring)
		refuse_io_uring();
}

/* --refuse-uring: the seccomp filter of c-tests/engine_fallback.c, which
 * makes io_uring_setup fail with EPERM for this process, as container
 * runtimes' default profiles do. */
void refuse_io_uring(void)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { (unsigned short)(sizeof f / sizeof f[0]), f };
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
		die("--refuse-uring: seccomp: %s", strerror(errno));
	if (syscall(__NR_io_uring_setup, 8, NULL) != -1 || errno != EPERM)
		die("--refuse-uring: the filter is not active");
}

/* Blocks (of opt.bs) of the smallest device, limited by --span. */
uint64_t nblocks(struct block_device **dev, int n)
{
	uint64_t bytes = UINT64_MAX;
	for (int i = 0; i < n; i++) {
		uint64_t b = dm_io_bdev_sectors(dev[i]) * 512;
		if (b < bytes)
			bytes = b;
	}
	if (opt.span && opt.span < bytes)
		bytes = opt.span;
	if (bytes < opt.bs)
		die("devices are smaller than one block");
	return bytes / opt.bs;
}

void *xalloc(size_t bytes)
{
	void *p = NULL;
	if (posix_memalign(&p, 4096, bytes ? bytes : 1))
		die("out of memory");
	memset(p, 0, bytes);
	return p;
}

/* --pages: bytes of dm_io_page_alloc pages as a page list (*pl); returns
 * the first page's address (the pages are contiguous only when the
 * library handed them out in order, which the driver does not need). */
unsigned char *page_buffer(size_t bytes, struct dm_io_page_list **pl)
{
	size_t n = (bytes + DM_IO_PAGE_SIZE - 1) / DM_IO_PAGE_SIZE;
	struct dm_io_page_list *l = calloc(n, sizeof *l);
	if (!l)
		die("out of memory");
	for (size_t i = 0; i < n; i++) {
		if (!(l[i].page = dm_io_page_alloc()))
			die("dm_io_page_alloc failed");
		l[i].next = i + 1 < n ? &l[i + 1] : NULL;
	}
	*pl = l;
	return dm_io_page_address(l[0].page);
}

int tty;
void progress(const char *fmt, ...)
{
	if (!tty)
		return;
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "\r\033[K  %s: ", opt.label[0] ? opt.label : opt.mode);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
}

void progress_end(void)
{
	if (tty)
		fprintf(stderr, "\r\033[K");
}
