/* Registry service module: the HTTP API of the registry daemon, with
 * blocking queries answered from a registry watch or a timer (no server
 * thread waits). See include/distsys/registry_service.h. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/registry_service.h>
#include <distsys/util.h>
#include "core/internal.h"
#include "core/json.h"
#include "transport/identity_guard.h"
#include "transport/url.h"

typedef struct pend {
  struct pend *next;
  dsys_registry_service *svc;
  dsys_request *req;
  uint64_t after;
  char *type;   /* NULL: every type */
  int healthy;  /* -1: no filter */
  int typed;    /* answer in the /services/:type shape */
  uint64_t timer;
  int claimed;  /* answered or being answered */
  int refs;     /* list/answer + timer */
} pend;

struct dsys_registry_service {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  dsys_registry *reg;
  dsys_clock *clk;
  dsys_identity_verifier *identity; /* NULL: writes are open */
  int64_t max_wait_ms, default_wait_ms;
  int64_t started_ms;
  char name[64];
  char epoch[33];
  uint64_t watch_id;
  pend *pending;
  size_t npending;
  int timers_out;
  int inflight;    /* claimed queries being answered */
  int draining;
};

/* ---- JSON helpers ---- */

static json_object *instance_json(const dsys_instance *in) {
  json_object *o = json_object_new_object();
  if (!o) return NULL;
  json_object_object_add(o, "serviceId", json_object_new_string(in->id));
  json_object_object_add(o, "serviceType", json_object_new_string(in->type));
  json_object_object_add(o, "url", json_object_new_string(in->url));
  json_object_object_add(o, "name", json_object_new_string(in->name));
  json_object *md = NULL;
  if (dsysi_json_parse(in->metadata, strlen(in->metadata), &md) || !md)
    md = json_object_new_object();
  json_object_object_add(o, "metadata", md);
  json_object *tags = json_object_new_array();
  for (size_t i = 0; tags && i < in->ntags; i++)
    json_object_array_add(tags, json_object_new_string(in->tags[i]));
  json_object_object_add(o, "tags", tags);
  json_object_object_add(o, "weight", json_object_new_int64(in->weight));
  json_object_object_add(o, "registeredAt", dsysi_json_time(in->registered_ms));
  json_object_object_add(o, "lastHeartbeat", json_object_new_int64(in->last_heartbeat_ms));
  json_object_object_add(o, "healthy",
                         json_object_new_boolean(in->health == DSYS_INSTANCE_HEALTHY));
  return o;
}

static void set_index_headers(dsys_registry_service *s, dsys_request *req, uint64_t idx) {
  char buf[32];
  snprintf(buf, sizeof buf, "%" PRIu64, idx);
  dsys_response_header(req, "X-Dsys-Index", buf);
  dsys_response_header(req, "X-Dsys-Epoch", s->epoch);
}

static void respond_obj(dsys_registry_service *s, dsys_request *req, int status,
                        json_object *o, int with_index, uint64_t idx) {
  if (with_index) set_index_headers(s, req, idx);
  char *text = o ? dsysi_json_dump(o, NULL) : NULL;
  json_object_put(o);
  if (!text) {
    dsys_respond_error(req, 500, "DSYS_ENOMEM", "out of memory");
    return;
  }
  dsys_respond_json(req, status, text);
  free(text);
}

static void respond_err(dsys_registry_service *s, dsys_request *req, int status,
                        const char *code, const char *msg) {
  uint64_t idx = 0;
  dsys_registry_index(s->reg, &idx);
  set_index_headers(s, req, idx);
  dsys_respond_error(req, status, code, msg);
}

/* Map a registry error to an answer. */
static void respond_rc(dsys_registry_service *s, dsys_request *req, int rc) {
  switch (rc) {
  case DSYS_EINVAL: respond_err(s, req, 400, dsys_err_name(rc), dsys_registry_errmsg(s->reg)); break;
  case DSYS_ENOTFOUND: respond_err(s, req, 404, dsys_err_name(rc), "Service not found"); break;
  default: respond_err(s, req, 503, dsys_err_name(rc), "registry storage unavailable"); break;
  }
}

