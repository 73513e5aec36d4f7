/*
 * block.h - the self-checking blocks that `dmio-mirror workload` and the
 * nbdkit crash test write, and that `dmio-mirror check` verifies: a header
 * (magic, sequence number, offset) and a pattern derived from the sequence
 * number, so a block read back tells which write it holds and whether it
 * is intact.
 */
#ifndef DMIO_MIRROR_BLOCK_H
#define DMIO_MIRROR_BLOCK_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define BLOCK_MAGIC 0x4b4c424d4f494d44ULL /* "DMIOMBLK" */

static inline uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

/* Fills b (len bytes, at least 24) with the block of write `seq` at `off`. */
static inline void fill_block(unsigned char *b, size_t len, uint64_t seq, uint64_t off)
{
	uint64_t h[3] = { BLOCK_MAGIC, seq, off };
	for (size_t i = 24; i + 8 <= len; i += 8) {
		uint64_t v = mix64(seq * 0x9e3779b97f4a7c15ULL + i);
		memcpy(b + i, &v, 8);
	}
	memcpy(b, h, sizeof(h));
}

/* Returns the block's seq, or 0 when it is not an intact block of `off`. */
static inline uint64_t block_seq(const unsigned char *b, size_t len, uint64_t off)
{
	uint64_t h[3];
	memcpy(h, b, sizeof(h));
	if (h[0] != BLOCK_MAGIC || h[2] != off)
		return 0;
	for (size_t i = 24; i + 8 <= len; i += 8) {
		uint64_t v = mix64(h[1] * 0x9e3779b97f4a7c15ULL + i), w;
		memcpy(&w, b + i, 8);
		if (v != w)
			return 0;
	}
	return h[1];
}

#endif
