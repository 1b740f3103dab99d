/* Service registry: generic layer (TTL, sweeps, watches, index waits),
 * instance copying, backend selection. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <distsys/registry.h>
#include "core/internal.h"
#include "core/json.h"
#include "core/plugin.h"
#include "core/ticker.h"
#include "resilience/registry_int.h"
#include "transport/transport.h"

/* When this handle saw an instance's heartbeat value (last written by its
 * host's wall clock) change, on this process's monotonic clock. */
typedef struct seen_hb {
  char *id;
  int64_t hb, at_ms;
  uint64_t gen;              /* sweep that last listed it */
} seen_hb;

typedef struct watch {
  uint64_t id, from;
  dsys_registry_watch_fn fn;
  void *ud;
} watch;

struct dsys_registry {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  const dsys_registry_ops *ops;
  void *st;
  int opened;
  dsys_clock *clk;
  int64_t ttl_ms, reap_ms, sweep_ms;
  uint64_t delivered;
  watch *w;
  size_t nw, capw;
  uint64_t next_watch;
  int delivering, pending;
  uint64_t rounds_started, rounds_done; /* of the delivering loop */
  pthread_t deliver_thread;
  /* The periodic sweep, on a thread of its own on the real clock: it
   * needs mu, which a remote backend holds across its network calls, and
   * those calls may end by a timer (inproc:// timeouts) on the clock's one
   * timer thread, which must never wait for mu (found by the simulation).
   * On a fake clock it runs inside dsys_clock_advance (tests expect the
   * sweep done when it returns). */
  dsysi_ticker sweeper;
  int own_health;            /* backend applies health itself (ops flag) */
  /* While the registry does not answer this process's sweeps, and for one
   * TTL after it answers again, missing heartbeats make no instance
   * unhealthy and none is reaped: they could not arrive meanwhile. (After
   * an etcd quorum loss the first sweep marked every instance unhealthy,
   * and the gateways answered 503 until the next heartbeats.) */
  int unreachable;
  int64_t grace_until_ms;
  /* version-3 backends (expire_ids): health from seen heartbeat changes */
  int by_seen;
  seen_hb *seen;             /* sorted by id */
  size_t nseen, capseen;
  uint64_t gen;
  char errmsg[256];
};

/* ---- instance copies ---- */

static size_t slen(const char *s) { return s ? strlen(s) + 1 : 1; }

int dsys_instances_copy(const dsys_instance *src, size_t n, dsys_instance **out) {
  if (!out || (n && !src)) return DSYS_EINVAL;
  *out = NULL;
  if (n == 0) return 0;
  size_t ptrs = 0, chars = 0;
  for (size_t i = 0; i < n; i++) {
    const dsys_instance *s = &src[i];
    if (s->ntags && !s->tags) return DSYS_EINVAL;
    ptrs += s->ntags;
    chars += slen(s->id) + slen(s->type) + slen(s->url) + slen(s->name) +
             slen(s->metadata);
    for (size_t t = 0; t < s->ntags; t++) chars += slen(s->tags[t]);
  }
  size_t total = n * sizeof(dsys_instance) + ptrs * sizeof(char *) + chars;
  char *blk = malloc(total);
  if (!blk) return DSYS_ENOMEM;
  dsys_instance *d = (dsys_instance *)blk;
  const char **pp = (const char **)(blk + n * sizeof(dsys_instance));
  char *cp = (char *)(pp + ptrs);
#define PUT(dst, s)                                   \
  do {                                                \
    size_t l_ = slen(s);                              \
    if (s) memcpy(cp, (s), l_); else cp[0] = '\0';    \
    (dst) = cp;                                       \
    cp += l_;                                         \
  } while (0)
  for (size_t i = 0; i < n; i++) {
    const dsys_instance *s = &src[i];
    d[i] = *s;
    PUT(d[i].id, s->id);
    PUT(d[i].type, s->type);
    PUT(d[i].url, s->url);
    PUT(d[i].name, s->name);
    PUT(d[i].metadata, s->metadata);
    d[i].tags = s->ntags ? pp : NULL;
    for (size_t t = 0; t < s->ntags; t++) PUT(pp[t], s->tags[t]);
    pp += s->ntags;
  }
#undef PUT
  *out = d;
  return 0;
}

