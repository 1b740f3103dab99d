/*
 * dsys_breaker: a circuit breaker per endpoint (or per dependency).
 *
 * States: CLOSED (calls flow, outcomes are recorded in a sliding window),
 * OPEN (calls are rejected until the wait duration has passed), HALF_OPEN
 * (a limited number of trial calls decide between CLOSED and OPEN), plus
 * FORCED_OPEN (rejects until the caller changes the state) and DISABLED
 * (always permits, records nothing).
 *
 * CLOSED -> OPEN when, with at least minimum_calls calls in the window, the
 * failure rate reaches failure_rate_pct or the slow-call rate reaches
 * slow_rate_pct; or, independently of the window, when failures_n failures
 * happened within failures_window_ms (the "N failures within T" rule, for
 * low-traffic dependencies). OPEN -> HALF_OPEN lazily, on the first
 * dsys_breaker_acquire() or dsys_breaker_state() after open_wait_ms.
 * HALF_OPEN permits half_open_calls trial calls; once all of them have been
 * recorded the rates over those calls decide: below both thresholds ->
 * CLOSED (window cleared), else OPEN again.
 *
 * Every call is O(1): the count window is a ring of outcomes, the time
 * window a ring of one-second buckets, the N-in-T rule a ring of the last N
 * failure times. All timestamps come from the breaker's dsys_clock.
 *
 * Thread-safety: every function may be called from any thread; one mutex per
 * breaker. The event callback runs on the thread whose call caused the
 * transition, after the breaker's lock is released; it may call the
 * breaker's functions but must not free it.
 */
#ifndef DSYS_BREAKER_H
#define DSYS_BREAKER_H

#include <distsys/common.h>
#include <distsys/clock.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsys_breaker dsys_breaker;

/** Breaker states. */
typedef enum dsys_breaker_state {
  DSYS_BREAKER_CLOSED = 0,
  DSYS_BREAKER_OPEN = 1,
  DSYS_BREAKER_HALF_OPEN = 2,
  DSYS_BREAKER_FORCED_OPEN = 3,
  DSYS_BREAKER_DISABLED = 4
} dsys_breaker_state;

/** Sliding window kinds. */
typedef enum dsys_breaker_window {
  DSYS_BREAKER_WINDOW_COUNT = 0, /**< the last window_size calls */
  DSYS_BREAKER_WINDOW_TIME = 1   /**< the calls of the last window_size seconds */
} dsys_breaker_window;

/** What a recorded call did. */
typedef enum dsys_breaker_result {
  DSYS_BREAKER_SUCCESS = 0,
  DSYS_BREAKER_FAILURE = 1,
  DSYS_BREAKER_IGNORED = 2 /**< not counted (e.g. a 4xx); releases the permit */
} dsys_breaker_result;

/** A permit from dsys_breaker_acquire(), handed back to dsys_breaker_record(). */
typedef uint64_t dsys_breaker_permit;

/**
 * Transition callback: from -> to. name is the breaker's name (or "").
 * See the header comment for the thread.
 */
typedef void (*dsys_breaker_event_fn)(void *ud, const char *name,
                                      dsys_breaker_state from,
                                      dsys_breaker_state to);

/** Breaker options. Zero fields take the defaults given. */
typedef struct dsys_breaker_options {
  size_t size;                /**< sizeof(dsys_breaker_options), or 0 */
  dsys_clock *clock;          /**< default dsys_clock_real() */
  const char *name;           /**< copied; for events and logs; default "" */
  int32_t window_type;        /**< dsys_breaker_window; default COUNT */
  uint32_t window_size;       /**< calls (COUNT, default 100) or seconds
                                   (TIME, default 60); at most 100000 */
  uint32_t minimum_calls;     /**< default 10 */
  uint32_t failure_rate_pct;  /**< 1..100, default 50 */
  uint32_t slow_rate_pct;     /**< 1..100, default 100 */
  int64_t slow_call_us;       /**< a call at least this long is slow; default 60 s */
  uint32_t failures_n;        /**< N of "N failures within T"; 0: rule off */
  int64_t failures_window_ms; /**< T; default 60000 */
  int64_t open_wait_ms;       /**< time in OPEN before HALF_OPEN; default 30000 */
  uint32_t half_open_calls;   /**< trial calls in HALF_OPEN; default 5 */
  dsys_breaker_event_fn on_event; /**< optional */
  void *event_ud;
} dsys_breaker_options;

/** Counters and current window figures. */
typedef struct dsys_breaker_stats {
  int32_t state;             /**< dsys_breaker_state */
  uint32_t window_calls;     /**< calls in the current window */
  uint32_t window_failures;
  uint32_t window_slow;
  uint64_t calls;            /**< recorded calls, all time (not IGNORED) */
  uint64_t failures;
  uint64_t slow_calls;
  uint64_t rejected;         /**< acquire refused */
  uint64_t transitions;
} dsys_breaker_stats;

/**
 * Create a breaker in CLOSED.
 * @param opts may be NULL (all defaults).
 * @return 0, DSYS_EINVAL (out of range option), DSYS_ENOMEM.
 */
DSYS_API int dsys_breaker_new(dsys_breaker **out, const dsys_breaker_options *opts);

/** Free a breaker. NULL-safe. No other call on it may be running. */
DSYS_API void dsys_breaker_free(dsys_breaker *b);

/**
 * May I call? On success the caller must later pass the permit to
 * dsys_breaker_record() exactly once (DSYS_BREAKER_IGNORED if the call was
 * not made). May move OPEN -> HALF_OPEN (event).
 * @param permit receives the permit (may be NULL only in CLOSED/DISABLED use
 *        where the caller records with permit 0, which counts in CLOSED only).
 * @return 0 (permitted) or DSYS_EBREAKER (rejected); DSYS_EINVAL for NULL b.
 */
DSYS_API int dsys_breaker_acquire(dsys_breaker *b, dsys_breaker_permit *permit);

/**
 * Record the outcome of a permitted call. A permit from an earlier state
 * (the breaker changed state since the acquire) is not counted. May move
 * CLOSED -> OPEN or HALF_OPEN -> CLOSED/OPEN (event).
 * @param result a dsys_breaker_result.
 * @param duration_us how long the call took (slow-call detection).
 * @return 0, DSYS_EINVAL.
 */
DSYS_API int dsys_breaker_record(dsys_breaker *b, dsys_breaker_permit permit,
                                 int result, int64_t duration_us);

/**
 * Current state; moves OPEN -> HALF_OPEN (with its event) when the wait has
 * passed. DSYS_BREAKER_CLOSED for NULL.
 */
DSYS_API dsys_breaker_state dsys_breaker_state_get(dsys_breaker *b);

/**
 * Force a state: FORCED_OPEN, DISABLED, or CLOSED (reset: windows cleared),
 * also OPEN (starts the wait) and HALF_OPEN. Fires an event when it changes.
 * @return 0, DSYS_EINVAL.
 */
DSYS_API int dsys_breaker_set_state(dsys_breaker *b, dsys_breaker_state state);

/** Copy the counters. @return 0, DSYS_EINVAL. */
DSYS_API int dsys_breaker_stats_get(dsys_breaker *b, dsys_breaker_stats *out);

/** Name of a state ("closed", "open", "half-open", "forced-open", "disabled"). */
DSYS_API const char *dsys_breaker_state_name(dsys_breaker_state s);

#ifdef __cplusplus
}
#endif
#endif
