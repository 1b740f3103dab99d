/* Lease locks with fencing tokens and leader election (distsys/lock.h):
 * the front end over the lock backends. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <json-c/json.h>
#include <distsys/lock.h>
#include "core/internal.h"
#include "core/json.h"
#include "core/plugin.h"
#include "core/random.h"
#include "core/ticker.h"

struct dsys_locks {
  const dsys_lock_ops *ops;
  void *state;
  dsys_clock *clock;
  pthread_mutex_t mu; /* releases wake waiters of this handle */
  pthread_cond_t cv;
  uint64_t releases;
};

struct dsys_lock {
  dsys_locks *ls;
  char name[DSYS_LOCK_MAX_NAME + 1];
  char owner[DSYS_LOCK_MAX_OWNER];
  int64_t token;
  int64_t ttl_ms;
  pthread_mutex_t mu; /* guards lease_end, lost */
  int64_t lease_end;  /* wall ms: the lease as of our last renewal */
  int lost;
  dsys_lock_lost_fn on_lost;
  void *ud;
  dsysi_ticker renewer;
};

static int check_ops(const dsys_lock_ops *o) {
  return o && o->version >= 1 && o->version <= DSYS_LOCK_OPS_VERSION && o->name && o->open &&
         o->close && o->acquire && o->renew && o->release && o->holder;
}
static int usable(const void *ops) { return check_ops(ops); }
static dsysi_family backends = DSYSI_FAMILY("lock", usable, NULL);

int dsys_locks_register_backend(const dsys_lock_ops *ops) {
  return dsysi_family_register(&backends, ops);
}

int dsys_locks_open(dsys_locks **out, const char *url, const dsys_locks_options *opts) {
  if (!out) return DSYS_EINVAL;
  *out = NULL;
  dsys_locks_options o = {0};
  if (opts) {
    if (opts->size > sizeof o || (opts->size && opts->size < sizeof(size_t))) return DSYS_EINVAL;
    memcpy(&o, opts, opts->size ? opts->size : sizeof o);
  }
  const void *ops;
  const char *loc;
  int e = dsysi_family_for_url(&backends, url, &ops, &loc);
  if (e) return e;
  dsys_locks *ls = calloc(1, sizeof *ls);
  if (!ls) return DSYS_ENOMEM;
  ls->ops = ops;
  ls->state = calloc(1, ls->ops->state_size ? ls->ops->state_size : 1);
  if (!ls->state) {
    free(ls);
    return DSYS_ENOMEM;
  }
  ls->clock = o.clock ? o.clock : dsys_clock_real();
  pthread_mutex_init(&ls->mu, NULL);
  pthread_cond_init(&ls->cv, NULL);
  char err[256] = "";
  e = ls->ops->open(ls->state, loc, err, sizeof err);
  if (e) {
    dsysi_log(DSYS_LOG_ERROR, "lock", "open %s failed: %s", url, err);
    free(ls->state);
    free(ls);
    return e;
  }
  *out = ls;
  return 0;
}

void dsys_locks_close(dsys_locks *ls) {
  if (!ls) return;
  ls->ops->close(ls->state);
  pthread_mutex_destroy(&ls->mu);
  pthread_cond_destroy(&ls->cv);
  free(ls->state);
  free(ls);
}

static int check_name(const char *s, size_t max) {
  return s && *s && strlen(s) < max ? 0 : DSYS_EINVAL;
}

/* HOSTNAME:PID:RANDOM: unique per acquisition, readable in dsys_lock_holder. */
static void default_owner(char *out, size_t n) {
  char host[64] = "host";
  if (gethostname(host, sizeof host - 1)) snprintf(host, sizeof host, "host");
  host[sizeof host - 1] = 0;
  snprintf(out, n, "%s:%d:%08llx", host, (int)getpid(),
           (unsigned long long)(dsysi_fast_rand() & 0xffffffffu));
}

static void mark_lost(dsys_lock *lk) {
  pthread_mutex_lock(&lk->mu);
  int first = !lk->lost;
  lk->lost = 1;
  pthread_mutex_unlock(&lk->mu);
  if (first) {
    dsysi_log(DSYS_LOG_WARN, "lock", "lock %s (token %lld) lost", lk->name,
              (long long)lk->token);
    if (lk->on_lost) lk->on_lost(lk->ud, lk);
  }
}

