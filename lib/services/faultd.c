/*
 * The fault detector service (see faultd.h): instances from a registry or
 * static targets, asynchronous /health checks on a timer of the service
 * clock, status routes, alerts (events + JSON-lines file) and a live event
 * stream over SSE.
 *
 * One mutex guards the instance table and the cycle state. Checks are
 * started with no lock held (dsys_client_send) and complete on the
 * client's threads; each completion updates its entry and publishes its
 * events under the lock, so event ids follow the order of state changes.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/client.h>
#include <distsys/events.h>
#include <distsys/faultd.h>
#include <distsys/lock.h>
#include "core/internal.h"
#include "core/json.h"
#include "transport/url.h"
#include "services/reply.h"

#define TOPIC "faultd"
#define VANISH_MISSING (-1)

enum { ST_UNKNOWN = 0, ST_HEALTHY = 1, ST_UNHEALTHY = 2 };
static const char *const st_names[] = {"unknown", "healthy", "unhealthy"};

typedef struct entry {
  struct entry *next;
  char *key;  /* registry id; "static:<type>:<name>"; "gateway" */
  char *type, *name, *url;
  int is_static, is_gateway;
  int storage_full; /* its last /health said "storage":"full" */
  int registered;  /* in the registry (always 1 for static targets) */
  int vanish_kind; /* DSYS_REG_DEREGISTERED, DSYS_REG_REAPED, VANISH_MISSING */
  int64_t vanished_ms;
  int reg_healthy;
  int status;
  uint32_t fails;
  int critical, slow;
  int64_t rt_ms;   /* -1: none */
  double uptime;   /* NAN: unknown */
  int64_t last_check, last_success; /* wall ms, 0: never */
  int checking;    /* a check of it is in flight: no second one */
  char err[128];
} entry;

typedef struct waiter {
  dsys_request *req;
  struct waiter *next;
} waiter;

typedef struct chk {
  dsys_faultd *fd;
  char *key; /* NULL: the gateway's metrics */
  int single; /* an instance's first check, outside any cycle */
  int64_t start_us;
} chk;

struct dsys_faultd {
  dsys_faultd_options o;
  char *name, *gw_url, *alert_path;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  entry *entries; /* sorted by type, then name */
  dsys_client *cli;
  dsys_events *ev;
  dsys_server *srv;
  uint64_t watch_id;
  int watching;
  uint64_t timer;
  int firing, stopping, shut;
  int running;     /* a cycle is in progress */
  int outstanding; /* its checks not yet completed */
  int rerun;       /* POST /api/check waits for a fresh cycle */
  int singles;     /* first checks of new instances in flight */
  uint64_t cycles;
  waiter *wait_next, *wait_cur;
  json_object *metrics; /* the gateway's "metrics" member, or NULL */
  json_object *latency; /* the gateway's last "latency" member (per upstream
                           counters), or NULL */
  int64_t start_ms;
  pthread_mutex_t log_mu;
  /* Events are queued under mu and published by flush() after mu is
   * released: the event stream's open callback (sse_open) takes mu while
   * the stream holds its own lock, so publishing under mu deadlocked with
   * a client connecting while a check completed. pub_mu keeps the queued
   * order across threads (lock order: pub_mu, then mu or a stream's). */
  pthread_mutex_t pub_mu;
  struct ev_out *out, **out_tail;
};

typedef struct ev_out {
  struct ev_out *next;
  const char *name; /* a string literal */
  char *data;
  size_t len;
} ev_out;

/* ---- helpers ---- */

static int64_t wall(dsys_faultd *fd) { return dsys_clock_wall_ms(fd->o.clock); }

static json_object *time_or_null(int64_t ms) { return ms ? dsysi_json_time(ms) : NULL; }

static entry *find(dsys_faultd *fd, const char *key) {
  for (entry *e = fd->entries; e; e = e->next)
    if (!strcmp(e->key, key)) return e;
  return NULL;
}

static void entry_free(entry *e) {
  if (!e) return;
  free(e->key);
  free(e->type);
  free(e->name);
  free(e->url);
  free(e);
}

static entry *entry_new(const char *key, const char *type, const char *name, const char *url) {
  entry *e = calloc(1, sizeof *e);
  if (!e) return NULL;
  e->key = strdup(key);
  e->type = strdup(type);
  e->name = strdup(name && *name ? name : key);
  e->url = strdup(url);
  if (!e->key || !e->type || !e->name || !e->url) {
    entry_free(e);
    return NULL;
  }
  e->registered = 1;
  e->reg_healthy = 1;
  e->rt_ms = -1;
  e->uptime = NAN;
  return e;
}

static void insert(dsys_faultd *fd, entry *e) {
  entry **pp = &fd->entries;
  while (*pp) {
    int c = strcmp((*pp)->type, e->type);
    if (c > 0 || (c == 0 && strcmp((*pp)->name, e->name) > 0)) break;
    pp = &(*pp)->next;
  }
  e->next = *pp;
  *pp = e;
}

static void unlink_entry(dsys_faultd *fd, entry *e) {
  for (entry **pp = &fd->entries; *pp; pp = &(*pp)->next)
    if (*pp == e) {
      *pp = e->next;
      return;
    }
}

static const char *vanish_reason(const entry *e) {
  if (e->registered) return NULL;
  return e->vanish_kind == DSYS_REG_DEREGISTERED ? "deregistered"
         : e->vanish_kind == DSYS_REG_REAPED     ? "reaped"
                                                 : "missing from the registry";
}

