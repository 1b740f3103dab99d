/* In-process cache (distsys/cache.h): a chained hash table, one LRU list,
 * in-flight loads shared by the callers that miss the same key. One mutex:
 * every operation under it is O(1) apart from evictions, and loaders run
 * outside it. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/cache.h>
#include "core/internal.h"
#include "core/rng.h"

#define ENTRY_OVERHEAD 64

typedef struct entry {
  char *key;
  uint64_t hash, id;
  void *val;
  size_t len;
  int negative;    /* a remembered "not found" */
  int refreshing;  /* a background load is replacing a stale value */
  int64_t born_ms; /* monotonic ms of the load or put */
  struct entry *hnext, *prev, *next; /* bucket chain; LRU list (head = newest) */
} entry;

/* A load in flight: the callers that missed the key wait for it. */
typedef struct flight {
  char *key;
  int done, rc, invalidated, refs;
  void *val;
  size_t len;
  struct flight *next;
} flight;

struct dsys_cache {
  dsys_cache_options o;
  pthread_mutex_t mu;
  pthread_cond_t cv; /* a flight finished, or a refresh thread ended */
  entry **buckets;
  size_t nbuckets;
  entry *head, *tail;
  flight *flights;
  uint64_t next_id;
  int refreshes; /* background refresh threads running */
  dsys_cache_stats st;
};

static uint64_t hash_key(const char *k) { return dsysi_hash64(k, strlen(k), 0x5bd1e995u); }

int dsys_cache_new(dsys_cache **out, const dsys_cache_options *opts) {
  if (!out) return DSYS_EINVAL;
  *out = NULL;
  dsys_cache_options o = {0};
  if (opts) {
    if (opts->size > sizeof o || (opts->size && opts->size < sizeof(size_t))) return DSYS_EINVAL;
    memcpy(&o, opts, opts->size ? opts->size : sizeof o);
  }
  if (o.ttl_ms < 0 || o.stale_ms < 0 || o.negative_ttl_ms < 0) return DSYS_EINVAL;
  if (!o.max_bytes) o.max_bytes = 64u << 20;
  if (!o.max_entries) o.max_entries = 100000;
  if (!o.ttl_ms) o.ttl_ms = 60000;
  if (!o.clock) o.clock = dsys_clock_real();
  dsys_cache *c = calloc(1, sizeof *c);
  if (!c) return DSYS_ENOMEM;
  c->o = o;
  c->nbuckets = 64;
  c->buckets = calloc(c->nbuckets, sizeof *c->buckets);
  if (!c->buckets) {
    free(c);
    return DSYS_ENOMEM;
  }
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  *out = c;
  return 0;
}

static entry *find(dsys_cache *c, const char *key, uint64_t h) {
  for (entry *e = c->buckets[h & (c->nbuckets - 1)]; e; e = e->hnext)
    if (e->hash == h && !strcmp(e->key, key)) return e;
  return NULL;
}

static void lru_unlink(dsys_cache *c, entry *e) {
  if (e->prev) e->prev->next = e->next;
  else c->head = e->next;
  if (e->next) e->next->prev = e->prev;
  else c->tail = e->prev;
  e->prev = e->next = NULL;
}

static void lru_push(dsys_cache *c, entry *e) {
  e->next = c->head;
  if (c->head) c->head->prev = e;
  c->head = e;
  if (!c->tail) c->tail = e;
}

static void drop(dsys_cache *c, entry *e) {
  entry **pp = &c->buckets[e->hash & (c->nbuckets - 1)];
  while (*pp != e) pp = &(*pp)->hnext;
  *pp = e->hnext;
  lru_unlink(c, e);
  c->st.entries--;
  c->st.bytes -= strlen(e->key) + e->len + ENTRY_OVERHEAD;
  free(e->key);
  free(e->val);
  free(e);
}

static void grow(dsys_cache *c) {
  size_t n = c->nbuckets * 2;
  entry **b = calloc(n, sizeof *b);
  if (!b) return; /* longer chains, still correct */
  for (size_t i = 0; i < c->nbuckets; i++)
    for (entry *e = c->buckets[i], *nx; e; e = nx) {
      nx = e->hnext;
      e->hnext = b[e->hash & (n - 1)];
      b[e->hash & (n - 1)] = e;
    }
  free(c->buckets);
  c->buckets = b;
  c->nbuckets = n;
}

