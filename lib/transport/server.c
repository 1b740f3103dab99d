/*
 * dsys_server: router, built-in middleware, dispatch, graceful stop.
 * Transport-independent: listeners hand complete requests to
 * dsysi_server_dispatch and are told about answers through ops->notify.
 */
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <json-c/json.h>
#include <distsys/util.h>
#include "transport/evloop.h"
#include "transport/transport.h"
#include "transport/url.h"

#define MAX_LISTENERS 8
#define MAX_SEGS 32

typedef struct route {
  char *method; /* "*" = any */
  char *pattern; /* as given, for the access log and metrics labels */
  char **segs;  /* pattern segments; ":x" params, "*" rest */
  size_t *seglens; /* their lengths (routing runs per request) */
  size_t nsegs;
  size_t nparams; /* ":x" segments plus the rest, if any */
  int any_method; /* method "*" */
  int rest;     /* trailing "*" */
  dsys_handler_fn fn;
  void *ud;
} route;

typedef struct hook {
  dsys_hook_fn fn;
  void *ud;
} hook;

/* dsys_server.stopping: running; stopping, the listeners not yet closed
 * (drain_keepalive: answers still keep connections open); stopping but
 * still serving requests on open connections (drain_keepalive); stopping
 * and answering new requests 503. */
enum { STOP_NO, STOP_QUIESCING, STOP_DRAINING, STOP_REFUSING };

typedef struct listener {
  const dsysi_listener_ops *ops;
  void *lst;  /* NULL once closed */
  char *url;  /* copy: stays valid until dsys_server_free */
} listener;

/* The live requests, in shards: each thread uses one (live_shard_of), so
 * event loops add and remove their own requests without meeting. One
 * list under the server's lock, taken twice per request, was where the
 * gateway's two loops contended (0.02 futex calls per proxied request at
 * 64 connections, each a possible stall of a whole loop). */
#define LIVE_SHARDS 8
typedef struct live_shard {
  pthread_mutex_t mu;
  dsys_request *head;
  char pad[64]; /* keep shards off each other's cache lines */
} live_shard;

struct dsys_server {
  dsys_server_options o;
  char *name;
  char *tls[3]; /* copies of tls_cert_file, tls_key_file, tls_client_ca_file */
  route *routes;
  size_t nroutes, caproutes;
  hook *hooks;
  size_t nhooks, caphooks;
  listener ls[MAX_LISTENERS];
  size_t nls;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  atomic_uint_fast64_t inflight; /* requests whose transport side is not done */
  atomic_uint_fast64_t conn[DSYSI_CONN_NSTATS]; /* dsys_server_conn_stats */
  live_shard live[LIVE_SHARDS];
  int listening;
  atomic_int stopping; /* set under mu: STOP_* */
  int stopped;
  dsysi_server_observer_fn observer;
  void *observer_ud;
};

int dsysi_server_set_observer(dsys_server *s, dsysi_server_observer_fn fn,
                              void *ud) {
  if (!s || !fn) return DSYS_EINVAL;
  if (s->listening) return DSYS_ESTATE;
  if (s->observer) return DSYS_EEXIST;
  s->observer = fn;
  s->observer_ud = ud;
  return 0;
}

size_t dsysi_server_max_body(dsys_server *s) { return s->o.max_body; }
uint32_t dsysi_server_threads(dsys_server *s) { return s->o.threads; }
uint32_t dsysi_server_max_connections(dsys_server *s) { return s->o.max_connections; }
uint32_t dsysi_server_idle_timeout(dsys_server *s) { return s->o.idle_timeout_s; }
uint32_t dsysi_server_connection_memory(dsys_server *s) { return s->o.connection_memory; }
uint32_t dsysi_server_event_loops(dsys_server *s) { return s->o.event_loops; }
int dsysi_server_reuse_port(dsys_server *s) { return s->o.reuse_port; }
int dsysi_server_drain_keepalive(dsys_server *s) { return s->o.drain_keepalive; }
int dsysi_server_stopping(dsys_server *s) {
  int st = atomic_load(&s->stopping);
  return st != STOP_NO && st != STOP_QUIESCING;
}
uint32_t dsysi_server_request_timeout(dsys_server *s) {
  return s->o.request_timeout_s == DSYS_SERVER_TIMEOUT_OFF ? 0 : s->o.request_timeout_s;
}
uint32_t dsysi_server_header_timeout(dsys_server *s) {
  return s->o.header_timeout_s == DSYS_SERVER_TIMEOUT_OFF ? 0 : s->o.header_timeout_s;
}
uint32_t dsysi_server_per_addr(dsys_server *s) {
  return s->o.max_connections_per_addr == DSYS_SERVER_LIMIT_OFF ? 0
                                                                : s->o.max_connections_per_addr;
}
uint32_t dsysi_server_max_silent(dsys_server *s) { return s->o.max_silent_connections; }

