/*
 * etcd lock backend ("etcd://host:port[,host:port...]/prefix", default
 * prefix /dsys/locks): a lock is the key PREFIX/NAME holding
 * {"owner": .., "expires_at": ..}, attached to an etcd lease. Requests,
 * member failover and their bounds are core/etcd.h's (shared with the
 * etcd registry): a cluster without quorum gives DSYS_EUNAVAIL within
 * about 3 s.
 *
 *   acquire  txn: create_revision(K) == 0 -> put K with the lease; else
 *            read K. A key whose expires_at has passed is deleted with a
 *            txn on its mod_revision, and the create is tried again.
 *   token    create_revision(K): the cluster revision of the acquiring
 *            put. etcd's revision is one counter for the whole cluster
 *            that every write raises, so a later acquisition of any name
 *            always gets a larger token than every earlier one.
 *   renew    txn: create_revision(K) == token -> put the new expires_at
 *            (keeping the key's lease), read K's lease; plus a keepalive
 *            of that lease when it is due.
 *   release  txn: create_revision(K) == token -> delete K.
 *
 * Two clocks, on purpose. Leases are judged on the expires_at of the
 * handle's clock like every backend (lock.h), so a holder that stops
 * renewing loses the lock after ttl_ms, tests can drive it with a fake
 * clock, and the conformance suite holds unchanged. The etcd lease (per
 * handle and lease length, TTL at least twice the lock's, kept alive by
 * acquisitions and renewals when half a lock ttl has passed since the
 * last keepalive) removes the keys of holders that died, so they do not
 * pile up; it always ends after the expires_at of every key on it, so it
 * never frees a lock early (etcd's minimum lease TTL, about 2 s, only
 * makes it longer).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/clock.h>
#include <distsys/lock.h>
#include "core/internal.h"
#include "core/etcd.h"
#include "core/json.h"
#include "core/plugin.h"

#define MAX_TRIES 8   /* lost races (deleted, re-created) before DSYS_EBUSY */
#define LEASE_SLOTS 8 /* lease lengths kept per handle */

typedef struct el {
  dsysi_etcd c;
  char *prefix;
  struct {
    int64_t ttl_s, id, ka_ms; /* ka_ms: monotonic ms before its last grant/keepalive */
  } lease[LEASE_SLOTS];
  size_t next;
} el;

static int64_t mono_ms(void) { return dsys_clock_now_us(dsys_clock_real()) / 1000; }

static int open_any(void *state, const char *location, int tls, char *err, size_t errlen) {
  el *s = state;
  int e = dsysi_etcd_open(&s->c, location, tls, "lock", "/dsys/locks", &s->prefix, err, errlen);
  if (e) return e;
  /* one read, so that an unreachable cluster shows at open */
  json_object *req = json_object_new_object(), *resp = NULL;
  json_object_object_add(req, "key", dsysi_etcd_b64s(s->prefix));
  pthread_mutex_lock(&s->c.mu);
  e = dsysi_etcd_post(&s->c, "/v3/kv/range", req, &resp);
  pthread_mutex_unlock(&s->c.mu);
  json_object_put(req);
  if (resp) json_object_put(resp);
  if (e) {
    snprintf(err, errlen, "etcd: %s (last: %s)",
             e == DSYS_EUNAVAIL ? "no member answered" : dsys_strerror(e), s->c.last);
    dsysi_etcd_close(&s->c);
    free(s->prefix);
  }
  return e;
}

static int e_open(void *state, const char *location, char *err, size_t errlen) {
  return open_any(state, location, 0, err, errlen);
}

static int e_open_tls(void *state, const char *location, char *err, size_t errlen) {
  return open_any(state, location, 1, err, errlen);
}

static void e_close(void *state) {
  el *s = state;
  dsysi_etcd_close(&s->c);
  free(s->prefix);
}

