/*
 * dsys_gateway: the reference deployment's load balancer as a mountable
 * service. Routes map path prefixes to upstream services (discovered from a
 * registry, or static URL lists); each upstream is a dsys_upstream (balancer,
 * health checks, outlier detection, breaker per endpoint, retry policy).
 *
 * On a server with event loops (dsys_server_options.event_loops > 0, http)
 * requests are proxied by the loop's own HTTP/1.1 keep-alive client, in the
 * loop that received them: no thread waits for an upstream. On any other
 * server (thread pool, inproc) the proxy uses dsys_upstream_send (libcurl).
 * Method, raw target (path and query), headers (minus hop-by-hop ones) and
 * body pass through both ways; X-Forwarded-For is appended; X-Request-Id and
 * a W3C traceparent (a child span) are sent upstream; Server-Sent Events
 * responses (text/event-stream) are streamed unbuffered on the event-loop
 * path.
 *
 * Edge protections per route (dsys_gateway_add_route_ex; all off by default,
 * see docs/reference/gateway.md): rate limits, JWT verification with the
 * verified user id sent as X-Dsys-User-Id (always stripped from clients),
 * CORS, Idempotency-Key replay, a response cache for GET/HEAD (RFC 9111
 * rules), each a filter of the route's chain whose
 * members and order the route's options choose (filters); always, before
 * routing: a /v1 alias, ambiguous framing and dot segments or encoded
 * slashes refused with 400.
 *
 * Local routes (docs/reference/http-api.md, "Gateway"): GET /health, GET /status, GET /api/metrics,
 * POST /api/round-robin/reset.
 *
 * Thread-safety: configure (add_upstream/add_route) before dsys_gateway_mount;
 * afterwards the gateway is used by server threads. A mounted gateway
 * changes its routes, upstreams, filters and JWT secret as a whole with
 * dsys_gateway_reload() (from one thread at a time). Free it after the
 * server has stopped (dsys_server_stop or dsys_server_free).
 */
#ifndef DSYS_GATEWAY_H
#define DSYS_GATEWAY_H

#include <distsys/common.h>
#include <distsys/client.h>
#include <distsys/clock.h>
#include <distsys/registry.h>
#include <distsys/server.h>
#include <distsys/upstream.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dsys_gateway dsys_gateway;
struct dsys_metrics;

/** Gateway options. Zero fields take the documented defaults. */
typedef struct dsys_gateway_options {
  size_t size;                /**< sizeof(dsys_gateway_options), or 0 */
  dsys_registry *registry;    /**< discovery source for named upstreams
                                   (not owned); NULL: static upstreams only */
  dsys_clock *clock;          /**< default real */
  int64_t try_timeout_ms;     /**< per attempt, default 15000 */
  int64_t deadline_ms;        /**< whole request with retries, default 30000 */
  uint32_t max_attempts;      /**< default 3 */
  int64_t health_interval_ms; /**< active checks, default 2000 */
  size_t max_response;        /**< buffered response limit, default 64 MiB */
  const char *name;           /**< for /health and logs, default "load-balancer" */
  /* Edge protections (appended; see docs/reference/gateway.md). */
  const void *token_secret;     /**< HS256 key for protected routes (copied);
                                   NULL: no route may be protected */
  size_t token_secret_len;      /**< DSYS_TOKEN_SECRET_MIN..MAX bytes */
  size_t max_buckets;         /**< rate-limit buckets kept (LRU), default 65536 */
  size_t idempotency_max_keys; /**< Idempotency-Key entries kept (LRU),
                                    default 10000 */
  size_t idempotency_max_body; /**< largest response body kept for replay,
                                    default 1 MiB (larger: not kept) */
  const char *upstream_ca_file; /**< PEM CA bundle trusted for https://
                                     upstream endpoints (copied); NULL: the
                                     system store. An upstream with an
                                     https:// endpoint is proxied through
                                     libcurl (dsys_upstream_send), not the
                                     event loop's HTTP/1.1 client */
  const char *upstream_cert_file; /**< PEM client certificate presented to
                                     https:// upstreams (mutual TLS between
                                     services; copied); with
                                     upstream_key_file, both or neither */
  const char *upstream_key_file;  /**< its PEM private key (copied). When
                                     upstream_ca_file or upstream_cert_file
                                     is set, registry-discovered upstreams
                                     are proxied through libcurl too, so
                                     instances registered with https://
                                     URLs work */
  struct dsys_identity *identity; /**< the gateway's credential, sent as
                                     X-Dsys-Identity on every proxied
                                     request (services started with
                                     --identity-public-key require it); a
                                     client's X-Dsys-Identity is always
                                     stripped. Not owned; must outlive the
                                     gateway. NULL: none */
  /* The response cache (routes with dsys_gateway_route_options.cache;
   * docs/reference/gateway.md, "Response cache"). Created when a route
   * first needs it, with these bounds; kept across reloads. */
  size_t cache_max_bytes;     /**< keys, headers and bodies; default 64 MiB */
  size_t cache_max_entries;   /**< default 10000 */
  size_t cache_max_object;    /**< larger bodies are not stored; default 1 MiB */
  int64_t cache_max_ttl_ms;   /**< no response is kept longer than this
                                   after it was stored or revalidated,
                                   whatever its max-age; default 1 h */
  /* Health of upstream instances (appended; docs/reference/gateway.md,
   * "Health checks"): the active checks every health_interval_ms and the
   * passive outlier detection of dsys_health. */
  int64_t health_timeout_ms;  /**< a check without an answer this long
                                   fails; default 1000 */
  uint32_t health_rise;       /**< passing checks in a row that bring an
                                   unhealthy instance back; default 2 */
  uint32_t health_fall;       /**< failed checks in a row that take a
                                   healthy instance out; default 3 */
  uint32_t outlier_failures;  /**< failed requests in a row (reset,
                                   timeout, 502/503/504) that eject an
                                   instance; default 5 (a refused
                                   connection ejects at once) */
  int64_t breaker_open_ms;    /**< how long an instance's breaker, once
                                   open, refuses calls before trial calls;
                                   default 5000 */
} dsys_gateway_options;

