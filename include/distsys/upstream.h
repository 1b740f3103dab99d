/*
 * dsys_upstream: call a service by name. Composes the resilience blocks:
 *
 *   service name -> registry watch (or static endpoints) -> endpoint set
 *   with health and outlier state -> balancer pick -> circuit breaker ->
 *   transport call with a per-try timeout -> retry policy.
 *
 * Endpoints come from a dsys_registry (a watch keeps the set current:
 * registered and healthy instances of the service type are members;
 * deregistered, reaped and unhealthy ones leave at once) and/or from
 * dsys_upstream_add(). Each endpoint has its own circuit breaker (made from
 * the breaker template), a health entry (active HTTP checks when enabled,
 * passive outlier detection on by default) and atomic statistics. An
 * endpoint takes traffic ("usable") when its health entry is usable and its
 * breaker is not open; when none is usable the balancer's when_none rule
 * applies (panic: pick among all; fail fast: DSYS_EUNAVAIL). Failures that
 * more than half of the other usable endpoints share (a failure streak on
 * each: their database down) neither eject an endpoint nor open its
 * breaker (a half-open one closes): the cause is not the endpoint's.
 *
 * One call (dsys_upstream_call / dsys_upstream_send) makes attempts until
 * the retry policy says stop: each attempt picks an endpoint not yet tried
 * when another one is available, acquires its breaker permit (an endpoint
 * whose breaker rejects is skipped), calls it with the per-try timeout
 * (bounded by what is left of the deadline), classifies the outcome
 * (dsys_classify), records it on the breaker, the health checker and the
 * statistics, then asks dsys_retry_decide: a refused connection is retried
 * at once on another endpoint; after the request was sent only idempotent
 * methods or requests with an Idempotency-Key header are retried, on
 * timeouts, resets, protocol errors and retryable statuses (502, 503, 504
 * by default), after a full-jitter backoff; the retry budget applies. The
 * final reply is returned whatever its status (a 503 that is not retried
 * is a reply, not an error).
 *
 * Errors of a call: DSYS_EUNAVAIL (no endpoint, or none usable in fail-fast
 * mode), DSYS_EBREAKER (every endpoint's breaker rejected), transport
 * errors of the last attempt (DSYS_ECONNREFUSED, DSYS_ETIMEDOUT, ...),
 * DSYS_ECLOSED (the upstream is being freed), DSYS_ECANCELED.
 *
 * Threads: every function may be called from any thread, concurrently,
 * except dsys_upstream_free(), which must not run concurrently with other
 * calls on the same upstream (asynchronous calls still in flight are fine:
 * it waits for them). Calls take no upstream-wide lock on the hot path
 * (a read lock on the endpoint set, the balancer's and the breaker's
 * mutexes; counters are atomics). Completion callbacks of
 * dsys_upstream_send run with no library lock held, on the client's
 * completion thread, on the event loop's thread (a call started on a
 * server's event-loop thread: attempts to http:// and unix:// endpoints
 * go through that loop's own HTTP/1.1 dialer, and its backoffs wait on the
 * loop's timers), on the clock's timer thread (after a backoff), or on the
 * thread calling dsys_upstream_free() (canceled calls).
 *
 * Per-try timeouts, hedging, slowness (docs/reference/resilience.md):
 *  - adaptive_timeout: the upstream keeps a histogram of the latency of
 *    the answers of the last latency_window_ms (replies other than those
 *    counted against the endpoint; timeouts are not answers), derived
 *    again every 100 ms at most. An attempt of a safe request (GET, HEAD,
 *    OPTIONS) or one with Idempotency-Key, If-Match or If-Unmodified-Since
 *    (a late copy is harmless) that another attempt could follow gets
 *    the per-try timeout timeout_percentile x timeout_factor, within
 *    [timeout_min_ms, timeout_max_ms] and what is left of the deadline;
 *    with fewer than latency_min_samples answers in the window, the retry
 *    policy's per-try timeout. On an event loop it bounds the time to the
 *    response head (a streamed answer may then run to the retry policy's
 *    per-try timeout); through the client, the whole attempt of a call
 *    without on_chunk. The last attempt, requests that are not retried,
 *    attempts with no endpoint left untried, and every attempt after one
 *    it cut (a second slow instance says the request is slow) keep the
 *    retry policy's per-try timeout: an adaptive timeout moves a request
 *    to another instance, it never fails one by itself. An answer slower
 *    than the adaptive timeout is a slow answer.
 *  - attempts it cut and slow answers go to the health checker's slowness
 *    streak only (dsys_health_options.consecutive_slow: ejection for
 *    slowness; the breaker ignores them); other timeouts are failures.
 *  - hedge: such a request (safe, keyed or conditional) started on an event loop without a body
 *    it lends (dsysi_usend.borrow) whose first attempt has no response head
 *    after the hedge delay gets a second attempt on another endpoint, if
 *    the retry budget allows; the first response head wins and the other
 *    attempt is abandoned (canceled when its head comes, else ended by its
 *    timeout; its outcome still counts for its endpoint). A hedge counts
 *    as an attempt. Calls made off an event loop are not hedged.
 *
 * dsys_upstream is the library's one request engine: the gateway proxies
 * through the same attempt loop (docs/reference/resilience.md).
 */
