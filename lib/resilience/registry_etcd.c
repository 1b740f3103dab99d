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
 * Last view: every list and every sweep reads all the instances; the
 * backend keeps the last answer. When etcd cannot answer (no quorum, no
 * member reachable: DSYS_EUNAVAIL), get and list answer from it (a
 * warning is logged once per outage with the view's age, and an info
 * when a fresh read succeeds again) while writes fail with DSYS_EUNAVAIL:
 * services keep finding each other through an etcd outage. The generic
 * layer still applies its TTL to the instances' last recorded heartbeats.
 *
 * "etcds://" is the same backend over TLS; TLS material and etcd auth are
 * query parameters of the target (core/etcd.h).
 *
 * Requests, member failover and their bounds: core/etcd.h (shared with
 * the etcd lock backend).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <curl/curl.h>
#include <distsys/client.h>
#include "core/internal.h"
#include "core/etcd.h"
#include "core/json.h"
#include "core/plugin.h"
#include "resilience/registry_int.h"

#define LEASE_MARGIN_MIN_S 2 /* lease TTL beyond the reap time: at least */
#define MAX_RETRIES 16      /* txn conflicts before DSYS_EBUSY */
#define EXPIRE_BATCH 40     /* transitions per txn (etcd allows 128 ops) */
#define KA_SLOTS 16         /* leases whose last keepalive is remembered */

typedef struct et_state {
  dsysi_etcd c;             /* requests; c.mu guards the ops' use of it */
  char *k_index, *k_inst, *k_log;
  int64_t lease, lease_ttl_s;
  struct { int64_t id, at_ms; } ka[KA_SLOTS];
  size_t ka_next;
  /* push */
  dsys_registry_env env;
  pthread_t th;
  int th_started;
  CURLM *wm;
  _Atomic int stop;
  /* the last good read of every instance (under c.mu) */
  dsysi_etcd_kv *view;
  size_t nview;
  int have_view, stale;
  /* a read was answered from the view: the next fresh changes read tells
   * the watchers to re-read (what they read then may lack a change from
   * before their watch, which no change delivery brings) */
  int resync_owed;
  int64_t view_ms;
} et_state;

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void add(json_object *o, const char *k, json_object *v) {
  json_object_object_add(o, k, v);
}

static int txn(et_state *s, json_object *cmps, json_object *ops, int *succeeded,
               json_object **resp) {
  return dsysi_etcd_txn(&s->c, cmps, ops, NULL, succeeded, resp);
}

/* A consistent read of the index and of key (or of every key under key
 * when end is set): one txn of ranges. */
typedef struct snap {
  uint64_t index;
  int64_t index_mod;
  dsysi_etcd_kv *kvs;
  size_t n;
} snap;

static int read_snap(et_state *s, const char *key, const char *end, snap *out) {
  memset(out, 0, sizeof *out);
  json_object *ops = json_object_new_array(), *resp = NULL;
  json_object_array_add(ops, dsysi_etcd_range_op(s->k_index, NULL));
  if (key) json_object_array_add(ops, dsysi_etcd_range_op(key, end));
  int rc = txn(s, NULL, ops, NULL, &resp);
  if (rc) return rc;
  dsysi_etcd_kv *ix = NULL;
  size_t nix = 0;
  json_object *r0 = dsysi_etcd_txn_range(resp, 0), *r1 = key ? dsysi_etcd_txn_range(resp, 1) : NULL;
  if (!r0 || (key && !r1)) rc = DSYS_EPROTO;
  if (!rc) rc = dsysi_etcd_decode_kvs(r0, &ix, &nix);
  if (!rc && nix) {
    out->index = strtoull(ix[0].value, NULL, 10);
    out->index_mod = ix[0].mod;
  }
  dsysi_etcd_kvs_free(ix, nix);
  if (!rc && key) rc = dsysi_etcd_decode_kvs(r1, &out->kvs, &out->n);
  json_object_put(resp);
  return rc;
}

/* Keep kvs (every instance, just read) as the last view; takes them.
 * Hold c.mu. */
static void keep_view(et_state *s, dsysi_etcd_kv *kvs, size_t n) {
  dsysi_etcd_kvs_free(s->view, s->nview);
  s->view = kvs;
  s->nview = n;
  s->have_view = 1;
  s->view_ms = mono_ms();
  if (s->stale) {
    dsysi_log(DSYS_LOG_INFO, "registry", "etcd: answering again; lookups are fresh");
    s->stale = 0;
  }
}

