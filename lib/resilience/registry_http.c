/* Registry backend "http": a client of a registry daemon (the routes of
 * lib/services/registry_service.c) over any dsys_client transport.
 *
 * A local view (instances sorted by id, a change log, a local change index)
 * is kept current by a background thread running blocking queries
 * (GET /api/registry/services?index=N&wait=D): a change on the daemon is
 * applied as soon as its answer arrives, and the registry is told through
 * env.changed. Lookups are served from the view only. The view's changes
 * are found by comparing each answer with the view; the backend's own
 * writes are applied from the daemon's answer at once (read-your-writes).
 * While the daemon is unreachable the last view keeps being served, with
 * health frozen as it was when the daemon was last seen; the thread
 * retries with a bounded backoff and logs once per outage. Writes return
 * the transport error (DSYS_ECONNREFUSED, ...) or DSYS_EUNAVAIL (503).
 *
 * Each answer carries X-Dsys-Index (the daemon's index) and X-Dsys-Epoch
 * (new whenever the daemon restarts): an answer older than one already
 * applied (same epoch, lower index, or the previous epoch) is dropped.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <distsys/client.h>
#include <distsys/identity.h>
#include "core/internal.h"
#include "core/plugin.h"
#include "core/json.h"
#include "resilience/registry_table.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

typedef struct http_state {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int inited;
  char *url;
  dsys_client *cli;  /* writes and full fetches */
  dsys_client *wcli; /* blocking queries (freed at close to cancel them) */
  dsys_registry_env env;
  int64_t wait_ms;
  dsysi_regtab t; /* the view (registry_table.c) */
  /* what we know of the daemon */
  char epoch[40], old_epoch[40];
  uint64_t dindex;
  int synced;              /* a full answer of the current epoch applied */
  int live;                /* the daemon answered last time */
  int64_t down_since_ms;   /* wall ms when it stopped answering */
  /* the background thread */
  pthread_t th;
  int th_started, stop, sending;
  int got;                 /* a blocking answer arrived */
  int got_err;
  dsys_reply *got_reply;
} http_state;

/* ---- the view (hold mu) ---- */

static int same_content(const dsys_instance *a, const dsys_instance *b) {
  if (strcmp(a->type, b->type) || strcmp(a->url, b->url) || strcmp(a->name, b->name) ||
      strcmp(a->metadata, b->metadata) || a->weight != b->weight || a->ntags != b->ntags ||
      a->registered_ms != b->registered_ms)
    return 0;
  for (size_t i = 0; i < a->ntags; i++)
    if (strcmp(a->tags[i], b->tags[i])) return 0;
  return 1;
}

/* Insert or replace with a copy of in (a REGISTERED change). */
static int upsert(http_state *s, const dsys_instance *in) {
  dsys_instance *copy;
  int rc = dsys_instances_copy(in, 1, &copy);
  return rc ? rc : dsysi_regtab_upsert(&s->t, copy);
}

static int64_t now_ms(http_state *s) {
  return dsys_clock_wall_ms(s->env.clock ? s->env.clock : dsys_clock_real());
}

/* Merge what the daemon says about one instance into the view. */
static void merge_one(http_state *s, const dsys_instance *d, int64_t now) {
  int found;
  size_t pos = dsysi_regtab_lower(&s->t, d->id, &found);
  if (!found) {
    /* about to be reaped (we may have reaped it locally already) */
    if (now - d->last_heartbeat_ms > s->env.reap_ms) return;
    upsert(s, d);
    return;
  }
  dsys_instance *e = s->t.v[pos];
  if (!same_content(e, d)) {
    upsert(s, d);
    return;
  }
  if (d->health != DSYS_INSTANCE_HEALTHY && e->health == DSYS_INSTANCE_HEALTHY) {
    if (!dsysi_regtab_record(&s->t, DSYS_REG_UNHEALTHY, e->id, e->type)) e->health = DSYS_INSTANCE_UNHEALTHY;
  } else if (d->health == DSYS_INSTANCE_HEALTHY && e->health != DSYS_INSTANCE_HEALTHY &&
             d->last_heartbeat_ms > e->last_heartbeat_ms) {
    /* only a newer heartbeat revives: an older answer may predate our expiry */
    if (!dsysi_regtab_record(&s->t, DSYS_REG_HEALTHY, e->id, e->type)) e->health = DSYS_INSTANCE_HEALTHY;
  }
  if (d->last_heartbeat_ms > e->last_heartbeat_ms) e->last_heartbeat_ms = d->last_heartbeat_ms;
}

