/*
 * dsys_upstream: discover -> pick -> breaker -> transport -> retry.
 *
 * Locks (always taken in this order, never held across a user callback):
 *  - u->lk, a reader-preferring rwlock: the endpoint set and the closing
 *    flag. Readers: picks, sends (so that free cannot pull the client away
 *    under a send), event lookups. Writers: add, remove, the start of free.
 *  - u->mu: availability updates (health and breaker events), breaker
 *    reopen timers, the list of calls waiting for a backoff, and the
 *    condition free waits on. Rare events only; no call takes it on the
 *    hot path except when the last call in flight finishes.
 *  - the balancer's, breaker's and health checker's own mutexes, taken
 *    inside either of the above (they never call out while holding them;
 *    a breaker about to open releases its own before br_shared takes the
 *    health checker's).
 * An endpoint (uep) is reference-counted: the set holds one reference, each
 * outstanding pick one, each pending reopen timer one.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <distsys/upstream.h>
#include "core/internal.h"
#include "core/ticker.h"
#include "resilience/retry.h"
#include "resilience/shared_cause.h"
#include "resilience/upstream_int.h"
#include "transport/evloop.h"
#include "transport/transport.h"
#include "transport/url.h"

#define LAT_N DSYS_UPSTREAM_LAT_BUCKETS
#define MAX_TRIED 16
#define PICK_LIMIT 64

typedef _Atomic uint64_t au64;

typedef struct uep {
  atomic_int refs;
  dsys_upstream *u;
  char *id, *url;
  _Atomic uint32_t weight;
  int from_registry;
  dsys_instance *inst; /* registry members: the record applied (a copy, one
                          block), under lk; read by dsys_upstream_instances */
  dsys_breaker *br;
  /* availability inputs and timer, under u->mu */
  int h_usable, removed;
  uint64_t br_timer;
  atomic_int br_open;      /* breaker OPEN or FORCED_OPEN (read lock-free) */
  atomic_int gone;         /* removed from the set */
  atomic_int h_dirty;      /* a failure went to outlier detection since its
                              last success (see dsys_upstream_report) */
  au64 requests, successes, failures, inflight, rejections, lat_count;
  _Atomic int64_t lat_sum;
  au64 by_outcome[8];
  au64 lat[LAT_N];
} uep;

typedef struct ucall ucall;

/* Service-level counters in per-thread shards: every request writes
 * several, and two event loops writing the same cache lines made each
 * write a transfer between cores. Read by summing. */
#define NSHARD 8
typedef struct ushard {
  _Alignas(64) au64 calls, replies, errors, attempts, retries, picks, panic,
      unavail, brk;
  au64 started, ended; /* calls in flight: started - ended (free waits) */
  au64 call_lat[LAT_N];
  /* following the service's latency (lat_eval) */
  au64 att_timeouts, slow_answers, hedges, hedges_won;
  au64 alat[LAT_N];    /* answered attempts, cumulative (the window's source) */
} ushard;

/* Sum of one counter over the shards. */
#define SUM(u, field)                                              \
  ({                                                               \
    uint64_t s_ = 0;                                               \
    for (int i_ = 0; i_ < NSHARD; i_++) s_ += LOAD((u)->sh[i_].field); \
    s_;                                                            \
  })

struct dsys_upstream {
  pthread_rwlock_t lk;
  uep **eps;
  size_t n, cap;
  atomic_int closing;

  pthread_mutex_t mu;
  pthread_cond_t cv;
  int timers_out, no_timers;
  ucall *backoffs;
  atomic_int probes;

  dsys_clock *clk;
  char *service, *health_path;
  int64_t h_timeout_ms;
  dsys_registry *reg;
  uint64_t watch_id;
  int watching;
  atomic_int resync_due; /* a registry read failed: re-read the service */
  /* membership changes from the registry, one at a time: the delivered
   * changes and the periodic re-read (a re-read applied after a newer
   * change would undo it) */
  pthread_mutex_t reg_mu;
  dsysi_ticker reread;
  dsys_balancer *bal;
  dsys_health *health;
  dsys_retry *retry;
  dsys_client *client;
  int own_client;
  dsys_breaker_options br_tmpl;
  int count_all_5xx; /* options.count_5xx */
  int64_t open_wait_us;
  dsys_breaker_event_fn user_br_ev;
  void *user_br_ud;
  dsys_health_event_fn user_h_ev;
  void *user_h_ud;

  ushard *sh; /* NSHARD */

  /* Following the service's latency: the window of answers is the
   * difference between the shards' cumulative histogram now and a
   * snapshot taken about a window ago (a ring of NSNAP, one per
   * win_us / NSNAP); whichever thread first finds next_eval passed derives
   * the timeout and hedge delay from it (lat_mu, tried, never waited for),
   * so calls only read two atomics. */
  int adaptive, hedge, lat_on;
  unsigned to_pct, hedge_pct;
  double to_factor;
  int64_t to_min_us, to_max_us, hedge_fixed_us, win_us;
  uint64_t min_samples;
  uint32_t max_attempts;
  _Atomic int64_t to_us;     /* adaptive per-try timeout; 0: none */
  _Atomic int64_t hedge_us;  /* hedge delay; -1: none */
  _Atomic int64_t next_eval; /* clock us */
  _Atomic int64_t win_p_us;
  au64 win_n, slow_ejections;
  pthread_mutex_t lat_mu;
  uint64_t (*snap)[LAT_N];
  size_t snap_n, snap_next;
  int64_t next_snap, last_snap;
};

#define NSNAP 10
#define EVAL_US 100000

static inline ushard *shard(dsys_upstream *u) { return &u->sh[dsysi_thread_slot() % NSHARD]; }

#define INC(x) atomic_fetch_add_explicit(&(x), 1, memory_order_relaxed)
#define DEC(x) atomic_fetch_sub_explicit(&(x), 1, memory_order_relaxed)
#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

/* ---- latency histogram: four buckets per power of two ---- */

static inline unsigned lat_bucket(int64_t us) {
  if (us < 4) return us < 0 ? 0 : (unsigned)us;
  uint64_t v = (uint64_t)us;
  unsigned e = 63u - (unsigned)__builtin_clzll(v);
  unsigned idx = (e - 1) * 4 + (unsigned)((v >> (e - 2)) & 3);
  return idx < LAT_N ? idx : LAT_N - 1;
}

int64_t dsys_upstream_bucket_lower_us(uint32_t i) {
  if (i >= LAT_N) return INT64_MAX;
  if (i < 4) return i;
  unsigned e = i / 4 + 1, sub = i % 4;
  return (int64_t)(4 + sub) << (e - 2);
}

/* Percentile p (0..100] from a snapshot of bucket counts, interpolated
 * linearly inside the bucket. */
static int64_t percentile(const uint64_t *b, uint64_t total, unsigned p) {
  if (!total) return 0;
  uint64_t target = (total * p + 99) / 100;
  if (target == 0) target = 1;
  uint64_t cum = 0;
  for (uint32_t i = 0; i < LAT_N; i++) {
    if (!b[i]) continue;
    if (cum + b[i] >= target) {
      int64_t lo = dsys_upstream_bucket_lower_us(i);
      int64_t hi = i + 1 < LAT_N ? dsys_upstream_bucket_lower_us(i + 1) : lo * 2;
      return lo + (int64_t)((double)(hi - lo) * (double)(target - cum) / (double)b[i]);
    }
    cum += b[i];
  }
  return dsys_upstream_bucket_lower_us(LAT_N - 1);
}

/* Derive the adaptive timeout and hedge delay from the window (see
 * struct dsys_upstream). */
static void lat_eval(dsys_upstream *u, int64_t now) {
  if (pthread_mutex_trylock(&u->lat_mu)) return; /* another thread does it */
  if (now < atomic_load(&u->next_eval)) {
    pthread_mutex_unlock(&u->lat_mu);
    return;
  }
  atomic_store(&u->next_eval, now + EVAL_US);
  uint64_t cur[LAT_N], win[LAT_N], tot = 0;
  for (int k = 0; k < LAT_N; k++) cur[k] = SUM(u, alat[k]);
  /* the first derivation, or after an idle window (no call derived):
   * what came before is history, start the window now */
  if (!u->snap_n || now - u->last_snap > u->win_us) {
    u->snap_n = u->snap_next = 0;
    u->next_snap = now;
  }
  if (now >= u->next_snap) {
    memcpy(u->snap[u->snap_next], cur, sizeof cur);
    u->snap_next = (u->snap_next + 1) % NSNAP;
    if (u->snap_n < NSNAP) u->snap_n++;
    u->last_snap = now;
    u->next_snap = now + u->win_us / NSNAP;
  }
  const uint64_t *base = u->snap[u->snap_n < NSNAP ? 0 : u->snap_next];
  for (int k = 0; k < LAT_N; k++) {
    win[k] = cur[k] - base[k];
    tot += win[k];
  }
  int enough = tot >= u->min_samples && tot > 0;
  int64_t p = enough ? percentile(win, tot, u->to_pct) : 0;
  int64_t to = 0;
  if (u->adaptive && enough) {
    double t = (double)p * u->to_factor;
    to = t > (double)u->to_max_us ? u->to_max_us : (int64_t)t;
    if (to < u->to_min_us) to = u->to_min_us;
  }
  int64_t hd = -1;
  if (u->hedge_fixed_us > 0) hd = u->hedge_fixed_us;
  else if (u->hedge && enough) hd = percentile(win, tot, u->hedge_pct);
  if (hd >= 0 && hd < 1000) hd = 1000; /* below a millisecond it is noise */
  atomic_store(&u->to_us, to);
  atomic_store(&u->hedge_us, u->hedge ? hd : -1);
  atomic_store(&u->win_p_us, p);
  atomic_store(&u->win_n, tot);
  pthread_mutex_unlock(&u->lat_mu);
}