void dsysi_server_conn_note(dsys_server *s, int what, int delta) {
  atomic_fetch_add_explicit(&s->conn[what], (uint_fast64_t)(int_fast64_t)delta,
                            memory_order_relaxed);
}

int dsys_server_conn_stats_get(const dsys_server *s, dsys_server_conn_stats *out) {
  if (!s || !out) return DSYS_EINVAL;
  dsys_server_conn_stats st = {.size = sizeof st};
  /* the order of dsysi_conn_stat is the order of the struct's fields */
  uint64_t *f = &st.open;
  for (int i = 0; i < DSYSI_CONN_NSTATS; i++)
    f[i] = atomic_load_explicit(&((dsys_server *)s)->conn[i], memory_order_relaxed);
  size_t n = out->size && out->size < sizeof st ? out->size : sizeof st;
  memcpy(out, &st, n);
  out->size = n;
  return 0;
}
dsys_clock *dsysi_server_clock(dsys_server *s) { return s->o.clock; }
void dsysi_server_tls(dsys_server *s, const char **cert, const char **key,
                      const char **client_ca) {
  *cert = s->o.tls_cert_file;
  *key = s->o.tls_key_file;
  *client_ca = s->o.tls_client_ca_file;
}

int dsys_server_new(dsys_server **out, const dsys_server_options *opts) {
  if (!out) return DSYS_EINVAL;
  dsys_server *s = calloc(1, sizeof *s);
  if (!s) return DSYS_ENOMEM;
  if (opts) {
    size_t n = opts->size && opts->size < sizeof s->o ? opts->size : sizeof s->o;
    memcpy(&s->o, opts, n);
  }
  s->o.size = sizeof s->o;
  if (!s->o.max_body) s->o.max_body = 1024 * 1024;
  if (!s->o.threads) s->o.threads = dsysi_ncpu() < 2 ? 2 : dsysi_ncpu();
  if (!s->o.max_connections) s->o.max_connections = 1024;
  if (!s->o.idle_timeout_s) s->o.idle_timeout_s = 60;
  /* A complete request head takes one round trip from any sane client;
   * 10 s (HAProxy's recommended `timeout http-request`) still leaves room
   * for a TLS handshake and a 16 KiB head over a slow mobile link, and
   * bounds how long a connection that sends nothing holds anything
   * (docs/reference/server.md, "Connection floods"). */
  if (!s->o.header_timeout_s) s->o.header_timeout_s = DSYS_SERVER_HEADER_TIMEOUT_DEFAULT;
  if (!s->o.max_connections_per_addr) s->o.max_connections_per_addr = DSYS_SERVER_PER_ADDR_DEFAULT;
  if (!s->o.max_silent_connections) s->o.max_silent_connections = DSYS_SERVER_SILENT_DEFAULT;
  if (!s->o.clock) s->o.clock = dsys_clock_real();
  /* MHD clears the whole pool on every keep-alive request; 16 KiB instead
   * of its 32 KiB default measured 3-7% faster (docs/reference/transports.md). */
  if (!s->o.connection_memory) s->o.connection_memory = 16 * 1024;
  if (s->o.connection_memory < 4096) s->o.connection_memory = 4096;
  s->name = strdup(s->o.name ? s->o.name : "server");
  s->o.name = s->name;
  const char **tf[3] = {&s->o.tls_cert_file, &s->o.tls_key_file,
                        &s->o.tls_client_ca_file};
  int tls_oom = 0;
  for (int i = 0; i < 3; i++)
    if (*tf[i]) {
      s->tls[i] = strdup(*tf[i]);
      if (!s->tls[i]) tls_oom = 1;
      *tf[i] = s->tls[i];
    }
  pthread_mutex_init(&s->mu, NULL);
  for (int i = 0; i < LIVE_SHARDS; i++) pthread_mutex_init(&s->live[i].mu, NULL);
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(&s->cv, &a);
  pthread_condattr_destroy(&a);
  if (!s->name || tls_oom) {
    dsys_server_free(s);
    return DSYS_ENOMEM;
  }
  *out = s;
  return 0;
}

