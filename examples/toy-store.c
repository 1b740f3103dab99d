/*
 * toy-store: a complete store backend in one file, written against the
 * public API only (<distsys/store.h>), to show what adding a backend takes.
 *
 * The items live in a singly linked list sorted by key, behind one mutex.
 * Every lookup walks the list, so each op is O(n): plenty for an example
 * or a few thousand items, not for production (the built-in "memory"
 * backend does the same job with binary search over arrays).
 *
 * The contract of dsys_store_ops (store.h), as this file meets it:
 * - The front end (dsys_store_put() and friends) has already validated
 *   keys, values, metadata and sizes, read the clock (now) and computed
 *   expires_at. A backend only stores and fetches.
 * - Items handed back are fresh copies made with dsys_item_new(), one
 *   block each, which the caller frees with dsys_item_free(): they must not
 *   alias the backend's own items, which may change or go at any time.
 * - An item whose expires_at is set and <= now is absent, for every op.
 * - Ids are never reused; version is 1 on creation and +1 on every change.
 * - Every op may run on several threads at once.
 * - purge and put_many are optional, and left out here: without put_many,
 *   dsys_store_put_many() on this backend answers DSYS_ENOTSUP.
 *
 * tests/state/test-store.c runs the store conformance suite on "toy:",
 * unchanged, exactly as on the built-in backends.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/store.h>
#include "toy-store.h"

/* One list node. Its item was made with dsys_item_new(), so it is freed
 * with dsys_item_free() (the library's allocator, not necessarily ours). */
typedef struct toy_node {
  struct toy_node *next;
  dsys_item *item;
} toy_node;

/* The backend's state. The front end allocates state_size zeroed bytes
 * per open store and passes them to every op. */
typedef struct toy_store {
  pthread_mutex_t mu; /* guards everything below */
  toy_node *head;     /* sorted by key, bytewise (strcmp) */
  int64_t next_id;    /* only grows, so an id is never reused */
} toy_store;

/* Expired items must read as absent even before anything removes them:
 * a TTL promises callers the item is gone at expires_at exactly, while
 * removal is lazy (toy_purge runs every 256 writes or on request). */
static int expired(const dsys_item *it, int64_t now) {
  return it->expires_at != 0 && it->expires_at <= now;
}

static dsys_item *copy(const dsys_item *it) {
  return dsys_item_new(it->id, it->key, it->value, it->metadata, it->version,
                       it->created_at, it->updated_at, it->expires_at);
}

/* The link pointing at key's node, or at the node before which key would
 * be inserted. Working on the link (not the node) lets insert and unlink
 * treat the head like any other position. */
static toy_node **link_of(toy_store *t, const char *key) {
  toy_node **p = &t->head;
  while (*p && strcmp((*p)->item->key, key) < 0) p = &(*p)->next;
  return p;
}

/* The node at link p if it holds key, else NULL. */
static toy_node *node_at(toy_node **p, const char *key) {
  return *p && !strcmp((*p)->item->key, key) ? *p : NULL;
}

static void unlink_node(toy_node **p) {
  toy_node *n = *p;
  *p = n->next;
  dsys_item_free(n->item);
  free(n);
}

/* Writers first drop an expired item at key, so that put, create and
 * incr see the key as free and start over (new id, version 1) exactly as
 * after a delete, and update and delete answer DSYS_ENOTFOUND. Readers
 * leave it in place and skip it. */
static toy_node **link_for_write(toy_store *t, const char *key, int64_t now) {
  toy_node **p = link_of(t, key);
  toy_node *n = node_at(p, key);
  if (n && expired(n->item, now)) unlink_node(p);
  return p;
}

static int toy_open(void *st, const char *location,
                    const dsys_store_options *o, char *err, size_t errlen) {
  toy_store *t = st;
  (void)o; /* the front end applies clock, hook and max_value itself */
  /* The store lives in this process only. Refuse a location rather than
   * ignore it, so that "toy:/var/data" does not look durable. */
  if (*location) {
    snprintf(err, errlen, "toy: takes no location (got \"%s\")", location);
    return DSYS_EURL;
  }
  if (pthread_mutex_init(&t->mu, NULL)) return DSYS_ENOMEM;
  t->next_id = 1;
  return 0;
}