static int cmp_inst(const void *a, const void *b) {
  return strcmp(((const dsys_instance *)a)->id, ((const dsys_instance *)b)->id);
}

/* Apply a full list (sorted by id). */
static void apply_full(http_state *s, dsys_instance *d, size_t nd, int64_t now) {
  /* gone from the daemon: reaped if it was due, else deregistered */
  for (size_t i = 0; i < s->t.n;) {
    dsys_instance key = {.id = s->t.v[i]->id};
    int kind = now - s->t.v[i]->last_heartbeat_ms > s->env.reap_ms ? DSYS_REG_REAPED
                                                                   : DSYS_REG_DEREGISTERED;
    /* (out of memory for the change record: keep the entry this time) */
    if ((nd && bsearch(&key, d, nd, sizeof *d, cmp_inst)) || dsysi_regtab_remove_at(&s->t, i, kind))
      i++;
  }
  for (size_t i = 0; i < nd; i++) merge_one(s, &d[i], now);
}

/* Is an answer with this epoch and index current? Adopts it if so. */
static int accept_answer(http_state *s, const char *epoch, uint64_t idx) {
  if (!epoch || !*epoch) return 0;
  if (!strcmp(epoch, s->epoch)) {
    if (idx < s->dindex) return 0;
    s->dindex = idx;
    return 1;
  }
  if (!strcmp(epoch, s->old_epoch)) return 0; /* from before a restart */
  if (s->epoch[0]) snprintf(s->old_epoch, sizeof s->old_epoch, "%s", s->epoch);
  snprintf(s->epoch, sizeof s->epoch, "%s", epoch);
  s->dindex = idx;
  s->synced = 0;
  return 1;
}

/* ---- wire ---- */

static int64_t parse_iso_ms(const char *t) {
  int Y, M, D, h, m, sec, ms = 0;
  if (!t || sscanf(t, "%d-%d-%dT%d:%d:%d.%dZ", &Y, &M, &D, &h, &m, &sec, &ms) < 6) return 0;
  struct tm tm = {.tm_year = Y - 1900, .tm_mon = M - 1, .tm_mday = D, .tm_hour = h,
                  .tm_min = m, .tm_sec = sec};
  return (int64_t)timegm(&tm) * 1000 + ms;
}

/* Parse a service object into an instance block (dsys_free). */
static int parse_instance(json_object *o, dsys_instance **out) {
  if (!json_object_is_type(o, json_type_object)) return DSYS_EPROTO;
  dsys_instance in = {.id = dsysi_json_str(o, "serviceId"),
                      .type = dsysi_json_str(o, "serviceType"),
                      .url = dsysi_json_str(o, "url"),
                      .name = dsysi_json_str(o, "name")};
  if (!in.id || !in.type || !in.url) return DSYS_EPROTO;
  if (!in.name) in.name = in.id;
  json_object *md = NULL, *tags = NULL, *h = NULL;
  char *mdtext = NULL;
  if (json_object_object_get_ex(o, "metadata", &md) && json_object_is_type(md, json_type_object))
    mdtext = dsysi_json_dump(md, NULL);
  in.metadata = mdtext ? mdtext : "{}";
  const char *tv[64];
  if (json_object_object_get_ex(o, "tags", &tags) && json_object_is_type(tags, json_type_array)) {
    size_t n = json_object_array_length(tags);
    for (size_t i = 0; i < n && in.ntags < 64; i++) {
      const char *t = json_object_get_string(json_object_array_get_idx(tags, i));
      if (t) tv[in.ntags++] = t;
    }
    in.tags = tv;
  }
  int64_t w = 1;
  if (dsysi_json_int64(o, "weight", &w) || w < 1 || w > 10000) w = 1;
  in.weight = (uint32_t)w;
  int64_t hb = 0;
  dsysi_json_int64(o, "lastHeartbeat", &hb);
  in.last_heartbeat_ms = hb;
  in.registered_ms = parse_iso_ms(dsysi_json_str(o, "registeredAt"));
  in.health = json_object_object_get_ex(o, "healthy", &h) && json_object_get_boolean(h)
                  ? DSYS_INSTANCE_HEALTHY
                  : DSYS_INSTANCE_UNHEALTHY;
  int rc = dsys_instances_copy(&in, 1, out);
  free(mdtext);
  return rc;
}