static void free_route(route *r) {
  free(r->method);
  free(r->pattern);
  for (size_t i = 0; i < r->nsegs; i++) free(r->segs[i]);
  free(r->segs);
  free(r->seglens);
}

/* Split "/a/b/c" into segments (empty segments from "//" are kept). */
static size_t split_path(const char *path, char **segs, size_t max,
                         size_t *lens) {
  size_t n = 0;
  const char *p = path;
  if (*p == '/') p++;
  if (!*p) return 0;
  while (n < max) {
    const char *e = strchr(p, '/');
    size_t l = e ? (size_t)(e - p) : strlen(p);
    segs[n] = (char *)p;
    lens[n] = l;
    n++;
    if (!e) break;
    p = e + 1;
  }
  return n;
}

int dsys_server_route(dsys_server *s, const char *method, const char *pattern,
                      dsys_handler_fn fn, void *ud) {
  if (!s || !method || !*method || !pattern || pattern[0] != '/' || !fn)
    return DSYS_EINVAL;
  if (s->listening) return DSYS_ESTATE;
  char *segs[MAX_SEGS];
  size_t lens[MAX_SEGS];
  size_t n = split_path(pattern, segs, MAX_SEGS, lens);
  route r = {0};
  for (size_t i = 0; i < n; i++) {
    if (lens[i] == 1 && segs[i][0] == '*') {
      if (i != n - 1) return DSYS_EINVAL; /* '*' only at the end */
      r.rest = 1;
      n--;
      break;
    }
    if (segs[i][0] == ':' && lens[i] == 1) return DSYS_EINVAL;
  }
  if (dsysi_grow(&s->routes, &s->caproutes, s->nroutes + 1, sizeof *s->routes, 8))
    return DSYS_ENOMEM;
  r.method = strdup(method);
  r.pattern = strdup(pattern);
  r.segs = calloc(n ? n : 1, sizeof *r.segs);
  r.seglens = calloc(n ? n : 1, sizeof *r.seglens);
  if (!r.method || !r.pattern || !r.segs || !r.seglens) goto oom;
  for (size_t i = 0; i < n; i++) {
    if (!(r.segs[i] = dsysi_strndup(segs[i], lens[i]))) goto oom;
    r.seglens[i] = lens[i];
    if (segs[i][0] == ':') r.nparams++;
    r.nsegs++;
  }
  if (r.rest) r.nparams++;
  r.any_method = !strcmp(method, "*");
  r.fn = fn;
  r.ud = ud;
  s->routes[s->nroutes++] = r;
  return 0;
oom:
  free_route(&r);
  return DSYS_ENOMEM;
}

int dsys_server_use(dsys_server *s, dsys_hook_fn fn, void *ud) {
  if (!s || !fn) return DSYS_EINVAL;
  if (s->listening) return DSYS_ESTATE;
  if (dsysi_grow(&s->hooks, &s->caphooks, s->nhooks + 1, sizeof *s->hooks, 4))
    return DSYS_ENOMEM;
  s->hooks[s->nhooks].fn = fn;
  s->hooks[s->nhooks].ud = ud;
  s->nhooks++;
  return 0;
}

int dsys_server_listen(dsys_server *s, const char *url) {
  if (!s || !url) return DSYS_EINVAL;
  if (s->stopping) return DSYS_ESTATE;
  if (s->nls == MAX_LISTENERS) return DSYS_ENOMEM;
  const dsysi_listener_ops *ops = dsysi_listener_find(url);
  if (!ops) { /* no scheme (EURL), or no listener for it (ESCHEME) */
    int e = dsysi_url_check(url);
    return e && e != DSYS_ESCHEME ? e : DSYS_ESCHEME;
  }
  s->listening = 1;
  void *lst = NULL;
  int rc = ops->listen(s, url, &lst);
  if (rc) return rc;
  char *bound = strdup(ops->url(lst));
  if (!bound) {
    ops->close(lst);
    return DSYS_ENOMEM;
  }
  pthread_mutex_lock(&s->mu);
  s->ls[s->nls].ops = ops;
  s->ls[s->nls].lst = lst;
  s->ls[s->nls].url = bound;
  s->nls++;
  pthread_mutex_unlock(&s->mu);
  dsysi_log(DSYS_LOG_INFO, s->name, "listening on %s", bound);
  return 0;
}

