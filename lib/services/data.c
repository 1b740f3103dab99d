/*
 * Data service: CRUD over the shared store.
 *
 * Store layout (shared by every data instance on the file):
 *   data:k:<key>   value {"id": "<id>", "value": <the item's value>},
 *                  metadata = the item's metadata; the store's version,
 *                  created_at and updated_at are the item's
 *   data:i:<id>    the key of item <id>, as a JSON string (the id index;
 *                  every lookup through it is checked against the item, so
 *                  a stale entry is harmless)
 *   data:seq       counter for new ids: "data-<10 + n>"
 *   data:seeded    set once data-1..data-10 were created
 *   data:rev       change counter: +1 per write through the data service
 *   data:log:<rev> (20 digits) the change event of revision rev
 *                  {"event", "origin", "payload"}, kept 5 minutes (TTL)
 *
 * Change events (GET /api/data/events): a write through this instance is
 * published at once; a poller reads data:rev every events_poll_ms (200 ms)
 * and, when it grew, the data:log records after the last one seen, and
 * publishes those written by other instances (in revision order; a record
 * missing for 2 s - its writer died between the counter and the record -
 * is skipped).
 *
 * Creation is atomic across instances (the store's UNIQUE key); updates,
 * deletes and increments are compare-and-swap on the item's version.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <distsys/cache.h>
#include <distsys/events.h>
#include <distsys/services.h>
#include <distsys/util.h>
#include "core/internal.h"
#include "core/json.h"
#include "services/reply.h"
#include "services/svc.h"
#include "services/edge.h" /* dsysi_etag_list_match */

#define MAX_KEY 1000
#define CAS_TRIES 16

#define DATA_TOPIC "data"
#define LOG_TTL_MS (5 * 60 * 1000)
#define GAP_WAIT_MS 2000

struct dsys_data_service {
  dsysi_svc svc;
  dsys_store *store;
  /* change events */
  dsys_events *ev;
  dsysi_ticker ticker;
  char origin[40];    /* this instance in the change log */
  int64_t seen_rev;   /* poller only: last revision handled */
  int64_t gap_since;  /* poller only: when a missing revision was noticed */
  dsys_cache *cache;  /* GET /api/data/:ref read-through, or NULL */
};

static char *cat(const char *a, const char *b) {
  size_t al = strlen(a), bl = strlen(b);
  char *s = malloc(al + bl + 1);
  if (!s) return NULL;
  memcpy(s, a, al);
  memcpy(s + al, b, bl + 1);
  return s;
}

/* The API form of a stored item (NULL for a malformed one). */
static json_object *item_json(const dsys_item *it) {
  json_object *env = NULL, *meta = NULL, *v;
  if (dsysi_json_parse_object(it->value, strlen(it->value), &env)) return NULL;
  if (dsysi_json_parse_object(it->metadata, strlen(it->metadata), &meta))
    meta = json_object_new_object();
  json_object *o = json_object_new_object();
  json_object_object_add(o, "id", json_object_get(
      json_object_object_get_ex(env, "id", &v) ? v : NULL));
  json_object_object_add(o, "key", json_object_new_string(it->key + 7));
  json_object_object_add(o, "value", json_object_get(
      json_object_object_get_ex(env, "value", &v) ? v : NULL));
  json_object_object_add(o, "metadata", meta);
  json_object_object_add(o, "createdAt", dsysi_json_time(it->created_at));
  json_object_object_add(o, "updatedAt", dsysi_json_time(it->updated_at));
  json_object_object_add(o, "version", json_object_new_int64(it->version));
  json_object_put(env);
  return o;
}

/* The entity tag of an item: its store id (never reused, so a deleted and
 * recreated key does not match an old tag) and its version. */
static void etag_of(const dsys_item *it, char *out, size_t n) {
  snprintf(out, n, "\"%lld.%lld\"", (long long)it->id, (long long)it->version);
}

/* Items change at any time through any instance: a cache may keep one but
 * must revalidate it (If-None-Match) before each use. Not a max-age: a
 * caching gateway would then serve an old version for that long after a
 * write through another instance; the revalidation is a 304 from this
 * service's own cache (docs/reference/gateway.md, "Response cache"). */
static void cache_headers(dsys_request *req, const char *tag) {
  dsys_response_header(req, "ETag", tag);
  dsys_response_header(req, "Cache-Control", "no-cache");
}

static void respond_item(dsys_request *req, int status, const char *msg,
                         const dsys_item *it) {
  char tag[64];
  etag_of(it, tag, sizeof tag);
  cache_headers(req, tag);
  json_object *o = json_object_new_object();
  json_object_object_add(o, "message", json_object_new_string(msg));
  json_object *d = item_json(it);
  if (!d) {
    json_object_put(o);
    dsysi_respond_err(req, 500, "DSYS_EBADJSON", "Stored item is malformed");
    return;
  }
  json_object_object_add(o, "data", d);
  dsysi_respond_obj(req, status, o);
}

