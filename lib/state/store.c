/* Key-value store front end: URL parsing, validation, hook, cursors. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <distsys/store.h>
#include <distsys/util.h>
#include "core/internal.h"
#include "core/json.h"
#include "core/plugin.h"
#include "state/store_int.h"

struct dsys_store {
  const dsys_store_ops *ops;
  void *state;
  dsys_clock *clock;
  size_t max_value;
  dsys_store_hook hook;
  void *hook_ud;
  unsigned writes; /* approximate write counter for lazy purge */
  char errmsg[256];
  dsys_store_observer_fn obs; /* timing observer (dsys_store_set_observer) */
  void *obs_ud;
};

int dsys_store_set_observer(dsys_store *s, dsys_store_observer_fn fn,
                            void *ud) {
  if (!s) return DSYS_EINVAL;
  s->obs = fn;
  s->obs_ud = ud;
  return 0;
}

static int64_t obs_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Time one backend call for the observer (a NULL test without one). */
#define OBSERVED(s, op, call)                                          \
  __extension__({                                                      \
    dsys_store_observer_fn obs_ = (s)->obs;                            \
    int64_t t0_ = obs_ ? obs_now_ns() : 0;                             \
    int rc_ = (call);                                                  \
    if (obs_) obs_((op), obs_now_ns() - t0_, rc_, (s)->obs_ud);        \
    rc_;                                                               \
  })

dsys_item *dsys_item_new(int64_t id, const char *key, const char *value,
                         const char *metadata, int64_t version,
                         int64_t created_at, int64_t updated_at,
                         int64_t expires_at) {
  if (!key || !value) return NULL;
  if (!metadata) metadata = "{}";
  size_t kl = strlen(key) + 1, vl = strlen(value) + 1,
         ml = strlen(metadata) + 1;
  dsys_item *it = malloc(sizeof *it + kl + vl + ml);
  if (!it) return NULL;
  char *p = (char *)(it + 1);
  memcpy(p, key, kl);
  it->key = p;
  p += kl;
  memcpy(p, value, vl);
  it->value = p;
  p += vl;
  memcpy(p, metadata, ml);
  it->metadata = p;
  it->id = id;
  it->version = version;
  it->created_at = created_at;
  it->updated_at = updated_at;
  it->expires_at = expires_at;
  return it;
}

void dsys_item_free(dsys_item *item) { free(item); }

void dsys_item_list_free(dsys_item **items, size_t count) {
  if (!items) return;
  for (size_t i = 0; i < count; i++) free(items[i]);
  free(items);
}

static int check_ops(const dsys_store_ops *o) {
  return o && o->version >= 1 && o->version <= DSYS_STORE_OPS_VERSION &&
         o->name && o->open && o->close && o->get && o->write && o->del &&
         o->incr && o->list;
}

int dsys_store_open_ops(dsys_store **out, const dsys_store_ops *ops,
                        const char *location, const dsys_store_options *opts) {
  if (!out) return DSYS_EINVAL;
  *out = NULL;
  if (!check_ops(ops) || !location) return DSYS_EINVAL;
  dsys_store_options o = {0};
  if (opts) {
    if (opts->size > sizeof o || (opts->size && opts->size < sizeof(size_t)))
      return DSYS_EINVAL;
    memcpy(&o, opts, opts->size ? opts->size : sizeof o);
  }
  o.size = sizeof o;
  dsys_store *s = calloc(1, sizeof *s);
  if (!s) return DSYS_ENOMEM;
  s->state = calloc(1, ops->state_size ? ops->state_size : 1);
  if (!s->state) {
    free(s);
    return DSYS_ENOMEM;
  }
  s->ops = ops;
  s->clock = o.clock ? o.clock : dsys_clock_real();
  o.clock = s->clock;
  s->max_value = o.max_value ? o.max_value : DSYS_STORE_DEFAULT_MAX_VALUE;
  s->hook = o.hook;
  s->hook_ud = o.hook_ud;
  int e = ops->open(s->state, location, &o, s->errmsg, sizeof s->errmsg);
  if (e) {
    /* the backend's message names the location as it sees fit: a
     * PostgreSQL URI's location can hold a password */
    dsysi_log(DSYS_LOG_ERROR, "store", "open %s: failed: %s", ops->name,
              s->errmsg[0] ? s->errmsg : location);
    free(s->state);
    free(s);
    return e;
  }
  *out = s;
  return 0;
}