/* Store key -> val (taken over, may be NULL for a negative entry). */
static int store_locked(dsys_cache *c, const char *key, void *val, size_t len, int negative) {
  uint64_t h = hash_key(key);
  size_t cost = strlen(key) + len + ENTRY_OVERHEAD;
  entry *old = find(c, key, h);
  if (old) drop(c, old);
  if (cost > c->o.max_bytes) {
    free(val);
    return 0;
  }
  entry *e = calloc(1, sizeof *e);
  char *k = e ? strdup(key) : NULL;
  if (!k) {
    free(e);
    free(val);
    return DSYS_ENOMEM;
  }
  e->key = k;
  e->hash = h;
  e->id = ++c->next_id;
  e->val = val;
  e->len = len;
  e->negative = negative;
  e->born_ms = dsys_clock_now_ms(c->o.clock);
  e->hnext = c->buckets[h & (c->nbuckets - 1)];
  c->buckets[h & (c->nbuckets - 1)] = e;
  lru_push(c, e);
  c->st.entries++;
  c->st.bytes += cost;
  while ((c->st.bytes > c->o.max_bytes || c->st.entries > c->o.max_entries) && c->tail != e) {
    drop(c, c->tail);
    c->st.evictions++;
  }
  if (c->st.entries > c->nbuckets) grow(c);
  return 0;
}

static void *copy_of(const void *v, size_t len) {
  void *p = malloc(len ? len : 1);
  if (p && len) memcpy(p, v, len);
  return p;
}

int dsys_cache_put(dsys_cache *c, const char *key, const void *value, size_t len) {
  if (!c || !key || (!value && len)) return DSYS_EINVAL;
  void *v = copy_of(value, len);
  if (!v) return DSYS_ENOMEM;
  pthread_mutex_lock(&c->mu);
  for (flight *f = c->flights; f; f = f->next)
    if (!strcmp(f->key, key)) f->invalidated = 1; /* older than this put */
  int e = store_locked(c, key, v, len, 0);
  pthread_mutex_unlock(&c->mu);
  return e;
}

int dsys_cache_invalidate(dsys_cache *c, const char *key) {
  if (!c || !key) return DSYS_EINVAL;
  pthread_mutex_lock(&c->mu);
  entry *e = find(c, key, hash_key(key));
  if (e) {
    drop(c, e);
    c->st.invalidations++;
  }
  for (flight *f = c->flights; f; f = f->next)
    if (!strcmp(f->key, key)) f->invalidated = 1;
  pthread_mutex_unlock(&c->mu);
  return 0;
}

void dsys_cache_clear(dsys_cache *c) {
  if (!c) return;
  pthread_mutex_lock(&c->mu);
  while (c->head) {
    drop(c, c->head);
    c->st.invalidations++;
  }
  for (flight *f = c->flights; f; f = f->next) f->invalidated = 1;
  pthread_mutex_unlock(&c->mu);
}

/* ---- stale refresh ---- */

typedef struct refresh {
  dsys_cache *c;
  char *key;
  uint64_t id; /* the entry it refreshes */
  dsys_cache_load_fn load;
  void *ud;
} refresh;

static void *refresh_main(void *p) {
  refresh *r = p;
  dsys_cache *c = r->c;
  void *v = NULL;
  size_t len = 0;
  int rc = r->load(r->ud, r->key, &v, &len);
  pthread_mutex_lock(&c->mu);
  c->st.loads++;
  if (rc && rc != DSYS_ENOTFOUND) c->st.load_errors++;
  entry *e = find(c, r->key, hash_key(r->key));
  if (e && e->id == r->id) { /* not invalidated or replaced meanwhile */
    if (!rc) {
      store_locked(c, r->key, v, len, 0);
      v = NULL;
    } else if (rc == DSYS_ENOTFOUND) {
      drop(c, e); /* gone at the source */
    } else {
      e->refreshing = 0; /* keep serving it stale; the next get retries */
    }
  }
  free(v);
  c->refreshes--;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  free(r->key);
  free(r);
  return NULL;
}

/* Start one background load for a stale entry (under the lock). */
static void start_refresh(dsys_cache *c, entry *e, dsys_cache_load_fn load, void *ud) {
  refresh *r = calloc(1, sizeof *r);
  if (!r || !(r->key = strdup(e->key))) {
    free(r);
    return;
  }
  r->c = c;
  r->id = e->id;
  r->load = load;
  r->ud = ud;
  pthread_t t;
  pthread_attr_t a;
  pthread_attr_init(&a);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  if (pthread_create(&t, &a, refresh_main, r)) {
    free(r->key);
    free(r);
  } else {
    e->refreshing = 1;
    c->refreshes++;
  }
  pthread_attr_destroy(&a);
}

