/*
 * The gateway (load balancer) service: routing by path prefix to
 * dsys_upstream groups, the edge (fixed checks, then the route's filter
 * chain), and the local status routes of docs/reference/http-api.md. A
 * proxied request is handed to dsys_upstream (pick, send,
 * report, retry: on an event-loop server through the loop's own HTTP/1.1
 * dialer, else and for https endpoints through libcurl) with the headers
 * of the one forwarding policy (dsysi_fwd_request).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <distsys/auth.h>
#include <distsys/balancer.h>
#include <distsys/cache.h>
#include <distsys/gateway.h>
#include <distsys/metrics.h>
#include <distsys/retry.h>
#include <distsys/upstream.h>
#include "core/internal.h"
#include "core/json.h"
#include "services/reply.h"
#include "resilience/upstream_int.h"
#include "transport/evloop.h"
#include "transport/transport.h"
#include "services/edge.h"
#include "observe/metrics.h"
#include "security/identity_int.h"

#define MAX_UPSTREAMS 32
#define MAX_ROUTES 64

typedef struct gw_upstream {
  char *name;
  dsys_upstream *u;
  int from_registry;
  atomic_uint_fast64_t failed; /* failed proxied requests (count()) */
  /* A reload keeps an upstream whose definition did not change (its
   * endpoints' health, breakers and statistics carry on; a new registry
   * upstream would wait for its first health checks): u is then shared by
   * the tables holding it, freed with the last. */
  char *def;                   /* what it was made from */
  atomic_int *urefs;           /* tables holding u */
  int shareable;               /* u needs nothing else of its table (no TLS client) */
} gw_upstream;

typedef struct gw_route {
  char *prefix;
  size_t plen;
  gw_upstream *up;
  dsys_gateway_route_options eo; /* edge options (cors_origins: ours) */
  char **origins;
  size_t norigins;
  int any_origin;
  size_t idx;
  uint8_t chain[8]; /* the edge filters, in order (indexes of edge_filters) */
  uint8_t nchain;
  int8_t rl_last;   /* the chain's last rate-limit filter, -1 for none */
} gw_route;

/* The edge filters (HAProxy's filter model): each protection is a filter
 * with a request hook and, where it needs one, a response hook; a route
 * runs the ones its options name, in their order (see edge_filters and
 * h_proxy). Framing and path checks come before routing and are not
 * filters: they decide which route a request may reach. */
enum { F_CORS, F_RATELIMIT, F_JWT, F_USER_RATELIMIT, F_IDEMPOTENCY, F_CACHE, NFILTERS };
static const char *const filter_names[NFILTERS] = {"cors", "ratelimit", "jwt", "user-ratelimit",
                                                   "idempotency", "cache"};

/* Parse a route's filter list ("cors,jwt", "" or "none" for no filter,
 * NULL for every filter in the order above). @return 0 or DSYS_EINVAL
 * (an unknown or repeated name). */
static int parse_chain(const char *list, gw_route *r) {
  r->nchain = 0;
  r->rl_last = -1;
  if (!list) {
    for (int i = 0; i < NFILTERS; i++) r->chain[r->nchain++] = (uint8_t)i;
  } else if (*list && strcmp(list, "none")) {
    for (const char *s = list;; s++) { /* names between commas, none empty */
      size_t n = strcspn(s, ",");
      int f = 0;
      while (f < NFILTERS && (strlen(filter_names[f]) != n || strncmp(s, filter_names[f], n))) f++;
      if (f == NFILTERS || memchr(r->chain, f, r->nchain)) return DSYS_EINVAL;
      r->chain[r->nchain++] = (uint8_t)f;
      if (!s[n]) break;
      s += n;
    }
  }
  for (int i = 0; i < r->nchain; i++)
    if (r->chain[i] == F_RATELIMIT || r->chain[i] == F_USER_RATELIMIT) r->rl_last = (int8_t)i;
  return 0;
}

/* What a reload replaces as a whole: the routes, the upstreams they go
 * to and what those need. A request takes a reference to the current
 * table (t_get) and keeps it until it is answered, so a request in flight
 * across a reload finishes on the table it started with; a replaced table
 * is freed by the reaper thread once its last request let go. */
typedef struct gw_table {
  atomic_int refs;            /* 1 while current, +1 per holder */
  gw_upstream ups[MAX_UPSTREAMS];
  size_t nups;
  gw_route routes[MAX_ROUTES];
  size_t nroutes;
  int v1_routes;              /* a route of its own under /v1: no alias */
  char *secret;               /* the JWT secret (token_secret), or NULL */
  size_t secret_len;
  dsys_client *tls_client;    /* shared by the https upstreams */
  dsysi_rl *rl;               /* the gateway's (kept across reloads) */
  dsysi_idem *idem;
  dsys_cache *rcache;         /* the response cache (kept across reloads) */
  struct gw_table *retired_next;
} gw_table;

struct dsys_gateway {
  dsys_gateway_options o;
  char *name;
  gw_table *cur;              /* under tlk; written by configuration and reload */
  pthread_rwlock_t tlk;
  dsys_server *srv;
  int64_t start_ms;
  atomic_uint_fast64_t success, failed; /* proxied requests (count()) */
  dsysi_rl *rl;               /* created when a route first needs them */
  dsysi_idem *idem;
  dsys_cache *rcache;
  /* response cache outcomes (X-Cache), for the metrics */
  atomic_uint_fast64_t c_hit, c_miss, c_reval, c_bypass, c_stored;
  char *upstream_tls[3];      /* copies of o.upstream_{ca,cert,key}_file */
  /* Replaced tables and the thread that frees them (dsys_upstream_free
   * must not run on a callback's thread, and waits for calls in flight). */
  pthread_mutex_t rmu;
  pthread_cond_t rcv;
  gw_table *retired;
  pthread_t reaper;
  int reaper_started, reaper_stop;
};

/* The current table, held until t_put. */
static gw_table *t_get(dsys_gateway *gw) {
  pthread_rwlock_rdlock(&gw->tlk);
  gw_table *t = gw->cur;
  atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
  pthread_rwlock_unlock(&gw->tlk);
  return t;
}

static void t_put(dsys_gateway *gw, gw_table *t) {
  if (atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1) return;
  /* the last holder of a replaced table: wake the reaper */
  pthread_mutex_lock(&gw->rmu);
  pthread_cond_signal(&gw->rcv);
  pthread_mutex_unlock(&gw->rmu);
}

static void t_free(gw_table *t) {
  if (!t) return;
  for (size_t i = 0; i < t->nroutes; i++) {
    free(t->routes[i].prefix);
    for (size_t k = 0; k < t->routes[i].norigins; k++) free(t->routes[i].origins[k]);
    free(t->routes[i].origins);
  }
  if (t->secret) explicit_bzero(t->secret, t->secret_len);
  free(t->secret);
  for (size_t i = 0; i < t->nups; i++) {
    if (atomic_fetch_sub(t->ups[i].urefs, 1) == 1) {
      dsys_upstream_free(t->ups[i].u);
      free(t->ups[i].urefs);
    }
    free(t->ups[i].name);
    free(t->ups[i].def);
  }
  dsys_client_free(t->tls_client); /* after the upstreams that used it */
  free(t);
}

/* Free the retired tables nobody holds; with all, every one (at free). */
static void reap(dsys_gateway *gw, int all) {
  for (;;) {
    gw_table **pp = &gw->retired, *t = NULL;
    while (*pp && !all && atomic_load(&(*pp)->refs) > 0) pp = &(*pp)->retired_next;
    if (!(t = *pp)) return;
    *pp = t->retired_next;
    pthread_mutex_unlock(&gw->rmu);
    t_free(t);
    pthread_mutex_lock(&gw->rmu);
  }
}

static void *reaper_main(void *arg) {
  dsys_gateway *gw = arg;
  pthread_mutex_lock(&gw->rmu);
  while (!gw->reaper_stop) {
    reap(gw, 0);
    if (!gw->reaper_stop) pthread_cond_wait(&gw->rcv, &gw->rmu);
  }
  pthread_mutex_unlock(&gw->rmu);
  return NULL;
}

/* ---- configuration ---- */

int dsys_gateway_new(dsys_gateway **out, const dsys_gateway_options *opts) {
  if (!out) return DSYS_EINVAL;
  dsys_gateway *gw = calloc(1, sizeof *gw);
  if (!gw) return DSYS_ENOMEM;
  if (opts) memcpy(&gw->o, opts, opts->size && opts->size < sizeof gw->o ? opts->size : sizeof gw->o);
  gw->o.size = sizeof gw->o;
  if (!gw->o.clock) gw->o.clock = dsys_clock_real();
  if (gw->o.try_timeout_ms <= 0) gw->o.try_timeout_ms = 15000;
  if (gw->o.deadline_ms <= 0) gw->o.deadline_ms = 30000;
  if (!gw->o.max_attempts) gw->o.max_attempts = 3;
  if (gw->o.health_interval_ms <= 0) gw->o.health_interval_ms = 2000;
  if (gw->o.health_timeout_ms <= 0) gw->o.health_timeout_ms = 1000;
  if (!gw->o.health_rise) gw->o.health_rise = 2;
  if (!gw->o.health_fall) gw->o.health_fall = 3;
  if (!gw->o.outlier_failures) gw->o.outlier_failures = 5;
  /* 5 s, not 30: a shared cause (the instances' database down) opens no
   * breaker any more (resilience/shared_cause.h), but an instance whose
   * breaker did open, just before the others failed too, must be tried
   * again soon after the cause is gone (pg-deploy.test) */
  if (gw->o.breaker_open_ms <= 0) gw->o.breaker_open_ms = 5000;
  if (!gw->o.max_response) gw->o.max_response = 64u * 1024 * 1024;
  if (!gw->o.max_buckets) gw->o.max_buckets = 65536;
  if (!gw->o.idempotency_max_keys) gw->o.idempotency_max_keys = 10000;
  if (!gw->o.idempotency_max_body) gw->o.idempotency_max_body = 1024 * 1024;
  if (!gw->o.cache_max_bytes) gw->o.cache_max_bytes = 64u << 20;
  if (!gw->o.cache_max_entries) gw->o.cache_max_entries = 10000;
  if (!gw->o.cache_max_object) gw->o.cache_max_object = 1u << 20;
  if (gw->o.cache_max_ttl_ms <= 0) gw->o.cache_max_ttl_ms = 3600000;
  gw->name = strdup(gw->o.name ? gw->o.name : "load-balancer");
  gw->o.name = gw->name;
  pthread_rwlock_init(&gw->tlk, NULL);
  pthread_mutex_init(&gw->rmu, NULL);
  pthread_cond_init(&gw->rcv, NULL);
  gw->cur = calloc(1, sizeof *gw->cur);
  if (gw->cur) atomic_init(&gw->cur->refs, 1);
  int ca_oom = 0;
  const char **tls_files[3] = {&gw->o.upstream_ca_file, &gw->o.upstream_cert_file,
                               &gw->o.upstream_key_file};
  for (int i = 0; i < 3; i++) {
    if (!*tls_files[i]) continue;
    gw->upstream_tls[i] = strdup(*tls_files[i]);
    ca_oom |= !gw->upstream_tls[i];
    *tls_files[i] = gw->upstream_tls[i];
  }
  if ((!gw->o.upstream_cert_file != !gw->o.upstream_key_file) ||
      (gw->o.token_secret && (gw->o.token_secret_len < DSYS_TOKEN_SECRET_MIN ||
                              gw->o.token_secret_len > DSYS_TOKEN_SECRET_MAX))) {
    dsys_gateway_free(gw);
    return DSYS_EINVAL;
  }
  gw_table *t = gw->cur;
  if (gw->o.token_secret && t) {
    t->secret = malloc(gw->o.token_secret_len + 1);
    if (t->secret) {
      memcpy(t->secret, gw->o.token_secret, gw->o.token_secret_len);
      t->secret[gw->o.token_secret_len] = '\0';
      t->secret_len = gw->o.token_secret_len;
    }
  }
  gw->o.token_secret = NULL; /* the caller's: not kept (the table has a copy) */
  gw->start_ms = dsys_clock_now_ms(gw->o.clock);
  if (!gw->name || ca_oom || !t || (gw->o.token_secret_len && !t->secret)) {
    dsys_gateway_free(gw);
    return DSYS_ENOMEM;
  }
  *out = gw;
  return 0;
}

