/*
 * plugin.h - what the files of the nbdkit plugin share (nbdkit/README.md):
 *   dmio-plugin.c  the plugin's lifetime (open the mirror after the fork, the
 *                  status thread, the fault file) and nbdkit's callbacks table
 *   params.c       the parameters: parsing, checks before the fork, --help
 *   io.c           reads, writes (partial blocks: read-modify-write in the
 *                  mirror, mirror_pwrite), zero, trim, flush
 */
#ifndef DMIO_NBDKIT_PLUGIN_H
#define DMIO_NBDKIT_PLUGIN_H

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <stdint.h>

#include "mirror.h"

#define BLOCK 4096u             /* IO unit and advertised preferred size */
#define MAX_REQUEST (32u << 20) /* advertised maximum request */

/* params.c: the configuration, complete once dmio_config_complete passed. */
extern struct mirror_config dmio_cfg;
extern char *dmio_status_path, *dmio_fault_path;
extern const char dmio_params_help[];
int dmio_parse_num(const char *key, const char *value, uint64_t min, uint64_t max, uint64_t *out);
void dmio_load(void);
int dmio_config(const char *key, const char *value);
int dmio_config_complete(void);
void dmio_dump_plugin(void);
void dmio_params_free(void);

/* io.c: the IO callbacks, on the mirror given to dmio_io_init. */
int dmio_io_init(struct mirror *m);
void dmio_io_fini(void);
int dmio_pread(void *h, void *buf, uint32_t count, uint64_t offset, uint32_t flags);
int dmio_pwrite(void *h, const void *buf, uint32_t count, uint64_t offset, uint32_t flags);
int dmio_zero(void *h, uint32_t count, uint64_t offset, uint32_t flags);
int dmio_trim(void *h, uint32_t count, uint64_t offset, uint32_t flags);
int dmio_flush(void *h, uint32_t flags);

#endif
