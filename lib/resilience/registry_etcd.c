/* Registry backend "etcd": "etcd://host:port[,host:port...]/prefix", an
 * etcd v3 cluster through its JSON gateway over libcurl (etcd has no C
 * client). Everything lives under the prefix:
 *
 *   PREFIX/i/<id>            an instance: JSON with its fields, the stored
 *                            health flag, registered_ms and heartbeat_ms on
 *                            the registry's clock; attached to a lease
 *   PREFIX/index             the change index (decimal)
 *   PREFIX/log/<20 digits>   one change: {"k": kind, "id": .., "t": type}
 *
 * Every logged change is one txn that compares the index key's
 * mod_revision with the one read, then writes the instance, the index and
 * the log entry (and prunes the log to DSYSI_REGISTRY_LOG_KEEP entries):
 * changes from every process are serialised by etcd itself, and a txn that
 * lost the race is re-read and retried (bounded). Writes that are not
 * changes (a heartbeat on a healthy instance) compare the instance's own
 * mod_revision, so a concurrent sweep turning it unhealthy is never
 * overwritten without a HEALTHY change.
 *
 * Health follows the registry's clock like every backend: a heartbeat is a
 * put of the new time. The instance's lease (one per handle, TTL = reap
 * time + a margin of a tenth, at least 2 s, kept alive by heartbeats at
 * most every third of its TTL) only removes instances when no registry
 * handle sweeps them first (every process gone): a backstop, without a log
 * entry.
 *
 * Push: a thread keeps a streaming watch on PREFIX/index and calls
 * env.changed() on every event and on every (re)connection (changes may
 * have been missed meanwhile: the generic layer re-reads the log from its
 * own index, so the watch is a doorbell that needs no revision bookkeeping
 * and cannot be compacted away). The generic layer's sweep polls the log
 * as well: the safety net for the watch bugs etcd 3.4 has after
 * partitions.
 *
 * Endpoints are tried in order from the last good one; a request moves to
 * the next on a connection error, a timeout, or an etcd "unavailable"
 * answer (a member without a leader answers at once thanks to the
 * hasleader metadata). A request gives up with DSYS_EUNAVAIL once its
 * bound (connect 1 s, whole request 3 s by default) has passed.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <curl/curl.h>
#include <distsys/client.h>
#include "core/internal.h"
#include "core/base64.h"
#include "core/json.h"
#include "core/plugin.h"
#include "resilience/registry_int.h"

#define LEASE_MARGIN_MIN_S 2 /* lease TTL beyond the reap time: at least */
#define MAX_RETRIES 16      /* txn conflicts before DSYS_EBUSY */
#define EXPIRE_BATCH 40     /* transitions per txn (etcd allows 128 ops) */
#define KA_SLOTS 16         /* leases whose last keepalive is remembered */

typedef struct et_state {
  pthread_mutex_t mu;       /* the ops' curl handle (see et_attach) */
  int mu_init;
  char **eps;               /* "http://host:port" */
  size_t neps;
  _Atomic size_t cur;       /* last endpoint that answered */
  char *k_index, *k_inst, *k_log;
  long connect_ms, timeout_ms;
  CURL *easy;
  struct curl_slist *hdrs;
  dsysi_buf body;
  int64_t lease, lease_ttl_s;
  struct { int64_t id, at_ms; } ka[KA_SLOTS];
  size_t ka_next;
  int down;                 /* an outage is being logged */
  char last[256];           /* why the last member tried failed */
  /* push */
  dsys_registry_env env;
  pthread_t th;
  int th_started;
  CURLM *wm;
  _Atomic int stop;
} et_state;

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

/* ---- JSON pieces of the gateway's protocol ---- */

/* Base64 of a string as a JSON string object (NULL when out of memory). */
static json_object *b64(const char *s, size_t len) {
  char *e = NULL;
  if (dsysi_base64_encode(s, len, &e)) return NULL;
  json_object *o = json_object_new_string(e);
  free(e);
  return o;
}

static json_object *b64s(const char *s) { return b64(s, strlen(s)); }

/* int64s travel as JSON strings */
static json_object *i64(int64_t v) {
  char b[24];
  snprintf(b, sizeof b, "%lld", (long long)v);
  return json_object_new_string(b);
}

static int64_t get_i64(json_object *o, const char *key) {
  json_object *v;
  if (!o || !json_object_object_get_ex(o, key, &v)) return 0;
  if (json_object_is_type(v, json_type_string)) return strtoll(json_object_get_string(v), NULL, 10);
  return json_object_get_int64(v);
}

static void add(json_object *o, const char *k, json_object *v) {
  json_object_object_add(o, k, v);
}

/* The end of the range of keys that start with prefix. */
static char *prefix_end(const char *prefix) {
  char *e = strdup(prefix);
  if (e && *e) e[strlen(e) - 1]++;
  return e;
}

static json_object *range_op(const char *key, const char *end) {
  json_object *r = json_object_new_object(), *op = json_object_new_object();
  add(r, "key", b64s(key));
  if (end) add(r, "range_end", b64s(end));
  add(op, "request_range", r);
  return op;
}

/* lease: 0 none, -1 keep the key's own (ignore_lease) */
static json_object *put_op(const char *key, const char *value, int64_t lease) {
  json_object *r = json_object_new_object(), *op = json_object_new_object();
  add(r, "key", b64s(key));
  add(r, "value", b64s(value));
  if (lease > 0) add(r, "lease", i64(lease));
  if (lease < 0) add(r, "ignore_lease", json_object_new_boolean(1));
  add(op, "request_put", r);
  return op;
}