/* ---- endpoints ---- */

static void ep_unref(uep *e) {
  if (!e || atomic_fetch_sub(&e->refs, 1) != 1) return;
  dsys_breaker_free(e->br);
  free(e->id);
  free(e->url);
  dsys_free(e->inst);
  free(e);
}

/* Hold lk (any mode). */
static size_t find_idx(dsys_upstream *u, const char *id) {
  for (size_t i = 0; i < u->n; i++)
    if (!strcmp(u->eps[i]->id, id)) return i;
  return SIZE_MAX;
}

/* The endpoint with this id, with a reference taken (ep_unref), or NULL. */
static uep *ref_ep(dsys_upstream *u, const char *id) {
  uep *e = NULL;
  pthread_rwlock_rdlock(&u->lk);
  size_t i = find_idx(u, id);
  if (i != SIZE_MAX) {
    e = u->eps[i];
    atomic_fetch_add(&e->refs, 1);
  }
  pthread_rwlock_unlock(&u->lk);
  return e;
}

/* Hold mu. The balancer learns the verdict of health and breaker. */
static void sync_avail(dsys_upstream *u, uep *e) {
  if (e->removed) return;
  dsys_balancer_set_available(u->bal, e->id, e->h_usable && !atomic_load(&e->br_open));
}

static void br_timer_cb(void *ud);

/* Hold mu. Arm the reopen timer; have_ref: reuse the reference and count of
 * a timer that was just canceled or is ending. 0 when armed. */
static int arm_timer(dsys_upstream *u, uep *e, int64_t delay_us, int have_ref) {
  if (!have_ref) {
    atomic_fetch_add(&e->refs, 1);
    u->timers_out++;
  }
  if (dsys_timer_add(u->clk, delay_us, br_timer_cb, e, &e->br_timer) == 0) return 0;
  e->br_timer = 0;
  u->timers_out--;
  atomic_fetch_sub(&e->refs, 1); /* never the last: the set holds one */
  pthread_cond_broadcast(&u->cv);
  return -1;
}

/* Breaker transitions: OPEN takes the endpoint out of rotation and arms a
 * timer that moves it to HALF_OPEN when the wait is over (the breaker only
 * moves lazily, and an endpoint out of rotation is never asked). */
static void on_breaker(void *ud, const char *name, dsys_breaker_state from,
                       dsys_breaker_state to) {
  uep *e = ud;
  dsys_upstream *u = e->u;
  pthread_mutex_lock(&u->mu);
  atomic_store(&e->br_open, to == DSYS_BREAKER_OPEN || to == DSYS_BREAKER_FORCED_OPEN);
  sync_avail(u, e);
  if (to == DSYS_BREAKER_OPEN && !e->removed && !u->no_timers) {
    /* a pending timer belongs to an earlier opening: restart it */
    int have = e->br_timer && dsys_timer_cancel(u->clk, e->br_timer) == 0;
    if (have || !e->br_timer) arm_timer(u, e, u->open_wait_us, have);
    /* else it is running right now and re-arms itself if still OPEN */
  }
  pthread_mutex_unlock(&u->mu);
  if (u->user_br_ev) u->user_br_ev(u->user_br_ud, name, from, to);
}

static void br_timer_cb(void *ud) {
  uep *e = ud;
  dsys_upstream *u = e->u;
  pthread_mutex_lock(&u->mu);
  e->br_timer = 0;
  int go = !e->removed && !u->no_timers;
  pthread_mutex_unlock(&u->mu);
  /* moves OPEN -> HALF_OPEN; the event puts it back in rotation */
  dsys_breaker_state st = go ? dsys_breaker_state_get(e->br) : DSYS_BREAKER_CLOSED;
  pthread_mutex_lock(&u->mu);
  int carried = 0; /* our reference and count passed on (or released) */
  if (st == DSYS_BREAKER_OPEN && !e->removed && !u->no_timers && !e->br_timer) {
    /* still open (it reopened meanwhile): look again soon */
    arm_timer(u, e, u->open_wait_us / 20 + 1000, 1);
    carried = 1;
  }
  if (!carried) {
    u->timers_out--;
    pthread_cond_broadcast(&u->cv);
  }
  pthread_mutex_unlock(&u->mu);
  if (!carried) ep_unref(e);
}

static void on_health(void *ud, const char *id, dsys_health_event ev, int usable) {
  dsys_upstream *u = ud;
  if (ev == DSYS_HEALTH_EV_EJECTED_SLOW) INC(u->slow_ejections);
  uep *e = ref_ep(u, id);
  if (e) {
    /* re-read rather than trust the event: events of two threads may
     * arrive out of order; the last update under mu sees the latest state */
    pthread_mutex_lock(&u->mu);
    if (!e->removed) {
      e->h_usable = dsys_health_usable(u->health, e->id);
      sync_avail(u, e);
    }
    pthread_mutex_unlock(&u->mu);
    ep_unref(e);
  }
  if (u->user_h_ev) u->user_h_ev(u->user_h_ud, id, ev, usable);
}

/* Asked by e's breaker before it opens: not when most other instances
 * fail too (outlier detection's rule, shared_cause.h): while their
 * database was down every breaker opened, and writes stayed refused for
 * the open time after it was back. */
static int br_shared(void *ud, const char *name) {
  uep *e = ud;
  (void)name;
  return !atomic_load(&e->gone) && dsysi_health_shared_failure(e->u->health, e->id);
}

static uep *ep_new(dsys_upstream *u, const char *id, const char *url,
                   uint32_t weight, int from_registry, int *rc) {
  uep *e = calloc(1, sizeof *e);
  if (!e || !(e->id = strdup(id)) || !(e->url = strdup(url))) {
    if (e) free(e->id);
    free(e);
    *rc = DSYS_ENOMEM;
    return NULL;
  }
  atomic_init(&e->refs, 1);
  e->u = u;
  atomic_init(&e->weight, weight ? weight : 1);
  e->from_registry = from_registry;
  dsys_breaker_options bo = u->br_tmpl;
  bo.size = sizeof bo;
  bo.clock = u->clk;
  bo.name = e->id;
  bo.on_event = on_breaker;
  bo.event_ud = e;
  if ((*rc = dsys_breaker_new(&e->br, &bo))) {
    free(e->id);
    free(e->url);
    free(e);
    return NULL;
  }
  dsysi_breaker_set_shared(e->br, br_shared, e);
  return e;
}

/* Hold lk for writing. Takes over the caller's reference on success. */
static int add_locked(dsys_upstream *u, uep *e) {
  if (atomic_load(&u->closing)) return DSYS_ECLOSED;
  if (find_idx(u, e->id) != SIZE_MAX) return DSYS_EEXIST;
  if (dsysi_grow(&u->eps, &u->cap, u->n + 1, sizeof *u->eps, 8)) return DSYS_ENOMEM;
  int rc = dsys_balancer_add(u->bal, e->id, atomic_load(&e->weight), e);
  if (rc) return rc;
  if ((rc = dsys_health_add(u->health, e->id, e->url))) {
    dsys_balancer_remove(u->bal, e->id);
    return rc;
  }
  u->eps[u->n++] = e;
  pthread_mutex_lock(&u->mu);
  e->h_usable = dsys_health_usable(u->health, e->id);
  sync_avail(u, e);
  pthread_mutex_unlock(&u->mu);
  return 0;
}

/* Hold lk for writing. Drops the set's reference. */
static void remove_locked(dsys_upstream *u, size_t i) {
  uep *e = u->eps[i];
  memmove(&u->eps[i], &u->eps[i + 1], (u->n - i - 1) * sizeof *u->eps);
  u->n--;
  dsys_balancer_remove(u->bal, e->id);
  dsys_health_remove(u->health, e->id);
  atomic_store(&e->gone, 1);
  int drop_timer = 0;
  pthread_mutex_lock(&u->mu);
  e->removed = 1;
  if (e->br_timer && dsys_timer_cancel(u->clk, e->br_timer) == 0) {
    u->timers_out--;
    drop_timer = 1;
    pthread_cond_broadcast(&u->cv);
  }
  e->br_timer = 0;
  pthread_mutex_unlock(&u->mu);
  if (drop_timer) ep_unref(e);
  ep_unref(e);
}

static int valid_id(const char *id) {
  size_t l = id ? strlen(id) : 0;
  return l >= 1 && l <= DSYS_UPSTREAM_ID_MAX;
}

int dsys_upstream_add(dsys_upstream *u, const char *id, const char *url,
                      uint32_t weight) {
  if (!u || !valid_id(id) || !url || weight > 10000) return DSYS_EINVAL;
  /* An operator's typo fails here, not as a 502 on every request. */
  int rc = dsysi_url_check(url);
  if (rc) return rc;
  uep *e = ep_new(u, id, url, weight, 0, &rc);
  if (!e) return rc;
  pthread_rwlock_wrlock(&u->lk);
  rc = add_locked(u, e);
  pthread_rwlock_unlock(&u->lk);
  if (rc) ep_unref(e);
  return rc;
}

