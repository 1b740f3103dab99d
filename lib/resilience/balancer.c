/* Load balancer: round robin, smooth weighted RR, P2C least request, random,
 * ring hash and Maglev. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/balancer.h>
#include <distsys/util.h>
#include "core/internal.h"
#include "core/rng.h"

#define MAX_ENDPOINTS (1u << 20)
#define IDX_BITS 24
#define MAX_WEIGHT 10000u
#define MAX_RING_POINTS (1u << 22)

typedef struct ep {
  char *id;
  size_t idlen;
  uint32_t weight;
  int available;
  atomic_uint active;          /* changed under the read lock */
  atomic_uint_fast64_t picks;  /* likewise */
  uint64_t serial;
  int64_t cw; /* smooth WRR current weight */
  void *ud;
} ep;

typedef struct ring_pt {
  uint64_t h;
  uint32_t idx;
} ring_pt;

/* Locking: picks and releases come from every event loop on every
 * request. Round robin and the hash policies pick under the read lock
 * (the cursor and the counters are atomics), so one loop never waits for
 * another; what changes the endpoint set or shared policy state (weighted
 * round robin's current weights, the random generator, P2C's scratch
 * array, a table rebuild) takes the write lock, which is preferred, so
 * that a steady stream of picks cannot starve it. */
struct dsys_balancer {
  pthread_rwlock_t lk;
  int policy, when_none;
  uint32_t vnodes, msize;
  uint64_t rng;
  ep *eps;
  size_t n, cap;
  uint32_t *scratch;
  atomic_size_t cursor;
  uint64_t next_serial;
  int tables_dirty;
  ring_pt *ring;
  size_t nring;
  uint32_t *maglev;
};

/* Filter for one pass: need available? and an index to skip (or SIZE_MAX). */
typedef struct filt {
  int need_avail;
  size_t skip;
} filt;

static inline int passes(const dsys_balancer *b, size_t i, const filt *f) {
  return i != f->skip && (!f->need_avail || b->eps[i].available);
}

static const char *const policy_names[] = {"round_robin", "weighted_round_robin",
                                           "least_request", "random",
                                           "ring_hash", "maglev"};

const char *dsys_lb_policy_name(int p) {
  return p >= 0 && p <= DSYS_LB_MAGLEV ? policy_names[p] : NULL;
}

/* Names compare with '-' and '_' as the same character, so that command
 * lines can say "round-robin". */
static int same_name(const char *a, const char *b) {
  for (; *a && *b; a++, b++)
    if (*a != *b && !((*a == '-' || *a == '_') && (*b == '-' || *b == '_'))) return 0;
  return *a == *b;
}

int dsys_lb_policy_parse(const char *name, int32_t *out) {
  if (!name || !out) return DSYS_EINVAL;
  for (int i = 0; i <= DSYS_LB_MAGLEV; i++)
    if (same_name(name, policy_names[i])) return *out = i, 0;
  return DSYS_EINVAL;
}

static int is_prime(uint32_t x) {
  if (x < 2) return 0;
  for (uint32_t d = 2; (uint64_t)d * d <= x; d++)
    if (x % d == 0) return 0;
  return 1;
}