static json_object *del_op(const char *key, const char *end) {
  json_object *r = json_object_new_object(), *op = json_object_new_object();
  add(r, "key", b64s(key));
  if (end) add(r, "range_end", b64s(end));
  add(op, "request_delete_range", r);
  return op;
}

/* mod_revision(key) == rev; 0 means the key does not exist */
static json_object *cmp_mod(const char *key, int64_t rev) {
  json_object *c = json_object_new_object();
  add(c, "key", b64s(key));
  add(c, "target", json_object_new_string("MOD"));
  add(c, "result", json_object_new_string("EQUAL"));
  add(c, "mod_revision", i64(rev));
  return c;
}

/* A decoded key-value of a range answer. */
typedef struct kv {
  char *key, *value;
  size_t vlen;
  int64_t mod, lease;
} kv;

static void kvs_free(kv *v, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(v[i].key);
    free(v[i].value);
  }
  free(v);
}

/* The kvs of a range response object. */
static int decode_kvs(json_object *rr, kv **out, size_t *n) {
  *out = NULL;
  *n = 0;
  json_object *a;
  if (!json_object_object_get_ex(rr, "kvs", &a)) return 0;
  if (!json_object_is_type(a, json_type_array)) return DSYS_EPROTO;
  size_t cnt = json_object_array_length(a);
  kv *v = calloc(cnt ? cnt : 1, sizeof *v);
  if (!v) return DSYS_ENOMEM;
  for (size_t i = 0; i < cnt; i++) {
    json_object *e = json_object_array_get_idx(a, i);
    const char *k = dsysi_json_str(e, "key"), *val = dsysi_json_str(e, "value");
    size_t kl;
    void *kb = NULL, *vb = NULL;
    if (!k || dsysi_base64_decode(k, strlen(k), &kb, &kl) ||
        dsysi_base64_decode(val ? val : "", val ? strlen(val) : 0, &vb, &v[i].vlen)) {
      free(kb);
      kvs_free(v, i);
      return DSYS_EPROTO;
    }
    v[i].key = kb;
    v[i].value = vb;
    v[i].mod = get_i64(e, "mod_revision");
    v[i].lease = get_i64(e, "lease");
  }
  *out = v;
  *n = cnt;
  return 0;
}

/* ---- requests ---- */

static size_t on_body(char *p, size_t sz, size_t nm, void *ud) {
  return dsysi_buf_append(ud, p, sz * nm) ? 0 : sz * nm;
}

/* gRPC codes after which another member may do better: Unknown (the
 * gateway's "context deadline exceeded"), DeadlineExceeded, Unavailable
 * ("no leader", "request timed out", "leader changed") */
static int failover_code(int64_t code) { return code == 2 || code == 4 || code == 14; }

static int grpc_err(int64_t code) {
  switch (code) {
  case 3: return DSYS_EINVAL;     /* e.g. ignore_lease on a missing key */
  case 5: return DSYS_ENOTFOUND;  /* e.g. requested lease not found */
  case 7: return DSYS_EPERM;
  case 8: return DSYS_ENOSPC;     /* the NOSPACE alarm: quota reached */
  case 16: return DSYS_EAUTH;
  default: return DSYS_EPROTO;
  }
}

static void setup_easy(et_state *s, CURL *e, const char *url, const char *body, long timeout_ms) {
  curl_easy_reset(e);
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http");
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, s->connect_ms);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, s->hdrs);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 5L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 2L);
}

/* POST req to path, on the endpoints in turn from the last good one. 0 with
 * *resp owning the answer; DSYS_EUNAVAIL when no member answered within
 * the bound; an etcd error mapped by grpc_err. Hold mu. */
