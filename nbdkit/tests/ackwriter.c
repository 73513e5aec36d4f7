/*
 * ackwriter: an NBD client (libdmio's own code plays no part in it) that
 * writes self-checking blocks (examples/mirror/block.h) at random offsets
 * and appends "SEQ OFFSET" to an acknowledgement log after each write the
 * server acknowledged, so that `dmio-mirror --ack-log LOG check LEGS...`
 * can prove every acknowledged write survived a crash of the server.
 *
 *   ackwriter URI ACKLOG SPAN_BYTES SECONDS
 *
 * Ends after SECONDS, or at the first failed write (the server was killed):
 * exit 0 if at least one write was acknowledged.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <inttypes.h>
#include <libnbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "block.h"

#define BS 4096

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: ackwriter URI ACKLOG SPAN_BYTES SECONDS\n");
		return 2;
	}
	uint64_t span = strtoull(argv[3], NULL, 10) / BS;
	double secs = strtod(argv[4], NULL);
	FILE *ack = fopen(argv[2], "a");
	struct nbd_handle *h = nbd_create();
	if (!ack || !h || span == 0) {
		perror("ackwriter");
		return 2;
	}
	if (nbd_connect_uri(h, argv[1]) == -1) {
		fprintf(stderr, "ackwriter: %s\n", nbd_get_error());
		return 2;
	}
	struct timespec rt;
	clock_gettime(CLOCK_REALTIME, &rt);
	uint64_t base = (uint64_t)rt.tv_sec * 1000000ULL + (uint64_t)rt.tv_nsec / 1000, n = 0, rng = base;
	unsigned char b[BS];
	double t0 = now_s();
	while (now_s() - t0 < secs) {
		rng = mix64(rng + 0x9e3779b97f4a7c15ULL);
		uint64_t off = (rng % span) * BS, seq = base + n++;
		fill_block(b, BS, seq, off);
		if (nbd_pwrite(h, b, BS, off, 0) == -1) {
			fprintf(stderr, "ackwriter: write %" PRIu64 " at %" PRIu64 " failed: %s\n", n, off,
				nbd_get_error());
			break;
		}
		fprintf(ack, "%" PRIu64 " %" PRIu64 "\n", seq, off);
		fflush(ack);
	}
	fclose(ack);
	nbd_close(h);
	printf("ackwriter: %" PRIu64 " writes sent\n", n);
	return n > 1 ? 0 : 1;
}