int dsys_lock_renew(dsys_lock *lk) {
  if (!lk) return DSYS_EINVAL;
  pthread_mutex_lock(&lk->mu);
  int lost = lk->lost;
  pthread_mutex_unlock(&lk->mu);
  if (lost) return DSYS_ELEASE;
  int64_t now = dsys_clock_wall_ms(lk->ls->clock);
  int e = lk->ls->ops->renew(lk->ls->state, lk->name, lk->owner, lk->token, now, lk->ttl_ms);
  if (!e) {
    pthread_mutex_lock(&lk->mu);
    lk->lease_end = now + lk->ttl_ms;
    pthread_mutex_unlock(&lk->mu);
  } else if (e == DSYS_ELEASE) {
    mark_lost(lk);
  }
  return e;
}

/* Every ttl/3: renew; a transient failure is retried at the next tick
 * until the lease we last obtained is over, then the lock counts as lost
 * (another process may take it from then on). */
static void renew_tick(void *ud) {
  dsys_lock *lk = ud;
  int e = dsys_lock_renew(lk);
  if (e && e != DSYS_ELEASE) {
    pthread_mutex_lock(&lk->mu);
    int over = dsys_clock_wall_ms(lk->ls->clock) >= lk->lease_end;
    pthread_mutex_unlock(&lk->mu);
    if (over) mark_lost(lk);
  }
}

/* A pause between tries: growing from 5 ms to 100 ms, jittered by up to
 * half, so waiters in several processes do not poll in step. */
static int64_t pause_ms(int attempt) {
  int64_t p = 5LL << (attempt < 5 ? attempt : 5);
  if (p > 100) p = 100;
  return p / 2 + (int64_t)(dsysi_fast_rand() % (uint64_t)(p / 2 + 1));
}

/* Fairness (the default): a waiter takes the name's ticket, a lock named
 * "next-in-line/NAME" with a lease of its own, and while someone else
 * holds that ticket nobody else takes NAME, not even a holder that
 * releases and comes straight back. The ticket holder watches NAME every
 * TICKET_POLL_MS and takes it once free; the others poll the ticket with
 * the same jittered pause whatever their wait so far, so each has the same
 * chance to be next (a queue one deep: not FIFO, but no waiter starves
 * behind a fast re-acquirer). A dead ticket holder blocks the others for
 * its ticket lease at most. */
#define TICKET_PREFIX "next-in-line/"
#define TICKET_TTL_MAX_MS 2000
#define TICKET_POLL_MS 4
#define QUEUED_POLL_MS 20

typedef struct ticket {
  char name[DSYS_LOCK_MAX_NAME + sizeof TICKET_PREFIX];
  int64_t ttl_ms, token, end; /* token 0: not held; end: wall ms of its lease */
} ticket;

/* Whether NAME may be tried now: 0 yes, DSYS_EBUSY (someone else is next
 * in line or, for the ticket holder, NAME is still held), or an error. */
static int may_try(dsys_locks *ls, dsys_lock *lk, ticket *t, int64_t now) {
  dsys_lock_info hi;
  int e;
  if (t->token) { /* next in line: a read, and the write only when free */
    e = ls->ops->holder(ls->state, lk->name, now, &hi);
    return e == DSYS_ENOTFOUND ? 0 : e ? e : DSYS_EBUSY;
  }
  e = ls->ops->holder(ls->state, t->name, now, &hi);
  if (e == DSYS_ENOTFOUND) return 0;
  return e ? e : strcmp(hi.owner, lk->owner) ? DSYS_EBUSY : 0;
}

/* After a busy try: take the ticket when nobody has it, keep it renewed
 * while waiting. Errors are the backend's (the caller gives up). */
static int keep_ticket(dsys_locks *ls, dsys_lock *lk, ticket *t, int64_t now) {
  if (!t->token) {
    int e = ls->ops->acquire(ls->state, t->name, lk->owner, now, t->ttl_ms, &t->token, NULL);
    if (e == DSYS_EBUSY) return 0;
    if (!e) t->end = now + t->ttl_ms;
    return e;
  }
  if (now < t->end - t->ttl_ms / 2) return 0;
  int e = ls->ops->renew(ls->state, t->name, lk->owner, t->token, now, t->ttl_ms);
  if (!e) t->end = now + t->ttl_ms;
  if (e == DSYS_ELEASE) { /* it ran out (a long stall): queue again */
    t->token = 0;
    e = 0;
  }
  return e;
}