/* Parse a JSON object body; answers 400 itself on failure. */
static json_object *body_object(dsys_registry_service *s, dsys_request *req) {
  size_t len;
  const char *body = dsys_request_body(req, &len);
  json_object *o = NULL;
  int rc = dsysi_json_parse_object(body ? body : "", body ? len : 0, &o);
  if (rc) {
    if (o) json_object_put(o);
    if (rc == DSYS_ENOMEM) respond_err(s, req, 503, "DSYS_ENOMEM", "out of memory");
    else respond_err(s, req, 400, "DSYS_EBADJSON", "Invalid JSON body: expected a JSON object");
    return NULL;
  }
  return o;
}

static const char *nonempty(json_object *o, const char *key) {
  const char *v = dsysi_json_str(o, key);
  return v && *v ? v : NULL;
}

/* ---- write routes ---- */

/* With identity on: 0 when the caller holds a valid token whose "sub" is
 * name (and "svc" is type, when given); otherwise answers 401/403 and
 * returns nonzero. A NULL name (unknown instance) needs only a valid token. */
static int identity_ok(dsys_registry_service *s, dsys_request *req, dsys_identity_claims *c,
                       const char *name, const char *type) {
  if ((name && strcmp(c->instance, name)) || (type && strcmp(c->service, type))) {
    dsysi_log(DSYS_LOG_WARN, s->name, "refused: identity %s (%s) acting for %s (%s)",
              c->instance, c->service, name ? name : "-", type ? type : "-");
    respond_err(s, req, 403, "identity_mismatch",
                "the identity token does not belong to this instance");
    return -1;
  }
  return 0;
}

/* With identity on: verify the caller (answers 401 itself). */
static int identity_check(dsys_registry_service *s, dsys_request *req, dsys_identity_claims *c) {
  if (!s->identity) return 0;
  uint64_t idx = 0;
  dsys_registry_index(s->reg, &idx);
  set_index_headers(s, req, idx);
  return dsysi_identity_check(s->identity, req, c);
}

/* With identity on: the caller must be the registered instance id. */
static int identity_owns(dsys_registry_service *s, dsys_request *req, dsys_identity_claims *c,
                         const char *id) {
  if (!s->identity) return 0;
  dsys_instance *got = NULL;
  int rc = dsys_registry_get(s->reg, id, &got);
  if (rc && rc != DSYS_ENOTFOUND) {
    respond_rc(s, req, rc);
    return -1;
  }
  rc = identity_ok(s, req, c, got ? got->name : NULL, NULL);
  dsys_free(got);
  return rc;
}