static int et_post(et_state *s, const char *path, json_object *req, json_object **resp) {
  *resp = NULL;
  if (!req) return DSYS_ENOMEM;
  const char *body = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
  if (!body) return DSYS_ENOMEM;
  int64_t start = mono_ms();
  size_t first = s->cur;
  char *last = s->last;
  size_t lastlen = sizeof s->last;
  last[0] = '\0';
  for (size_t i = 0; i < s->neps; i++) {
    size_t ep = (first + i) % s->neps;
    long left = s->timeout_ms - (long)(mono_ms() - start);
    if (i > 0 && left <= 0) break;
    /* a member that takes the connection but does not answer (paused,
     * overloaded) must not use up the whole bound: each member but the
     * last gets an equal share of it (seen in multihost-etcd.test: one
     * SIGSTOPped member made every new process listing it first fail) */
    long share = s->timeout_ms / (long)s->neps;
    if (i + 1 < s->neps && left > share) left = share;
    if (left < s->connect_ms) left = s->connect_ms;
    char url[300];
    snprintf(url, sizeof url, "%s%s", s->eps[ep], path);
    dsysi_buf_free(&s->body);
    setup_easy(s, s->easy, url, body, left);
    curl_easy_setopt(s->easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(s->easy, CURLOPT_WRITEDATA, &s->body);
    CURLcode cc = curl_easy_perform(s->easy);
    long status = 0;
    curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
    if (cc != CURLE_OK || s->body.oom) {
      snprintf(last, lastlen, "%s: %s", s->eps[ep],
               s->body.oom ? "out of memory" : curl_easy_strerror(cc));
      if (s->body.oom) return DSYS_ENOMEM;
      continue;
    }
    json_object *j = NULL;
    int prc = dsysi_json_parse(s->body.data ? s->body.data : "", s->body.len, &j);
    if (prc || !j || !json_object_is_type(j, json_type_object)) {
      if (j) json_object_put(j);
      snprintf(last, lastlen, "%s: HTTP %ld, not a JSON object", s->eps[ep], status);
      continue;
    }
    if (status != 200) {
      int64_t code = get_i64(j, "code");
      const char *msg = dsysi_json_str(j, "error");
      snprintf(last, lastlen, "%s: %s (code %lld)", s->eps[ep], msg ? msg : "error",
               (long long)code);
      json_object_put(j);
      if (failover_code(code)) continue;
      dsysi_log(DSYS_LOG_DEBUG, "registry", "etcd %s: %s", path, last);
      return grpc_err(code);
    }
    if (ep != first) s->cur = ep;
    if (s->down) {
      dsysi_log(DSYS_LOG_INFO, "registry", "etcd: reachable again through %s", s->eps[ep]);
      s->down = 0;
    }
    *resp = j;
    return 0;
  }
  /* start the next call on the next member: the first one was no good */
  s->cur = (first + 1) % s->neps;
  if (!s->down) {
    dsysi_log(DSYS_LOG_WARN, "registry", "etcd: no member answered %s within %ld ms (last: %s)",
              path, s->timeout_ms, last);
    s->down = 1;
  }
  return DSYS_EUNAVAIL;
}

/* A txn. *succeeded tells which branch ran; *resp its answer. Takes req. */
static int txn(et_state *s, json_object *cmps, json_object *ops, int *succeeded,
               json_object **resp) {
  json_object *req = json_object_new_object();
  if (cmps) add(req, "compare", cmps);
  add(req, "success", ops);
  int rc = et_post(s, "/v3/kv/txn", req, resp);
  json_object_put(req);
  if (!rc && succeeded) {
    json_object *v;
    *succeeded = json_object_object_get_ex(*resp, "succeeded", &v) && json_object_get_boolean(v);
  }
  return rc;
}

/* The range answer number i of a txn answer. */
static json_object *txn_range(json_object *resp, size_t i) {
  json_object *a, *r;
  if (!json_object_object_get_ex(resp, "responses", &a) ||
      !json_object_is_type(a, json_type_array) || i >= json_object_array_length(a))
    return NULL;
  if (!json_object_object_get_ex(json_object_array_get_idx(a, i), "response_range", &r))
    return NULL;
  return r;
}

/* A consistent read of the index and of key (or of every key under key
 * when end is set): one txn of ranges. */
typedef struct snap {
  uint64_t index;
  int64_t index_mod;
  kv *kvs;
  size_t n;
} snap;

static int read_snap(et_state *s, const char *key, const char *end, snap *out) {
  memset(out, 0, sizeof *out);
  json_object *ops = json_object_new_array(), *resp = NULL;
  json_object_array_add(ops, range_op(s->k_index, NULL));
  if (key) json_object_array_add(ops, range_op(key, end));
  int rc = txn(s, NULL, ops, NULL, &resp);
  if (rc) return rc;
  kv *ix = NULL;
  size_t nix = 0;
  json_object *r0 = txn_range(resp, 0), *r1 = key ? txn_range(resp, 1) : NULL;
  if (!r0 || (key && !r1)) rc = DSYS_EPROTO;
  if (!rc) rc = decode_kvs(r0, &ix, &nix);
  if (!rc && nix) {
    out->index = strtoull(ix[0].value, NULL, 10);
    out->index_mod = ix[0].mod;
  }
  kvs_free(ix, nix);
  if (!rc && key) rc = decode_kvs(r1, &out->kvs, &out->n);
  json_object_put(resp);
  return rc;
}

/* ---- the change log ---- */

typedef struct change {
  int kind;
  const char *id, *type;
} change;

static void log_key(et_state *s, uint64_t idx, char *buf, size_t len) {
  snprintf(buf, len, "%s%020llu", s->k_log, (unsigned long long)idx);
}

/* Commit ops with n changes logged after the snapshot's index: adds the
 * compare on the index key, the index, the log entries and the pruning.
 * 0, DSYS_ECONFLICT (someone changed something first: re-read), errors.
 * Takes cmps and ops. */
static int commit(et_state *s, const snap *sn, json_object *cmps, json_object *ops,
                  const change *c, size_t n) {
  char key[512], val[32];
  json_object_array_add(cmps, cmp_mod(s->k_index, sn->index_mod));
  uint64_t next = sn->index + n;
  snprintf(val, sizeof val, "%llu", (unsigned long long)next);
  json_object_array_add(ops, put_op(s->k_index, val, 0));
  for (size_t i = 0; i < n; i++) {
    json_object *e = json_object_new_object();
    add(e, "k", json_object_new_int(c[i].kind));
    add(e, "id", json_object_new_string(c[i].id));
    add(e, "t", json_object_new_string(c[i].type));
    log_key(s, sn->index + 1 + i, key, sizeof key);
    json_object_array_add(ops, put_op(key, json_object_to_json_string_ext(e, JSON_C_TO_STRING_PLAIN), 0));
    json_object_put(e);
  }
  if (next > DSYSI_REGISTRY_LOG_KEEP) {
    /* everything older than the newest LOG_KEEP entries */
    log_key(s, next - DSYSI_REGISTRY_LOG_KEEP + 1, key, sizeof key);
    json_object_array_add(ops, del_op(s->k_log, key));
  }
  int ok = 0;
  json_object *resp = NULL;
  int rc = txn(s, cmps, ops, &ok, &resp);
  if (resp) json_object_put(resp);
  return rc ? rc : ok ? 0 : DSYS_ECONFLICT;
}

/* ---- instances as JSON ---- */

static char *inst_json(const dsys_instance *in, int healthy, int64_t reg, int64_t hb) {
  json_object *o = json_object_new_object(), *tags = json_object_new_array();
  add(o, "id", json_object_new_string(in->id));
  add(o, "type", json_object_new_string(in->type));
  add(o, "name", json_object_new_string(in->name ? in->name : in->id));
  add(o, "url", json_object_new_string(in->url));
  for (size_t i = 0; i < in->ntags; i++)
    json_object_array_add(tags, json_object_new_string(in->tags[i]));
  add(o, "tags", tags);
  /* the text as given: read back byte for byte */
  add(o, "metadata", json_object_new_string(in->metadata ? in->metadata : "{}"));
  add(o, "weight", json_object_new_int64(in->weight));
  add(o, "healthy", json_object_new_boolean(healthy));
  add(o, "registered_ms", json_object_new_int64(reg));
  add(o, "heartbeat_ms", json_object_new_int64(hb));
  char *out = dsysi_json_dump(o, NULL);
  json_object_put(o);
  return out;
}

/* A parsed instance value; the strings point into obj. */
typedef struct pinst {
  json_object *obj;
  dsys_instance in;
  const char **tags;
} pinst;

static void pinst_free(pinst *p) {
  if (p->obj) json_object_put(p->obj);
  free(p->tags);
  memset(p, 0, sizeof *p);
}

static int parse_inst(const kv *e, pinst *p) {
  memset(p, 0, sizeof *p);
  if (dsysi_json_parse_object(e->value, e->vlen, &p->obj)) {
    if (p->obj) json_object_put(p->obj);
    p->obj = NULL;
    return DSYS_EPROTO;
  }
  json_object *o = p->obj, *t, *v;
  dsys_instance *in = &p->in;
  in->id = dsysi_json_str(o, "id");
  in->type = dsysi_json_str(o, "type");
  in->name = dsysi_json_str(o, "name");
  in->url = dsysi_json_str(o, "url");
  in->metadata = dsysi_json_str(o, "metadata");
  int64_t w = 1;
  dsysi_json_int64(o, "weight", &w);
  in->weight = (uint32_t)w;
  in->health = json_object_object_get_ex(o, "healthy", &v) && json_object_get_boolean(v)
                   ? DSYS_INSTANCE_HEALTHY : DSYS_INSTANCE_UNHEALTHY;
  dsysi_json_int64(o, "registered_ms", &in->registered_ms);
  dsysi_json_int64(o, "heartbeat_ms", &in->last_heartbeat_ms);
  if (!in->id || !in->type || !in->url) {
    pinst_free(p);
    return DSYS_EPROTO;
  }
  if (json_object_object_get_ex(o, "tags", &t) && json_object_is_type(t, json_type_array)) {
    size_t nt = json_object_array_length(t);
    p->tags = calloc(nt ? nt : 1, sizeof *p->tags);
    if (!p->tags) {
      pinst_free(p);
      return DSYS_ENOMEM;
    }
    for (size_t i = 0; i < nt; i++) {
      const char *s = json_object_get_string(json_object_array_get_idx(t, i));
      if (s) p->tags[in->ntags++] = s;
    }
    in->tags = p->tags;
  }
  return 0;
}

/* Copy the instances of kvs (of type, when set) into one block. */
static int kvs_instances(const kv *kvs, size_t n, const char *type, dsys_instance **out,
                         size_t *cnt) {
  pinst *p = calloc(n ? n : 1, sizeof *p);
  dsys_instance *tmp = calloc(n ? n : 1, sizeof *tmp);
  int rc = p && tmp ? 0 : DSYS_ENOMEM;
  size_t k = 0, np = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    rc = parse_inst(&kvs[i], &p[np]);
    if (rc == DSYS_EPROTO) { /* someone else's key: not ours to show */
      rc = 0;
      continue;
    }
    if (rc) break;
    if (!type || !strcmp(p[np].in.type, type)) tmp[k++] = p[np].in;
    np++;
  }
  if (!rc) rc = dsys_instances_copy(tmp, k, out);
  if (!rc) *cnt = k;
  for (size_t i = 0; p && i < np; i++) pinst_free(&p[i]);
  free(p);
  free(tmp);
  return rc;
}