static void respond_store_err(dsys_request *req, int rc) {
  if (rc == DSYS_ENOTFOUND)
    dsysi_respond_err(req, 404, "DSYS_ENOTFOUND", "Data not found");
  else if (rc == DSYS_ETOOBIG)
    dsysi_respond_err(req, 413, "DSYS_ETOOBIG", "Value too large");
  else
    dsysi_respond_storage_err(req, rc, "Storage error");
}

/* Find an item by id, then by key. @return 0, DSYS_ENOTFOUND, other. */
static int resolve(dsys_data_service *d, const char *ref, dsys_item **out) {
  *out = NULL;
  if (!ref || !*ref || strlen(ref) > MAX_KEY) return DSYS_ENOTFOUND;
  char *ik = cat("data:i:", ref);
  if (!ik) return DSYS_ENOMEM;
  dsys_item *idx = NULL;
  int rc = dsys_store_get(d->store, ik, &idx);
  free(ik);
  if (rc && rc != DSYS_ENOTFOUND) return rc;
  if (!rc) {
    json_object *k = NULL;
    if (!dsysi_json_parse(idx->value, strlen(idx->value), &k) &&
        json_object_is_type(k, json_type_string)) {
      char *sk = cat("data:k:", json_object_get_string(k));
      dsys_item *it = NULL;
      if (sk && !dsys_store_get(d->store, sk, &it)) {
        json_object *env = NULL;
        const char *id = NULL;
        if (!dsysi_json_parse_object(it->value, strlen(it->value), &env))
          id = dsysi_json_str(env, "id");
        int match = id && !strcmp(id, ref);
        json_object_put(env);
        if (match) *out = it;
        else dsys_item_free(it);
      }
      free(sk);
    }
    json_object_put(k);
    dsys_item_free(idx);
    if (*out) return 0;
  }
  char *sk = cat("data:k:", ref);
  if (!sk) return DSYS_ENOMEM;
  rc = dsys_store_get(d->store, sk, out);
  free(sk);
  return rc;
}

/* A positive decimal integer of n bytes at s, or -1. */
static long long positive(const char *s, size_t n) {
  char buf[24];
  if (!n || n >= sizeof buf || *s < '0' || *s > '9') return -1;
  memcpy(buf, s, n);
  buf[n] = '\0';
  char *end;
  errno = 0;
  long long v = strtoll(buf, &end, 10);
  return !errno && !*end && v > 0 ? v : -1;
}

/* Expected version from If-Match or the body's expectedVersion: 0 when
 * none, -1 (and a 400 answer) when malformed. If-Match takes a version
 * number or an ETag of this service ("ID.VERSION"); *tag_id gets the ID
 * of the latter (0 otherwise): it must be the item's, or 412. */
static int64_t expected_version(dsys_request *req, json_object *body, int64_t *tag_id) {
  *tag_id = 0;
  const char *h = dsys_request_header(req, "If-Match");
  if (h) {
    if (!strncmp(h, "W/", 2)) h += 2;
    size_t n = strlen(h);
    if (n >= 2 && h[0] == '"' && h[n - 1] == '"') {
      h++;
      n -= 2;
    }
    const char *dot = memchr(h, '.', n);
    long long v = dot ? positive(dot + 1, n - (size_t)(dot + 1 - h)) : positive(h, n);
    long long id = dot ? positive(h, (size_t)(dot - h)) : 0;
    if (v > 0 && id >= 0) {
      *tag_id = id;
      return v;
    }
    dsysi_respond_err(req, 400, "DSYS_EINVAL",
                      "If-Match must be a version number or an ETag of this item");
    return -1;
  }
  int64_t v = 0;
  json_object *x;
  if (body && json_object_object_get_ex(body, "expectedVersion", &x) && x) {
    if (dsysi_json_int64(body, "expectedVersion", &v) || v <= 0) {
      dsysi_respond_err(req, 400, "DSYS_EINVAL",
                        "expectedVersion must be a positive integer");
      return -1;
    }
  }
  return v;
}

static void respond_mismatch(dsys_request *req, int64_t current) {
  json_object *o = json_object_new_object();
  json_object_object_add(o, "error", json_object_new_string("Version mismatch"));
  json_object_object_add(o, "code", json_object_new_string("DSYS_ECONFLICT"));
  if (current > 0)
    json_object_object_add(o, "currentVersion", json_object_new_int64(current));
  dsysi_respond_obj(req, 412, o);
}