/* Parse a list answer into a sorted array. */
static int parse_list(dsys_reply *rep, dsys_instance **out, size_t *n) {
  size_t len;
  const char *body = dsys_reply_body(rep, &len);
  json_object *o = NULL, *arr = NULL;
  int rc = dsysi_json_parse_object(body, len, &o);
  if (rc || !json_object_object_get_ex(o, "services", &arr) ||
      !json_object_is_type(arr, json_type_array)) {
    if (o) json_object_put(o);
    return rc == DSYS_ENOMEM ? rc : DSYS_EPROTO;
  }
  size_t cnt = json_object_array_length(arr);
  dsys_instance *v = calloc(cnt ? cnt : 1, sizeof *v);
  dsys_instance **parts = calloc(cnt ? cnt : 1, sizeof *parts);
  rc = v && parts ? 0 : DSYS_ENOMEM;
  for (size_t i = 0; !rc && i < cnt; i++) {
    rc = parse_instance(json_object_array_get_idx(arr, i), &parts[i]);
    if (!rc) v[i] = *parts[i];
  }
  if (!rc) {
    qsort(v, cnt, sizeof *v, cmp_inst);
    rc = dsys_instances_copy(v, cnt, out);
  }
  if (!rc) *n = cnt;
  for (size_t i = 0; parts && i < cnt; i++) free(parts[i]);
  free(parts);
  free(v);
  json_object_put(o);
  return rc;
}

static uint64_t hdr_index(dsys_reply *rep) {
  const char *h = dsys_reply_header(rep, "X-Dsys-Index");
  return h ? strtoull(h, NULL, 10) : 0;
}

static int status_err(int status) {
  if (status == 404) return DSYS_ENOTFOUND;
  if (status == 400) return DSYS_EINVAL;
  if (status == 401) return DSYS_EAUTH;
  if (status == 403) return DSYS_EPERM;
  if (status == 503) return DSYS_EUNAVAIL;
  return DSYS_EHTTP;
}

/* POST a JSON body; *out gets the parsed answer object on 200. */
static int post(http_state *s, const char *path, json_object *body, dsys_reply **rep_out,
                json_object **out) {
  char *text = dsysi_json_dump(body, NULL);
  if (!text) return DSYS_ENOMEM;
  /* writes present the instance's credential (a copy: the token file may
   * rotate meanwhile) */
  char *ident = NULL;
  if (s->env.identity && dsys_identity_token(s->env.identity, &ident)) {
    free(text);
    return DSYS_ENOMEM;
  }
  dsys_header h[2] = {{"Content-Type", "application/json"}, {DSYS_IDENTITY_HEADER, ident}};
  dsys_call call = {.size = sizeof call, .method = "POST", .url = s->url, .path = path,
                    .headers = h, .nheaders = ident ? 2 : 1, .body = text,
                    .body_len = strlen(text)};
  dsys_reply *rep = NULL;
  int rc = dsys_client_do(s->cli, &call, &rep);
  free(text);
  dsys_free(ident);
  if (rc) return rc;
  int st = dsys_reply_status(rep);
  if (st != 200) {
    if (st == 401 || st == 403)
      dsysi_log(DSYS_LOG_ERROR, "registry", "%s %s: HTTP %d: the registry refuses this "
                "instance's identity (%s)", s->url, path, st,
                s->env.identity ? "token rejected" : "no identity token configured");
    else if (st != 404 && st != 400)
      dsysi_log(DSYS_LOG_WARN, "registry", "%s %s: HTTP %d", s->url, path, st);
    dsys_reply_free(rep);
    return status_err(st);
  }
  size_t len;
  const char *b = dsys_reply_body(rep, &len);
  if (dsysi_json_parse_object(b, len, out)) {
    if (*out) json_object_put(*out);
    *out = NULL;
    dsys_reply_free(rep);
    return DSYS_EPROTO;
  }
  *rep_out = rep;
  return 0;
}