static char *lock_key(el *s, const char *name) {
  dsysi_buf b = {0};
  dsysi_buf_printf(&b, "%s/%s", s->prefix, name);
  return b.oom ? (dsysi_buf_free(&b), NULL) : dsysi_buf_steal(&b, NULL);
}

static char *lock_value(const char *owner, int64_t expires_at) {
  json_object *o = json_object_new_object();
  json_object_object_add(o, "owner", json_object_new_string(owner));
  json_object_object_add(o, "expires_at", json_object_new_int64(expires_at));
  char *v = dsysi_json_dump(o, NULL);
  json_object_put(o);
  return v;
}

/* The holder stored in kv; DSYS_EPROTO when the value is not ours. */
static int parse_holder(const dsysi_etcd_kv *kv, dsys_lock_info *out) {
  json_object *o = NULL;
  int64_t exp = 0;
  const char *owner;
  if (dsysi_json_parse_object(kv->value, kv->vlen, &o) || !(owner = dsysi_json_str(o, "owner")) ||
      dsysi_json_int64(o, "expires_at", &exp)) {
    if (o) json_object_put(o);
    return DSYS_EPROTO;
  }
  snprintf(out->owner, sizeof out->owner, "%s", owner);
  out->token = kv->create;
  out->expires_at = exp;
  json_object_put(o);
  return 0;
}

/* Refresh lease slot i when half a lock ttl has passed since its last
 * keepalive: it then lasts at least ttl_s - ttl/2 > ttl_ms beyond now. */
static int lease_fresh(el *s, size_t i, int64_t ttl_ms) {
  int64_t now = mono_ms();
  if (now - s->lease[i].ka_ms <= ttl_ms / 2) return 0;
  int e = dsysi_etcd_lease_keepalive(&s->c, s->lease[i].id);
  if (!e) s->lease[i].ka_ms = now;
  else if (e == DSYS_ENOTFOUND) s->lease[i].id = 0; /* ended: grant another */
  return e;
}

/* The lease for locks of ttl_ms, alive for longer than ttl_ms from now. */
static int lease_for(el *s, int64_t ttl_ms, int64_t *id) {
  int64_t ttl_s = (2 * ttl_ms + 999) / 1000 + 1;
  size_t i;
  for (i = 0; i < LEASE_SLOTS; i++)
    if (s->lease[i].id && s->lease[i].ttl_s == ttl_s) break;
  if (i < LEASE_SLOTS) {
    int e = lease_fresh(s, i, ttl_ms);
    if (e && e != DSYS_ENOTFOUND) return e;
    if (!e) {
      *id = s->lease[i].id;
      return 0;
    }
  } else {
    i = s->next; /* a new length takes the oldest slot: its keys keep their lease */
    s->next = (s->next + 1) % LEASE_SLOTS;
  }
  int64_t now = mono_ms();
  int e = dsysi_etcd_lease_grant(&s->c, ttl_s, &s->lease[i].id);
  if (e) {
    s->lease[i].id = 0;
    return e;
  }
  s->lease[i].ttl_s = ttl_s;
  s->lease[i].ka_ms = now;
  *id = s->lease[i].id;
  return 0;
}

/* Forget lease id (etcd said it ended). */
static void lease_drop(el *s, int64_t id) {
  for (size_t i = 0; i < LEASE_SLOTS; i++)
    if (s->lease[i].id == id) s->lease[i].id = 0;
}

/* One range of key: *kv gets it (n 0 or 1). */
static int range_one(json_object *rr, dsysi_etcd_kv **kv, size_t *n) {
  if (!rr) return DSYS_EPROTO;
  return dsysi_etcd_decode_kvs(rr, kv, n);
}

