/*
 * dsys_health: per-endpoint health state from active checks and passive
 * outlier detection.
 *
 * Active checks: every interval (plus a random jitter in [0, jitter]) the
 * checker calls the caller's probe function for each endpoint; the probe
 * starts the check asynchronously and reports its result exactly once with
 * dsys_health_report() (from any thread, even from inside the probe). A
 * check that has not reported within the timeout counts as failed; a late
 * report is ignored. rise consecutive passes make an UNHEALTHY endpoint
 * HEALTHY, fall consecutive failures make a HEALTHY one UNHEALTHY. A new
 * endpoint is PENDING and gets no traffic until its first passing check
 * (unless start_healthy is set); without a probe function active checking is
 * off and endpoints start HEALTHY.
 *
 * Passive outlier detection (dsys_health_observe): a refused connection
 * (DSYS_OUTCOME_NOT_SENT) ejects the endpoint at once; consecutive failures
 * (timeouts, resets, protocol errors, 5xx; default 5) eject it, when at
 * least half of the other usable endpoints have no failure streak (else
 * they fail alike: something they share fails, e.g. their database;
 * skipped, counted in skipped_ejections). An ejection
 * lasts base_ejection_ms times the endpoint's ejection count, capped at
 * max_ejection_ms; the count goes back to 0 after the endpoint has stayed
 * un-ejected for max_ejection_ms. The last usable endpoint is never ejected
 * by outlier detection (counted in skipped_ejections).
 *
 * Ejection for slowness (consecutive_slow > 0): consecutive timeouts, or
 * answers its caller found too slow (dsys_health_observe_slow()), eject the
 * endpoint too, when at least half of the other usable endpoints have no
 * such streak (else the traffic is slow, not the endpoint: skipped, counted
 * in skipped_ejections). Such an ejection lasts at least slow_ejection_ms times the
 * ejection count (capped at max_ejection_ms); with active checks it then
 * lasts until a check passes (one that passed meanwhile counts), so an
 * instance that stalls comes back as soon as it answers its checks again,
 * and one that still hangs stays out. Without active checks it ends after
 * that time.
 *
 * While an endpoint does not take traffic (PENDING, UNHEALTHY or ejected)
 * its active checks run every down_interval_ms, so that it comes back soon
 * after it recovers.
 *
 * An endpoint is usable when it is HEALTHY and not ejected.
 *
 * All timers run on the checker's dsys_clock. Callbacks (probe, event) run
 * with no library lock held: on the clock's timer thread (real clock), inside
 * dsys_clock_advance() (fake clock), or on the thread that called
 * dsys_health_observe()/dsys_health_report() for changes they cause.
 *
 * Thread-safety: all functions may be called from any thread except
 * dsys_health_free(), which must not run concurrently with other calls on the
 * same checker nor from one of its callbacks.
 */
#ifndef DSYS_HEALTH_H
#define DSYS_HEALTH_H

#include <distsys/common.h>
#include <distsys/clock.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsys_health dsys_health;

/** Active-check state. */
typedef enum dsys_health_state {
  DSYS_HEALTH_PENDING = 0,  /**< no check has passed yet */
  DSYS_HEALTH_HEALTHY = 1,
  DSYS_HEALTH_UNHEALTHY = 2
} dsys_health_state;

/** Events. */
typedef enum dsys_health_event {
  DSYS_HEALTH_EV_HEALTHY = 0,
  DSYS_HEALTH_EV_UNHEALTHY = 1,
  DSYS_HEALTH_EV_EJECTED = 2,
  DSYS_HEALTH_EV_UNEJECTED = 3,
  DSYS_HEALTH_EV_EJECTED_SLOW = 4 /**< ejected for slowness (see above) */
} dsys_health_event;

/**
 * Start one active check of endpoint id. Report the result later with
 * dsys_health_report(h, token, passed). Return 0 when the check started; a
 * nonzero return counts as a failed check and no report may follow.
 */
typedef int (*dsys_health_probe_fn)(void *ud, dsys_health *h, const char *id,
                                    const char *url, uint64_t token);

/** A state change: usable tells whether the endpoint now takes traffic. */
typedef void (*dsys_health_event_fn)(void *ud, const char *id,
                                     dsys_health_event ev, int usable);

