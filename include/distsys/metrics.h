/*
 * dsys_metrics: counters, gauges and histograms with labels, exposed in the
 * Prometheus text format 0.0.4 (docs/reference/metrics.md).
 *
 * A registry holds metric families (one name, one type, one help text, one
 * list of label names). A series is one family plus one list of label
 * values; resolving it returns a handle (dsys_counter, dsys_gauge,
 * dsys_histogram) that stays valid until dsys_metrics_free(). Resolve once
 * (a lookup under the family's lock), then update through the handle: every
 * update is a relaxed atomic operation on that series only, with no lock.
 *
 * Collect hooks (dsys_metrics_on_collect) run at the start of every render
 * and set values that live elsewhere (queue depth, process memory,
 * upstream statistics). Series are never removed.
 *
 * Helpers instrument the rest of the library: dsys_server_metrics (per
 * route request counts and latency), dsys_metrics_mount (GET /metrics),
 * dsys_metrics_process, dsys_metrics_queue, dsys_metrics_store,
 * dsys_metrics_upstream, dsys_metrics_cache.
 *
 * Thread-safety: everything may be called from any thread, except
 * dsys_metrics_free (no other call on the registry may run or follow).
 * Renders are serialized with each other; collect hooks run on the
 * rendering thread, one at a time, with no library lock held but that
 * render lock.
 */
#ifndef DSYS_METRICS_H
#define DSYS_METRICS_H

#include <distsys/common.h>
#include <distsys/queue.h>
#include <distsys/server.h>
#include <distsys/store.h>
#include <distsys/upstream.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsys_metrics dsys_metrics;
typedef struct dsys_counter dsys_counter;
typedef struct dsys_gauge dsys_gauge;
typedef struct dsys_histogram dsys_histogram;

/** Most label names of one family. */
#define DSYS_METRICS_MAX_LABELS 8
/** Most series of one family (bounds the cardinality). */
#define DSYS_METRICS_MAX_SERIES 10000
/** Most finite buckets of a histogram. */
#define DSYS_METRICS_MAX_BUCKETS 64

/** A collect hook: runs at the start of every render (see the header). */
typedef void (*dsys_metrics_collect_fn)(dsys_metrics *reg, void *ud);

/** Create an empty registry. @return 0, DSYS_EINVAL, DSYS_ENOMEM. */
DSYS_API int dsys_metrics_new(dsys_metrics **out);

/**
 * Free the registry, its series and its helpers. Every handle becomes
 * invalid. Call it after the servers instrumented with it were freed and
 * the stores it observes were closed (or their observer cleared).
 * NULL-safe.
 */
DSYS_API void dsys_metrics_free(dsys_metrics *reg);

/**
 * Resolve a counter series, creating the family and the series on first
 * use. A family's type, help and label names are fixed by its first
 * resolution; later calls must give the same type and label names.
 * @param name metric name, [a-zA-Z_:][a-zA-Z0-9_:]*; by convention it ends
 *        in "_total".
 * @param help one line of text (copied; escaped on output).
 * @param label_names, label_values n names and n values (copied); names
 *        match [a-zA-Z_][a-zA-Z0-9_]*, do not start with "__" and are
 *        unique; values are any UTF-8 text. n may be 0 (arrays NULL).
 * @param out receives the handle (owned by the registry).
 * @return 0, DSYS_EINVAL (bad name, label or count), DSYS_ETYPE (the
 *         family exists with another type or other label names),
 *         DSYS_ERANGE (DSYS_METRICS_MAX_SERIES reached), DSYS_ENOMEM.
 */
DSYS_API int dsys_metrics_counter(dsys_metrics *reg, const char *name,
                                  const char *help,
                                  const char *const *label_names,
                                  const char *const *label_values, size_t n,
                                  dsys_counter **out);

/** Resolve a gauge series: as dsys_metrics_counter().
 *  @return 0, DSYS_EINVAL, DSYS_ETYPE, DSYS_ERANGE, DSYS_ENOMEM. */
DSYS_API int dsys_metrics_gauge(dsys_metrics *reg, const char *name,
                                const char *help,
                                const char *const *label_names,
                                const char *const *label_values, size_t n,
                                dsys_gauge **out);