static gw_upstream *find_upstream(gw_table *t, const char *name) {
  for (size_t i = 0; i < t->nups; i++)
    if (!strcmp(t->ups[i].name, name)) return &t->ups[i];
  return NULL;
}

int dsys_gateway_add_upstream(dsys_gateway *gw, const char *name,
                              const char *const *urls, size_t n,
                              const char *policy) {
  dsys_gateway_upstream_options uo = {.size = sizeof uo, .policy = policy};
  return dsys_gateway_add_upstream_ex(gw, name, urls, n, &uo);
}

int dsys_gateway_add_upstream_ex(dsys_gateway *gw, const char *name,
                                 const char *const *urls, size_t n,
                                 const dsys_gateway_upstream_options *opts) {
  dsys_gateway_upstream_options x = {0};
  if (opts) memcpy(&x, opts, opts->size && opts->size < sizeof x ? opts->size : sizeof x);
  const char *policy = x.policy;
  if (!gw || !name || !*name || (n && !urls) || (!n && !gw->o.registry) ||
      x.adaptive_timeout < -1 || x.adaptive_timeout > 1 || x.slow_ejection < -1 ||
      x.hedge_delay_ms < -1)
    return DSYS_EINVAL;
  if (gw->srv) return DSYS_ESTATE;
  gw_table *t = gw->cur;
  if (find_upstream(t, name)) return DSYS_EEXIST;
  if (t->nups == MAX_UPSTREAMS) return DSYS_ENOMEM;
  int32_t pol = DSYS_LB_ROUND_ROBIN;
  if (policy && dsys_lb_policy_parse(policy, &pol)) return DSYS_EINVAL;
  /* Static endpoints were named by the operator: they take traffic at once
   * (active checks and outlier detection still take them out). Registry
   * instances wait for their first passing check. */
  /* An instance out of rotation is checked 8 times as often, so that one
   * that hung comes back soon after it answers again (a slowness
   * ejection ends with its first passing check). */
  dsys_health_options ho = {.size = sizeof ho, .interval_ms = gw->o.health_interval_ms,
                            .timeout_ms = gw->o.health_timeout_ms, .rise = gw->o.health_rise,
                            .fall = gw->o.health_fall,
                            .consecutive_failures = gw->o.outlier_failures,
                            .clock = gw->o.clock, .start_healthy = n > 0,
                            .consecutive_slow = x.slow_ejection < 0 ? 0
                                                : x.slow_ejection ? (uint32_t)x.slow_ejection : 5,
                            .down_interval_ms = gw->o.health_interval_ms / 8 + 1};
  dsys_breaker_options bro = {.size = sizeof bro, .open_wait_ms = gw->o.breaker_open_ms};
  dsys_retry_options ro = {.size = sizeof ro, .clock = gw->o.clock,
                           .max_attempts = gw->o.max_attempts,
                           .per_try_timeout_ms = gw->o.try_timeout_ms,
                           .deadline_ms = gw->o.deadline_ms};
  /* dsys_upstream sends to https:// endpoints through its client
   * (libcurl; the event loop's dialer has no TLS). An upstream that may
   * have one (an https:// URL given, or discovered while the gateway has
   * upstream TLS settings: instances may register https:// URLs) gets the
   * one gateway-wide client that trusts upstream_ca_file and presents the
   * upstream client certificate. */
  int tls = !n && (gw->o.upstream_ca_file || gw->o.upstream_cert_file);
  for (size_t i = 0; i < n; i++)
    if (urls[i] && !strncmp(urls[i], "https://", 8)) tls = 1;
  if (tls && !t->tls_client) {
    dsys_client_options co = {.size = sizeof co, .clock = gw->o.clock,
                              .tls_ca_file = gw->o.upstream_ca_file,
                              .tls_cert_file = gw->o.upstream_cert_file,
                              .tls_key_file = gw->o.upstream_key_file};
    int crc = dsys_client_new(&t->tls_client, &co);
    if (crc) return crc;
  }
  dsys_upstream_options uo = {.size = sizeof uo, .service = name,
                              .registry = n ? NULL : gw->o.registry,
                              .policy = pol, .health_check = 1, .health = &ho,
                              .breaker = &bro,
                              .retry = &ro, .clock = gw->o.clock,
                              .client = tls ? t->tls_client : NULL,
                              .adaptive_timeout = x.adaptive_timeout >= 0,
                              .timeout_percentile = x.timeout_percentile,
                              .timeout_factor = x.timeout_factor,
                              .timeout_min_ms = x.timeout_min_ms,
                              .timeout_max_ms = x.timeout_max_ms,
                              .hedge = x.hedge_delay_ms != 0,
                              .hedge_delay_ms = x.hedge_delay_ms > 0 ? x.hedge_delay_ms : 0,
                              .hedge_percentile = x.hedge_percentile};
  gw_upstream *up = &t->ups[t->nups];
  memset(up, 0, sizeof *up);
  int rc = dsys_upstream_new(&up->u, &uo);
  if (rc) return rc;
  dsysi_buf def = {0};
  dsysi_buf_printf(&def, "%d %lld %lld %u %lld %p", (int)pol, (long long)gw->o.try_timeout_ms,
                   (long long)gw->o.deadline_ms, (unsigned)gw->o.max_attempts,
                   (long long)gw->o.health_interval_ms, n ? NULL : (void *)gw->o.registry);
  /* the adaptive timeout, hedging and slowness settings too: a reload
   * that changes them builds a new upstream */
  dsysi_buf_printf(&def, " a%d %g %g %lld %lld s%d h%lld %g", (int)x.adaptive_timeout,
                   (double)x.timeout_percentile, (double)x.timeout_factor,
                   (long long)x.timeout_min_ms, (long long)x.timeout_max_ms, (int)x.slow_ejection,
                   (long long)x.hedge_delay_ms, (double)x.hedge_percentile);
  dsysi_buf_printf(&def, " c%lld %u %u %u b%lld", (long long)gw->o.health_timeout_ms,
                   (unsigned)gw->o.health_rise, (unsigned)gw->o.health_fall,
                   (unsigned)gw->o.outlier_failures, (long long)gw->o.breaker_open_ms);
  for (size_t i = 0; !rc && i < n; i++) {
    char id[32];
    snprintf(id, sizeof id, "%s-%zu", name, i + 1);
    rc = dsys_upstream_add(up->u, id, urls[i], 1);
    dsysi_buf_printf(&def, " %s", urls[i]);
  }
  if (!rc && (!(up->name = strdup(name)) || !(up->urefs = malloc(sizeof *up->urefs)) ||
              def.oom || !(up->def = dsysi_buf_steal(&def, NULL))))
    rc = DSYS_ENOMEM;
  dsysi_buf_free(&def);
  if (rc) {
    dsys_upstream_free(up->u);
    free(up->name);
    free(up->urefs);
    free(up->def);
    return rc;
  }
  atomic_init(up->urefs, 1);
  up->shareable = !tls;
  up->from_registry = n == 0;
  t->nups++;
  return 0;
}

int dsys_gateway_add_route(dsys_gateway *gw, const char *prefix,
                           const char *upstream) {
  return dsys_gateway_add_route_ex(gw, prefix, upstream, NULL);
}

