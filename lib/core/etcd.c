/* etcd v3 through its JSON gateway (core/etcd.h): requests with member
 * failover, and the JSON pieces of the protocol. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <distsys/clock.h>
#include "core/internal.h"
#include "core/base64.h"
#include "core/etcd.h"
#include "core/json.h"
#include "core/file.h"
#include "core/str.h"

static int64_t mono_ms(void) { return dsys_clock_now_us(dsys_clock_real()) / 1000; }

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

/* ---- JSON pieces ---- */

json_object *dsysi_etcd_b64(const char *s, size_t len) {
  char *e = NULL;
  if (dsysi_base64_encode(s, len, &e)) return NULL;
  json_object *o = json_object_new_string(e);
  free(e);
  return o;
}

json_object *dsysi_etcd_b64s(const char *s) { return dsysi_etcd_b64(s, strlen(s)); }

json_object *dsysi_etcd_i64(int64_t v) {
  char b[24];
  snprintf(b, sizeof b, "%lld", (long long)v);
  return json_object_new_string(b);
}

int64_t dsysi_etcd_get_i64(json_object *o, const char *key) {
  json_object *v;
  if (!o || !json_object_object_get_ex(o, key, &v)) return 0;
  if (json_object_is_type(v, json_type_string)) return strtoll(json_object_get_string(v), NULL, 10);
  return json_object_get_int64(v);
}

static void add(json_object *o, const char *k, json_object *v) { json_object_object_add(o, k, v); }

char *dsysi_etcd_prefix_end(const char *prefix) {
  char *e = strdup(prefix);
  if (e && *e) e[strlen(e) - 1]++;
  return e;
}

json_object *dsysi_etcd_range_op(const char *key, const char *end) {
  json_object *r = json_object_new_object(), *op = json_object_new_object();
  add(r, "key", dsysi_etcd_b64s(key));
  if (end) add(r, "range_end", dsysi_etcd_b64s(end));
  add(op, "request_range", r);
  return op;
}

json_object *dsysi_etcd_put_op(const char *key, const char *value, int64_t lease) {
  json_object *r = json_object_new_object(), *op = json_object_new_object();
  add(r, "key", dsysi_etcd_b64s(key));
  add(r, "value", dsysi_etcd_b64s(value));
  if (lease > 0) add(r, "lease", dsysi_etcd_i64(lease));
  if (lease < 0) add(r, "ignore_lease", json_object_new_boolean(1));
  add(op, "request_put", r);
  return op;
}

json_object *dsysi_etcd_del_op(const char *key, const char *end) {
  json_object *r = json_object_new_object(), *op = json_object_new_object();
  add(r, "key", dsysi_etcd_b64s(key));
  if (end) add(r, "range_end", dsysi_etcd_b64s(end));
  add(op, "request_delete_range", r);
  return op;
}

static json_object *cmp_rev(const char *key, const char *target, const char *field, int64_t rev) {
  json_object *c = json_object_new_object();
  add(c, "key", dsysi_etcd_b64s(key));
  add(c, "target", json_object_new_string(target));
  add(c, "result", json_object_new_string("EQUAL"));
  add(c, field, dsysi_etcd_i64(rev));
  return c;
}

json_object *dsysi_etcd_cmp_mod(const char *key, int64_t rev) {
  return cmp_rev(key, "MOD", "mod_revision", rev);
}

json_object *dsysi_etcd_cmp_create(const char *key, int64_t rev) {
  return cmp_rev(key, "CREATE", "create_revision", rev);
}

void dsysi_etcd_kvs_free(dsysi_etcd_kv *v, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(v[i].key);
    free(v[i].value);
  }
  free(v);
}