/* ---- open / close ---- */

static void sweep_tick(void *ud);
static void changed_cb(void *ctx);

/* The ops checks of dsys_registry_open_ops: 0, DSYS_ENOTSUP or DSYS_EINVAL. */
static int check_ops(const dsys_registry_ops *ops) {
  if (ops->version < 1 || ops->version > DSYS_REGISTRY_OPS_VERSION) return DSYS_ENOTSUP;
  if (!ops->name || !ops->open || !ops->close || !ops->put || !ops->heartbeat ||
      !ops->remove || !ops->get || !ops->list || !ops->expire || !ops->index ||
      !ops->changes)
    return DSYS_EINVAL;
  return 0;
}

static int usable(const void *ops) { return !check_ops(ops); }
static dsysi_family backends = DSYSI_FAMILY("registry", usable, NULL);

int dsys_registry_register_backend(const dsys_registry_ops *ops) {
  return dsysi_family_register(&backends, ops);
}

int dsys_registry_open(dsys_registry **out, const char *backend,
                       const char *target, const dsys_registry_options *opts,
                       char *errbuf, size_t errlen) {
  if (!out || !backend) return DSYS_EINVAL;
  const dsys_registry_ops *ops = NULL;
  const char *scheme, *loc;
  size_t sl;
  if (strstr(backend, "://") && !dsysi_plugin_url(backend, &scheme, &sl, &loc)) {
    /* the URL of a registry daemon on any transport selects the http
     * backend, whose target it is; else "NAME://target" names a backend
     * and its target ("sqlite:///path") */
    if (dsysi_dialer_find(backend)) {
      ops = dsysi_family_find(&backends, "http", 4);
      target = backend;
    } else if ((ops = dsysi_family_find(&backends, scheme, sl))) {
      target = loc;
    }
  } else {
    ops = dsysi_family_find(&backends, backend, strlen(backend));
  }
  if (!ops) {
    if (errbuf && errlen) snprintf(errbuf, errlen, "unknown registry backend '%s'", backend);
    return DSYS_ENOTSUP;
  }
  return dsys_registry_open_ops(out, ops, target, opts, errbuf, errlen);
}

int dsys_registry_open_ops(dsys_registry **out, const dsys_registry_ops *ops,
                           const char *target, const dsys_registry_options *o,
                           char *errbuf, size_t errlen) {
  if (errbuf && errlen) errbuf[0] = '\0';
  if (!out || !ops) return DSYS_EINVAL;
  int ce = check_ops(ops);
  if (ce) return ce;
  dsys_registry_options d = {0};
  if (o) memcpy(&d, o, o->size && o->size < sizeof d ? o->size : sizeof d);
  if (d.ttl_ms < 0 || d.reap_ms < 0 || d.sweep_interval_ms < -1) return DSYS_EINVAL;
  dsys_registry *r = calloc(1, sizeof *r);
  if (!r) return DSYS_ENOMEM;
  r->ops = ops;
  r->own_health = ops->version >= 2 && (ops->flags & DSYS_REGISTRY_OPS_OWN_HEALTH);
  r->by_seen = ops->version >= 3 && ops->expire_ids;
  r->clk = d.clock ? d.clock : dsys_clock_real();
  r->ttl_ms = d.ttl_ms ? d.ttl_ms : 30000;
  r->reap_ms = d.reap_ms ? d.reap_ms : 300000;
  if (r->reap_ms <= r->ttl_ms) {
    free(r);
    return DSYS_EINVAL;
  }
  r->sweep_ms = d.sweep_interval_ms == -1 ? -1
                : d.sweep_interval_ms ? d.sweep_interval_ms : 1000;
  r->st = calloc(1, ops->state_size ? ops->state_size : 1);
  if (!r->st) {
    free(r);
    return DSYS_ENOMEM;
  }
  int rc = ops->open(r->st, target, errbuf, errlen);
  if (!rc) {
    r->opened = 1;
    rc = ops->index(r->st, &r->delivered);
  }
  if (rc) {
    if (r->opened) ops->close(r->st);
    free(r->st);
    free(r);
    return rc;
  }
  r->next_watch = 1;
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->cv, NULL);
  if (ops->version >= 2 && ops->attach) {
    dsys_registry_env env = {.clock = r->clk, .ttl_ms = r->ttl_ms,
                             .reap_ms = r->reap_ms, .changed = changed_cb,
                             .ctx = r, .identity = d.identity,
                             .client = d.client};
    rc = ops->attach(r->st, &env);
    /* under the lock: the backend's thread may be delivering already */
    pthread_mutex_lock(&r->mu);
    if (!rc) rc = ops->index(r->st, &r->delivered);
    pthread_mutex_unlock(&r->mu);
    if (rc) goto fail;
  }
  if (r->sweep_ms >= 0 &&
      (rc = dsysi_ticker_start_thread(&r->sweeper, r->clk, r->sweep_ms, sweep_tick, r)))
    goto fail;
  *out = r;
  return 0;