/* A member that counts as given: present and not null. */
static json_object *given(json_object *o, const char *k) {
  json_object *v;
  return json_object_object_get_ex(o, k, &v) && v ? v : NULL;
}

/* ---- change events ---- */

/* The event payload of a change: created/updated carry the item, deleted
 * its id and key. */
static json_object *change_payload(dsys_data_service *d, const dsys_item *it, int deleted) {
  json_object *item = item_json(it);
  if (!item) return NULL;
  json_object *o = json_object_new_object(), *v;
  json_object_object_add(o, "id", json_object_get(
      json_object_object_get_ex(item, "id", &v) ? v : NULL));
  json_object_object_add(o, "key", json_object_get(
      json_object_object_get_ex(item, "key", &v) ? v : NULL));
  if (!deleted) json_object_object_add(o, "data", json_object_get(item));
  json_object_object_add(o, "service", json_object_new_string(d->svc.name));
  json_object_object_add(o, "timestamp", dsysi_json_time(dsysi_svc_now(&d->svc)));
  json_object_put(item);
  return o;
}

/* A change of the item with this payload ({id, key, ...}): both refs that
 * reach it leave the read cache. */
static void evict(dsys_data_service *d, json_object *payload) {
  if (!d->cache) return;
  const char *id = dsysi_json_str(payload, "id"), *key = dsysi_json_str(payload, "key");
  if (id) dsys_cache_invalidate(d->cache, id);
  if (key) dsys_cache_invalidate(d->cache, key);
}

/* Before answering a write: this instance's cache forgets the item, so the
 * writer reads its write back at once from here (the change log, written
 * after the answer, reaches the other instances). */
static void evict_item(dsys_data_service *d, const dsys_item *it) {
  if (!d->cache) return;
  json_object *env = NULL;
  if (!dsysi_json_parse_object(it->value, strlen(it->value), &env) && dsysi_json_str(env, "id"))
    dsys_cache_invalidate(d->cache, dsysi_json_str(env, "id"));
  else
    dsys_cache_clear(d->cache); /* cannot name its id */
  json_object_put(env);
  if (!strncmp(it->key, "data:k:", 7)) dsys_cache_invalidate(d->cache, it->key + 7);
}

/* After a committed write: append it to the shared change log (for the
 * other instances) and publish it here at once. */
static void record_change(dsys_data_service *d, const char *event, const dsys_item *it,
                          int deleted) {
  json_object *p = change_payload(d, it, deleted);
  if (!p) {
    if (d->cache) dsys_cache_clear(d->cache); /* cannot name the refs: drop all */
    return;
  }
  evict(d, p);
  size_t len = 0;
  char *text = dsysi_json_dump(p, &len);
  int64_t rev = 0;
  if (text && !dsys_store_incr(d->store, "data:rev", 1, &rev)) {
    json_object *rec = json_object_new_object();
    json_object_object_add(rec, "event", json_object_new_string(event));
    json_object_object_add(rec, "origin", json_object_new_string(d->origin));
    json_object_object_add(rec, "payload", json_object_get(p));
    char *rt = dsysi_json_dump(rec, NULL);
    json_object_put(rec);
    char key[40];
    snprintf(key, sizeof key, "data:log:%020lld", (long long)rev);
    dsys_store_write w = {.size = sizeof w, .ttl_ms = LOG_TTL_MS};
    if (!rt || dsys_store_put(d->store, key, rt, &w, NULL))
      dsysi_log(DSYS_LOG_WARN, d->svc.name, "change %lld not logged", (long long)rev);
    free(rt);
  }
  if (text) dsys_events_publish(d->ev, DATA_TOPIC, event, text, len, NULL);
  free(text);
  json_object_put(p);
}

static int64_t current_rev(dsys_data_service *d) {
  dsys_item *it = NULL;
  int64_t rev = 0;
  if (!dsys_store_get(d->store, "data:rev", &it)) rev = strtoll(it->value, NULL, 10);
  dsys_item_free(it);
  return rev;
}