const char *dsys_server_url(dsys_server *s, size_t i) {
  if (!s || i >= s->nls) return NULL;
  return s->ls[i].url;
}

uint64_t dsys_server_inflight(dsys_server *s) {
  return s ? atomic_load(&s->inflight) : 0;
}

int dsys_server_get_options(const dsys_server *s, dsys_server_options *out) {
  if (!s || !out) return DSYS_EINVAL;
  size_t n = out->size && out->size < sizeof s->o ? out->size : sizeof s->o;
  memcpy(out, &s->o, n);
  out->size = n;
  return 0;
}

/* This thread's shard of the live list, chosen round robin on its first
 * request. */
static unsigned live_shard_of(void) {
  static atomic_uint next;
  static _Thread_local int mine = -1;
  if (mine < 0) mine = (int)(atomic_fetch_add(&next, 1) % LIVE_SHARDS);
  return (unsigned)mine;
}

/* ---- requests ---- */

dsys_request *dsysi_request_new(dsys_server *s, const dsysi_listener_ops *ops,
                                void *lst, void *tctx) {
  /* malloc + memset, not calloc: glibc's calloc bypasses the per-thread
   * cache, so every request went through _int_malloc and its free through
   * _int_free. The arena's first block needs no clearing. */
  dsys_request *r = malloc(sizeof *r);
  if (!r) return NULL;
  memset(r, 0, offsetof(dsys_request, ar_mem));
  atomic_init(&r->refs, 2); /* user + transport */
  r->srv = s;
  r->ops = ops;
  r->lst = lst;
  r->tctx = tctx;
  r->start_us = dsys_clock_now_us(s->o.clock);
  r->route_idx = -1;
  dsysi_arena_init(&r->ar, r->ar_mem, sizeof r->ar_mem);
  r->hdrs.ar = r->rhdrs.ar = r->logf.ar = &r->ar;
  live_shard *sh = &s->live[r->shard = live_shard_of()];
  pthread_mutex_lock(&sh->mu);
  /* Counted before stopping is read (both sequentially consistent): a
   * stop either waits for this request or this request sees the stop and
   * is answered 503. Under the shard's lock, so stop's scan of the shard
   * finds every request that did not see it. */
  atomic_fetch_add(&s->inflight, 1);
  r->late = atomic_load(&s->stopping) == STOP_REFUSING;
  r->next = sh->head;
  if (sh->head) sh->head->prev = r;
  sh->head = r;
  pthread_mutex_unlock(&sh->mu);
  return r;
}

static void access_log(dsys_request *r, int ok) {
  if (!r->srv->o.access_log && !dsysi_log_enabled(DSYS_LOG_DEBUG)) return;
  int level = r->srv->o.access_log ? DSYS_LOG_INFO : DSYS_LOG_DEBUG;
  if (!dsysi_log_enabled(level)) return;
  double ms = (double)(dsys_clock_now_us(r->srv->o.clock) - r->start_us) / 1000.0;
  dsysi_request_trace(r);
  if (dsysi_log_is_json()) {
    /* One structured record per request (docs/reference/server.md). */
    json_object *f = json_object_new_object();
    if (!f) return;
    json_object_object_add(f, "type", json_object_new_string("access"));
    json_object_object_add(f, "method", json_object_new_string(r->method));
    json_object_object_add(f, "path", json_object_new_string(r->target));
    json_object_object_add(f, "route", r->route ? json_object_new_string(r->route) : NULL);
    json_object_object_add(f, "status", json_object_new_int(r->status));
    json_object_object_add(f, "duration_ms",
                           json_object_new_double((double)(int64_t)(ms * 1000.0) / 1000.0));
    json_object_object_add(f, "request_id", json_object_new_string(r->req_id));
    json_object_object_add(f, "trace_id", json_object_new_string(r->trace_id));
    json_object_object_add(f, "span_id", json_object_new_string(r->span_id));
    json_object_object_add(f, "remote", json_object_new_string(dsys_request_remote_addr(r)));
    if (!ok) json_object_object_add(f, "aborted", json_object_new_boolean(1));
    dsysi_lock_acquire(&r->mu);
    for (size_t i = 0; i < r->logf.n; i++)
      json_object_object_add(f, r->logf.v[i].name, json_object_new_string(r->logf.v[i].value));
    dsysi_lock_release(&r->mu);
    char msg[96];
    snprintf(msg, sizeof msg, "%s %d", r->method, r->status);
    dsysi_log_fields(level, r->srv->name, msg, f);
    json_object_put(f);
    return;
  }
  dsysi_buf extra = {0};
  dsysi_lock_acquire(&r->mu);
  for (size_t i = 0; i < r->logf.n; i++)
    dsysi_buf_printf(&extra, " %s=%s", r->logf.v[i].name, r->logf.v[i].value);
  dsysi_lock_release(&r->mu);
  dsysi_log(level, r->srv->name,
            "%s %s %d %.3fms req=%s trace=%s remote=%s route=%s%s%s", r->method,
            r->target, r->status, ms, r->req_id, r->trace_id, dsys_request_remote_addr(r),
            r->route ? r->route : "-", extra.data && !extra.oom ? extra.data : "",
            ok ? "" : " (aborted)");
  dsysi_buf_free(&extra);
}