int dsys_upstream_remove(dsys_upstream *u, const char *id) {
  if (!u || !id) return DSYS_EINVAL;
  pthread_rwlock_wrlock(&u->lk);
  size_t i = find_idx(u, id);
  if (i != SIZE_MAX) remove_locked(u, i);
  pthread_rwlock_unlock(&u->lk);
  return i == SIZE_MAX ? DSYS_ENOTFOUND : 0;
}

int dsys_upstream_instances(dsys_upstream *u, dsys_instance **arr, size_t *n) {
  if (!u || !arr || !n) return DSYS_EINVAL;
  *arr = NULL;
  *n = 0;
  pthread_rwlock_rdlock(&u->lk);
  dsys_instance *v = u->n ? malloc(u->n * sizeof *v) : NULL;
  int rc = u->n && !v ? DSYS_ENOMEM : 0;
  size_t k = 0;
  for (size_t i = 0; !rc && i < u->n; i++)
    if (u->eps[i]->inst) v[k++] = *u->eps[i]->inst;
  /* the copy takes the strings while lk keeps the records alive */
  if (!rc && k) rc = dsys_instances_copy(v, k, arr);
  pthread_rwlock_unlock(&u->lk);
  free(v);
  if (!rc) *n = k;
  return rc;
}

size_t dsys_upstream_count(dsys_upstream *u) {
  if (!u) return 0;
  pthread_rwlock_rdlock(&u->lk);
  size_t n = u->n;
  pthread_rwlock_unlock(&u->lk);
  return n;
}

/* ---- registry ---- */

/* Make the registry member id match inst (NULL: not a member). */
/* restart: the instance registered again (a new process): start it over
 * with fresh health, outlier and breaker state even if its URL is the same,
 * so an ejection of the dead process does not keep the new one out. */
static void reg_apply_ex(dsys_upstream *u, const char *id, const dsys_instance *inst,
                         int restart, const char *why, dsys_log_level lvl) {
  uep *fresh = NULL;
  int rc;
  if (inst) {
    fresh = ep_new(u, inst->id, inst->url, inst->weight ? inst->weight : 1, 1, &rc);
    if (fresh && (rc = dsys_instances_copy(inst, 1, &fresh->inst))) {
      ep_unref(fresh);
      fresh = NULL;
    }
    if (!fresh) {
      dsysi_log(DSYS_LOG_WARN, "upstream", "%s: cannot add %s: %s", u->service, id,
                dsys_strerror(rc));
      return;
    }
  }
  pthread_rwlock_wrlock(&u->lk);
  size_t i = find_idx(u, id);
  uep *cur = i != SIZE_MAX ? u->eps[i] : NULL;
  if (cur && !cur->from_registry) {
    /* a static endpoint with this id wins */
  } else if (cur && fresh && !strcmp(cur->url, fresh->url) && !restart) {
    uint32_t w = atomic_load(&fresh->weight);
    if (atomic_load(&cur->weight) != w) {
      dsys_balancer_set_weight(u->bal, cur->id, w);
      atomic_store(&cur->weight, w);
    }
    /* the same member, its record as read now (metadata may differ) */
    dsys_instance *old = cur->inst;
    cur->inst = fresh->inst;
    fresh->inst = old;
  } else {
    int had = cur != NULL, added = 0;
    if (cur) remove_locked(u, i);
    if (fresh && (rc = add_locked(u, fresh)) == 0) {
      fresh = NULL;
      added = 1;
    }
    pthread_rwlock_unlock(&u->lk);
    /* membership is rare and what an operator asks first when a gateway
     * does not route to an instance: say each change and its cause */
    if (had || added)
      dsysi_log(lvl, "upstream", "%s: %s %s (%s)", u->service, id,
                added ? (had ? "replaced" : "joined") : "left", why);
    ep_unref(fresh);
    return;
  }
  pthread_rwlock_unlock(&u->lk);
  ep_unref(fresh);
}

static void reg_apply(dsys_upstream *u, const char *id, const dsys_instance *inst,
                      const char *why) {
  reg_apply_ex(u, id, inst, 0, why, DSYS_LOG_INFO);
}

static int reg_resync(dsys_upstream *u, int periodic);

static void reg_update(dsys_upstream *u, const char *id, int restart) {
  dsys_instance *inst = NULL;
  int rc = dsys_registry_get(u->reg, id, &inst);
  /* A registry that did not answer (an etcd read timed out under load)
   * says nothing of the instance: taking the failure for "gone" dropped a
   * live instance that no later change brought back (heartbeats are not
   * changes). Try again, then re-read the whole service; failing that,
   * keep what we have and re-read at the next change. */
  for (int i = 0; i < 2 && rc && rc != DSYS_ENOTFOUND; i++)
    rc = dsys_registry_get(u->reg, id, &inst);
  if (rc && rc != DSYS_ENOTFOUND) {
    if (reg_resync(u, 0)) atomic_store(&u->resync_due, 1);
    return;
  }
  int member = !rc && inst && !strcmp(inst->type, u->service) &&
               inst->health == DSYS_INSTANCE_HEALTHY;
  reg_apply_ex(u, id, member ? inst : NULL, restart,
               member ? (restart ? "registered" : "healthy")
               : rc ? "not in the registry" : strcmp(inst->type, u->service) ? "another type"
                                                                              : "unhealthy on read",
               DSYS_LOG_INFO);
  dsys_free(inst);
}

/* Re-read every instance of the service type. periodic: the re-read of
 * registry_reread_ms, for which any change it makes is a change that was
 * missed (a warning: worth finding out why). */
static int reg_resync(dsys_upstream *u, int periodic) {
  dsys_instance *v = NULL;
  size_t n = 0;
  int rc = dsys_registry_lookup(u->reg, u->service, 1, &v, &n);
  if (rc) return rc;
  dsys_log_level lvl = periodic ? DSYS_LOG_WARN : DSYS_LOG_INFO;
  for (size_t i = 0; i < n; i++)
    reg_apply_ex(u, v[i].id, &v[i], 0, periodic ? "periodic re-read: a change was missed" : "listed",
                 lvl);
  /* registry members that are no longer listed leave */
  for (;;) {
    char *gone = NULL;
    pthread_rwlock_rdlock(&u->lk);
    for (size_t k = 0; k < u->n && !gone; k++) {
      if (!u->eps[k]->from_registry) continue;
      size_t j = 0;
      while (j < n && strcmp(v[j].id, u->eps[k]->id)) j++;
      if (j == n) gone = strdup(u->eps[k]->id);
    }
    pthread_rwlock_unlock(&u->lk);
    if (!gone) break;
    reg_apply_ex(u, gone, NULL, 0,
                 periodic ? "periodic re-read: no longer listed, a change was missed"
                          : "no longer listed",
                 lvl);
    free(gone);
  }
  dsys_free(v);
  return 0;
}

static void on_change_locked(dsys_upstream *u, const dsys_registry_change *c);

static void on_change(void *ud, const dsys_registry_change *c) {
  dsys_upstream *u = ud;
  if (atomic_load(&u->closing)) return;
  pthread_mutex_lock(&u->reg_mu);
  on_change_locked(u, c);
  pthread_mutex_unlock(&u->reg_mu);
}

static void reread_tick(void *ud) {
  dsys_upstream *u = ud;
  if (atomic_load(&u->closing)) return;
  pthread_mutex_lock(&u->reg_mu);
  /* failing: the next tick or change tries again */
  if (reg_resync(u, 1)) atomic_store(&u->resync_due, 1);
  pthread_mutex_unlock(&u->reg_mu);
}

static void on_change_locked(dsys_upstream *u, const dsys_registry_change *c) {
  if (c->kind == DSYS_REG_RESYNC || atomic_exchange(&u->resync_due, 0)) {
    if (reg_resync(u, 0)) atomic_store(&u->resync_due, 1);
    if (c->kind == DSYS_REG_RESYNC) return;
  }
  int ours = !c->type || !*c->type || !strcmp(c->type, u->service);
  switch (c->kind) {
  case DSYS_REG_REGISTERED:
  case DSYS_REG_HEALTHY:
    if (ours) reg_update(u, c->id, c->kind == DSYS_REG_REGISTERED);
    else reg_apply(u, c->id, NULL, "re-registered under another type");
    break;
  default: /* deregistered, unhealthy, reaped */
    reg_apply(u, c->id, NULL, c->kind == DSYS_REG_DEREGISTERED ? "deregistered"
                              : c->kind == DSYS_REG_UNHEALTHY  ? "unhealthy"
                                                               : "reaped");
    break;
  }
}

/* ---- active health checks ---- */

typedef struct probe_ctx {
  dsys_upstream *u;
  uint64_t token;
} probe_ctx;

static void probes_done(dsys_upstream *u) {
  if (atomic_fetch_sub(&u->probes, 1) == 1) {
    pthread_mutex_lock(&u->mu);
    pthread_cond_broadcast(&u->cv);
    pthread_mutex_unlock(&u->mu);
  }
}

static void probe_reply(int err, dsys_reply *r, void *ud) {
  probe_ctx *p = ud;
  int st = r ? dsys_reply_status(r) : 0;
  dsys_health_report(p->u->health, p->token, !err && st >= 200 && st < 300);
  dsys_reply_free(r);
  dsys_upstream *u = p->u;
  free(p);
  probes_done(u);
}