/* ---- leases ---- */

/* This handle's lease for new instances, granted on first use. */
static int own_lease(et_state *s, int64_t *out) {
  if (!s->lease) {
    json_object *req = json_object_new_object(), *resp = NULL;
    add(req, "TTL", i64(s->lease_ttl_s));
    int rc = et_post(s, "/v3/lease/grant", req, &resp);
    json_object_put(req);
    if (rc) return rc;
    s->lease = get_i64(resp, "ID");
    json_object_put(resp);
    if (!s->lease) return DSYS_EPROTO;
    for (size_t i = 0; i < KA_SLOTS; i++)
      if (s->ka[i].id == s->lease) s->ka[i].id = 0;
    s->ka[s->ka_next].id = s->lease;
    s->ka[s->ka_next].at_ms = mono_ms();
    s->ka_next = (s->ka_next + 1) % KA_SLOTS;
  }
  *out = s->lease;
  return 0;
}

/* Keep lease id alive when this handle has not done so for a third of its
 * TTL; failures are left to the next heartbeat (the TTL has room for two). */
static void keep_alive(et_state *s, int64_t id) {
  if (!id) return;
  int64_t now = mono_ms();
  size_t slot = KA_SLOTS;
  for (size_t i = 0; i < KA_SLOTS && slot == KA_SLOTS; i++)
    if (s->ka[i].id == id) {
      if (now - s->ka[i].at_ms < s->lease_ttl_s * 1000 / 3) return;
      slot = i;
    }
  if (slot == KA_SLOTS) { /* forget the oldest remembered */
    slot = s->ka_next;
    s->ka_next = (s->ka_next + 1) % KA_SLOTS;
  }
  json_object *req = json_object_new_object(), *resp = NULL;
  add(req, "ID", i64(id));
  if (et_post(s, "/v3/lease/keepalive", req, &resp) == 0) {
    s->ka[slot].id = id;
    s->ka[slot].at_ms = now;
    json_object_put(resp);
  }
  json_object_put(req);
}

