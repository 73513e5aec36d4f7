/*
 * dmio-mirror-shell.c: the `shell` command of dmio-mirror: commands from
 * stdin, one reply line each (see usage() in dmio-mirror.c and README.md).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "dmio-mirror.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Splits line into at most max words (in place); returns the count. */
static int split_words(char *line, char **w, int max)
{
	int n = 0;
	for (char *save = NULL, *t = strtok_r(line, " \t\r\n", &save); t; t = strtok_r(NULL, " \t\r\n", &save)) {
		if (n == max)
			return max + 1;
		w[n++] = t;
	}
	return n;
}

int cli_shell(struct mirror *m)
{
	char line[1024], orig[1024];
	int failed = 0;
	uint64_t size = mirror_size(m);
	while (fgets(line, sizeof(line), stdin)) {
		char *w[5];
		uint64_t a = 0, b = 0, c = 0;
		snprintf(orig, sizeof(orig), "%s", line);
		orig[strcspn(orig, "\n")] = 0;
		/* fault keeps the rest of the line as its spec */
		char *spec = NULL;
		if (!strncmp(line, "fault", 5) && (line[5] == ' ' || line[5] == '\t')) {
			char *p = line + 6;
			while (*p == ' ' || *p == '\t')
				p++;
			char *q = p;
			while (*q && *q != ' ' && *q != '\t' && *q != '\n')
				q++;
			spec = *q ? q + 1 : q;
			while (*spec == ' ' || *spec == '\t')
				spec++;
			spec[strcspn(spec, "\r\n")] = 0;
			if (*q)
				*q = 0;
			memmove(line + 6, p, strlen(p) + 1);
		}
		int n = split_words(line, w, 4);
		double t = cli_now_ms();
		if (n < 1 || w[0][0] == '#')
			continue;
		const char *cmd = w[0];
		int ok = 1;
		if (!strcmp(cmd, "quit") && n == 1) {
			break;
		} else if (!strcmp(cmd, "write") && n == 4 && !cli_parse_u64(w[1], 0, size, &a) &&
			   !cli_parse_u64(w[2], 1, size, &b) && !cli_parse_u64(w[3], 0, UINT64_MAX, &c)) {
			unsigned char *buf = malloc(b);
			if (!buf)
				return 1;
			cli_fill_seeded(buf, b, c, a);
			int rc = mirror_write(m, a, buf, b);
			ok = rc == 0;
			printf("write %" PRIu64 " %" PRIu64 ": %s%s (%.1f ms)\n", a, b, rc ? "ERROR " : "",
			       rc ? strerror(-rc) : "acked", cli_now_ms() - t);
			free(buf);
		} else if (!strcmp(cmd, "read") && (n == 3 || n == 4) && !cli_parse_u64(w[1], 0, size, &a) &&
			   !cli_parse_u64(w[2], 1, size, &b) && (n == 3 || !cli_parse_u64(w[3], 0, UINT64_MAX, &c))) {
			unsigned char *buf = malloc(b), *want = malloc(b);
			if (!buf || !want)
				return 1;
			int rc = mirror_read(m, a, buf, b);
			const char *what = rc ? strerror(-rc) : "OK";
			if (!rc && n == 4) {
				cli_fill_seeded(want, b, c, a);
				ok = !memcmp(buf, want, b);
				what = ok ? "matches seed" : "DIFFERS from seed";
			} else {
				ok = rc == 0;
			}
			printf("read %" PRIu64 " %" PRIu64 ": %s%s (%.1f ms)\n", a, b, ok ? "" : "ERROR ", what,
			       cli_now_ms() - t);
			free(buf);
			free(want);
		} else if (!strcmp(cmd, "fault") && n == 2 && spec && !cli_parse_u64(w[1], 0, MIRROR_MAX_LEGS - 1, &a)) {
			int rc = mirror_set_faults(m, (unsigned)a, spec);
			ok = rc == 0;
			printf("fault %" PRIu64 " '%s': %s%s\n", a, spec, rc ? "ERROR " : "", rc ? strerror(-rc) : "set");
		} else if (!strcmp(cmd, "status") && n == 1) {
			mirror_status_print(m, stdout);
			printf("end status\n");
		} else if (!strcmp(cmd, "wait-sync") && n == 2 && !cli_parse_u64(w[1], 0, INT32_MAX, &a)) {
			ok = mirror_wait_in_sync(m, (int)a);
			printf("wait-sync: %s (%.0f ms)\n", ok ? "in sync" : "ERROR NOT in sync", cli_now_ms() - t);
		} else if ((!strcmp(cmd, "pause") || !strcmp(cmd, "resume")) && n == 1) {
			mirror_resync_pause(m, cmd[0] == 'p');
			printf("resync %sd\n", cmd);
		} else if (!strcmp(cmd, "sleep") && n == 2 && !cli_parse_u64(w[1], 0, 3600000, &a)) {
			cli_sleep_ms((double)a);
			printf("slept %" PRIu64 " ms\n", a);
		} else {
			ok = 0;
			printf("ERROR unknown command: %s\n", orig);
		}
		failed |= !ok;
		fflush(stdout);
	}
	return failed ? 1 : 0;
}