/** Options. Zero fields take the defaults given. */
typedef struct dsys_health_options {
  size_t size;                 /**< sizeof(dsys_health_options), or 0 */
  dsys_clock *clock;           /**< default real */
  int64_t interval_ms;         /**< default 2000 */
  int64_t jitter_ms;           /**< default interval / 10; -1: none */
  int64_t timeout_ms;          /**< default 1000 */
  uint32_t rise;               /**< default 2 */
  uint32_t fall;               /**< default 3 */
  int32_t start_healthy;       /**< nonzero: new endpoints take traffic at once */
  dsys_health_probe_fn probe;  /**< NULL: no active checks */
  void *probe_ud;
  uint32_t consecutive_failures; /**< outlier threshold; default 5 */
  int64_t base_ejection_ms;    /**< default 30000 */
  int64_t max_ejection_ms;     /**< default 300000 */
  int32_t outlier_off;         /**< nonzero: no passive outlier detection */
  dsys_health_event_fn on_event;
  void *event_ud;
  uint64_t seed;               /**< jitter; 0: random */
  /* appended: slowness */
  uint32_t consecutive_slow;   /**< timeouts or slow answers in a row that
                                    eject for slowness; 0: off (default) */
  int64_t slow_ejection_ms;    /**< shortest ejection for slowness, times
                                    the ejection count; default 1000 */
  int64_t down_interval_ms;    /**< active checks of an endpoint that takes
                                    no traffic; default interval_ms */
} dsys_health_options;

/** Per-endpoint figures. */
typedef struct dsys_health_info {
  int32_t state;               /**< dsys_health_state */
  int32_t ejected;
  int32_t usable;
  uint32_t consecutive_passes;
  uint32_t consecutive_fails;  /**< active checks */
  uint32_t outlier_failures;   /**< consecutive passive failures */
  uint32_t ejection_count;     /**< current multiplier */
  uint64_t checks, checks_failed, ejections;
  int64_t ejected_until_ms;    /**< monotonic clock ms, 0 when not ejected */
} dsys_health_info;

/** Checker-wide counters. */
typedef struct dsys_health_counters {
  uint64_t checks, checks_failed, timeouts, transitions, ejections,
      skipped_ejections;
} dsys_health_counters;

/** Create a checker. @return 0, DSYS_EINVAL, DSYS_ENOMEM. */
DSYS_API int dsys_health_new(dsys_health **out, const dsys_health_options *opts);

/**
 * Free a checker: cancels its timers and waits for running timer callbacks.
 * Reports for checks still in flight must not be made after this returns.
 * NULL-safe.
 */
DSYS_API void dsys_health_free(dsys_health *h);

/**
 * Add an endpoint (id and url copied). With active checks, its first check
 * runs after a random delay in [0, jitter].
 * @return 0, DSYS_EINVAL, DSYS_EEXIST, DSYS_ENOMEM.
 */
DSYS_API int dsys_health_add(dsys_health *h, const char *id, const char *url);

/** Remove an endpoint; its pending check's report is ignored.
 *  @return 0, DSYS_EINVAL, DSYS_ENOTFOUND. */
DSYS_API int dsys_health_remove(dsys_health *h, const char *id);

/**
 * Report an active check result for the token given to the probe.
 * @return 0 (counted), DSYS_ENOTFOUND (unknown, stale or timed-out token).
 */
DSYS_API int dsys_health_report(dsys_health *h, uint64_t token, int passed);

/**
 * Passive observation of a real call's outcome (a dsys_outcome value).
 * OK and CLIENT_ERROR reset the failure and slowness streaks; NOT_SENT
 * ejects at once; TIMEOUT, RESET, PROTOCOL and SERVER_ERROR extend the
 * failure streak, TIMEOUT the slowness streak too; LOCAL is ignored.
 * @return 0, DSYS_EINVAL, DSYS_ENOTFOUND.
 */
DSYS_API int dsys_health_observe(dsys_health *h, const char *id, int outcome);

/**
 * Passive observation of an answer that came but too slowly (its caller
 * decides what is too slow, e.g. dsys_upstream: slower than its adaptive
 * per-try timeout): extends the slowness streak like a timeout, leaves the
 * failure streak alone. A no-op unless consecutive_slow is set.
 * @return 0, DSYS_EINVAL, DSYS_ENOTFOUND.
 */
DSYS_API int dsys_health_observe_slow(dsys_health *h, const char *id);

/** Nonzero when the endpoint takes traffic (HEALTHY and not ejected). */
DSYS_API int dsys_health_usable(dsys_health *h, const char *id);

/** Figures of one endpoint. @return 0, DSYS_EINVAL, DSYS_ENOTFOUND. */
DSYS_API int dsys_health_info_get(dsys_health *h, const char *id,
                                  dsys_health_info *out);

/** Checker-wide counters. @return 0, DSYS_EINVAL. */
DSYS_API int dsys_health_counters_get(dsys_health *h, dsys_health_counters *out);

#ifdef __cplusplus
}
#endif
#endif
