/*
 * mirror_config.c - the mirror's configuration: its defaults
 * (mirror_config_init), the checks of its numbers that open shares, and
 * mirror_validate, which checks legs and log without opening the mirror.
 */
#include "mirror_int.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

void mirror_config_init(struct mirror_config *c)
{
	memset(c, 0, sizeof(*c));
	c->block_size = 4096;
	c->region_size = 64 * 1024;
	c->write_timeout_ms = 100;
	c->read_timeout_ms = 100;
	c->quorum = 1;
	c->fail_after_ms = 5000;
	c->resync_kbps = 16384;
	c->probe_ms = 1000;
	c->queue_depth = 64;
}

int mirror_parent_dir_writable(const char *path, char *dir, size_t dirlen)
{
	snprintf(dir, dirlen, "%s", path);
	char *slash = strrchr(dir, '/');
	if (!slash)
		snprintf(dir, dirlen, ".");
	else if (slash == dir)
		dir[1] = 0;
	else
		*slash = 0;
	struct stat st;
	if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || access(dir, W_OK) != 0)
		return -ENOENT;
	return 0;
}

/* The file or device behind a path: st_rdev for a block device (two nodes
 * of one disk are the same leg), else device and inode. 0 when stat fails
 * (opening it reports that). */
static int same_target(const char *a, const char *b)
{
	struct stat sa, sb;
	if (!a || !b || stat(a, &sa) != 0 || stat(b, &sb) != 0)
		return 0;
	if (S_ISBLK(sa.st_mode) && S_ISBLK(sb.st_mode))
		return sa.st_rdev == sb.st_rdev;
	return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* No leg twice (a mirror of a disk onto itself protects nothing, and its
 * resync would copy a region onto itself), and the log is no leg. */
static int check_distinct(const struct mirror_config *cfg)
{
	for (unsigned i = 0; i < cfg->nlegs; i++) {
		for (unsigned j = i + 1; j < cfg->nlegs; j++)
			if (same_target(cfg->legs[i], cfg->legs[j])) {
				mirror_set_error("legs %u (%s) and %u (%s) are the same file or device", i, cfg->legs[i],
						 j, cfg->legs[j]);
				return -EINVAL;
			}
		if (cfg->log_path && same_target(cfg->legs[i], cfg->log_path)) {
			mirror_set_error("the log %s is leg %u (%s)", cfg->log_path, i, cfg->legs[i]);
			return -EINVAL;
		}
	}
	return 0;
}

/* The checks of the configuration, shared by open and validate: the
 * numbers, and that no leg is given twice. */
int mirror_check_config(const struct mirror_config *cfg)
{
	if (!cfg || cfg->nlegs < 1 || cfg->nlegs > MIRROR_MAX_LEGS) {
		mirror_set_error("need 1..%d legs", MIRROR_MAX_LEGS);
		return -EINVAL;
	}
	if (!cfg->block_size || cfg->block_size % 512 || !cfg->region_size ||
	    cfg->region_size % cfg->block_size || cfg->region_size % 4096) {
		mirror_set_error("block size must be a multiple of 512, region size a multiple of it and of 4096");
		return -EINVAL;
	}
	if (cfg->quorum < 1 || cfg->quorum > cfg->nlegs) {
		mirror_set_error("quorum must be 1..%u", cfg->nlegs);
		return -EINVAL;
	}
	return check_distinct(cfg);
}

int mirror_validate(const struct mirror_config *cfg)
{
	mirror_clear_error();
	int rc = mirror_check_config(cfg);
	if (rc)
		return rc;
	uint64_t size = UINT64_MAX;
	for (unsigned L = 0; L < cfg->nlegs; L++) {
		const char *path = cfg->legs[L] ? cfg->legs[L] : "";
		struct block_device *b;
		rc = dm_io_bdev_open(path, 0, &b);
		if (rc) {
			mirror_set_error("%s: %s (%s)", path, strerror(-rc), dm_io_last_error());
			return rc;
		}
		unsigned lbs = dm_io_bdev_block_size(b);
		uint64_t bytes = dm_io_bdev_sectors(b) * 512;
		/* An NBD export's writability shows on its first write (EROFS). */
		int ro = !strstr(path, "://") && access(path, W_OK) != 0;
		dm_io_bdev_close(b);
		if (ro) {
			mirror_set_error("%s: not writable (%s)", path, strerror(errno));
			return -EACCES;
		}
		if (cfg->block_size % lbs) {
			mirror_set_error("%s: logical block size %u does not divide the block size %u", path, lbs,
				  cfg->block_size);
			return -EINVAL;
		}
		size = bytes < size ? bytes : size;
	}
	if (size < cfg->block_size) {
		mirror_set_error("the smallest leg is smaller than one block");
		return -EINVAL;
	}
	if (!cfg->log_path)
		return 0;
	struct stat st;
	if (stat(cfg->log_path, &st) != 0) {
		if (errno != ENOENT) {
			mirror_set_error("log %s: %s", cfg->log_path, strerror(errno));
			return -errno;
		}
		/* A new log: its directory must exist and be writable. */
		char dir[PATH_MAX];
		if (mirror_parent_dir_writable(cfg->log_path, dir, sizeof(dir)) != 0) {
			mirror_set_error("log %s: directory %s does not exist or is not writable", cfg->log_path, dir);
			return -ENOENT;
		}
		return 0;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		mirror_set_error("log %s: neither a regular file nor a block device", cfg->log_path);
		return -EINVAL;
	}
	if (access(cfg->log_path, R_OK | W_OK) != 0) {
		mirror_set_error("log %s: %s", cfg->log_path, strerror(errno));
		return -EACCES;
	}
	/* An existing log must have this mirror's geometry. */
	uint64_t msize = size / cfg->block_size * cfg->block_size;
	uint64_t nregions = (msize + cfg->region_size - 1) / cfg->region_size;
	size_t bitmap_bytes = (size_t)(cfg->nlegs + 1) * ((nregions + 7) / 8);
	size_t slot_bytes = 4096 + (bitmap_bytes + 4095) / 4096 * 4096;
	int fd = open(cfg->log_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		mirror_set_error("log %s: %s", cfg->log_path, strerror(errno));
		return -errno;
	}
	rc = 0;
	for (unsigned k = 0; k < 2 && !rc; k++) {
		struct log_hdr h;
		if (pread(fd, &h, sizeof(h), (off_t)(k * slot_bytes)) != (ssize_t)sizeof(h))
			continue;
		if (memcmp(h.magic, LOG_MAGIC, 8) || h.version != LOG_VERSION)
			continue;
		if (h.nlegs != cfg->nlegs || h.region_size != cfg->region_size || h.nregions != nregions) {
			mirror_set_error("log %s was made for another geometry (%u legs, %llu regions of %llu bytes)",
				  cfg->log_path, h.nlegs, (unsigned long long)h.nregions,
				  (unsigned long long)h.region_size);
			rc = -EINVAL;
		}
	}
	close(fd);
	return rc;
}