static int probe_fn(void *ud, dsys_health *h, const char *id, const char *url,
                    uint64_t token) {
  dsys_upstream *u = ud;
  probe_ctx *p = malloc(sizeof *p);
  if (!p) return DSYS_ENOMEM;
  p->u = u;
  p->token = token;
  dsys_call c = {.size = sizeof c, .method = "GET", .url = url,
                 .path = u->health_path, .timeout_ms = u->h_timeout_ms};
  int rc = DSYS_ECLOSED;
  pthread_rwlock_rdlock(&u->lk);
  if (!atomic_load(&u->closing)) {
    atomic_fetch_add(&u->probes, 1);
    rc = dsys_client_send(u->client, &c, probe_reply, p);
    if (rc) atomic_fetch_sub(&u->probes, 1);
  }
  pthread_rwlock_unlock(&u->lk);
  if (rc) free(p);
  return rc;
}

/* ---- pick and report ---- */

static int was_tried(uep *const *tried, size_t n, const uep *e) {
  for (size_t i = 0; i < n; i++)
    if (tried[i] == e) return 1;
  return 0;
}

/* Hold lk. */
static int all_breakers_open(dsys_upstream *u) {
  if (!u->n) return 0;
  for (size_t i = 0; i < u->n; i++)
    if (!atomic_load(&u->eps[i]->br_open)) return 0;
  return 1;
}

/* members (may be NULL): the number of endpoints when it picked. */
static int pick_in(dsys_upstream *u, const void *key, size_t keylen,
                   const char *exclude, uep *const *tried, size_t ntried,
                   struct dsys_upstream_pick *out, size_t *members) {
  pthread_rwlock_rdlock(&u->lk);
  if (atomic_load(&u->closing)) {
    pthread_rwlock_unlock(&u->lk);
    return DSYS_ECLOSED;
  }
  size_t n = u->n;
  if (members) *members = n;
  size_t limit = 2 * n + 1 < PICK_LIMIT ? 2 * n + 1 : PICK_LIMIT;
  const char *ex = exclude;
  int rc = n ? 0 : DSYS_EUNAVAIL;
  uint32_t rejected = 0;
  dsys_pick_result pr;
  for (size_t i = 0; n && i < limit; i++) {
    rc = dsys_balancer_pick(u->bal, key, keylen, ex, &pr);
    if (rc) break;
    uep *e = pr.ud;
    if (ntried && ntried < n && i < n && was_tried(tried, ntried, e)) {
      dsys_balancer_release(u->bal, &pr);
      ex = e->id;
      continue;
    }
    dsys_breaker_permit permit;
    if (dsys_breaker_acquire(e->br, &permit)) {
      INC(e->rejections);
      dsys_balancer_release(u->bal, &pr);
      if (++rejected >= n) break; /* as many rejections as endpoints */
      ex = e->id;
      continue;
    }
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    pthread_rwlock_unlock(&u->lk);
    INC(e->requests);
    INC(e->inflight);
    ushard *sh = shard(u);
    INC(sh->picks);
    if (pr.panic) INC(sh->panic);
    out->id = e->id;
    out->url = e->url;
    out->panic = pr.panic;
    out->reserved_ = 0;
    out->ep_ = e;
    out->lb_handle_ = pr.handle;
    out->permit_ = permit;
    out->start_us_ = dsys_clock_now_us(u->clk);
    return 0;
  }
  if (!rc) rc = rejected ? DSYS_EBREAKER : DSYS_EUNAVAIL;
  else if (rc == DSYS_EUNAVAIL && all_breakers_open(u)) rc = DSYS_EBREAKER;
  pthread_rwlock_unlock(&u->lk);
  if (rc == DSYS_EBREAKER) INC(shard(u)->brk);
  else if (rc == DSYS_EUNAVAIL) INC(shard(u)->unavail);
  return rc;
}

int dsys_upstream_pick(dsys_upstream *u, const void *key, size_t keylen,
                       const char *exclude_id, struct dsys_upstream_pick *out) {
  if (!u || !out || (keylen && !key)) return DSYS_EINVAL;
  return pick_in(u, key, keylen, exclude_id, NULL, 0, out, NULL);
}

/* dsys_upstream_report; cut: the attempt timed out by its adaptive
 * timeout. That says the endpoint is slower than the tier, not that it
 * failed: it extends the slowness streak only, and the breaker ignores it
 * (a rare slow route must not open every breaker of the service). */
static void report(dsys_upstream *u, struct dsys_upstream_pick *p, int err, int status, int cut) {
  if (!u || !p || !p->ep_) return;
  uep *e = p->ep_;
  int64_t dur = dsys_clock_now_us(u->clk) - p->start_us_;
  if (dur < 0) dur = 0;
  dsys_outcome oc = dsys_classify(err, status);
  /* What the endpoint's breaker and outlier detection see: an answer
   * other than 502/503/504 says the request or a shared resource is bad,
   * not this instance (unless the upstream counts every 5xx). */
  dsys_outcome seen = oc == DSYS_OUTCOME_SERVER_ERROR && !u->count_all_5xx && status != 502 &&
                              status != 503 && status != 504
                          ? DSYS_OUTCOME_CLIENT_ERROR
                          : oc;
  int br = seen == DSYS_OUTCOME_OK || seen == DSYS_OUTCOME_CLIENT_ERROR
               ? DSYS_BREAKER_SUCCESS
               : seen == DSYS_OUTCOME_LOCAL || cut ? DSYS_BREAKER_IGNORED : DSYS_BREAKER_FAILURE;
  dsys_breaker_record(e->br, p->permit_, br, dur);
  /* Outlier detection only needs a success after a failure (to reset its
   * count of consecutive failures): skipping the others saves a lock and
   * a search by id per call. Two threads reporting at once may order a
   * success and a failure either way, as without the skip. */
  int clean = seen == DSYS_OUTCOME_OK || seen == DSYS_OUTCOME_CLIENT_ERROR;
  int slow = 0;
  if (u->lat_on) {
    ushard *sh = shard(u);
    if (clean) {
      INC(sh->alat[lat_bucket(dur)]);
      int64_t to = LOAD(u->to_us);
      slow = to > 0 && dur > to; /* it would have timed out */
      if (slow) INC(sh->slow_answers);
    }
  }
  slow |= cut;
  if (oc == DSYS_OUTCOME_TIMEOUT) INC(shard(u)->att_timeouts);
  int tell = clean && !slow ? atomic_load(&e->h_dirty) && atomic_exchange(&e->h_dirty, 0)
                            : seen != DSYS_OUTCOME_LOCAL; /* LOCAL: the health module ignores it */
  if (tell && (!clean || slow)) atomic_store(&e->h_dirty, 1);
  if (tell && !atomic_load(&e->gone)) {
    if (slow) dsys_health_observe_slow(u->health, e->id);
    else dsys_health_observe(u->health, e->id, seen);
  }
  if ((unsigned)oc < 8) INC(e->by_outcome[oc]);
  if (oc == DSYS_OUTCOME_OK) INC(e->successes);
  else if (br == DSYS_BREAKER_FAILURE) INC(e->failures);
  if (oc != DSYS_OUTCOME_LOCAL) {
    INC(e->lat[lat_bucket(dur)]);
    INC(e->lat_count);
    atomic_fetch_add_explicit(&e->lat_sum, dur, memory_order_relaxed);
  }
  DEC(e->inflight);
  dsys_pick_result pr; /* release reads the handle only */
  pr.handle = p->lb_handle_;
  dsys_balancer_release(u->bal, &pr);
  p->ep_ = NULL;
  ep_unref(e);
}

void dsys_upstream_report(dsys_upstream *u, struct dsys_upstream_pick *p, int err,
                          int status) {
  report(u, p, err, status, 0);
}

dsys_retry *dsys_upstream_retry(dsys_upstream *u) { return u ? u->retry : NULL; }

int dsys_upstream_reset_rr(dsys_upstream *u) {
  return u ? dsys_balancer_reset(u->bal) : DSYS_EINVAL;
}

int dsys_upstream_breaker_set(dsys_upstream *u, const char *id,
                              dsys_breaker_state state) {
  if (!u || !id) return DSYS_EINVAL;
  uep *e = ref_ep(u, id);
  if (!e) return DSYS_ENOTFOUND;
  int rc = dsys_breaker_set_state(e->br, state);
  ep_unref(e);
  return rc;
}

/* ---- calls: one attempt loop ----
 *
 * dsys_upstream_send, dsys_upstream_call_ex and the gateway (through
 * dsysi_upstream_send) share the steps below: attempt_begin (deadline,
 * pick, counters) and attempt_end (report, retry decision, what the call
 * keeps). The asynchronous driver dials each attempt (the event loop's
 * HTTP/1.1 dialer on a loop thread, else the client) and waits for a
 * backoff on a timer; the synchronous one runs the same steps on the
 * caller's thread with dsys_client_do and sleeps on the clock. */

/* One attempt of a call: two when a hedge runs beside the first. */
typedef struct uatt {
  ucall *c;
  struct dsys_upstream_pick pick;
  int64_t head_ms;       /* its adaptive timeout (0: none) */
  int hedge;             /* started as a hedge */
  int busy;              /* sent, not completed */
} uatt;