static void h_register(dsys_request *req, void *ud) {
  dsys_registry_service *s = ud;
  dsys_identity_claims who;
  if (identity_check(s, req, &who)) return;
  json_object *b = body_object(s, req);
  if (!b) return;
  dsys_instance in = {.id = nonempty(b, "serviceId"), .type = nonempty(b, "serviceType"),
                      .url = nonempty(b, "url"), .name = nonempty(b, "name")};
  const char **tags = NULL;
  char *md = NULL;
  if (!in.id || !in.type || !in.url || !in.name) {
    respond_err(s, req, 400, "missing_fields",
                "Missing required fields: serviceId, serviceType, url, name");
    goto out;
  }
  /* the token must name this instance, and may not take over an id
   * registered by another instance */
  if (s->identity && (identity_ok(s, req, &who, in.name, in.type) ||
                      identity_owns(s, req, &who, in.id)))
    goto out;
  json_object *m = NULL;
  if (json_object_object_get_ex(b, "metadata", &m) && m) {
    if (!json_object_is_type(m, json_type_object)) {
      respond_err(s, req, 400, "bad_metadata", "metadata must be a JSON object");
      goto out;
    }
    md = dsysi_json_dump(m, NULL);
    if (!md) {
      respond_err(s, req, 503, "DSYS_ENOMEM", "out of memory");
      goto out;
    }
    in.metadata = md;
  }
  json_object *t = NULL;
  if (json_object_object_get_ex(b, "tags", &t) && t) {
    size_t n = json_object_is_type(t, json_type_array) ? json_object_array_length(t) : 0;
    int bad = !json_object_is_type(t, json_type_array) || n > 64;
    if (!bad && n) {
      tags = calloc(n, sizeof *tags);
      if (!tags) {
        respond_err(s, req, 503, "DSYS_ENOMEM", "out of memory");
        goto out;
      }
      for (size_t i = 0; i < n && !bad; i++) {
        json_object *e = json_object_array_get_idx(t, i);
        if (!json_object_is_type(e, json_type_string)) bad = 1;
        else tags[i] = json_object_get_string(e);
      }
    }
    if (bad) {
      respond_err(s, req, 400, "bad_tags", "tags must be an array of at most 64 strings");
      goto out;
    }
    in.tags = tags;
    in.ntags = n;
  }
  int64_t w = 0;
  int wr = dsysi_json_int64(b, "weight", &w);
  if (wr == 0 && (w < 1 || w > 10000)) wr = DSYS_ERANGE;
  if (wr != 0 && wr != DSYS_ENOTFOUND) {
    respond_err(s, req, 400, "bad_weight", "weight must be an integer from 1 to 10000");
    goto out;
  }
  in.weight = (uint32_t)w;
  int rc = dsys_registry_register(s->reg, &in);
  if (rc) {
    respond_rc(s, req, rc);
    goto out;
  }
  uint64_t idx = 0;
  dsys_registry_index(s->reg, &idx);
  dsys_instance *got = NULL;
  rc = dsys_registry_get(s->reg, in.id, &got);
  if (rc) {
    respond_rc(s, req, rc);
    goto out;
  }
  json_object *o = json_object_new_object();
  if (o) {
    json_object_object_add(o, "success", json_object_new_boolean(1));
    json_object_object_add(o, "message", json_object_new_string("Service registered successfully"));
    json_object_object_add(o, "service", instance_json(got));
  }
  dsys_free(got);
  respond_obj(s, req, 200, o, 1, idx);
out:
  free(tags);
  free(md);
  json_object_put(b);
}

/* The shared start of heartbeat and deregister: the caller's identity,
 * the JSON body and its serviceId, which that caller must own. Returns the
 * body (the caller puts it) with *id inside it, or NULL once answered. */
static json_object *owned_service_body(dsys_registry_service *s, dsys_request *req,
                                       const char **id) {
  dsys_identity_claims who;
  if (identity_check(s, req, &who)) return NULL;
  json_object *b = body_object(s, req);
  if (!b) return NULL;
  *id = nonempty(b, "serviceId");
  if (!*id) {
    respond_err(s, req, 400, "missing_fields", "Missing required field: serviceId");
    json_object_put(b);
    return NULL;
  }
  if (identity_owns(s, req, &who, *id)) {
    json_object_put(b);
    return NULL;
  }
  return b;
}

static void h_heartbeat(dsys_request *req, void *ud) {
  dsys_registry_service *s = ud;
  const char *id;
  json_object *b = owned_service_body(s, req, &id);
  if (!b) return;
  int rc = dsys_registry_heartbeat(s->reg, id);
  dsys_instance *got = NULL;
  if (!rc) rc = dsys_registry_get(s->reg, id, &got);
  if (rc) {
    respond_rc(s, req, rc);
    json_object_put(b);
    return;
  }
  uint64_t idx = 0;
  dsys_registry_index(s->reg, &idx);
  json_object *o = json_object_new_object();
  if (o) {
    json_object_object_add(o, "success", json_object_new_boolean(1));
    json_object_object_add(o, "message", json_object_new_string("Heartbeat received"));
    json_object_object_add(o, "timestamp", dsysi_json_time(dsys_clock_wall_ms(s->clk)));
    json_object_object_add(o, "lastHeartbeat", json_object_new_int64(got->last_heartbeat_ms));
  }
  dsys_free(got);
  respond_obj(s, req, 200, o, 1, idx);
  json_object_put(b);
}

