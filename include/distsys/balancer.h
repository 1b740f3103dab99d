/*
 * dsys_balancer: picks one endpoint among a set.
 *
 * Policies: round robin (the default; exact rotation over the available
 * endpoints), smooth weighted round robin (nginx), least request with the
 * power of two random choices (fewer requests in flight wins), random
 * (weighted), and consistent hashing on a request key: ring hash (virtual
 * nodes, ketama-like) or Maglev (lookup table).
 *
 * Each endpoint has an id, a weight and an "available" flag that the owner
 * sets (unhealthy, ejected or breaker open all mean "not available").
 * Unavailable endpoints are skipped. A pick may name an endpoint to exclude
 * (the one a retry just failed on): another available endpoint is chosen
 * when there is one, else the excluded one if it is available. When no
 * endpoint is available the balancer either panics (the default: picks among
 * all endpoints with the same policy, and says so in the result) or fails
 * fast with DSYS_EUNAVAIL. An empty balancer always fails with
 * DSYS_EUNAVAIL. No pick loops for longer than the number of endpoints (or
 * hash table entries).
 *
 * Every successful pick counts one request in flight on the endpoint; give
 * it back with dsys_balancer_release() when the request ends (least-request
 * uses these counts).
 *
 * Thread-safety: all functions may be called from any thread (one mutex per
 * balancer). No callbacks.
 */
#ifndef DSYS_BALANCER_H
#define DSYS_BALANCER_H

#include <distsys/common.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsys_balancer dsys_balancer;

/** Longest endpoint id, in bytes, without the NUL. */
#define DSYS_BALANCER_ID_MAX 255

/** Policies. */
typedef enum dsys_lb_policy {
  DSYS_LB_ROUND_ROBIN = 0,
  DSYS_LB_WEIGHTED_ROUND_ROBIN = 1,
  DSYS_LB_LEAST_REQUEST = 2,
  DSYS_LB_RANDOM = 3,
  DSYS_LB_RING_HASH = 4,
  DSYS_LB_MAGLEV = 5
} dsys_lb_policy;

/** What to do when no endpoint is available. */
typedef enum dsys_lb_none {
  DSYS_LB_PANIC = 0,     /**< pick among all endpoints; result.panic = 1 */
  DSYS_LB_FAIL_FAST = 1  /**< DSYS_EUNAVAIL */
} dsys_lb_none;

/** Balancer options. Zero fields take the defaults given. */
typedef struct dsys_balancer_options {
  size_t size;               /**< sizeof(dsys_balancer_options), or 0 */
  int32_t policy;            /**< dsys_lb_policy; default ROUND_ROBIN */
  int32_t when_none;         /**< dsys_lb_none; default PANIC */
  uint32_t ring_vnodes;      /**< ring hash points per unit of weight; default 160 */
  uint32_t maglev_size;      /**< Maglev table size, a prime; default 65537 */
  uint64_t seed;             /**< random choices; 0: random seed */
} dsys_balancer_options;

/** The endpoint a pick chose. */
typedef struct dsys_pick_result {
  void *ud;                  /**< the endpoint's user data */
  uint64_t handle;           /**< for dsys_balancer_release() */
  int32_t panic;             /**< 1 when chosen in panic mode */
  char id[DSYS_BALANCER_ID_MAX + 1];
} dsys_pick_result;

/** Per-endpoint figures. */
typedef struct dsys_balancer_endpoint_info {
  uint32_t weight;
  int32_t available;
  uint32_t active;           /**< requests in flight */
  uint64_t picks;            /**< total picks */
} dsys_balancer_endpoint_info;

/**
 * Create a balancer. @param opts may be NULL.
 * @return 0, DSYS_EINVAL (unknown policy, maglev_size not a prime or over
 *         1000003), DSYS_ENOMEM.
 */
DSYS_API int dsys_balancer_new(dsys_balancer **out,
                               const dsys_balancer_options *opts);

/** Free a balancer. NULL-safe. No other call on it may be running. */
DSYS_API void dsys_balancer_free(dsys_balancer *b);

/**
 * Add an endpoint (available, no requests in flight).
 * @param id copied; 1..DSYS_BALANCER_ID_MAX bytes.
 * @param weight 1..10000; 0 means 1.
 * @param ud returned by picks; owned by the caller.
 * @return 0, DSYS_EINVAL, DSYS_EEXIST (same id), DSYS_ENOMEM.
 */
DSYS_API int dsys_balancer_add(dsys_balancer *b, const char *id,
                               uint32_t weight, void *ud);

/** Remove an endpoint. Outstanding releases for it are ignored.
 *  @return 0, DSYS_EINVAL, DSYS_ENOTFOUND. */
DSYS_API int dsys_balancer_remove(dsys_balancer *b, const char *id);

/** Change a weight (1..10000; 0 means 1). @return 0, DSYS_EINVAL, DSYS_ENOTFOUND. */
DSYS_API int dsys_balancer_set_weight(dsys_balancer *b, const char *id,
                                      uint32_t weight);

/** Mark an endpoint available (nonzero) or not. @return 0, DSYS_EINVAL, DSYS_ENOTFOUND. */
DSYS_API int dsys_balancer_set_available(dsys_balancer *b, const char *id,
                                         int available);

/** Number of endpoints (available or not). */
DSYS_API size_t dsys_balancer_count(dsys_balancer *b);

/**
 * Pick an endpoint.
 * @param key, key_len the request key for the hashing policies (ignored by
 *        the others); NULL/0 hashes the empty key.
 * @param exclude id to avoid if another endpoint is available, or NULL.
 * @param out receives the choice.
 * @return 0, DSYS_EINVAL, DSYS_EUNAVAIL (empty, or none available in
 *         fail-fast mode).
 */
DSYS_API int dsys_balancer_pick(dsys_balancer *b, const void *key,
                                size_t key_len, const char *exclude,
                                dsys_pick_result *out);

/** End a picked request (decrements its in-flight count). NULL-safe. */
DSYS_API void dsys_balancer_release(dsys_balancer *b, const dsys_pick_result *r);

/**
 * Reset the rotation state: round robin starts again at the first endpoint
 * (in the order added) and smooth weighted round robin forgets its current
 * weights. Other policies are unaffected. @return 0, DSYS_EINVAL.
 */
DSYS_API int dsys_balancer_reset(dsys_balancer *b);

/** Figures of one endpoint. @return 0, DSYS_EINVAL, DSYS_ENOTFOUND. */
DSYS_API int dsys_balancer_endpoint(dsys_balancer *b, const char *id,
                                    dsys_balancer_endpoint_info *out);

/** Name of a policy ("round_robin", ...) or NULL for an unknown value. */
DSYS_API const char *dsys_lb_policy_name(int policy);

/** Policy from its name ("round_robin" or "round-robin": - and _ are the
 *  same). @return 0, DSYS_EINVAL. */
DSYS_API int dsys_lb_policy_parse(const char *name, int32_t *out);

#ifdef __cplusplus
}
#endif
#endif