static json_object *entry_json(const entry *e) {
  json_object *o = json_object_new_object();
  json_object_object_add(o, "serviceId", json_object_new_string(e->key));
  json_object_object_add(o, "name", json_object_new_string(e->name));
  json_object_object_add(o, "url", json_object_new_string(e->url));
  json_object_object_add(o, "status", json_object_new_string(st_names[e->status]));
  json_object_object_add(o, "consecutiveFailures", json_object_new_int64(e->fails));
  json_object_object_add(o, "responseTime", e->rt_ms >= 0 ? json_object_new_int64(e->rt_ms) : NULL);
  json_object_object_add(o, "uptime", isnan(e->uptime) ? NULL : json_object_new_double(e->uptime));
  json_object_object_add(o, "lastCheck", time_or_null(e->last_check));
  json_object_object_add(o, "lastSuccess", time_or_null(e->last_success));
  json_object_object_add(o, "critical", json_object_new_boolean(e->critical));
  json_object_object_add(o, "slow", json_object_new_boolean(e->slow));
  json_object_object_add(o, "registered", json_object_new_boolean(e->registered));
  const char *why = vanish_reason(e);
  json_object_object_add(o, "reason", why ? json_object_new_string(why) : NULL);
  json_object_object_add(o, "error", e->err[0] ? json_object_new_string(e->err) : NULL);
  return o;
}

/* Counts of one type (or all when type is NULL). */
static void counts(dsys_faultd *fd, const char *type, int *t, int *h, int *u, int *k, int *c) {
  *t = *h = *u = *k = *c = 0;
  for (entry *e = fd->entries; e; e = e->next) {
    if (type && strcmp(e->type, type)) continue;
    (*t)++;
    if (e->status == ST_HEALTHY) (*h)++;
    else if (e->status == ST_UNHEALTHY) (*u)++;
    else (*k)++;
    if (e->critical) (*c)++;
  }
}

static json_object *summary_json(dsys_faultd *fd) {
  int t, h, u, k, c;
  counts(fd, NULL, &t, &h, &u, &k, &c);
  json_object *s = json_object_new_object();
  json_object_object_add(s, "timestamp", dsysi_json_time(wall(fd)));
  json_object_object_add(s, "total", json_object_new_int(t));
  json_object_object_add(s, "healthy", json_object_new_int(h));
  json_object_object_add(s, "unhealthy", json_object_new_int(u));
  json_object_object_add(s, "unknown", json_object_new_int(k));
  json_object_object_add(s, "critical", json_object_new_int(c));
  json_object *by = json_object_new_object();
  for (entry *e = fd->entries; e; e = e->next) {
    if (json_object_object_get_ex(by, e->type, NULL)) continue;
    counts(fd, e->type, &t, &h, &u, &k, &c);
    json_object *x = json_object_new_object();
    json_object_object_add(x, "total", json_object_new_int(t));
    json_object_object_add(x, "healthy", json_object_new_int(h));
    json_object_object_add(x, "unhealthy", json_object_new_int(u));
    json_object_object_add(x, "unknown", json_object_new_int(k));
    json_object_object_add(by, e->type, x);
  }
  json_object_object_add(s, "services", by);
  return s;
}

static json_object *metrics_copy(dsys_faultd *fd) {
  json_object *m = NULL;
  if (fd->metrics && json_object_deep_copy(fd->metrics, &m, NULL) == 0) return m;
  return json_object_new_object();
}

/* GET /api/status (hold mu). */
static json_object *status_json(dsys_faultd *fd) {
  json_object *o = json_object_new_object();
  json_object_object_add(o, "summary", summary_json(fd));
  json_object *svcs = json_object_new_object();
  for (entry *e = fd->entries; e; e = e->next) {
    json_object *arr;
    if (!json_object_object_get_ex(svcs, e->type, &arr)) {
      arr = json_object_new_array();
      json_object_object_add(svcs, e->type, arr);
    }
    json_object_array_add(arr, entry_json(e));
  }
  json_object_object_add(o, "services", svcs);
  json_object_object_add(o, "requestMetrics", metrics_copy(fd));
  json_object_object_add(o, "timestamp", dsysi_json_time(wall(fd)));
  return o;
}

/* GET /api/metrics (hold mu). */
static json_object *metrics_json(dsys_faultd *fd) {
  json_object *o = json_object_new_object();
  json_object_object_add(o, "metrics", metrics_copy(fd));
  json_object_object_add(o, "timestamp", dsysi_json_time(wall(fd)));
  return o;
}

/* Queue an event (hold mu; flush() publishes it); consumes o. */
static void publish(dsys_faultd *fd, const char *name, json_object *o) {
  if (!json_object_object_get_ex(o, "timestamp", NULL))
    json_object_object_add(o, "timestamp", dsysi_json_time(wall(fd)));
  ev_out *x = malloc(sizeof *x);
  if (x && !(x->data = dsysi_json_dump(o, &x->len))) {
    free(x);
    x = NULL;
  }
  json_object_put(o);
  if (!x) {
    dsysi_log(DSYS_LOG_WARN, fd->name, "could not publish a %s event", name);
    return;
  }
  x->name = name;
  x->next = NULL;
  *fd->out_tail = x;
  fd->out_tail = &x->next;
}

/* Publish the queued events, in order (not holding mu). */
static void flush(dsys_faultd *fd) {
  pthread_mutex_lock(&fd->pub_mu);
  pthread_mutex_lock(&fd->mu);
  ev_out *l = fd->out;
  fd->out = NULL;
  fd->out_tail = &fd->out;
  pthread_mutex_unlock(&fd->mu);
  while (l) {
    ev_out *x = l;
    l = l->next;
    if (dsys_events_publish(fd->ev, TOPIC, x->name, x->data, x->len, NULL))
      dsysi_log(DSYS_LOG_WARN, fd->name, "could not publish a %s event", x->name);
    free(x->data);
    free(x);
  }
  pthread_mutex_unlock(&fd->pub_mu);
}

