/*
 * In-memory store backend: items sorted by key (binary search) plus an
 * index sorted by id; one read-write lock. Same semantics as the SQLite
 * backend (the shared conformance suite checks both).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/store.h>
#include "core/internal.h"
#include "core/plugin.h"
#include "state/store_int.h"

typedef struct mem {
  pthread_rwlock_t lock;
  dsys_item **bykey; /* sorted by key */
  dsys_item **byid;  /* sorted by id (ids only grow) */
  size_t n, cap;
  int64_t next_id;
} mem;

static size_t item_size(const dsys_item *it) {
  return sizeof *it + strlen(it->key) + strlen(it->value) +
         strlen(it->metadata) + 3;
}

static dsys_item *item_clone(const dsys_item *it) {
  return dsys_item_new(it->id, it->key, it->value, it->metadata, it->version,
                       it->created_at, it->updated_at, it->expires_at);
}

/* Index of key in bykey, or -(insertion point) - 1. */
static ptrdiff_t find_key(mem *m, const char *key) {
  size_t lo = 0, hi = m->n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    int c = strcmp(m->bykey[mid]->key, key);
    if (c == 0) return (ptrdiff_t)mid;
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return -(ptrdiff_t)lo - 1;
}

static ptrdiff_t find_id(mem *m, int64_t id) {
  size_t lo = 0, hi = m->n;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (m->byid[mid]->id == id) return (ptrdiff_t)mid;
    if (m->byid[mid]->id < id) lo = mid + 1;
    else hi = mid;
  }
  return -1;
}

static int live(const dsys_item *it, int64_t now) {
  return !(it->expires_at > 0 && it->expires_at <= now);
}

static int m_open(void *state, const char *loc, const dsys_store_options *o,
                  char *err, size_t errlen) {
  mem *m = state;
  if (pthread_rwlock_init(&m->lock, NULL)) return DSYS_ENOMEM;
  m->next_id = 1;
  return 0;
}

static void m_close(void *state) {
  mem *m = state;
  for (size_t i = 0; i < m->n; i++) free(m->bykey[i]);
  free(m->bykey);
  free(m->byid);
  pthread_rwlock_destroy(&m->lock);
}

static int m_get(void *state, const char *key, int64_t id, int64_t now,
                 dsys_item **out) {
  mem *m = state;
  int e = DSYS_ENOTFOUND;
  pthread_rwlock_rdlock(&m->lock);
  ptrdiff_t i = key ? find_key(m, key) : find_id(m, id);
  if (i >= 0) {
    dsys_item *it = key ? m->bykey[i] : m->byid[i];
    if (live(it, now)) {
      size_t sz = item_size(it);
      dsys_item *c = malloc(sz);
      if (!c) {
        e = DSYS_ENOMEM;
      } else {
        /* One block: copy and rebase the string pointers. */
        memcpy(c, it, sz);
        c->key = (char *)c + (it->key - (const char *)it);
        c->value = (char *)c + (it->value - (const char *)it);
        c->metadata = (char *)c + (it->metadata - (const char *)it);
        *out = c;
        e = 0;
      }
    }
  }
  pthread_rwlock_unlock(&m->lock);
  return e;
}

static void remove_at(mem *m, ptrdiff_t ki) {
  dsys_item *it = m->bykey[ki];
  ptrdiff_t ii = find_id(m, it->id);
  memmove(&m->bykey[ki], &m->bykey[ki + 1],
          (m->n - (size_t)ki - 1) * sizeof *m->bykey);
  memmove(&m->byid[ii], &m->byid[ii + 1],
          (m->n - (size_t)ii - 1) * sizeof *m->byid);
  m->n--;
  free(it);
}

/* Drop the item at key if it has expired. */
static void purge_key(mem *m, const char *key, int64_t now) {
  ptrdiff_t i = find_key(m, key);
  if (i >= 0 && !live(m->bykey[i], now)) remove_at(m, i);
}

static int insert(mem *m, dsys_item *it) {
  /* Both arrays grow from the same capacity to the same new one; m->cap
   * moves last, so a failure never leaves it above either array's size. */
  size_t cap_id = m->cap;
  if (dsysi_grow(&m->byid, &cap_id, m->n + 1, sizeof *m->byid, 16) ||
      dsysi_grow(&m->bykey, &m->cap, m->n + 1, sizeof *m->bykey, 16))
    return DSYS_ENOMEM;
  ptrdiff_t i = find_key(m, it->key);
  size_t at = (size_t)(-i - 1);
  memmove(&m->bykey[at + 1], &m->bykey[at], (m->n - at) * sizeof *m->bykey);
  m->bykey[at] = it;
  m->byid[m->n] = it; /* new ids are the largest */
  m->n++;
  return 0;
}

