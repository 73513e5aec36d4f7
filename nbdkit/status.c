/* status.c - see status.h. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "status.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

const char *status_state_word(enum mirror_leg_state s)
{
	switch (s) {
	case MIRROR_LEG_IN_SYNC: return "in_sync";
	case MIRROR_LEG_DIRTY: return "dirty";
	case MIRROR_LEG_FAILED: return "failed";
	}
	return "unknown";
}

/* A JSON string: quotes, backslashes and control characters escaped. */
static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

int status_write_json(struct mirror *m, const char *path)
{
	struct mirror_status st;
	mirror_status(m, &st);
	char tmp[4200];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	FILE *f = fopen(tmp, "w");
	if (!f)
		return -errno;
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	uint64_t total_dirty = 0;
	for (unsigned L = 0; L < st.nlegs; L++)
		total_dirty += st.legs[L].dirty_regions;
	fprintf(f, "{\n  \"time\": %lld,\n  \"size\": %llu,\n  \"region_size\": %u,\n  \"regions\": %llu,\n",
		(long long)now.tv_sec, (unsigned long long)st.size, st.region_size,
		(unsigned long long)st.nregions);
	fprintf(f,
		"  \"writes\": %llu,\n  \"writes_degraded\": %llu,\n  \"write_errors\": %llu,\n"
		"  \"max_ack_ms\": %.1f,\n  \"reads\": %llu,\n  \"read_errors\": %llu,\n  \"flushes\": %llu,\n"
		"  \"flush_errors\": %llu,\n  \"log\": %s,\n  \"log_commits\": %llu,\n  \"log_errors\": %llu,\n",
		(unsigned long long)st.writes, (unsigned long long)st.writes_degraded,
		(unsigned long long)st.write_errors, st.max_ack_ms, (unsigned long long)st.reads,
		(unsigned long long)st.read_errors, (unsigned long long)st.flushes,
		(unsigned long long)st.flush_errors, st.log ? "true" : "false", (unsigned long long)st.log_commits,
		(unsigned long long)st.log_errors);
	fprintf(f,
		"  \"resync\": { \"paused\": %s, \"regions_copied\": %llu, \"pending\": %llu, \"in_sync\": %s },\n",
		st.resync_paused ? "true" : "false", (unsigned long long)st.resynced,
		(unsigned long long)st.resync_pending, total_dirty == 0 ? "true" : "false");
	fprintf(f, "  \"legs\": [\n");
	for (unsigned L = 0; L < st.nlegs; L++) {
		const struct mirror_leg_status *s = &st.legs[L];
		fprintf(f, "    { \"name\": ");
		json_str(f, s->name);
		fprintf(f, ", \"path\": ");
		json_str(f, s->path);
		fprintf(f, ", \"state\": \"%s\", \"fail_reason\": ", status_state_word(s->state));
		json_str(f, s->fail_reason);
		fprintf(f,
			", \"dirty_regions\": %llu, \"late_io\": %llu, \"timeouts\": %llu, "
			"\"late_completions\": %llu, \"errors\": %llu, \"skipped\": %llu, \"queued\": %llu, "
			"\"resynced\": %llu, "
			"\"read_errors\": %llu, \"failures\": %llu }%s\n",
			(unsigned long long)s->dirty_regions, (unsigned long long)s->late_io,
			(unsigned long long)s->timeouts, (unsigned long long)(s->late_ok + s->late_errors),
			(unsigned long long)s->errors, (unsigned long long)s->skipped,
			(unsigned long long)s->queued, (unsigned long long)s->resynced, (unsigned long long)s->read_errors,
			(unsigned long long)s->failures, L + 1 < st.nlegs ? "," : "");
	}
	fprintf(f, "  ]\n}\n");
	int rc = ferror(f) ? -EIO : 0;
	if (fclose(f) != 0 && !rc)
		rc = -errno;
	if (!rc && rename(tmp, path) != 0)
		rc = -errno;
	if (rc)
		remove(tmp);
	return rc;
}

void status_summary(struct mirror *m, char *buf, size_t len)
{
	struct mirror_status st;
	mirror_status(m, &st);
	size_t n = (size_t)snprintf(buf, len, "dmio: %llu writes (%llu failed), max ack %.1f ms, resync pending %llu;",
				    (unsigned long long)st.writes, (unsigned long long)st.write_errors,
				    st.max_ack_ms, (unsigned long long)st.resync_pending);
	for (unsigned L = 0; L < st.nlegs && n < len; L++) {
		const struct mirror_leg_status *s = &st.legs[L];
		n += (size_t)snprintf(buf + n, len - n, " %s %s (%llu dirty, %llu late, %llu timeouts)", s->name,
				      status_state_word(s->state), (unsigned long long)s->dirty_regions,
				      (unsigned long long)s->late_io, (unsigned long long)s->timeouts);
	}
}