int dsysi_request_log_wanted(const dsys_request *r) {
  return r->srv->o.access_log || dsysi_log_enabled(DSYS_LOG_DEBUG);
}

int dsys_request_log_field(dsys_request *r, const char *key, const char *value) {
  if (!r || !key || !*key || !value || !dsysi_header_ok(key) || !dsysi_header_ok(value))
    return DSYS_EINVAL;
  static const char *const reserved[] = {"time", "level", "component", "msg", "type",
                                         "method", "path", "route", "status",
                                         "duration_ms", "request_id", "trace_id",
                                         "span_id", "remote", "aborted"};
  for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
    if (!strcmp(key, reserved[i])) return DSYS_EINVAL;
  /* No access record will be written: nothing to keep. */
  if (!dsysi_request_log_wanted(r)) return 0;
  dsysi_lock_acquire(&r->mu);
  int rc = 0;
  size_t i = 0;
  while (i < r->logf.n && strcmp(r->logf.v[i].name, key)) i++;
  if (i < r->logf.n) {
    /* the old value stays in the arena until the request ends */
    char *v = dsysi_arena_strndup(&r->ar, value, strlen(value));
    if (v) r->logf.v[i].value = v;
    else rc = DSYS_ENOMEM;
  } else if (r->logf.n >= 16) {
    rc = DSYS_ENOMEM;
  } else {
    rc = dsysi_hdrs_add(&r->logf, key, strlen(key), value, strlen(value));
  }
  dsysi_lock_release(&r->mu);
  return rc;
}

void dsysi_request_transport_done(dsys_request *r, int ok) {
  dsys_server *s = r->srv;
  dsysi_lock_acquire(&r->mu);
  if (r->transport_done) {
    dsysi_lock_release(&r->mu);
    return;
  }
  r->transport_done = 1;
  int fire = !r->user_done && !r->closed;
  r->closed = 1;
  dsys_close_fn cb = r->on_close;
  void *ud = r->close_ud;
  dsysi_lock_release(&r->mu);
  access_log(r, ok);
  if (s->observer) {
    int ri = r->route_idx;
    s->observer(s->observer_ud, ri, ri >= 0 ? s->routes[ri].pattern : NULL,
                r->method, r->status,
                dsys_clock_now_us(s->o.clock) - r->start_us);
  }
  if (fire && cb) cb(r, ud);
  live_shard *sh = &s->live[r->shard];
  pthread_mutex_lock(&sh->mu);
  if (r->prev) r->prev->next = r->next;
  else sh->head = r->next;
  if (r->next) r->next->prev = r->prev;
  r->prev = r->next = NULL;
  pthread_mutex_unlock(&sh->mu);
  /* Only a stopping server waits for the count (wait_idle, under mu). */
  if (atomic_fetch_sub(&s->inflight, 1) == 1 && atomic_load(&s->stopping)) {
    pthread_mutex_lock(&s->mu);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
  }
  dsysi_request_unref(r);
}

/* ---- middleware ---- */