/* The clients, made once in attach with the caller's options (TLS for an
 * https:// registry); the backend's own timeouts unless the caller set
 * some. */
static int make_clients(http_state *s, const dsys_client_options *user) {
  dsys_client_options co = {.size = sizeof co, .connect_timeout_ms = 2000, .timeout_ms = 5000};
  if (user) {
    memcpy(&co, user, user->size && user->size < sizeof co ? user->size : sizeof co);
    co.size = sizeof co;
    if (!co.connect_timeout_ms) co.connect_timeout_ms = 2000;
    if (!co.timeout_ms) co.timeout_ms = 5000;
  }
  return dsys_client_new(&s->cli, &co) || dsys_client_new(&s->wcli, &co) ? DSYS_ENOMEM : 0;
}

/* ---- ops ---- */

static int h_open(void *vst, const char *target, char *err, size_t errlen) {
  http_state *s = vst;
  if (!target || !*target) {
    if (err && errlen) snprintf(err, errlen, "http registry needs the daemon URL");
    return DSYS_EINVAL;
  }
  if (strncmp(target, "http://", 7) && strncmp(target, "https://", 8) &&
      strncmp(target, "unix://", 7) && strncmp(target, "inproc://", 9)) {
    if (err && errlen) snprintf(err, errlen, "unsupported registry URL '%s'", target);
    return DSYS_ESCHEME;
  }
  s->url = strdup(target);
  size_t l = s->url ? strlen(s->url) : 0;
  while (l > 0 && s->url[l - 1] == '/' && strncmp(s->url, "unix://", 7)) s->url[--l] = '\0';
  if (!s->url) return DSYS_ENOMEM;
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  s->inited = 1;
  s->env.reap_ms = 300000;
  s->env.ttl_ms = 30000;
  return 0;
}

static void h_close(void *vst) {
  http_state *s = vst;
  if (!s->inited) return;
  pthread_mutex_lock(&s->mu);
  s->stop = 1;
  pthread_cond_broadcast(&s->cv);
  while (s->sending) pthread_cond_wait(&s->cv, &s->mu);
  pthread_mutex_unlock(&s->mu);
  dsys_client_free(s->wcli); /* completes a parked blocking query (canceled) */
  if (s->th_started) pthread_join(s->th, NULL);
  dsys_reply_free(s->got_reply);
  dsys_client_free(s->cli);
  dsysi_regtab_free(&s->t);
  free(s->url);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
}

static void mark_down(http_state *s, int err, int status) {
  if (s->live || !s->down_since_ms) {
    s->down_since_ms = now_ms(s);
    if (err)
      dsysi_log(DSYS_LOG_WARN, "registry", "registry daemon %s unreachable (%s); serving the last known view",
                s->url, dsys_strerror(err));
    else
      dsysi_log(DSYS_LOG_WARN, "registry", "registry daemon %s answered HTTP %d; serving the last known view",
                s->url, status);
  }
  s->live = 0;
  s->synced = 0;
}

/* Apply a list answer (mu not held). Returns nonzero when the view changed. */
static int apply_reply(http_state *s, dsys_reply *rep) {
  dsys_instance *d = NULL;
  size_t nd = 0;
  int rc = parse_list(rep, &d, &nd);
  pthread_mutex_lock(&s->mu);
  uint64_t before = s->t.index;
  if (rc) {
    mark_down(s, rc, 0);
  } else if (accept_answer(s, dsys_reply_header(rep, "X-Dsys-Epoch"), hdr_index(rep))) {
    if (!s->live && s->down_since_ms)
      dsysi_log(DSYS_LOG_INFO, "registry", "registry daemon %s reachable again", s->url);
    s->live = 1;
    s->down_since_ms = 0;
    s->synced = 1;
    apply_full(s, d, nd, now_ms(s));
  }
  int changed = s->t.index != before;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
  dsys_free(d);
  return changed;
}

