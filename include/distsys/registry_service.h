/*
 * dsys_registry_service: the registry daemon's HTTP API (the "Registry"
 * section of the deployment's HTTP contract) as a module mounted on a
 * dsys_server over a dsys_registry of any backend.
 *
 * Routes: POST /api/registry/register, /heartbeat, /deregister;
 * GET /api/registry/services[?type=&healthy=], /services/:type[?healthy=],
 * /service/:id; GET /health and /api/registry/health.
 *
 * Blocking queries: GET /api/registry/services and /services/:type accept
 * ?index=N&wait=D. The answer comes when the registry's change index
 * exceeds N (any change, like Consul) or after D ("250ms", "5s", "1m", or
 * a bare number of milliseconds; capped at max_wait_ms), without holding a
 * server thread: the request is deferred and answered from the registry's
 * watch callback or a timer on the service's clock. Every /api/registry/
 * answer carries the current index in the X-Dsys-Index header and an
 * X-Dsys-Epoch header that changes whenever the service is mounted again
 * (a restarted daemon); list answers also carry "index" in the body.
 *
 * Service identity: with options.identity set, only instances holding an
 * identity token for their own name and type can register, heartbeat and
 * deregister (see include/distsys/identity.h), so no rogue process can
 * register itself and receive traffic.
 *
 * Thread-safety: mount before dsys_server_listen. drain and free may be
 * called from any thread, but not concurrently with each other.
 */
#ifndef DSYS_REGISTRY_SERVICE_H
#define DSYS_REGISTRY_SERVICE_H

#include <distsys/common.h>
#include <distsys/clock.h>
#include <distsys/server.h>
#include <distsys/registry.h>
#include <distsys/identity.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsys_registry_service dsys_registry_service;

/** Options. Zero fields take the defaults given. */
typedef struct dsys_registry_service_options {
  size_t size;               /**< sizeof(dsys_registry_service_options), or 0 */
  dsys_clock *clock;         /**< timestamps, uptime and blocking-query
                                  waits; use the registry's clock; default
                                  real */
  int64_t max_wait_ms;       /**< cap on ?wait=, default 60000 */
  int64_t default_wait_ms;   /**< ?index= without ?wait=, default 30000 */
  const char *name;          /**< "service" in /health, default
                                  "service-registry" */
  /* appended */
  dsys_identity_verifier *identity; /**< when set, register, heartbeat and
                                  deregister need a valid X-Dsys-Identity
                                  token: 401 without one; 403 when its
                                  "sub" is not the instance's name or its
                                  "svc" not its serviceType (must outlive
                                  the service); reads stay open */
} dsys_registry_service_options;

/**
 * Mount the registry routes on srv (before dsys_server_listen) and watch
 * reg for blocking queries.
 * @param reg the registry served; must outlive the service.
 * @param o may be NULL.
 * @param out receives the service; free it with dsys_registry_service_free
 *        after the server stopped. After a failed mount, do not start the
 *        server: some routes may already point at the released module.
 * @return 0, DSYS_EINVAL, DSYS_ESTATE (server already listening),
 *         DSYS_ENOMEM.
 */
DSYS_API int dsys_registry_service_mount(dsys_server *srv, dsys_registry *reg,
                                         const dsys_registry_service_options *o,
                                         dsys_registry_service **out);

/**
 * Answer every parked blocking query now, and answer later ones at once:
 * call before dsys_server_stop so that a graceful stop is not held up by
 * long polls. NULL-safe.
 */
DSYS_API void dsys_registry_service_drain(dsys_registry_service *svc);

/**
 * Drain, stop watching the registry, wait for running timers and free.
 * Call after dsys_server_stop (the routes point at the service). NULL-safe.
 */
DSYS_API void dsys_registry_service_free(dsys_registry_service *svc);

/** Number of blocking queries parked right now (for tests and metrics). */
DSYS_API size_t dsys_registry_service_parked(dsys_registry_service *svc);

#ifdef __cplusplus
}
#endif
#endif