int dsysi_etcd_decode_kvs(json_object *rr, dsysi_etcd_kv **out, size_t *n) {
  *out = NULL;
  *n = 0;
  json_object *a;
  if (!json_object_object_get_ex(rr, "kvs", &a)) return 0;
  if (!json_object_is_type(a, json_type_array)) return DSYS_EPROTO;
  size_t cnt = json_object_array_length(a);
  dsysi_etcd_kv *v = calloc(cnt ? cnt : 1, sizeof *v);
  if (!v) return DSYS_ENOMEM;
  for (size_t i = 0; i < cnt; i++) {
    json_object *e = json_object_array_get_idx(a, i);
    const char *k = dsysi_json_str(e, "key"), *val = dsysi_json_str(e, "value");
    size_t kl;
    void *kb = NULL, *vb = NULL;
    if (!k || dsysi_base64_decode(k, strlen(k), &kb, &kl) ||
        dsysi_base64_decode(val ? val : "", val ? strlen(val) : 0, &vb, &v[i].vlen)) {
      free(kb);
      dsysi_etcd_kvs_free(v, i);
      return DSYS_EPROTO;
    }
    v[i].key = kb;
    v[i].value = vb;
    v[i].mod = dsysi_etcd_get_i64(e, "mod_revision");
    v[i].create = dsysi_etcd_get_i64(e, "create_revision");
    v[i].lease = dsysi_etcd_get_i64(e, "lease");
  }
  *out = v;
  *n = cnt;
  return 0;
}

int64_t dsysi_etcd_revision(json_object *resp) {
  json_object *h;
  return json_object_object_get_ex(resp, "header", &h) ? dsysi_etcd_get_i64(h, "revision") : 0;
}

/* ---- requests ---- */

#define PASSWORD_MAX 1024

static int bad(char *err, size_t errlen, int rc, const char *fmt, const char *a, const char *b) {
  if (err && errlen) snprintf(err, errlen, fmt, a, b);
  return rc;
}

/* The query parameters of the target (after '?'): '&'-separated k=v,
 * percent-decoded. */
static int parse_query(dsysi_etcd *c, const char *q, int tls, char *err, size_t errlen) {
  char *pwfile = NULL;
  int rc = 0;
  while (*q && !rc) {
    size_t n = strcspn(q, "&");
    const char *eq = memchr(q, '=', n);
    size_t kl = eq ? (size_t)(eq - q) : n;
    char *v = eq ? dsysi_url_decode(eq + 1, n - kl - 1, 0) : NULL;
    char **dst = NULL;
    if (kl == 2 && !strncmp(q, "ca", 2)) dst = &c->ca;
    else if (kl == 4 && !strncmp(q, "cert", 4)) dst = &c->cert;
    else if (kl == 3 && !strncmp(q, "key", 3)) dst = &c->key;
    else if (kl == 4 && !strncmp(q, "user", 4)) dst = &c->user;
    else if (kl == 13 && !strncmp(q, "password-file", 13)) dst = &pwfile;
    if (kl == 8 && !strncmp(q, "password", 8))
      rc = bad(err, errlen, DSYS_EINVAL,
               "etcd %s: a password never goes in the URL (logged, listed by ps): "
               "use password-file= or DSYS_ETCD_PASSWORD%s", c->area, "");
    else if (!dst) {
      if (err && errlen)
        snprintf(err, errlen, "etcd %s: unknown parameter '%.*s' (ca, cert, key, user, "
                 "password-file)", c->area, (int)(kl > 40 ? 40 : kl), q);
      rc = DSYS_EINVAL;
    }
    else if (eq && !v)
      rc = DSYS_ENOMEM;
    else if (!v || !*v) {
      if (err && errlen)
        snprintf(err, errlen, "etcd %s: parameter %.*s needs a value", c->area, (int)kl, q);
      rc = DSYS_EINVAL;
    }
    else if (*dst)
      rc = bad(err, errlen, DSYS_EINVAL, "etcd %s: a parameter is given twice%s", c->area, "");
    if (!rc) {
      *dst = v;
      v = NULL;
    }
    free(v);
    q += n;
    if (*q == '&') q++;
  }
  if (!rc && !tls && (c->ca || c->cert || c->key))
    rc = bad(err, errlen, DSYS_EINVAL, "etcd %s: ca=, cert= and key= need an etcds:// URL%s",
             c->area, "");
  if (!rc && !c->cert != !c->key)
    rc = bad(err, errlen, DSYS_EINVAL, "etcd %s: cert= and key= go together%s", c->area, "");
  if (!rc && pwfile && !c->user)
    rc = bad(err, errlen, DSYS_EINVAL, "etcd %s: password-file= needs user=%s", c->area, "");
  if (!rc && c->user) {
    const char *envpw = getenv("DSYS_ETCD_PASSWORD");
    if (pwfile) {
      size_t pwlen;
      int frc = dsysi_file_read(pwfile, PASSWORD_MAX, c->area, &c->password, &pwlen);
      if (frc) rc = bad(err, errlen, frc, "etcd %s: cannot read the password file %s", c->area, pwfile);
    } else if (envpw && *envpw) {
      c->password = strdup(envpw);
      if (!c->password) rc = DSYS_ENOMEM;
    } else {
      rc = bad(err, errlen, DSYS_EINVAL,
               "etcd %s: user=%s needs password-file= or DSYS_ETCD_PASSWORD", c->area, c->user);
    }
  }
  free(pwfile);
  return rc;
}

