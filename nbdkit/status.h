/*
 * status.h - the plugin's status file: the mirror's state as JSON,
 * rewritten atomically (write a temporary file, rename it over the old one).
 */
#ifndef DMIO_NBDKIT_STATUS_H
#define DMIO_NBDKIT_STATUS_H

#include "mirror.h"

/* Writes the status of `m` as JSON to `path` (via path.tmp and rename).
 * Returns 0 or -errno. */
int status_write_json(struct mirror *m, const char *path);

/* One line for the log: "legs: A in_sync, B dirty (12 dirty, 3 late) ...". */
void status_summary(struct mirror *m, char *buf, size_t len);

/* "in_sync", "dirty" or "failed". */
const char *status_state_word(enum mirror_leg_state s);

#endif