static int is_hex(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return 0;
  return 1;
}

static int all_zero(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] != '0') return 0;
  return 1;
}

/* W3C trace context: keep a valid incoming trace id, start a child span. */
void dsysi_request_trace(dsys_request *r) {
  dsysi_lock_acquire(&r->mu);
  if (r->traceparent[0]) {
    dsysi_lock_release(&r->mu);
    return;
  }
  const char *tp = dsysi_hdrs_get(&r->hdrs, "traceparent");
  /* version(2)-traceid(32)-parentid(16)-flags(2) */
  char flags[3] = "01";
  if (tp && strlen(tp) >= 55 && tp[2] == '-' && tp[35] == '-' && tp[52] == '-' &&
      is_hex(tp, 2) && strncmp(tp, "ff", 2) != 0 && is_hex(tp + 3, 32) &&
      !all_zero(tp + 3, 32) && is_hex(tp + 36, 16) && !all_zero(tp + 36, 16) &&
      is_hex(tp + 53, 2)) {
    memcpy(r->trace_id, tp + 3, 32);
    r->trace_id[32] = '\0';
    memcpy(flags, tp + 53, 2);
  } else {
    dsysi_fast_hex(r->trace_id, 16);
  }
  dsysi_fast_hex(r->span_id, 8);
  /* "00-" trace "-" span "-" flags, without printf on the hot path. */
  char *p = r->traceparent;
  memcpy(p, "00-", 3);
  memcpy(p + 3, r->trace_id, 32);
  p[35] = '-';
  memcpy(p + 36, r->span_id, 16);
  p[52] = '-';
  memcpy(p + 53, flags, 2);
  p[55] = '\0';
  dsysi_lock_release(&r->mu);
}

static void request_id(dsys_request *r) {
  const char *id = dsysi_hdrs_get(&r->hdrs, "x-request-id");
  size_t n = id ? strlen(id) : 0;
  int ok = n > 0 && n < sizeof r->req_id;
  for (size_t i = 0; ok && i < n; i++) {
    char c = id[i];
    ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
         (c >= 'A' && c <= 'Z') || c == '-' || c == '_' || c == '.';
  }
  if (ok) memcpy(r->req_id, id, n + 1);
  else dsysi_fast_hex(r->req_id, 8);
  dsysi_hdrs_add(&r->rhdrs, "X-Request-Id", 12, r->req_id, strlen(r->req_id));
}

/* A percent-decoded copy of a path segment in the request's arena. */
static char *decode_param(dsys_request *r, const char *s, size_t n) {
  char *d = dsysi_arena_alloc(&r->ar, n + 1);
  if (d) dsysi_url_decode_into(d, s, n, 0);
  return d;
}

/* Match one route; with r, on success fill the request's params.
 * @return 1 match, 0 no match, -1 out of memory. */
static int match_route(const route *rt, dsys_request *r, char **segs,
                       size_t *lens, size_t n) {
  if (n < rt->nsegs || (!rt->rest && n != rt->nsegs)) return 0;
  for (size_t i = 0; i < rt->nsegs; i++) {
    const char *p = rt->segs[i];
    if (p[0] == ':') continue;
    if (rt->seglens[i] != lens[i] || memcmp(p, segs[i], lens[i])) return 0;
  }
  size_t np = rt->nparams;
  if (!np || !r) return 1;
  /* Names point at the route's own strings (they live as long as the
   * server); values are decoded into the request's arena (dispatch runs
   * before the handler: no other thread uses the arena yet). */
  r->pnames = dsysi_arena_alloc(&r->ar, np * sizeof *r->pnames);
  r->pvals = dsysi_arena_alloc(&r->ar, np * sizeof *r->pvals);
  if (!r->pnames || !r->pvals) return -1;
  for (size_t i = 0; i < rt->nsegs; i++)
    if (rt->segs[i][0] == ':') {
      r->pnames[r->nparams] = rt->segs[i] + 1;
      if (!(r->pvals[r->nparams] = decode_param(r, segs[i], lens[i]))) return -1;
      r->nparams++;
    }
  if (rt->rest) {
    /* The rest of the raw path after the matched segments, decoded. */
    const char *start = rt->nsegs < n ? segs[rt->nsegs] : "";
    r->pnames[r->nparams] = "*";
    if (!(r->pvals[r->nparams] = decode_param(r, start, strlen(start)))) return -1;
    r->nparams++;
  }
  return 1;
}