int dsys_gateway_add_route_ex(dsys_gateway *gw, const char *prefix,
                              const char *upstream,
                              const dsys_gateway_route_options *opts) {
  if (!gw || !prefix || prefix[0] != '/' || !upstream) return DSYS_EINVAL;
  dsys_gateway_route_options eo = {0};
  if (opts) memcpy(&eo, opts, opts->size && opts->size < sizeof eo ? opts->size : sizeof eo);
  eo.size = sizeof eo;
  if (eo.rate < 0 || eo.user_rate < 0 || eo.route_rate < 0 || !isfinite(eo.rate) ||
      !isfinite(eo.user_rate) || !isfinite(eo.route_rate) || eo.idempotency_ttl_ms < 0 ||
      eo.protect < DSYS_GATEWAY_PROTECT_NONE || eo.protect > DSYS_GATEWAY_PROTECT_WRITES ||
      (eo.protect && !gw->cur->secret) || (eo.ncors_origins && !eo.cors_origins) ||
      eo.cache < DSYS_GATEWAY_CACHE_OFF || eo.cache > DSYS_GATEWAY_CACHE_AUTHORIZED)
    return DSYS_EINVAL;
  for (size_t i = 0; i < eo.ncors_origins; i++)
    if (!eo.cors_origins[i] || !*eo.cors_origins[i]) return DSYS_EINVAL;
  if (gw->srv) return DSYS_ESTATE;
  gw_table *t = gw->cur;
  gw_upstream *up = find_upstream(t, upstream);
  if (!up) return DSYS_ENOTFOUND;
  if (t->nroutes == MAX_ROUTES) return DSYS_ENOMEM;
  size_t plen = strlen(prefix);
  while (plen > 1 && prefix[plen - 1] == '/') plen--;
  gw_route *r = &t->routes[t->nroutes];
  memset(r, 0, sizeof *r);
  /* a cached route without the cache filter would silently not cache */
  if (parse_chain(eo.filters, r) || (eo.cache && !memchr(r->chain, F_CACHE, r->nchain))) {
    memset(r, 0, sizeof *r);
    return DSYS_EINVAL;
  }
  eo.filters = NULL; /* parsed: not kept */
  char *p = dsysi_strndup(prefix, plen);
  r->origins = eo.ncors_origins ? calloc(eo.ncors_origins, sizeof *r->origins) : NULL;
  int oom = !p || (eo.ncors_origins && !r->origins);
  for (size_t i = 0; !oom && i < eo.ncors_origins; i++) {
    if (!(r->origins[i] = strdup(eo.cors_origins[i]))) oom = 1;
    else r->norigins++;
    if (!strcmp(eo.cors_origins[i], "*")) r->any_origin = 1;
  }
  if (oom) {
    for (size_t i = 0; i < r->norigins; i++) free(r->origins[i]);
    free(r->origins);
    free(p);
    memset(r, 0, sizeof *r);
    return DSYS_ENOMEM;
  }
  eo.cors_origins = NULL;
  if (eo.rate > 0 && !eo.burst) eo.burst = eo.rate < 1 ? 1 : (uint32_t)ceil(eo.rate);
  if (eo.user_rate > 0 && !eo.user_burst) eo.user_burst = eo.user_rate < 1 ? 1 : (uint32_t)ceil(eo.user_rate);
  if (eo.route_rate > 0 && !eo.route_burst) eo.route_burst = eo.route_rate < 1 ? 1 : (uint32_t)ceil(eo.route_rate);
  r->eo = eo;
  r->prefix = p;
  r->plen = plen;
  r->up = up;
  r->idx = t->nroutes;
  if (plen >= 3 && !strncmp(p, "/v1", 3) && (p[3] == '\0' || p[3] == '/')) t->v1_routes = 1;
  t->nroutes++;
  return 0;
}

/* Longest prefix on a segment boundary. */
static gw_route *match(gw_table *t, const char *path) {
  gw_route *best = NULL;
  for (size_t i = 0; i < t->nroutes; i++) {
    gw_route *r = &t->routes[i];
    int ok = r->plen == 1 ||
             (!strncmp(path, r->prefix, r->plen) &&
              (path[r->plen] == '\0' || path[r->plen] == '/' || path[r->plen] == '?'));
    if (ok && (!best || r->plen > best->plen)) best = r;
  }
  return best;
}

/* ---- the proxy ---- */

/* The cache filter's decision for a request (edge.rc). */
enum {
  RC_STORE = 1,  /* a GET missed: store a cacheable answer */
  RC_REVAL,      /* a GET found a stale answer with an ETag: ask the upstream */
  RC_MISS,       /* a HEAD missed: passed on, not stored */
  RC_BYPASS,     /* a request the cache may not answer (no-store, Range, ...) */
  RC_INVALIDATE, /* an unsafe method: a success drops the stored answer */
};

/* What the edge decided for one request. */
typedef struct edge {
  gw_table *t;          /* held (t_get) until the answer */
  gw_route *rt;
  const char *target;   /* forwarded target (the raw one, minus "/v1") */
  char user[128];       /* verified user id, or "" */
  char *idem_key;       /* reserved Idempotency-Key entry, or NULL */
  size_t idem_klen;
  uint64_t idem_gen;
  int strip_cors;       /* the cors filter answers CORS: drop the upstream's */
  char rc;              /* the cache filter's decision (RC_*), 0: none */
  char rc_cred;         /* the request has Authorization or Cookie */
  char *rc_ent;         /* RC_REVAL: the stored response (its copy) */
  size_t rc_len;
  char *rc_key;         /* RC_REVAL: its key */
  int have_tight;       /* rate-limit filters: the tightest bucket so far */
  dsysi_rl_result tight;
} edge;

/* One proxied request: what the edge decided and the headers that go
 * upstream (dsysi_fwd_request), held until dsys_upstream answers. */
typedef struct px {
  edge e;
  dsys_gateway *gw;
  gw_upstream *up;
  dsys_request *req;
  int streaming;
  dsysi_fwd fwd;
  dsys_header *rch;     /* RC_REVAL: fwd's headers with our If-None-Match */
  size_t nrch;
} px;

static int px_key; /* finished states kept per event loop */

static void edge_free(edge *e) {
  free(e->idem_key);
  free(e->rc_ent);
  free(e->rc_key);
}

static void px_free(px *p) {
  t_put(p->gw, p->e.t);
  edge_free(&p->e);
  free(p->rch);
  dsysi_fwd_free(&p->fwd);
  if (dsysi_loop_cache_put(&px_key, p, 256, free)) free(p);
}

/* One atomic per proxied request (both event loops write these lines):
 * the total is success + failed, and per upstream only failures are read. */
static void count(dsys_gateway *gw, gw_upstream *up, int ok) {
  atomic_fetch_add_explicit(ok ? &gw->success : &gw->failed, 1, memory_order_relaxed);
  if (up && !ok) atomic_fetch_add_explicit(&up->failed, 1, memory_order_relaxed);
}

static void edge_respond(dsys_gateway *gw, edge *e, int status, const char *ctype,
                         const dsysi_hdrs *h, const void *body, size_t len);

static void respond_unavailable(px *p, int status, const char *message) {
  edge_respond(p->gw, &p->e, status, NULL, NULL, NULL, 0);
  json_object *o = json_object_new_object();
  json_object_object_add(o, "error", json_object_new_string(
      status == 503 ? "Service unavailable" : status == 504 ? "Gateway timeout" : "Bad gateway"));
  json_object_object_add(o, "message", json_object_new_string(message));
  json_object_object_add(o, "timestamp", dsysi_json_time(dsys_clock_wall_ms(p->gw->o.clock)));
  count(p->gw, p->up, 0);
  dsysi_respond_obj(p->req, status, o);
}

/* Upstream response headers that go back (dsysi_fwd_response_header; when
 * the cors filter ran, the gateway's own Access-Control-* answer stands). */
static int drop_cors(const edge *e) { return e->strip_cors; }

static void copy_headers(px *p, const dsys_reply *r) {
  for (size_t i = 0; i < r->hdrs.n; i++) {
    const char *name = r->hdrs.v[i].name;
    if (dsysi_fwd_response_header(name, drop_cors(&p->e)))
      dsys_response_header(p->req, name, r->hdrs.v[i].value);
  }
}

/* The answer's head (event-loop attempts): Server-Sent Events pass
 * through unbuffered, and the attempt is final from here. */
static int px_head(void *ud, const dsys_reply *head) {
  px *p = ud;
  const char *ct = dsysi_reply_ctype(head);
  if (head->status >= 300 || !ct || strncasecmp(ct, "text/event-stream", 17)) return 0;
  p->streaming = 1;
  copy_headers(p, head);
  return dsys_respond_stream(p->req, head->status, ct) ? -1 : 1;
}

static int px_body(void *ud, const void *d, size_t n) {
  px *p = ud;
  return dsys_stream_write(p->req, d, n) != 0;
}

static void px_pick(void *ud, const char *id, const char *url) {
  px *p = ud; /* the access log names the endpoint */
  dsys_request_log_field(p->req, "upstream", url);
}

static int rc_reply(px *p, dsys_reply *r);

/* dsys_upstream's answer (any thread): pass it on, or say why not. */
static void px_done(int err, dsys_reply *reply, const dsys_upstream_result *res, void *ud) {
  px *p = ud;
  dsys_gateway *gw = p->gw;
  if (p->streaming) {
    count(gw, p->up, !err);
    edge_respond(gw, &p->e, 0, NULL, NULL, NULL, 0); /* streams are not kept */
    dsys_stream_end(p->req);
  } else if (err == DSYS_ETOOBIG) {
    respond_unavailable(p, 502, "Upstream response too large");
  } else if (err == DSYS_ECANCELED || err == DSYS_ECLOSED) {
    respond_unavailable(p, 503, "Gateway stopping");
  } else if (err == DSYS_EUNAVAIL || err == DSYS_EBREAKER) {
    char msg[160];
    snprintf(msg, sizeof msg, "No healthy %s instance available (%s)", p->up->name, dsys_strerror(err));
    respond_unavailable(p, 503, msg);
  } else if (err) {
    respond_unavailable(p, err == DSYS_ETIMEDOUT ? 504 : err == DSYS_ECONNREFUSED ? 503 : 502,
                        dsys_strerror(err));
  } else if (p->e.rc && rc_reply(p, reply)) { /* revalidated: the stored answer */
    count(gw, p->up, 1);
    edge_respond(gw, &p->e, 0, NULL, NULL, NULL, 0);
  } else {
    int status = dsys_reply_status(reply);
    const char *ct = dsysi_reply_ctype(reply);
    copy_headers(p, reply);
    count(gw, p->up, status < 400);
    edge_respond(gw, &p->e, status, ct, &reply->hdrs, reply->body, reply->body_len);
    /* The body goes to the transport as it is: no copy. */
    size_t blen;
    char *body = dsysi_reply_take_body(reply, &blen);
    if (body) dsysi_respond_owned(p->req, status, ct, body, blen);
    else dsys_respond_error(p->req, 500, "DSYS_ENOMEM", "Out of memory");
  }
  dsys_reply_free(reply);
  px_free(p);
}

static int rc_conditional(px *p);

/* Hand the request to dsys_upstream: it picks, sends (the event loop's
 * HTTP/1.1 dialer or libcurl), reports and retries; px_done answers. */
static void proxy(dsys_gateway *gw, gw_route *rt, dsys_request *req, edge *e) {
  px *p = dsysi_loop_cache_get(&px_key);
  if (!p) p = malloc(sizeof *p);
  if (!p) {
    edge_respond(gw, e, 500, NULL, NULL, NULL, 0);
    dsys_respond_error(req, 500, "DSYS_ENOMEM", "Out of memory");
    t_put(gw, e->t);
    edge_free(e);
    return;
  }
  p->e = *e;
  p->gw = gw;
  p->up = rt->up;
  p->req = req;
  p->streaming = 0;
  p->rch = NULL;
  dsys_request_defer(req);
  if (dsysi_fwd_request(&p->fwd, req, p->e.user, dsysi_identity_current(gw->o.identity)) ||
      (p->e.rc == RC_REVAL && rc_conditional(p))) {
    respond_unavailable(p, 500, "Out of memory");
    px_free(p);
    return;
  }
  size_t blen;
  const void *body = dsys_request_body(req, &blen);
  dsys_call call = {.size = sizeof call, .method = dsys_request_method(req),
                    .path = p->e.target, .headers = p->rch ? p->rch : p->fwd.h, .nheaders = p->rch ? p->nrch : p->fwd.n,
                    .body = body, .body_len = blen};
  dsysi_usend o = {.on_head = px_head, .on_body = px_body,
                   .on_pick = dsysi_request_log_wanted(req) ? px_pick : NULL,
                   .max_response = gw->o.max_response, .borrow = 1, .checked = 1};
  int rc = dsysi_upstream_send(rt->up->u, &call, &o, px_done, p);
  if (rc) px_done(rc, NULL, NULL, p);
}