struct ucall {
  dsys_upstream *u;
  ushard *sh;            /* the starting thread's counters */
  dsys_upstream_fn cb;
  void *ud;
  dsys_call call;        /* method, path, headers, body: borrowed or in own */
  dsysi_usend o;
  void *own;             /* one block holding copies of the call's data */
  int idem_key;
  int precond;           /* If-Match or If-Unmodified-Since */
  int resendable;        /* a copy may go while an attempt is out (when u->lat_on) */
  int hedgeable;
  int committed;         /* a streamed answer began: this attempt is final */
  uatt att[2];           /* [0] unless a hedge runs beside it */
  int inflight;          /* attempts sent and not completed */
  int finished;          /* the callback ran; a loser is still out */
  int winner;            /* the attempt whose head came first, or -1 */
  int hedged;            /* a hedge was sent (one per call) */
  int cut;               /* an attempt was cut by the adaptive timeout */
  uint64_t hedge_timer;  /* on the loop */
  int64_t start_us;
  uint32_t attempt;
  uep *tried[MAX_TRIED]; /* compared only, never dereferenced */
  size_t ntried;
  dsys_reply *last;
  int last_err, last_reason;
  uint64_t timer;
  struct uloop *ul;       /* waiting for a backoff on this loop's timer */
  ucall *next, *prev;     /* u->backoffs or ul->backoffs while waiting */
  char last_id[DSYS_UPSTREAM_ID_MAX + 1];
};

/* The headers that make a resend harmless: Idempotency-Key, and the
 * preconditions a late duplicate would fail (If-Match,
 * If-Unmodified-Since). One pass; most requests have no 'i' header. */
static void resend_headers(ucall *c) {
  const dsys_header *h = c->call.headers;
  c->idem_key = c->precond = 0;
  for (size_t i = 0; i < c->call.nheaders; i++) {
    if (dsysi_lc[(unsigned char)h[i].name[0]] != 'i') continue;
    if (!strcasecmp(h[i].name, "Idempotency-Key")) c->idem_key = 1;
    else if (!strcasecmp(h[i].name, "If-Match") || !strcasecmp(h[i].name, "If-Unmodified-Since"))
      c->precond = 1;
  }
}

static int ucall_key; /* finished calls kept per event loop */

static void ucall_free(ucall *c) {
  dsys_reply_free(c->last);
  free(c->own);
  if (dsysi_loop_cache_put(&ucall_key, c, 256, free)) free(c);
}

/* Copy the call's strings, header array and body into one block. */
static int ucall_copy(ucall *c) {
  dsys_call *d = &c->call;
  size_t ml = strlen(d->method) + 1, pl = strlen(d->path) + 1;
  size_t sz = d->nheaders * sizeof(dsys_header) + ml + pl + d->body_len;
  for (size_t i = 0; i < d->nheaders; i++)
    sz += strlen(d->headers[i].name) + strlen(d->headers[i].value) + 2;
  dsys_header *h = c->own = malloc(sz ? sz : 1);
  if (!h) return DSYS_ENOMEM;
  char *s = (char *)(h + d->nheaders);
#define COPY(dst, src, n) (memcpy(s, src, n), dst = s, s += (n))
  for (size_t i = 0; i < d->nheaders; i++) {
    COPY(h[i].name, d->headers[i].name, strlen(d->headers[i].name) + 1);
    COPY(h[i].value, d->headers[i].value, strlen(d->headers[i].value) + 1);
  }
  COPY(d->method, d->method, ml);
  COPY(d->path, d->path, pl);
  if (d->body_len) COPY(d->body, d->body, d->body_len);
#undef COPY
  d->headers = h;
  return 0;
}

/* A call's state. o may be NULL; with o->borrow the call is not copied. */
static ucall *ucall_new(dsys_upstream *u, const dsys_call *call, const dsysi_usend *o,
                        int *rc) {
  ucall *c = dsysi_loop_cache_get(&ucall_key);
  if (!c) c = malloc(sizeof *c);
  if (!c) {
    *rc = DSYS_ENOMEM;
    return NULL;
  }
  if ((*rc = dsysi_call_norm(call, &c->call, !o || !o->checked))) {
    free(c);
    return NULL;
  }
  /* fields set here, not the whole object: tried[] and pick need no
   * zeroes (ntried, and report runs only after a pick) */
  c->u = u;
  if (o) c->o = *o;
  else memset(&c->o, 0, sizeof c->o);
  c->own = NULL;
  c->committed = 0;
  c->inflight = c->finished = c->hedged = c->cut = 0;
  c->winner = -1;
  c->hedge_timer = 0;
  c->att[0].c = c->att[1].c = c;
  c->att[0].hedge = c->att[1].hedge = 0;
  c->att[0].busy = c->att[1].busy = 0;
  c->attempt = 0;
  c->ntried = 0;
  c->last = NULL;
  c->last_err = c->last_reason = 0;
  c->timer = 0;
  c->ul = NULL;
  c->next = c->prev = NULL;
  c->last_id[0] = '\0';
  if (!c->o.borrow && (*rc = ucall_copy(c))) {
    free(c);
    return NULL;
  }
  resend_headers(c);
  /* a hedge or a cut sends a copy while the first attempt is still out:
   * a plain PUT or DELETE could land late, over newer writes (as after a
   * timeout: dsys_retry_decide) */
  c->resendable = u->lat_on && (c->idem_key || c->precond || dsys_method_safe(c->call.method));
  /* a lent body may be gone when a losing hedge still writes it */
  c->hedgeable = u->hedge && c->resendable && !(c->o.borrow && c->call.body_len);
  c->start_us = dsys_clock_now_us(u->clk);
  c->sh = shard(u);
  return c;
}

/* Calls in flight, for free: every ended is counted after its started
 * (read ended first, then started: never below the true count). */
static uint64_t calls_in_flight(dsys_upstream *u) {
  uint64_t ended = SUM(u, ended);
  return SUM(u, started) - ended;
}

static void calls_done(dsys_upstream *u, ushard *sh) {
  INC(sh->ended);
  if (atomic_load(&u->closing)) { /* free may be waiting for this one */
    pthread_mutex_lock(&u->mu);
    pthread_cond_broadcast(&u->cv);
    pthread_mutex_unlock(&u->mu);
  }
}

static void note_call_end(ucall *c, int err) {
  int64_t d = dsys_clock_now_us(c->u->clk) - c->start_us;
  ushard *sh = c->sh;
  INC(sh->call_lat[lat_bucket(d < 0 ? 0 : d)]);
  if (err) INC(sh->errors);
  else INC(sh->replies);
}

static void result_of(const ucall *c, dsys_upstream_result *res) {
  res->size = sizeof *res;
  res->attempts = c->attempt;
  res->last_retry_reason = c->last_reason;
  memcpy(res->endpoint, c->last_id, strlen(c->last_id) + 1);
}

/* Step 1 of an attempt: deadline, pick (not an endpoint already tried
 * when another is available), counters. Fills dc with the request for
 * the picked endpoint. 0, or the error that stops the call. */
static int attempt_begin(ucall *c, uatt *a, dsys_call *dc) {
  dsys_upstream *u = c->u;
  int64_t now = dsys_clock_now_us(u->clk);
  int64_t elapsed_ms = (now - c->start_us) / 1000;
  int64_t to = dsys_retry_try_timeout_ms(u->retry, elapsed_ms);
  if (to == 0) return DSYS_ETIMEDOUT;
  if (u->lat_on && now >= atomic_load_explicit(&u->next_eval, memory_order_relaxed))
    lat_eval(u, now);
  size_t members;
  int rc = pick_in(u, c->call.path, strlen(c->call.path), c->ntried ? c->last_id : NULL,
                   c->tried, c->ntried, &a->pick, &members);
  if (rc) return rc;
  const uatt *other = &c->att[a == c->att];
  if (a->hedge && other->busy && a->pick.ep_ == other->pick.ep_) { /* nowhere else to go */
    dsys_upstream_report(u, &a->pick, DSYS_ECANCELED, 0);
    return DSYS_EUNAVAIL;
  }
  c->attempt++;
  INC(c->sh->attempts);
  if (c->attempt > 1) INC(c->sh->retries);
  if (c->ntried < MAX_TRIED) c->tried[c->ntried++] = a->pick.ep_;
  size_t idl = strlen(a->pick.id);
  memcpy(c->last_id, a->pick.id, idl + 1);
  if (c->o.on_pick) c->o.on_pick(c->ud, a->pick.id, a->pick.url);
  *dc = c->call;
  dc->url = a->pick.url;
  dc->timeout_ms = to > 0 ? to : 0;
  /* the adaptive timeout only where another attempt can follow, on an
   * endpoint not tried yet: it moves requests, it does not fail them;
   * and once: when a second instance is slow too, the request is */
  a->head_ms = 0;
  if (u->adaptive && !c->cut && c->resendable && c->attempt < u->max_attempts &&
      c->ntried < members) {
    int64_t at = atomic_load_explicit(&u->to_us, memory_order_relaxed);
    int64_t ams = (at + 999) / 1000;
    if (at > 0 && (to < 0 || ams < to)) a->head_ms = ams;
  }
  return 0;
}

/* Step 2: the attempt ended with (err, reply). Reports it and decides.
 * On STOP the caller delivers (err, reply); otherwise the call keeps the
 * reply as its result should the retry not start. */
static int attempt_end(ucall *c, uatt *a, int err, dsys_reply *reply, dsys_retry_decision *d) {
  dsys_upstream *u = c->u;
  int status = reply ? dsys_reply_status(reply) : 0;
  int cut = err == DSYS_ETIMEDOUT && a->head_ms;
  c->cut |= cut;
  report(u, &a->pick, err, status, cut);
  dsys_retry_input in = {.size = sizeof in, .method = c->call.method,
                         .has_idempotency_key = c->idem_key,
                         .has_precondition = c->precond,
                         .outcome = dsys_classify(err, status), .status = status,
                         .attempt = c->attempt,
                         .elapsed_ms = (dsys_clock_now_us(u->clk) - c->start_us) / 1000};
  dsys_retry_decide(u->retry, &in, d);
  c->last_reason = d->reason;
  if (c->committed || atomic_load_explicit(&u->closing, memory_order_relaxed))
    d->action = DSYS_RETRY_STOP;
  /* a cut attempt moves to another instance at once: the backoff spares
   * an overloaded service, and this one is not (the others answer) */
  if (cut && d->action == DSYS_RETRY_AFTER_BACKOFF) {
    d->action = DSYS_RETRY_NOW;
    d->delay_ms = 0;
  }
  if (d->action != DSYS_RETRY_STOP) {
    dsys_reply_free(c->last);
    c->last = err ? NULL : reply;
    if (err) dsys_reply_free(reply);
    c->last_err = err;
  }
  return d->action;
}