fail:
  ops->close(r->st);
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
  free(r->st);
  free(r);
  return rc;
}

void dsys_registry_close(dsys_registry *r) {
  if (!r) return;
  /* waits for a running sweep, bounded by the backend's timeouts */
  dsysi_ticker_stop(&r->sweeper);
  /* a backend's thread may be delivering (ops->close stops it) */
  pthread_mutex_lock(&r->mu);
  while (r->delivering) pthread_cond_wait(&r->cv, &r->mu);
  pthread_mutex_unlock(&r->mu);
  r->ops->close(r->st);
  free(r->st);
  free(r->w);
  for (size_t i = 0; i < r->nseen; i++) free(r->seen[i].id);
  free(r->seen);
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
  free(r);
}

const char *dsys_registry_errmsg(dsys_registry *r) {
  return r ? r->errmsg : "";
}

/* ---- change delivery ---- */

typedef struct chg {
  uint64_t index;
  int kind;
  char *id, *type;
} chg;

typedef struct chglist {
  chg *v;
  size_t n, cap;
  int oom;
} chglist;

static void collect_cb(void *ctx, const dsys_registry_change *c) {
  chglist *l = ctx;
  if (l->oom) return;
  if (dsysi_grow(&l->v, &l->cap, l->n + 1, sizeof *l->v, 16)) {
    l->oom = 1;
    return;
  }
  chg *d = &l->v[l->n];
  d->index = c->index;
  d->kind = c->kind;
  d->id = strdup(c->id ? c->id : "");
  d->type = strdup(c->type ? c->type : "");
  if (!d->id || !d->type) {
    free(d->id);
    free(d->type);
    l->oom = 1;
    return;
  }
  l->n++;
}

static void chglist_free(chglist *l) {
  for (size_t i = 0; i < l->n; i++) {
    free(l->v[i].id);
    free(l->v[i].type);
  }
  free(l->v);
  memset(l, 0, sizeof *l);
}