/* The poller: other instances' changes from the shared change log. */
static void poll_changes(void *ud) {
  dsys_data_service *d = ud;
  int64_t rev = current_rev(d);
  if (rev <= d->seen_rev) return;
  int64_t now = dsys_clock_now_ms(d->svc.clock);
  char key[40], *enc = NULL, *cursor = NULL;
  snprintf(key, sizeof key, "data:log:%020lld", (long long)d->seen_rev);
  if (!dsys_base64url_encode(key, strlen(key), &enc)) {
    cursor = malloc(strlen(enc) + 4);
    if (cursor) sprintf(cursor, "c1.%s", enc);
  }
  dsys_free(enc);
  dsys_item **items = NULL;
  size_t n = 0;
  int rc = cursor ? dsys_store_list(d->store, "data:log:", cursor, 1000, &items, &n, NULL)
                  : DSYS_ENOMEM;
  free(cursor);
  if (rc) return;
  size_t i = 0;
  while (d->seen_rev < rev) {
    int64_t r = i < n ? strtoll(items[i]->key + 9, NULL, 10) : rev + 1;
    if (r > d->seen_rev + 1) { /* a revision is missing (yet) */
      if (!d->gap_since) d->gap_since = now;
      if (now - d->gap_since < GAP_WAIT_MS) break;
      d->seen_rev = (r <= rev ? r : rev + 1) - 1; /* give up on the gap */
      if (d->cache) dsys_cache_clear(d->cache); /* its change is unknown */
      d->gap_since = 0;
      continue;
    }
    d->gap_since = 0;
    if (r == d->seen_rev + 1) {
      json_object *rec = NULL, *pl = NULL;
      const char *ev = NULL, *origin = NULL;
      if (!dsysi_json_parse_object(items[i]->value, strlen(items[i]->value), &rec)) {
        ev = dsysi_json_str(rec, "event");
        origin = dsysi_json_str(rec, "origin");
        json_object_object_get_ex(rec, "payload", &pl);
      }
      if (ev && pl && (!origin || strcmp(origin, d->origin))) {
        evict(d, pl);
        size_t len = 0;
        char *text = dsysi_json_dump(pl, &len);
        if (text) dsys_events_publish(d->ev, DATA_TOPIC, ev, text, len, NULL);
        free(text);
      }
      json_object_put(rec);
      d->seen_rev = r;
    }
    i++;
  }
  dsys_item_list_free(items, n);
}

static void h_events(dsys_request *req, void *ud) {
  dsys_data_service *d = ud;
  static const char *const topics[] = {DATA_TOPIC};
  dsys_events_serve_sse(d->ev, req, topics, 1, NULL);
}

/* ---- create ---- */

static void h_create(dsys_request *req, void *ud) {
  dsys_data_service *d = ud;
  json_object *b;
  if (dsysi_body_object(req, &b)) return;
  json_object *key = given(b, "key"), *value = given(b, "value"),
              *meta = given(b, "metadata");
  json_object *env = NULL;
  char *sk = NULL, *text = NULL, *mtext = NULL;
  if (!key || !value ||
      (json_object_is_type(key, json_type_string) && !json_object_get_string_len(key))) {
    dsysi_respond_err(req, 400, "DSYS_EINVAL", "Key and value are required");
    goto out;
  }
  if (!json_object_is_type(key, json_type_string)) {
    dsysi_respond_err(req, 400, "DSYS_ETYPE", "Key must be a string");
    goto out;
  }
  const char *k = json_object_get_string(key);
  if ((size_t)json_object_get_string_len(key) != strlen(k)) {
    dsysi_respond_err(req, 400, "DSYS_EINVAL", "Key must not contain NUL");
    goto out;
  }
  if (strlen(k) > MAX_KEY) {
    dsysi_respond_err(req, 400, "DSYS_EINVAL", "Key is too long (max 1000 bytes)");
    goto out;
  }
  if (meta && !json_object_is_type(meta, json_type_object)) {
    dsysi_respond_err(req, 400, "DSYS_ETYPE", "Metadata must be an object");
    goto out;
  }
  int64_t n = 0;
  int rc = dsys_store_incr(d->store, "data:seq", 1, &n);
  if (rc) {
    respond_store_err(req, rc);
    goto out;
  }
  char id[32];
  snprintf(id, sizeof id, "data-%lld", (long long)(n + 10));
  env = json_object_new_object();
  json_object_object_add(env, "id", json_object_new_string(id));
  json_object_object_add(env, "value", json_object_get(value));
  text = dsysi_json_dump(env, NULL);
  mtext = meta ? dsysi_json_dump(meta, NULL) : NULL;
  sk = cat("data:k:", k);
  if (!text || !sk || (meta && !mtext)) {
    dsysi_respond_err(req, 500, "DSYS_ENOMEM", "Out of memory");
    goto out;
  }
  dsys_store_write w = {.size = sizeof w, .metadata = mtext};
  dsys_item *it = NULL;
  rc = dsys_store_create(d->store, sk, text, &w, &it);
  if (rc == DSYS_EEXIST) {
    dsysi_respond_err(req, 409, "DSYS_EEXIST", "Key already exists");
    goto out;
  }
  if (rc == DSYS_ETOOBIG) {
    dsysi_respond_err(req, 413, "DSYS_ETOOBIG", "Value too large");
    goto out;
  }
  if (rc) {
    respond_store_err(req, rc);
    goto out;
  }
  /* The id index; if this write failed the item is still reachable by
   * key, and the next create is unaffected. */
  char ik[48];
  snprintf(ik, sizeof ik, "data:i:%s", id);
  json_object *ks = json_object_new_string(k);
  char *kt = dsysi_json_dump(ks, NULL);
  json_object_put(ks);
  if (!kt || dsys_store_put(d->store, ik, kt, NULL, NULL))
    dsysi_log(DSYS_LOG_WARN, d->svc.name, "could not index %s", id);
  free(kt);
  evict_item(d, it); /* a remembered 404 (negative caching) */
  respond_item(req, 201, "Data created successfully", it);
  record_change(d, "data-created", it, 0);
  dsys_item_free(it);
out:
  free(sk);
  free(text);
  free(mtext);
  json_object_put(env);
  json_object_put(b);
}