static int usable(const void *ops) { return check_ops(ops); }
static dsysi_family backends = DSYSI_FAMILY("store", usable, NULL);

int dsys_store_register_backend(const dsys_store_ops *ops) {
  return dsysi_family_register(&backends, ops);
}

int dsys_store_open(dsys_store **out, const char *url,
                    const dsys_store_options *opts) {
  if (!out) return DSYS_EINVAL;
  *out = NULL;
  const void *ops;
  const char *loc;
  int e = dsysi_family_for_url(&backends, url, &ops, &loc);
  return e ? e : dsys_store_open_ops(out, ops, loc, opts);
}

void dsys_store_close(dsys_store *s) {
  if (!s) return;
  s->ops->close(s->state);
  free(s->state);
  free(s);
}

void *dsysi_store_state(dsys_store *s) { return s->state; }
const dsys_store_ops *dsysi_store_ops(dsys_store *s) { return s->ops; }

const char *dsys_store_errmsg(dsys_store *s) { return s ? s->errmsg : ""; }

static int check_key(const char *key) {
  if (!key || !*key) return DSYS_EINVAL;
  if (strlen(key) > DSYS_STORE_MAX_KEY) return DSYS_EINVAL;
  return 0;
}

static int check_value(dsys_store *s, const char *value) {
  if (!value) return DSYS_EINVAL;
  size_t n = strlen(value);
  if (n > s->max_value) return DSYS_ETOOBIG;
  json_object *j = NULL;
  int e = dsysi_json_parse(value, n, &j);
  json_object_put(j);
  return e;
}

static int check_meta(const char *meta) {
  if (!meta) return 0;
  size_t n = strlen(meta);
  if (n > DSYS_STORE_MAX_METADATA) return DSYS_ETOOBIG;
  json_object *j = NULL;
  int e = dsysi_json_parse_object(meta, n, &j);
  json_object_put(j);
  return e;
}

/* The checks every written item passes (put, create, update, put_many). */
static int check_write(dsys_store *s, const char *key, const char *value,
                       const char *meta, int64_t ttl_ms) {
  int e = check_key(key);
  if (!e) e = check_value(s, value);
  if (!e) e = check_meta(meta);
  if (!e && ttl_ms < 0) e = DSYS_EINVAL;
  return e;
}

static int64_t now_ms(dsys_store *s) { return dsys_clock_wall_ms(s->clock); }

int dsys_store_get(dsys_store *s, const char *key, dsys_item **out) {
  if (!s || !out) return DSYS_EINVAL;
  *out = NULL;
  int e = check_key(key);
  if (e) return e;
  return OBSERVED(s, DSYS_STORE_OP_GET, s->ops->get(s->state, key, -1, now_ms(s), out));
}

int dsys_store_get_by_id(dsys_store *s, int64_t id, dsys_item **out) {
  if (!s || !out || id < 0) return DSYS_EINVAL;
  *out = NULL;
  return OBSERVED(s, DSYS_STORE_OP_GET, s->ops->get(s->state, NULL, id, now_ms(s), out));
}

static void after_write(dsys_store *s, int change, dsys_item *it,
                        dsys_item **out, int64_t now) {
  if (s->hook && it) s->hook(s->hook_ud, change, it);
  if (out) *out = it;
  else free(it);
  /* Lazy purge of expired rows: a small batch every 256 writes. */
  unsigned n = __atomic_add_fetch(&s->writes, 1, __ATOMIC_RELAXED);
  if ((n & 255) == 0 && s->ops->purge) {
    size_t removed = 0;
    s->ops->purge(s->state, now, 256, &removed);
  }
}

