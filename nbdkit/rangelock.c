/* rangelock.c - see rangelock.h. */
#include "rangelock.h"

static int overlaps(const struct rangelock *rl, uint64_t a, uint64_t b)
{
	for (const struct rangelock_entry *e = rl->held; e; e = e->next)
		if (e->a < b && a < e->b)
			return 1;
	return 0;
}

void rangelock_lock(struct rangelock *rl, struct rangelock_entry *e, uint64_t a, uint64_t b)
{
	pthread_mutex_lock(&rl->lock);
	while (overlaps(rl, a, b)) {
		rl->nwait++;
		pthread_cond_wait(&rl->cond, &rl->lock);
		rl->nwait--;
	}
	e->a = a;
	e->b = b;
	e->next = rl->held;
	rl->held = e;
	pthread_mutex_unlock(&rl->lock);
}

void rangelock_unlock(struct rangelock *rl, struct rangelock_entry *e)
{
	pthread_mutex_lock(&rl->lock);
	for (struct rangelock_entry **p = &rl->held; *p; p = &(*p)->next)
		if (*p == e) {
			*p = e->next;
			break;
		}
	if (rl->nwait)
		pthread_cond_broadcast(&rl->cond);
	pthread_mutex_unlock(&rl->lock);
}