/* ---- read ---- */

/* The cached form of an item: its ETag, a newline, its API JSON. */
static int load_item(void *ud, const char *ref, void **value, size_t *len) {
  dsys_data_service *d = ud;
  dsys_item *it = NULL;
  int rc = resolve(d, ref, &it);
  if (rc) return rc;
  json_object *j = item_json(it);
  size_t jn = 0;
  char *text = j ? dsysi_json_dump(j, &jn) : NULL, tag[64];
  json_object_put(j);
  etag_of(it, tag, sizeof tag);
  dsys_item_free(it);
  if (!text) return j ? DSYS_ENOMEM : DSYS_EBADJSON;
  size_t tn = strlen(tag);
  char *v = malloc(tn + 1 + jn);
  if (v) {
    memcpy(v, tag, tn);
    v[tn] = '\n';
    memcpy(v + tn + 1, text, jn);
    *value = v;
    *len = tn + 1 + jn;
  }
  free(text);
  return v ? 0 : DSYS_ENOMEM;
}

static void h_get_cached(dsys_data_service *d, dsys_request *req) {
  void *v = NULL;
  size_t n = 0;
  int rc = dsys_cache_get(d->cache, dsys_request_param(req, "ref"), load_item, d, &v, &n);
  const char *nl = rc ? NULL : memchr(v, '\n', n);
  if (rc == DSYS_EBADJSON || (!rc && !nl)) {
    dsysi_respond_err(req, 500, "DSYS_EBADJSON", "Stored item is malformed");
  } else if (rc) {
    respond_store_err(req, rc);
  } else {
    char tag[64];
    snprintf(tag, sizeof tag, "%.*s", (int)(nl - (char *)v), (char *)v);
    cache_headers(req, tag);
    if (dsysi_etag_list_match(dsys_request_header(req, "If-None-Match"), tag)) {
      dsys_respond(req, 304, NULL, NULL, 0);
    } else {
      static const char head[] = "{\"message\":\"Data retrieved successfully\",\"data\":";
      size_t jn = n - (size_t)(nl + 1 - (char *)v);
      char *body = malloc(sizeof head + jn + 1);
      if (!body) {
        dsysi_respond_err(req, 500, "DSYS_ENOMEM", "Out of memory");
      } else {
        memcpy(body, head, sizeof head - 1);
        memcpy(body + sizeof head - 1, nl + 1, jn);
        body[sizeof head - 1 + jn] = '}';
        dsys_respond(req, 200, "application/json", body, sizeof head + jn);
        free(body);
      }
    }
  }
  dsys_free(v);
}

static void h_get(dsys_request *req, void *ud) {
  dsys_data_service *d = ud;
  if (d->cache) {
    h_get_cached(d, req);
    return;
  }
  dsys_item *it = NULL;
  int rc = resolve(d, dsys_request_param(req, "ref"), &it);
  char tag[64];
  if (!rc) etag_of(it, tag, sizeof tag);
  if (rc) {
    respond_store_err(req, rc);
  } else if (dsysi_etag_list_match(dsys_request_header(req, "If-None-Match"), tag)) {
    cache_headers(req, tag); /* the client's copy is current: no body */
    dsys_respond(req, 304, NULL, NULL, 0);
  } else {
    respond_item(req, 200, "Data retrieved successfully", it);
  }
  dsys_item_free(it);
}

static int newest_first(const void *a, const void *b) {
  const dsys_item *x = *(dsys_item *const *)a, *y = *(dsys_item *const *)b;
  if (x->created_at != y->created_at) return x->created_at > y->created_at ? -1 : 1;
  return x->id > y->id ? -1 : x->id < y->id;
}

