/*
 * An etcd v3 cluster through its JSON gateway over libcurl (etcd has no C
 * client): the requests, member failover and JSON pieces shared by the
 * etcd backends (the registry's and the locks').
 *
 * Endpoints are tried in order from the last good one; a request moves to
 * the next on a connection error, a timeout, or an etcd "unavailable"
 * answer (a member without a leader answers at once thanks to the
 * hasleader metadata). A request gives up with DSYS_EUNAVAIL once its
 * bound (connect 1 s, whole request 3 s by default) has passed.
 *
 * Keys and values travel base64-encoded, int64s as JSON strings.
 *
 * Security (etcds://, query parameters of the target): TLS verified
 * against ca= (default: the system store), a client certificate cert= and
 * key= (etcd's --client-cert-auth); user= authenticates with etcd's auth
 * (POST /v3/auth/authenticate) and sends the token in the Authorization
 * header, authenticating again when etcd says it is no longer valid. The
 * password comes from password-file= or DSYS_ETCD_PASSWORD, never from
 * the URL (a password= parameter is refused), so URLs are safe to log.
 */
#ifndef DSYSI_ETCD_H
#define DSYSI_ETCD_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <curl/curl.h>
#include <json-c/json.h>
#include "core/buf.h"

typedef struct dsysi_etcd {
  pthread_mutex_t mu; /* the request handle: hold it around dsysi_etcd_post and its users */
  int mu_init;
  char **eps; /* "http://host:port" */
  size_t neps;
  _Atomic size_t cur; /* last endpoint that answered */
  long connect_ms, timeout_ms;
  CURL *easy;
  struct curl_slist *hdrs;
  dsysi_buf body;
  int down;         /* an outage is being logged */
  /* when members first answered "no leader" and the like with no answer
   * from a leader since (0: none): the election wait is shared by every
   * request from then on, not granted to each again */
  int64_t noleader_since;
  char last[256];   /* why the last member tried failed */
  const char *area; /* log area, e.g. "registry" */
  /* security: TLS material and etcd user; the token changes under mu */
  int tls;
  char *ca, *cert, *key;
  char *user, *password;
  char *token;      /* NULL: authenticate before the next request */
  unsigned auths;   /* successful authentications (first one included) */
} dsysi_etcd;

/**
 * Parse "host:port[,host:port...]/prefix[?ca=F&cert=F&key=F&user=U&password-file=F]"
 * and set up the request handle (no request is made). tls: endpoints are
 * https:// (etcds://); ca, cert and key need it. *prefix gets a malloc'd
 * copy of the prefix without trailing slashes (default_prefix when the
 * URL has none).
 * @return 0; DSYS_EINVAL (empty target or endpoint, unknown or misplaced
 *         parameter, password in the URL, no password for user=: err says
 *         which), DSYS_EIO (password file unreadable), DSYS_ENOMEM. On
 *         failure nothing needs closing.
 */
int dsysi_etcd_open(dsysi_etcd *c, const char *target, int tls, const char *area,
                    const char *default_prefix, char **prefix, char *err, size_t errlen);

/** A copy of the request headers (with the current token), for a thread
 *  that makes its own requests (the registry's watch); NULL when out of
 *  memory. When auth is on and there is no token, authenticates first.
 *  Hold c->mu. Free with curl_slist_free_all. */
struct curl_slist *dsysi_etcd_headers(dsysi_etcd *c);

/** Forget the token (a stream was refused for it): the next request
 *  authenticates again. Hold c->mu. */
void dsysi_etcd_drop_token(dsysi_etcd *c);

/** Free what open set up. Safe on a zeroed struct. */
void dsysi_etcd_close(dsysi_etcd *c);

/** Set up curl handle e for a POST of body to url with c's bounds, TLS
 *  material and headers hdrs (timeout_ms 0: none, for streams). */
void dsysi_etcd_setup_easy(dsysi_etcd *c, CURL *e, const char *url, const char *body,
                           long timeout_ms, struct curl_slist *hdrs);

/** POST req to path (e.g. "/v3/kv/range"). 0 with *resp owning the answer;
 *  DSYS_EUNAVAIL when no member answered within the bound; DSYS_EAUTH
 *  when a member's certificate does not verify, ours is refused, or the
 *  user/password is wrong (c->last says which); an etcd error mapped to a
 *  DSYS_E code. Hold c->mu. */
int dsysi_etcd_post(dsysi_etcd *c, const char *path, json_object *req, json_object **resp);

/** A txn of compares cmps (may be NULL) and success ops (and failure ops,
 *  may be NULL). *succeeded (may be NULL) tells which branch ran; *resp
 *  its answer. Takes cmps, ops and fail. Hold c->mu. */
int dsysi_etcd_txn(dsysi_etcd *c, json_object *cmps, json_object *ops, json_object *fail,
                   int *succeeded, json_object **resp);

/** The range answer number i of a txn answer, or NULL. */
json_object *dsysi_etcd_txn_range(json_object *resp, size_t i);

/** The revision of the store an answer was made at (its header). */
int64_t dsysi_etcd_revision(json_object *resp);

/** Grant a lease of ttl_s seconds. Hold c->mu. */
int dsysi_etcd_lease_grant(dsysi_etcd *c, int64_t ttl_s, int64_t *id);
/** One keepalive of lease id. DSYS_ENOTFOUND when it ended. Hold c->mu. */
int dsysi_etcd_lease_keepalive(dsysi_etcd *c, int64_t id);

/* ---- JSON pieces ---- */

/** Base64 of s as a JSON string (NULL when out of memory). */
json_object *dsysi_etcd_b64(const char *s, size_t len);
json_object *dsysi_etcd_b64s(const char *s);
/** An int64 as the JSON string the gateway expects. */
json_object *dsysi_etcd_i64(int64_t v);
/** An int64 field that may come as a string or a number; 0 when absent. */
int64_t dsysi_etcd_get_i64(json_object *o, const char *key);
/** The end of the range of keys that start with prefix (malloc'd). */
char *dsysi_etcd_prefix_end(const char *prefix);
/** Ops of a txn. put_op: lease 0 none, -1 keep the key's own. */
json_object *dsysi_etcd_range_op(const char *key, const char *end);
json_object *dsysi_etcd_put_op(const char *key, const char *value, int64_t lease);
json_object *dsysi_etcd_del_op(const char *key, const char *end);
/** Compares: mod_revision(key) == rev, create_revision(key) == rev (0:
 *  the key does not exist). */
json_object *dsysi_etcd_cmp_mod(const char *key, int64_t rev);
json_object *dsysi_etcd_cmp_create(const char *key, int64_t rev);

/** A decoded key-value of a range answer. */
typedef struct dsysi_etcd_kv {
  char *key, *value; /* NUL-terminated */
  size_t vlen;
  int64_t mod, create, lease;
} dsysi_etcd_kv;

/** The kvs of a range response object. */
int dsysi_etcd_decode_kvs(json_object *rr, dsysi_etcd_kv **out, size_t *n);
void dsysi_etcd_kvs_free(dsysi_etcd_kv *v, size_t n);

#endif