/* ---- the edge: checks before a request is proxied ---- */

/* Record the first answer to a request holding an Idempotency-Key entry:
 * kept for replay when the upstream answered below 500 (status 0: a
 * stream; never kept), else the key is released for a retry. */
static void idem_finish(dsys_gateway *gw, edge *e, int status, const char *ctype,
                        const dsysi_hdrs *h, const void *body, size_t len) {
  if (!e->idem_key) return;
  if (status <= 0 || status >= 500 || !h) {
    dsysi_idem_abort(e->t->idem, e->idem_key, e->idem_klen, e->idem_gen);
  } else {
    dsysi_buf hb = {0};
    for (size_t i = 0; i < h->n; i++) {
      if (!dsysi_fwd_response_header(h->v[i].name, drop_cors(e))) continue;
      dsysi_buf_append(&hb, h->v[i].name, strlen(h->v[i].name) + 1);
      dsysi_buf_append(&hb, h->v[i].value, strlen(h->v[i].value) + 1);
    }
    dsysi_idem_resp r = {.status = status, .ctype = (char *)ctype, .hdrs = hb.data,
                         .hlen = hb.len, .body = (char *)body, .blen = len};
    if (hb.oom) dsysi_idem_abort(e->t->idem, e->idem_key, e->idem_klen, e->idem_gen);
    else dsysi_idem_complete(e->t->idem, e->idem_key, e->idem_klen, e->idem_gen, &r);
    dsysi_buf_free(&hb);
  }
  free(e->idem_key);
  e->idem_key = NULL;
}

static void respond_json_obj(dsys_request *req, int status, json_object *o) {
  char *s = dsysi_json_dump(o, NULL);
  json_object_put(o);
  dsys_respond_json(req, status, s ? s : "{}");
  free(s);
}

/* Framing that a proxy must not guess about: Transfer-Encoding together
 * with Content-Length, or Content-Length headers that disagree. */
static int ambiguous_framing(dsys_request *req) {
  const char *cl = NULL;
  int te = 0;
  size_t n = dsys_request_header_count(req);
  for (size_t i = 0; i < n; i++) {
    const char *name, *value;
    dsys_request_header_at(req, i, &name, &value);
    unsigned char c = dsysi_lc[(unsigned char)name[0]];
    if (c != 't' && c != 'c') continue; /* most names: no compare */
    if (dsysi_streq_nocase(name, "transfer-encoding")) te = 1;
    else if (dsysi_streq_nocase(name, "content-length")) {
      if (cl && strcmp(cl, value)) return 1;
      cl = value;
    }
  }
  return te && cl;
}

/* Path tricks. Routes match the raw path (as the server's router and the
 * upstream see it: "%2F" stays inside its segment), so an encoded slash
 * cannot move a request to another prefix. Refused (400): a segment that
 * is, or after percent-decoding contains, a dot segment ("..", "%2e%2e",
 * "..%2f..."): an upstream that decodes and normalises would see another
 * path than the one routed; a raw backslash; an encoded NUL. */
static int path_ok(const char *target) {
  size_t plen = strcspn(target, "?");
  const char *seg = target;
  for (size_t i = 0; i <= plen; i++) {
    char c = i < plen ? target[i] : '/';
    if (c == '\\') return 0;
    if (c == '%' && i + 2 < plen && dsysi_hexval(target[i + 1]) == 0 && dsysi_hexval(target[i + 2]) == 0)
      return 0;
    if (c != '/') continue;
    size_t sl = (size_t)(target + i - seg);
    if (memchr(seg, '.', sl) || memchr(seg, '%', sl)) {
      char stack[256];
      char *d = sl < sizeof stack ? stack : malloc(sl + 1);
      if (!d) return 0;
      size_t dl = dsysi_url_decode_into(d, seg, sl, 0);
      /* split the decoded segment on '/' and '\' */
      int bad = 0;
      for (size_t s0 = 0, k = 0; k <= dl && !bad; k++) {
        if (k == dl || d[k] == '/' || d[k] == '\\') {
          size_t pl = k - s0;
          bad = (pl == 1 && d[s0] == '.') || (pl == 2 && d[s0] == '.' && d[s0 + 1] == '.');
          s0 = k + 1;
        }
      }
      if (d != stack) free(d);
      if (bad) return 0;
    }
    seg = target + i + 1;
  }
  return 1;
}

static int method_is_read(const char *m) {
  return !strcmp(m, "GET") || !strcmp(m, "HEAD") || !strcmp(m, "OPTIONS");
}

static void put_rl_headers(dsys_request *req, const dsysi_rl_result *r) {
  char v[32];
  snprintf(v, sizeof v, "%u", r->limit);
  dsys_response_header(req, "RateLimit-Limit", v);
  snprintf(v, sizeof v, "%u", r->remaining);
  dsys_response_header(req, "RateLimit-Remaining", v);
  snprintf(v, sizeof v, "%lld", (long long)r->reset_s);
  dsys_response_header(req, "RateLimit-Reset", v);
}

/* Take a token from each configured bucket in order (kind: 'a'ddress,
 * 'r'oute, 'u'ser). The headers describe the tightest bucket. @return 1
 * when the request was refused (answered 429). */
static int rate_limit(dsysi_rl *rl, dsys_request *req, gw_route *rt, int user_phase,
                      const char *user, dsysi_rl_result *tight, int *have_tight) {
  typedef struct lim_t {
    char kind;
    double rate;
    uint32_t burst;
    const char *who;
  } lim_t;
  lim_t lim[2];
  int n = 0;
  if (!user_phase) {
    if (rt->eo.rate > 0) lim[n++] = (lim_t){'a', rt->eo.rate, rt->eo.burst, dsys_request_remote_addr(req)};
    if (rt->eo.route_rate > 0) lim[n++] = (lim_t){'r', rt->eo.route_rate, rt->eo.route_burst, ""};
  } else if (rt->eo.user_rate > 0 && user && *user) {
    lim[n++] = (lim_t){'u', rt->eo.user_rate, rt->eo.user_burst, user};
  }
  for (int i = 0; i < n; i++) {
    char key[256];
    int kl = snprintf(key, sizeof key, "%zu%c%s", rt->idx, lim[i].kind, lim[i].who);
    if (kl < 0 || (size_t)kl >= sizeof key) kl = (int)sizeof key - 1;
    dsysi_rl_result r;
    dsysi_rl_take(rl, key, (size_t)kl, lim[i].rate, lim[i].burst, &r);
    if (!r.allowed) {
      put_rl_headers(req, &r);
      char ra[32];
      snprintf(ra, sizeof ra, "%lld", (long long)r.retry_after_s);
      dsys_response_header(req, "Retry-After", ra);
      json_object *o = json_object_new_object();
      json_object_object_add(o, "error", json_object_new_string("Too many requests"));
      json_object_object_add(o, "code", json_object_new_string("rate_limited"));
      json_object_object_add(o, "retryAfter", json_object_new_int64(r.retry_after_s));
      respond_json_obj(req, 429, o);
      return 1;
    }
    if (!*have_tight || r.remaining < tight->remaining) {
      *tight = r;
      *have_tight = 1;
    }
  }
  return 0;
}

/* CORS for a route with an origin allowlist. @return 1 when answered (a
 * preflight, allowed or not). */
static int cors(dsys_request *req, gw_route *rt) {
  const char *origin = dsys_request_header(req, "Origin");
  if (!rt->norigins || !origin) return 0;
  int allowed = 0;
  for (size_t i = 0; !allowed && i < rt->norigins; i++)
    allowed = !strcmp(rt->origins[i], "*") || !strcmp(rt->origins[i], origin);
  allowed = allowed && dsysi_header_ok(origin);
  int preflight = !strcmp(dsys_request_method(req), "OPTIONS") &&
                  dsys_request_header(req, "Access-Control-Request-Method");
  dsys_response_header(req, "Vary", "Origin");
  if (!allowed) {
    if (!preflight) return 0; /* proxied without CORS headers: the browser blocks it */
    dsys_respond_error(req, 403, "cors_origin", "CORS origin not allowed");
    return 1;
  }
  dsys_response_header(req, "Access-Control-Allow-Origin", rt->any_origin ? "*" : origin);
  if (!preflight) {
    dsys_response_header(req, "Access-Control-Expose-Headers",
                         "X-Request-Id, Retry-After, RateLimit-Limit, RateLimit-Remaining, "
                         "RateLimit-Reset, Idempotent-Replayed");
    return 0;
  }
  dsys_response_header(req, "Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");
  dsys_response_header(req, "Access-Control-Allow-Headers",
                       "Authorization, Content-Type, Idempotency-Key, X-Request-Id, traceparent");
  dsys_response_header(req, "Access-Control-Max-Age", "600");
  dsys_respond(req, 204, NULL, "", 0);
  return 1;
}

/* JWT at the edge. @return 1 when refused (answered 401). */
static int authenticate(dsys_gateway *gw, dsys_request *req, gw_route *rt, edge *e) {
  if (rt->eo.protect == DSYS_GATEWAY_PROTECT_NONE ||
      (rt->eo.protect == DSYS_GATEWAY_PROTECT_WRITES && method_is_read(dsys_request_method(req))))
    return 0;
  const char *a = dsys_request_header(req, "Authorization");
  dsys_response_header(req, "WWW-Authenticate", "Bearer");
  if (!a || strncasecmp(a, "Bearer ", 7) || !a[7]) {
    dsys_respond_error(req, 401, "unauthorized", "No token provided");
    return 1;
  }
  const char *tok = a + 7;
  while (*tok == ' ') tok++;
  dsys_token_options to = {.size = sizeof to, .alg = "HS256", .clock = gw->o.clock};
  char *claims = NULL;
  int rc = dsys_token_verify(e->t->secret, e->t->secret_len, tok, &to, &claims);
  json_object *o = NULL, *id = NULL;
  if (!rc && (dsysi_json_parse(claims, strlen(claims), &o) || !o ||
              !((json_object_object_get_ex(o, "id", &id) && id) ||
                (json_object_object_get_ex(o, "sub", &id) && id))))
    rc = DSYS_EAUTH;
  if (!rc) {
    const char *v = json_object_is_type(id, json_type_string) ? json_object_get_string(id)
                    : json_object_is_type(id, json_type_int)  ? json_object_to_json_string(id)
                                                              : NULL;
    if (!v || !*v || strlen(v) >= sizeof e->user || !dsysi_header_ok(v)) rc = DSYS_EAUTH;
    else snprintf(e->user, sizeof e->user, "%s", v);
  }
  json_object_put(o);
  dsys_free(claims);
  if (rc) {
    json_object *r = json_object_new_object();
    json_object_object_add(r, "error", json_object_new_string("Invalid token"));
    json_object_object_add(r, "code", json_object_new_string("unauthorized"));
    json_object_object_add(r, "valid", json_object_new_boolean(0));
    respond_json_obj(req, 401, r);
    return 1;
  }
  return 0;
}