static void h_list(dsys_request *req, void *ud) {
  dsys_data_service *d = ud;
  const char *prefix = dsys_request_query_param(req, "prefix");
  const char *lim = dsys_request_query_param(req, "limit");
  const char *cursor = dsys_request_query_param(req, "cursor");
  int paged = prefix || lim || cursor;
  size_t limit = 1000;
  if (lim) {
    char *end;
    errno = 0;
    long long v = strtoll(lim, &end, 10);
    if (errno || *end || !*lim || v < 1 || v > 1000) {
      dsysi_respond_err(req, 400, "DSYS_EINVAL",
                        "limit must be an integer from 1 to 1000");
      return;
    }
    limit = (size_t)v;
  } else if (paged) {
    limit = 100;
  }
  char *sp = cat("data:k:", prefix ? prefix : "");
  if (!sp) {
    dsysi_respond_err(req, 500, "DSYS_ENOMEM", "Out of memory");
    return;
  }
  dsys_item **all = NULL;
  size_t nall = 0, capall = 0;
  char *next = NULL;
  int rc = 0;
  char *cur = cursor ? strdup(cursor) : NULL;
  for (;;) {
    dsys_item **items = NULL;
    size_t n = 0;
    dsys_free(next);
    next = NULL;
    rc = dsys_store_list(d->store, sp, cur, limit, &items, &n, &next);
    if (rc) break;
    if (dsysi_grow(&all, &capall, nall + n + 1, sizeof *all, 64)) {
      dsys_item_list_free(items, n);
      rc = DSYS_ENOMEM;
      break;
    }
    memcpy(all + nall, items, n * sizeof *items);
    nall += n;
    free(items); /* the array only: the items moved to all */
    free(cur);
    cur = next ? strdup(next) : NULL;
    if (paged || !next) break;
  }
  free(cur);
  free(sp);
  if (rc == DSYS_EINVAL) {
    dsysi_respond_err(req, 400, "DSYS_EINVAL", "Invalid cursor");
  } else if (rc) {
    respond_store_err(req, rc);
  } else {
    if (!paged && nall > 1) qsort(all, nall, sizeof *all, newest_first);
    json_object *arr = json_object_new_array();
    for (size_t i = 0; i < nall; i++) {
      json_object *j = item_json(all[i]);
      if (j) json_object_array_add(arr, j);
    }
    json_object *o = json_object_new_object();
    json_object_object_add(o, "message",
                           json_object_new_string("Data retrieved successfully"));
    json_object_object_add(o, "count",
                           json_object_new_int64((int64_t)json_object_array_length(arr)));
    json_object_object_add(o, "data", arr);
    if (paged)
      json_object_object_add(o, "nextCursor",
                             next ? json_object_new_string(next) : NULL);
    dsysi_respond_obj(req, 200, o);
  }
  dsys_free(next);
  dsys_item_list_free(all, nall);
}

/* ---- update, increment, delete (compare-and-swap loops) ---- */

/* Build the new envelope of it: value replaced when nv != NULL; delta added
 * when inc. @return 0, or an HTTP status with *msg set. */
static int new_envelope(const dsys_item *it, json_object *nv, int inc,
                        int64_t by, char **out, const char **msg) {
  json_object *env = NULL, *v = NULL;
  if (dsysi_json_parse_object(it->value, strlen(it->value), &env)) {
    *msg = "Stored item is malformed";
    return 500;
  }
  int status = 0;
  if (inc) {
    json_object_object_get_ex(env, "value", &v);
    if (!v || !json_object_is_type(v, json_type_int)) {
      *msg = "Value is not an integer";
      status = 409;
    } else {
      errno = 0;
      int64_t x = json_object_get_int64(v);
      int64_t r;
      if (errno || __builtin_add_overflow(x, by, &r)) {
        *msg = "Increment overflows a 64-bit integer";
        status = 400;
      } else {
        json_object_object_add(env, "value", json_object_new_int64(r));
      }
    }
  } else if (nv) {
    json_object_object_add(env, "value", json_object_get(nv));
  }
  if (!status) {
    *out = dsysi_json_dump(env, NULL);
    if (!*out) {
      *msg = "Out of memory";
      status = 500;
    }
  }
  json_object_put(env);
  return status;
}

/* Shallow merge of patch into the item's metadata. */
static char *merged_meta(const dsys_item *it, json_object *patch) {
  json_object *m = NULL;
  if (dsysi_json_parse_object(it->metadata, strlen(it->metadata), &m))
    m = json_object_new_object();
  json_object_object_foreach(patch, k, v)
    json_object_object_add(m, k, json_object_get(v));
  char *s = dsysi_json_dump(m, NULL);
  json_object_put(m);
  return s;
}

