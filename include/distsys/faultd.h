/*
 * dsys_faultd: the deployment's fault detector as a mountable service (the
 * "Fault detector" section of docs/reference/http-api.md; reference page
 * docs/reference/faultd.md).
 *
 * It learns service instances from a registry (a watch plus a full
 * comparison at every check cycle) or from static targets, and checks every
 * instance's GET /health, and the gateway's, every interval_ms with
 * asynchronous calls bounded by timeout_ms: no thread waits for a check.
 * An instance that appears in the registry is checked at once (one check
 * in flight per instance), not at the next cycle.
 * fail_threshold consecutive failures make an instance CRITICAL (a
 * `service-failure` event and alert); a success after that is a
 * `service-recovery`; an answer slower than slow_ms is a `slow-response`.
 * An instance that disappears from the registry is not dropped silently:
 * it stays listed with "registered": false and keeps being checked (status
 * "unknown" while it still answers, failures counted as usual), until it
 * registers again or forget_ms passes; one that deregistered and then
 * stops answering is removed. The gateway's /api/metrics is fetched every
 * cycle and mirrored.
 *
 * Routes: GET /, GET /health, GET /api/status, GET /api/status/:type,
 * POST /api/check (deferred: answered when a fresh cycle completes),
 * GET /api/metrics, GET /api/events (Server-Sent Events).
 * Alerts are also appended as JSON lines to alert_log when set.
 *
 * Thread-safety: configure (add_target) before dsys_faultd_mount; the
 * other functions may be called from any thread. Call dsys_faultd_shutdown
 * before stopping the server and dsys_faultd_free after it stopped.
 */
#ifndef DSYS_FAULTD_H
#define DSYS_FAULTD_H

#include <distsys/common.h>
#include <distsys/clock.h>
#include <distsys/registry.h>
#include <distsys/server.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsys_faultd dsys_faultd;

/** Options. Zero fields take the defaults given. */
typedef struct dsys_faultd_options {
  size_t size;               /**< sizeof(dsys_faultd_options), or 0 */
  dsys_registry *registry;   /**< instances to check (not owned; must
                                  outlive the detector); NULL: static
                                  targets only */
  dsys_clock *clock;         /**< intervals, timeouts, timestamps; default real */
  const char *gateway_url;   /**< the gateway ("http://127.0.0.1:3000"), or NULL */
  int64_t interval_ms;       /**< check cycle, default 5000 */
  int64_t timeout_ms;        /**< per check, default 3000 */
  int64_t slow_ms;           /**< a slower answer is slow, default 1000 */
  uint32_t fail_threshold;   /**< consecutive failures for CRITICAL, default 3 */
  int64_t forget_ms;         /**< how long an instance gone from the
                                  registry stays listed, default 600000 */
  const char *alert_log;     /**< JSON-lines alert file (appended), or NULL */
  int64_t heartbeat_ms;      /**< SSE heartbeat comment, default 15000 */
  const char *name;          /**< "service" in /health, default "fault-detector" */
  /* appended */
  const struct dsys_client_options *client; /**< TLS of the checks: its
                                  tls_* fields (CA, client certificate for
                                  instances that require one) are used;
                                  copied; NULL: the system store */
  struct dsys_election *election; /**< appended: several detectors, one
                                  alerting: when set, alert lines (the
                                  alert log and the log) are written only
                                  while this detector leads the election;
                                  every detector keeps checking and serving
                                  status and events. Not owned. NULL: this
                                  detector always alerts */
} dsys_faultd_options;

/**
 * Create a detector (not checking yet).
 * @param opts may be NULL.
 * @return 0, DSYS_EINVAL (out NULL, negative times), DSYS_ENOMEM.
 */
DSYS_API int dsys_faultd_new(dsys_faultd **out, const dsys_faultd_options *opts);

/**
 * Add a static target (checked like a registry instance, never forgotten).
 * @param type service type ("data"); name shown as its name; url its base
 *        URL ("http://127.0.0.1:4002", "inproc://x").
 * @return 0, DSYS_EINVAL, DSYS_EURL (malformed url), DSYS_ESCHEME (no
 *         transport for its scheme), DSYS_EEXIST (same name and type),
 *         DSYS_ENOMEM, DSYS_ESTATE (already mounted).
 */
DSYS_API int dsys_faultd_add_target(dsys_faultd *fd, const char *type,
                                    const char *name, const char *url);

/**
 * Mount the routes on srv (before dsys_server_listen), watch the registry
 * and start the check cycles: the first starts in this call (its checks
 * complete asynchronously), then one every interval_ms.
 * @return 0, DSYS_EINVAL, DSYS_ESTATE (mounted already, or server
 *         listening), DSYS_ENOMEM.
 */
DSYS_API int dsys_faultd_mount(dsys_faultd *fd, dsys_server *srv);

/**
 * Stop checking, answer waiting POST /api/check requests (503) and end
 * every event stream. Call before dsys_server_stop. NULL-safe; idempotent.
 */
DSYS_API void dsys_faultd_shutdown(dsys_faultd *fd);

/** Shut down if needed, cancel running checks, free. Call after the server
 *  stopped. NULL-safe. */
DSYS_API void dsys_faultd_free(dsys_faultd *fd);

/** Number of check cycles completed so far (tests, metrics). */
DSYS_API uint64_t dsys_faultd_cycles(dsys_faultd *fd);

/**
 * The JSON of GET /api/status as text.
 * @param out released with dsys_free().
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_faultd_status_json(dsys_faultd *fd, char **out);

#ifdef __cplusplus
}
#endif
#endif