static void on_reply(int err, dsys_reply *rep, void *ud) {
  http_state *s = ud;
  pthread_mutex_lock(&s->mu);
  s->got = 1;
  s->got_err = err;
  s->got_reply = rep;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

/* Wait for ms of real time or stop (hold mu). */
static void nap(http_state *s, int64_t ms) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  while (!s->stop && pthread_cond_timedwait(&s->cv, &s->mu, &ts) == 0) {
  }
}

static void *watch_thread(void *arg) {
  http_state *s = arg;
  int64_t backoff = 0;
  pthread_mutex_lock(&s->mu);
  while (!s->stop) {
    char path[128];
    if (s->synced)
      snprintf(path, sizeof path, "/api/registry/services?index=%" PRIu64 "&wait=%" PRId64 "ms",
               s->dindex, s->wait_ms);
    else
      snprintf(path, sizeof path, "/api/registry/services");
    s->sending = 1;
    s->got = 0;
    pthread_mutex_unlock(&s->mu);
    /* the daemon's wait runs on its clock: allow it plenty of real time */
    dsys_call call = {.size = sizeof call, .url = s->url, .path = path,
                      .timeout_ms = s->wait_ms + 15000};
    int rc = dsys_client_send(s->wcli, &call, on_reply, s);
    pthread_mutex_lock(&s->mu);
    s->sending = 0;
    pthread_cond_broadcast(&s->cv);
    if (rc) {
      s->got = 1;
      s->got_err = rc;
    }
    while (!s->got) pthread_cond_wait(&s->cv, &s->mu);
    dsys_reply *rep = s->got_reply;
    int err = s->got_err;
    s->got_reply = NULL;
    if (s->stop) {
      dsys_reply_free(rep);
      break;
    }
    int ok = !err && dsys_reply_status(rep) == 200;
    if (ok) {
      pthread_mutex_unlock(&s->mu);
      int changed = apply_reply(s, rep);
      dsys_reply_free(rep);
      if (changed && s->env.changed) s->env.changed(s->env.ctx);
      pthread_mutex_lock(&s->mu);
      if (s->live) {
        backoff = 0;
        continue;
      }
    } else {
      mark_down(s, err, rep ? dsys_reply_status(rep) : 0);
      dsys_reply_free(rep);
    }
    backoff = backoff ? backoff * 2 : BACKOFF_MIN_MS;
    if (backoff > BACKOFF_MAX_MS) backoff = BACKOFF_MAX_MS;
    nap(s, backoff);
  }
  pthread_mutex_unlock(&s->mu);
  return NULL;
}

static int h_attach(void *vst, const dsys_registry_env *env) {
  http_state *s = vst;
  s->env = *env;
  s->env.client = NULL; /* not kept: the clients hold copies */
  /* attach is the first op after open (index reads only the table), so
   * the clients are made here, once (close frees them, also after a
   * failed attach) */
  int crc = make_clients(s, env->client);
  if (crc) return crc;
  /* a blocking answer at least every ttl/3 refreshes heartbeats seen by the
   * daemon but not by this view (heartbeats are not changes) */
  s->wait_ms = env->ttl_ms / 3;
  if (s->wait_ms < 1000) s->wait_ms = 1000;
  if (s->wait_ms > 60000) s->wait_ms = 60000;
  /* first view, synchronously when the daemon answers */
  dsys_call call = {.size = sizeof call, .url = s->url, .path = "/api/registry/services"};
  dsys_reply *rep = NULL;
  int rc = dsys_client_do(s->cli, &call, &rep);
  if (!rc && dsys_reply_status(rep) == 200) {
    apply_reply(s, rep);
  } else {
    pthread_mutex_lock(&s->mu);
    mark_down(s, rc, rep ? dsys_reply_status(rep) : 0);
    pthread_mutex_unlock(&s->mu);
  }
  dsys_reply_free(rep);
  if (pthread_create(&s->th, NULL, watch_thread, s)) return DSYS_ENOMEM;
  s->th_started = 1;
  return 0;
}