static void h_deregister(dsys_request *req, void *ud) {
  dsys_registry_service *s = ud;
  const char *id;
  json_object *b = owned_service_body(s, req, &id);
  if (!b) return;
  int rc = dsys_registry_deregister(s->reg, id);
  if (rc && rc != DSYS_ENOTFOUND) {
    respond_rc(s, req, rc);
    json_object_put(b);
    return;
  }
  uint64_t idx = 0;
  dsys_registry_index(s->reg, &idx);
  json_object *o = json_object_new_object();
  if (o) {
    json_object_object_add(o, "success", json_object_new_boolean(1));
    json_object_object_add(o, "message", json_object_new_string("Service deregistered successfully"));
    json_object_object_add(o, "removed", json_object_new_boolean(rc == 0));
  }
  respond_obj(s, req, 200, o, 1, idx);
  json_object_put(b);
}

/* ---- reads and blocking queries ---- */

/* Build and send a list answer. */
static void answer_list(dsys_registry_service *s, dsys_request *req, const char *type,
                        int healthy, int typed) {
  uint64_t idx = 0;
  int rc = dsys_registry_index(s->reg, &idx); /* index first: the list is at least as new */
  dsys_instance *v = NULL;
  size_t n = 0;
  if (!rc) rc = dsys_registry_lookup(s->reg, type, 0, &v, &n);
  if (rc) {
    respond_rc(s, req, rc);
    return;
  }
  json_object *o = json_object_new_object();
  json_object *arr = json_object_new_array();
  size_t total = 0;
  for (size_t i = 0; arr && i < n; i++) {
    if (healthy >= 0 && (v[i].health == DSYS_INSTANCE_HEALTHY) != healthy) continue;
    json_object_array_add(arr, instance_json(&v[i]));
    total++;
  }
  dsys_free(v);
  if (o && arr) {
    json_object_object_add(o, "services", arr);
    if (typed) json_object_object_add(o, "type", json_object_new_string(type));
    json_object_object_add(o, "total", json_object_new_int64((int64_t)total));
    json_object_object_add(o, "timestamp", dsysi_json_time(dsys_clock_wall_ms(s->clk)));
    json_object_object_add(o, "index", json_object_new_int64((int64_t)idx));
  } else {
    json_object_put(arr);
    json_object_put(o);
    o = NULL;
  }
  respond_obj(s, req, 200, o, 1, idx);
}

/* Drop one reference (hold mu). */
static void pend_unref(pend *p) {
  if (--p->refs == 0) {
    free(p->type);
    free(p);
  }
}

/* Remove p from the list (hold mu). */
static void pend_unlink(dsys_registry_service *s, pend *p) {
  for (pend **pp = &s->pending; *pp; pp = &(*pp)->next)
    if (*pp == p) {
      *pp = p->next;
      s->npending--;
      return;
    }
}

/* Claim p for answering (hold mu): unlink and cancel its timer. */
static void pend_claim(dsys_registry_service *s, pend *p) {
  p->claimed = 1;
  s->inflight++;
  pend_unlink(s, p);
  if (p->timer && dsys_timer_cancel(s->clk, p->timer) == 0) {
    s->timers_out--;
    p->refs--; /* the timer's reference: at least the answer's is left */
  }
}

