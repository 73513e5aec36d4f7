/* bench-json.c - the one JSON object a run prints on stdout: keys and values,
 * a histogram's summary and buckets, the client's statistics, the header
 * every mode starts with. */
#include "dmio-bench.h"

/* ----------------------------------------------------------------- JSON */

static int json_first = 1;

static void jkey(const char *k)
{
	printf("%s\"%s\": ", json_first ? "" : ", ", k);
	json_first = 0;
}

void jnum(const char *k, double v)
{
	jkey(k);
	printf("%.6g", v);
}

void jint(const char *k, uint64_t v)
{
	jkey(k);
	printf("%" PRIu64, v);
}

void jstr(const char *k, const char *v)
{
	jkey(k);
	putchar('"');
	for (; *v; v++) {
		if (*v == '"' || *v == '\\')
			putchar('\\');
		if ((unsigned char)*v >= 0x20)
			putchar(*v);
	}
	putchar('"');
}

void jopen(const char *k)
{
	if (k)
		jkey(k);
	printf("{");
	json_first = 1;
}

void jclose(void)
{
	printf("}");
	json_first = 0;
}

/* Latency summary (ns) and the histogram's non-empty buckets (for CDFs). */
void jhist(const char *k, const struct hist *h)
{
	jopen(k);
	jint("n", h->n);
	jint("min", h->n ? h->min : 0);
	jnum("mean", h->n ? (double)(h->sum / h->n) : 0);
	jint("p50", hist_pct(h, 50));
	jint("p90", hist_pct(h, 90));
	jint("p99", hist_pct(h, 99));
	jint("p999", hist_pct(h, 99.9));
	jint("p9999", hist_pct(h, 99.99));
	jint("max", h->max);
	jkey("buckets");
	printf("[");
	int first = 1;
	for (unsigned i = 0; i < H_BUCKETS; i++)
		if (h->count[i]) {
			printf("%s[%" PRIu64 ", %" PRIu64 "]", first ? "" : ", ", hist_mid(i), h->count[i]);
			first = 0;
		}
	printf("]");
	jclose();
}

void jstats(struct dm_io_client *cl)
{
	struct dm_io_stats st;
	CHECK_RC(dm_io_client_stats(cl, &st, sizeof st));
	jopen("stats");
	jint("requests", st.requests);
	jint("regions", st.regions);
	jint("regions_in_flight", st.regions_in_flight);
	jint("ok", st.ok);
	jint("timeouts", st.timeouts);
	jint("cancelled", st.cancelled);
	jint("errors", st.errors);
	jint("late_completions", st.late_completions);
	jint("private_bytes_in_use", st.private_bytes_in_use);
	jint("private_bytes_high_water", st.private_bytes_high_water);
	jint("private_bytes_bound", st.private_bytes_bound);
	jint("memory_waits", st.memory_waits);
	jint("hedges", st.hedges);
	jstr("engine", st.engine == DM_IO_ENGINE_URING     ? "io_uring"
		       : st.engine == DM_IO_ENGINE_AIO     ? "aio"
		       : st.engine == DM_IO_ENGINE_THREADS ? "threads"
							   : "unknown");
	jclose();
}

void jheader(void)
{
	jopen(NULL);
	jstr("tool", "libdmio");
	jstr("version", dm_io_version());
	jstr("mode", opt.mode);
	jstr("label", opt.label);
	jkey("devices");
	printf("[");
	for (int i = 0; i < opt.ndev; i++)
		printf("%s\"%s\"", i ? ", " : "", opt.dev[i]);
	printf("]");
	json_first = 0;
}

void jdirect(struct block_device **dev, int n)
{
	jkey("o_direct");
	printf("[");
	for (int i = 0; i < n; i++)
		printf("%s%d", i ? ", " : "", dm_io_bdev_is_direct(dev[i]));
	printf("]");
}