/* After a write answered with index idx: adopt it so that older answers in
 * flight are dropped (hold mu). */
static void note_write(http_state *s, dsys_reply *rep) {
  accept_answer(s, dsys_reply_header(rep, "X-Dsys-Epoch"), hdr_index(rep));
}

static int h_put(void *vst, const dsys_instance *in, int64_t now) {
  http_state *s = vst;
  (void)now;
  json_object *b = json_object_new_object();
  json_object *md = NULL;
  if (!b) return DSYS_ENOMEM;
  json_object_object_add(b, "serviceId", json_object_new_string(in->id));
  json_object_object_add(b, "serviceType", json_object_new_string(in->type));
  json_object_object_add(b, "url", json_object_new_string(in->url));
  json_object_object_add(b, "name", json_object_new_string(in->name));
  if (dsysi_json_parse(in->metadata, strlen(in->metadata), &md) == 0 && md)
    json_object_object_add(b, "metadata", md);
  json_object *tags = json_object_new_array();
  for (size_t i = 0; tags && i < in->ntags; i++)
    json_object_array_add(tags, json_object_new_string(in->tags[i]));
  json_object_object_add(b, "tags", tags);
  json_object_object_add(b, "weight", json_object_new_int64(in->weight));
  dsys_reply *rep = NULL;
  json_object *ans = NULL, *svc = NULL;
  int rc = post(s, "/api/registry/register", b, &rep, &ans);
  json_object_put(b);
  if (rc) return rc;
  dsys_instance *got = NULL;
  if (!json_object_object_get_ex(ans, "service", &svc) || parse_instance(svc, &got))
    rc = DSYS_EPROTO;
  if (!rc) {
    pthread_mutex_lock(&s->mu);
    /* a register is one change, unless a daemon answer at least as new as
     * this write already brought it into the view */
    const char *ep = dsys_reply_header(rep, "X-Dsys-Epoch");
    int seen = ep && !strcmp(ep, s->epoch) && hdr_index(rep) <= s->dindex;
    int found;
    size_t pos = dsysi_regtab_lower(&s->t, got->id, &found);
    if (!(seen && found && same_content(s->t.v[pos], got))) rc = upsert(s, got);
    note_write(s, rep);
    pthread_mutex_unlock(&s->mu);
  }
  dsys_free(got);
  json_object_put(ans);
  dsys_reply_free(rep);
  return rc;
}

static int h_heartbeat(void *vst, const char *id, int64_t now) {
  http_state *s = vst;
  json_object *b = json_object_new_object();
  if (!b) return DSYS_ENOMEM;
  json_object_object_add(b, "serviceId", json_object_new_string(id));
  dsys_reply *rep = NULL;
  json_object *ans = NULL;
  int rc = post(s, "/api/registry/heartbeat", b, &rep, &ans);
  json_object_put(b);
  if (rc) return rc;
  int64_t hb = now;
  dsysi_json_int64(ans, "lastHeartbeat", &hb);
  pthread_mutex_lock(&s->mu);
  note_write(s, rep);
  int found;
  size_t pos = dsysi_regtab_lower(&s->t, id, &found);
  if (found) {
    dsys_instance *e = s->t.v[pos];
    if (e->health != DSYS_INSTANCE_HEALTHY && !dsysi_regtab_record(&s->t, DSYS_REG_HEALTHY, e->id, e->type))
      e->health = DSYS_INSTANCE_HEALTHY;
    if (hb > e->last_heartbeat_ms) e->last_heartbeat_ms = hb;
  }
  pthread_mutex_unlock(&s->mu);
  json_object_put(ans);
  dsys_reply_free(rep);
  return 0;
}