int dsys_lock_acquire(dsys_locks *ls, const char *name, int64_t wait_ms,
                      const dsys_lock_options *opts, dsys_lock **out) {
  if (!out) return DSYS_EINVAL;
  *out = NULL;
  dsys_lock_options o = {0};
  if (opts) {
    if (opts->size > sizeof o || (opts->size && opts->size < sizeof(size_t))) return DSYS_EINVAL;
    memcpy(&o, opts, opts->size ? opts->size : sizeof o);
  }
  if (!ls || check_name(name, DSYS_LOCK_MAX_NAME + 1) || wait_ms < 0) return DSYS_EINVAL;
  if (o.owner && check_name(o.owner, DSYS_LOCK_MAX_OWNER)) return DSYS_EINVAL;
  if (!o.ttl_ms) o.ttl_ms = DSYS_LOCK_DEFAULT_TTL_MS;
  if (o.ttl_ms < 100) return DSYS_EINVAL;
  dsys_lock *lk = calloc(1, sizeof *lk);
  if (!lk) return DSYS_ENOMEM;
  lk->ls = ls;
  snprintf(lk->name, sizeof lk->name, "%s", name);
  if (o.owner) snprintf(lk->owner, sizeof lk->owner, "%s", o.owner);
  else default_owner(lk->owner, sizeof lk->owner);
  lk->ttl_ms = o.ttl_ms;
  lk->on_lost = o.on_lost;
  lk->ud = o.ud;
  pthread_mutex_init(&lk->mu, NULL);
  ticket t = {.ttl_ms = o.ttl_ms < TICKET_TTL_MAX_MS ? o.ttl_ms : TICKET_TTL_MAX_MS};
  snprintf(t.name, sizeof t.name, TICKET_PREFIX "%s", name);
  int64_t deadline = dsys_clock_now_us(ls->clock) + wait_ms * 1000;
  int e;
  for (int attempt = 0;; attempt++) {
    pthread_mutex_lock(&ls->mu);
    uint64_t seen = ls->releases;
    pthread_mutex_unlock(&ls->mu);
    int64_t now = dsys_clock_wall_ms(ls->clock);
    int queued = 0; /* someone else holds the ticket */
    e = o.unfair ? 0 : may_try(ls, lk, &t, now);
    if (e == DSYS_EBUSY && !t.token) queued = 1;
    if (!e) e = ls->ops->acquire(ls->state, lk->name, lk->owner, now, lk->ttl_ms, &lk->token, NULL);
    if (e != DSYS_EBUSY) break;
    if (!o.unfair && wait_ms && !queued && (e = keep_ticket(ls, lk, &t, now))) break;
    e = DSYS_EBUSY;
    int64_t left_us = deadline - dsys_clock_now_us(ls->clock);
    if (left_us <= 0) {
      e = wait_ms ? DSYS_ETIMEDOUT : DSYS_EBUSY;
      break;
    }
    int64_t p_ms = t.token ? TICKET_POLL_MS
                   : queued ? QUEUED_POLL_MS / 2 + (int64_t)(dsysi_fast_rand() % (QUEUED_POLL_MS + 1))
                            : pause_ms(attempt);
    int64_t p_us = p_ms * 1000;
    if (p_us > left_us) p_us = left_us;
    if (dsys_clock_is_fake(ls->clock)) { /* tests: time moves when they say */
      dsys_clock_sleep_us(ls->clock, p_us);
      continue;
    }
    /* wait for a release through this handle, or the pause */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)(p_us % 1000000) * 1000;
    ts.tv_sec += p_us / 1000000 + ts.tv_nsec / 1000000000;
    ts.tv_nsec %= 1000000000;
    pthread_mutex_lock(&ls->mu);
    while (ls->releases == seen &&
           pthread_cond_timedwait(&ls->cv, &ls->mu, &ts) != ETIMEDOUT) {
    }
    pthread_mutex_unlock(&ls->mu);
  }
  /* the ticket's job is done either way (a failure to free it: it runs out) */
  if (t.token) ls->ops->release(ls->state, t.name, lk->owner, t.token);
  if (e) {
    pthread_mutex_destroy(&lk->mu);
    free(lk);
    return e;
  }
  lk->lease_end = dsys_clock_wall_ms(ls->clock) + lk->ttl_ms;
  if (!o.manual_renew) {
    int64_t period = lk->ttl_ms / 3 > 0 ? lk->ttl_ms / 3 : 1;
    e = dsysi_ticker_start_thread(&lk->renewer, ls->clock, period, renew_tick, lk);
    if (e) {
      ls->ops->release(ls->state, lk->name, lk->owner, lk->token);
      pthread_mutex_destroy(&lk->mu);
      free(lk);
      return e;
    }
  }
  *out = lk;
  return 0;
}