int dsys_balancer_new(dsys_balancer **out, const dsys_balancer_options *o) {
  if (!out) return DSYS_EINVAL;
  dsys_balancer_options d = {0};
  if (o) memcpy(&d, o, o->size && o->size < sizeof d ? o->size : sizeof d);
  if (d.policy < 0 || d.policy > DSYS_LB_MAGLEV) return DSYS_EINVAL;
  if (d.when_none != DSYS_LB_PANIC && d.when_none != DSYS_LB_FAIL_FAST) return DSYS_EINVAL;
  if (d.maglev_size && (!is_prime(d.maglev_size) || d.maglev_size > 1000003))
    return DSYS_EINVAL;
  if (d.ring_vnodes > 10000) return DSYS_EINVAL;
  dsys_balancer *b = calloc(1, sizeof *b);
  if (!b) return DSYS_ENOMEM;
  b->policy = d.policy;
  b->when_none = d.when_none;
  b->vnodes = d.ring_vnodes ? d.ring_vnodes : 160;
  b->msize = d.maglev_size ? d.maglev_size : 65537;
  b->rng = d.seed;
  if (!b->rng) dsys_random_bytes(&b->rng, sizeof b->rng);
  b->next_serial = 1;
  pthread_rwlockattr_t a;
  pthread_rwlockattr_init(&a);
  pthread_rwlockattr_setkind_np(&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init(&b->lk, &a);
  pthread_rwlockattr_destroy(&a);
  *out = b;
  return 0;
}

void dsys_balancer_free(dsys_balancer *b) {
  if (!b) return;
  for (size_t i = 0; i < b->n; i++) free(b->eps[i].id);
  free(b->eps);
  free(b->scratch);
  free(b->ring);
  free(b->maglev);
  pthread_rwlock_destroy(&b->lk);
  free(b);
}

static size_t find(const dsys_balancer *b, const char *id) {
  for (size_t i = 0; i < b->n; i++)
    if (!strcmp(b->eps[i].id, id)) return i;
  return SIZE_MAX;
}

static int valid_id(const char *id) {
  if (!id) return 0;
  size_t l = strlen(id);
  return l >= 1 && l <= DSYS_BALANCER_ID_MAX;
}

int dsys_balancer_add(dsys_balancer *b, const char *id, uint32_t weight, void *ud) {
  if (!b || !valid_id(id) || weight > MAX_WEIGHT) return DSYS_EINVAL;
  if (!weight) weight = 1;
  int rc = 0;
  pthread_rwlock_wrlock(&b->lk);
  if (find(b, id) != SIZE_MAX) {
    rc = DSYS_EEXIST;
  } else if (b->n >= MAX_ENDPOINTS ||
             (b->policy == DSYS_LB_MAGLEV && b->n >= b->msize)) {
    rc = DSYS_ERANGE;
  } else {
    /* Both arrays grow from the same capacity to the same new one; b->cap
     * moves last, so a failure never leaves it above either array's size. */
    size_t cap_scratch = b->cap;
    if (dsysi_grow(&b->scratch, &cap_scratch, b->n + 1, sizeof *b->scratch, 8) ||
        dsysi_grow(&b->eps, &b->cap, b->n + 1, sizeof *b->eps, 8))
      rc = DSYS_ENOMEM;
    char *copy = rc ? NULL : strdup(id);
    if (!rc && !copy) rc = DSYS_ENOMEM;
    if (!rc) {
      ep *e = &b->eps[b->n++];
      memset(e, 0, sizeof *e);
      e->id = copy;
      e->idlen = strlen(copy);
      e->weight = weight;
      e->available = 1;
      e->serial = b->next_serial++;
      e->ud = ud;
      b->tables_dirty = 1;
      for (size_t i = 0; i < b->n; i++) b->eps[i].cw = 0;
    }
  }
  pthread_rwlock_unlock(&b->lk);
  return rc;
}

int dsys_balancer_remove(dsys_balancer *b, const char *id) {
  if (!b || !id) return DSYS_EINVAL;
  int rc = 0;
  pthread_rwlock_wrlock(&b->lk);
  size_t i = find(b, id);
  if (i == SIZE_MAX) {
    rc = DSYS_ENOTFOUND;
  } else {
    free(b->eps[i].id);
    memmove(&b->eps[i], &b->eps[i + 1], (b->n - i - 1) * sizeof *b->eps);
    b->n--;
    size_t c = atomic_load(&b->cursor);
    if (c > i) atomic_store(&b->cursor, c - 1);
    b->tables_dirty = 1;
    for (size_t k = 0; k < b->n; k++) b->eps[k].cw = 0;
  }
  pthread_rwlock_unlock(&b->lk);
  return rc;
}

int dsys_balancer_set_weight(dsys_balancer *b, const char *id, uint32_t weight) {
  if (!b || !id || weight > MAX_WEIGHT) return DSYS_EINVAL;
  if (!weight) weight = 1;
  int rc = 0;
  pthread_rwlock_wrlock(&b->lk);
  size_t i = find(b, id);
  if (i == SIZE_MAX) {
    rc = DSYS_ENOTFOUND;
  } else if (b->eps[i].weight != weight) {
    b->eps[i].weight = weight;
    b->tables_dirty = 1;
    for (size_t k = 0; k < b->n; k++) b->eps[k].cw = 0;
  }
  pthread_rwlock_unlock(&b->lk);
  return rc;
}

int dsys_balancer_set_available(dsys_balancer *b, const char *id, int available) {
  if (!b || !id) return DSYS_EINVAL;
  int rc = 0;
  pthread_rwlock_wrlock(&b->lk);
  size_t i = find(b, id);
  if (i == SIZE_MAX) rc = DSYS_ENOTFOUND;
  else b->eps[i].available = available != 0;
  pthread_rwlock_unlock(&b->lk);
  return rc;
}

size_t dsys_balancer_count(dsys_balancer *b) {
  if (!b) return 0;
  pthread_rwlock_rdlock(&b->lk);
  size_t n = b->n;
  pthread_rwlock_unlock(&b->lk);
  return n;
}

int dsys_balancer_reset(dsys_balancer *b) {
  if (!b) return DSYS_EINVAL;
  pthread_rwlock_wrlock(&b->lk);
  atomic_store(&b->cursor, 0);
  for (size_t i = 0; i < b->n; i++) b->eps[i].cw = 0;
  pthread_rwlock_unlock(&b->lk);
  return 0;
}

int dsys_balancer_endpoint(dsys_balancer *b, const char *id,
                           dsys_balancer_endpoint_info *out) {
  if (!b || !id || !out) return DSYS_EINVAL;
  int rc = 0;
  pthread_rwlock_rdlock(&b->lk);
  size_t i = find(b, id);
  if (i == SIZE_MAX) {
    rc = DSYS_ENOTFOUND;
  } else {
    out->weight = b->eps[i].weight;
    out->available = b->eps[i].available;
    out->active = atomic_load(&b->eps[i].active);
    out->picks = atomic_load(&b->eps[i].picks);
  }
  pthread_rwlock_unlock(&b->lk);
  return rc;
}

/* ---- hash tables ---- */

static int ring_cmp(const void *a, const void *b) {
  const ring_pt *x = a, *y = b;
  if (x->h != y->h) return x->h < y->h ? -1 : 1;
  return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static int build_ring(dsys_balancer *b) {
  size_t total = 0;
  for (size_t i = 0; i < b->n; i++) total += (size_t)b->vnodes * b->eps[i].weight;
  uint64_t scale_num = 1, scale_den = 1; /* shrink when over the point limit */
  if (total > MAX_RING_POINTS) {
    scale_num = MAX_RING_POINTS;
    scale_den = total;
  }
  ring_pt *r = malloc((total ? total : 1) * sizeof *r);
  if (!r) return DSYS_ENOMEM;
  size_t k = 0;
  for (size_t i = 0; i < b->n; i++) {
    uint64_t pts = (uint64_t)b->vnodes * b->eps[i].weight * scale_num / scale_den;
    if (pts == 0) pts = 1;
    for (uint64_t v = 0; v < pts && k < total; v++) {
      r[k].h = dsysi_hash64(b->eps[i].id, b->eps[i].idlen, v * 0x9e3779b97f4a7c15ULL + 1);
      r[k].idx = (uint32_t)i;
      k++;
    }
  }
  qsort(r, k, sizeof *r, ring_cmp);
  free(b->ring);
  b->ring = r;
  b->nring = k;
  return 0;
}

static int build_maglev(dsys_balancer *b) {
  uint32_t M = b->msize;
  uint32_t *t = malloc((size_t)M * sizeof *t);
  uint64_t *next = calloc(b->n ? b->n : 1, sizeof *next);
  uint64_t *off = malloc((b->n ? b->n : 1) * sizeof *off);
  uint64_t *skip = malloc((b->n ? b->n : 1) * sizeof *skip);
  uint64_t *credit = calloc(b->n ? b->n : 1, sizeof *credit);
  if (!t || !next || !off || !skip || !credit) {
    free(t), free(next), free(off), free(skip), free(credit);
    return DSYS_ENOMEM;
  }
  uint32_t maxw = 1;
  for (size_t i = 0; i < b->n; i++) {
    off[i] = dsysi_hash64(b->eps[i].id, b->eps[i].idlen, 0x6d61676c65763031ULL) % M;
    skip[i] = dsysi_hash64(b->eps[i].id, b->eps[i].idlen, 0x6d61676c65763032ULL) % (M - 1) + 1;
    if (b->eps[i].weight > maxw) maxw = b->eps[i].weight;
  }
  for (uint32_t j = 0; j < M; j++) t[j] = UINT32_MAX;
  uint32_t filled = 0;
  while (b->n && filled < M) {
    for (size_t i = 0; i < b->n && filled < M; i++) {
      credit[i] += b->eps[i].weight;
      if (credit[i] < maxw) continue;
      credit[i] -= maxw;
      uint64_t c;
      do {
        c = (off[i] + next[i] * skip[i]) % M;
        next[i]++;
      } while (t[c] != UINT32_MAX);
      t[c] = (uint32_t)i;
      filled++;
    }
  }
  free(next), free(off), free(skip), free(credit);
  free(b->maglev);
  b->maglev = t;
  return 0;
}

static int ensure_tables(dsys_balancer *b) {
  if (!b->tables_dirty) return 0;
  int rc = 0;
  if (b->policy == DSYS_LB_RING_HASH) rc = build_ring(b);
  else if (b->policy == DSYS_LB_MAGLEV) rc = build_maglev(b);
  if (!rc) b->tables_dirty = 0;
  return rc;
}

/* ---- policies: each returns an index passing f (at least one does) ---- */

/* Under the read lock: the cursor moves past the pick by compare and
 * swap, so concurrent picks still take turns. */
static size_t pick_rr(dsys_balancer *b, const filt *f) {
  size_t c = atomic_load(&b->cursor);
  for (;;) {
    size_t i = SIZE_MAX;
    for (size_t k = 0; k < b->n && i == SIZE_MAX; k++)
      if (passes(b, (c + k) % b->n, f)) i = (c + k) % b->n;
    if (i == SIZE_MAX) return SIZE_MAX;
    if (atomic_compare_exchange_weak(&b->cursor, &c, (i + 1) % b->n)) return i;
  }
}

static size_t pick_wrr(dsys_balancer *b, const filt *f) {
  int64_t total = 0;
  size_t best = SIZE_MAX;
  for (size_t i = 0; i < b->n; i++) {
    if (!passes(b, i, f)) continue;
    ep *e = &b->eps[i];
    e->cw += e->weight;
    total += e->weight;
    if (best == SIZE_MAX || e->cw > b->eps[best].cw) best = i;
  }
  if (best != SIZE_MAX) b->eps[best].cw -= total;
  return best;
}

static size_t collect(dsys_balancer *b, const filt *f) {
  size_t k = 0;
  for (size_t i = 0; i < b->n; i++)
    if (passes(b, i, f)) b->scratch[k++] = (uint32_t)i;
  return k;
}

static size_t pick_p2c(dsys_balancer *b, const filt *f) {
  size_t k = collect(b, f);
  if (k == 0) return SIZE_MAX;
  if (k == 1) return b->scratch[0];
  uint64_t r = dsysi_rng_next(&b->rng);
  size_t x = (size_t)(r % k);
  size_t y = (size_t)((r >> 32) % (k - 1));
  if (y >= x) y++;
  const ep *a = &b->eps[b->scratch[x]], *c = &b->eps[b->scratch[y]];
  /* fewer in flight per unit of weight wins; ties: the first random one */
  uint64_t la = (uint64_t)(atomic_load(&a->active) + 1) * c->weight;
  uint64_t lc = (uint64_t)(atomic_load(&c->active) + 1) * a->weight;
  return lc < la ? b->scratch[y] : b->scratch[x];
}

static size_t pick_random(dsys_balancer *b, const filt *f) {
  uint64_t total = 0;
  for (size_t i = 0; i < b->n; i++)
    if (passes(b, i, f)) total += b->eps[i].weight;
  if (!total) return SIZE_MAX;
  uint64_t r = dsysi_rng_next(&b->rng) % total;
  for (size_t i = 0; i < b->n; i++) {
    if (!passes(b, i, f)) continue;
    if (r < b->eps[i].weight) return i;
    r -= b->eps[i].weight;
  }
  return SIZE_MAX;
}

static size_t pick_ring(dsys_balancer *b, uint64_t h, const filt *f) {
  if (!b->nring) return SIZE_MAX;
  size_t lo = 0, hi = b->nring;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (b->ring[mid].h < h) lo = mid + 1;
    else hi = mid;
  }
  for (size_t k = 0; k < b->nring; k++) {
    size_t i = b->ring[(lo + k) % b->nring].idx;
    if (passes(b, i, f)) return i;
  }
  return SIZE_MAX;
}

static size_t pick_maglev(dsys_balancer *b, uint64_t h, const filt *f) {
  uint32_t M = b->msize;
  size_t pos = (size_t)(h % M);
  for (uint32_t k = 0; k < M; k++) {
    uint32_t i = b->maglev[(pos + k) % M];
    if (i != UINT32_MAX && passes(b, i, f)) return i;
  }
  return SIZE_MAX;
}

static size_t pick_with(dsys_balancer *b, uint64_t h, const filt *f) {
  switch (b->policy) {
  case DSYS_LB_WEIGHTED_ROUND_ROBIN: return pick_wrr(b, f);
  case DSYS_LB_LEAST_REQUEST: return pick_p2c(b, f);
  case DSYS_LB_RANDOM: return pick_random(b, f);
  case DSYS_LB_RING_HASH: return pick_ring(b, h, f);
  case DSYS_LB_MAGLEV: return pick_maglev(b, h, f);
  default: return pick_rr(b, f);
  }
}

static int any_passes(const dsys_balancer *b, const filt *f) {
  for (size_t i = 0; i < b->n; i++)
    if (passes(b, i, f)) return 1;
  return 0;
}

int dsys_balancer_pick(dsys_balancer *b, const void *key, size_t key_len,
                       const char *exclude, dsys_pick_result *out) {
  if (!b || !out || (key_len && !key)) return DSYS_EINVAL;
  uint64_t h = 0;
  if (b->policy == DSYS_LB_RING_HASH || b->policy == DSYS_LB_MAGLEV)
    h = dsysi_hash64(key ? key : "", key_len, 0);
  int shared = b->policy == DSYS_LB_ROUND_ROBIN || b->policy == DSYS_LB_RING_HASH ||
               b->policy == DSYS_LB_MAGLEV;
  if (shared) {
    pthread_rwlock_rdlock(&b->lk);
    if (b->tables_dirty) { /* rebuilt under the write lock */
      pthread_rwlock_unlock(&b->lk);
      shared = 0;
    }
  }
  if (!shared) pthread_rwlock_wrlock(&b->lk);
  if (b->n == 0) {
    pthread_rwlock_unlock(&b->lk);
    return DSYS_EUNAVAIL;
  }
  int rc = ensure_tables(b);
  if (rc) {
    pthread_rwlock_unlock(&b->lk);
    return rc;
  }
  size_t ex = exclude ? find(b, exclude) : SIZE_MAX;
  /* passes, in order: available but not excluded; available; then panic */
  filt passes_list[4] = {{1, ex}, {1, SIZE_MAX}, {0, ex}, {0, SIZE_MAX}};
  size_t chosen = SIZE_MAX;
  int panic = 0;
  for (int p = 0; p < 4 && chosen == SIZE_MAX; p++) {
    if (p == 1 && ex == SIZE_MAX) continue;
    if (p >= 2) {
      if (b->when_none == DSYS_LB_FAIL_FAST) break;
      if (p == 3 && ex == SIZE_MAX) continue;
      panic = 1;
    }
    if (!any_passes(b, &passes_list[p])) continue;
    chosen = pick_with(b, h, &passes_list[p]);
  }
  if (chosen == SIZE_MAX) {
    pthread_rwlock_unlock(&b->lk);
    return DSYS_EUNAVAIL;
  }
  ep *e = &b->eps[chosen];
  atomic_fetch_add(&e->active, 1);
  atomic_fetch_add(&e->picks, 1);
  out->ud = e->ud;
  out->handle = (e->serial << IDX_BITS) | chosen;
  out->panic = panic;
  memcpy(out->id, e->id, e->idlen + 1);
  pthread_rwlock_unlock(&b->lk);
  return 0;
}

void dsys_balancer_release(dsys_balancer *b, const dsys_pick_result *r) {
  if (!b || !r || !r->handle) return;
  uint64_t serial = r->handle >> IDX_BITS;
  size_t idx = (size_t)(r->handle & ((1u << IDX_BITS) - 1));
  pthread_rwlock_rdlock(&b->lk);
  if (idx >= b->n || b->eps[idx].serial != serial) {
    idx = SIZE_MAX;
    for (size_t i = 0; i < b->n; i++)
      if (b->eps[i].serial == serial) idx = i;
  }
  if (idx != SIZE_MAX) {
    atomic_uint *a = &b->eps[idx].active;
    unsigned v = atomic_load(a);
    while (v > 0 && !atomic_compare_exchange_weak(a, &v, v - 1)) ;
  }
  pthread_rwlock_unlock(&b->lk);
}