/* A retry could not start (rc): the previous attempt's result stands. */
static int last_result(ucall *c, int rc, dsys_reply **out) {
  *out = NULL;
  if (!c->attempt) return rc;
  *out = c->last;
  c->last = NULL;
  return *out ? 0 : c->last_err ? c->last_err : rc;
}

/* ---- the asynchronous driver ---- */

/* The call's end once its callback ran and no attempt is out. */
static void ucall_release(ucall *c) {
  dsys_upstream *u = c->u;
  ushard *sh = c->sh;
  ucall_free(c);
  calls_done(u, sh);
}

static void finish(ucall *c, int err, dsys_reply *reply) {
  if (c->last && c->last != reply) dsys_reply_free(c->last);
  c->last = NULL;
  if (err) {
    dsys_reply_free(reply);
    reply = NULL;
  } else if (!reply) {
    err = DSYS_EINTERNAL;
  }
  if (c->hedge_timer) { /* on the loop that armed it: completions of a
                           hedgeable call run there */
    dsysi_loop *l = dsysi_loop_current();
    if (l) dsysi_loop_cancel(l, c->hedge_timer);
    c->hedge_timer = 0;
  }
  note_call_end(c, err);
  dsys_upstream_result res;
  result_of(c, &res);
  c->finished = 1;
  c->cb(err, reply, &res, c->ud);
  if (!c->inflight) ucall_release(c);
}

static void on_attempt(int err, dsys_reply *reply, void *ud);

/* The first response head of a call wins: a later one (a hedge's, or
 * the first attempt's after its hedge answered) is canceled here. */
static int on_head(void *ud, const dsys_reply *head) {
  uatt *a = ud;
  ucall *c = a->c;
  int me = (int)(a - c->att);
  if (c->finished || (c->winner >= 0 && c->winner != me)) return -1;
  c->winner = me;
  int st = c->o.on_head ? c->o.on_head(c->ud, head) : c->call.on_chunk != NULL;
  c->committed = st != 0;
  return st;
}

static int on_body(void *ud, const void *data, size_t len) {
  uatt *a = ud;
  ucall *c = a->c;
  return c->o.on_body(c->ud, data, len);
}

/* Send the attempt: on an event-loop thread an http:// or unix://
 * endpoint goes through the loop's own HTTP/1.1 dialer (no thread
 * hand-off; the completion runs on this loop), anything else through
 * the client (libcurl for http, https and unix; inproc). *on_loop tells
 * which. */
static int dial(ucall *c, uatt *a, dsys_call *dc, int *on_loop) {
  dsys_upstream *u = c->u;
  const dsysi_loop_dialer_ops *ld = dsysi_loop_dialer_find(dc->url);
  *on_loop = ld != NULL;
  /* a hedge completes on the loop like the attempt beside it: the call's
   * state has no lock */
  if (!ld && a->hedge) return DSYS_ESCHEME;
  if (ld) {
    if (atomic_load_explicit(&u->closing, memory_order_relaxed)) return DSYS_ECLOSED;
    dsysi_dial_opts o = {.on_head = c->o.on_head || c->hedgeable ? on_head : NULL,
                         .on_body = c->o.on_body ? on_body : NULL,
                         .max_response = c->o.max_response,
                         .head_timeout_ms = a->head_ms};
    return ld->dial(dc, &o, on_attempt, a);
  }
  /* the client buffers whole answers: a caller's stream hooks do not
   * apply there, and its on_chunk is not the caller's */
  if (c->o.on_head || c->o.on_body) dc->on_chunk = NULL;
  /* the client has one timeout for the whole exchange: a streamed one
   * keeps the policy's */
  if (a->head_ms && !dc->on_chunk && !c->o.on_head) dc->timeout_ms = a->head_ms;
  pthread_rwlock_rdlock(&u->lk); /* free must not pull the client away */
  int rc = atomic_load(&u->closing) ? DSYS_ECLOSED : dsys_client_send(u->client, dc, on_attempt, a);
  pthread_rwlock_unlock(&u->lk);
  return rc;
}

static void hedge_cb(dsysi_loop *l, void *ud);

/* Start an attempt in slot a. 0: sent (on_attempt will run); else
 * nothing runs. */
static int start_in(ucall *c, uatt *a, int hedge) {
  a->hedge = hedge;
  if (c->hedge_timer && !hedge) { /* a retry: no hedge any more, and this
                                     attempt may complete off the loop */
    dsysi_loop *l = dsysi_loop_current(); /* the loop of the first attempt */
    if (l) dsysi_loop_cancel(l, c->hedge_timer);
    c->hedge_timer = 0;
  }
  dsys_call dc;
  int rc = attempt_begin(c, a, &dc);
  if (rc) return rc;
  int on_loop;
  /* counted before: off a loop the completion may run (and end the call)
   * before dial returns; c is only touched afterwards on a loop */
  c->inflight++;
  a->busy = 1;
  rc = dial(c, a, &dc, &on_loop);
  if (rc) {
    c->inflight--;
    a->busy = 0;
    dsys_upstream_report(c->u, &a->pick, rc, 0);
    return rc;
  }
  /* a hedge waits on this loop's timer for the first attempt's head */
  if (on_loop && c->hedgeable && !c->hedged && !c->hedge_timer && c->attempt == 1) {
    dsys_upstream *u = c->u;
    int64_t d = atomic_load_explicit(&u->hedge_us, memory_order_relaxed);
    if (d >= 0) c->hedge_timer = dsysi_loop_timer(dsysi_loop_current(), d, hedge_cb, c);
  }
  return 0;
}

/* Start the next attempt in a free slot. */
static int start_attempt(ucall *c) { return start_in(c, &c->att[c->att[0].busy], 0); }

/* The hedge delay passed with the first attempt still out and no head:
 * a second attempt to another endpoint, within the retry budget. */
static void hedge_cb(dsysi_loop *l, void *ud) {
  ucall *c = ud;
  dsys_upstream *u = c->u;
  c->hedge_timer = 0;
  if (c->finished || c->inflight != 1 || c->winner >= 0 || c->hedged || c->committed ||
      c->attempt >= u->max_attempts || atomic_load(&u->closing))
    return;
  if (dsysi_retry_budget_take(u->retry)) return;
  c->hedged = 1;
  if (start_in(c, &c->att[!c->att[0].busy ? 0 : 1], 1) == 0) INC(c->sh->hedges);
}

/* After a backoff or a refused attempt. */
static void next_attempt(ucall *c) {
  int rc = start_attempt(c);
  if (!rc) return;
  dsys_reply *r;
  rc = last_result(c, rc, &r);
  finish(c, rc, r);
}

/* Calls waiting for a backoff on an event loop: the loop's timers belong
 * to its thread, and when the loop is freed first they end canceled. */
typedef struct uloop {
  ucall *backoffs;
} uloop;

static char uloop_key;

static void unlink_call(ucall **head, ucall *c) {
  if (c->prev) c->prev->next = c->next;
  else *head = c->next;
  if (c->next) c->next->prev = c->prev;
  c->next = c->prev = NULL;
}

static void link_call(ucall **head, ucall *c) {
  c->prev = NULL;
  c->next = *head;
  if (*head) (*head)->prev = c;
  *head = c;
}

static void uloop_fini(dsysi_loop *l, void *blk) {
  uloop *ul = blk;
  while (ul->backoffs) {
    ucall *c = ul->backoffs;
    unlink_call(&ul->backoffs, c);
    finish(c, DSYS_ECANCELED, NULL);
  }
}

static void loop_backoff_cb(dsysi_loop *l, void *ud) {
  ucall *c = ud;
  unlink_call(&c->ul->backoffs, c);
  c->ul = NULL;
  next_attempt(c);
}

static void backoff_cb(void *ud) {
  ucall *c = ud;
  dsys_upstream *u = c->u;
  pthread_mutex_lock(&u->mu);
  unlink_call(&u->backoffs, c);
  c->timer = 0;
  pthread_mutex_unlock(&u->mu);
  next_attempt(c);
}

/* Wait delay_ms, then next_attempt: on this thread's event loop when
 * there is one (the attempt stays on the loop), else on the clock. */
static void backoff(ucall *c, int64_t delay_ms) {
  dsys_upstream *u = c->u;
  dsysi_loop *l = dsysi_loop_current();
  if (l) {
    uloop *ul = dsysi_loop_local(l, &uloop_key, sizeof *ul, uloop_fini);
    if (ul && (c->timer = dsysi_loop_timer(l, delay_ms * 1000, loop_backoff_cb, c))) {
      c->ul = ul;
      link_call(&ul->backoffs, c);
      return;
    }
    next_attempt(c);
    return;
  }
  pthread_mutex_lock(&u->mu);
  link_call(&u->backoffs, c);
  int rc = dsys_timer_add(u->clk, delay_ms * 1000, backoff_cb, c, &c->timer);
  if (rc) unlink_call(&u->backoffs, c);
  pthread_mutex_unlock(&u->mu);
  if (rc) next_attempt(c);
}