#ifndef DSYS_UPSTREAM_H
#define DSYS_UPSTREAM_H

#include <distsys/common.h>
#include <distsys/clock.h>
#include <distsys/client.h>
#include <distsys/registry.h>
#include <distsys/balancer.h>
#include <distsys/breaker.h>
#include <distsys/retry.h>
#include <distsys/health.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsys_upstream dsys_upstream;

/** Upstream options. Zero fields take the defaults given. */
typedef struct dsys_upstream_options {
  size_t size;                 /**< sizeof(dsys_upstream_options), or 0 */
  const char *service;         /**< service type name (copied); required with
                                    a registry; default "upstream" */
  dsys_registry *registry;     /**< discover from it (not owned; must outlive
                                    the upstream); NULL: static endpoints only */
  int32_t policy;              /**< dsys_lb_policy; default ROUND_ROBIN */
  int32_t when_none;           /**< dsys_lb_none; default PANIC */
  uint64_t seed;               /**< balancer/health randomness; 0: random */
  int32_t health_check;        /**< nonzero: active HTTP checks, GET
                                    <url><health_path> expecting 2xx */
  const char *health_path;     /**< default "/health" (copied) */
  const dsys_health_options *health;   /**< template (interval, timeout,
                                    rise, fall, start_healthy, outlier
                                    settings, on_event); its clock and probe
                                    are replaced; may be NULL */
  const dsys_breaker_options *breaker; /**< template for one breaker per
                                    endpoint (name = endpoint id; clock
                                    replaced; on_event still called); NULL:
                                    breaker defaults */
  const dsys_retry_options *retry;     /**< retry policy; its clock defaults
                                    to the upstream's; NULL: defaults */
  dsys_client *client;         /**< not owned; NULL: the upstream creates one
                                    on its clock */
  dsys_clock *clock;           /**< default dsys_clock_real() */
  /* appended */
  int32_t count_5xx;           /**< which 5xx answers count against the
                                    endpoint that gave them (its breaker
                                    and outlier detection):
                                    DSYS_UPSTREAM_COUNT_GATEWAY_5XX (0,
                                    default) only 502, 503 and 504, which
                                    say the instance is unavailable;
                                    DSYS_UPSTREAM_COUNT_ALL_5XX every 5xx.
                                    With the default a 500 or a 507 that
                                    every instance gives (a bad request, a
                                    full storage they share) does not take
                                    them all out of rotation. Connection
                                    failures, resets and timeouts always
                                    count. */
  /* appended: following the service's latency (see "Per-try timeouts,
   * hedging, slowness" above) */
  int32_t adaptive_timeout;    /**< nonzero: adaptive per-try timeouts and
                                    slow answers; 0: off (default) */
  uint32_t timeout_percentile; /**< percentile of the window, 1..100;
                                    default 99 */
  double timeout_factor;       /**< times this, >= 1; default 4 */
  int64_t timeout_min_ms;      /**< floor; default 250 */
  int64_t timeout_max_ms;      /**< ceiling; default: the retry policy's
                                    per-try timeout (none: 15000) */
  int64_t latency_window_ms;   /**< the window of answers, 100..3600000;
                                    default 10000 */
  uint32_t latency_min_samples;/**< fewer answers in the window: no
                                    adaptive timeout, no adaptive hedge;
                                    default 20 */
  int32_t hedge;               /**< nonzero: hedge safe/keyed/conditional requests;
                                    0: off (default) */
  int64_t hedge_delay_ms;      /**< > 0: a fixed delay; 0: the window's
                                    hedge_percentile */
  uint32_t hedge_percentile;   /**< 1..100; default 95 */
  /* appended */
  int64_t registry_reread_ms;  /**< with a registry: read the service's
                                    instances again this often besides the
                                    delivered changes, so that membership
                                    converges within it even if a change
                                    was missed (a read that failed, an
                                    answer from an old copy); an instance
                                    it adds or removes is logged as a
                                    warning. 0: default 10000; -1: never;
                                    else >= 100 */
} dsys_upstream_options;

