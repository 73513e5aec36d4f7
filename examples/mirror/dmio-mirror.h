/*
 * dmio-mirror.h: what the files of the dmio-mirror command share
 * (dmio-mirror.c: options, the status/resync/workload/check commands;
 * dmio-mirror-shell.c: the shell command).
 */
#ifndef DMIO_MIRROR_CLI_H
#define DMIO_MIRROR_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "mirror.h"

double cli_now_ms(void);
void cli_sleep_ms(double ms);
/* A whole decimal number in [min, max]: no sign, suffix or spaces. 0 or -1. */
int cli_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* The pattern `write OFF LEN SEED` writes and `read OFF LEN SEED` checks. */
void cli_fill_seeded(unsigned char *b, size_t len, uint64_t seed, uint64_t off);
/* The shell command: returns the exit status (1 after a failed command). */
int cli_shell(struct mirror *m);

#endif