/** dsys_gateway_route_options.protect: who needs a valid JWT. */
#define DSYS_GATEWAY_PROTECT_NONE 0   /**< nobody (default) */
#define DSYS_GATEWAY_PROTECT_ALL 1    /**< every method */
#define DSYS_GATEWAY_PROTECT_WRITES 2 /**< all but GET, HEAD and OPTIONS */

/** Per-route edge options. Zero fields mean "off". Rates are tokens per
 *  second; a burst of 0 means max(1, rate). */
typedef struct dsys_gateway_route_options {
  size_t size;                /**< sizeof(dsys_gateway_route_options), or 0 */
  double rate;                /**< per client address */
  uint32_t burst;
  double user_rate;           /**< per verified user (protected requests) */
  uint32_t user_burst;
  double route_rate;          /**< the whole route, all clients together */
  uint32_t route_burst;
  int32_t protect;            /**< DSYS_GATEWAY_PROTECT_* */
  const char *const *cors_origins; /**< allowed Origin values (copied);
                                        "*" allows any origin */
  size_t ncors_origins;
  int64_t idempotency_ttl_ms; /**< keep the first answer to a POST with an
                                   Idempotency-Key this long; 0: off */
  /* appended */
  const char *filters;        /**< the route's edge filters, in the order
                                   they run, comma-separated, from "cors",
                                   "ratelimit" (client address and route
                                   buckets), "jwt", "user-ratelimit",
                                   "idempotency", "cache"; "none" or ""
                                   for none; NULL: all six in that order. A filter
                                   whose options above are unset lets
                                   every request pass. Copied (parsed). */
  int32_t cache;              /**< DSYS_GATEWAY_CACHE_*: store and serve
                                   GET/HEAD responses as their
                                   Cache-Control allows (the chain must
                                   have the "cache" filter) */
} dsys_gateway_route_options;

/** dsys_gateway_route_options.cache */
#define DSYS_GATEWAY_CACHE_OFF 0  /**< no response cache (default) */
#define DSYS_GATEWAY_CACHE_ON 1   /**< responses to requests without
                                       Authorization or Cookie, and those
                                       marked public */
#define DSYS_GATEWAY_CACHE_AUTHORIZED 2 /**< also responses to requests with
                                       Authorization or Cookie that are not
                                       marked public: only for an upstream
                                       that answers every caller alike */

/** Create a gateway. @return 0, DSYS_EINVAL, DSYS_ENOMEM. */
DSYS_API int dsys_gateway_new(dsys_gateway **out, const dsys_gateway_options *opts);

/**
 * Declare an upstream service. With urls (n > 0) its endpoints are static;
 * with n == 0 they come from the registry (service type = name). The
 * upstream has the defaults of dsys_gateway_upstream_options.
 * @param policy balancer policy name ("round-robin", "least-request", ...) or
 *        NULL for round robin.
 * @return 0, DSYS_EINVAL (bad name or policy; no registry for n == 0),
 *         DSYS_EURL, DSYS_ESCHEME (a URL as dsys_upstream_add refuses it),
 *         DSYS_EEXIST, DSYS_ENOMEM, DSYS_ESTATE (already mounted).
 */
DSYS_API int dsys_gateway_add_upstream(dsys_gateway *gw, const char *name,
                                       const char *const *urls, size_t n,
                                       const char *policy);

/**
 * Per-upstream settings of dsys_gateway_add_upstream_ex(): the balancer
 * and how the upstream follows its instances' latency (docs/reference/
 * gateway.md, "Slow and hung instances"). Zero fields take the defaults
 * given: adaptive per-try timeouts and ejection for slowness on, hedging
 * off.
 */