/* Request headers: the fixed ones and the token when there is one. */
static struct curl_slist *make_headers(const dsysi_etcd *c) {
  /* a member without a leader refuses at once instead of after etcd's own
   * request timeout: the request moves on to the next member */
  static const char *const fixed[] = {"Content-Type: application/json",
                                      "Grpc-Metadata-hasleader: true"};
  struct curl_slist *h = NULL, *t;
  for (size_t i = 0; i < 2; i++) {
    if (!(t = curl_slist_append(h, fixed[i]))) goto oom;
    h = t;
  }
  if (c->token) {
    dsysi_buf b = {0};
    dsysi_buf_printf(&b, "Authorization: %s", c->token);
    t = b.oom ? NULL : curl_slist_append(h, b.data);
    dsysi_buf_free(&b);
    if (!t) goto oom;
    h = t;
  }
  return h;
oom:
  curl_slist_free_all(h);
  return NULL;
}

int dsysi_etcd_open(dsysi_etcd *c, const char *target, int tls, const char *area,
                    const char *default_prefix, char **prefix, char *err, size_t errlen) {
  *prefix = NULL;
  if (!target || !*target || *target == '?') {
    if (err && errlen)
      snprintf(err, errlen, "etcd %s needs host:port[,host:port...]/prefix", area);
    return DSYS_EINVAL;
  }
  pthread_once(&curl_once, curl_init_once);
  pthread_mutex_init(&c->mu, NULL);
  c->mu_init = 1;
  c->area = area;
  c->connect_ms = 1000;
  c->timeout_ms = 3000;
  c->tls = tls;
  const char *qm = strchr(target, '?');
  size_t tl = qm ? (size_t)(qm - target) : strlen(target);
  int rc = qm ? parse_query(c, qm + 1, tls, err, errlen) : 0;
  if (rc) {
    dsysi_etcd_close(c);
    return rc;
  }
  const char *slash = memchr(target, '/', tl);
  size_t hl = slash ? (size_t)(slash - target) : tl;
  const char *pre = slash && slash + 1 < target + tl ? slash : default_prefix;
  size_t pl = slash && slash + 1 < target + tl ? tl - hl : strlen(pre);
  while (pl > 1 && pre[pl - 1] == '/') pl--;
  size_t cap = 0;
  for (size_t i = 0, st = 0; i <= hl; i++) {
    if (i < hl && target[i] != ',') continue;
    if (i == st) {
      if (err && errlen) snprintf(err, errlen, "etcd %s: empty endpoint in '%.*s'", area, (int)tl, target);
      dsysi_etcd_close(c);
      return DSYS_EINVAL;
    }
    dsysi_buf b = {0};
    dsysi_buf_printf(&b, "%s://%.*s", tls ? "https" : "http", (int)(i - st), target + st);
    if (b.oom || dsysi_grow(&c->eps, &cap, c->neps + 1, sizeof *c->eps, 4)) {
      dsysi_buf_free(&b);
      dsysi_etcd_close(c);
      return DSYS_ENOMEM;
    }
    c->eps[c->neps++] = dsysi_buf_steal(&b, NULL);
    st = i + 1;
  }
  c->easy = curl_easy_init();
  c->hdrs = make_headers(c);
  *prefix = strndup(pre, pl);
  if (!c->easy || !c->hdrs || !*prefix) {
    free(*prefix);
    *prefix = NULL;
    dsysi_etcd_close(c);
    return DSYS_ENOMEM;
  }
  return 0;
}