int64_t dsys_lock_token(const dsys_lock *lk) { return lk ? lk->token : 0; }

int dsys_lock_held(const dsys_lock *lk) {
  if (!lk) return 0;
  dsys_lock *m = (dsys_lock *)lk;
  pthread_mutex_lock(&m->mu);
  int held = !m->lost && dsys_clock_wall_ms(m->ls->clock) < m->lease_end;
  pthread_mutex_unlock(&m->mu);
  return held;
}

int dsys_lock_release(dsys_lock *lk) {
  if (!lk) return 0;
  dsysi_ticker_stop(&lk->renewer);
  dsys_locks *ls = lk->ls;
  int e = lk->lost ? DSYS_ELEASE : ls->ops->release(ls->state, lk->name, lk->owner, lk->token);
  pthread_mutex_lock(&ls->mu);
  ls->releases++;
  pthread_cond_broadcast(&ls->cv);
  pthread_mutex_unlock(&ls->mu);
  pthread_mutex_destroy(&lk->mu);
  free(lk);
  return e;
}

int dsys_lock_holder(dsys_locks *ls, const char *name, dsys_lock_info *out) {
  if (!ls || !out || check_name(name, DSYS_LOCK_MAX_NAME + 1)) return DSYS_EINVAL;
  memset(out, 0, sizeof *out);
  return ls->ops->holder(ls->state, name, dsys_clock_wall_ms(ls->clock), out);
}

/* The fence kept in an item's metadata, or 0. */
static int64_t item_fence(const dsys_item *it) {
  json_object *m = NULL, *f;
  int64_t v = 0;
  if (it && !dsysi_json_parse_object(it->metadata, strlen(it->metadata), &m) &&
      json_object_object_get_ex(m, "fence", &f))
    v = json_object_get_int64(f);
  json_object_put(m);
  return v;
}

int dsys_lock_guarded_put(dsys_store *s, const char *key, const char *value, int64_t token) {
  if (!s || !key || !value || token <= 0) return DSYS_EINVAL;
  char meta[48];
  snprintf(meta, sizeof meta, "{\"fence\":%lld}", (long long)token);
  for (int i = 0; i < 100; i++) {
    dsys_item *cur = NULL;
    int e = dsys_store_get(s, key, &cur);
    if (e == DSYS_ENOTFOUND) {
      dsys_store_write w = {.size = sizeof w, .metadata = meta};
      e = dsys_store_create(s, key, value, &w, NULL);
      if (e == DSYS_EEXIST) continue; /* a racing writer created it */
      return e;
    }
    if (e) return e;
    int64_t fence = item_fence(cur), version = cur->version;
    dsys_item_free(cur);
    if (fence > token) return DSYS_ELEASE;
    dsys_store_write w = {.size = sizeof w, .metadata = meta, .expected_version = version};
    e = dsys_store_update(s, key, value, &w, NULL);
    if (e != DSYS_ECONFLICT && e != DSYS_ENOTFOUND) return e;
  }
  return DSYS_EBUSY;
}

/* ---- election ---- */

struct dsys_election {
  dsys_locks *ls;
  char lock_name[DSYS_LOCK_MAX_NAME + 1];
  char candidate[DSYS_LOCK_MAX_OWNER];
  int64_t ttl_ms;
  dsys_election_fn on_change;
  void *ud;
  pthread_mutex_t mu; /* guards lk */
  dsys_lock *lk;      /* held while leader */
  dsysi_ticker ticker;
  int owns_ls;        /* opened by dsys_election_open: closed on resign */
};

static int election_lock_name(const char *name, char *out, size_t n) {
  if (check_name(name, DSYS_LOCK_MAX_NAME + 1 - 9)) return DSYS_EINVAL;
  snprintf(out, n, "election/%s", name);
  return 0;
}

/* Every ttl/3: a leader whose lock was lost steps down; a follower tries
 * to take the lock. Role changes are reported outside the lock. */