static void toy_close(void *st) {
  toy_store *t = st;
  while (t->head) unlink_node(&t->head);
  pthread_mutex_destroy(&t->mu);
}

static int toy_get(void *st, const char *key, int64_t id, int64_t now,
                   dsys_item **out) {
  toy_store *t = st;
  int e = DSYS_ENOTFOUND;
  pthread_mutex_lock(&t->mu);
  toy_node *n;
  if (key) {
    n = node_at(link_of(t, key), key);
  } else { /* by id: the list is not in id order, so walk all of it */
    n = t->head;
    while (n && n->item->id != id) n = n->next;
  }
  if (n && !expired(n->item, now)) {
    *out = copy(n->item);
    e = *out ? 0 : DSYS_ENOMEM;
  }
  pthread_mutex_unlock(&t->mu);
  return e;
}

/* put, create or update, with the mutex held (toy_incr calls it too, to
 * read and write under one hold of the lock). */
static int write_locked(toy_store *t, int mode, const char *key,
                        const char *value, const char *metadata,
                        int64_t expires_at, int64_t expected_version,
                        int64_t now, dsys_item **out) {
  toy_node **p = link_for_write(t, key, now);
  toy_node *n = node_at(p, key);
  if (!n && mode == DSYS_STORE_W_UPDATE) return DSYS_ENOTFOUND;
  if (n && mode == DSYS_STORE_W_CREATE) return DSYS_EEXIST;
  if (n && expected_version > 0 && n->item->version != expected_version)
    return DSYS_ECONFLICT; /* compare-and-swap lost: someone changed it */

  dsys_item *nw;
  if (n) /* a replace keeps the identity: id, created_at; NULL metadata
            (update without metadata) keeps the metadata too */
    nw = dsys_item_new(n->item->id, key, value,
                       metadata ? metadata : n->item->metadata,
                       n->item->version + 1, n->item->created_at, now,
                       expires_at);
  else
    nw = dsys_item_new(t->next_id, key, value, metadata, 1, now, now,
                       expires_at);
  /* Allocate everything before touching the list, so that a failed op
   * leaves the store exactly as it was. */
  dsys_item *ret = nw ? copy(nw) : NULL;
  toy_node *fresh = n ? NULL : malloc(sizeof *fresh);
  if (!ret || (!n && !fresh)) {
    dsys_item_free(nw);
    dsys_item_free(ret);
    free(fresh);
    return DSYS_ENOMEM;
  }
  if (n) {
    dsys_item_free(n->item);
    n->item = nw;
  } else {
    fresh->item = nw;
    fresh->next = *p; /* *p is the first larger key: the order holds */
    *p = fresh;
    t->next_id++;
  }
  *out = ret;
  return 0;
}

static int toy_write(void *st, int mode, const char *key, const char *value,
                     const char *metadata, int64_t expires_at,
                     int64_t expected_version, int64_t now, dsys_item **out) {
  toy_store *t = st;
  pthread_mutex_lock(&t->mu);
  int e = write_locked(t, mode, key, value, metadata, expires_at,
                       expected_version, now, out);
  pthread_mutex_unlock(&t->mu);
  return e;
}

static int toy_del(void *st, const char *key, int64_t expected_version,
                   int64_t now, dsys_item **out) {
  toy_store *t = st;
  int e = 0;
  pthread_mutex_lock(&t->mu);
  toy_node **p = link_for_write(t, key, now);
  toy_node *n = node_at(p, key);
  if (!n)
    e = DSYS_ENOTFOUND;
  else if (expected_version > 0 && n->item->version != expected_version)
    e = DSYS_ECONFLICT;
  else if (out && !(*out = copy(n->item))) /* out is NULL when unwanted */
    e = DSYS_ENOMEM; /* copied before unlinking: a failure deletes nothing */
  else
    unlink_node(p);
  pthread_mutex_unlock(&t->mu);
  return e;
}

/* The value as an int64 if it is a JSON integer. The front end has checked
 * that it is valid JSON, so "+1", "0x1" or "1x" cannot reach us; what is
 * left is telling 5 from 5.5, 5e3, "5" or [5]: strtoll must consume the
 * whole text (bar surrounding whitespace). */