/** Values of dsys_upstream_options.count_5xx. */
enum {
  DSYS_UPSTREAM_COUNT_GATEWAY_5XX = 0,
  DSYS_UPSTREAM_COUNT_ALL_5XX = 1
};

/** Longest endpoint id in bytes (the balancer's limit). */
#define DSYS_UPSTREAM_ID_MAX DSYS_BALANCER_ID_MAX

/**
 * A pick for callers that do their own I/O. Filled by
 * dsys_upstream_pick(); hand it to dsys_upstream_report() exactly once.
 * id and url stay valid until then. The fields after panic are private.
 * Like POSIX `struct stat` and stat(), the struct tag shares its name with
 * the function, so it is written `struct dsys_upstream_pick` (no typedef).
 */
struct dsys_upstream_pick {
  const char *id;
  const char *url;
  int32_t panic;               /**< chosen in panic mode */
  int32_t reserved_;
  void *ep_;                   /**< private */
  uint64_t lb_handle_;         /**< private */
  uint64_t permit_;            /**< private */
  int64_t start_us_;           /**< private */
};

/** Number of latency histogram buckets. */
#define DSYS_UPSTREAM_LAT_BUCKETS 112

/**
 * Statistics of one endpoint. In the array returned by
 * dsys_upstream_stats() id and url point into the same allocation.
 * Latency buckets are log-scale in microseconds, four per power of two:
 * bucket i holds latencies in [dsys_upstream_bucket_lower_us(i),
 * dsys_upstream_bucket_lower_us(i + 1)); the last one is open-ended.
 */
typedef struct dsys_endpoint_stats {
  const char *id;
  const char *url;
  uint32_t weight;
  int32_t usable;              /**< takes traffic now (health usable and
                                    breaker not open) */
  int32_t healthy;             /**< health state is HEALTHY */
  int32_t health_state;        /**< dsys_health_state */
  int32_t ejected;             /**< ejected by outlier detection */
  int32_t breaker_state;       /**< dsys_breaker_state */
  uint64_t requests;           /**< attempts started on it (picks) */
  uint64_t successes;          /**< outcome OK */
  uint64_t failures;           /**< NOT_SENT + TIMEOUT + RESET + PROTOCOL +
                                    SERVER_ERROR */
  uint64_t by_outcome[8];      /**< finished attempts per dsys_outcome */
  uint64_t in_flight;          /**< picked and not yet reported */
  uint64_t breaker_rejections; /**< times its breaker refused a pick */
  uint64_t latency_count;      /**< finished attempts with a latency */
  int64_t latency_sum_us;
  int64_t p50_us, p90_us, p99_us; /**< from the histogram; 0 when empty */
  uint64_t latency_buckets[DSYS_UPSTREAM_LAT_BUCKETS];
} dsys_endpoint_stats;

/** Service-level totals. */
typedef struct dsys_upstream_totals {
  uint64_t calls;              /**< calls started (call/send) */
  uint64_t replies;            /**< calls that ended with a reply */
  uint64_t errors;             /**< calls that ended with an error */
  uint64_t attempts;           /**< attempts of calls (the gateway's
                                    proxied requests are calls; not picks
                                    made with dsys_upstream_pick) */
  uint64_t retries;            /**< attempts after the first */
  uint64_t picks;              /**< successful picks (calls and gateway) */
  uint64_t panic_picks;
  uint64_t unavailable;        /**< picks failed with DSYS_EUNAVAIL */
  uint64_t breaker_rejected;   /**< picks failed with DSYS_EBREAKER */
  uint64_t endpoints;          /**< current members */
  int64_t p50_us, p90_us, p99_us; /**< whole-call latency (incl. retries) */
} dsys_upstream_totals;

/**
 * The latency-following features of an upstream: counters since it was
 * created and the current derived values. Filled by
 * dsys_upstream_latency_get(); size is set by the caller.
 */