typedef struct dsys_gateway_upstream_options {
  size_t size;                 /**< sizeof(dsys_gateway_upstream_options), or 0 */
  const char *policy;          /**< balancer policy name; NULL: round robin */
  int32_t adaptive_timeout;    /**< 0: on (default); -1: off (the gateway's
                                    try_timeout_ms for every attempt) */
  uint32_t timeout_percentile; /**< default 99 */
  double timeout_factor;       /**< default 4 */
  int64_t timeout_min_ms;      /**< default 250 */
  int64_t timeout_max_ms;      /**< default: the gateway's try_timeout_ms */
  int32_t slow_ejection;       /**< timeouts or slow answers in a row that
                                    eject an instance for slowness; 0: 5
                                    (default); -1: off */
  int64_t hedge_delay_ms;      /**< 0: no hedging (default); > 0: a fixed
                                    delay; -1: the upstream's
                                    hedge_percentile */
  uint32_t hedge_percentile;   /**< default 95 */
} dsys_gateway_upstream_options;

/**
 * dsys_gateway_add_upstream() with per-upstream settings.
 * @param opts may be NULL (the defaults, round robin).
 * @return as dsys_gateway_add_upstream(); DSYS_EINVAL also for a bad
 *         setting (see dsys_upstream_options).
 */
DSYS_API int dsys_gateway_add_upstream_ex(dsys_gateway *gw, const char *name,
                                          const char *const *urls, size_t n,
                                          const dsys_gateway_upstream_options *opts);

/**
 * Route requests whose path starts with prefix ("/api/data" matches
 * "/api/data" and "/api/data/..."; "/" matches everything) to an upstream.
 * The longest matching prefix wins.
 * @return 0, DSYS_EINVAL, DSYS_ENOTFOUND (unknown upstream), DSYS_ENOMEM,
 *         DSYS_ESTATE.
 */
DSYS_API int dsys_gateway_add_route(dsys_gateway *gw, const char *prefix,
                                    const char *upstream);

/**
 * Like dsys_gateway_add_route, with edge protections for the route: rate
 * limits, JWT protection, CORS origins, Idempotency-Key replay.
 * @param opts may be NULL (same as dsys_gateway_add_route).
 * @return 0, DSYS_EINVAL (also: a protected route without a token_secret in
 *         the gateway options, a negative rate or TTL, an unknown protect
 *         value, an empty origin, an unknown or repeated filter name),
 *         DSYS_ENOTFOUND, DSYS_ENOMEM, DSYS_ESTATE.
 */
DSYS_API int dsys_gateway_add_route_ex(dsys_gateway *gw, const char *prefix,
                                       const char *upstream,
                                       const dsys_gateway_route_options *opts);

/**
 * Mount the local routes and the proxy on a server (before it listens).
 * @return 0, DSYS_EINVAL, DSYS_ESTATE, DSYS_ENOMEM.
 */
DSYS_API int dsys_gateway_mount(dsys_gateway *gw, dsys_server *srv);

/**
 * Replace the routes of a gateway, mounted or not, by those of next, a
 * gateway configured the same way (dsys_gateway_new, add_upstream,
 * add_route_ex: every check already passed) and never mounted: its
 * upstreams, routes with their edge options and filters, and its JWT
 * secret (token_secret) take over at once, atomically: each request
 * runs entirely on the set it started with, so requests in flight finish
 * on the old one, which is freed (its upstreams stopped: health checks,
 * registry watch) on a thread of the gateway once the last of them is
 * answered. An upstream of next defined exactly like a running one of
 * the same name (policy, endpoints or registry, retry settings; no https
 * endpoint) is not replaced: the running one, with its health and breaker
 * state, serves the new routes. The other options of next (clock, limits of the edge caches,
 * name) are not used; the rate-limit buckets and the Idempotency-Key cache
 * are kept (buckets are per route position). On success next is freed
 * (do not use it); on failure nothing changed and the caller still owns
 * next. Not concurrently with itself.
 * @return 0, DSYS_EINVAL (NULL, the same gateway, next mounted),
 *         DSYS_ENOMEM.
 */
DSYS_API int dsys_gateway_reload(dsys_gateway *gw, dsys_gateway *next);

/**
 * Serve the upstreams' series on reg (what dsys_metrics_upstream() gives
 * for one upstream: per endpoint attempts, failures, latency, breaker
 * state; per upstream retries and endpoints) for the upstreams the gateway
 * has at each render, across reloads (an upstream a reload removed keeps
 * its last values: series are never removed). Call once.
 * @return 0, DSYS_EINVAL, DSYS_ENOMEM.
 */
DSYS_API int dsys_gateway_metrics(dsys_gateway *gw, struct dsys_metrics *reg);

/** Number of upstreams declared (for metrics and introspection). */
DSYS_API size_t dsys_gateway_upstream_count(dsys_gateway *gw);

/**
 * Upstream i (0-based, in the order declared): its name and its
 * dsys_upstream (both owned by the gateway, valid until dsys_gateway_free
 * or the next dsys_gateway_reload; e.g. for dsys_metrics_upstream, or use
 * dsys_gateway_metrics on a gateway that reloads). Either out-parameter may be NULL.
 * @return 0, DSYS_EINVAL (NULL gateway or i out of range).
 */
DSYS_API int dsys_gateway_upstream_at(dsys_gateway *gw, size_t i,
                                      const char **name, dsys_upstream **u);

/** Free the gateway (after its server stopped). NULL-safe. */
DSYS_API void dsys_gateway_free(dsys_gateway *gw);

#ifdef __cplusplus
}
#endif
#endif