/* The entry with its type, as event payloads carry it (hold mu). */
static json_object *entry_event(const entry *e) {
  json_object *o = entry_json(e);
  json_object_object_add(o, "serviceType", json_object_new_string(e->type));
  return o;
}

/* Alert: an event plus a JSON line in the alert log (hold mu). */
static void alert(dsys_faultd *fd, const char *event, const char *level, const entry *e,
                  const char *message) {
  json_object *o = entry_event(e);
  json_object_object_add(o, "severity", json_object_new_string(level));
  json_object_object_add(o, "message", json_object_new_string(message));
  if (!strcmp(event, "slow-response"))
    json_object_object_add(o, "threshold", json_object_new_int64(fd->o.slow_ms));
  /* with an election, only the leader writes alerts (one page per fault,
   * not one per detector); the event still goes to this detector's stream */
  if (fd->o.election && !dsys_election_is_leader(fd->o.election, NULL)) {
    publish(fd, event, o);
    return;
  }
  if (fd->alert_path) {
    json_object *l = json_object_new_object();
    json_object_object_add(l, "timestamp", dsysi_json_time(wall(fd)));
    json_object_object_add(l, "level", json_object_new_string(level));
    json_object_object_add(l, "type", json_object_new_string(event));
    json_object_object_add(l, "serviceType", json_object_new_string(e->type));
    json_object_object_add(l, "serviceId", json_object_new_string(e->key));
    json_object_object_add(l, "name", json_object_new_string(e->name));
    json_object_object_add(l, "url", json_object_new_string(e->url));
    json_object_object_add(l, "message", json_object_new_string(message));
    json_object_object_add(l, "consecutiveFailures", json_object_new_int64(e->fails));
    json_object_object_add(l, "responseTime", e->rt_ms >= 0 ? json_object_new_int64(e->rt_ms) : NULL);
    char *s = dsysi_json_dump(l, NULL);
    json_object_put(l);
    pthread_mutex_lock(&fd->log_mu);
    FILE *f = s ? fopen(fd->alert_path, "a") : NULL;
    if (f) {
      fprintf(f, "%s\n", s);
      if (fclose(f)) f = NULL;
    }
    if (!f) dsysi_log(DSYS_LOG_WARN, fd->name, "cannot append to the alert log %s", fd->alert_path);
    pthread_mutex_unlock(&fd->log_mu);
    free(s);
  }
  dsysi_log(!strcmp(level, "CRITICAL") ? DSYS_LOG_ERROR : !strcmp(level, "WARNING") ? DSYS_LOG_WARN
                                                                                   : DSYS_LOG_INFO,
            fd->name, "%s %s %s (%s): %s", level, event, e->name, e->url, message);
  publish(fd, event, o);
}

/* ---- options and configuration ---- */

int dsys_faultd_new(dsys_faultd **out, const dsys_faultd_options *opts) {
  if (!out) return DSYS_EINVAL;
  dsys_faultd_options o = {0};
  if (opts) memcpy(&o, opts, opts->size && opts->size < sizeof o ? opts->size : sizeof o);
  if (o.interval_ms < 0 || o.timeout_ms < 0 || o.slow_ms < 0 || o.forget_ms < 0 ||
      o.heartbeat_ms < 0)
    return DSYS_EINVAL;
  o.size = sizeof o;
  if (!o.clock) o.clock = dsys_clock_real();
  if (!o.interval_ms) o.interval_ms = 5000;
  if (!o.timeout_ms) o.timeout_ms = 3000;
  if (!o.slow_ms) o.slow_ms = 1000;
  if (!o.fail_threshold) o.fail_threshold = 3;
  if (!o.forget_ms) o.forget_ms = 600000;
  if (!o.heartbeat_ms) o.heartbeat_ms = 15000;
  dsys_faultd *fd = calloc(1, sizeof *fd);
  if (!fd) return DSYS_ENOMEM;
  fd->o = o;
  pthread_mutex_init(&fd->mu, NULL);
  pthread_mutex_init(&fd->log_mu, NULL);
  pthread_mutex_init(&fd->pub_mu, NULL);
  fd->out_tail = &fd->out;
  pthread_cond_init(&fd->cv, NULL);
  fd->name = strdup(o.name ? o.name : "fault-detector");
  fd->gw_url = dsysi_strdup(o.gateway_url);
  fd->alert_path = dsysi_strdup(o.alert_log);
  fd->o.name = fd->name;
  fd->o.gateway_url = fd->gw_url;
  fd->o.alert_log = fd->alert_path;
  fd->start_ms = dsys_clock_now_ms(o.clock);
  dsys_client_options co = {.size = sizeof co, .clock = o.clock, .timeout_ms = o.timeout_ms,
                            .connect_timeout_ms = o.timeout_ms < 2000 ? o.timeout_ms : 2000,
                            .max_response = 4u << 20};
  if (o.client) {
    dsys_client_options uc = {0};
    memcpy(&uc, o.client, o.client->size && o.client->size < sizeof uc ? o.client->size : sizeof uc);
    co.tls_ca_file = uc.tls_ca_file;
    co.tls_cert_file = uc.tls_cert_file;
    co.tls_key_file = uc.tls_key_file;
    co.tls_insecure = uc.tls_insecure;
  }
  fd->o.client = NULL; /* the client holds copies */
  dsys_events_options eo = {.size = sizeof eo, .clock = o.clock, .heartbeat_ms = o.heartbeat_ms};
  int rc = (!fd->name || (o.gateway_url && !fd->gw_url) || (o.alert_log && !fd->alert_path))
               ? DSYS_ENOMEM
               : 0;
  if (!rc) rc = dsys_client_new(&fd->cli, &co);
  if (!rc) rc = dsys_events_new(&fd->ev, &eo);
  if (!rc && fd->gw_url) {
    entry *g = entry_new("gateway", "gateway", "load-balancer", fd->gw_url);
    if (!g) rc = DSYS_ENOMEM;
    else {
      g->is_gateway = g->is_static = 1;
      insert(fd, g);
    }
  }
  if (rc) {
    fd->shut = 1;
    dsys_faultd_free(fd);
    return rc;
  }
  *out = fd;
  return 0;
}