/* rc of a read: when etcd could not answer and there is a view, 0 and
 * *use_view (the caller answers from s->view). Hold c.mu. */
static int fall_back(et_state *s, int rc, int *use_view) {
  *use_view = 0;
  if (rc != DSYS_EUNAVAIL || !s->have_view) return rc;
  if (!s->stale)
    dsysi_log(DSYS_LOG_WARN, "registry",
              "etcd: no answer (%s): lookups answer from the last view, %lld ms old "
              "(%zu instances); writes fail until etcd answers",
              s->c.last, (long long)(mono_ms() - s->view_ms), s->nview);
  s->stale = 1;
  s->resync_owed = 1;
  *use_view = 1;
  return 0;
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
  json_object_array_add(cmps, dsysi_etcd_cmp_mod(s->k_index, sn->index_mod));
  uint64_t next = sn->index + n;
  snprintf(val, sizeof val, "%llu", (unsigned long long)next);
  json_object_array_add(ops, dsysi_etcd_put_op(s->k_index, val, 0));
  for (size_t i = 0; i < n; i++) {
    json_object *e = json_object_new_object();
    add(e, "k", json_object_new_int(c[i].kind));
    add(e, "id", json_object_new_string(c[i].id));
    add(e, "t", json_object_new_string(c[i].type));
    log_key(s, sn->index + 1 + i, key, sizeof key);
    json_object_array_add(ops, dsysi_etcd_put_op(key, json_object_to_json_string_ext(e, JSON_C_TO_STRING_PLAIN), 0));
    json_object_put(e);
  }
  if (next > DSYSI_REGISTRY_LOG_KEEP) {
    /* everything older than the newest LOG_KEEP entries */
    log_key(s, next - DSYSI_REGISTRY_LOG_KEEP + 1, key, sizeof key);
    json_object_array_add(ops, dsysi_etcd_del_op(s->k_log, key));
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

static int parse_inst(const dsysi_etcd_kv *e, pinst *p) {
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
static int kvs_instances(const dsysi_etcd_kv *kvs, size_t n, const char *type, dsys_instance **out,
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
    int rc = dsysi_etcd_lease_grant(&s->c, s->lease_ttl_s, &s->lease);
    if (rc) return rc;
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
  if (dsysi_etcd_lease_keepalive(&s->c, id) == 0) {
    s->ka[slot].id = id;
    s->ka[slot].at_ms = now;
  }
}

/* ---- ops ---- */

static char *inst_key(et_state *s, const char *id) {
  dsysi_buf b = {0};
  dsysi_buf_printf(&b, "%s%s", s->k_inst, id);
  return b.oom ? (dsysi_buf_free(&b), NULL) : dsysi_buf_steal(&b, NULL);
}

static void et_close(void *vst);
static int et_index(void *vst, uint64_t *out);

/* "host:port[,host:port...]/prefix[?params]" (core/etcd.h) */
static int open_any(void *vst, const char *target, int tls, char *err, size_t errlen) {
  et_state *s = vst;
  char *prefix = NULL;
  int rc = dsysi_etcd_open(&s->c, target, tls, "registry", "/dsys/registry", &prefix, err, errlen);
  if (rc) return rc;
  s->lease_ttl_s = 330; /* attach sets it from the registry's reap time */
  dsysi_buf k = {0};
  dsysi_buf_printf(&k, "%s/index", prefix);
  s->k_index = dsysi_buf_steal(&k, NULL);
  dsysi_buf_printf(&k, "%s/i/", prefix);
  s->k_inst = dsysi_buf_steal(&k, NULL);
  dsysi_buf_printf(&k, "%s/log/", prefix);
  s->k_log = dsysi_buf_steal(&k, NULL);
  free(prefix);
  s->wm = curl_multi_init();
  if (!s->k_index || !s->k_inst || !s->k_log || !s->wm) {
    et_close(s); /* the generic layer closes only what opened */
    return DSYS_ENOMEM;
  }
  /* the generic layer reads the index next: say here why it cannot */
  uint64_t idx;
  rc = et_index(s, &idx);
  if (rc) {
    if (err && errlen)
      snprintf(err, errlen, "etcd: %s (last: %s)",
               rc == DSYS_EUNAVAIL ? "no member answered" : dsys_strerror(rc), s->c.last);
    et_close(s);
  }
  return rc;
}

static int et_open(void *vst, const char *target, char *err, size_t errlen) {
  return open_any(vst, target, 0, err, errlen);
}

static int et_open_tls(void *vst, const char *target, char *err, size_t errlen) {
  return open_any(vst, target, 1, err, errlen);
}

static void et_close(void *vst) {
  et_state *s = vst;
  if (s->th_started) {
    s->stop = 1;
    curl_multi_wakeup(s->wm);
    pthread_join(s->th, NULL);
  }
  if (s->wm) curl_multi_cleanup(s->wm);
  free(s->k_index);
  free(s->k_inst);
  free(s->k_log);
  dsysi_etcd_kvs_free(s->view, s->nview);
  dsysi_etcd_close(&s->c);
}

static int do_put(et_state *s, const dsys_instance *in, int64_t now) {
  char *key = inst_key(s, in->id), *val = inst_json(in, 1, now, now);
  int rc = key && val ? 0 : DSYS_ENOMEM;
  for (int tries = 0; !rc; tries++) {
    int64_t lease = 0;
    snap sn;
    if ((rc = own_lease(s, &lease)) || (rc = read_snap(s, NULL, NULL, &sn))) break;
    json_object *ops = json_object_new_array();
    json_object_array_add(ops, dsysi_etcd_put_op(key, val, lease));
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
  pthread_mutex_lock(&s->c.mu);
  int rc = do_put(s, in, now);
  pthread_mutex_unlock(&s->c.mu);
  return rc;
}

/* Read instance id with the index: 0 with sn holding it, DSYS_ENOTFOUND. */
static int read_inst(et_state *s, const char *key, snap *sn, pinst *p) {
  int rc = read_snap(s, key, NULL, sn);
  if (rc) return rc;
  if (sn->n != 1) rc = DSYS_ENOTFOUND;
  else rc = parse_inst(&sn->kvs[0], p);
  if (rc) dsysi_etcd_kvs_free(sn->kvs, sn->n);
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
    json_object_array_add(cmps, dsysi_etcd_cmp_mod(key, sn.kvs[0].mod));
    json_object_array_add(ops, dsysi_etcd_put_op(key, val ? val : "", -1));
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
    dsysi_etcd_kvs_free(sn.kvs, sn.n);
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
  pthread_mutex_lock(&s->c.mu);
  int rc = do_heartbeat(s, id, now);
  pthread_mutex_unlock(&s->c.mu);
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
    json_object_array_add(cmps, dsysi_etcd_cmp_mod(key, sn.kvs[0].mod));
    json_object_array_add(ops, dsysi_etcd_del_op(key, NULL));
    change c = {DSYS_REG_DEREGISTERED, p.in.id, p.in.type};
    rc = commit(s, &sn, cmps, ops, &c, 1);
    pinst_free(&p);
    dsysi_etcd_kvs_free(sn.kvs, sn.n);
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
  pthread_mutex_lock(&s->c.mu);
  int rc = do_remove(s, id);
  pthread_mutex_unlock(&s->c.mu);
  return rc;
}

static int et_get(void *vst, const char *id, dsys_instance **out) {
  et_state *s = vst;
  char *key = inst_key(s, id);
  if (!key) return DSYS_ENOMEM;
  pthread_mutex_lock(&s->c.mu);
  snap sn;
  int use_view = 0;
  int rc = fall_back(s, read_snap(s, key, NULL, &sn), &use_view);
  size_t n = 0;
  if (use_view) {
    rc = DSYS_ENOTFOUND;
    for (size_t i = 0; i < s->nview; i++)
      if (!strcmp(s->view[i].key, key)) rc = kvs_instances(&s->view[i], 1, NULL, out, &n);
    memset(&sn, 0, sizeof sn);
  }
  pthread_mutex_unlock(&s->c.mu);
  if (!rc && !use_view) rc = kvs_instances(sn.kvs, sn.n, NULL, out, &n);
  if (!rc && n != 1) {
    dsys_free(*out);
    rc = DSYS_ENOTFOUND;
  }
  dsysi_etcd_kvs_free(sn.kvs, sn.n);
  free(key);
  return rc;
}

static int et_list(void *vst, const char *type, dsys_instance **out, size_t *n) {
  et_state *s = vst;
  char *end = dsysi_etcd_prefix_end(s->k_inst);
  if (!end) return DSYS_ENOMEM;
  pthread_mutex_lock(&s->c.mu);
  snap sn;
  int use_view = 0;
  int rc = fall_back(s, read_snap(s, s->k_inst, end, &sn), &use_view);
  free(end);
  /* keys sort by bytes: by id, as the ops table asks */
  if (!rc) rc = use_view ? kvs_instances(s->view, s->nview, type, out, n)
                         : kvs_instances(sn.kvs, sn.n, type, out, n);
  if (!rc && !use_view) keep_view(s, sn.kvs, sn.n);
  else if (!use_view) dsysi_etcd_kvs_free(sn.kvs, sn.n);
  pthread_mutex_unlock(&s->c.mu);
  return rc;
}

/* What a sweep asks for: the thresholds of expire, or (v set) the
 * instances of expire_ids. */
typedef struct rule {
  int64_t unhealthy_before, reap_before;
  const dsys_registry_expiry *v;
  size_t n;
} rule;

/* The transition rule asks of in: DSYS_REG_REAPED, DSYS_REG_UNHEALTHY or
 * -1 (none). */
static int decide(const rule *ru, const dsys_instance *in) {
  int healthy = in->health == DSYS_INSTANCE_HEALTHY;
  if (!ru->v) {
    if (in->last_heartbeat_ms < ru->reap_before) return DSYS_REG_REAPED;
    return healthy && in->last_heartbeat_ms < ru->unhealthy_before ? DSYS_REG_UNHEALTHY : -1;
  }
  size_t lo = 0, hi = ru->n; /* v is ordered by id */
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    int c = strcmp(ru->v[mid].id, in->id);
    if (!c) {
      const dsys_registry_expiry *x = &ru->v[mid];
      if (x->heartbeat_ms != in->last_heartbeat_ms) return -1; /* a heartbeat came */
      return x->reap ? DSYS_REG_REAPED : healthy ? DSYS_REG_UNHEALTHY : -1;
    }
    if (c < 0) lo = mid + 1;
    else hi = mid;
  }
  return -1;
}

/* One round of expiry: at most EXPIRE_BATCH transitions in one txn.
 * *more is set when some were left for another round. */
static int expire_round(et_state *s, const rule *ru, int *more) {
  *more = 0;
  char *end = dsysi_etcd_prefix_end(s->k_inst);
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
    int kind = decide(ru, in);
    if (kind == DSYS_REG_REAPED) {
      json_object_array_add(ops, dsysi_etcd_del_op(sn.kvs[i].key, NULL));
      c[n] = (change){DSYS_REG_REAPED, in->id, in->type};
    } else if (kind == DSYS_REG_UNHEALTHY) {
      vals[n] = inst_json(in, 0, in->registered_ms, in->last_heartbeat_ms);
      if (!vals[n]) {
        pinst_free(&p[n]);
        rc = DSYS_ENOMEM;
        break;
      }
      json_object_array_add(ops, dsysi_etcd_put_op(sn.kvs[i].key, vals[n], -1));
      c[n] = (change){DSYS_REG_UNHEALTHY, in->id, in->type};
    } else {
      pinst_free(&p[n]);
      continue;
    }
    /* another sweeper (another process) may have done it first */
    json_object_array_add(cmps, dsysi_etcd_cmp_mod(sn.kvs[i].key, sn.kvs[i].mod));
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
  keep_view(s, sn.kvs, sn.n); /* as read: the next list sees the transitions */
  return rc;
}

static int expire_rule(et_state *s, const rule *ru) {
  pthread_mutex_lock(&s->c.mu);
  int rc = 0, more = 1;
  for (int rounds = 0; more && rounds < MAX_RETRIES; rounds++) {
    rc = expire_round(s, ru, &more);
    if (rc == DSYS_ECONFLICT) { /* re-read: the next round sees what won */
      more = 1;
      rc = 0;
    } else if (rc) {
      break;
    }
  }
  pthread_mutex_unlock(&s->c.mu);
  return rc;
}

static int et_expire(void *vst, int64_t unhealthy_before, int64_t reap_before) {
  rule ru = {.unhealthy_before = unhealthy_before, .reap_before = reap_before};
  return expire_rule(vst, &ru);
}

static int et_expire_ids(void *vst, const dsys_registry_expiry *v, size_t n) {
  rule ru = {.v = v, .n = n};
  return expire_rule(vst, &ru);
}

static int et_index(void *vst, uint64_t *out) {
  et_state *s = vst;
  pthread_mutex_lock(&s->c.mu);
  json_object *req = dsysi_etcd_range_op(s->k_index, NULL), *r = NULL, *resp = NULL;
  int rc = json_object_object_get_ex(req, "request_range", &r) ? dsysi_etcd_post(&s->c, "/v3/kv/range", r, &resp)
                                                               : DSYS_ENOMEM;
  pthread_mutex_unlock(&s->c.mu);
  json_object_put(req);
  dsysi_etcd_kv *v = NULL;
  size_t n = 0;
  if (!rc) rc = dsysi_etcd_decode_kvs(resp, &v, &n);
  if (!rc) *out = n ? strtoull(v[0].value, NULL, 10) : 0;
  dsysi_etcd_kvs_free(v, n);
  if (resp) json_object_put(resp);
  return rc;
}

static int et_changes(void *vst, uint64_t after, dsys_registry_change_fn fn, void *ctx) {
  et_state *s = vst;
  char from[512];
  char *end = dsysi_etcd_prefix_end(s->k_log);
  if (!end) return DSYS_ENOMEM;
  log_key(s, after + 1, from, sizeof from);
  pthread_mutex_lock(&s->c.mu);
  snap sn;
  int rc = read_snap(s, from, end, &sn);
  int resync = !rc && s->resync_owed;
  if (resync) s->resync_owed = 0;
  pthread_mutex_unlock(&s->c.mu);
  free(end);
  if (resync) { /* fresh again after an answer from the view */
    dsysi_etcd_kvs_free(sn.kvs, sn.n);
    return DSYS_ERANGE;
  }
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
  dsysi_etcd_kvs_free(sn.kvs, sn.n);
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
          dsysi_etcd_get_i64(r, "compact_revision"))
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
  add(cr, "key", dsysi_etcd_b64s(s->k_index));
  add(req, "create_request", cr);
  const char *body = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
  size_t ep = s->c.cur;
  long backoff = 50;
  int refused = 0;
  while (e && body && !s->stop) {
    wstream w = {.s = s};
    char url[300];
    snprintf(url, sizeof url, "%s/v3/watch", s->c.eps[ep]);
    /* its own copy of the headers: the ops may change the token meanwhile */
    pthread_mutex_lock(&s->c.mu);
    if (refused && s->c.user) dsysi_etcd_drop_token(&s->c); /* maybe for its token */
    struct curl_slist *hdrs = dsysi_etcd_headers(&s->c);
    pthread_mutex_unlock(&s->c.mu);
    dsysi_etcd_setup_easy(&s->c, e, url, body, 0, hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_watch);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &w);
    curl_multi_add_handle(s->wm, e);
    int running = 1;
    while (!s->stop && running && !w.reconnect) {
      curl_multi_perform(s->wm, &running);
      /* the ops moved to another member: this one may be cut off */
      if (w.created && s->c.cur != ep) break;
      if (running) curl_multi_poll(s->wm, NULL, 0, 1000, NULL);
    }
    curl_multi_remove_handle(s->wm, e);
    curl_slist_free_all(hdrs);
    dsysi_buf_free(&w.line);
    refused = !w.created && w.reconnect;
    if (s->stop) break;
    if (w.created) backoff = 50;
    else backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
    ep = s->c.cur != ep ? s->c.cur : (ep + 1) % s->c.neps;
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
    if (env->client->connect_timeout_ms > 0) s->c.connect_ms = (long)env->client->connect_timeout_ms;
    if (env->client->timeout_ms > 0) s->c.timeout_ms = (long)env->client->timeout_ms;
  }
  /* The open's index read (just before) and the one just after attach run
   * on the opening thread while the watch thread may already deliver: mu
   * keeps the ops' curl handle to one of them at a time. */
  if (pthread_create(&s->th, NULL, watch_main, s)) return DSYS_ENOMEM;
  s->th_started = 1;
  return 0;
}

/* etcds:// is the same over TLS, as https:// is to http:// */
#define ET_OPS(NAME, OPEN)                                                                  \
  {                                                                                         \
    .version = DSYS_REGISTRY_OPS_VERSION, .name = NAME, .state_size = sizeof(et_state),     \
    .open = OPEN, .close = et_close, .put = et_put, .heartbeat = et_heartbeat,              \
    .remove = et_remove, .get = et_get, .list = et_list, .expire = et_expire,               \
    .index = et_index, .changes = et_changes, .attach = et_attach,                          \
    .expire_ids = et_expire_ids,                                                            \
  }
static const dsys_registry_ops etcd_ops = ET_OPS("etcd", et_open);
static const dsys_registry_ops etcds_ops = ET_OPS("etcds", et_open_tls);
DSYSI_PLUGINS(registry_etcd) = {{"registry", &etcd_ops}, {"registry", &etcds_ops}, {0}};