/**
 * Resolve a histogram series: as dsys_metrics_counter(), plus buckets.
 * @param buckets strictly increasing finite upper bounds (the +Inf bucket
 *        is implicit), or NULL for the default latency buckets in seconds
 *        (0.0005 0.001 0.0025 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5
 *        10). Fixed by the first resolution of the family; later calls
 *        must pass the same bounds or NULL.
 * @param nbuckets 1..DSYS_METRICS_MAX_BUCKETS (ignored when buckets is
 *        NULL).
 * The label name "le" is reserved.
 * @return 0, DSYS_EINVAL, DSYS_ETYPE, DSYS_ERANGE, DSYS_ENOMEM.
 */
DSYS_API int dsys_metrics_histogram(dsys_metrics *reg, const char *name,
                                    const char *help, const double *buckets,
                                    size_t nbuckets,
                                    const char *const *label_names,
                                    const char *const *label_values, size_t n,
                                    dsys_histogram **out);

/** Add 1 to a counter (relaxed atomic). NULL-safe. */
DSYS_API void dsys_counter_inc(dsys_counter *c);
/** Add v to a counter (relaxed atomic). NULL-safe. */
DSYS_API void dsys_counter_add(dsys_counter *c, uint64_t v);
/** Replace the value, for collect hooks that mirror a monotonic counter
 *  kept elsewhere (e.g. upstream statistics). NULL-safe. */
DSYS_API void dsys_counter_store(dsys_counter *c, uint64_t v);
/** Replace the value with a fractional one (e.g. CPU seconds), for
 *  collect hooks; afterwards the series is rendered as a float and must
 *  only be set with this function. NULL-safe. */
DSYS_API void dsys_counter_store_double(dsys_counter *c, double v);
/** The current value (0 for NULL; truncated after store_double). */
DSYS_API uint64_t dsys_counter_value(const dsys_counter *c);

/** Set a gauge. NULL-safe. */
DSYS_API void dsys_gauge_set(dsys_gauge *g, double v);
/** Add v (may be negative) to a gauge (atomic compare-and-swap loop on
 *  that series). NULL-safe. */
DSYS_API void dsys_gauge_add(dsys_gauge *g, double v);
/** The current value (0 for NULL). */
DSYS_API double dsys_gauge_value(const dsys_gauge *g);

/** Record one observation: the first bucket with v <= bound, or +Inf;
 *  adds v to the sum. Relaxed atomics. NaN is ignored. NULL-safe. */
DSYS_API void dsys_histogram_observe(dsys_histogram *h, double v);

/**
 * Replace a histogram's contents, for collect hooks that mirror a
 * histogram kept elsewhere.
 * @param counts n per-bucket (not cumulative) counts: one per finite
 *        bucket, then the +Inf bucket (n = number of bounds + 1).
 * @param sum the sum of the observations.
 * @return 0, DSYS_EINVAL (NULL, or n does not match).
 */
DSYS_API int dsys_histogram_store(dsys_histogram *h, const uint64_t *counts,
                                  size_t n, double sum);

/**
 * Read a histogram: total count, sum, and the cumulative count of bucket
 * i (i = number of bounds is +Inf). Any out-parameter may be NULL.
 * @return 0, DSYS_EINVAL (NULL histogram or i out of range).
 */
DSYS_API int dsys_histogram_read(const dsys_histogram *h, size_t i,
                                 uint64_t *cumulative, uint64_t *count,
                                 double *sum);