/* Idempotency-Key on a POST. @return 1 when answered (replay, 409, 422,
 * 400); otherwise e->idem_key may hold a reservation. */
static int idempotency(dsys_gateway *gw, dsys_request *req, gw_route *rt, edge *e) {
  if (rt->eo.idempotency_ttl_ms <= 0 || strcmp(dsys_request_method(req), "POST")) return 0;
  const char *k = dsys_request_header(req, "Idempotency-Key");
  if (!k) return 0;
  size_t kl = strlen(k);
  if (!kl || kl > 255) {
    dsys_respond_error(req, 400, "bad_idempotency_key", "Idempotency-Key must be 1..255 characters");
    return 1;
  }
  dsysi_buf key = {0};
  dsysi_buf_printf(&key, "%zu\n%s%s\n%s", rt->idx, e->user[0] ? "u:" : "a:",
                   e->user[0] ? e->user : dsys_request_remote_addr(req), k);
  size_t blen;
  const void *body = dsys_request_body(req, &blen);
  uint64_t fp = dsysi_fnv64(0, dsys_request_method(req), strlen(dsys_request_method(req)));
  fp = dsysi_fnv64(fp, " ", 1);
  fp = dsysi_fnv64(fp, e->target, strlen(e->target));
  fp = dsysi_fnv64(fp, "\n", 1);
  fp = dsysi_fnv64(fp, body, blen);
  if (key.oom) {
    dsysi_buf_free(&key);
    dsys_respond_error(req, 500, "DSYS_ENOMEM", "Out of memory");
    return 1;
  }
  dsysi_idem_resp r = {0};
  uint64_t gen = 0;
  int rc = dsysi_idem_begin(e->t->idem, key.data, key.len, fp, rt->eo.idempotency_ttl_ms, &gen, &r);
  if (rc == DSYSI_IDEM_NEW) {
    e->idem_klen = key.len;
    e->idem_key = dsysi_buf_steal(&key, NULL);
    e->idem_gen = gen;
    return 0;
  }
  dsysi_buf_free(&key);
  if (rc == DSYSI_IDEM_REPLAY) {
    for (size_t off = 0; off < r.hlen;) {
      const char *name = r.hdrs + off;
      const char *value = name + strlen(name) + 1;
      off = (size_t)(value - r.hdrs) + strlen(value) + 1;
      dsys_response_header(req, name, value);
    }
    dsys_response_header(req, "Idempotent-Replayed", "true");
    dsys_respond(req, r.status, r.ctype, r.body, r.blen);
    dsysi_idem_resp_free(&r);
  } else if (rc == DSYSI_IDEM_INFLIGHT) {
    dsys_respond_error(req, 409, "idempotency_in_flight",
                       "A request with this Idempotency-Key is still in progress");
  } else if (rc == DSYSI_IDEM_MISMATCH) {
    dsys_respond_error(req, 422, "idempotency_mismatch",
                       "This Idempotency-Key was used for a different request");
  } else {
    dsys_respond_error(req, 500, "DSYS_ENOMEM", "Out of memory");
  }
  return 1;
}

static int f_cors(dsys_gateway *gw, dsys_request *req, gw_route *rt, edge *e) {
  e->strip_cors = rt->norigins > 0;
  return cors(req, rt);
}

static int f_ratelimit(dsys_gateway *gw, dsys_request *req, gw_route *rt, edge *e) {
  return rate_limit(e->t->rl, req, rt, 0, NULL, &e->tight, &e->have_tight);
}

static int f_user_ratelimit(dsys_gateway *gw, dsys_request *req, gw_route *rt, edge *e) {
  return rate_limit(e->t->rl, req, rt, 1, e->user, &e->tight, &e->have_tight);
}


/* ---- the response cache (the "cache" filter; RFC 9111, shared cache) ----
 *
 * Storage is a dsys_cache (bounded in bytes and entries, LRU), used as a
 * map: the loads are the proxy's own, asynchronous. A value is either a
 * stored answer ('R': rc_meta, Content-Type, ETag, headers, body) or, at
 * the primary key of a URL whose answer has a Vary, the list of its
 * names ('V'), the answer itself then being at the key extended by the
 * request's values of those headers. */

#define RCF_PUBLIC 1u     /* Cache-Control: public */
#define RC_KEY_MAX 8192   /* longer keys (huge Vary values): not cached */

typedef struct rc_meta {
  int64_t stored_ms;      /* the gateway's clock when stored or revalidated */
  int64_t fresh_ms;       /* freshness lifetime (0: revalidate every use) */
  int64_t age0_ms;        /* the upstream's Age then */
  uint32_t flags;
  uint32_t ctlen, etlen;  /* with their NUL; 0: none */
  uint32_t hlen;          /* "name\0value\0" pairs */
  uint64_t blen;
} rc_meta;

typedef struct rc_view {
  rc_meta m;
  const char *ctype, *etag, *hdrs, *body;
} rc_view;

static int rc_decode(const char *v, size_t n, rc_view *o) {
  if (n < 1 + sizeof o->m || v[0] != 'R') return -1;
  memcpy(&o->m, v + 1, sizeof o->m);
  const char *p = v + 1 + sizeof o->m;
  if ((uint64_t)o->m.ctlen + o->m.etlen + o->m.hlen + o->m.blen != n - 1 - sizeof o->m) return -1;
  o->ctype = o->m.ctlen ? p : NULL;
  o->etag = o->m.etlen ? p + o->m.ctlen : NULL;
  o->hdrs = p + o->m.ctlen + o->m.etlen;
  o->body = o->hdrs + o->m.hlen;
  if ((o->ctype && o->ctype[o->m.ctlen - 1]) || (o->etag && o->etag[o->m.etlen - 1]) ||
      (o->m.hlen && o->hdrs[o->m.hlen - 1]))
    return -1;
  return 0;
}

/* The key of a request: the upstream, Host and target, then for each
 * Vary name the request's value (or its absence). @return 0, or -1 when
 * too long or out of memory (not cached). */
static int rc_key(dsysi_buf *k, dsys_request *req, const edge *e, char names[][64], size_t nn) {
  const char *host = dsys_request_header(req, "Host");
  dsysi_buf_printf(k, "%s\n%s\n%s", e->rt->up->name, host ? host : "", e->target);
  for (size_t i = 0; i < nn; i++) {
    const char *v = dsys_request_header(req, names[i]);
    dsysi_buf_printf(k, "\n%s%s", v ? "=" : "!", v ? v : "");
  }
  if (!k->oom && k->len <= RC_KEY_MAX) return 0;
  dsysi_buf_free(k);
  return -1;
}

/* Look a request up: the stored answer for its key (and, through a Vary
 * record, for its header values), copied to *v; *key its key. */
static void rc_lookup(dsys_cache *c, dsys_request *req, const edge *e, char **v, size_t *n,
                      char **key) {
  dsysi_buf k = {0};
  *v = NULL;
  *key = NULL;
  if (rc_key(&k, req, e, NULL, 0)) return;
  void *got = NULL;
  if (dsys_cache_get(c, k.data, NULL, NULL, &got, n) == 0 && *n && ((char *)got)[0] == 'V') {
    char names[DSYSI_VARY_MAX][64];
    size_t nn = 0;
    char *list = dsysi_strndup((char *)got + 1, *n - 1);
    int bad = !list || dsysi_vary_parse(list, names, &nn);
    free(list);
    dsys_free(got);
    got = NULL;
    dsysi_buf_free(&k);
    if (bad || rc_key(&k, req, e, names, nn)) return;
    if (dsys_cache_get(c, k.data, NULL, NULL, &got, n)) got = NULL;
  }
  if (!got) {
    dsysi_buf_free(&k);
    return;
  }
  *v = got;
  *key = dsysi_buf_steal(&k, NULL);
  if (!*key) {
    dsys_free(got);
    *v = NULL;
  }
}

/* Answer req from a stored answer; its age in ms. */
static void rc_serve(dsys_request *req, const edge *e, const rc_view *w, const char *xcache,
                     int64_t age_ms) {
  for (size_t off = 0; off < w->m.hlen;) {
    const char *name = w->hdrs + off, *value = name + strlen(name) + 1;
    off = (size_t)(value - w->hdrs) + strlen(value) + 1;
    if (dsysi_fwd_response_header(name, drop_cors(e))) dsys_response_header(req, name, value);
  }
  char age[24];
  snprintf(age, sizeof age, "%lld", (long long)(age_ms > 0 ? age_ms / 1000 : 0));
  dsys_response_header(req, "Age", age);
  dsys_response_header(req, "X-Cache", xcache);
  if (w->etag && dsysi_etag_list_match(dsys_request_header(req, "If-None-Match"), w->etag))
    dsys_respond(req, 304, NULL, NULL, 0);
  else
    dsys_respond(req, 200, w->ctype, w->body, (size_t)w->m.blen);
}