int dsys_faultd_add_target(dsys_faultd *fd, const char *type, const char *name,
                           const char *url) {
  if (!fd || !type || !*type || !name || !*name || !url || !*url) return DSYS_EINVAL;
  if (fd->srv) return DSYS_ESTATE;
  int rc = dsysi_url_check(url); /* a typo fails here, not as "down" forever */
  if (rc) return rc;
  size_t n = strlen(type) + strlen(name) + 10;
  char *key = malloc(n);
  if (!key) return DSYS_ENOMEM;
  snprintf(key, n, "static:%s:%s", type, name);
  if (find(fd, key)) rc = DSYS_EEXIST;
  entry *e = rc ? NULL : entry_new(key, type, name, url);
  if (!rc && !e) rc = DSYS_ENOMEM;
  free(key);
  if (rc) return rc;
  e->is_static = 1;
  insert(fd, e);
  return 0;
}

/* ---- registry ---- */

/* An entry left the registry (hold mu). */
static void vanished(dsys_faultd *fd, entry *e, int kind) {
  if (!e->registered || e->is_static) return;
  e->registered = 0;
  e->vanish_kind = kind;
  e->vanished_ms = dsys_clock_now_ms(fd->o.clock);
  if (e->status == ST_HEALTHY) e->status = ST_UNKNOWN;
  if (kind == DSYS_REG_DEREGISTERED) {
    publish(fd, "service-health-update", entry_event(e));
    return;
  }
  alert(fd, "service-health-update", "WARNING", e,
        kind == DSYS_REG_REAPED ? "reaped by the registry without deregistering"
                                : "gone from the registry without deregistering");
}

static chk *chk_new(dsys_faultd *fd, entry *e, int64_t t0);
static void send_each(dsys_faultd *fd, chk **list, size_t n);

/* Compare the registry with the table. An instance seen for the first
 * time (or back with an unknown status) is checked at once rather than a
 * whole interval later: "unknown" for up to interval_ms after it
 * registered (or after the detector started before it) told nothing.
 * in_round: called by run_round, whose cycle checks new instances anyway
 * unless one is still running. */
static void reconcile(dsys_faultd *fd, int in_round) {
  if (!fd->o.registry) return;
  dsys_instance *in = NULL;
  size_t n = 0;
  if (dsys_registry_lookup(fd->o.registry, NULL, 0, &in, &n)) return;
  chk **first = n ? calloc(n, sizeof *first) : NULL;
  size_t nfirst = 0;
  pthread_mutex_lock(&fd->mu);
  if (fd->stopping) {
    pthread_mutex_unlock(&fd->mu);
    dsys_free(in);
    free(first);
    return;
  }
  int64_t t0 = dsys_clock_now_us(fd->o.clock);
  for (size_t i = 0; i < n; i++) {
    entry *e = find(fd, in[i].id);
    if (e && (strcmp(e->url, in[i].url) || strcmp(e->type, in[i].type))) {
      /* same id, another instance: start over */
      unlink_entry(fd, e);
      entry_free(e);
      e = NULL;
    }
    int check = 0;
    if (!e) {
      e = entry_new(in[i].id, in[i].type, in[i].name, in[i].url);
      if (!e) continue;
      insert(fd, e);
      publish(fd, "service-health-update", entry_event(e));
      check = 1;
    } else if (!e->registered) {
      e->registered = 1;
      e->vanish_kind = 0;
      if (e->status == ST_UNKNOWN && e->last_success && !e->fails) e->status = ST_HEALTHY;
      publish(fd, "service-health-update", entry_event(e));
      check = e->status == ST_UNKNOWN;
    }
    e->reg_healthy = in[i].health == DSYS_INSTANCE_HEALTHY;
    /* one check in flight per instance, however many changes come in */
    if (check && first && (!in_round || fd->running) && !e->checking &&
        (first[nfirst] = chk_new(fd, e, t0))) {
      first[nfirst++]->single = 1;
      fd->singles++;
    }
  }
  for (entry *e = fd->entries; e; e = e->next) {
    if (e->is_static || !e->registered) continue;
    int present = 0;
    for (size_t i = 0; i < n && !present; i++) present = !strcmp(in[i].id, e->key);
    if (!present) vanished(fd, e, VANISH_MISSING);
  }
  pthread_mutex_unlock(&fd->mu);
  flush(fd);
  dsys_free(in);
  send_each(fd, first, nfirst);
  free(first);
}

static void on_change(void *ud, const dsys_registry_change *c) {
  dsys_faultd *fd = ud;
  if (c->kind == DSYS_REG_DEREGISTERED || c->kind == DSYS_REG_REAPED) {
    pthread_mutex_lock(&fd->mu);
    entry *e = fd->stopping ? NULL : find(fd, c->id);
    if (e) vanished(fd, e, c->kind);
    pthread_mutex_unlock(&fd->mu);
    flush(fd);
    return;
  }
  reconcile(fd, 0);
}

/* ---- check cycles ---- */

static void cycle_start_locked(dsys_faultd *fd, chk ***list, size_t *n);
static void send_checks(dsys_faultd *fd, chk **list, size_t n);
static void tick(void *ud);