typedef struct dsys_upstream_latency {
  size_t size;                 /**< sizeof(dsys_upstream_latency) */
  int64_t try_timeout_ms;      /**< adaptive per-try timeout now; 0: none
                                    (off, or too few answers) */
  int64_t hedge_delay_ms;      /**< hedge delay now; -1: no hedging */
  int64_t window_p_us;         /**< the window's timeout_percentile */
  uint64_t window_answers;     /**< answers in the window */
  uint64_t attempt_timeouts;   /**< attempts that ended DSYS_ETIMEDOUT */
  uint64_t slow_answers;       /**< answers slower than the adaptive timeout */
  uint64_t hedges;             /**< hedge attempts sent */
  uint64_t hedges_won;         /**< calls answered by their hedge */
  uint64_t slow_ejections;     /**< endpoints ejected for slowness */
} dsys_upstream_latency;

/**
 * Create an upstream. With a registry, it watches the registry and loads
 * the current healthy instances of the service type before returning.
 * @param opts may be NULL (static endpoints, defaults).
 * @return 0, DSYS_EINVAL (bad option, e.g. registry without service, or an
 *         invalid template), DSYS_ENOMEM, registry errors.
 */
DSYS_API int dsys_upstream_new(dsys_upstream **out,
                               const dsys_upstream_options *opts);

/**
 * Free an upstream: stops the registry watch, health checks and timers;
 * calls waiting for a backoff on the clock complete with DSYS_ECANCELED
 * (those waiting on an event loop's timer complete when it runs, with the
 * previous attempt's result, or canceled when the loop is freed); waits for
 * calls and probes in flight to complete (with its own client they are
 * canceled at once; with the caller's client they end by their timeouts).
 * After it returns no callback of this upstream runs. Every pick must have
 * been reported before. NULL-safe. Must not be called from a callback.
 */
DSYS_API void dsys_upstream_free(dsys_upstream *u);

/**
 * Add a static endpoint (strings copied). It is usable at once unless
 * active checks are on without start_healthy (then after its first
 * passing check).
 * @param weight 1..10000; 0 means 1.
 * @return 0, DSYS_EINVAL (empty or over-long id, NULL url), DSYS_EURL
 *         (malformed url), DSYS_ESCHEME (no transport for its scheme),
 *         DSYS_EEXIST, DSYS_ECLOSED, DSYS_ENOMEM.
 */
DSYS_API int dsys_upstream_add(dsys_upstream *u, const char *id,
                               const char *url, uint32_t weight);

/**
 * Remove an endpoint. Attempts in flight on it finish normally; their
 * reports still count in totals.
 * @return 0, DSYS_EINVAL, DSYS_ENOTFOUND.
 */
DSYS_API int dsys_upstream_remove(dsys_upstream *u, const char *id);

/** Number of endpoints (members, usable or not). */
DSYS_API size_t dsys_upstream_count(dsys_upstream *u);

/**
 * Call the service and wait. The call's url is ignored; method, path,
 * headers, body, on_chunk are used (timeout_ms is replaced by the per-try
 * timeout of the retry policy). Each attempt is made with dsys_client_do
 * on the calling thread (never the event loop's dialer). Backoffs sleep on
 * the upstream's clock (dsys_clock_sleep_us: a fake clock is advanced).
 * @param out receives the final reply, any status (dsys_reply_free);
 *        untouched on error.
 * @return 0 or an error (see the header comment).
 */
DSYS_API int dsys_upstream_call(dsys_upstream *u, const dsys_call *call,
                                dsys_reply **out);

/** What a call did, for dsys_upstream_call_ex(). */
typedef struct dsys_upstream_result {
  size_t size;                 /**< sizeof(dsys_upstream_result), or 0 */
  uint32_t attempts;
  int32_t last_retry_reason;   /**< dsys_retry_reason of the final decision */
  char endpoint[DSYS_UPSTREAM_ID_MAX + 1]; /**< id of the last endpoint tried
                                    ("" when none) */
} dsys_upstream_result;

/**
 * dsys_upstream_call() that also reports what happened.
 * @param res may be NULL; filled on success and on error.
 */
DSYS_API int dsys_upstream_call_ex(dsys_upstream *u, const dsys_call *call,
                                   dsys_reply **out, dsys_upstream_result *res);

/**
 * Completion of dsys_upstream_send(): exactly one of err and reply is set;
 * the callee owns reply. res (valid during the callback only) tells what
 * happened.
 */