static int f_cache(dsys_gateway *gw, dsys_request *req, gw_route *rt, edge *e) {
  if (rt->eo.cache == DSYS_GATEWAY_CACHE_OFF || !e->t->rcache) return 0;
  const char *m = dsys_request_method(req);
  int get = !strcmp(m, "GET"), head = !strcmp(m, "HEAD");
  if (!get && !head) {
    if (!method_is_read(m)) e->rc = RC_INVALIDATE;
    return 0;
  }
  /* One pass over the headers: the request's Cache-Control (all of it),
   * Pragma, credentials (a shared cache must not hand an answer to them
   * to others unless it says public; Cookie counts like Authorization:
   * sessions ride on it), and what this cache does not do: ranges, and
   * conditions other than If-None-Match (it keeps no Last-Modified). */
  dsysi_cc rq;
  dsysi_cc_init(&rq);
  int has_cc = 0, pragma_no_cache = 0, unsupported = 0;
  size_t nh = dsys_request_header_count(req);
  for (size_t i = 0; i < nh; i++) {
    const char *hn, *hv;
    dsys_request_header_at(req, i, &hn, &hv);
    switch (dsysi_lc[(unsigned char)hn[0]]) { /* most names: no compare */
    case 'c':
      if (!strcasecmp(hn, "Cache-Control")) has_cc = 1, dsysi_cc_parse(&rq, hv);
      else if (!strcasecmp(hn, "Cookie")) e->rc_cred = 1;
      break;
    case 'a':
      if (!strcasecmp(hn, "Authorization")) e->rc_cred = 1;
      break;
    case 'p':
      if (!strcasecmp(hn, "Pragma") && strcasestr(hv, "no-cache")) pragma_no_cache = 1;
      break;
    case 'r':
      if (!strcasecmp(hn, "Range")) unsupported = 1;
      break;
    case 'i':
      if (!strcasecmp(hn, "If-Range") || !strcasecmp(hn, "If-Match") ||
          !strcasecmp(hn, "If-Modified-Since") || !strcasecmp(hn, "If-Unmodified-Since"))
        unsupported = 1;
      break;
    }
  }
  if (!has_cc && pragma_no_cache) rq.no_cache = 1;
  if (rq.bad || rq.no_store || unsupported) {
    e->rc = RC_BYPASS;
    return 0;
  }
  e->rc = get ? RC_STORE : RC_MISS;
  char *v, *key;
  size_t n;
  rc_lookup(e->t->rcache, req, e, &v, &n, &key);
  rc_view w;
  if (v && !rc_decode(v, n, &w) &&
      (!e->rc_cred || rt->eo.cache == DSYS_GATEWAY_CACHE_AUTHORIZED ||
       (w.m.flags & RCF_PUBLIC))) {
    int64_t age = w.m.age0_ms + dsys_clock_now_ms(gw->o.clock) - w.m.stored_ms;
    if (age < w.m.fresh_ms && !rq.no_cache && !(rq.max_age >= 0 && age >= rq.max_age * 1000)) {
      atomic_fetch_add_explicit(&gw->c_hit, 1, memory_order_relaxed);
      rc_serve(req, e, &w, "HIT", age);
      dsys_free(v);
      free(key);
      return 1;
    }
    if (get && w.etag) { /* stale: ask the upstream whether it changed */
      e->rc = RC_REVAL;
      e->rc_ent = v;
      e->rc_len = n;
      e->rc_key = key;
      return 0;
    }
  }
  dsys_free(v);
  free(key);
  return 0;
}

/* The revalidation request's headers: the client's, minus its own
 * conditions, plus If-None-Match with the stored ETag. @return 0 or
 * DSYS_ENOMEM. */
static int rc_conditional(px *p) {
  rc_view w;
  if (rc_decode(p->e.rc_ent, p->e.rc_len, &w)) return DSYS_EINVAL; /* decoded before */
  p->rch = malloc((p->fwd.n + 1) * sizeof *p->rch);
  if (!p->rch) return DSYS_ENOMEM;
  size_t k = 0;
  for (size_t i = 0; i < p->fwd.n; i++)
    if (strcasecmp(p->fwd.h[i].name, "If-None-Match")) p->rch[k++] = p->fwd.h[i];
  p->rch[k++] = (dsys_header){"If-None-Match", w.etag};
  p->nrch = k;
  return 0;
}

/* Cache-Control and Age of an upstream answer into m (fresh_ms, flags,
 * age0_ms). @return 0, or -1 when it may not be stored. */
static int rc_policy(dsys_gateway *gw, const dsys_reply *r, rc_meta *m, int credentials,
                     int32_t mode) {
  dsysi_cc cc;
  dsysi_cc_init(&cc);
  for (size_t i = 0; i < r->hdrs.n; i++)
    if (!strcasecmp(r->hdrs.v[i].name, "Cache-Control")) dsysi_cc_parse(&cc, r->hdrs.v[i].value);
  if (cc.bad || cc.no_store || cc.private_) return -1;
  if (credentials && !cc.public_ && mode != DSYS_GATEWAY_CACHE_AUTHORIZED) return -1;
  int64_t secs = cc.no_cache ? 0 : cc.s_maxage >= 0 ? cc.s_maxage : cc.max_age >= 0 ? cc.max_age : 0;
  m->fresh_ms = secs * 1000 < gw->o.cache_max_ttl_ms ? secs * 1000 : gw->o.cache_max_ttl_ms;
  m->flags = cc.public_ ? RCF_PUBLIC : 0;
  const char *age = dsysi_hdrs_get(&r->hdrs, "Age");
  char *end;
  long long a = age ? strtoll(age, &end, 10) : 0;
  m->age0_ms = age && end != age && !*end && a >= 0 && a < 2147483648LL ? a * 1000 : 0;
  m->stored_ms = dsys_clock_now_ms(gw->o.clock);
  return 0;
}

/* Store a 200 answer to a GET when its headers allow it. */
static void rc_store(px *p, const dsys_reply *r) {
  dsys_gateway *gw = p->gw;
  edge *e = &p->e;
  rc_meta m = {0};
  const char *etag = dsysi_hdrs_get(&r->hdrs, "ETag");
  if (etag && (strlen(etag) > 256 || !dsysi_header_ok(etag))) etag = NULL;
  if (rc_policy(gw, r, &m, e->rc_cred, e->rt->eo.cache) ||
      (!m.fresh_ms && !etag) || r->body_len > gw->o.cache_max_object)
    return; /* useless without freshness or a validator */
  char names[DSYSI_VARY_MAX][64];
  size_t nn = 0;
  dsysi_buf hb = {0}, vb = {0};
  for (size_t i = 0; i < r->hdrs.n; i++) {
    const char *name = r->hdrs.v[i].name, *value = r->hdrs.v[i].value;
    if (!strcasecmp(name, "Set-Cookie")) goto out; /* never shared */
    if (!strcasecmp(name, "Vary")) {
      if (dsysi_vary_parse(value, names, &nn)) goto out; /* "*", malformed, too many */
      dsysi_buf_printf(&vb, "%s%s", vb.len ? "," : "V", value);
    }
    if (!dsysi_fwd_response_header(name, 0) || !strcasecmp(name, "Age") ||
        !strcasecmp(name, "X-Cache"))
      continue;
    dsysi_buf_append(&hb, name, strlen(name) + 1);
    dsysi_buf_append(&hb, value, strlen(value) + 1);
  }
  const char *ct = dsysi_reply_ctype(r);
  m.ctlen = ct ? (uint32_t)strlen(ct) + 1 : 0;
  m.etlen = etag ? (uint32_t)strlen(etag) + 1 : 0;
  m.hlen = (uint32_t)hb.len;
  m.blen = r->body_len;
  dsysi_buf val = {0}, k = {0}, pk = {0};
  dsysi_buf_append(&val, "R", 1);
  dsysi_buf_append(&val, &m, sizeof m);
  if (ct) dsysi_buf_append(&val, ct, m.ctlen);
  if (etag) dsysi_buf_append(&val, etag, m.etlen);
  if (hb.len) dsysi_buf_append(&val, hb.data, hb.len);
  if (r->body_len) dsysi_buf_append(&val, r->body, r->body_len);
  if (!val.oom && !hb.oom && !vb.oom && !rc_key(&pk, p->req, e, NULL, 0) &&
      (!nn || !rc_key(&k, p->req, e, names, nn))) {
    dsys_cache *c = e->t->rcache;
    if (nn) { /* the Vary record first: a reader then finds the answer or nothing */
      dsys_cache_put(c, k.data, val.data, val.len);
      dsys_cache_put(c, pk.data, vb.data, vb.len);
    } else {
      dsys_cache_put(c, pk.data, val.data, val.len);
    }
    atomic_fetch_add_explicit(&gw->c_stored, 1, memory_order_relaxed);
  }
  dsysi_buf_free(&val);
  dsysi_buf_free(&k);
  dsysi_buf_free(&pk);
out:
  dsysi_buf_free(&hb);
  dsysi_buf_free(&vb);
}

/* The cache filter's answer side, before an upstream answer goes back.
 * @return 1 when it answered the request itself (a 304 confirmed the
 * stored answer), 0 when the upstream's answer goes on. */
static int rc_reply(px *p, dsys_reply *r) {
  dsys_gateway *gw = p->gw;
  edge *e = &p->e;
  int status = dsys_reply_status(r);
  const char *x = "MISS";
  switch (e->rc) {
  case RC_INVALIDATE:
    if (status < 400) { /* RFC 9111 4.4: a write through the cache */
      dsysi_buf k = {0};
      if (!rc_key(&k, p->req, e, NULL, 0)) dsys_cache_invalidate(e->t->rcache, k.data);
      dsysi_buf_free(&k);
    }
    return 0;
  case RC_BYPASS:
    x = "BYPASS";
    break;
  case RC_REVAL: {
    rc_view w;
    if (status == 304 && !rc_decode(e->rc_ent, e->rc_len, &w)) {
      rc_meta m = w.m;
      int has_cc = dsysi_hdrs_get(&r->hdrs, "Cache-Control") != NULL;
      int ok = !rc_policy(gw, r, &m, e->rc_cred, e->rt->eo.cache);
      if (!has_cc) { /* the stored directives still hold */
        m.fresh_ms = w.m.fresh_ms;
        m.flags = w.m.flags;
      }
      if (!ok && has_cc) {
        dsys_cache_invalidate(e->t->rcache, e->rc_key);
      } else if (m.fresh_ms || m.fresh_ms != w.m.fresh_ms || m.flags != w.m.flags) {
        /* fresh again from now; an answer revalidated at every use
         * (no-cache) needs no new copy, so it is not put again (it then
         * leaves after cache_max_ttl_ms and is stored anew) */
        memcpy(e->rc_ent + 1, &m, sizeof m);
        dsys_cache_put(e->t->rcache, e->rc_key, e->rc_ent, e->rc_len);
      }
      atomic_fetch_add_explicit(&gw->c_reval, 1, memory_order_relaxed);
      rc_serve(p->req, e, &w, "REVALIDATED", m.age0_ms);
      return 1;
    }
    if (status != 200) dsys_cache_invalidate(e->t->rcache, e->rc_key);
  } /* fallthrough: a 200 replaces it */
  /* fallthrough */
  case RC_STORE:
    if (status == 200) rc_store(p, r);
    break;
  default:
    break;
  }
  atomic_fetch_add_explicit(!strcmp(x, "BYPASS") ? &gw->c_bypass : &gw->c_miss, 1,
                            memory_order_relaxed);
  dsys_response_header(p->req, "X-Cache", x);
  return 0;
}

/* One edge filter: on_request returns 0 to go on, 1 when it answered the
 * request (the chain stops); on_response, where there is one, sees the
 * answer before it goes back (status 0: a stream, never stored). */
