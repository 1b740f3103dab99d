/* What every mounted service has: health and readiness routes, and
 * slow-work routes answered from timers on the service clock. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/json.h"
#include "core/proc.h"
#include "services/reply.h"
#include "services/svc.h"

int64_t dsysi_svc_now(dsysi_svc *s) { return dsys_clock_wall_ms(s->clock); }

/* ---- health and readiness ---- */

static void h_health(dsys_request *req, void *ud) {
  dsysi_svc *s = ud;
  json_object *o = json_object_new_object();
  json_object_object_add(o, "status", json_object_new_string("healthy"));
  json_object_object_add(o, "service", json_object_new_string(s->name));
  json_object_object_add(o, "timestamp", dsysi_json_time(dsysi_svc_now(s)));
  double up = (double)(dsys_clock_now_ms(s->clock) - s->start_ms) / 1000.0;
  char ups[32];
  snprintf(ups, sizeof ups, "%.3f", up);
  json_object_object_add(o, "uptime", json_object_new_double_s(up, ups));
  json_object *mem = json_object_new_object();
  json_object_object_add(mem, "rss", json_object_new_int64(dsysi_rss_bytes()));
  json_object_object_add(o, "memory", mem);
  /* still healthy (reads work), but writes answer 507 until space is back */
  if (dsysi_storage_full_recently(10000))
    json_object_object_add(o, "storage", json_object_new_string("full"));
  dsysi_respond_obj(req, 200, o);
}

static void h_ready(dsys_request *req, void *ud) {
  dsysi_svc *s = ud;
  const char *what = "database";
  char err[256] = "";
  int rc = s->ready(s->ready_ud, &what, err, sizeof err);
  json_object *o = json_object_new_object();
  json_object_object_add(o, "status",
                         json_object_new_string(rc ? "not ready" : "ready"));
  json_object_object_add(o, "service", json_object_new_string(s->name));
  if (rc) {
    /* DSYS_EUNAVAIL's own text speaks of endpoints: say what is down */
    if (rc == DSYS_EUNAVAIL) snprintf(err, sizeof err, "%s unavailable", what);
    json_object_object_add(o, "error",
                           json_object_new_string(*err ? err : dsys_strerror(rc)));
    dsysi_respond_obj(req, 503, o);
    return;
  }
  json_object_object_add(o, what, json_object_new_string("connected"));
  dsysi_respond_obj(req, 200, o);
}

int dsysi_svc_init(dsysi_svc *s, dsys_server *srv, dsys_clock *clock,
                   const char *name, const char *type, dsysi_ready_fn ready,
                   void *ready_ud) {
  memset(s, 0, sizeof *s);
  s->srv = srv;
  s->clock = clock ? clock : dsys_clock_real();
  s->name = strdup(name);
  s->type = strdup(type);
  s->ready = ready;
  s->ready_ud = ready_ud;
  s->start_ms = dsys_clock_now_ms(s->clock);
  if (!s->name || !s->type) {
    free(s->name);
    free(s->type);
    return DSYS_ENOMEM;
  }
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  char path[128];
  snprintf(path, sizeof path, "/api/%s/health", type);
  int rc = dsys_server_route(srv, "GET", "/health", h_health, s);
  if (!rc) rc = dsys_server_route(srv, "GET", path, h_health, s);
  if (!rc) rc = dsys_server_route(srv, "GET", "/ready", h_ready, s);
  if (rc) {
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->name);
    free(s->type);
  }
  return rc;
}

/* ---- slow work ---- */

typedef struct slow_route {
  dsysi_svc *svc;
  int64_t delay_ms;
  const char *message;
  struct slow_route *next;
} slow_route;

struct dsysi_pending {
  dsysi_pending *next, *prev;
  dsys_request *req;
  slow_route *route;
  uint64_t timer;
};

static void unlink_pending(dsysi_svc *s, dsysi_pending *p) {
  if (p->prev) p->prev->next = p->next;
  else s->pending = p->next;
  if (p->next) p->next->prev = p->prev;
}

static void slow_answer(dsysi_svc *s, dsys_request *req, const char *message) {
  json_object *o = json_object_new_object();
  json_object_object_add(o, "message", json_object_new_string(message));
  json_object_object_add(o, "service", json_object_new_string(s->name));
  json_object_object_add(o, "timestamp", dsysi_json_time(dsysi_svc_now(s)));
  dsysi_respond_obj(req, 200, o);
}

static void slow_fire(void *ud) {
  dsysi_pending *p = ud;
  dsysi_svc *s = p->route->svc;
  pthread_mutex_lock(&s->mu);
  unlink_pending(s, p);
  s->firing++;
  pthread_mutex_unlock(&s->mu);
  slow_answer(s, p->req, p->route->message);
  free(p);
  pthread_mutex_lock(&s->mu);
  s->firing--;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static void h_slow(dsys_request *req, void *ud) {
  slow_route *r = ud;
  dsysi_svc *s = r->svc;
  dsysi_pending *p = calloc(1, sizeof *p);
  if (!p) {
    dsys_respond_error(req, 500, "DSYS_ENOMEM", "Out of memory");
    return;
  }
  p->req = req;
  p->route = r;
  dsys_request_defer(req);
  /* Link first: the timer may fire before dsys_timer_add returns. */
  pthread_mutex_lock(&s->mu);
  p->next = s->pending;
  if (s->pending) s->pending->prev = p;
  s->pending = p;
  int rc = dsys_timer_add(s->clock, r->delay_ms * 1000, slow_fire, p, &p->timer);
  if (rc) {
    unlink_pending(s, p);
    pthread_mutex_unlock(&s->mu);
    free(p);
    dsys_respond_error(req, 500, dsys_err_name(rc), dsys_strerror(rc));
    return;
  }
  pthread_mutex_unlock(&s->mu);
}

int dsysi_svc_slow_routes(dsysi_svc *s, const char *const *paths, size_t n,
                          int64_t delay_ms, const char *message) {
  slow_route *r = calloc(1, sizeof *r);
  if (!r) return DSYS_ENOMEM;
  r->svc = s;
  r->delay_ms = delay_ms;
  r->message = message;
  pthread_mutex_lock(&s->mu);
  r->next = s->routes;
  s->routes = r;
  pthread_mutex_unlock(&s->mu);
  for (size_t i = 0; i < n; i++) {
    int rc = dsys_server_route(s->srv, "GET", paths[i], h_slow, r);
    if (!rc) rc = dsys_server_route(s->srv, "POST", paths[i], h_slow, r);
    if (rc) return rc;
  }
  return 0;
}

void dsysi_svc_fini(dsysi_svc *s) {
  if (!s->name) return;
  pthread_mutex_lock(&s->mu);
  dsysi_pending *p = s->pending;
  while (p) {
    dsysi_pending *next = p->next;
    if (dsys_timer_cancel(s->clock, p->timer) == 0) {
      unlink_pending(s, p);
      dsys_respond_error(p->req, 503, "DSYS_ESTOPPED", "Service is stopping");
      free(p);
    }
    p = next;
  }
  /* What is left is firing right now: wait for it. */
  while (s->pending || s->firing) pthread_cond_wait(&s->cv, &s->mu);
  pthread_mutex_unlock(&s->mu);
  while (s->routes) {
    slow_route *r = s->routes;
    s->routes = r->next;
    free(r);
  }
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  free(s->name);
  free(s->type);
  s->name = s->type = NULL;
}