static void free_secret(char *s) {
  if (!s) return;
  explicit_bzero(s, strlen(s));
  free(s);
}

void dsysi_etcd_close(dsysi_etcd *c) {
  if (c->easy) curl_easy_cleanup(c->easy);
  curl_slist_free_all(c->hdrs);
  dsysi_buf_free(&c->body);
  for (size_t i = 0; i < c->neps; i++) free(c->eps[i]);
  free(c->eps);
  free(c->ca);
  free(c->cert);
  free(c->key);
  free(c->user);
  free_secret(c->password);
  free_secret(c->token);
  if (c->mu_init) pthread_mutex_destroy(&c->mu);
  memset(c, 0, sizeof *c);
}

static size_t on_body(char *p, size_t sz, size_t nm, void *ud) {
  return dsysi_buf_append(ud, p, sz * nm) ? 0 : sz * nm;
}

/* gRPC codes after which another member may do better: Canceled (we
 * never cancel a request through the gateway: the member did, e.g. while
 * stopping), Unknown (the gateway's "context deadline exceeded"),
 * DeadlineExceeded, Unavailable ("no leader", "request timed out",
 * "leader changed") */
static int failover_code(int64_t code) { return code == 1 || code == 2 || code == 4 || code == 14; }

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

/* TLS failures that another member will not fix: our CA, our
 * certificate or the handshake itself is wrong. */
static int tls_fatal(CURLcode cc) {
  return cc == CURLE_PEER_FAILED_VERIFICATION || cc == CURLE_SSL_CACERT_BADFILE ||
         cc == CURLE_SSL_CERTPROBLEM || cc == CURLE_SSL_CONNECT_ERROR;
}

void dsysi_etcd_setup_easy(dsysi_etcd *c, CURL *e, const char *url, const char *body,
                           long timeout_ms, struct curl_slist *hdrs) {
  curl_easy_reset(e);
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, c->tls ? "https" : "http");
  if (c->tls) { /* verification is curl's default: stated, never turned off */
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    if (c->ca) curl_easy_setopt(e, CURLOPT_CAINFO, c->ca);
    if (c->cert) curl_easy_setopt(e, CURLOPT_SSLCERT, c->cert);
    if (c->key) curl_easy_setopt(e, CURLOPT_SSLKEY, c->key);
  }
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, c->connect_ms);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPIDLE, 5L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPINTVL, 2L);
}

/* One request over the members; *code gets etcd's gRPC code of an error
 * answer (0 otherwise). */