static void answer_waiters(dsys_faultd *fd, waiter *w, int ok) {
  while (w) {
    waiter *next = w->next;
    if (ok) {
      pthread_mutex_lock(&fd->mu);
      json_object *o = status_json(fd);
      pthread_mutex_unlock(&fd->mu);
      json_object_object_add(o, "message", json_object_new_string("Health check completed"));
      dsysi_respond_obj(w->req, 200, o);
    } else {
      dsys_respond_error(w->req, 503, "DSYS_ESTOPPED", "Fault detector is stopping");
    }
    free(w);
    w = next;
  }
}

/* A check finished (hold mu). */
static void apply(dsys_faultd *fd, entry *e, int err, dsys_reply *rep, int64_t rt) {
  int status = err ? 0 : dsys_reply_status(rep);
  int okk = !err && status >= 200 && status < 300;
  e->last_check = wall(fd);
  e->rt_ms = rt;
  if (okk) {
    int was_critical = e->critical;
    e->last_success = e->last_check;
    e->fails = 0;
    e->critical = 0;
    e->err[0] = '\0';
    e->status = e->registered ? ST_HEALTHY : ST_UNKNOWN;
    e->slow = rt > fd->o.slow_ms;
    size_t len = 0;
    const char *b = dsys_reply_body(rep, &len);
    json_object *o = NULL, *up = NULL;
    e->uptime = NAN;
    if (!dsysi_json_parse_object(b, len, &o) && json_object_object_get_ex(o, "uptime", &up) &&
        (json_object_is_type(up, json_type_double) || json_object_is_type(up, json_type_int)))
      e->uptime = json_object_get_double(up);
    /* a full disk keeps the instance healthy (reads work) but fails its
     * writes: alert on the change, both ways */
    json_object *stg = NULL;
    int full = o && json_object_object_get_ex(o, "storage", &stg) &&
               json_object_is_type(stg, json_type_string) &&
               !strcmp(json_object_get_string(stg), "full");
    json_object_put(o);
    publish(fd, "service-health-update", entry_event(e));
    if (full != e->storage_full) {
      e->storage_full = full;
      alert(fd, full ? "storage-full" : "storage-recovered", full ? "WARNING" : "INFO", e,
            full ? "its storage is full: writes answer 507, reads go on"
                 : "writes work again: its storage has space");
    }
    if (e->slow) {
      char m[128];
      snprintf(m, sizeof m, "health check took %lld ms (over %lld ms)", (long long)rt,
               (long long)fd->o.slow_ms);
      alert(fd, "slow-response", "WARNING", e, m);
    }
    if (was_critical) alert(fd, "service-recovery", "INFO", e, "service recovered");
    return;
  }
  if (err) snprintf(e->err, sizeof e->err, "%s", dsys_strerror(err));
  else snprintf(e->err, sizeof e->err, "HTTP %d", status);
  e->fails++;
  e->slow = 0;
  e->uptime = NAN;
  if (!e->registered && e->vanish_kind == DSYS_REG_DEREGISTERED) {
    /* it said goodbye and is gone now: forget it */
    e->status = ST_UNKNOWN;
    json_object *o = entry_event(e);
    json_object_object_add(o, "status", json_object_new_string("removed"));
    publish(fd, "service-health-update", o);
    unlink_entry(fd, e);
    entry_free(e);
    return;
  }
  e->status = ST_UNHEALTHY;
  publish(fd, "service-health-update", entry_event(e));
  if (e->fails == fd->o.fail_threshold) {
    e->critical = 1;
    char m[200];
    snprintf(m, sizeof m, "%u consecutive failed health checks (last: %s)", e->fails, e->err);
    alert(fd, "service-failure", "CRITICAL", e, m);
  }
}

/* One check of the running cycle is accounted for: the last one completes
 * the cycle (events, waiting POST /api/check, a requested rerun). */
static void cycle_release(dsys_faultd *fd) {
  chk **list = NULL;
  size_t n = 0;
  waiter *done = NULL;
  pthread_mutex_lock(&fd->mu);
  if (--fd->outstanding == 0) {
    fd->running = 0;
    fd->cycles++;
    if (!fd->stopping) {
      publish(fd, "health-summary", summary_json(fd));
      if (fd->gw_url) publish(fd, "request-metrics", metrics_json(fd));
      done = fd->wait_cur;
      fd->wait_cur = NULL;
      if (fd->rerun) cycle_start_locked(fd, &list, &n);
    }
    pthread_cond_broadcast(&fd->cv);
  }
  pthread_mutex_unlock(&fd->mu);
  flush(fd);
  answer_waiters(fd, done, 1);
  send_checks(fd, list, n);
}

/* The gateway's per-upstream counter named k grew since the last look:
 * by how much (0: not, or no earlier look). */
static int64_t grew(json_object *prev, const char *up, json_object *cur, const char *k) {
  json_object *p = NULL, *pv = NULL, *cv = NULL;
  if (!prev || !json_object_object_get_ex(prev, up, &p) || !json_object_object_get_ex(p, k, &pv) ||
      !json_object_object_get_ex(cur, k, &cv))
    return 0;
  int64_t d = json_object_get_int64(cv) - json_object_get_int64(pv);
  return d > 0 ? d : 0;
}

/* Events for what the gateway's upstreams did since the last look (hold
 * mu): an instance ejected for slowness is an alert; attempts cut by the
 * per-try timeout and hedges sent are events for the dashboard. */