static void on_attempt(int err, dsys_reply *reply, void *ud) {
  uatt *a = ud;
  ucall *c = a->c;
  c->inflight--;
  a->busy = 0;
  if (c->finished) { /* the abandoned attempt of a hedged call */
    report(c->u, &a->pick, err, reply ? dsys_reply_status(reply) : 0,
           err == DSYS_ETIMEDOUT && a->head_ms);
    dsys_reply_free(reply);
    if (!c->inflight) ucall_release(c);
    return;
  }
  if (c->winner == (int)(a - c->att)) c->winner = -1; /* it failed after its head */
  dsys_retry_decision d;
  int act = attempt_end(c, a, err, reply, &d);
  if (act == DSYS_RETRY_STOP && (d.reason == DSYS_RETRY_R_SUCCESS || !c->inflight || c->committed)) {
    if (a->hedge && !err) INC(c->sh->hedges_won);
    finish(c, err, reply);
    return;
  }
  if (c->inflight) { /* the other attempt may still answer: wait for it */
    if (act == DSYS_RETRY_STOP) { /* keep this result should it fail too */
      dsys_reply_free(c->last);
      c->last = err ? NULL : reply;
      if (err) dsys_reply_free(reply);
      c->last_err = err;
    }
    return;
  }
  if (d.action == DSYS_RETRY_NOW || d.delay_ms <= 0) next_attempt(c);
  else backoff(c, d.delay_ms);
}

int dsysi_upstream_send(dsys_upstream *u, const dsys_call *call, const dsysi_usend *o,
                        dsys_upstream_fn cb, void *ud) {
  if (!u || !cb) return DSYS_EINVAL;
  if (atomic_load(&u->closing)) return DSYS_ECLOSED;
  int rc;
  ucall *c = ucall_new(u, call, o, &rc);
  if (!c) return rc;
  c->cb = cb;
  c->ud = ud;
  INC(c->sh->started);
  INC(c->sh->calls);
  dsys_retry_request(u->retry);
  rc = start_attempt(c);
  if (rc) {
    note_call_end(c, rc);
    ushard *sh = c->sh;
    ucall_free(c);
    calls_done(u, sh);
  }
  return rc;
}

int dsys_upstream_send(dsys_upstream *u, const dsys_call *call,
                       dsys_upstream_fn cb, void *ud) {
  return dsysi_upstream_send(u, call, NULL, cb, ud);
}

/* ---- the synchronous driver: the same steps on the caller's thread ---- */

int dsys_upstream_call_ex(dsys_upstream *u, const dsys_call *call,
                          dsys_reply **out, dsys_upstream_result *res) {
  if (!u || !out) return DSYS_EINVAL;
  int rc;
  dsysi_usend o = {.borrow = 1}; /* the caller waits: nothing to copy */
  ucall *c = ucall_new(u, call, &o, &rc);
  if (!c) return rc;
  INC(c->sh->calls);
  dsys_retry_request(u->retry);
  dsys_reply *r = NULL;
  for (;;) {
    dsys_call dc;
    uatt *a = &c->att[0];
    if ((rc = attempt_begin(c, a, &dc))) {
      rc = last_result(c, rc, &r);
      break;
    }
    if (a->head_ms && !dc.on_chunk) dc.timeout_ms = a->head_ms; /* see dial() */
    int err = dsys_client_do(u->client, &dc, &r);
    if (err) r = NULL;
    dsys_retry_decision d;
    if (attempt_end(c, a, err, r, &d) == DSYS_RETRY_STOP) {
      rc = err;
      break;
    }
    r = NULL;
    if (d.action == DSYS_RETRY_AFTER_BACKOFF && d.delay_ms > 0)
      dsys_clock_sleep_us(u->clk, d.delay_ms * 1000);
  }
  if (rc) {
    dsys_reply_free(r);
    r = NULL;
  } else if (!r) {
    rc = DSYS_EINTERNAL;
  }
  note_call_end(c, rc);
  if (!rc) *out = r;
  if (res) {
    dsys_upstream_result full;
    result_of(c, &full);
    size_t sz = res->size && res->size < sizeof full ? res->size : sizeof full;
    memcpy(res, &full, sz);
  }
  ucall_free(c);
  return rc;
}

int dsys_upstream_call(dsys_upstream *u, const dsys_call *call, dsys_reply **out) {
  return dsys_upstream_call_ex(u, call, out, NULL);
}

/* ---- statistics ---- */

int dsys_upstream_stats(dsys_upstream *u, dsys_endpoint_stats **arr, size_t *n) {
  if (!u || !arr || !n) return DSYS_EINVAL;
  *arr = NULL;
  *n = 0;
  pthread_rwlock_rdlock(&u->lk);
  size_t cnt = u->n, bytes = cnt * sizeof(dsys_endpoint_stats);
  for (size_t i = 0; i < cnt; i++)
    bytes += strlen(u->eps[i]->id) + strlen(u->eps[i]->url) + 2;
  dsys_endpoint_stats *s = cnt ? calloc(1, bytes) : NULL;
  if (cnt && !s) {
    pthread_rwlock_unlock(&u->lk);
    return DSYS_ENOMEM;
  }
  char *str = (char *)(s + cnt);
  for (size_t i = 0; i < cnt; i++) {
    uep *e = u->eps[i];
    dsys_endpoint_stats *o = &s[i];
    size_t l = strlen(e->id) + 1;
    memcpy(str, e->id, l);
    o->id = str;
    str += l;
    l = strlen(e->url) + 1;
    memcpy(str, e->url, l);
    o->url = str;
    str += l;
    o->weight = atomic_load(&e->weight);
    dsys_health_info hi = {0};
    if (dsys_health_info_get(u->health, e->id, &hi) == 0) {
      o->healthy = hi.state == DSYS_HEALTH_HEALTHY;
      o->health_state = hi.state;
      o->ejected = hi.ejected;
    }
    dsys_breaker_stats bs;
    dsys_breaker_stats_get(e->br, &bs);
    o->breaker_state = bs.state;
    o->usable = hi.usable && bs.state != DSYS_BREAKER_OPEN &&
                bs.state != DSYS_BREAKER_FORCED_OPEN;
    o->requests = LOAD(e->requests);
    o->successes = LOAD(e->successes);
    o->failures = LOAD(e->failures);
    for (int k = 0; k < 8; k++) o->by_outcome[k] = LOAD(e->by_outcome[k]);
    o->in_flight = LOAD(e->inflight);
    o->breaker_rejections = LOAD(e->rejections);
    o->latency_sum_us = atomic_load_explicit(&e->lat_sum, memory_order_relaxed);
    uint64_t tot = 0;
    for (int k = 0; k < LAT_N; k++) tot += o->latency_buckets[k] = LOAD(e->lat[k]);
    o->latency_count = tot;
    o->p50_us = percentile(o->latency_buckets, tot, 50);
    o->p90_us = percentile(o->latency_buckets, tot, 90);
    o->p99_us = percentile(o->latency_buckets, tot, 99);
  }
  pthread_rwlock_unlock(&u->lk);
  *arr = s;
  *n = cnt;
  return 0;
}

int dsys_upstream_totals_get(dsys_upstream *u, dsys_upstream_totals *out) {
  if (!u || !out) return DSYS_EINVAL;
  memset(out, 0, sizeof *out);
  out->calls = SUM(u, calls);
  out->replies = SUM(u, replies);
  out->errors = SUM(u, errors);
  out->attempts = SUM(u, attempts);
  out->retries = SUM(u, retries);
  out->picks = SUM(u, picks);
  out->panic_picks = SUM(u, panic);
  out->unavailable = SUM(u, unavail);
  out->breaker_rejected = SUM(u, brk);
  out->endpoints = dsys_upstream_count(u);
  uint64_t b[LAT_N], tot = 0;
  for (int k = 0; k < LAT_N; k++) tot += b[k] = SUM(u, call_lat[k]);
  out->p50_us = percentile(b, tot, 50);
  out->p90_us = percentile(b, tot, 90);
  out->p99_us = percentile(b, tot, 99);
  return 0;
}

int dsys_upstream_latency_get(dsys_upstream *u, dsys_upstream_latency *out) {
  if (!u || !out || out->size < sizeof(size_t)) return DSYS_EINVAL;
  dsys_upstream_latency l = {.size = out->size < sizeof l ? out->size : sizeof l};
  l.try_timeout_ms = (atomic_load(&u->to_us) + 999) / 1000;
  l.hedge_delay_ms = atomic_load(&u->hedge_us);
  if (l.hedge_delay_ms > 0) l.hedge_delay_ms = (l.hedge_delay_ms + 999) / 1000;
  l.window_p_us = atomic_load(&u->win_p_us);
  l.window_answers = LOAD(u->win_n);
  l.attempt_timeouts = SUM(u, att_timeouts);
  l.slow_answers = SUM(u, slow_answers);
  l.hedges = SUM(u, hedges);
  l.hedges_won = SUM(u, hedges_won);
  l.slow_ejections = LOAD(u->slow_ejections);
  memcpy(out, &l, l.size);
  return 0;
}

/* ---- life cycle ---- */