void dsysi_server_dispatch(dsys_request *r) {
  dsys_server *s = r->srv;
  dsysi_request_ref(r); /* the handler may finish the request under us */
  request_id(r);
  if (r->late) {
    dsys_response_header(r, "Connection", "close");
    dsys_respond_error(r, 503, "DSYS_ESTOPPED", "Server is shutting down");
    dsysi_request_unref(r);
    return;
  }
  /* Route on the raw path so "%2F" inside a segment stays one segment;
   * segments are decoded when read as params. */
  size_t rawlen = strcspn(r->target, "?");
  char stackbuf[512];
  char *raw = rawlen < sizeof stackbuf ? stackbuf : malloc(rawlen + 1);
  if (raw) {
    memcpy(raw, r->target, rawlen);
    raw[rawlen] = '\0';
  }
  char *segs[MAX_SEGS];
  size_t lens[MAX_SEGS];
  size_t n = raw ? split_path(raw, segs, MAX_SEGS, lens) : 0;
  const route *found = NULL;
  int path_matched = 0;
  char allow[128] = "";
  for (size_t i = 0; raw && i < s->nroutes; i++) {
    const route *rt = &s->routes[i];
    if (match_route(rt, NULL, segs, lens, n) <= 0) continue;
    int method_ok = rt->any_method || !strcmp(rt->method, r->method) ||
                    (!strcmp(r->method, "HEAD") && !strcmp(rt->method, "GET"));
    path_matched = 1;
    if (!method_ok) {
      if (strlen(allow) + strlen(rt->method) + 3 < sizeof allow) {
        if (*allow) strcat(allow, ", ");
        strcat(allow, rt->method);
      }
      continue;
    }
    if (match_route(rt, r, segs, lens, n) < 0) {
      if (raw != stackbuf) free(raw);
      dsys_respond_error(r, 500, "DSYS_ENOMEM", "Out of memory");
      dsysi_request_unref(r);
      return;
    }
    found = rt;
    r->route = rt->pattern;
    r->route_idx = (int)i;
    break;
  }
  if (raw != stackbuf) free(raw);
  if (!found) {
    if (path_matched) {
      dsys_response_header(r, "Allow", allow);
      dsys_respond_error(r, 405, "method_not_allowed", "Method not allowed");
    } else {
      dsys_respond_error(r, 404, "not_found", "Not found");
    }
    dsysi_request_unref(r);
    return;
  }
  for (size_t i = 0; i < s->nhooks; i++)
    if (s->hooks[i].fn(r, s->hooks[i].ud)) {
      dsysi_request_unref(r);
      return;
    }
  found->fn(r, found->ud);
  dsysi_lock_acquire(&r->mu);
  int undecided = r->state == DSYSI_RQ_NEW && !r->user_done;
  dsysi_lock_release(&r->mu);
  if (undecided) {
    dsysi_log(DSYS_LOG_ERROR, s->name, "handler for %s %s did not respond",
              r->method, r->path);
    dsys_respond_error(r, 500, "DSYS_EINTERNAL", "Handler did not respond");
  }
  dsysi_request_unref(r);
}

/* ---- stop ---- */

/* Wait until no request is in flight or the deadline (monotonic us). */
static int wait_idle(dsys_server *s, int64_t deadline_us) {
  pthread_mutex_lock(&s->mu);
  while (atomic_load(&s->inflight) > 0) {
    int64_t now_us = dsysi_loop_now_us();
    if (now_us >= deadline_us) break;
    int64_t d = deadline_us < now_us + 50000 ? deadline_us : now_us + 50000;
    struct timespec ts = {.tv_sec = d / 1000000, .tv_nsec = (long)(d % 1000000) * 1000};
    pthread_cond_timedwait(&s->cv, &s->mu, &ts);
  }
  int idle = atomic_load(&s->inflight) == 0;
  pthread_mutex_unlock(&s->mu);
  return idle;
}

int dsys_server_reload_tls(dsys_server *s) {
  if (!s) return DSYS_EINVAL;
  pthread_mutex_lock(&s->mu);
  int rc = s->stopped || s->stopping ? DSYS_ESTATE : 0;
  for (size_t i = 0; !rc && i < s->nls; i++)
    if (s->ls[i].ops->reload_tls) rc = s->ls[i].ops->reload_tls(s->ls[i].lst);
  pthread_mutex_unlock(&s->mu);
  return rc;
}