static void latency_events(dsys_faultd *fd, json_object *lat) {
  entry *g = find(fd, "gateway");
  json_object_object_foreach(lat, up, cur) {
    int64_t ej = grew(fd->latency, up, cur, "slowEjections");
    int64_t to = grew(fd->latency, up, cur, "attemptTimeouts");
    int64_t hd = grew(fd->latency, up, cur, "hedges");
    if (ej && g) {
      char msg[200];
      snprintf(msg, sizeof msg, "upstream %s: %lld instance%s ejected for slowness", up,
               (long long)ej, ej > 1 ? "s" : "");
      alert(fd, "slow-ejection", "WARNING", g, msg);
    }
    if (to || hd) {
      json_object *o = json_object_new_object();
      json_object_object_add(o, "upstream", json_object_new_string(up));
      json_object_object_add(o, "attemptTimeouts", json_object_new_int64(to));
      json_object_object_add(o, "hedges", json_object_new_int64(hd));
      json_object_object_add(o, "timestamp", dsysi_json_time(wall(fd)));
      publish(fd, "upstream-latency", o);
    }
  }
}

static void check_done(int err, dsys_reply *rep, void *ud) {
  chk *c = ud;
  dsys_faultd *fd = c->fd;
  int64_t rt = (dsys_clock_now_us(fd->o.clock) - c->start_us) / 1000;
  json_object *m = NULL, *lat = NULL;
  if (!c->key && !err && dsys_reply_status(rep) == 200) {
    size_t len = 0;
    const char *b = dsys_reply_body(rep, &len);
    json_object *o = NULL, *x = NULL;
    if (!dsysi_json_parse_object(b, len, &o) && json_object_object_get_ex(o, "metrics", &x) &&
        json_object_is_type(x, json_type_object))
      m = json_object_get(x);
    if (o && json_object_object_get_ex(o, "latency", &x) && json_object_is_type(x, json_type_object))
      lat = json_object_get(x);
    json_object_put(o);
  }
  pthread_mutex_lock(&fd->mu);
  entry *e = c->key ? find(fd, c->key) : NULL;
  if (e) e->checking = 0;
  if (!fd->stopping) {
    if (e) {
      apply(fd, e, err, rep, rt);
    } else if (m) {
      json_object_put(fd->metrics);
      fd->metrics = m;
      m = NULL;
    }
    if (lat) {
      latency_events(fd, lat);
      json_object_put(fd->latency);
      fd->latency = lat;
      lat = NULL;
    }
  }
  pthread_mutex_unlock(&fd->mu);
  flush(fd);
  json_object_put(m);
  json_object_put(lat);
  dsys_reply_free(rep);
  free(c->key);
  int single = c->single;
  free(c);
  if (!single) {
    cycle_release(fd);
    return;
  }
  pthread_mutex_lock(&fd->mu);
  fd->singles--;
  pthread_cond_broadcast(&fd->cv);
  pthread_mutex_unlock(&fd->mu);
}

/* Split "http://h:p/base" into the endpoint and "/base<suffix>". */
static void split_url(const char *url, const char *suffix, char *ep, size_t eplen, char *path,
                      size_t plen) {
  const char *s = strstr(url, "://");
  const char *slash = s ? strchr(s + 3, '/') : NULL;
  if (!slash || !strncmp(url, "unix:", 5)) {
    snprintf(ep, eplen, "%s", url);
    snprintf(path, plen, "%s", suffix);
    return;
  }
  snprintf(ep, eplen, "%.*s", (int)(slash - url), url);
  size_t bl = strlen(slash);
  while (bl && slash[bl - 1] == '/') bl--;
  snprintf(path, plen, "%.*s%s", (int)bl, slash, suffix);
}

/* Begin a cycle (hold mu): forget long-gone entries, list the checks. The
 * caller sends them with no lock held. */
static void cycle_start_locked(dsys_faultd *fd, chk ***list, size_t *n) {
  *list = NULL;
  *n = 0;
  if (fd->running || fd->stopping) {
    if (fd->running) fd->rerun = 1;
    return;
  }
  fd->rerun = 0;
  int64_t now = dsys_clock_now_ms(fd->o.clock);
  for (entry *e = fd->entries, *next; e; e = next) {
    next = e->next;
    if (!e->registered && now - e->vanished_ms >= fd->o.forget_ms) {
      json_object *o = entry_event(e);
      json_object_object_add(o, "status", json_object_new_string("removed"));
      publish(fd, "service-health-update", o);
      unlink_entry(fd, e);
      entry_free(e);
    }
  }
  size_t cnt = fd->gw_url ? 1 : 0;
  for (entry *e = fd->entries; e; e = e->next) cnt++;
  chk **l = calloc(cnt ? cnt : 1, sizeof *l);
  if (!l) return;
  size_t k = 0;
  int64_t t0 = dsys_clock_now_us(fd->o.clock);
  for (entry *e = fd->entries; e; e = e->next)
    if (!e->checking && (l[k] = chk_new(fd, e, t0))) k++; /* else its result is on its way */
  if (fd->gw_url && (l[k] = calloc(1, sizeof **l))) {
    l[k]->fd = fd;
    l[k]->start_us = t0;
    k++;
  }
  fd->wait_cur = fd->wait_next;
  fd->wait_next = NULL;
  fd->running = 1;
  fd->outstanding = (int)k + 1; /* +1: released by send_checks */
  *list = l;
  *n = k;
}

/* A check of e (hold mu); it is in flight from here until check_done. */
static chk *chk_new(dsys_faultd *fd, entry *e, int64_t t0) {
  chk *c = calloc(1, sizeof *c);
  if (!c || !(c->key = strdup(e->key))) {
    free(c);
    return NULL;
  }
  c->fd = fd;
  c->start_us = t0;
  e->checking = 1;
  return c;
}