typedef void (*dsys_upstream_fn)(int err, dsys_reply *reply,
                                 const dsys_upstream_result *res, void *ud);

/**
 * Start a call; cb runs exactly once when it completes. The request is
 * copied. Called on an event-loop thread, attempts to http:// and unix://
 * endpoints run on that loop's HTTP/1.1 dialer and cb runs on the loop;
 * elsewhere attempts go through the client. Backoffs are timers (the
 * loop's, else the clock's; no thread sleeps). If this returns an error
 * (including DSYS_EINVAL for a malformed call and DSYS_EUNAVAIL /
 * DSYS_EBREAKER for the first pick), cb never runs.
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM, DSYS_ECLOSED, DSYS_EUNAVAIL,
 *         DSYS_EBREAKER, client start errors.
 */
DSYS_API int dsys_upstream_send(dsys_upstream *u, const dsys_call *call,
                                dsys_upstream_fn cb, void *ud);

/**
 * Pick an endpoint for a request the caller performs itself. No
 * allocation; O(endpoints) at worst, O(1) typically.
 * @param key, keylen request key for the hashing policies (may be NULL/0).
 * @param exclude_id an endpoint to avoid when another is available (the
 *        one a retry just failed on), or NULL.
 * @param out filled on success; pass it to dsys_upstream_report().
 * @return 0, DSYS_EINVAL, DSYS_EUNAVAIL, DSYS_EBREAKER, DSYS_ECLOSED.
 */
DSYS_API int dsys_upstream_pick(dsys_upstream *u, const void *key,
                                size_t keylen, const char *exclude_id,
                                struct dsys_upstream_pick *out);

/**
 * Report the outcome of a picked request and release the pick (exactly
 * once per successful pick): records latency (since the pick) and outcome
 * on the breaker, health (outlier detection) and statistics. NULL-safe.
 * @param err 0 when a reply came, else the transport error.
 * @param status the HTTP status when err is 0.
 */
DSYS_API void dsys_upstream_report(dsys_upstream *u,
                                   struct dsys_upstream_pick *p,
                                   int err, int status);

/** The retry policy of the upstream (owned by it; valid until free), so
 *  that callers doing their own I/O follow the same rules and budget. */
DSYS_API dsys_retry *dsys_upstream_retry(dsys_upstream *u);

/**
 * The registry records of the upstream's registry members, as it last
 * applied them (id, name, url, metadata, tags, weight, health at the
 * time): its own view, read without asking the registry, so that a
 * status page answers at once while the registry is slow or electing.
 * Static endpoints (dsys_upstream_add) are not included.
 * @param arr receives one allocation (dsys_instances_copy; NULL when *n
 *        is 0) released with dsys_free().
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM. Thread: any.
 */
DSYS_API int dsys_upstream_instances(dsys_upstream *u, dsys_instance **arr,
                                     size_t *n);

/**
 * Per-endpoint statistics, ordered as the endpoints were added.
 * @param arr receives one allocation (NULL when *n is 0) released with
 *        dsys_free().
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_upstream_stats(dsys_upstream *u, dsys_endpoint_stats **arr,
                                 size_t *n);

/** Service-level totals. @return 0, DSYS_EINVAL. */
DSYS_API int dsys_upstream_totals_get(dsys_upstream *u,
                                      dsys_upstream_totals *out);

/** Latency-following figures (see dsys_upstream_latency).
 *  @param out its size field set; a smaller size gets a prefix.
 *  @return 0, DSYS_EINVAL. */
DSYS_API int dsys_upstream_latency_get(dsys_upstream *u, dsys_upstream_latency *out);

/** Lower bound in microseconds of latency bucket i (0 for i = 0;
 *  INT64_MAX for i >= DSYS_UPSTREAM_LAT_BUCKETS). */
DSYS_API int64_t dsys_upstream_bucket_lower_us(uint32_t i);

/** Restart round robin at the first endpoint (see dsys_balancer_reset).
 *  @return 0, DSYS_EINVAL. */
DSYS_API int dsys_upstream_reset_rr(dsys_upstream *u);

/** Force one endpoint's breaker state (dsys_breaker_set_state).
 *  @return 0, DSYS_EINVAL, DSYS_ENOTFOUND. */
DSYS_API int dsys_upstream_breaker_set(dsys_upstream *u, const char *id,
                                       dsys_breaker_state state);

#ifdef __cplusplus
}
#endif
#endif