static int post_body(dsysi_etcd *c, const char *path, const char *body, json_object **resp,
                     int64_t *code) {
  *resp = NULL;
  *code = 0;
  int64_t start = mono_ms();
  size_t first = c->cur;
  char *last = c->last;
  size_t lastlen = sizeof c->last;
  last[0] = '\0';
  /* Right after the leader died the others refuse at once ("no leader")
   * until they have elected a new one (about 1 s; etcd's election timeout
   * is 1 s): a single pass would report an outage. So while etcd was
   * answering, passes repeat for up to ELECTION_MS; once an outage is
   * declared (c->down), one pass and a fast error (no quorum: every call
   * would otherwise wait). The election wait counts from the first "no
   * leader" of the episode: without quorum each request of a registry call
   * (and the sweeper's before it, holding the handle) waited its own 2 s
   * (test-registry-etcd: a register took 10 s). */
  enum { ELECTION_MS = 2000 };
  int answered = 0; /* a member answered "no leader" and the like */
  for (size_t i = 0;; i++) {
    size_t ep = (first + i) % c->neps;
    long left = c->timeout_ms - (long)(mono_ms() - start);
    if (i > 0 && left <= 0) break;
    if (i > 0 && i % c->neps == 0) { /* a pass failed: pause, then again */
      int64_t since = c->noleader_since && c->noleader_since < start ? c->noleader_since : start;
      if (c->down || mono_ms() - since >= ELECTION_MS) break;
      long pause = left < 100 ? left : 100;
      struct timespec ts = {0, pause * 1000000L};
      nanosleep(&ts, NULL);
      left -= pause;
      if (left <= 0) break;
    }
    /* a member that takes the connection but does not answer (paused,
     * overloaded) must not use up the whole bound: each member but the
     * last of a pass gets an equal share of it (seen in
     * multihost-etcd.test: one SIGSTOPped member made every new process
     * listing it first fail) */
    long share = c->timeout_ms / (long)c->neps;
    if ((i + 1) % c->neps != 0 && left > share) left = share;
    if (left < c->connect_ms) left = c->connect_ms;
    char url[300];
    snprintf(url, sizeof url, "%s%s", c->eps[ep], path);
    dsysi_buf_free(&c->body);
    dsysi_etcd_setup_easy(c, c->easy, url, body, left, c->hdrs);
    curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, &c->body);
    CURLcode cc = curl_easy_perform(c->easy);
    long status = 0;
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
    if (cc != CURLE_OK || c->body.oom) {
      /* a member that wants a client certificate and gets none cuts the
       * handshake: it looks like a network error, say what it may be */
      int no_cert = c->tls && !c->cert && (cc == CURLE_SEND_ERROR || cc == CURLE_RECV_ERROR);
      snprintf(last, lastlen, "%s: %s%s", c->eps[ep],
               c->body.oom ? "out of memory" : curl_easy_strerror(cc),
               tls_fatal(cc) ? " (TLS: check ca=, cert= and key=)"
               : no_cert     ? " (TLS: does etcd require a client certificate? cert=, key=)"
                             : "");
      if (c->body.oom) return DSYS_ENOMEM;
      if (tls_fatal(cc) && cc != CURLE_SSL_CONNECT_ERROR) {
        dsysi_log(DSYS_LOG_ERROR, c->area, "etcd: %s", last);
        return DSYS_EAUTH;
      }
      continue;
    }
    json_object *j = NULL;
    int prc = dsysi_json_parse(c->body.data ? c->body.data : "", c->body.len, &j);
    if (prc || !j || !json_object_is_type(j, json_type_object)) {
      if (j) json_object_put(j);
      /* e.g. the gateway's text answers: say what it said */
      snprintf(last, lastlen, "%s: HTTP %ld, not a JSON object: %.120s", c->eps[ep], status,
               c->body.data ? c->body.data : "");
      last[strcspn(last, "\r\n")] = 0;
      continue;
    }
    if (status != 200) {
      *code = dsysi_etcd_get_i64(j, "code");
      const char *msg = dsysi_json_str(j, "error");
      snprintf(last, lastlen, "%s: %s (code %lld)", c->eps[ep], msg ? msg : "error",
               (long long)*code);
      json_object_put(j);
      if (failover_code(*code)) {
        answered = 1;
        if (!c->noleader_since) c->noleader_since = mono_ms();
        continue;
      }
      c->noleader_since = 0; /* a leader answered */
      int ge = grpc_err(*code);
      /* an answer this client does not expect: say what it was */
      dsysi_log(ge == DSYS_EPROTO ? DSYS_LOG_WARN : DSYS_LOG_DEBUG, c->area, "etcd %s: %s", path,
                last);
      return ge;
    }
    if (ep != first) c->cur = ep;
    if (c->noleader_since) {
      if (mono_ms() - c->noleader_since >= ELECTION_MS)
        dsysi_log(DSYS_LOG_INFO, c->area, "etcd: has a leader again (%s)", c->eps[ep]);
      c->noleader_since = 0;
    }
    if (c->down) {
      dsysi_log(DSYS_LOG_INFO, c->area, "etcd: reachable again through %s", c->eps[ep]);
      c->down = 0;
    }
    *resp = j;
    return 0;
  }
  *code = 0;
  /* start the next call on the next member: the first one was no good */
  c->cur = (first + 1) % c->neps;
  /* Members that answer are electing (or without quorum): not an outage
   * to fail fast on; the next call waits its bounded election time again
   * (test-registry-etcd: a sweep that met a leader's death declared the
   * cluster down, and the register after it failed at once). */
  if (answered && c->noleader_since && mono_ms() - c->noleader_since >= ELECTION_MS &&
      mono_ms() - start >= ELECTION_MS) /* once per episode: this request used up its wait */
    dsysi_log(DSYS_LOG_WARN, c->area,
              "etcd: members answer %s without a leader for %lld ms (last: %s): failing fast "
              "until a leader answers",
              path, (long long)(mono_ms() - c->noleader_since), last);
  if (!c->down && !answered) {
    dsysi_log(DSYS_LOG_WARN, c->area, "etcd: no member answered %s within %ld ms (last: %s)",
              path, c->timeout_ms, last);
    c->down = 1;
  }
  return DSYS_EUNAVAIL;
}