/* ---- get ---- */

static int hand_out(const void *v, size_t len, void **value, size_t *lenp) {
  *value = copy_of(v, len);
  if (!*value) return DSYS_ENOMEM;
  if (lenp) *lenp = len;
  return 0;
}

static void flight_unref(dsys_cache *c, flight *f) {
  if (--f->refs) return;
  flight **pp = &c->flights;
  while (*pp != f) pp = &(*pp)->next;
  *pp = f->next;
  free(f->key);
  free(f->val);
  free(f);
}

int dsys_cache_get(dsys_cache *c, const char *key, dsys_cache_load_fn load, void *ud,
                   void **value, size_t *len) {
  if (!c || !key || !value) return DSYS_EINVAL;
  *value = NULL;
  if (len) *len = 0;
  pthread_mutex_lock(&c->mu);
  int64_t now = dsys_clock_now_ms(c->o.clock);
  entry *e = find(c, key, hash_key(key));
  if (e) {
    int64_t age = now - e->born_ms;
    int rc = -1;
    if (e->negative && age < c->o.negative_ttl_ms) {
      c->st.negative_hits++;
      rc = DSYS_ENOTFOUND;
    } else if (!e->negative && age < c->o.ttl_ms) {
      c->st.hits++;
      rc = hand_out(e->val, e->len, value, len);
    } else if (!e->negative && age < c->o.ttl_ms + c->o.stale_ms && load) {
      c->st.stale_hits++;
      if (!e->refreshing) start_refresh(c, e, load, ud);
      rc = hand_out(e->val, e->len, value, len);
    }
    if (rc != -1) {
      lru_unlink(c, e);
      lru_push(c, e);
      pthread_mutex_unlock(&c->mu);
      return rc;
    }
    drop(c, e); /* expired */
  }
  c->st.misses++;
  if (!load) {
    pthread_mutex_unlock(&c->mu);
    return DSYS_ENOTFOUND;
  }
  flight *f = c->flights;
  while (f && strcmp(f->key, key)) f = f->next;
  if (f) { /* someone is loading it: wait for that load */
    f->refs++;
    while (!f->done) pthread_cond_wait(&c->cv, &c->mu);
    int rc = f->rc ? f->rc : hand_out(f->val, f->len, value, len);
    flight_unref(c, f);
    pthread_mutex_unlock(&c->mu);
    return rc;
  }
  f = calloc(1, sizeof *f);
  if (!f || !(f->key = strdup(key))) {
    free(f);
    pthread_mutex_unlock(&c->mu);
    return DSYS_ENOMEM;
  }
  f->refs = 1;
  f->next = c->flights;
  c->flights = f;
  pthread_mutex_unlock(&c->mu);
  void *v = NULL;
  size_t n = 0;
  int rc = load(ud, key, &v, &n);
  if (!rc && !v && n) rc = DSYS_EINVAL; /* a loader bug: no block for its length */
  pthread_mutex_lock(&c->mu);
  c->st.loads++;
  if (rc && rc != DSYS_ENOTFOUND) c->st.load_errors++;
  if (!f->invalidated) { /* a value loaded before an invalidation is not kept */
    if (!rc) {
      void *keep = copy_of(v, n);
      if (keep) store_locked(c, key, keep, n, 0);
    } else if (rc == DSYS_ENOTFOUND && c->o.negative_ttl_ms > 0) {
      store_locked(c, key, NULL, 0, 1);
    }
  }
  f->done = 1;
  f->rc = rc;
  f->val = rc ? NULL : v;
  f->len = n;
  if (rc) free(v);
  pthread_cond_broadcast(&c->cv);
  rc = rc ? rc : hand_out(f->val, f->len, value, len);
  flight_unref(c, f);
  pthread_mutex_unlock(&c->mu);
  return rc;
}

void dsys_cache_get_stats(dsys_cache *c, dsys_cache_stats *out) {
  if (!out) return;
  memset(out, 0, sizeof *out);
  if (!c) return;
  pthread_mutex_lock(&c->mu);
  *out = c->st;
  pthread_mutex_unlock(&c->mu);
}

void dsys_cache_free(dsys_cache *c) {
  if (!c) return;
  pthread_mutex_lock(&c->mu);
  while (c->refreshes) pthread_cond_wait(&c->cv, &c->mu);
  while (c->head) drop(c, c->head);
  pthread_mutex_unlock(&c->mu);
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
  free(c->buckets);
  free(c);
}