static void modify(dsys_data_service *d, dsys_request *req, int inc) {
  json_object *b;
  if (dsysi_body_object(req, &b)) return;
  json_object *nv = given(b, "value"), *meta = given(b, "metadata");
  int64_t by = 1;
  int64_t tag_id;
  int64_t ev = expected_version(req, b, &tag_id);
  if (ev < 0) goto out;
  if (!inc && meta && !json_object_is_type(meta, json_type_object)) {
    dsysi_respond_err(req, 400, "DSYS_ETYPE", "Metadata must be an object");
    goto out;
  }
  if (inc && given(b, "by") && dsysi_json_int64(b, "by", &by)) {
    dsysi_respond_err(req, 400, "DSYS_ETYPE", "by must be an integer");
    goto out;
  }
  const char *ref = dsys_request_param(req, "ref");
  for (int attempt = 0;; attempt++) {
    dsys_item *it = NULL;
    int rc = resolve(d, ref, &it);
    if (rc) {
      respond_store_err(req, rc);
      break;
    }
    if ((ev && ev != it->version) || (tag_id && tag_id != it->id)) {
      respond_mismatch(req, it->version);
      dsys_item_free(it);
      break;
    }
    char *text = NULL, *mtext = NULL;
    const char *msg = NULL;
    int st = new_envelope(it, nv, inc, by, &text, &msg);
    if (!st && !inc && meta && !(mtext = merged_meta(it, meta))) {
      st = 500;
      msg = "Out of memory";
    }
    if (st) {
      dsysi_respond_err(req, st, st == 500 ? "DSYS_EINTERNAL" : "DSYS_ETYPE", msg);
      dsys_item_free(it);
      break;
    }
    dsys_store_write w = {.size = sizeof w, .metadata = mtext,
                          .expected_version = it->version};
    dsys_item *upd = NULL;
    rc = dsys_store_update(d->store, it->key, text, &w, &upd);
    free(text);
    free(mtext);
    dsys_item_free(it);
    if (rc == DSYS_ECONFLICT && !ev && attempt < CAS_TRIES) continue;
    if (!rc) evict_item(d, upd);
    if (rc == DSYS_ECONFLICT) respond_mismatch(req, 0);
    else if (rc) respond_store_err(req, rc);
    else respond_item(req, 200, inc ? "Data incremented successfully"
                                    : "Data updated successfully", upd);
    if (!rc) record_change(d, "data-updated", upd, 0);
    dsys_item_free(upd);
    break;
  }
out:
  json_object_put(b);
}

static void h_update(dsys_request *req, void *ud) { modify(ud, req, 0); }
static void h_incr(dsys_request *req, void *ud) { modify(ud, req, 1); }

static void h_delete(dsys_request *req, void *ud) {
  dsys_data_service *d = ud;
  int64_t tag_id;
  int64_t ev = expected_version(req, NULL, &tag_id);
  if (ev < 0) return;
  dsys_item *it = NULL;
  int rc = resolve(d, dsys_request_param(req, "ref"), &it);
  if (rc) {
    respond_store_err(req, rc);
    return;
  }
  if ((ev && ev != it->version) || (tag_id && tag_id != it->id)) {
    respond_mismatch(req, it->version);
    dsys_item_free(it);
    return;
  }
  rc = dsys_store_delete(d->store, it->key, it->version);
  if (rc == DSYS_ECONFLICT) {
    respond_mismatch(req, 0);
  } else if (rc) {
    respond_store_err(req, rc);
  } else {
    json_object *env = NULL;
    if (!dsysi_json_parse_object(it->value, strlen(it->value), &env) &&
        dsysi_json_str(env, "id")) {
      char *ik = cat("data:i:", dsysi_json_str(env, "id"));
      if (ik) dsys_store_delete(d->store, ik, 0);
      free(ik);
    }
    json_object_put(env);
    evict_item(d, it);
    dsys_respond_json(req, 200, "{\"message\":\"Data deleted successfully\"}");
    record_change(d, "data-deleted", it, 1);
  }
  dsys_item_free(it);
}

/* ---- seeding ---- */