static int h_remove(void *vst, const char *id) {
  http_state *s = vst;
  json_object *b = json_object_new_object();
  if (!b) return DSYS_ENOMEM;
  json_object_object_add(b, "serviceId", json_object_new_string(id));
  dsys_reply *rep = NULL;
  json_object *ans = NULL, *removed = NULL;
  int rc = post(s, "/api/registry/deregister", b, &rep, &ans);
  json_object_put(b);
  if (rc) return rc;
  int was = json_object_object_get_ex(ans, "removed", &removed) && json_object_get_boolean(removed);
  pthread_mutex_lock(&s->mu);
  note_write(s, rep);
  int found;
  size_t pos = dsysi_regtab_lower(&s->t, id, &found);
  if (found) dsysi_regtab_remove_at(&s->t, pos, DSYS_REG_DEREGISTERED);
  pthread_mutex_unlock(&s->mu);
  json_object_put(ans);
  dsys_reply_free(rep);
  return was ? 0 : DSYS_ENOTFOUND;
}

/* Health as served: the stored flag, and the TTL at the time the daemon was
 * last seen (now while it answers). */
static void served_health(http_state *s, dsys_instance *v, size_t n) {
  int64_t at = s->live || !s->down_since_ms ? now_ms(s) : s->down_since_ms;
  for (size_t i = 0; i < n; i++)
    if (at - v[i].last_heartbeat_ms > s->env.ttl_ms) v[i].health = DSYS_INSTANCE_UNHEALTHY;
}

static int h_get(void *vst, const char *id, dsys_instance **out) {
  http_state *s = vst;
  pthread_mutex_lock(&s->mu);
  int found;
  size_t pos = dsysi_regtab_lower(&s->t, id, &found);
  int rc = found ? dsys_instances_copy(s->t.v[pos], 1, out) : DSYS_ENOTFOUND;
  if (!rc) served_health(s, *out, 1);
  pthread_mutex_unlock(&s->mu);
  return rc;
}

static int h_list(void *vst, const char *type, dsys_instance **out, size_t *n) {
  http_state *s = vst;
  pthread_mutex_lock(&s->mu);
  int rc = dsysi_regtab_list(&s->t, type, out, n);
  if (!rc) served_health(s, *out, *n);
  pthread_mutex_unlock(&s->mu);
  return rc;
}

/* The registry's sweep: while the daemon answers, record TTL and reap
 * transitions in the view at once (the daemon records the same ones; its
 * answers then match the view). While it is down, the view stays frozen. */
static int h_expire(void *vst, int64_t unhealthy_before, int64_t reap_before) {
  http_state *s = vst;
  pthread_mutex_lock(&s->mu);
  int rc = s->live ? dsysi_regtab_expire(&s->t, unhealthy_before, reap_before) : 0;
  pthread_mutex_unlock(&s->mu);
  return rc;
}

static int h_index(void *vst, uint64_t *out) {
  http_state *s = vst;
  pthread_mutex_lock(&s->mu);
  *out = s->t.index;
  pthread_mutex_unlock(&s->mu);
  return 0;
}

static int h_changes(void *vst, uint64_t after, dsys_registry_change_fn fn, void *ctx) {
  http_state *s = vst;
  pthread_mutex_lock(&s->mu);
  /* the generic layer only copies in fn: safe under mu */
  int rc = dsysi_regtab_changes(&s->t, after, fn, ctx);
  pthread_mutex_unlock(&s->mu);
  return rc;
}

static const dsys_registry_ops http_ops = {
    .version = DSYS_REGISTRY_OPS_VERSION,
    .name = "http",
    .state_size = sizeof(http_state),
    .open = h_open,
    .close = h_close,
    .put = h_put,
    .heartbeat = h_heartbeat,
    .remove = h_remove,
    .get = h_get,
    .list = h_list,
    .expire = h_expire,
    .index = h_index,
    .changes = h_changes,
    .flags = DSYS_REGISTRY_OPS_OWN_HEALTH,
    .attach = h_attach,
};
DSYSI_PLUGINS(registry_http) = {{"registry", &http_ops}, {0}};