/* drain_keepalive: wait until the listeners have no client connection
 * left or the deadline (monotonic us); requests may come and go. */
static void wait_closed(dsys_server *s, int64_t deadline_us) {
  for (;;) {
    unsigned open = 0;
    for (size_t i = 0; i < s->nls; i++)
      if (s->ls[i].ops->open_connections) open += s->ls[i].ops->open_connections(s->ls[i].lst);
    if (!open || dsysi_loop_now_us() >= deadline_us) return;
    struct timespec ts = {.tv_nsec = 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
}

int dsys_server_stop(dsys_server *s, int64_t drain_ms) {
  if (!s) return DSYS_EINVAL;
  pthread_mutex_lock(&s->mu);
  if (s->stopping) {
    pthread_mutex_unlock(&s->mu);
    return 0;
  }
  if (s->o.drain_keepalive) {
    /* Close the listening sockets before any answer says Connection:
     * close: a client reconnecting at once must not land in a backlog
     * that is about to be closed (its connection would be reset). */
    s->stopping = STOP_QUIESCING;
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < s->nls; i++) s->ls[i].ops->quiesce(s->ls[i].lst);
    atomic_store(&s->stopping, STOP_DRAINING);
  } else {
    s->stopping = STOP_REFUSING;
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < s->nls; i++) s->ls[i].ops->quiesce(s->ls[i].lst);
  }
  int rc = 0;
  int64_t deadline = dsysi_loop_now_us() + (drain_ms > 0 ? drain_ms : 0) * 1000;
  int idle = wait_idle(s, deadline);
  if (s->o.drain_keepalive) {
    /* Keep serving the open connections (each answer closes its
     * connection) until the clients have left, then refuse; requests that
     * came in between the count and the switch are waited for again. */
    if (idle) wait_closed(s, deadline);
    atomic_store(&s->stopping, STOP_REFUSING);
    idle = wait_idle(s, deadline);
  }
  if (!idle) {
    rc = DSYS_ETIMEDOUT;
    /* Cut off what is left: the transports answer 503 or end streams. */
    for (;;) {
      dsys_request *victim = NULL;
      for (int i = 0; i < LIVE_SHARDS && !victim; i++) {
        live_shard *sh = &s->live[i];
        pthread_mutex_lock(&sh->mu);
        for (dsys_request *r = sh->head; r; r = r->next)
          if (!r->abandoned) {
            victim = r;
            break;
          }
        if (victim) dsysi_request_ref(victim);
        pthread_mutex_unlock(&sh->mu);
      }
      if (!victim) break;
      /* the transports read the flag under the request's lock; only this
       * thread writes it, so the scan above may read it under the shard's
       * lock */
      dsysi_lock_acquire(&victim->mu);
      victim->abandoned = 1;
      dsysi_lock_release(&victim->mu);
      victim->ops->notify(victim->lst, victim);
      dsysi_request_unref(victim);
    }
    if (!wait_idle(s, dsysi_loop_now_us() + 2000000))
      dsysi_log(DSYS_LOG_WARN, s->name, "%llu requests still open at stop",
                (unsigned long long)dsys_server_inflight(s));
  }
  for (size_t i = 0; i < s->nls; i++) {
    s->ls[i].ops->close(s->ls[i].lst);
    s->ls[i].lst = NULL;
  }
  pthread_mutex_lock(&s->mu);
  s->stopped = 1;
  pthread_mutex_unlock(&s->mu);
  return rc;
}

void dsys_server_free(dsys_server *s) {
  if (!s) return;
  if (s->nls && !s->stopped) dsys_server_stop(s, 5000);
  for (size_t i = 0; i < s->nls; i++) free(s->ls[i].url);
  for (size_t i = 0; i < s->nroutes; i++) free_route(&s->routes[i]);
  free(s->routes);
  free(s->hooks);
  free(s->name);
  for (int i = 0; i < 3; i++) free(s->tls[i]);
  pthread_mutex_destroy(&s->mu);
  for (int i = 0; i < LIVE_SHARDS; i++) pthread_mutex_destroy(&s->live[i].mu);
  pthread_cond_destroy(&s->cv);
  free(s);
}
