/* Helpers shared by the service tests: calls over any transport with the
 * reply parsed as JSON, temporary directories. Header-only (static). */
#ifndef DSYS_SVC_TEST_H
#define DSYS_SVC_TEST_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <json-c/json.h>
#include <distsys/distsys.h>
#include "core/json.h"
#include "tap.h"

typedef struct resp {
  int status;
  char *body;
  json_object *j;     /* parsed body, or NULL */
  char *retry_after;  /* Retry-After header or NULL */
  char *etag;         /* ETag header or NULL */
  char *cache_control; /* Cache-Control header or NULL */
} resp;

static dsys_client *cli_;

/* One service instance's server, named `name`; `access_log` as in
 * dsys_server_options. */
__attribute__((unused)) static dsys_server *svc_server(const char *name, int access_log) {
  dsys_server_options so = {.size = sizeof so, .name = name, .access_log = access_log};
  dsys_server *srv = NULL;
  if (dsys_server_new(&srv, &so)) tap_bail("server %s", name);
  return srv;
}

/* After the service's mount call returned mount_rc: listen on
 * inproc://NAME and store that URL in url (n bytes). */
__attribute__((unused)) static void svc_listen(dsys_server *srv, int mount_rc, const char *name,
                                               char *url, size_t n) {
  if (mount_rc) tap_bail("mount %s: %s", name, dsys_strerror(mount_rc));
  snprintf(url, n, "inproc://%s", name);
  if (dsys_server_listen(srv, url)) tap_bail("listen %s", url);
}

static void resp_free(resp *r) {
  if (!r) return;
  free(r->body);
  free(r->retry_after);
  free(r->etag);
  free(r->cache_control);
  json_object_put(r->j);
  free(r);
}

/* One call; headers as "Name: value" strings (up to 4, NULL-terminated). */
static resp *call_h(const char *url, const char *method, const char *path,
                    const char *body, size_t blen, const char *const *hdrs) {
  dsys_header h[4];
  size_t nh = 0;
  char names[4][64];
  for (size_t i = 0; hdrs && hdrs[i] && i < 4; i++) {
    const char *c = strchr(hdrs[i], ':');
    snprintf(names[i], sizeof names[i], "%.*s", (int)(c - hdrs[i]), hdrs[i]);
    h[nh].name = names[i];
    h[nh].value = c + 2;
    nh++;
  }
  dsys_call c = {.size = sizeof c, .method = method, .url = url, .path = path,
                 .headers = h, .nheaders = nh, .body = body,
                 .body_len = body ? (blen ? blen : strlen(body)) : 0,
                 .timeout_ms = 20000};
  dsys_reply *rep = NULL;
  resp *r = calloc(1, sizeof *r);
  int rc = dsys_client_do(cli_, &c, &rep);
  if (rc) {
    r->status = rc;
    r->body = strdup("");
    return r;
  }
  size_t len;
  const char *b = dsys_reply_body(rep, &len);
  r->status = dsys_reply_status(rep);
  r->body = strndup(b, len);
  if (dsys_reply_header(rep, "Retry-After"))
    r->retry_after = strdup(dsys_reply_header(rep, "Retry-After"));
  if (dsys_reply_header(rep, "ETag")) r->etag = strdup(dsys_reply_header(rep, "ETag"));
  if (dsys_reply_header(rep, "Cache-Control"))
    r->cache_control = strdup(dsys_reply_header(rep, "Cache-Control"));
  if (dsysi_json_parse(b, len, &r->j)) r->j = NULL;
  dsys_reply_free(rep);
  return r;
}

static resp *call(const char *url, const char *method, const char *path,
                  const char *body) {
  return call_h(url, method, path, body, 0, NULL);
}

static json_object *jget(json_object *o, const char *path) {
  /* dotted path: "user.id" */
  char buf[256];
  snprintf(buf, sizeof buf, "%s", path);
  char *save = NULL;
  for (char *t = strtok_r(buf, ".", &save); t && o; t = strtok_r(NULL, ".", &save)) {
    json_object *v = NULL;
    if (json_object_is_type(o, json_type_array)) v = json_object_array_get_idx(o, (size_t)atoi(t));
    else if (!json_object_object_get_ex(o, t, &v)) v = NULL;
    o = v;
  }
  return o;
}

static const char *js(resp *r, const char *path) {
  json_object *v = r ? jget(r->j, path) : NULL;
  return json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "(none)";
}

static int64_t ji(resp *r, const char *path) {
  json_object *v = r ? jget(r->j, path) : NULL;
  return v ? json_object_get_int64(v) : -999999;
}

__attribute__((unused)) static double jd(resp *r, const char *path) {
  json_object *v = r ? jget(r->j, path) : NULL;
  return v ? json_object_get_double(v) : -999999;
}

/* Check status and error message in one line. */
#define is_err(r, st, msg, name)                                              \
  do {                                                                        \
    resp *r_ = (r);                                                           \
    ok(r_->status == (st) && !strcmp(js(r_, "error"), (msg)),                 \
       "%s -> %d %s (got %d %s)", name, st, msg, r_->status, r_->body);       \
    resp_free(r_);                                                            \
  } while (0)

static char tmpdir_[256];
static void make_tmpdir(const char *tag) {
  snprintf(tmpdir_, sizeof tmpdir_, "/tmp/dsys-%s-XXXXXX", tag);
  if (!mkdtemp(tmpdir_)) tap_bail("mkdtemp");
}
static void rm_tmpdir(void) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir_);
  if (system(cmd)) tap_diag("cleanup failed");
}

/* Parallel callers: run fn(i) on n threads released together. */
typedef struct par {
  void (*fn)(int i, void *ud);
  void *ud;
  int i;
  atomic_int *gate;
} par;
static void *par_main(void *a) {
  par *p = a;
  while (!atomic_load(p->gate)) ;
  p->fn(p->i, p->ud);
  return NULL;
}
__attribute__((unused)) static void run_parallel(int n, void (*fn)(int, void *), void *ud) {
  pthread_t t[64];
  par ps[64];
  atomic_int gate = 0;
  for (int i = 0; i < n && i < 64; i++) {
    ps[i] = (par){fn, ud, i, &gate};
    pthread_create(&t[i], NULL, par_main, &ps[i]);
  }
  atomic_store(&gate, 1);
  for (int i = 0; i < n && i < 64; i++) pthread_join(t[i], NULL);
}

/* A race of two instances over one new resource: each round, two threads
 * make the same creating call at once, thread i through fn(round, i)
 * (which picks the instance). */
typedef resp *(*race_call)(int round, int i);
typedef struct race {
  race_call fn;
  int round;
  atomic_int c201, c409, other;
} race;

static void race_one(int i, void *ud) {
  race *r = ud;
  resp *x = r->fn(r->round, i);
  if (x->status == 201) atomic_fetch_add(&r->c201, 1);
  else if (x->status == 409) atomic_fetch_add(&r->c409, 1);
  else atomic_fetch_add(&r->other, 1);
  resp_free(x);
}

/* Runs `rounds` races; returns how many ended with exactly one 201 and one
 * 409, and stores in *others how many replies were neither. */
__attribute__((unused)) static int race_create(int rounds, race_call fn, int *others) {
  race r = {.fn = fn};
  int good = 0;
  for (r.round = 0; r.round < rounds; r.round++) {
    atomic_store(&r.c201, 0);
    atomic_store(&r.c409, 0);
    run_parallel(2, race_one, &r);
    if (atomic_load(&r.c201) == 1 && atomic_load(&r.c409) == 1) good++;
  }
  *others = atomic_load(&r.other);
  return good;
}

#endif