/* ---- ops ---- */

static char *inst_key(et_state *s, const char *id) {
  dsysi_buf b = {0};
  dsysi_buf_printf(&b, "%s%s", s->k_inst, id);
  return b.oom ? (dsysi_buf_free(&b), NULL) : dsysi_buf_steal(&b, NULL);
}

static void et_close(void *vst);
static int et_index(void *vst, uint64_t *out);

/* "host:port[,host:port...]/prefix" */
static int et_open(void *vst, const char *target, char *err, size_t errlen) {
  et_state *s = vst;
  if (!target || !*target) {
    if (err && errlen) snprintf(err, errlen, "etcd registry needs host:port[,host:port...]/prefix");
    return DSYS_EINVAL;
  }
  pthread_once(&curl_once, curl_init_once);
  pthread_mutex_init(&s->mu, NULL);
  s->mu_init = 1;
  s->connect_ms = 1000;
  s->timeout_ms = 3000;
  s->lease_ttl_s = 330; /* attach sets it from the registry's reap time */
  const char *slash = strchr(target, '/');
  size_t hl = slash ? (size_t)(slash - target) : strlen(target);
  const char *prefix = slash && slash[1] ? slash : "/dsys/registry";
  size_t pl = strlen(prefix);
  while (pl > 1 && prefix[pl - 1] == '/') pl--;
  size_t cap = 0;
  for (size_t i = 0, st = 0; i <= hl; i++) {
    if (i < hl && target[i] != ',') continue;
    if (i == st) {
      if (err && errlen) snprintf(err, errlen, "etcd registry: empty endpoint in '%s'", target);
      et_close(s);
      return DSYS_EINVAL;
    }
    dsysi_buf b = {0};
    dsysi_buf_printf(&b, "http://%.*s", (int)(i - st), target + st);
    if (b.oom || dsysi_grow(&s->eps, &cap, s->neps + 1, sizeof *s->eps, 4)) {
      dsysi_buf_free(&b);
      et_close(s);
      return DSYS_ENOMEM;
    }
    s->eps[s->neps++] = dsysi_buf_steal(&b, NULL);
    st = i + 1;
  }
  dsysi_buf k = {0};
  dsysi_buf_printf(&k, "%.*s/index", (int)pl, prefix);
  s->k_index = dsysi_buf_steal(&k, NULL);
  dsysi_buf_printf(&k, "%.*s/i/", (int)pl, prefix);
  s->k_inst = dsysi_buf_steal(&k, NULL);
  dsysi_buf_printf(&k, "%.*s/log/", (int)pl, prefix);
  s->k_log = dsysi_buf_steal(&k, NULL);
  s->easy = curl_easy_init();
  s->wm = curl_multi_init();
  /* a member without a leader refuses at once instead of after etcd's own
   * request timeout: the request moves on to the next member */
  s->hdrs = curl_slist_append(NULL, "Content-Type: application/json");
  struct curl_slist *h2 = s->hdrs ? curl_slist_append(s->hdrs, "Grpc-Metadata-hasleader: true") : NULL;
  if (h2) s->hdrs = h2;
  if (!s->k_index || !s->k_inst || !s->k_log || !s->easy || !s->wm || !h2) {
    et_close(s); /* the generic layer closes only what opened */
    return DSYS_ENOMEM;
  }
  /* the generic layer reads the index next: say here why it cannot */
  uint64_t idx;
  int rc = et_index(s, &idx);
  if (rc) {
    if (err && errlen)
      snprintf(err, errlen, "etcd: %s (last: %s)",
               rc == DSYS_EUNAVAIL ? "no member answered" : dsys_strerror(rc), s->last);
    et_close(s);
  }
  return rc;
}

static void et_close(void *vst) {
  et_state *s = vst;
  if (s->th_started) {
    s->stop = 1;
    curl_multi_wakeup(s->wm);
    pthread_join(s->th, NULL);
  }
  if (s->wm) curl_multi_cleanup(s->wm);
  if (s->easy) curl_easy_cleanup(s->easy);
  curl_slist_free_all(s->hdrs);
  dsysi_buf_free(&s->body);
  for (size_t i = 0; i < s->neps; i++) free(s->eps[i]);
  free(s->eps);
  free(s->k_index);
  free(s->k_inst);
  free(s->k_log);
  if (s->mu_init) pthread_mutex_destroy(&s->mu);
}