static int do_acquire(el *s, const char *key, const char *owner, int64_t now, int64_t ttl_ms,
                      int64_t *token, dsys_lock_info *held) {
  char *val = lock_value(owner, now + ttl_ms);
  if (!val) return DSYS_ENOMEM;
  int e = DSYS_EBUSY;
  for (int tries = 0; tries < MAX_TRIES; tries++) {
    int64_t lease = 0;
    if ((e = lease_for(s, ttl_ms, &lease))) break;
    json_object *cmps = json_object_new_array(), *ops = json_object_new_array(),
                *fail = json_object_new_array(), *resp = NULL;
    json_object_array_add(cmps, dsysi_etcd_cmp_create(key, 0));
    json_object_array_add(ops, dsysi_etcd_put_op(key, val, lease));
    json_object_array_add(fail, dsysi_etcd_range_op(key, NULL));
    int ok = 0;
    e = dsysi_etcd_txn(&s->c, cmps, ops, fail, &ok, &resp);
    if (e == DSYS_ENOTFOUND) { /* the lease ended meanwhile: another */
      lease_drop(s, lease);
      e = DSYS_EBUSY;
      continue;
    }
    if (e) break;
    if (ok) {
      /* the put is the txn's only write: the key's create_revision */
      *token = dsysi_etcd_revision(resp);
      json_object_put(resp);
      e = *token > 0 ? 0 : DSYS_EPROTO;
      break;
    }
    dsysi_etcd_kv *kv = NULL;
    size_t n = 0;
    e = range_one(dsysi_etcd_txn_range(resp, 0), &kv, &n);
    json_object_put(resp);
    if (e) break;
    e = DSYS_EBUSY;
    if (n == 1) {
      dsys_lock_info h = {0};
      int pe = parse_holder(&kv[0], &h);
      if (!pe && h.expires_at > now) { /* a running lease */
        if (held) *held = h;
        dsysi_etcd_kvs_free(kv, n);
        break;
      }
      /* ended (or not a lock's value): delete it unless it changed since */
      json_object *c2 = json_object_new_array(), *o2 = json_object_new_array(), *r2 = NULL;
      json_object_array_add(c2, dsysi_etcd_cmp_mod(key, kv[0].mod));
      json_object_array_add(o2, dsysi_etcd_del_op(key, NULL));
      int de = dsysi_etcd_txn(&s->c, c2, o2, NULL, NULL, &r2);
      if (r2) json_object_put(r2);
      if (de) {
        dsysi_etcd_kvs_free(kv, n);
        e = de;
        break;
      }
    }
    dsysi_etcd_kvs_free(kv, n); /* gone or deleted: try the create again */
  }
  free(val);
  return e;
}

static int e_acquire(void *state, const char *name, const char *owner, int64_t now,
                     int64_t ttl_ms, int64_t *token, dsys_lock_info *held) {
  el *s = state;
  char *key = lock_key(s, name);
  if (!key) return DSYS_ENOMEM;
  pthread_mutex_lock(&s->c.mu);
  int e = do_acquire(s, key, owner, now, ttl_ms, token, held);
  pthread_mutex_unlock(&s->c.mu);
  free(key);
  return e;
}

static int do_renew(el *s, const char *key, const char *owner, int64_t token, int64_t now,
                    int64_t ttl_ms) {
  char *val = lock_value(owner, now + ttl_ms);
  if (!val) return DSYS_ENOMEM;
  json_object *cmps = json_object_new_array(), *ops = json_object_new_array(), *resp = NULL;
  json_object_array_add(cmps, dsysi_etcd_cmp_create(key, token));
  json_object_array_add(ops, dsysi_etcd_put_op(key, val, -1));
  json_object_array_add(ops, dsysi_etcd_range_op(key, NULL));
  int ok = 0;
  int e = dsysi_etcd_txn(&s->c, cmps, ops, NULL, &ok, &resp);
  free(val);
  if (e) return e;
  if (!ok) {
    json_object_put(resp);
    return DSYS_ELEASE; /* released, taken, or removed with its lease */
  }
  dsysi_etcd_kv *kv = NULL;
  size_t n = 0;
  e = range_one(dsysi_etcd_txn_range(resp, 1), &kv, &n);
  json_object_put(resp);
  if (e) return e;
  int64_t lease = n == 1 ? kv[0].lease : 0;
  dsysi_etcd_kvs_free(kv, n);
  if (!lease) return 0;
  size_t i;
  for (i = 0; i < LEASE_SLOTS && s->lease[i].id != lease; i++) {
  }
  if (i == LEASE_SLOTS) { /* not remembered (slot reused): keep it alive anyway */
    e = dsysi_etcd_lease_keepalive(&s->c, lease);
  } else {
    e = lease_fresh(s, i, ttl_ms);
  }
  /* the keepalive failed but the key was there a moment ago: the next
   * renew tells (DSYS_ELEASE when etcd removed it) */
  return e == DSYS_ENOTFOUND ? 0 : e;
}