static int do_write(dsys_store *s, int mode, const char *key,
                    const char *value, const dsys_store_write *w,
                    dsys_item **out) {
  if (out) *out = NULL;
  if (!s) return DSYS_EINVAL;
  const char *meta = w ? w->metadata : NULL;
  int e = check_write(s, key, value, meta, w ? w->ttl_ms : 0);
  if (e) return e;
  int64_t now = now_ms(s);
  int64_t exp = (w && w->ttl_ms > 0) ? now + w->ttl_ms : 0;
  int64_t ev = (w && mode == DSYS_STORE_W_UPDATE) ? w->expected_version : 0;
  if (mode != DSYS_STORE_W_UPDATE && !meta) meta = "{}";
  dsys_item *it = NULL;
  e = OBSERVED(s, DSYS_STORE_OP_WRITE,
               s->ops->write(s->state, mode, key, value, meta, exp, ev, now, &it));
  if (e) return e;
  after_write(s, mode == DSYS_STORE_W_PUT      ? DSYS_STORE_PUT
                 : mode == DSYS_STORE_W_CREATE ? DSYS_STORE_CREATE
                                               : DSYS_STORE_UPDATE,
              it, out, now);
  return 0;
}

int dsys_store_put(dsys_store *s, const char *key, const char *value,
                   const dsys_store_write *w, dsys_item **out) {
  return do_write(s, DSYS_STORE_W_PUT, key, value, w, out);
}

int dsys_store_put_many(dsys_store *s, const dsys_store_entry *entries,
                        size_t n, dsys_item **items, size_t *failed) {
  if (items)
    for (size_t i = 0; i < n && i < DSYS_STORE_MAX_MANY; i++) items[i] = NULL;
  if (!s || !entries || n == 0 || n > DSYS_STORE_MAX_MANY) return DSYS_EINVAL;
  if (s->ops->version < 2 || !s->ops->put_many) return DSYS_ENOTSUP;
  /* the backend gets the entries with their defaults filled in */
  dsys_store_entry *ents = malloc(n * sizeof *ents);
  int64_t *exps = malloc(n * sizeof *exps);
  dsys_item **its = calloc(n, sizeof *its);
  int64_t now = now_ms(s);
  size_t bad = 0;
  int e = ents && exps && its ? 0 : DSYS_ENOMEM;
  if (e) bad = n; /* not an entry's fault */
  for (; !e && bad < n; bad++) {
    const dsys_store_entry *en = &entries[bad];
    if ((e = check_write(s, en->key, en->value, en->metadata, en->ttl_ms))) break;
    ents[bad] = *en;
    if (!ents[bad].metadata) ents[bad].metadata = "{}";
    exps[bad] = en->ttl_ms > 0 ? now + en->ttl_ms : 0;
  }
  if (!e)
    e = OBSERVED(s, DSYS_STORE_OP_WRITE,
                 s->ops->put_many(s->state, ents, n, exps, now, its, &bad));
  if (e) {
    if (failed) *failed = bad;
    if (its)
      for (size_t i = 0; i < n; i++) free(its[i]);
  } else {
    for (size_t i = 0; i < n; i++)
      after_write(s, DSYS_STORE_PUT, its[i], items ? &items[i] : NULL, now);
  }
  free(ents);
  free(exps);
  free(its);
  return e;
}

int dsys_store_create(dsys_store *s, const char *key, const char *value,
                      const dsys_store_write *w, dsys_item **out) {
  return do_write(s, DSYS_STORE_W_CREATE, key, value, w, out);
}

int dsys_store_update(dsys_store *s, const char *key, const char *value,
                      const dsys_store_write *w, dsys_item **out) {
  return do_write(s, DSYS_STORE_W_UPDATE, key, value, w, out);
}

int dsys_store_delete(dsys_store *s, const char *key,
                      int64_t expected_version) {
  if (!s || expected_version < 0) return DSYS_EINVAL;
  int e = check_key(key);
  if (e) return e;
  int64_t now = now_ms(s);
  dsys_item *it = NULL;
  e = OBSERVED(s, DSYS_STORE_OP_DELETE,
               s->ops->del(s->state, key, expected_version, now, s->hook ? &it : NULL));
  if (e) return e;
  after_write(s, DSYS_STORE_DELETE, it, NULL, now);
  return 0;
}