/* Start the checks of list (no lock held); each ends in check_done. */
static void send_each(dsys_faultd *fd, chk **list, size_t n) {
  for (size_t i = 0; i < n; i++) {
    chk *c = list[i];
    char ep[1024], path[1024];
    const char *url = fd->gw_url;
    if (c->key) {
      pthread_mutex_lock(&fd->mu);
      entry *e = find(fd, c->key);
      snprintf(ep, sizeof ep, "%s", e ? e->url : "");
      pthread_mutex_unlock(&fd->mu);
      url = ep;
    }
    char u2[1024];
    snprintf(u2, sizeof u2, "%s", url);
    split_url(u2, c->key ? "/health" : "/api/metrics", ep, sizeof ep, path, sizeof path);
    dsys_call call = {.size = sizeof call, .method = "GET", .url = ep, .path = path,
                      .timeout_ms = fd->o.timeout_ms};
    c->start_us = dsys_clock_now_us(fd->o.clock);
    int rc = *ep ? dsys_client_send(fd->cli, &call, check_done, c) : DSYS_EINVAL;
    if (rc) check_done(rc, NULL, c);
  }
}

/* Start a cycle's checks (no lock held). */
static void send_checks(dsys_faultd *fd, chk **list, size_t n) {
  if (!list) return;
  send_each(fd, list, n);
  free(list);
  cycle_release(fd); /* the cycle's own count */
}

/* One round: compare with the registry, start a cycle (unless one is still
 * running), schedule the next round. @return the scheduling result. */
static int run_round(dsys_faultd *fd) {
  int rc = 0;
  pthread_mutex_lock(&fd->mu);
  if (fd->stopping) {
    pthread_mutex_unlock(&fd->mu);
    return 0;
  }
  fd->firing++;
  pthread_mutex_unlock(&fd->mu);
  reconcile(fd, 1);
  chk **list = NULL;
  size_t n = 0;
  pthread_mutex_lock(&fd->mu);
  if (!fd->stopping) {
    int rerun = fd->rerun;
    cycle_start_locked(fd, &list, &n);
    if (!list) fd->rerun = rerun; /* a cycle is still running: skip this tick */
    rc = dsys_timer_add(fd->o.clock, fd->o.interval_ms * 1000, tick, fd, &fd->timer);
    if (rc) dsysi_log(DSYS_LOG_ERROR, fd->name, "cannot schedule the next check cycle");
  }
  pthread_mutex_unlock(&fd->mu);
  flush(fd);
  send_checks(fd, list, n);
  pthread_mutex_lock(&fd->mu);
  fd->firing--;
  pthread_cond_broadcast(&fd->cv);
  pthread_mutex_unlock(&fd->mu);
  return rc;
}

static void tick(void *ud) { run_round(ud); }

uint64_t dsys_faultd_cycles(dsys_faultd *fd) {
  if (!fd) return 0;
  pthread_mutex_lock(&fd->mu);
  uint64_t n = fd->cycles;
  pthread_mutex_unlock(&fd->mu);
  return n;
}

/* ---- routes ---- */

/* The dashboard page (dashboard/index.html), embedded at build time by
 * lib/services/embed_file.sh into a generated source (lib/services/local.mk). */
extern const char dsysi_dashboard_html[];
extern const size_t dsysi_dashboard_html_len;

/* Only this origin; the page's own inline script and style; no framing. */
#define DASHBOARD_CSP                                                                   \
  "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; " \
  "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "     \
  "form-action 'none'; frame-ancestors 'none'"

static void h_root(dsys_request *req, void *ud) {
  dsys_response_header(req, "Cache-Control", "no-cache");
  dsys_response_header(req, "Content-Security-Policy", DASHBOARD_CSP);
  dsys_response_header(req, "X-Content-Type-Options", "nosniff");
  dsys_respond(req, 200, "text/html; charset=utf-8", dsysi_dashboard_html, dsysi_dashboard_html_len);
}

static void h_health(dsys_request *req, void *ud) {
  dsys_faultd *fd = ud;
  json_object *o = json_object_new_object();
  json_object_object_add(o, "status", json_object_new_string("healthy"));
  json_object_object_add(o, "service", json_object_new_string(fd->name));
  json_object_object_add(o, "timestamp", dsysi_json_time(wall(fd)));
  json_object_object_add(o, "uptime", json_object_new_double(
      (double)(dsys_clock_now_ms(fd->o.clock) - fd->start_ms) / 1000.0));
  dsysi_respond_obj(req, 200, o);
}

static void h_status(dsys_request *req, void *ud) {
  dsys_faultd *fd = ud;
  pthread_mutex_lock(&fd->mu);
  json_object *o = status_json(fd);
  pthread_mutex_unlock(&fd->mu);
  dsysi_respond_obj(req, 200, o);
}

static void h_status_type(dsys_request *req, void *ud) {
  dsys_faultd *fd = ud;
  const char *type = dsys_request_param(req, "type");
  pthread_mutex_lock(&fd->mu);
  json_object *arr = json_object_new_array();
  for (entry *e = fd->entries; e; e = e->next)
    if (!strcmp(e->type, type)) json_object_array_add(arr, entry_json(e));
  json_object *o = NULL;
  if (json_object_array_length(arr)) {
    o = json_object_new_object();
    json_object_object_add(o, "serviceType", json_object_new_string(type));
    json_object_object_add(o, "services", arr);
    json_object_object_add(o, "timestamp", dsysi_json_time(wall(fd)));
  } else {
    json_object_put(arr);
  }
  pthread_mutex_unlock(&fd->mu);
  if (!o) {
    dsys_respond_error(req, 404, "not_found", "Service type not found");
    return;
  }
  dsysi_respond_obj(req, 200, o);
}