static int e_renew(void *state, const char *name, const char *owner, int64_t token, int64_t now,
                   int64_t ttl_ms) {
  el *s = state;
  char *key = lock_key(s, name);
  if (!key) return DSYS_ENOMEM;
  pthread_mutex_lock(&s->c.mu);
  int e = do_renew(s, key, owner, token, now, ttl_ms);
  pthread_mutex_unlock(&s->c.mu);
  free(key);
  return e;
}

static int e_release(void *state, const char *name, const char *owner, int64_t token) {
  (void)owner; /* the token (a create revision) names one acquisition */
  el *s = state;
  char *key = lock_key(s, name);
  if (!key) return DSYS_ENOMEM;
  json_object *cmps = json_object_new_array(), *ops = json_object_new_array(), *resp = NULL;
  json_object_array_add(cmps, dsysi_etcd_cmp_create(key, token));
  json_object_array_add(ops, dsysi_etcd_del_op(key, NULL));
  int ok = 0;
  pthread_mutex_lock(&s->c.mu);
  int e = dsysi_etcd_txn(&s->c, cmps, ops, NULL, &ok, &resp);
  pthread_mutex_unlock(&s->c.mu);
  if (resp) json_object_put(resp);
  free(key);
  return e ? e : ok ? 0 : DSYS_ELEASE;
}

static int e_holder(void *state, const char *name, int64_t now, dsys_lock_info *out) {
  el *s = state;
  char *key = lock_key(s, name);
  if (!key) return DSYS_ENOMEM;
  json_object *req = json_object_new_object(), *resp = NULL;
  json_object_object_add(req, "key", dsysi_etcd_b64s(key));
  pthread_mutex_lock(&s->c.mu);
  int e = dsysi_etcd_post(&s->c, "/v3/kv/range", req, &resp);
  pthread_mutex_unlock(&s->c.mu);
  json_object_put(req);
  free(key);
  if (e) return e;
  dsysi_etcd_kv *kv = NULL;
  size_t n = 0;
  e = range_one(resp, &kv, &n);
  json_object_put(resp);
  if (!e && n != 1) e = DSYS_ENOTFOUND;
  if (!e) e = parse_holder(&kv[0], out);
  if (!e && out->expires_at <= now) e = DSYS_ENOTFOUND;
  if (e == DSYS_ENOTFOUND) memset(out, 0, sizeof *out);
  dsysi_etcd_kvs_free(kv, n);
  return e;
}

/* etcds:// is the same over TLS, as https:// is to http:// */
#define E_OPS(NAME, OPEN)                                                                   \
  {                                                                                         \
    .version = DSYS_LOCK_OPS_VERSION, .name = NAME, .state_size = sizeof(el), .open = OPEN,  \
    .close = e_close, .acquire = e_acquire, .renew = e_renew, .release = e_release,         \
    .holder = e_holder,                                                                     \
  }
static const dsys_lock_ops etcd_ops = E_OPS("etcd", e_open);
static const dsys_lock_ops etcds_ops = E_OPS("etcds", e_open_tls);

DSYSI_PLUGINS(lock_etcd) = {{"lock", &etcd_ops}, {"lock", &etcds_ops}, {0}};