int dsys_store_incr(dsys_store *s, const char *key, int64_t delta,
                    int64_t *result) {
  if (!s) return DSYS_EINVAL;
  int e = check_key(key);
  if (e) return e;
  int64_t now = now_ms(s);
  dsys_item *it = NULL;
  e = OBSERVED(s, DSYS_STORE_OP_INCR, s->ops->incr(s->state, key, delta, now, &it));
  if (e) return e;
  if (result) *result = strtoll(it->value, NULL, 10);
  after_write(s, DSYS_STORE_INCR, it, NULL, now);
  return 0;
}

int dsysi_store_parse_int(const char *v, int64_t *out) {
  /* Strict JSON integer: -?(0|[1-9][0-9]*) with optional whitespace. */
  while (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r') v++;
  const char *p = v;
  if (*p == '-') p++;
  if (!(*p >= '0' && *p <= '9')) return DSYS_ETYPE;
  if (*p == '0' && p[1] >= '0' && p[1] <= '9') return DSYS_ETYPE;
  while (*p >= '0' && *p <= '9') p++;
  const char *end = p;
  while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
  if (*p) return DSYS_ETYPE;
  if (end - v > 20) return DSYS_ERANGE;
  char buf[32];
  memcpy(buf, v, (size_t)(end - v));
  buf[end - v] = 0;
  errno = 0;
  long long x = strtoll(buf, NULL, 10);
  if (errno == ERANGE) return DSYS_ERANGE;
  *out = x;
  return 0;
}

int dsysi_store_add(int64_t a, int64_t b, int64_t *out) {
  return __builtin_add_overflow(a, b, out) ? DSYS_ERANGE : 0;
}

int dsys_store_list(dsys_store *s, const char *prefix, const char *cursor,
                    size_t limit, dsys_item ***items, size_t *count,
                    char **next_cursor) {
  if (next_cursor) *next_cursor = NULL;
  if (!s || !items || !count || limit > 1000) return DSYS_EINVAL;
  *items = NULL;
  *count = 0;
  if (!limit) limit = 100;
  if (!prefix) prefix = "";
  char *after = NULL;
  if (cursor && *cursor) {
    /* Cursor: "c1." + base64url(last key). */
    if (strncmp(cursor, "c1.", 3)) return DSYS_EINVAL;
    void *d = NULL;
    size_t dl = 0;
    if (dsys_base64url_decode(cursor + 3, strlen(cursor + 3), &d, &dl) ||
        dl == 0 || memchr(d, 0, dl)) {
      dsys_free(d);
      return DSYS_EINVAL;
    }
    after = d;
  }
  int e = OBSERVED(s, DSYS_STORE_OP_LIST,
                   s->ops->list(s->state, prefix, after, limit, now_ms(s), items, count));
  dsys_free(after);
  if (e) return e;
  if (next_cursor && *count == limit) {
    const char *last = (*items)[*count - 1]->key;
    char *enc = NULL;
    e = dsys_base64url_encode(last, strlen(last), &enc);
    if (!e) {
      size_t n = strlen(enc);
      char *c = malloc(n + 4);
      if (c) {
        memcpy(c, "c1.", 3);
        memcpy(c + 3, enc, n + 1);
        *next_cursor = c;
      } else {
        e = DSYS_ENOMEM;
      }
      dsys_free(enc);
    }
    if (e) {
      dsys_item_list_free(*items, *count);
      *items = NULL;
      *count = 0;
      return e;
    }
  }
  return 0;
}

int dsys_store_purge_expired(dsys_store *s, size_t *removed) {
  if (removed) *removed = 0;
  if (!s) return DSYS_EINVAL;
  if (!s->ops->purge) return 0;
  size_t total = 0;
  for (;;) {
    size_t n = 0;
    int e = s->ops->purge(s->state, now_ms(s), 1000, &n);
    if (e) return e;
    total += n;
    if (n < 1000) break;
  }
  if (removed) *removed = total;
  return 0;
}