static int do_put(et_state *s, const dsys_instance *in, int64_t now) {
  char *key = inst_key(s, in->id), *val = inst_json(in, 1, now, now);
  int rc = key && val ? 0 : DSYS_ENOMEM;
  for (int tries = 0; !rc; tries++) {
    int64_t lease = 0;
    snap sn;
    if ((rc = own_lease(s, &lease)) || (rc = read_snap(s, NULL, NULL, &sn))) break;
    json_object *ops = json_object_new_array();
    json_object_array_add(ops, put_op(key, val, lease));
    change c = {DSYS_REG_REGISTERED, in->id, in->type};
    rc = commit(s, &sn, json_object_new_array(), ops, &c, 1);
    if (rc == DSYS_ENOTFOUND && tries < MAX_RETRIES) { /* our lease expired: a new one */
      s->lease = 0;
      rc = 0;
    } else if (rc == DSYS_ECONFLICT) {
      rc = tries < MAX_RETRIES ? 0 : DSYS_EBUSY;
    } else {
      break;
    }
  }
  free(key);
  free(val);
  return rc;
}

static int et_put(void *vst, const dsys_instance *in, int64_t now) {
  et_state *s = vst;
  pthread_mutex_lock(&s->mu);
  int rc = do_put(s, in, now);
  pthread_mutex_unlock(&s->mu);
  return rc;
}

/* Read instance id with the index: 0 with sn holding it, DSYS_ENOTFOUND. */
static int read_inst(et_state *s, const char *key, snap *sn, pinst *p) {
  int rc = read_snap(s, key, NULL, sn);
  if (rc) return rc;
  if (sn->n != 1) rc = DSYS_ENOTFOUND;
  else rc = parse_inst(&sn->kvs[0], p);
  if (rc) kvs_free(sn->kvs, sn->n);
  return rc;
}

static int do_heartbeat(et_state *s, const char *id, int64_t now) {
  char *key = inst_key(s, id);
  if (!key) return DSYS_ENOMEM;
  int rc = 0;
  int64_t lease = 0;
  for (int tries = 0;; tries++) {
    snap sn;
    pinst p;
    if ((rc = read_inst(s, key, &sn, &p))) break;
    int healthy = p.in.health == DSYS_INSTANCE_HEALTHY;
    char *val = inst_json(&p.in, 1, p.in.registered_ms, now);
    lease = sn.kvs[0].lease;
    json_object *cmps = json_object_new_array(), *ops = json_object_new_array();
    json_object_array_add(cmps, cmp_mod(key, sn.kvs[0].mod));
    json_object_array_add(ops, put_op(key, val ? val : "", -1));
    change c = {DSYS_REG_HEALTHY, p.in.id, p.in.type};
    if (!val) {
      json_object_put(cmps);
      json_object_put(ops);
      rc = DSYS_ENOMEM;
    } else if (healthy) { /* not a change: the index stays */
      int ok = 0;
      json_object *resp = NULL;
      rc = txn(s, cmps, ops, &ok, &resp);
      if (resp) json_object_put(resp);
      if (!rc && !ok) rc = DSYS_ECONFLICT;
    } else {
      rc = commit(s, &sn, cmps, ops, &c, 1);
    }
    free(val);
    pinst_free(&p);
    kvs_free(sn.kvs, sn.n);
    if (rc != DSYS_ECONFLICT) break;
    if (tries >= MAX_RETRIES) {
      rc = DSYS_EBUSY;
      break;
    }
  }
  if (!rc) keep_alive(s, lease);
  free(key);
  return rc;
}

static int et_heartbeat(void *vst, const char *id, int64_t now) {
  et_state *s = vst;
  pthread_mutex_lock(&s->mu);
  int rc = do_heartbeat(s, id, now);
  pthread_mutex_unlock(&s->mu);
  return rc;
}

static int do_remove(et_state *s, const char *id) {
  char *key = inst_key(s, id);
  if (!key) return DSYS_ENOMEM;
  int rc;
  for (int tries = 0;; tries++) {
    snap sn;
    pinst p;
    if ((rc = read_inst(s, key, &sn, &p))) break;
    json_object *cmps = json_object_new_array(), *ops = json_object_new_array();
    json_object_array_add(cmps, cmp_mod(key, sn.kvs[0].mod));
    json_object_array_add(ops, del_op(key, NULL));
    change c = {DSYS_REG_DEREGISTERED, p.in.id, p.in.type};
    rc = commit(s, &sn, cmps, ops, &c, 1);
    pinst_free(&p);
    kvs_free(sn.kvs, sn.n);
    if (rc != DSYS_ECONFLICT) break;
    if (tries >= MAX_RETRIES) {
      rc = DSYS_EBUSY;
      break;
    }
  }
  free(key);
  return rc;
}

static int et_remove(void *vst, const char *id) {
  et_state *s = vst;
  pthread_mutex_lock(&s->mu);
  int rc = do_remove(s, id);
  pthread_mutex_unlock(&s->mu);
  return rc;
}

static int et_get(void *vst, const char *id, dsys_instance **out) {
  et_state *s = vst;
  char *key = inst_key(s, id);
  if (!key) return DSYS_ENOMEM;
  pthread_mutex_lock(&s->mu);
  snap sn;
  int rc = read_snap(s, key, NULL, &sn);
  pthread_mutex_unlock(&s->mu);
  size_t n = 0;
  if (!rc) rc = kvs_instances(sn.kvs, sn.n, NULL, out, &n);
  if (!rc && n != 1) {
    dsys_free(*out);
    rc = DSYS_ENOTFOUND;
  }
  kvs_free(sn.kvs, sn.n);
  free(key);
  return rc;
}