static void election_tick(void *ud) {
  dsys_election *e = ud;
  int change = -1;
  int64_t token = 0;
  pthread_mutex_lock(&e->mu);
  if (e->lk && !dsys_lock_held(e->lk)) {
    dsys_lock_release(e->lk);
    e->lk = NULL;
    change = 0;
  }
  if (!e->lk) {
    dsys_lock_options lo = {.size = sizeof lo, .ttl_ms = e->ttl_ms, .owner = e->candidate};
    if (!dsys_lock_acquire(e->ls, e->lock_name, 0, &lo, &e->lk)) {
      change = 1;
      token = dsys_lock_token(e->lk);
    }
  }
  pthread_mutex_unlock(&e->mu);
  if (change >= 0 && e->on_change) e->on_change(e->ud, change, token);
}

int dsys_election_campaign(dsys_locks *ls, const char *name, const dsys_election_options *opts,
                           dsys_election **out) {
  if (!out) return DSYS_EINVAL;
  *out = NULL;
  dsys_election_options o = {0};
  if (opts) {
    if (opts->size > sizeof o || (opts->size && opts->size < sizeof(size_t))) return DSYS_EINVAL;
    memcpy(&o, opts, opts->size ? opts->size : sizeof o);
  }
  if (!ls) return DSYS_EINVAL;
  if (o.candidate && check_name(o.candidate, DSYS_LOCK_MAX_OWNER)) return DSYS_EINVAL;
  if (!o.ttl_ms) o.ttl_ms = DSYS_LOCK_DEFAULT_TTL_MS;
  if (o.ttl_ms < 100) return DSYS_EINVAL;
  dsys_election *e = calloc(1, sizeof *e);
  if (!e) return DSYS_ENOMEM;
  if (election_lock_name(name, e->lock_name, sizeof e->lock_name)) {
    free(e);
    return DSYS_EINVAL;
  }
  e->ls = ls;
  e->ttl_ms = o.ttl_ms;
  e->on_change = o.on_change;
  e->ud = o.ud;
  if (o.candidate) snprintf(e->candidate, sizeof e->candidate, "%s", o.candidate);
  else default_owner(e->candidate, sizeof e->candidate);
  pthread_mutex_init(&e->mu, NULL);
  election_tick(e); /* at once: a single candidate leads without waiting */
  int rc = dsysi_ticker_start_thread(&e->ticker, ls->clock, e->ttl_ms / 3, election_tick, e);
  if (rc) {
    dsys_lock_release(e->lk);
    pthread_mutex_destroy(&e->mu);
    free(e);
    return rc;
  }
  *out = e;
  return 0;
}

int dsys_election_open(const char *url, const char *name, const dsys_election_options *o,
                       dsys_election **out) {
  if (!out) return DSYS_EINVAL;
  *out = NULL;
  dsys_locks *ls = NULL;
  int e = dsys_locks_open(&ls, url, NULL);
  if (!e) e = dsys_election_campaign(ls, name, o, out);
  if (e) {
    dsys_locks_close(ls);
    return e;
  }
  (*out)->owns_ls = 1;
  return 0;
}

int dsys_election_is_leader(dsys_election *e, int64_t *token) {
  if (!e) return 0;
  pthread_mutex_lock(&e->mu);
  int leader = e->lk && dsys_lock_held(e->lk);
  if (token) *token = leader ? dsys_lock_token(e->lk) : 0;
  pthread_mutex_unlock(&e->mu);
  return leader;
}

int dsys_election_leader(dsys_locks *ls, const char *name, dsys_lock_info *out) {
  char ln[DSYS_LOCK_MAX_NAME + 1];
  if (!ls || !out || election_lock_name(name, ln, sizeof ln)) return DSYS_EINVAL;
  return dsys_lock_holder(ls, ln, out);
}

void dsys_election_resign(dsys_election *e) {
  if (!e) return;
  dsysi_ticker_stop(&e->ticker);
  pthread_mutex_lock(&e->mu);
  dsys_lock *lk = e->lk;
  e->lk = NULL;
  pthread_mutex_unlock(&e->mu);
  if (lk) {
    if (e->on_change) e->on_change(e->ud, 0, dsys_lock_token(lk));
    dsys_lock_release(lk);
  }
  pthread_mutex_destroy(&e->mu);
  if (e->owns_ls) dsys_locks_close(e->ls);
  free(e);
}