typedef struct edge_filter {
  int (*on_request)(dsys_gateway *gw, dsys_request *req, gw_route *rt, edge *e);
  void (*on_response)(dsys_gateway *gw, edge *e, int status, const char *ctype,
                      const dsysi_hdrs *h, const void *body, size_t len);
} edge_filter;

/* In the order of filter_names. */
static const edge_filter edge_filters[NFILTERS] = {
    [F_CORS] = {f_cors, NULL},
    [F_RATELIMIT] = {f_ratelimit, NULL},
    [F_JWT] = {authenticate, NULL},
    [F_USER_RATELIMIT] = {f_user_ratelimit, NULL},
    [F_IDEMPOTENCY] = {idempotency, idem_finish},
    [F_CACHE] = {f_cache, NULL}, /* its answer side is rc_reply (it may answer) */
};

/* The answer to a request that passed the chain (or failed upstream): the
 * route's response hooks, last filter first. */
static void edge_respond(dsys_gateway *gw, edge *e, int status, const char *ctype,
                         const dsysi_hdrs *h, const void *body, size_t len) {
  for (int i = e->rt->nchain - 1; i >= 0; i--) {
    const edge_filter *f = &edge_filters[e->rt->chain[i]];
    if (f->on_response) f->on_response(gw, e, status, ctype, h, body, len);
  }
}

static void h_proxy(dsys_request *req, void *ud) {
  dsys_gateway *gw = ud;
  edge e = {.target = dsys_request_target(req)};
  if (ambiguous_framing(req)) {
    dsys_response_header(req, "Connection", "close");
    dsys_respond_error(req, 400, "bad_framing",
                       "Ambiguous request framing (Content-Length and Transfer-Encoding, or two Content-Lengths)");
    return;
  }
  if (!path_ok(e.target)) {
    dsys_respond_error(req, 400, "bad_path", "Dot segments are not allowed in paths");
    return;
  }
  e.t = t_get(gw);
  /* /v1 aliases the current API: /v1/api/data/x -> /api/data/x upstream. */
  if (!e.t->v1_routes && !strncmp(e.target, "/v1/", 4)) e.target += 3;
  gw_route *rt = match(e.t, e.target); /* the raw path: see path_ok */
  if (!rt) {
    t_put(gw, e.t);
    dsys_respond_error(req, 404, "not_found", "Not found");
    return;
  }
  e.rt = rt;
  for (int i = 0; i < rt->nchain; i++) {
    if (edge_filters[rt->chain[i]].on_request(gw, req, rt, &e)) {
      t_put(gw, e.t);
      edge_free(&e);
      return;
    }
    /* the tightest bucket's headers, once the last limiter let it pass */
    if (i == rt->rl_last && e.have_tight) put_rl_headers(req, &e.tight);
  }
  proxy(gw, rt, req, &e); /* takes the table's reference */
}

/* ---- local routes ---- */


static json_object *endpoints_json(dsys_gateway *gw, gw_upstream *up, int detailed,
                                   int *total, int *healthy) {
  json_object *arr = json_object_new_array();
  dsys_endpoint_stats *st = NULL;
  size_t n = 0;
  dsys_upstream_stats(up->u, &st, &n);
  dsys_instance *inst = NULL;
  size_t ni = 0;
  /* names and metadata from the upstream's own records: a registry read
   * here made /status wait for a slow or electing etcd (up to its 2 s
   * election wait, showing a view that old) */
  if (detailed && up->from_registry) dsys_upstream_instances(up->u, &inst, &ni);
  for (size_t i = 0; i < n; i++) {
    json_object *e = json_object_new_object();
    json_object_object_add(e, "url", json_object_new_string(st[i].url));
    json_object_object_add(e, "healthy", json_object_new_boolean(st[i].usable));
    json_object_object_add(e, "failures", json_object_new_int64((int64_t)st[i].failures));
    if (detailed) {
      json_object_object_add(e, "ejected", json_object_new_boolean(st[i].ejected));
      const dsys_instance *in = NULL;
      for (size_t k = 0; k < ni; k++)
        if (!strcmp(inst[k].id, st[i].id)) in = &inst[k];
      json_object_object_add(e, "serviceId", json_object_new_string(st[i].id));
      json_object_object_add(e, "name", json_object_new_string(in && in->name ? in->name : st[i].id));
      json_object *md = NULL;
      if (in && in->metadata) dsysi_json_parse(in->metadata, strlen(in->metadata), &md);
      json_object_object_add(e, "metadata", md ? md : json_object_new_object());
    }
    json_object_array_add(arr, e);
    if (total) (*total)++;
    if (healthy && st[i].usable) (*healthy)++;
  }
  dsys_free(st);
  dsys_free(inst);
  return arr;
}

static void h_health(dsys_request *req, void *ud) {
  dsys_gateway *gw = ud;
  json_object *o = json_object_new_object();
  json_object *svcs = json_object_new_object();
  int degraded = 0;
  gw_table *t = t_get(gw);
  for (size_t i = 0; i < t->nups; i++) {
    int total = 0, healthy = 0;
    json_object *list = endpoints_json(gw, &t->ups[i], 0, &total, &healthy);
    json_object *s = json_object_new_object();
    json_object_object_add(s, "total", json_object_new_int(total));
    json_object_object_add(s, "healthy", json_object_new_int(healthy));
    json_object_object_add(s, "unhealthy", json_object_new_int(total - healthy));
    json_object_object_add(s, "services", list);
    json_object_object_add(svcs, t->ups[i].name, s);
    if (healthy == 0 || healthy < total) degraded = 1;
  }
  t_put(gw, t);
  json_object_object_add(o, "status", json_object_new_string(degraded ? "degraded" : "healthy"));
  json_object_object_add(o, "loadBalancer", json_object_new_string("operational"));
  json_object_object_add(o, "timestamp", dsysi_json_time(dsys_clock_wall_ms(gw->o.clock)));
  json_object_object_add(o, "uptime", json_object_new_double(
      (double)(dsys_clock_now_ms(gw->o.clock) - gw->start_ms) / 1000.0));
  json_object_object_add(o, "services", svcs);
  dsysi_respond_obj(req, 200, o);
}

static json_object *metrics_entry(dsys_gateway *gw, const char *name, const char *type,
                                  const char *url, uint64_t total, uint64_t success) {
  double up_s = (double)(dsys_clock_now_ms(gw->o.clock) - gw->start_ms) / 1000.0;
  json_object *m = json_object_new_object();
  json_object_object_add(m, "name", json_object_new_string(name));
  json_object_object_add(m, "type", json_object_new_string(type));
  json_object_object_add(m, "url", url ? json_object_new_string(url) : NULL);
  json_object_object_add(m, "total", json_object_new_int64((int64_t)total));
  json_object_object_add(m, "success", json_object_new_int64((int64_t)success));
  json_object_object_add(m, "failed", json_object_new_int64((int64_t)(total - success)));
  json_object_object_add(m, "requestsPerSecond", json_object_new_double(up_s > 0 ? (double)total / up_s : 0));
  json_object_object_add(m, "successRate", json_object_new_double(total ? 100.0 * (double)success / (double)total : 100.0));
  return m;
}

static json_object *request_metrics(dsys_gateway *gw, gw_table *t) {
  json_object *metrics = json_object_new_object();
  uint64_t success = atomic_load(&gw->success), total = success + atomic_load(&gw->failed);
  json_object *lb = metrics_entry(gw, gw->name, "load-balancer", NULL, total, success);
  json_object *fbt = json_object_new_object();
  for (size_t i = 0; i < t->nups; i++)
    json_object_object_add(fbt, t->ups[i].name,
                           json_object_new_int64((int64_t)atomic_load(&t->ups[i].failed)));
  json_object_object_add(lb, "failuresByServiceType", fbt);
  json_object_object_add(metrics, "load-balancer", lb);
  for (size_t i = 0; i < t->nups; i++) {
    dsys_endpoint_stats *st = NULL;
    size_t n = 0;
    dsys_upstream_stats(t->ups[i].u, &st, &n);
    for (size_t k = 0; k < n; k++)
      json_object_object_add(metrics, st[k].url,
                             metrics_entry(gw, st[k].id, t->ups[i].name, st[k].url,
                                           st[k].requests, st[k].successes));
    dsys_free(st);
  }
  return metrics;
}

/* Per upstream: the adaptive per-try timeout, hedging and slowness
 * counters (dsys_upstream_latency). */
static json_object *latency_json(gw_table *t) {
  json_object *o = json_object_new_object();
  for (size_t i = 0; i < t->nups; i++) {
    dsys_upstream_latency l = {.size = sizeof l};
    dsys_upstream_latency_get(t->ups[i].u, &l);
    json_object *e = json_object_new_object();
#define F(k, v) json_object_object_add(e, k, json_object_new_int64((int64_t)(v)))
    F("tryTimeoutMs", l.try_timeout_ms);
    F("hedgeDelayMs", l.hedge_delay_ms);
    F("windowAnswers", l.window_answers);
    F("attemptTimeouts", l.attempt_timeouts);
    F("slowAnswers", l.slow_answers);
    F("hedges", l.hedges);
    F("hedgesWon", l.hedges_won);
    F("slowEjections", l.slow_ejections);
#undef F
    json_object_object_add(o, t->ups[i].name, e);
  }
  return o;
}

static void h_metrics(dsys_request *req, void *ud) {
  dsys_gateway *gw = ud;
  json_object *o = json_object_new_object();
  gw_table *t = t_get(gw);
  json_object_object_add(o, "metrics", request_metrics(gw, t));
  /* the fault detector turns growth of these counters into events */
  json_object_object_add(o, "latency", latency_json(t));
  t_put(gw, t);
  json_object_object_add(o, "timestamp", dsysi_json_time(dsys_clock_wall_ms(gw->o.clock)));
  dsysi_respond_obj(req, 200, o);
}


static void h_status(dsys_request *req, void *ud) {
  dsys_gateway *gw = ud;
  json_object *o = json_object_new_object();
  json_object *svcs = json_object_new_object();
  json_object *rr = json_object_new_object();
  gw_table *t = t_get(gw);
  for (size_t i = 0; i < t->nups; i++) {
    json_object_object_add(svcs, t->ups[i].name, endpoints_json(gw, &t->ups[i], 1, NULL, NULL));
    dsys_upstream_totals tot;
    dsys_upstream_totals_get(t->ups[i].u, &tot);
    json_object_object_add(rr, t->ups[i].name, json_object_new_int64((int64_t)tot.picks));
  }
  json_object_object_add(o, "services", svcs);
  json_object_object_add(o, "roundRobin", rr);
  json_object_object_add(o, "latency", latency_json(t));
  json_object_object_add(o, "requestMetrics", request_metrics(gw, t));
  t_put(gw, t);
  json_object_object_add(o, "timestamp", dsysi_json_time(dsys_clock_wall_ms(gw->o.clock)));
  dsysi_respond_obj(req, 200, o);
}