static int et_list(void *vst, const char *type, dsys_instance **out, size_t *n) {
  et_state *s = vst;
  char *end = prefix_end(s->k_inst);
  if (!end) return DSYS_ENOMEM;
  pthread_mutex_lock(&s->mu);
  snap sn;
  int rc = read_snap(s, s->k_inst, end, &sn);
  pthread_mutex_unlock(&s->mu);
  free(end);
  if (rc) return rc;
  /* keys sort by bytes: by id, as the ops table asks */
  rc = kvs_instances(sn.kvs, sn.n, type, out, n);
  kvs_free(sn.kvs, sn.n);
  return rc;
}

/* One round of expiry: at most EXPIRE_BATCH transitions in one txn.
 * *more is set when some were left for another round. */
static int expire_round(et_state *s, int64_t unhealthy_before, int64_t reap_before, int *more) {
  *more = 0;
  char *end = prefix_end(s->k_inst);
  if (!end) return DSYS_ENOMEM;
  snap sn;
  int rc = read_snap(s, s->k_inst, end, &sn);
  free(end);
  if (rc) return rc;
  json_object *cmps = json_object_new_array(), *ops = json_object_new_array();
  change c[EXPIRE_BATCH];
  pinst p[EXPIRE_BATCH];
  char *vals[EXPIRE_BATCH];
  size_t n = 0;
  for (size_t i = 0; i < sn.n && !rc; i++) {
    if (n == EXPIRE_BATCH) {
      *more = 1;
      break;
    }
    if (parse_inst(&sn.kvs[i], &p[n])) continue;
    dsys_instance *in = &p[n].in;
    vals[n] = NULL;
    if (in->last_heartbeat_ms < reap_before) {
      json_object_array_add(ops, del_op(sn.kvs[i].key, NULL));
      c[n] = (change){DSYS_REG_REAPED, in->id, in->type};
    } else if (in->health == DSYS_INSTANCE_HEALTHY && in->last_heartbeat_ms < unhealthy_before) {
      vals[n] = inst_json(in, 0, in->registered_ms, in->last_heartbeat_ms);
      if (!vals[n]) {
        pinst_free(&p[n]);
        rc = DSYS_ENOMEM;
        break;
      }
      json_object_array_add(ops, put_op(sn.kvs[i].key, vals[n], -1));
      c[n] = (change){DSYS_REG_UNHEALTHY, in->id, in->type};
    } else {
      pinst_free(&p[n]);
      continue;
    }
    /* another sweeper (another process) may have done it first */
    json_object_array_add(cmps, cmp_mod(sn.kvs[i].key, sn.kvs[i].mod));
    n++;
  }
  if (!rc && n) rc = commit(s, &sn, cmps, ops, c, n);
  else {
    json_object_put(cmps);
    json_object_put(ops);
  }
  for (size_t i = 0; i < n; i++) {
    free(vals[i]);
    pinst_free(&p[i]);
  }
  kvs_free(sn.kvs, sn.n);
  return rc;
}

static int et_expire(void *vst, int64_t unhealthy_before, int64_t reap_before) {
  et_state *s = vst;
  pthread_mutex_lock(&s->mu);
  int rc = 0, more = 1;
  for (int rounds = 0; more && rounds < MAX_RETRIES; rounds++) {
    rc = expire_round(s, unhealthy_before, reap_before, &more);
    if (rc == DSYS_ECONFLICT) { /* re-read: the next round sees what won */
      more = 1;
      rc = 0;
    } else if (rc) {
      break;
    }
  }
  pthread_mutex_unlock(&s->mu);
  return rc;
}

static int et_index(void *vst, uint64_t *out) {
  et_state *s = vst;
  pthread_mutex_lock(&s->mu);
  json_object *req = range_op(s->k_index, NULL), *r = NULL, *resp = NULL;
  int rc = json_object_object_get_ex(req, "request_range", &r) ? et_post(s, "/v3/kv/range", r, &resp)
                                                               : DSYS_ENOMEM;
  pthread_mutex_unlock(&s->mu);
  json_object_put(req);
  kv *v = NULL;
  size_t n = 0;
  if (!rc) rc = decode_kvs(resp, &v, &n);
  if (!rc) *out = n ? strtoull(v[0].value, NULL, 10) : 0;
  kvs_free(v, n);
  if (resp) json_object_put(resp);
  return rc;
}