static void pend_answer(dsys_registry_service *s, pend *p) {
  answer_list(s, p->req, p->type, p->healthy, p->typed);
  pthread_mutex_lock(&s->mu);
  pend_unref(p);
  s->inflight--;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

/* Answer every parked query with after < idx (all when idx is UINT64_MAX). */
static void answer_upto(dsys_registry_service *s, uint64_t idx) {
  for (;;) {
    pthread_mutex_lock(&s->mu);
    pend *p = s->pending;
    while (p && p->after >= idx) p = p->next;
    if (p) pend_claim(s, p);
    pthread_mutex_unlock(&s->mu);
    if (!p) return;
    pend_answer(s, p);
  }
}

static void on_change(void *ud, const dsys_registry_change *c) {
  answer_upto(ud, c->index);
}

static void on_wait_timer(void *ud) {
  pend *p = ud;
  dsys_registry_service *s = p->svc;
  pthread_mutex_lock(&s->mu);
  int mine = !p->claimed;
  if (mine) {
    p->claimed = 1;
    s->inflight++;
    pend_unlink(s, p);
  }
  s->timers_out--;
  p->refs--; /* the timer's reference */
  if (!mine && p->refs == 0) {
    free(p->type);
    free(p);
  }
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  if (mine) pend_answer(s, p);
}

/* "250ms", "5s", "1m", or bare milliseconds. */
static int parse_wait(const char *t, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(t, &end, 10);
  if (end == t || errno || v < 0 || v > 86400000LL) return -1;
  int64_t mul = 1;
  if (!*end || !strcmp(end, "ms")) mul = 1;
  else if (!strcmp(end, "s")) mul = 1000;
  else if (!strcmp(end, "m")) mul = 60000;
  else return -1;
  *out = (int64_t)v * mul;
  return 0;
}

static int parse_u64(const char *t, uint64_t *out) {
  if (!*t || *t == '-' || *t == '+') return -1;
  char *end;
  errno = 0;
  unsigned long long v = strtoull(t, &end, 10);
  if (*end || errno) return -1;
  *out = v;
  return 0;
}

static void list_route(dsys_request *req, dsys_registry_service *s, const char *type,
                       int typed) {
  const char *h = dsys_request_query_param(req, "healthy");
  int healthy = -1;
  if (h) {
    if (!strcmp(h, "true")) healthy = 1;
    else if (!strcmp(h, "false")) healthy = 0;
    else {
      respond_err(s, req, 400, "bad_query", "healthy must be true or false");
      return;
    }
  }
  if (type && !*type) type = NULL;
  const char *qi = dsys_request_query_param(req, "index");
  const char *qw = dsys_request_query_param(req, "wait");
  uint64_t after = 0;
  int64_t wait = s->default_wait_ms;
  if ((qi && parse_u64(qi, &after)) || (qw && parse_wait(qw, &wait))) {
    respond_err(s, req, 400, "bad_query",
                "index must be an unsigned integer and wait a duration (e.g. 500ms, 5s)");
    return;
  }
  if (wait > s->max_wait_ms) wait = s->max_wait_ms;
  uint64_t idx = 0;
  dsys_registry_index(s->reg, &idx);
  if (!qi || idx > after || wait == 0) {
    answer_list(s, req, type, healthy, typed);
    return;
  }
  pend *p = calloc(1, sizeof *p);
  if (!p || (type && !(p->type = strdup(type)))) {
    free(p);
    respond_err(s, req, 503, "DSYS_ENOMEM", "out of memory");
    return;
  }
  p->svc = s;
  p->req = req;
  p->after = after;
  p->healthy = healthy;
  p->typed = typed;
  p->refs = 2;
  pthread_mutex_lock(&s->mu);
  if (s->draining || dsys_request_defer(req)) {
    pthread_mutex_unlock(&s->mu);
    free(p->type);
    free(p);
    answer_list(s, req, type, healthy, typed);
    return;
  }
  p->next = s->pending;
  s->pending = p;
  s->npending++;
  s->timers_out++;
  if (dsys_timer_add(s->clk, wait * 1000, on_wait_timer, p, &p->timer)) {
    s->timers_out--;
    p->refs--;
    p->timer = 0;
    pend_claim(s, p);
    pthread_mutex_unlock(&s->mu);
    pend_answer(s, p);
    return;
  }
  pthread_mutex_unlock(&s->mu);
  /* a change between reading the index and parking: answer it now */
  uint64_t now_idx = 0;
  dsys_registry_index(s->reg, &now_idx);
  if (now_idx > after) answer_upto(s, now_idx);
}

static void h_services(dsys_request *req, void *ud) {
  list_route(req, ud, dsys_request_query_param(req, "type"), 0);
}

static void h_services_type(dsys_request *req, void *ud) {
  list_route(req, ud, dsys_request_param(req, "type"), 1);
}

static void h_service(dsys_request *req, void *ud) {
  dsys_registry_service *s = ud;
  dsys_instance *got = NULL;
  uint64_t idx = 0;
  dsys_registry_index(s->reg, &idx);
  int rc = dsys_registry_get(s->reg, dsys_request_param(req, "id"), &got);
  if (rc) {
    respond_rc(s, req, rc);
    return;
  }
  json_object *o = instance_json(got);
  dsys_free(got);
  respond_obj(s, req, 200, o, 1, idx);
}

/* Prometheus HTTP service discovery: one target group per registered
 * instance reachable over TCP (unix and inproc ones cannot be scraped),
 * unhealthy ones included so that Prometheus's "up" shows them down. The
 * labels name the service type (map it to the job with relabelling), the
 * instance id and the registry's view of its health. */
static void h_prometheus_sd(dsys_request *req, void *ud) {
  dsys_registry_service *s = ud;
  dsys_instance *v = NULL;
  size_t n = 0;
  int rc = dsys_registry_lookup(s->reg, NULL, 0, &v, &n);
  if (rc) {
    respond_rc(s, req, rc);
    return;
  }
  json_object *arr = json_object_new_array();
  for (size_t i = 0; arr && i < n; i++) {
    dsysi_url u;
    if (dsysi_url_parse(v[i].url, &u)) continue;
    int tcp = !strcmp(u.scheme, "http") || !strcmp(u.scheme, "https");
    char target[300];
    snprintf(target, sizeof target, strchr(u.host, ':') ? "[%s]:%d" : "%s:%d", u.host, u.port);
    if (tcp) {
      json_object *g = json_object_new_object(), *t = json_object_new_array(),
                  *l = json_object_new_object();
      json_object_array_add(t, json_object_new_string(target));
      json_object_object_add(l, "__scheme__", json_object_new_string(u.scheme));
      json_object_object_add(l, "dsys_type", json_object_new_string(v[i].type));
      json_object_object_add(l, "dsys_id", json_object_new_string(v[i].id));
      json_object_object_add(l, "dsys_healthy",
                             json_object_new_string(v[i].health == DSYS_INSTANCE_HEALTHY ? "true" : "false"));
      json_object_object_add(g, "targets", t);
      json_object_object_add(g, "labels", l);
      json_object_array_add(arr, g);
    }
    dsysi_url_free(&u);
  }
  dsys_free(v);
  respond_obj(s, req, 200, arr, 0, 0);
}

static void h_health(dsys_request *req, void *ud) {
  dsys_registry_service *s = ud;
  dsys_instance *v = NULL;
  size_t n = 0;
  int rc = dsys_registry_lookup(s->reg, NULL, 0, &v, &n);
  dsys_free(v);
  json_object *o = json_object_new_object();
  if (o) {
    json_object_object_add(o, "status", json_object_new_string(rc ? "unhealthy" : "healthy"));
    json_object_object_add(o, "service", json_object_new_string(s->name));
    json_object_object_add(o, "timestamp", dsysi_json_time(dsys_clock_wall_ms(s->clk)));
    double up = (double)(dsys_clock_now_ms(s->clk) - s->started_ms) / 1000.0;
    char upt[32];
    snprintf(upt, sizeof upt, "%.3f", up);
    json_object_object_add(o, "uptime", json_object_new_double_s(up, upt));
    json_object_object_add(o, "registeredServices", json_object_new_int64((int64_t)n));
    if (rc) json_object_object_add(o, "error", json_object_new_string(dsys_strerror(rc)));
  }
  respond_obj(s, req, rc ? 503 : 200, o, 0, 0);
}

/* ---- lifecycle ---- */

int dsys_registry_service_mount(dsys_server *srv, dsys_registry *reg,
                                const dsys_registry_service_options *o,
                                dsys_registry_service **out) {
  if (!srv || !reg || !out) return DSYS_EINVAL;
  dsys_registry_service_options d = {0};
  if (o) memcpy(&d, o, o->size && o->size < sizeof d ? o->size : sizeof d);
  if (d.max_wait_ms < 0 || d.default_wait_ms < 0) return DSYS_EINVAL;
  dsys_registry_service *s = calloc(1, sizeof *s);
  if (!s) return DSYS_ENOMEM;
  s->reg = reg;
  s->clk = d.clock ? d.clock : dsys_clock_real();
  s->identity = d.identity;
  s->max_wait_ms = d.max_wait_ms ? d.max_wait_ms : 60000;
  s->default_wait_ms = d.default_wait_ms ? d.default_wait_ms : 30000;
  if (s->default_wait_ms > s->max_wait_ms) s->default_wait_ms = s->max_wait_ms;
  s->started_ms = dsys_clock_now_ms(s->clk);
  snprintf(s->name, sizeof s->name, "%s", d.name && *d.name ? d.name : "service-registry");
  dsys_random_hex(s->epoch, sizeof s->epoch, 16);
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  static const struct {
    const char *m, *p;
    dsys_handler_fn fn;
  } routes[] = {
      {"POST", "/api/registry/register", h_register},
      {"POST", "/api/registry/heartbeat", h_heartbeat},
      {"POST", "/api/registry/deregister", h_deregister},
      {"GET", "/api/registry/services", h_services},
      {"GET", "/api/registry/services/:type", h_services_type},
      {"GET", "/api/registry/service/:id", h_service},
      {"GET", "/api/registry/health", h_health},
      {"GET", "/v1/sd/prometheus", h_prometheus_sd},
      {"GET", "/health", h_health},
  };
  int rc = 0;
  for (size_t i = 0; !rc && i < sizeof routes / sizeof routes[0]; i++)
    rc = dsys_server_route(srv, routes[i].m, routes[i].p, routes[i].fn, s);
  if (!rc) rc = dsys_registry_watch(reg, on_change, s, &s->watch_id);
  if (rc) {
    /* routes already added cannot be removed: the server must not be used */
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
    return rc;
  }
  *out = s;
  return 0;
}

void dsys_registry_service_drain(dsys_registry_service *s) {
  if (!s) return;
  pthread_mutex_lock(&s->mu);
  s->draining = 1;
  pthread_mutex_unlock(&s->mu);
  answer_upto(s, UINT64_MAX);
}

void dsys_registry_service_free(dsys_registry_service *s) {
  if (!s) return;
  dsys_registry_unwatch(s->reg, s->watch_id);
  dsys_registry_service_drain(s);
  pthread_mutex_lock(&s->mu);
  while (s->timers_out > 0 || s->pending || s->inflight) pthread_cond_wait(&s->cv, &s->mu);
  pthread_mutex_unlock(&s->mu);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  free(s);
}

size_t dsys_registry_service_parked(dsys_registry_service *s) {
  if (!s) return 0;
  pthread_mutex_lock(&s->mu);
  size_t n = s->npending;
  pthread_mutex_unlock(&s->mu);
  return n;
}