static void h_rr_reset(dsys_request *req, void *ud) {
  dsys_gateway *gw = ud;
  size_t len;
  const char *body = dsys_request_body(req, &len);
  json_object *o = NULL;
  const char *type = NULL;
  if (len) {
    if (dsysi_json_parse_object(body, len, &o)) {
      dsys_respond_error(req, 400, "DSYS_EBADJSON", "Malformed JSON body");
      return;
    }
    json_object *t;
    if (json_object_object_get_ex(o, "serviceType", &t) && t) {
      if (!json_object_is_type(t, json_type_string)) {
        json_object_put(o);
        dsys_respond_error(req, 400, "invalid_service_type", "Invalid service type");
        return;
      }
      type = json_object_get_string(t);
    }
  }
  char msg[200];
  gw_table *t = t_get(gw);
  if (type) {
    gw_upstream *up = find_upstream(t, type);
    if (!up) {
      t_put(gw, t);
      json_object_put(o);
      dsys_respond_error(req, 400, "invalid_service_type", "Invalid service type");
      return;
    }
    dsys_upstream_reset_rr(up->u);
    snprintf(msg, sizeof msg, "Round-robin counter reset for %s", type);
  } else {
    for (size_t i = 0; i < t->nups; i++) dsys_upstream_reset_rr(t->ups[i].u);
    snprintf(msg, sizeof msg, "All round-robin counters reset");
  }
  t_put(gw, t);
  json_object_put(o);
  json_object *r = json_object_new_object();
  json_object_object_add(r, "success", json_object_new_boolean(1));
  json_object_object_add(r, "message", json_object_new_string(msg));
  json_object_object_add(r, "timestamp", dsysi_json_time(dsys_clock_wall_ms(gw->o.clock)));
  dsysi_respond_obj(req, 200, r);
}

/* The limiter and the cache the routes of t use (created on first need,
 * then kept across reloads), set in t. */
static int edge_state(dsys_gateway *gw, gw_table *t) {
  int rc = 0, need_rl = 0, need_idem = 0, need_cache = 0;
  for (size_t i = 0; i < t->nroutes; i++) {
    need_cache |= t->routes[i].eo.cache != DSYS_GATEWAY_CACHE_OFF;
    need_rl |= t->routes[i].eo.rate > 0 || t->routes[i].eo.user_rate > 0 ||
               t->routes[i].eo.route_rate > 0;
    need_idem |= t->routes[i].eo.idempotency_ttl_ms > 0;
  }
  if (need_rl && !gw->rl) rc = dsysi_rl_new(&gw->rl, gw->o.max_buckets, gw->o.clock);
  if (!rc && need_idem && !gw->idem)
    rc = dsysi_idem_new(&gw->idem, gw->o.idempotency_max_keys, gw->o.idempotency_max_body,
                        gw->o.clock);
  if (!rc && need_cache && !gw->rcache) {
    dsys_cache_options co = {.size = sizeof co, .max_bytes = gw->o.cache_max_bytes,
                             .max_entries = gw->o.cache_max_entries,
                             .ttl_ms = gw->o.cache_max_ttl_ms, .clock = gw->o.clock};
    rc = dsys_cache_new(&gw->rcache, &co);
  }
  /* caching turned off everywhere: give the memory back (the cache itself
   * stays, for its counters and a later reload) */
  if (!rc && !need_cache && gw->rcache) dsys_cache_clear(gw->rcache);
  t->rl = gw->rl;
  t->idem = gw->idem;
  t->rcache = gw->rcache;
  return rc;
}

int dsys_gateway_mount(dsys_gateway *gw, dsys_server *srv) {
  if (!gw || !srv) return DSYS_EINVAL;
  if (gw->srv) return DSYS_ESTATE;
  int rc = edge_state(gw, gw->cur);
  if (!rc) rc = dsys_server_route(srv, "GET", "/health", h_health, gw);
  if (!rc) rc = dsys_server_route(srv, "GET", "/status", h_status, gw);
  if (!rc) rc = dsys_server_route(srv, "GET", "/api/metrics", h_metrics, gw);
  if (!rc) rc = dsys_server_route(srv, "POST", "/api/round-robin/reset", h_rr_reset, gw);
  if (!rc) rc = dsys_server_route(srv, "*", "/*", h_proxy, gw);
  if (!rc) gw->srv = srv;
  return rc;
}

int dsys_gateway_reload(dsys_gateway *gw, dsys_gateway *next) {
  if (!gw || !next || gw == next || next->srv || !next->cur) return DSYS_EINVAL;
  if (!gw->reaper_started) {
    if (pthread_create(&gw->reaper, NULL, reaper_main, gw)) return DSYS_ENOMEM;
    gw->reaper_started = 1;
  }
  gw_table *t = next->cur;
  if (!gw->rcache) { /* its bounds are those of the first gateway that needs it */
    gw->o.cache_max_bytes = next->o.cache_max_bytes;
    gw->o.cache_max_entries = next->o.cache_max_entries;
    gw->o.cache_max_ttl_ms = next->o.cache_max_ttl_ms;
  }
  int rc = edge_state(gw, t);
  if (rc) return rc;
  /* Unchanged upstreams carry on: the new table takes the running one
   * (only this thread changes tables; the old one stays current until the
   * swap below, so the reference taken here is never the last). */
  gw_table *cur = gw->cur;
  for (size_t i = 0; i < t->nups; i++) {
    gw_upstream *nu = &t->ups[i], *ou = find_upstream(cur, nu->name);
    if (!ou || !ou->shareable || !nu->shareable || strcmp(ou->def, nu->def) ||
        ou->from_registry != nu->from_registry)
      continue;
    dsys_upstream_free(nu->u); /* never used */
    free(nu->urefs);
    atomic_fetch_add(ou->urefs, 1);
    nu->u = ou->u;
    nu->urefs = ou->urefs;
  }
  pthread_rwlock_wrlock(&gw->tlk);
  gw_table *old = gw->cur;
  gw->cur = t;
  pthread_rwlock_unlock(&gw->tlk);
  next->cur = NULL;
  dsys_gateway_free(next);
  pthread_mutex_lock(&gw->rmu);
  old->retired_next = gw->retired;
  gw->retired = old;
  pthread_mutex_unlock(&gw->rmu);
  t_put(gw, old); /* the current table's own reference */
  return 0;
}

void dsys_gateway_free(dsys_gateway *gw) {
  if (!gw) return;
  if (gw->reaper_started) {
    pthread_mutex_lock(&gw->rmu);
    gw->reaper_stop = 1;
    pthread_cond_signal(&gw->rcv);
    pthread_mutex_unlock(&gw->rmu);
    pthread_join(gw->reaper, NULL);
  }
  pthread_mutex_lock(&gw->rmu);
  reap(gw, 1); /* the server stopped: nobody holds them */
  pthread_mutex_unlock(&gw->rmu);
  t_free(gw->cur);
  dsysi_rl_free(gw->rl);
  dsysi_idem_free(gw->idem);
  dsys_cache_free(gw->rcache);
  for (int i = 0; i < 3; i++) free(gw->upstream_tls[i]);
  pthread_rwlock_destroy(&gw->tlk);
  pthread_mutex_destroy(&gw->rmu);
  pthread_cond_destroy(&gw->rcv);
  free(gw->name);
  free(gw);
}

/* ---- introspection (metrics) ---- */

/* The response cache's series (once a route needed the cache). */
static void collect_cache(dsys_metrics *reg, dsys_gateway *gw, dsys_cache *c) {
  static const struct {
    const char *outcome;
    size_t off;
  } outcomes[] = {{"hit", offsetof(dsys_gateway, c_hit)},
                  {"miss", offsetof(dsys_gateway, c_miss)},
                  {"revalidated", offsetof(dsys_gateway, c_reval)},
                  {"bypass", offsetof(dsys_gateway, c_bypass)}};
  const char *ln[] = {"outcome"};
  dsys_counter *k = NULL;
  for (size_t i = 0; i < sizeof outcomes / sizeof outcomes[0]; i++) {
    const char *lv[] = {outcomes[i].outcome};
    if (!dsys_metrics_counter(reg, "dsys_gateway_cache_requests_total",
                              "GET and HEAD requests on caching routes, by X-Cache outcome.", ln,
                              lv, 1, &k))
      dsys_counter_store(k, atomic_load((atomic_uint_fast64_t *)((char *)gw + outcomes[i].off)));
  }
  dsys_cache_stats st;
  dsys_cache_get_stats(c, &st);
  if (!dsys_metrics_counter(reg, "dsys_gateway_cache_stores_total", "Upstream answers stored.",
                            NULL, NULL, 0, &k))
    dsys_counter_store(k, atomic_load(&gw->c_stored));
  if (!dsys_metrics_counter(reg, "dsys_gateway_cache_evictions_total",
                            "Stored answers dropped to stay within the size bounds.", NULL, NULL,
                            0, &k))
    dsys_counter_store(k, st.evictions);
  dsys_gauge *g = NULL;
  if (!dsys_metrics_gauge(reg, "dsys_gateway_cache_entries",
                          "Entries in the response cache (answers and Vary records).", NULL,
                          NULL, 0, &g))
    dsys_gauge_set(g, (double)st.entries);
  if (!dsys_metrics_gauge(reg, "dsys_gateway_cache_bytes",
                          "Bytes held by the response cache (keys, headers, bodies, overhead).",
                          NULL, NULL, 0, &g))
    dsys_gauge_set(g, (double)st.bytes);
}

static void collect_gw(dsys_metrics *reg, void *ud) {
  dsys_gateway *gw = ud;
  gw_table *t = t_get(gw);
  for (size_t i = 0; i < t->nups; i++) dsysi_metrics_collect_upstream(reg, t->ups[i].name, t->ups[i].u);
  if (t->rcache) collect_cache(reg, gw, t->rcache);
  t_put(gw, t);
}

int dsys_gateway_metrics(dsys_gateway *gw, dsys_metrics *reg) {
  if (!gw || !reg) return DSYS_EINVAL;
  return dsys_metrics_on_collect(reg, collect_gw, gw);
}

size_t dsys_gateway_upstream_count(dsys_gateway *gw) { return gw ? gw->cur->nups : 0; }

int dsys_gateway_upstream_at(dsys_gateway *gw, size_t i, const char **name,
                             dsys_upstream **u) {
  if (!gw || i >= gw->cur->nups) return DSYS_EINVAL;
  if (name) *name = gw->cur->ups[i].name;
  if (u) *u = gw->cur->ups[i].u;
  return 0;
}