/**
 * Add a collect hook, run at the start of every render in the order added.
 * The hook may resolve series and set values; it must not render, free or
 * add hooks. ud must stay valid until dsys_metrics_free().
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_metrics_on_collect(dsys_metrics *reg,
                                     dsys_metrics_collect_fn fn, void *ud);

/**
 * Render every family in the Prometheus text format 0.0.4, families in
 * the order they were created and series in the order they were created:
 * "# HELP", "# TYPE", one line per series; histograms as _bucket (with
 * "le", cumulative, ending with +Inf), _sum and _count. Help text escapes
 * backslash and newline; label values escape backslash, double quote and
 * newline. Families without series are left out.
 * @param out receives a NUL-terminated text (dsys_free()).
 * @param len receives its length (may be NULL).
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_metrics_render(dsys_metrics *reg, char **out, size_t *len);

/**
 * Instrument a server (before dsys_server_listen): every finished request
 * adds to
 *   dsys_http_requests_total{route,method,status} (counter),
 *   dsys_http_request_duration_seconds{route} (histogram, default buckets),
 * and renders add dsys_http_requests_in_flight (gauge). route is the
 * route pattern that matched (e.g. "/api/data/:id"), or "unmatched" for
 * 404/405 answers of the router; method is one of GET HEAD POST PUT
 * DELETE PATCH OPTIONS, else "OTHER". The duration runs from the arrival
 * of the request to the end of its response (the whole stream for
 * streams). A server takes one registry.
 * @return 0, DSYS_EINVAL, DSYS_ESTATE (already listening), DSYS_EEXIST
 *         (this server is already instrumented), DSYS_ENOMEM.
 */
DSYS_API int dsys_server_metrics(dsys_server *srv, dsys_metrics *reg);

/**
 * Mount GET /metrics on a server (before it listens): answers 200 with
 * dsys_metrics_render() and Content-Type
 * "text/plain; version=0.0.4; charset=utf-8", or 500 when rendering
 * fails. Mount it before any catch-all route (a trailing "*").
 * @return dsys_server_route() errors.
 */
DSYS_API int dsys_metrics_mount(dsys_server *srv, dsys_metrics *reg);

/**
 * Add process gauges, read from /proc/self at render time:
 * process_resident_memory_bytes, process_virtual_memory_bytes,
 * process_cpu_seconds_total, process_open_fds, process_threads.
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_metrics_process(dsys_metrics *reg);

/**
 * Add queue depth by state, read with dsys_queue_counts() at render time:
 * dsys_queue_jobs{queue,state} (state: waiting, delayed, active,
 * completed, failed, canceled).
 * @param q the queue (not owned; keep it open while renders may run).
 * @param queue the queue name to count, or NULL for all (label "*").
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_metrics_queue(dsys_metrics *reg, dsys_queue *q,
                                const char *queue);

/**
 * Observe a store's operations (dsys_store_set_observer):
 * dsys_store_operation_duration_seconds{op} (histogram) and
 * dsys_store_operation_errors_total{op,code} (counter; "not found" and
 * version conflicts are answers, not errors, and are not counted).
 * op: get, write, delete, incr, list.
 * @param s the store (not owned); close it (or clear its observer)
 *        before dsys_metrics_free().
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_metrics_store(dsys_metrics *reg, dsys_store *s);

/**
 * Mirror an upstream's statistics at render time (dsys_upstream_stats and
 * dsys_upstream_totals_get), labeled upstream=name and endpoint=id:
 * dsys_upstream_requests_total, dsys_upstream_failures_total,
 * dsys_upstream_breaker_rejections_total,
 * dsys_upstream_request_duration_seconds (histogram, default buckets),
 * dsys_upstream_in_flight, dsys_upstream_endpoint_usable,
 * dsys_upstream_endpoint_ejected, dsys_upstream_breaker_state
 * (0 closed, 1 open, 2 half-open: dsys_breaker_state);
 * per upstream: dsys_upstream_retries_total, dsys_upstream_endpoints,
 * dsys_upstream_unavailable_total.
 * @param name the upstream's name (copied).
 * @param u the upstream (not owned; keep it while renders may run, e.g.
 *        free it after the server serving /metrics stopped).
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_metrics_upstream(dsys_metrics *reg, const char *name,
                                   dsys_upstream *u);

struct dsys_cache;

/**
 * Export a dsys_cache's counters at every render, labeled cache=name:
 * dsys_cache_hits_total, dsys_cache_stale_hits_total,
 * dsys_cache_negative_hits_total, dsys_cache_misses_total,
 * dsys_cache_loads_total, dsys_cache_load_errors_total,
 * dsys_cache_evictions_total, dsys_cache_invalidations_total,
 * dsys_cache_entries, dsys_cache_bytes.
 * @param c the cache (not owned; keep it while renders may run).
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_metrics_cache(dsys_metrics *reg, const char *name, struct dsys_cache *c);

#ifdef __cplusplus
}
#endif
#endif