/* Set the headers for the current token. */
static int set_headers(dsysi_etcd *c) {
  struct curl_slist *h = make_headers(c);
  if (!h) return DSYS_ENOMEM;
  curl_slist_free_all(c->hdrs);
  c->hdrs = h;
  return 0;
}

void dsysi_etcd_drop_token(dsysi_etcd *c) {
  if (!c->token) return;
  free_secret(c->token);
  c->token = NULL;
  set_headers(c); /* out of memory: the old token stays and is refused again */
}

/* Get a token for c->user (etcd's POST /v3/auth/authenticate). */
static int authenticate(dsysi_etcd *c) {
  dsysi_etcd_drop_token(c);
  json_object *req = json_object_new_object(), *resp = NULL;
  add(req, "name", json_object_new_string(c->user));
  add(req, "password", json_object_new_string(c->password));
  const char *body = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
  int64_t code = 0;
  int rc = body ? post_body(c, "/v3/auth/authenticate", body, &resp, &code) : DSYS_ENOMEM;
  if (body) explicit_bzero((char *)body, strlen(body));
  json_object_put(req);
  if (rc == DSYS_EINVAL || rc == DSYS_EAUTH || rc == DSYS_EPERM || code == 9) {
    /* etcd answers InvalidArgument for a wrong user or password and
     * FailedPrecondition when auth is not enabled */
    snprintf(c->last + strlen(c->last), sizeof c->last - strlen(c->last),
             " [authenticating as %s]", c->user);
    dsysi_log(DSYS_LOG_ERROR, c->area, "etcd: authentication as %s refused: %s", c->user, c->last);
    rc = DSYS_EAUTH;
  }
  const char *tok = rc ? NULL : dsysi_json_str(resp, "token");
  if (!rc && (!tok || !*tok)) rc = DSYS_EPROTO;
  if (!rc && !(c->token = strdup(tok))) rc = DSYS_ENOMEM;
  if (resp) {
    if (tok) explicit_bzero((char *)tok, strlen(tok)); /* json-c's own copy */
    json_object_put(resp);
  }
  if (!rc && (rc = set_headers(c))) {
    free_secret(c->token);
    c->token = NULL;
  }
  if (!rc) c->auths++;
  return rc;
}

