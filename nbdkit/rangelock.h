/*
 * rangelock.h - exclusive locks on byte ranges [a, b).
 *
 * Every write of the nbdkit plugin locks the blocks it covers, so that a
 * read-modify-write of a partial block never races with another write to
 * that block (which would tear it or lose one of the two writes). Ranges
 * that do not overlap proceed in parallel. A thread waits while any held
 * range overlaps the one it asks for.
 */
#ifndef DMIO_RANGELOCK_H
#define DMIO_RANGELOCK_H

#include <pthread.h>
#include <stdint.h>

struct rangelock_entry {
	uint64_t a, b;
	struct rangelock_entry *next;
};

struct rangelock {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct rangelock_entry *held;
	unsigned nwait; /* threads waiting on cond: an unlock wakes them only if any */
};

#define RANGELOCK_INIT { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0 }

/* Waits until no held range overlaps [a, b), then holds it in `e` (the
 * caller's storage, until rangelock_unlock). */
void rangelock_lock(struct rangelock *rl, struct rangelock_entry *e, uint64_t a, uint64_t b);
void rangelock_unlock(struct rangelock *rl, struct rangelock_entry *e);

#endif