static int seed(dsys_data_service *d) {
  dsys_item *m = NULL;
  int rc = dsys_store_get(d->store, "data:seeded", &m);
  dsys_item_free(m);
  if (rc != DSYS_ENOTFOUND) return rc;
  /* Every create is atomic, so instances that seed at the same time
   * create each item exactly once between them. */
  for (int i = 1; i <= 10; i++) {
    char key[40], val[256], meta[160], ik[32], kj[48];
    snprintf(key, sizeof key, "data:k:default-key-%d", i);
    snprintf(val, sizeof val,
             "{\"id\":\"data-%d\",\"value\":{\"title\":\"Data Item %d\","
             "\"description\":\"This is default data item number %d\","
             "\"number\":%d,\"active\":%s}}",
             i, i, i, i, i % 2 == 0 ? "true" : "false");
    snprintf(meta, sizeof meta,
             "{\"category\":\"%s\",\"priority\":\"%s\",\"created\":\"system\"}",
             i <= 5 ? "category-a" : "category-b",
             i <= 3 ? "high" : i <= 7 ? "medium" : "low");
    dsys_store_write w = {.size = sizeof w, .metadata = meta};
    rc = dsys_store_create(d->store, key, val, &w, NULL);
    if (rc && rc != DSYS_EEXIST) return rc;
    snprintf(ik, sizeof ik, "data:i:data-%d", i);
    snprintf(kj, sizeof kj, "\"default-key-%d\"", i);
    rc = dsys_store_create(d->store, ik, kj, NULL, NULL);
    if (rc && rc != DSYS_EEXIST) return rc;
  }
  rc = dsys_store_create(d->store, "data:seeded", "true", NULL, NULL);
  return rc == DSYS_EEXIST ? 0 : rc;
}

static int data_ready(void *ud, const char **what, char *err, size_t errlen) {
  dsys_data_service *d = ud;
  dsys_item *it = NULL;
  int rc = dsys_store_get(d->store, "data:seeded", &it);
  dsys_item_free(it);
  *what = "database";
  if (rc == DSYS_ENOTFOUND) return 0;
  if (rc) snprintf(err, errlen, "%s", dsys_strerror(rc));
  return rc;
}

int dsys_service_data_mount(dsys_server *srv, const dsys_data_options *opts,
                            dsys_data_service **out) {
  if (!srv || !opts || !out || !opts->store) return DSYS_EINVAL;
  dsys_data_service *d = calloc(1, sizeof *d);
  if (!d) return DSYS_ENOMEM;
  d->store = opts->store;
  int rc = dsysi_svc_init(&d->svc, srv, opts->clock,
                          opts->name ? opts->name : "data-service", "data",
                          data_ready, d);
  if (rc) {
    free(d);
    return rc;
  }
  if (dsys_random_hex(d->origin, sizeof d->origin, 16))
    snprintf(d->origin, sizeof d->origin, "%p", (void *)d);
  dsys_events_options eo = {.size = sizeof eo, .clock = d->svc.clock, .history = 256};
  rc = dsys_events_new(&d->ev, &eo);
  if (rc) {
    dsysi_svc_fini(&d->svc);
    free(d);
    return rc;
  }
  d->seen_rev = current_rev(d);
  /* Before the :ref routes, which would otherwise take GET /api/data/data-work. */
  static const char *const slow[] = {"/data-work", "/api/data/data-work"};
  rc = dsysi_svc_slow_routes(&d->svc, slow, 2,
                             opts->work_delay_ms > 0 ? opts->work_delay_ms : 500,
                             "Data worker completed");
  const struct {
    const char *m, *p;
    dsys_handler_fn fn;
  } routes[] = {
      {"GET", "/api/data", h_list},
      {"GET", "/api/data/events", h_events},
      {"POST", "/api/data", h_create},
      {"GET", "/api/data/:ref", h_get},
      {"PUT", "/api/data/:ref", h_update},
      {"DELETE", "/api/data/:ref", h_delete},
      {"POST", "/api/data/:ref/increment", h_incr},
  };
  for (size_t i = 0; !rc && i < sizeof routes / sizeof routes[0]; i++)
    rc = dsys_server_route(srv, routes[i].m, routes[i].p, routes[i].fn, d);
  if (!rc && !opts->no_seed) {
    rc = seed(d);
    if (rc) dsysi_log(DSYS_LOG_ERROR, d->svc.name, "seeding failed: %s",
                      dsys_strerror(rc));
  }
  if (!rc) {
    size_t osz = opts->size ? opts->size : sizeof *opts;
    int64_t poll = osz >= offsetof(dsys_data_options, events_poll_ms) + sizeof(int64_t)
                       ? opts->events_poll_ms : 0;
    if (osz >= offsetof(dsys_data_options, cache) + sizeof opts->cache) d->cache = opts->cache;
    rc = dsysi_ticker_start_thread(&d->ticker, d->svc.clock, poll > 0 ? poll : 200, poll_changes, d);
  }
  if (rc) {
    dsys_events_free(d->ev);
    dsysi_svc_fini(&d->svc);
    free(d);
    return rc;
  }
  *out = d;
  return 0;
}

void dsys_service_data_free(dsys_data_service *d) {
  if (!d) return;
  dsys_events_close_streams(d->ev);
  dsysi_ticker_stop(&d->ticker);
  dsys_events_free(d->ev);
  dsysi_svc_fini(&d->svc);
  free(d);
}