struct curl_slist *dsysi_etcd_headers(dsysi_etcd *c) {
  if (c->user && !c->token) authenticate(c); /* failing: the stream is refused, retried */
  return make_headers(c);
}

int dsysi_etcd_post(dsysi_etcd *c, const char *path, json_object *req, json_object **resp) {
  *resp = NULL;
  if (!req) return DSYS_ENOMEM;
  const char *body = json_object_to_json_string_ext(req, JSON_C_TO_STRING_PLAIN);
  if (!body) return DSYS_ENOMEM;
  int rc = 0;
  if (c->user && !c->token && (rc = authenticate(c))) return rc;
  int64_t code = 0;
  rc = post_body(c, path, body, resp, &code);
  /* a token expires (etcd's --auth-token-ttl, or a restart of the member
   * for simple tokens), or predates a change of users or roles ("auth
   * store is old"): once more with a new one */
  if (c->user && (code == 16 || (code == 3 && (strstr(c->last, "invalid auth token") ||
                                                strstr(c->last, "auth store is old"))))) {
    dsysi_log(DSYS_LOG_DEBUG, c->area, "etcd: token refused (%s): authenticating again", c->last);
    if (!(rc = authenticate(c))) rc = post_body(c, path, body, resp, &code);
  }
  if (rc == DSYS_EINVAL && strstr(c->last, "user name is empty")) {
    /* auth is on in etcd and no user= was given */
    snprintf(c->last + strlen(c->last), sizeof c->last - strlen(c->last),
             " [etcd requires a user: user= and password-file=]");
    rc = DSYS_EAUTH;
  }
  return rc;
}

int dsysi_etcd_txn(dsysi_etcd *c, json_object *cmps, json_object *ops, json_object *fail,
                   int *succeeded, json_object **resp) {
  json_object *req = json_object_new_object();
  if (cmps) add(req, "compare", cmps);
  add(req, "success", ops);
  if (fail) add(req, "failure", fail);
  int rc = dsysi_etcd_post(c, "/v3/kv/txn", req, resp);
  json_object_put(req);
  if (!rc && succeeded) {
    json_object *v;
    *succeeded = json_object_object_get_ex(*resp, "succeeded", &v) && json_object_get_boolean(v);
  }
  return rc;
}

json_object *dsysi_etcd_txn_range(json_object *resp, size_t i) {
  json_object *a, *r;
  if (!json_object_object_get_ex(resp, "responses", &a) ||
      !json_object_is_type(a, json_type_array) || i >= json_object_array_length(a))
    return NULL;
  if (!json_object_object_get_ex(json_object_array_get_idx(a, i), "response_range", &r))
    return NULL;
  return r;
}

int dsysi_etcd_lease_grant(dsysi_etcd *c, int64_t ttl_s, int64_t *id) {
  json_object *req = json_object_new_object(), *resp = NULL;
  add(req, "TTL", dsysi_etcd_i64(ttl_s));
  int rc = dsysi_etcd_post(c, "/v3/lease/grant", req, &resp);
  json_object_put(req);
  if (rc) return rc;
  *id = dsysi_etcd_get_i64(resp, "ID");
  json_object_put(resp);
  return *id ? 0 : DSYS_EPROTO;
}

int dsysi_etcd_lease_keepalive(dsysi_etcd *c, int64_t id) {
  json_object *req = json_object_new_object(), *resp = NULL, *r;
  add(req, "ID", dsysi_etcd_i64(id));
  int rc = dsysi_etcd_post(c, "/v3/lease/keepalive", req, &resp);
  json_object_put(req);
  /* an ended lease is answered with a TTL of 0 (or none) */
  if (!rc && (!json_object_object_get_ex(resp, "result", &r) || dsysi_etcd_get_i64(r, "TTL") <= 0))
    rc = DSYS_ENOTFOUND;
  if (resp) json_object_put(resp);
  return rc;
}
