/*
 * dsys_registration: keeps one service instance registered in a registry
 * (any backend; usually the http backend pointing at dsys-registryd).
 *
 * dsys_registration_start registers the instance, then heartbeats every
 * heartbeat_ms on the given clock. A heartbeat answered "not found" (the
 * registry restarted, or reaped the instance) registers it again. While the
 * registry cannot be reached the agent retries every retry_ms, logging once
 * per outage (a warning) and once when it is back (info).
 * dsys_registration_stop deregisters the instance and frees the agent.
 *
 * Registry calls run on the agent's own thread, never on the clock's timer
 * thread, so a slow registry delays nothing else.
 *
 * Thread-safety: the functions may be called from any thread; stop must be
 * called exactly once per started agent.
 */
#ifndef DSYS_REGISTRATION_H
#define DSYS_REGISTRATION_H

#include <distsys/common.h>
#include <distsys/clock.h>
#include <distsys/registry.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsys_registration dsys_registration;

/** Options. Zero fields take the defaults given. */
typedef struct dsys_registration_options {
  size_t size;               /**< sizeof(dsys_registration_options), or 0 */
  dsys_clock *clock;         /**< default real */
  int64_t heartbeat_ms;      /**< default 10000 */
  int64_t retry_ms;          /**< while unregistered or unreachable; default
                                  2000, at most heartbeat_ms */
  int32_t require_registered; /**< 1: fail the start when the first
                                   registration fails for any reason */
} dsys_registration_options;

/**
 * Start an agent. The instance's strings are copied. The first registration
 * is tried before this returns.
 * @param reg the registry; must outlive the agent.
 * @param opts may be NULL.
 * @return 0 (registered, or the registry was unreachable and the agent
 *         keeps retrying, unless require_registered); DSYS_EINVAL (missing
 *         id/type/url, or the registry refused the instance as invalid);
 *         DSYS_ENOMEM; with require_registered, the registration's error.
 *         On failure nothing is started and *out is untouched.
 */
DSYS_API int dsys_registration_start(dsys_registration **out, dsys_registry *reg,
                                     const dsys_instance *inst,
                                     const dsys_registration_options *opts);

/**
 * Stop heartbeating, deregister the instance and free the agent.
 * NULL-safe (returns 0).
 * @return 0 (deregistered, or the registry did not know it), or the
 *         deregistration's error (the agent is freed all the same).
 */
DSYS_API int dsys_registration_stop(dsys_registration *a);

/** Agent counters, for tests, metrics and health pages. */
typedef struct dsys_registration_stats {
  uint64_t registrations;    /**< successful registrations (first included) */
  uint64_t heartbeats;       /**< successful heartbeats */
  uint64_t failures;         /**< failed registry calls */
  int32_t registered;        /**< 1 when the last call succeeded */
  int32_t last_error;        /**< error of the last failed call, or 0 */
} dsys_registration_stats;

/** Read the counters. @return 0, DSYS_EINVAL. */
DSYS_API int dsys_registration_stats_get(dsys_registration *a,
                                         dsys_registration_stats *out);

#ifdef __cplusplus
}
#endif
#endif
