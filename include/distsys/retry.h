/*
 * dsys_retry: retry policy. Decides, after each attempt, whether to retry at
 * once on another endpoint, retry after a backoff, or stop; computes
 * full-jitter exponential backoff and per-try timeouts; and enforces a retry
 * budget so that retries cannot multiply an outage.
 *
 * Rules of dsys_retry_decide():
 *  - success (DSYS_OUTCOME_OK) and local errors (DSYS_OUTCOME_LOCAL): stop;
 *  - no attempts left, or the total deadline reached: stop;
 *  - never sent (DSYS_OUTCOME_NOT_SENT, e.g. connection refused): retry at
 *    once (no backoff) on another endpoint, whatever the method;
 *  - after the request was sent, only idempotent methods (GET, HEAD,
 *    OPTIONS, PUT, DELETE) or requests with an Idempotency-Key are retried:
 *    on a timeout, reset or protocol error, or on a reply whose status is in
 *    the retryable list (default 502, 503, 504) — after a backoff;
 *  - but after a timeout the abandoned attempt may still be on its way and
 *    land later, after newer writes of other clients (a late PUT would
 *    overwrite them): then only safe methods (GET, HEAD, OPTIONS), requests
 *    with an Idempotency-Key and conditional requests (If-Match,
 *    If-Unmodified-Since: a late duplicate fails its precondition) are
 *    retried; a plain PUT or DELETE stops (DSYS_RETRY_R_MAY_LAND_LATE);
 *  - each retry must fit the retry budget: over a sliding window of
 *    budget_window_s seconds, retries <= budget_min_per_s * window +
 *    budget_ratio_pct% of the requests counted by dsys_retry_request().
 * A retry should go to a different endpoint whenever one is available (pass
 * the previous one as the balancer's exclude).
 *
 * Outcome classes are the dsys_outcome values of <distsys/client.h>.
 *
 * Thread-safety: a policy may be shared by many threads; the budget and
 * random generator are protected by a mutex.
 */
#ifndef DSYS_RETRY_H
#define DSYS_RETRY_H

#include <distsys/common.h>
#include <distsys/clock.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsys_retry dsys_retry;

/** Retry policy options. Zero fields take the defaults given. */
typedef struct dsys_retry_options {
  size_t size;                  /**< sizeof(dsys_retry_options), or 0 */
  dsys_clock *clock;            /**< budget window clock; default real */
  uint32_t max_attempts;        /**< including the first; default 3 */
  int64_t per_try_timeout_ms;   /**< default 5000; -1: none */
  int64_t deadline_ms;          /**< whole request incl. retries; default 15000; -1: none */
  int64_t backoff_base_ms;      /**< default 25 */
  int64_t backoff_cap_ms;       /**< default 1000 */
  const int32_t *retry_statuses;/**< copied; default {502, 503, 504} */
  size_t n_retry_statuses;
  uint32_t budget_ratio_pct;    /**< default 20 */
  uint32_t budget_min_per_s;    /**< default 10 */
  uint32_t budget_window_s;     /**< default 10, at most 3600 */
  int32_t budget_off;           /**< nonzero: no budget */
  uint64_t seed;                /**< jitter seed; 0: random */
} dsys_retry_options;

/** What to do next. */
typedef enum dsys_retry_action {
  DSYS_RETRY_STOP = 0,
  DSYS_RETRY_NOW = 1,          /**< at once, on another endpoint */
  DSYS_RETRY_AFTER_BACKOFF = 2 /**< after delay_ms, preferably another endpoint */
} dsys_retry_action;

/** Why (mostly why not). */
typedef enum dsys_retry_reason {
  DSYS_RETRY_R_RETRYABLE = 0,
  DSYS_RETRY_R_SUCCESS = 1,
  DSYS_RETRY_R_NOT_RETRYABLE = 2, /**< outcome/status not retryable */
  DSYS_RETRY_R_NOT_IDEMPOTENT = 3,
  DSYS_RETRY_R_ATTEMPTS = 4,
  DSYS_RETRY_R_DEADLINE = 5,
  DSYS_RETRY_R_BUDGET = 6,
  DSYS_RETRY_R_MAY_LAND_LATE = 7 /**< a timed-out unconditional write: not resent */
} dsys_retry_reason;

/** The attempt that just finished. */
typedef struct dsys_retry_input {
  size_t size;                /**< sizeof(dsys_retry_input), or 0 */
  const char *method;         /**< HTTP method, upper case; NULL = "GET" */
  int32_t has_idempotency_key;/**< the request carries Idempotency-Key */
  int32_t outcome;            /**< dsys_outcome */
  int32_t status;             /**< HTTP status when a reply came, else 0 */
  uint32_t attempt;           /**< 1 for the first attempt */
  int64_t elapsed_ms;         /**< since the request started */
  int32_t has_precondition;   /**< If-Match or If-Unmodified-Since */
} dsys_retry_input;

/** The decision. */
typedef struct dsys_retry_decision {
  int32_t action;             /**< dsys_retry_action */
  int32_t reason;             /**< dsys_retry_reason */
  int64_t delay_ms;           /**< wait before the next attempt */
  int64_t timeout_ms;         /**< timeout for the next attempt (-1: none) */
} dsys_retry_decision;

/**
 * Create a policy. @param opts may be NULL.
 * @return 0, DSYS_EINVAL (bad option), DSYS_ENOMEM.
 */
DSYS_API int dsys_retry_new(dsys_retry **out, const dsys_retry_options *opts);

/** Free a policy. NULL-safe. */
DSYS_API void dsys_retry_free(dsys_retry *r);

/** Count one new request (first attempt) toward the retry budget. */
DSYS_API void dsys_retry_request(dsys_retry *r);

/**
 * Decide after an attempt. A retry decision consumes one unit of budget.
 * @return 0 (decision in *out), DSYS_EINVAL.
 */
DSYS_API int dsys_retry_decide(dsys_retry *r, const dsys_retry_input *in,
                               dsys_retry_decision *out);

/**
 * Full-jitter backoff before retry number n (n >= 1): a uniform value in
 * [0, min(cap, base * 2^(n-1))] ms.
 */
DSYS_API int64_t dsys_retry_backoff_ms(dsys_retry *r, uint32_t n);

/**
 * Timeout for an attempt starting elapsed_ms into the request: the per-try
 * timeout bounded by what is left of the deadline; 0 when the deadline has
 * passed; -1 when neither limit is set.
 */
DSYS_API int64_t dsys_retry_try_timeout_ms(dsys_retry *r, int64_t elapsed_ms);

/** Nonzero when the method is idempotent (GET, HEAD, OPTIONS, PUT, DELETE). */
DSYS_API int dsys_method_idempotent(const char *method);

/**
 * Nonzero when the method is safe (GET, HEAD, OPTIONS; NULL = GET): it
 * changes nothing, so a copy may be sent while an earlier attempt is still
 * on its way.
 */
DSYS_API int dsys_method_safe(const char *method);

/** Budget counters: requests and retries in the current window. */
DSYS_API void dsys_retry_budget_get(dsys_retry *r, uint64_t *requests,
                                    uint64_t *retries);

#ifdef __cplusplus
}
#endif
#endif