static int parse_int(const char *v, int64_t *out) {
  char *end;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (end == v) return DSYS_ETYPE;
  while (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r') end++;
  if (*end) return DSYS_ETYPE;
  if (errno == ERANGE) return DSYS_ERANGE;
  *out = x;
  return 0;
}

static int toy_incr(void *st, const char *key, int64_t delta, int64_t now,
                    dsys_item **out) {
  toy_store *t = st;
  /* Read, add and write under one hold of the mutex: two threads adding 1
   * at once must end at +2 (the conformance suite runs 600 of them). */
  pthread_mutex_lock(&t->mu);
  toy_node *n = node_at(link_for_write(t, key, now), key);
  int64_t v = 0; /* a missing key counts as 0, so it is created as delta */
  int e = n ? parse_int(n->item->value, &v) : 0;
  if (!e && ((delta > 0 && v > INT64_MAX - delta) ||
             (delta < 0 && v < INT64_MIN - delta)))
    e = DSYS_ERANGE; /* checked before adding: signed overflow is UB */
  if (!e) {
    char num[24];
    snprintf(num, sizeof num, "%" PRId64, v + delta);
    if (n) /* keeps its metadata (NULL) and its TTL */
      e = write_locked(t, DSYS_STORE_W_UPDATE, key, num, NULL,
                       n->item->expires_at, 0, now, out);
    else
      e = write_locked(t, DSYS_STORE_W_CREATE, key, num, "{}", 0, 0, now,
                       out);
  }
  pthread_mutex_unlock(&t->mu);
  return e;
}

/* Items with the prefix and key > after, at most limit, in bytewise key
 * order. The order is part of the contract because the front end's cursor
 * is just the last key returned: the next page asks for keys after it. For
 * that to neither skip nor repeat, every backend must sort the same way,
 * independent of locale and collation: by bytes (strcmp compares them as
 * unsigned char), which for UTF-8 is also code-point order. In that order
 * the keys with one prefix are contiguous, so the walk stops at the first
 * key past them. */
static int toy_list(void *st, const char *prefix, const char *after,
                    size_t limit, int64_t now, dsys_item ***items,
                    size_t *count) {
  toy_store *t = st;
  dsys_item **arr = calloc(limit, sizeof *arr); /* front end: 1..1000 */
  if (!arr) return DSYS_ENOMEM;
  size_t n = 0, plen = strlen(prefix);
  int e = 0;
  pthread_mutex_lock(&t->mu);
  for (toy_node *nd = t->head; nd && n < limit; nd = nd->next) {
    const dsys_item *it = nd->item;
    int c = strncmp(it->key, prefix, plen);
    if (c > 0) break; /* past the prefix: nothing further can match */
    if (c < 0 || (after && strcmp(it->key, after) <= 0) || expired(it, now))
      continue;
    if (!(arr[n] = copy(it))) {
      e = DSYS_ENOMEM;
      break;
    }
    n++;
  }
  pthread_mutex_unlock(&t->mu);
  if (e) {
    dsys_item_list_free(arr, n);
    return e;
  }
  *items = arr;
  *count = n;
  return 0;
}

/* Optional op. Without it expired items would stay invisible but keep
 * their memory until their key is written again. */
static int toy_purge(void *st, int64_t now, size_t limit, size_t *removed) {
  toy_store *t = st;
  size_t r = 0;
  pthread_mutex_lock(&t->mu);
  for (toy_node **p = &t->head; *p && r < limit;) {
    if (expired((*p)->item, now)) {
      unlink_node(p); /* *p is now the next node: do not advance */
      r++;
    } else {
      p = &(*p)->next;
    }
  }
  pthread_mutex_unlock(&t->mu);
  *removed = r;
  return 0;
}

/* Static: the registry of backends keeps this pointer for good. */
static const dsys_store_ops toy_ops = {
    .version = DSYS_STORE_OPS_VERSION,
    .name = "toy", /* the URL scheme: "toy:" */
    .state_size = sizeof(toy_store),
    .open = toy_open,
    .close = toy_close,
    .get = toy_get,
    .write = toy_write,
    .del = toy_del,
    .incr = toy_incr,
    .list = toy_list,
    .purge = toy_purge,
};

int toy_store_register(void) { return dsys_store_register_backend(&toy_ops); }