/* Deliver every change not yet delivered; see the header for the rules. */
static void deliver(dsys_registry *r) {
  pthread_mutex_lock(&r->mu);
  if (r->delivering) {
    r->pending = 1;
    /* Another thread (a backend's push thread, a sweep) is delivering: its
     * next round delivers our changes too. Wait for that round, so that a
     * call's own changes have reached the watchers when it returns, as when
     * it delivers them itself. A callback's call (the delivering thread)
     * cannot wait for itself: its round follows when the callback returns. */
    uint64_t want = r->rounds_started + 1;
    while (r->delivering && r->rounds_done < want &&
           !pthread_equal(r->deliver_thread, pthread_self()))
      pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    return;
  }
  r->delivering = 1;
  r->deliver_thread = pthread_self();
  for (;;) {
    r->pending = 0;
    r->rounds_started++;
    chglist l = {0};
    /* the index first: every change up to it is then in the log the
     * changes call reads. Read after, it could include a change another
     * handle committed in between, which would be marked delivered
     * without being delivered. */
    uint64_t idx = r->delivered;
    r->ops->index(r->st, &idx);
    int rc = r->ops->changes(r->st, r->delivered, collect_cb, &l);
    if (rc == DSYS_ERANGE || l.oom) {
      chglist_free(&l);
      dsys_registry_change c = {.index = idx, .kind = DSYS_REG_RESYNC, .id = "", .type = ""};
      collect_cb(&l, &c);
    }
    if (l.n) r->delivered = l.v[l.n - 1].index;
    if (idx > r->delivered && !rc) r->delivered = idx;
    size_t nw = r->nw;
    watch *ws = nw ? malloc(nw * sizeof *ws) : NULL;
    if (ws) memcpy(ws, r->w, nw * sizeof *ws);
    else nw = 0;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    for (size_t i = 0; i < l.n; i++) {
      dsys_registry_change c = {.index = l.v[i].index, .kind = l.v[i].kind,
                                .id = l.v[i].id, .type = l.v[i].type};
      for (size_t k = 0; k < nw; k++)
        if (c.index > ws[k].from) ws[k].fn(ws[k].ud, &c);
    }
    free(ws);
    chglist_free(&l);
    pthread_mutex_lock(&r->mu);
    r->rounds_done++;
    pthread_cond_broadcast(&r->cv);
    if (!r->pending) break;
  }
  r->delivering = 0;
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

static void changed_cb(void *ctx) { deliver(ctx); }

int dsys_registry_watch(dsys_registry *r, dsys_registry_watch_fn fn, void *ud,
                        uint64_t *id) {
  if (!r || !fn) return DSYS_EINVAL;
  pthread_mutex_lock(&r->mu);
  if (dsysi_grow(&r->w, &r->capw, r->nw + 1, sizeof *r->w, 4)) {
    pthread_mutex_unlock(&r->mu);
    return DSYS_ENOMEM;
  }
  uint64_t cur = r->delivered;
  r->ops->index(r->st, &cur);
  watch *w = &r->w[r->nw++];
  w->id = r->next_watch++;
  w->from = cur > r->delivered ? cur : r->delivered;
  w->fn = fn;
  w->ud = ud;
  if (id) *id = w->id;
  pthread_mutex_unlock(&r->mu);
  return 0;
}

int dsys_registry_unwatch(dsys_registry *r, uint64_t id) {
  if (!r) return DSYS_EINVAL;
  int rc = DSYS_ENOTFOUND;
  pthread_mutex_lock(&r->mu);
  for (size_t i = 0; i < r->nw; i++)
    if (r->w[i].id == id) {
      memmove(&r->w[i], &r->w[i + 1], (r->nw - i - 1) * sizeof *r->w);
      r->nw--;
      rc = 0;
      break;
    }
  /* a delivery on another thread may still hold a copy: wait for it */
  while (rc == 0 && r->delivering && !pthread_equal(r->deliver_thread, pthread_self()))
    pthread_cond_wait(&r->cv, &r->mu);
  pthread_mutex_unlock(&r->mu);
  return rc;
}

/* ---- heartbeats seen (version-3 backends) ---- */

/* Hold mu. The entry of id, NULL if none (*pos: where it would go). */
static seen_hb *seen_find(dsys_registry *r, const char *id, size_t *pos) {
  size_t lo = 0, hi = r->nseen;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    int c = strcmp(r->seen[mid].id, id);
    if (!c) {
      *pos = mid;
      return &r->seen[mid];
    }
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  *pos = lo;
  return NULL;
}

/* Hold mu. Record that id's heartbeat reads hb at now (monotonic ms); the
 * clock of its age restarts when the value differs from the one seen.
 * @return its age: ms since the value was first seen (0 on out of
 * memory: judged fresh rather than wrongly dead). */
static int64_t seen_age(dsys_registry *r, const char *id, int64_t hb, int64_t now) {
  size_t pos;
  seen_hb *e = seen_find(r, id, &pos);
  if (!e) {
    char *cp = strdup(id);
    if (!cp || dsysi_grow(&r->seen, &r->capseen, r->nseen + 1, sizeof *r->seen, 16)) {
      free(cp);
      return 0;
    }
    memmove(&r->seen[pos + 1], &r->seen[pos], (r->nseen - pos) * sizeof *r->seen);
    r->nseen++;
    e = &r->seen[pos];
    *e = (seen_hb){.id = cp, .hb = hb, .at_ms = now};
  } else if (e->hb != hb) {
    e->hb = hb;
    e->at_ms = now;
  }
  e->gen = r->gen;
  return now - e->at_ms;
}

/* Hold mu. Forget the instances the last full listing (gen) lacked, or
 * every one (all): they count as first seen when they show up again. */
static void seen_prune(dsys_registry *r, int all) {
  size_t k = 0;
  for (size_t i = 0; i < r->nseen; i++) {
    if (all || r->seen[i].gen != r->gen) free(r->seen[i].id);
    else r->seen[k++] = r->seen[i];
  }
  r->nseen = k;
}

/* ---- operations ---- */

static int set_err(dsys_registry *r, int rc, const char *what) {
  if (rc) snprintf(r->errmsg, sizeof r->errmsg, "%s: %s", what, dsys_strerror(rc));
  return rc;
}

int dsys_registry_register(dsys_registry *r, const dsys_instance *in) {
  if (!r || !in || !in->id || !*in->id || !in->type || !*in->type || !in->url ||
      !*in->url || in->weight > 10000 || (in->ntags && !in->tags))
    return DSYS_EINVAL;
  for (size_t t = 0; t < in->ntags; t++)
    if (!in->tags[t]) return DSYS_EINVAL;
  /* NULL or "" (what dsys_instances_copy makes of NULL, e.g. in the
   * registration agent's copy) means the default "{}", like name. */
  if (in->metadata && *in->metadata) {
    json_object *j = NULL;
    int jrc = dsysi_json_parse_object(in->metadata, strlen(in->metadata), &j);
    if (j) json_object_put(j);
    if (jrc) {
      snprintf(r->errmsg, sizeof r->errmsg, "metadata is not a JSON object");
      return DSYS_EINVAL;
    }
  }
  dsys_instance n = *in;
  if (!n.name || !*n.name) n.name = n.id;
  if (!n.metadata || !*n.metadata) n.metadata = "{}";
  if (!n.weight) n.weight = 1;
  n.health = DSYS_INSTANCE_HEALTHY;
  pthread_mutex_lock(&r->mu);
  int64_t wall = dsys_clock_wall_ms(r->clk);
  int rc = r->ops->put(r->st, &n, wall);
  /* our own write: seen now (the backends store the time given) */
  if (!rc && r->by_seen) seen_age(r, n.id, wall, dsys_clock_now_ms(r->clk));
  set_err(r, rc, "register");
  pthread_mutex_unlock(&r->mu);
  if (!rc) deliver(r);
  return rc;
}

int dsys_registry_heartbeat(dsys_registry *r, const char *id) {
  if (!r || !id) return DSYS_EINVAL;
  pthread_mutex_lock(&r->mu);
  uint64_t before = 0, after = 0;
  r->ops->index(r->st, &before);
  int64_t wall = dsys_clock_wall_ms(r->clk);
  int rc = r->ops->heartbeat(r->st, id, wall);
  if (!rc && r->by_seen) seen_age(r, id, wall, dsys_clock_now_ms(r->clk));
  if (!rc) r->ops->index(r->st, &after);
  set_err(r, rc, "heartbeat");
  pthread_mutex_unlock(&r->mu);
  if (!rc && after != before) deliver(r);
  return rc;
}

int dsys_registry_deregister(dsys_registry *r, const char *id) {
  if (!r || !id) return DSYS_EINVAL;
  pthread_mutex_lock(&r->mu);
  int rc = r->ops->remove(r->st, id);
  set_err(r, rc, "deregister");
  pthread_mutex_unlock(&r->mu);
  if (!rc) deliver(r);
  return rc;
}

/* Apply the TTL to stored health flags. */
static int in_grace(dsys_registry *r, int64_t now) {
  pthread_mutex_lock(&r->mu);
  int g = r->unreachable || now < r->grace_until_ms;
  pthread_mutex_unlock(&r->mu);
  return g;
}

static void apply_ttl(dsys_registry *r, dsys_instance *v, size_t n) {
  if (r->own_health) return; /* the stored flags stand */
  if (r->by_seen) {
    int64_t now = dsys_clock_now_ms(r->clk);
    pthread_mutex_lock(&r->mu);
    int grace = r->unreachable || now < r->grace_until_ms;
    for (size_t i = 0; i < n; i++)
      if (seen_age(r, v[i].id, v[i].last_heartbeat_ms, now) > r->ttl_ms && !grace)
        v[i].health = DSYS_INSTANCE_UNHEALTHY;
    pthread_mutex_unlock(&r->mu);
    return;
  }
  int64_t now = dsys_clock_wall_ms(r->clk);
  if (in_grace(r, now)) return;
  for (size_t i = 0; i < n; i++)
    if (now - v[i].last_heartbeat_ms > r->ttl_ms) v[i].health = DSYS_INSTANCE_UNHEALTHY;
}

int dsys_registry_lookup(dsys_registry *r, const char *type, int healthy_only,
                         dsys_instance **out, size_t *n) {
  if (!r || !out || !n) return DSYS_EINVAL;
  dsys_instance *v = NULL;
  size_t cnt = 0;
  pthread_mutex_lock(&r->mu);
  int rc = r->ops->list(r->st, type, &v, &cnt);
  set_err(r, rc, "lookup");
  pthread_mutex_unlock(&r->mu);
  if (rc) return rc;
  apply_ttl(r, v, cnt);
  if (healthy_only) {
    size_t k = 0;
    for (size_t i = 0; i < cnt; i++)
      if (v[i].health == DSYS_INSTANCE_HEALTHY) v[k++] = v[i];
    cnt = k;
  }
  if (!cnt) {
    free(v);
    v = NULL;
  }
  *out = v;
  *n = cnt;
  return 0;
}

int dsys_registry_get(dsys_registry *r, const char *id, dsys_instance **out) {
  if (!r || !id || !out) return DSYS_EINVAL;
  pthread_mutex_lock(&r->mu);
  int rc = r->ops->get(r->st, id, out);
  pthread_mutex_unlock(&r->mu);
  if (!rc) apply_ttl(r, *out, 1);
  return rc;
}

int dsys_registry_index(dsys_registry *r, uint64_t *out) {
  if (!r || !out) return DSYS_EINVAL;
  pthread_mutex_lock(&r->mu);
  int rc = r->ops->index(r->st, out);
  pthread_mutex_unlock(&r->mu);
  return rc;
}

/* Hold mu. The sweep of a version-3 backend: list every instance, age
 * each by when this handle saw its heartbeat change (monotonic clock), and
 * expire those silent past the TTL / reap time, each only if its
 * heartbeat is still the one read. The index read first is the
 * reachability probe (a backend may answer list from a last view). */
static int sweep_seen(dsys_registry *r) {
  int64_t now = dsys_clock_now_ms(r->clk);
  uint64_t idx;
  int rc = r->ops->index(r->st, &idx);
  dsys_instance *v = NULL;
  size_t n = 0;
  if (!rc) rc = r->ops->list(r->st, NULL, &v, &n);
  if (rc) {
    if (rc == DSYS_EUNAVAIL || rc == DSYS_ETIMEDOUT) r->unreachable = 1;
    return rc;
  }
  if (r->unreachable) {
    /* back: heartbeats could not arrive meanwhile; judge afresh */
    r->unreachable = 0;
    seen_prune(r, 1);
    r->grace_until_ms = now + r->ttl_ms;
  }
  /* A slow registry (these reads took over a sixth of the TTL, half a
   * heartbeat interval): the heartbeats written through it may have been
   * as slow, so silence says nothing of the instances; judge none until
   * it has answered fast for a TTL (seen with etcd on an overloaded host:
   * instances of every type marked unhealthy, 503s, in bursts) */
  int64_t after = dsys_clock_now_ms(r->clk);
  if (after - now > r->ttl_ms / 6) r->grace_until_ms = after + r->ttl_ms;
  r->gen++;
  dsys_registry_expiry *x = n ? malloc(n * sizeof *x) : NULL;
  size_t nx = 0;
  if (n && !x) rc = DSYS_ENOMEM;
  int grace = now < r->grace_until_ms;
  for (size_t i = 0; i < n && !rc; i++) {
    int64_t age = seen_age(r, v[i].id, v[i].last_heartbeat_ms, now);
    if (grace) continue;
    if (age > r->reap_ms)
      x[nx++] = (dsys_registry_expiry){v[i].id, v[i].last_heartbeat_ms, 1};
    else if (age > r->ttl_ms && v[i].health == DSYS_INSTANCE_HEALTHY)
      x[nx++] = (dsys_registry_expiry){v[i].id, v[i].last_heartbeat_ms, 0};
  }
  if (!rc) seen_prune(r, 0);
  if (!rc && nx) rc = r->ops->expire_ids(r->st, x, nx);
  if (rc == DSYS_EUNAVAIL || rc == DSYS_ETIMEDOUT) r->unreachable = 1;
  free(x);
  dsys_free(v);
  return rc;
}

int dsys_registry_sweep(dsys_registry *r) {
  if (!r) return DSYS_EINVAL;
  if (r->by_seen) {
    pthread_mutex_lock(&r->mu);
    int rc = sweep_seen(r);
    set_err(r, rc, "sweep");
    pthread_mutex_unlock(&r->mu);
    deliver(r);
    return rc;
  }
  int64_t now = dsys_clock_wall_ms(r->clk);
  pthread_mutex_lock(&r->mu);
  int grace = r->unreachable || now < r->grace_until_ms;
  int rc = r->ops->expire(r->st, grace ? INT64_MIN : now - r->ttl_ms,
                          grace ? INT64_MIN : now - r->reap_ms);
  if (!rc && r->unreachable) r->grace_until_ms = now + r->ttl_ms; /* back */
  if (rc == DSYS_EUNAVAIL || rc == DSYS_ETIMEDOUT) r->unreachable = 1;
  else if (!rc) r->unreachable = 0;
  set_err(r, rc, "sweep");
  pthread_mutex_unlock(&r->mu);
  deliver(r);
  return rc;
}

static void sweep_tick(void *ud) { dsys_registry_sweep(ud); }

int dsys_registry_wait(dsys_registry *r, uint64_t after, int64_t timeout_ms,
                       uint64_t *index_out) {
  if (!r || timeout_ms < 0) return DSYS_EINVAL;
  int64_t deadline = dsys_clock_now_ms(r->clk) + timeout_ms;
  int rc = 0;
  pthread_mutex_lock(&r->mu);
  for (;;) {
    uint64_t idx = 0;
    rc = r->ops->index(r->st, &idx);
    if (rc) break;
    if (index_out) *index_out = idx;
    if (idx > after) break;
    if (dsys_clock_now_ms(r->clk) >= deadline) {
      rc = DSYS_ETIMEDOUT;
      break;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 50 * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&r->cv, &r->mu, &ts);
  }
  pthread_mutex_unlock(&r->mu);
  return rc;
}