int dsys_upstream_new(dsys_upstream **out, const dsys_upstream_options *o) {
  if (!out) return DSYS_EINVAL;
  dsys_upstream_options d = {0};
  if (o) memcpy(&d, o, o->size && o->size < sizeof d ? o->size : sizeof d);
  if (d.policy < 0 || d.policy > DSYS_LB_MAGLEV ||
      (d.when_none != DSYS_LB_PANIC && d.when_none != DSYS_LB_FAIL_FAST) ||
      (d.registry && (!d.service || !*d.service)) ||
      (d.health_path && d.health_path[0] != '/') ||
      (d.count_5xx != DSYS_UPSTREAM_COUNT_GATEWAY_5XX && d.count_5xx != DSYS_UPSTREAM_COUNT_ALL_5XX) ||
      d.timeout_percentile > 100 || d.hedge_percentile > 100 ||
      (d.timeout_factor != 0 && !(d.timeout_factor >= 1 && d.timeout_factor <= 1000)) ||
      d.timeout_min_ms < 0 || d.timeout_max_ms < 0 || d.hedge_delay_ms < 0 ||
      (d.latency_window_ms && (d.latency_window_ms < 100 || d.latency_window_ms > 3600000)) ||
      (d.timeout_max_ms && d.timeout_min_ms > d.timeout_max_ms) ||
      d.registry_reread_ms < -1 || (d.registry_reread_ms > 0 && d.registry_reread_ms < 100))
    return DSYS_EINVAL;
  dsys_upstream *u = calloc(1, sizeof *u);
  if (!u || !(u->sh = aligned_alloc(64, NSHARD * sizeof *u->sh))) {
    free(u);
    return DSYS_ENOMEM;
  }
  memset(u->sh, 0, NSHARD * sizeof *u->sh);
  pthread_rwlockattr_t ra;
  pthread_rwlockattr_init(&ra);
  pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_READER_NP);
  pthread_rwlock_init(&u->lk, &ra);
  pthread_rwlockattr_destroy(&ra);
  pthread_mutex_init(&u->mu, NULL);
  pthread_mutex_init(&u->reg_mu, NULL);
  pthread_cond_init(&u->cv, NULL);
  pthread_mutex_init(&u->lat_mu, NULL);
  u->clk = d.clock ? d.clock : dsys_clock_real();
  u->adaptive = d.adaptive_timeout != 0;
  u->hedge = d.hedge != 0;
  u->lat_on = u->adaptive || u->hedge;
  u->to_pct = d.timeout_percentile ? d.timeout_percentile : 99;
  u->hedge_pct = d.hedge_percentile ? d.hedge_percentile : 95;
  u->to_factor = d.timeout_factor ? d.timeout_factor : 4;
  u->to_min_us = (d.timeout_min_ms ? d.timeout_min_ms : 250) * 1000;
  u->hedge_fixed_us = u->hedge ? d.hedge_delay_ms * 1000 : 0;
  u->win_us = (d.latency_window_ms ? d.latency_window_ms : 10000) * 1000;
  u->min_samples = d.latency_min_samples ? d.latency_min_samples : 20;
  atomic_init(&u->hedge_us, u->hedge_fixed_us > 0 ? u->hedge_fixed_us : -1);
  if (u->lat_on && !(u->snap = calloc(NSNAP, sizeof *u->snap))) {
    dsys_upstream_free(u);
    return DSYS_ENOMEM;
  }
  u->count_all_5xx = d.count_5xx == DSYS_UPSTREAM_COUNT_ALL_5XX;
  u->service = strdup(d.service ? d.service : "upstream");
  u->health_path = strdup(d.health_path ? d.health_path : "/health");
  int rc = (!u->service || !u->health_path) ? DSYS_ENOMEM : 0;

  if (!rc) {
    dsys_balancer_options bo = {.size = sizeof bo, .policy = d.policy,
                                .when_none = d.when_none, .seed = d.seed};
    rc = dsys_balancer_new(&u->bal, &bo);
  }
  if (!rc && d.breaker) {
    const dsys_breaker_options *t = d.breaker;
    memcpy(&u->br_tmpl, t, t->size && t->size < sizeof u->br_tmpl ? t->size : sizeof u->br_tmpl);
  }
  if (!rc) {
    u->user_br_ev = u->br_tmpl.on_event;
    u->user_br_ud = u->br_tmpl.event_ud;
    u->open_wait_us = (u->br_tmpl.open_wait_ms ? u->br_tmpl.open_wait_ms : 30000) * 1000;
    dsys_breaker *probe_br; /* validate the template once */
    dsys_breaker_options bo = u->br_tmpl;
    bo.size = sizeof bo;
    bo.clock = u->clk;
    bo.name = NULL;
    bo.on_event = NULL;
    if (!(rc = dsys_breaker_new(&probe_br, &bo))) dsys_breaker_free(probe_br);
  }
  if (!rc) {
    dsys_retry_options ro = {0};
    if (d.retry)
      memcpy(&ro, d.retry, d.retry->size && d.retry->size < sizeof ro ? d.retry->size : sizeof ro);
    ro.size = sizeof ro;
    if (!ro.clock) ro.clock = u->clk;
    rc = dsys_retry_new(&u->retry, &ro);
    if (!rc) u->max_attempts = dsysi_retry_max_attempts(u->retry);
    int64_t per_try = ro.per_try_timeout_ms ? ro.per_try_timeout_ms : 5000;
    u->to_max_us = (d.timeout_max_ms ? d.timeout_max_ms : per_try > 0 ? per_try : 15000) * 1000;
    if (u->to_min_us > u->to_max_us) u->to_min_us = u->to_max_us;
  }
  if (!rc) {
    if (d.client) {
      u->client = d.client;
    } else {
      dsys_client_options co = {.size = sizeof co, .clock = u->clk};
      rc = dsys_client_new(&u->client, &co);
      u->own_client = !rc;
    }
  }
  if (!rc) {
    dsys_health_options ho = {0};
    if (d.health)
      memcpy(&ho, d.health, d.health->size && d.health->size < sizeof ho ? d.health->size : sizeof ho);
    ho.size = sizeof ho;
    ho.clock = u->clk;
    u->user_h_ev = ho.on_event;
    u->user_h_ud = ho.event_ud;
    ho.on_event = on_health;
    ho.event_ud = u;
    ho.probe = d.health_check ? probe_fn : NULL;
    ho.probe_ud = u;
    if (!ho.seed) ho.seed = d.seed;
    u->h_timeout_ms = ho.timeout_ms ? ho.timeout_ms : 1000;
    rc = dsys_health_new(&u->health, &ho);
  }
  if (!rc && d.registry) {
    u->reg = d.registry;
    rc = dsys_registry_watch(u->reg, on_change, u, &u->watch_id);
    u->watching = !rc;
    if (!rc) {
      pthread_mutex_lock(&u->reg_mu);
      rc = reg_resync(u, 0);
      pthread_mutex_unlock(&u->reg_mu);
    }
    int64_t every = d.registry_reread_ms ? d.registry_reread_ms : 10000;
    /* its own thread: a registry read may wait for the network */
    if (!rc && every > 0) rc = dsysi_ticker_start_thread(&u->reread, u->clk, every, reread_tick, u);
  }
  if (rc) {
    dsys_upstream_free(u);
    return rc;
  }
  *out = u;
  return 0;
}

void dsys_upstream_free(dsys_upstream *u) {
  if (!u) return;
  pthread_rwlock_wrlock(&u->lk);
  atomic_store(&u->closing, 1);
  pthread_rwlock_unlock(&u->lk);
  if (u->watching) dsys_registry_unwatch(u->reg, u->watch_id);
  dsysi_ticker_stop(&u->reread);
  /* calls waiting for a backoff: cancel their timers and end them */
  ucall *canceled = NULL;
  pthread_mutex_lock(&u->mu);
  for (ucall *c = u->backoffs, *nx; c; c = nx) {
    nx = c->next;
    if (dsys_timer_cancel(u->clk, c->timer) != 0) continue; /* running */
    unlink_call(&u->backoffs, c);
    c->next = canceled;
    canceled = c;
  }
  pthread_mutex_unlock(&u->mu);
  while (canceled) {
    ucall *c = canceled;
    canceled = c->next;
    finish(c, DSYS_ECANCELED, NULL);
  }
  /* calls and probes in flight: the own client cancels them now */
  if (u->own_client) {
    dsys_client_free(u->client);
    u->client = NULL;
  }
  pthread_mutex_lock(&u->mu);
  while (calls_in_flight(u) > 0 || atomic_load(&u->probes) > 0)
    pthread_cond_wait(&u->cv, &u->mu);
  u->no_timers = 1;
  for (size_t i = 0; i < u->n; i++) {
    uep *e = u->eps[i];
    if (e->br_timer && dsys_timer_cancel(u->clk, e->br_timer) == 0) {
      u->timers_out--;
      atomic_fetch_sub(&e->refs, 1); /* the set's reference remains */
    }
    e->br_timer = 0;
  }
  while (u->timers_out > 0) pthread_cond_wait(&u->cv, &u->mu);
  pthread_mutex_unlock(&u->mu);
  dsys_health_free(u->health);
  for (size_t i = 0; i < u->n; i++) ep_unref(u->eps[i]);
  free(u->eps);
  dsys_balancer_free(u->bal);
  dsys_retry_free(u->retry);
  pthread_rwlock_destroy(&u->lk);
  pthread_mutex_destroy(&u->mu);
  pthread_mutex_destroy(&u->reg_mu);
  pthread_mutex_destroy(&u->lat_mu);
  pthread_cond_destroy(&u->cv);
  free(u->snap);
  free(u->service);
  free(u->health_path);
  free(u->sh);
  free(u);
}
