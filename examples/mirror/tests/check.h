/* Small helpers for the mirror tests: one "PASS mirror: ..." or
 * "FAIL mirror: ..." line per check, a summary at the end, temporary files,
 * patterns and cmp(1). Header-only (each test is one program). */
#ifndef MIRROR_TEST_CHECK_H
#define MIRROR_TEST_CHECK_H

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int npass, nfail;

/* Records one check; returns ok. */
__attribute__((format(printf, 2, 3))) static int check(int ok, const char *fmt, ...)
{
	va_list ap;
	printf("%s mirror: ", ok ? "PASS" : "FAIL");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	if (ok)
		npass++;
	else
		nfail++;
	return ok;
}

/* A check that cannot run here: a SKIP line, which fails under CI=true. */
__attribute__((unused)) static void skip_check(const char *what, const char *why)
{
	const char *ci = getenv("CI");
	if (ci && !strcmp(ci, "true")) {
		check(0, "%s: cannot run here under CI: %s", what, why);
	} else {
		printf("SKIP mirror: %s: %s\n", what, why);
		fflush(stdout);
	}
}

static int summary(const char *prog)
{
	printf("%s: %d passed, %d failed\n", prog, npass, nfail);
	return nfail ? 1 : 0;
}

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

__attribute__((unused)) static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static char tdir[256];
static char tfiles[64][320];
static int ntfiles;

static void tcleanup(void)
{
	for (int i = 0; i < ntfiles; i++)
		unlink(tfiles[i]);
	if (tdir[0])
		rmdir(tdir);
}

/* A new zero-filled file of `bytes` in a temporary directory on a disk
 * file system ($DMIO_TEST_DIR or /var/tmp), removed at exit. */
static const char *tfile(const char *name, size_t bytes)
{
	if (!tdir[0]) {
		const char *base = getenv("DMIO_TEST_DIR");
		snprintf(tdir, sizeof(tdir), "%s/dmio-mirror-XXXXXX", base ? base : "/var/tmp");
		if (!mkdtemp(tdir)) {
			perror("mkdtemp");
			exit(1);
		}
		atexit(tcleanup);
	}
	if (ntfiles == (int)(sizeof(tfiles) / sizeof(tfiles[0]))) {
		fprintf(stderr, "tfile: more than %d files: raise tfiles[]\n", ntfiles);
		exit(1);
	}
	char *p = tfiles[ntfiles++];
	snprintf(p, sizeof(tfiles[0]), "%s/%s", tdir, name);
	int fd = open(p, O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0 || ftruncate(fd, (off_t)bytes) != 0) {
		perror(p);
		exit(1);
	}
	close(fd);
	return p;
}

static void fill(void *buf, size_t len, unsigned seed)
{
	unsigned char *b = buf;
	uint32_t x = seed * 2654435761u + 1;
	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		b[i] = (unsigned char)x;
	}
}

/* Drops the page cache of a file or block device (so that cmp and
 * read_leg see what is on the device after O_DIRECT writes). */
static void drop_cache(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		fdatasync(fd);
		posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
		close(fd);
	}
}

/* pread of a leg, bypassing the mirror. */
__attribute__((unused)) static int read_leg(const char *path, uint64_t off, void *buf, size_t len)
{
	drop_cache(path);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t r = pread(fd, buf, len, (off_t)off);
	close(fd);
	return r == (ssize_t)len ? 0 : -EIO;
}

/* cmp -n bytes a b: 1 when the first `bytes` bytes are identical. */
static int cmp_legs(const char *a, const char *b, uint64_t bytes)
{
	char n[32];
	snprintf(n, sizeof(n), "%llu", (unsigned long long)bytes);
	drop_cache(a);
	drop_cache(b);
	pid_t pid = fork();
	if (pid == 0) {
		int nul = open("/dev/null", O_WRONLY);
		if (nul >= 0)
			dup2(nul, 1);
		execlp("cmp", "cmp", "-n", n, a, b, (char *)NULL);
		_exit(127);
	}
	int st = 0;
	if (pid < 0 || waitpid(pid, &st, 0) != pid)
		return 0;
	return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

#endif