static void h_check(dsys_request *req, void *ud) {
  dsys_faultd *fd = ud;
  waiter *w = calloc(1, sizeof *w);
  if (!w) {
    dsys_respond_error(req, 500, "DSYS_ENOMEM", "Out of memory");
    return;
  }
  w->req = req;
  dsys_request_defer(req);
  chk **list = NULL;
  size_t n = 0;
  pthread_mutex_lock(&fd->mu);
  int stopping = fd->stopping;
  if (!stopping) {
    w->next = fd->wait_next;
    fd->wait_next = w;
    cycle_start_locked(fd, &list, &n); /* or rerun after the running one */
  }
  pthread_mutex_unlock(&fd->mu);
  flush(fd);
  if (stopping) {
    answer_waiters(fd, w, 0);
    return;
  }
  send_checks(fd, list, n);
}

static void h_metrics(dsys_request *req, void *ud) {
  dsys_faultd *fd = ud;
  pthread_mutex_lock(&fd->mu);
  json_object *o = metrics_json(fd);
  pthread_mutex_unlock(&fd->mu);
  dsysi_respond_obj(req, 200, o);
}

static void sse_open(dsys_sse_stream *st, dsys_request *req, void *ud) {
  dsys_faultd *fd = ud;
  pthread_mutex_lock(&fd->mu);
  json_object *o = status_json(fd);
  pthread_mutex_unlock(&fd->mu);
  size_t len = 0;
  char *s = dsysi_json_dump(o, &len);
  json_object_put(o);
  if (s) dsys_sse_send(st, 0, "health-status", s, len);
  free(s);
}

static void h_events(dsys_request *req, void *ud) {
  dsys_faultd *fd = ud;
  const char *topics[] = {TOPIC};
  dsys_sse_options so = {.size = sizeof so, .on_open = sse_open, .ud = fd};
  dsys_events_serve_sse(fd->ev, req, topics, 1, &so);
}

int dsys_faultd_mount(dsys_faultd *fd, dsys_server *srv) {
  if (!fd || !srv) return DSYS_EINVAL;
  if (fd->srv) return DSYS_ESTATE;
  int rc = dsys_server_route(srv, "GET", "/", h_root, fd);
  if (!rc) rc = dsys_server_route(srv, "GET", "/health", h_health, fd);
  if (!rc) rc = dsys_server_route(srv, "GET", "/api/status", h_status, fd);
  if (!rc) rc = dsys_server_route(srv, "GET", "/api/status/:type", h_status_type, fd);
  if (!rc) rc = dsys_server_route(srv, "POST", "/api/check", h_check, fd);
  if (!rc) rc = dsys_server_route(srv, "GET", "/api/metrics", h_metrics, fd);
  if (!rc) rc = dsys_server_route(srv, "GET", "/api/events", h_events, fd);
  if (rc) return rc;
  fd->srv = srv;
  if (fd->o.registry) {
    rc = dsys_registry_watch(fd->o.registry, on_change, fd, &fd->watch_id);
    if (rc) return rc;
    fd->watching = 1;
  }
  /* The first round now, on this thread: not after a timer's hop (on a
   * fake clock, not only at the next advance). */
  return run_round(fd);
}

int dsys_faultd_status_json(dsys_faultd *fd, char **out) {
  if (!fd || !out) return DSYS_EINVAL;
  pthread_mutex_lock(&fd->mu);
  json_object *o = status_json(fd);
  pthread_mutex_unlock(&fd->mu);
  *out = dsysi_json_dump(o, NULL);
  json_object_put(o);
  return *out ? 0 : DSYS_ENOMEM;
}

void dsys_faultd_shutdown(dsys_faultd *fd) {
  if (!fd) return;
  pthread_mutex_lock(&fd->mu);
  if (fd->shut) {
    pthread_mutex_unlock(&fd->mu);
    return;
  }
  fd->shut = fd->stopping = 1;
  uint64_t t = fd->timer;
  waiter *w = fd->wait_cur;
  waiter *w2 = fd->wait_next;
  fd->wait_cur = fd->wait_next = NULL;
  pthread_mutex_unlock(&fd->mu);
  if (t) dsys_timer_cancel(fd->o.clock, t);
  pthread_mutex_lock(&fd->mu);
  while (fd->firing) pthread_cond_wait(&fd->cv, &fd->mu);
  pthread_mutex_unlock(&fd->mu);
  if (fd->watching) {
    dsys_registry_unwatch(fd->o.registry, fd->watch_id);
    fd->watching = 0;
  }
  answer_waiters(fd, w, 0);
  answer_waiters(fd, w2, 0);
  dsys_events_close_streams(fd->ev);
}

void dsys_faultd_free(dsys_faultd *fd) {
  if (!fd) return;
  dsys_faultd_shutdown(fd);
  dsys_client_free(fd->cli); /* pending checks complete (canceled) first */
  pthread_mutex_lock(&fd->mu);
  while (fd->running || fd->singles) pthread_cond_wait(&fd->cv, &fd->mu);
  pthread_mutex_unlock(&fd->mu);
  dsys_events_free(fd->ev);
  while (fd->entries) {
    entry *e = fd->entries;
    fd->entries = e->next;
    entry_free(e);
  }
  json_object_put(fd->metrics);
  while (fd->out) { /* queued after the streams closed */
    ev_out *x = fd->out;
    fd->out = x->next;
    free(x->data);
    free(x);
  }
  pthread_mutex_destroy(&fd->mu);
  pthread_mutex_destroy(&fd->log_mu);
  pthread_mutex_destroy(&fd->pub_mu);
  pthread_cond_destroy(&fd->cv);
  free(fd->name);
  free(fd->gw_url);
  json_object_put(fd->latency);
  free(fd->alert_path);
  free(fd);
}