static int replace(mem *m, ptrdiff_t ki, dsys_item *nw) {
  ptrdiff_t ii = find_id(m, m->bykey[ki]->id);
  free(m->bykey[ki]);
  m->bykey[ki] = nw;
  m->byid[ii] = nw;
  return 0;
}

static int write_locked(mem *m, int mode, const char *key, const char *value,
                        const char *meta, int64_t exp, int64_t ev, int64_t now,
                        dsys_item **out) {
  purge_key(m, key, now);
  ptrdiff_t i = find_key(m, key);
  dsys_item *nw;
  if (i < 0) {
    if (mode == DSYS_STORE_W_UPDATE) return DSYS_ENOTFOUND;
    nw = dsys_item_new(m->next_id, key, value, meta, 1, now, now, exp);
    if (!nw) return DSYS_ENOMEM;
    if (insert(m, nw)) {
      free(nw);
      return DSYS_ENOMEM;
    }
    m->next_id++;
  } else {
    dsys_item *cur = m->bykey[i];
    if (mode == DSYS_STORE_W_CREATE) return DSYS_EEXIST;
    if (ev > 0 && cur->version != ev) return DSYS_ECONFLICT;
    nw = dsys_item_new(cur->id, key, value, meta ? meta : cur->metadata,
                       cur->version + 1, cur->created_at, now, exp);
    if (!nw) return DSYS_ENOMEM;
    replace(m, i, nw);
  }
  *out = item_clone(nw);
  return *out ? 0 : DSYS_ENOMEM;
}

static int m_write(void *state, int mode, const char *key, const char *value,
                   const char *meta, int64_t exp, int64_t ev, int64_t now,
                   dsys_item **out) {
  mem *m = state;
  pthread_rwlock_wrlock(&m->lock);
  int e = write_locked(m, mode, key, value, meta, exp, ev, now, out);
  pthread_rwlock_unlock(&m->lock);
  return e;
}

/* All or none without an undo: every new item is made first (the plan:
 * an entry's current item is the batch's earlier entry of the same key,
 * else the stored live one), and capacity for every entry reserved; only
 * then is the store changed, by steps that cannot fail. */
static int m_put_many(void *state, const dsys_store_entry *ents, size_t n,
                      const int64_t *exps, int64_t now, dsys_item **items,
                      size_t *failed) {
  mem *m = state;
  *failed = n;
  dsys_item **nw = calloc(n, sizeof *nw);
  if (!nw) return DSYS_ENOMEM;
  pthread_rwlock_wrlock(&m->lock);
  size_t cap_id = m->cap, i = 0;
  int64_t next_id = m->next_id;
  int e = dsysi_grow(&m->byid, &cap_id, m->n + n, sizeof *m->byid, 16) ||
                  dsysi_grow(&m->bykey, &m->cap, m->n + n, sizeof *m->bykey, 16)
              ? DSYS_ENOMEM
              : 0;
  for (; !e && i < n; i++) {
    const dsys_store_entry *en = &ents[i];
    const dsys_item *cur = NULL;
    for (size_t j = i; j-- > 0 && !cur;) /* batches are small (<= 1000) */
      if (!strcmp(ents[j].key, en->key)) cur = nw[j];
    if (!cur) {
      ptrdiff_t ki = find_key(m, en->key);
      if (ki >= 0 && live(m->bykey[ki], now)) cur = m->bykey[ki];
    }
    nw[i] = cur ? dsys_item_new(cur->id, en->key, en->value, en->metadata,
                                cur->version + 1, cur->created_at, now, exps[i])
                : dsys_item_new(next_id++, en->key, en->value, en->metadata, 1,
                                now, now, exps[i]);
    items[i] = nw[i] ? item_clone(nw[i]) : NULL;
    if (!items[i]) {
      *failed = i;
      e = DSYS_ENOMEM;
    }
  }
  if (!e) {
    for (i = 0; i < n; i++) {
      purge_key(m, ents[i].key, now);
      ptrdiff_t ki = find_key(m, ents[i].key);
      if (ki >= 0) replace(m, ki, nw[i]); /* frees the item replaced */
      else insert(m, nw[i]);              /* cannot fail: reserved */
    }
    m->next_id = next_id;
  }
  pthread_rwlock_unlock(&m->lock);
  if (e)
    for (i = 0; i < n; i++) {
      free(nw[i]);
      free(items[i]);
      items[i] = NULL;
    }
  free(nw);
  return e;
}