static int et_changes(void *vst, uint64_t after, dsys_registry_change_fn fn, void *ctx) {
  et_state *s = vst;
  char from[512];
  char *end = prefix_end(s->k_log);
  if (!end) return DSYS_ENOMEM;
  log_key(s, after + 1, from, sizeof from);
  pthread_mutex_lock(&s->mu);
  snap sn;
  int rc = read_snap(s, from, end, &sn);
  pthread_mutex_unlock(&s->mu);
  free(end);
  if (rc) return rc;
  if (sn.index > after) {
    /* the first entry must be the one right after: else it was pruned */
    size_t kl = strlen(s->k_log);
    if (!sn.n || strtoull(sn.kvs[0].key + kl, NULL, 10) != after + 1) rc = DSYS_ERANGE;
    for (size_t i = 0; i < sn.n && !rc; i++) {
      json_object *o = NULL;
      if (dsysi_json_parse_object(sn.kvs[i].value, sn.kvs[i].vlen, &o)) {
        if (o) json_object_put(o);
        rc = DSYS_EPROTO;
        break;
      }
      int64_t kind = 0;
      dsysi_json_int64(o, "k", &kind);
      const char *id = dsysi_json_str(o, "id"), *type = dsysi_json_str(o, "t");
      dsys_registry_change ch = {.index = strtoull(sn.kvs[i].key + kl, NULL, 10),
                                 .kind = (int32_t)kind, .id = id ? id : "",
                                 .type = type ? type : ""};
      if (ch.index <= sn.index) fn(ctx, &ch);
      json_object_put(o);
    }
  }
  kvs_free(sn.kvs, sn.n);
  return rc;
}

/* ---- push: the watch thread ---- */

typedef struct wstream {
  et_state *s;
  dsysi_buf line;
  int created, reconnect;
} wstream;

static void notify(et_state *s) {
  if (s->env.changed) s->env.changed(s->env.ctx);
}

/* The watch answers one JSON object per line. */
static size_t on_watch(char *p, size_t sz, size_t nm, void *ud) {
  wstream *w = ud;
  size_t len = sz * nm;
  for (size_t i = 0; i < len; i++) {
    if (p[i] != '\n') {
      if (dsysi_buf_append(&w->line, &p[i], 1)) return 0;
      continue;
    }
    json_object *j = NULL, *r, *v;
    if (w->line.len && !dsysi_json_parse(w->line.data, w->line.len, &j) && j &&
        json_object_object_get_ex(j, "result", &r)) {
      if (json_object_object_get_ex(r, "created", &v) && json_object_get_boolean(v)) {
        /* changes may have been made while no watch was up */
        w->created = 1;
        notify(w->s);
      }
      if (json_object_object_get_ex(r, "events", &v)) notify(w->s);
      if ((json_object_object_get_ex(r, "canceled", &v) && json_object_get_boolean(v)) ||
          get_i64(r, "compact_revision"))
        w->reconnect = 1;
    } else if (w->line.len) {
      w->reconnect = 1; /* an error object, or garbage */
    }
    if (j) json_object_put(j);
    dsysi_buf_free(&w->line);
    if (w->reconnect) return 0; /* ends the transfer */
  }
  return len;
}

static void *watch_main(void *arg) {
  et_state *s = arg;
  CURL *e = curl_easy_init();
  json_object *req = json_object_new_object(), *cr = json_object_new_object();
  add(cr, "key", b64s(s->k_index));
  add(req, "create_request", cr);
  const char *body = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
  size_t ep = s->cur;
  long backoff = 50;
  while (e && body && !s->stop) {
    wstream w = {.s = s};
    char url[300];
    snprintf(url, sizeof url, "%s/v3/watch", s->eps[ep]);
    setup_easy(s, e, url, body, 0);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_watch);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &w);
    curl_multi_add_handle(s->wm, e);
    int running = 1;
    while (!s->stop && running && !w.reconnect) {
      curl_multi_perform(s->wm, &running);
      /* the ops moved to another member: this one may be cut off */
      if (w.created && s->cur != ep) break;
      if (running) curl_multi_poll(s->wm, NULL, 0, 1000, NULL);
    }
    curl_multi_remove_handle(s->wm, e);
    dsysi_buf_free(&w.line);
    if (s->stop) break;
    if (w.created) backoff = 50;
    else backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
    ep = s->cur != ep ? s->cur : (ep + 1) % s->neps;
    /* a bounded pause that close interrupts */
    int64_t until = mono_ms() + backoff;
    while (!s->stop && mono_ms() < until)
      curl_multi_poll(s->wm, NULL, 0, (int)(until - mono_ms()), NULL);
  }
  json_object_put(req);
  if (e) curl_easy_cleanup(e);
  return NULL;
}

static int et_attach(void *vst, const dsys_registry_env *env) {
  et_state *s = vst;
  s->env = *env;
  s->env.client = NULL;
  int64_t reap_s = (env->reap_ms + 999) / 1000;
  s->lease_ttl_s = reap_s + (reap_s / 10 > LEASE_MARGIN_MIN_S ? reap_s / 10 : LEASE_MARGIN_MIN_S);
  if (env->client) {
    if (env->client->connect_timeout_ms > 0) s->connect_ms = (long)env->client->connect_timeout_ms;
    if (env->client->timeout_ms > 0) s->timeout_ms = (long)env->client->timeout_ms;
  }
  /* The open's index read (just before) and the one just after attach run
   * on the opening thread while the watch thread may already deliver: mu
   * keeps the ops' curl handle to one of them at a time. */
  if (pthread_create(&s->th, NULL, watch_main, s)) return DSYS_ENOMEM;
  s->th_started = 1;
  return 0;
}

static const dsys_registry_ops etcd_ops = {
    .version = DSYS_REGISTRY_OPS_VERSION,
    .name = "etcd",
    .state_size = sizeof(et_state),
    .open = et_open,
    .close = et_close,
    .put = et_put,
    .heartbeat = et_heartbeat,
    .remove = et_remove,
    .get = et_get,
    .list = et_list,
    .expire = et_expire,
    .index = et_index,
    .changes = et_changes,
    .attach = et_attach,
};
DSYSI_PLUGINS(registry_etcd) = {{"registry", &etcd_ops}, {0}};