static int m_del(void *state, const char *key, int64_t ev, int64_t now,
                 dsys_item **out) {
  mem *m = state;
  int e = 0;
  pthread_rwlock_wrlock(&m->lock);
  purge_key(m, key, now);
  ptrdiff_t i = find_key(m, key);
  if (i < 0) e = DSYS_ENOTFOUND;
  else if (ev > 0 && m->bykey[i]->version != ev) e = DSYS_ECONFLICT;
  else {
    if (out) *out = item_clone(m->bykey[i]);
    remove_at(m, i);
  }
  pthread_rwlock_unlock(&m->lock);
  return e;
}

static int m_incr(void *state, const char *key, int64_t delta, int64_t now,
                  dsys_item **out) {
  mem *m = state;
  int e = 0;
  pthread_rwlock_wrlock(&m->lock);
  purge_key(m, key, now);
  ptrdiff_t i = find_key(m, key);
  int64_t v = 0, nv = 0;
  if (i >= 0) e = dsysi_store_parse_int(m->bykey[i]->value, &v);
  if (!e) e = dsysi_store_add(v, delta, &nv);
  if (!e) {
    char num[32];
    snprintf(num, sizeof num, "%lld", (long long)nv);
    if (i >= 0)
      e = write_locked(m, DSYS_STORE_W_UPDATE, key, num, NULL,
                       m->bykey[i]->expires_at, 0, now, out);
    else
      e = write_locked(m, DSYS_STORE_W_CREATE, key, num, "{}", 0, 0, now, out);
  }
  pthread_rwlock_unlock(&m->lock);
  return e;
}

static int m_list(void *state, const char *prefix, const char *after,
                  size_t limit, int64_t now, dsys_item ***items,
                  size_t *count) {
  mem *m = state;
  dsys_item **arr = calloc(limit, sizeof *arr);
  if (!arr) return DSYS_ENOMEM;
  size_t n = 0, plen = strlen(prefix);
  int e = 0;
  pthread_rwlock_rdlock(&m->lock);
  const char *start = (after && strcmp(after, prefix) > 0) ? after : prefix;
  ptrdiff_t i = find_key(m, start);
  size_t at = i >= 0 ? (size_t)i : (size_t)(-i - 1);
  for (; at < m->n && n < limit; at++) {
    dsys_item *it = m->bykey[at];
    if (after && strcmp(it->key, after) <= 0) continue;
    if (strncmp(it->key, prefix, plen)) break;
    if (!live(it, now)) continue;
    if (!(arr[n] = item_clone(it))) {
      e = DSYS_ENOMEM;
      break;
    }
    n++;
  }
  pthread_rwlock_unlock(&m->lock);
  if (e) {
    dsys_item_list_free(arr, n);
    return e;
  }
  *items = arr;
  *count = n;
  return 0;
}

static int m_purge(void *state, int64_t now, size_t limit, size_t *removed) {
  mem *m = state;
  size_t r = 0;
  pthread_rwlock_wrlock(&m->lock);
  for (size_t i = 0; i < m->n && r < limit;) {
    if (!live(m->bykey[i], now)) {
      remove_at(m, (ptrdiff_t)i);
      r++;
    } else {
      i++;
    }
  }
  pthread_rwlock_unlock(&m->lock);
  *removed = r;
  return 0;
}

static const dsys_store_ops mem_ops = {
    .version = DSYS_STORE_OPS_VERSION,
    .name = "memory",
    .state_size = sizeof(mem),
    .open = m_open,
    .close = m_close,
    .get = m_get,
    .write = m_write,
    .del = m_del,
    .incr = m_incr,
    .list = m_list,
    .purge = m_purge,
    .put_many = m_put_many,
};

const dsys_store_ops *dsys_store_ops_memory(void) { return &mem_ops; }
DSYSI_PLUGINS(store_memory) = {{"store", &mem_ops}, {0}};
