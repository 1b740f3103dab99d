/* Registry conformance suite, run against every backend (postgresql on a
 * real throwaway server), plus sharing between handles and processes
 * (sqlite, postgresql), handles whose wall clocks differ (sqlite,
 * postgresql, etcd) and a PostgreSQL outage. All registry time runs on
 * fake clocks. */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "pgserver.h"
#include "tap.h"
#include "etcdserver.h"

typedef struct seen {
  _Atomic int n; /* written by the delivering thread, after the entry */
  int kind[128];
  uint64_t index[128];
  char id[128][32];
} seen;

static void on_change(void *ud, const dsys_registry_change *c) {
  seen *s = ud;
  int i = s->n;
  if (i < 128) {
    s->kind[i] = c->kind;
    s->index[i] = c->index;
    snprintf(s->id[i], 32, "%s", c->id);
  }
  s->n = i + 1;
}

/* The number of callbacks once it reached want, or after 5 s: the http
 * backend delivers changes from its own thread, which a loaded machine
 * can delay past the write that made them. */
static int wait_n(seen *s, int want) {
  for (int i = 0; i < 5000 && s->n < want; i++) usleep(1000);
  return s->n;
}

static int reg(dsys_registry *r, const char *id, const char *type, const char *url) {
  static const char *const tags[] = {"blue", "v2"};
  dsys_instance in = {.id = id, .type = type, .url = url, .tags = tags,
                      .ntags = 2, .metadata = "{\"port\":3001}", .weight = 3};
  return dsys_registry_register(r, &in);
}

static int count(dsys_registry *r, const char *type, int healthy) {
  dsys_instance *v;
  size_t n;
  if (dsys_registry_lookup(r, type, healthy, &v, &n)) return -1;
  dsys_free(v);
  return (int)n;
}

typedef struct waiter {
  dsys_registry *r;
  uint64_t after, got;
  int rc;
  int64_t timeout_ms;
  _Atomic int done;
} waiter;

static void *wait_thread(void *p) {
  waiter *w = p;
  w->rc = dsys_registry_wait(w->r, w->after, w->timeout_ms ? w->timeout_ms : 60000, &w->got);
  w->done = 1;
  return NULL;
}

/* The http backend runs the suite against a registry daemon module mounted
 * inside this process (on inproc:// or http://127.0.0.1:0), over a memory
 * registry with the same options and the SAME fake clock: the daemon's TTL,
 * sweeps and blocking-query waits run on the test's clock, so every part of
 * the suite applies, including the TTL and reap checks. */
typedef struct daemon_ctx {
  dsys_registry *reg;
  dsys_server *srv;
  dsys_registry_service *svc;
} daemon_ctx;

static int daemon_start(daemon_ctx *d, const char *listen, const dsys_registry_options *o,
                        char *url, size_t urllen) {
  memset(d, 0, sizeof *d);
  dsys_registry_service_options so = {.size = sizeof so, .clock = o->clock};
  int rc = dsys_registry_open(&d->reg, "memory", NULL, o, NULL, 0);
  if (!rc) rc = dsys_server_new(&d->srv, NULL);
  if (!rc) rc = dsys_registry_service_mount(d->srv, d->reg, &so, &d->svc);
  if (!rc) rc = dsys_server_listen(d->srv, listen);
  if (!rc) snprintf(url, urllen, "%s", dsys_server_url(d->srv, 0));
  return rc;
}

static void daemon_stop(daemon_ctx *d) {
  dsys_registry_service_drain(d->svc);
  dsys_server_stop(d->srv, 1000);
  dsys_server_free(d->srv);
  dsys_registry_service_free(d->svc);
  dsys_registry_close(d->reg);
}

static void conformance(const char *backend, const char *target) {
  tap_diag("conformance: %s %s", backend, target ? target : "");
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 1700000000000LL);
  dsys_registry_options o = {.size = sizeof o, .clock = clk, .ttl_ms = 30000,
                             .reap_ms = 120000, .sweep_interval_ms = 1000};
  dsys_registry *r;
  char err[256] = "", url[256];
  daemon_ctx d;
  int with_daemon = !strcmp(backend, "http");
  if (with_daemon) {
    is_int(daemon_start(&d, target, &o, url, sizeof url), 0, "%s: daemon module on %s", backend, target);
    target = url;
  }
  is_int(dsys_registry_open(&r, backend, target, &o, err, sizeof err), 0, "%s: open (%s)", backend, err);
  uint64_t idx0, idx;
  is_int(dsys_registry_index(r, &idx0), 0, "%s: index", backend);
  seen s = {0};
  uint64_t wid;
  is_int(dsys_registry_watch(r, on_change, &s, &wid), 0, "%s: watch", backend);

  is_int(reg(r, "auth-3001", "auth", "http://127.0.0.1:3001"), 0, "%s: register", backend);
  reg(r, "auth-3002", "auth", "http://127.0.0.1:3002");
  reg(r, "data-4002", "data", "http://127.0.0.1:4002");
  dsys_registry_index(r, &idx);
  ok(idx >= idx0 + 3, "%s: index grew by 3 or more (%llu -> %llu)", backend,
     (unsigned long long)idx0, (unsigned long long)idx);
  is_int(wait_n(&s, 3), 3, "%s: three watch callbacks", backend);
  ok(s.kind[0] == DSYS_REG_REGISTERED && !strcmp(s.id[0], "auth-3001") &&
     s.index[0] < s.index[1] && s.index[1] < s.index[2], "%s: callbacks in order with increasing index", backend);

  dsys_instance *v = NULL;
  size_t n = 0;
  is_int(dsys_registry_lookup(r, "auth", 0, &v, &n), 0, "%s: lookup auth", backend);
  is_int(n, 2, "%s: two auth instances", backend);
  if (n == 2) {
    is_str(v[0].id, "auth-3001", "%s: ordered by id", backend);
    is_str(v[0].url, "http://127.0.0.1:3001", "%s: url", backend);
    is_str(v[0].name, "auth-3001", "%s: name defaults to id", backend);
    is_str(v[0].type, "auth", "%s: type", backend);
    is_int(v[0].ntags, 2, "%s: tags", backend);
    if (v[0].ntags == 2) is_str(v[0].tags[1], "v2", "%s: tag value", backend);
    is_str(v[0].metadata, "{\"port\":3001}", "%s: metadata", backend);
    is_int(v[0].weight, 3, "%s: weight", backend);
    is_int(v[0].health, DSYS_INSTANCE_HEALTHY, "%s: healthy", backend);
    is_int(v[0].registered_ms, 1700000000000LL, "%s: registeredAt from the clock", backend);
    is_int(v[0].last_heartbeat_ms, 1700000000000LL, "%s: lastHeartbeat", backend);
  }
  dsys_free(v);
  is_int(count(r, NULL, 0), 3, "%s: lookup all", backend);
  is_int(count(r, "compute", 0), 0, "%s: unknown type: none", backend);

  /* replace */
  dsys_clock_advance(clk, 5000 * 1000);
  dsys_instance in = {.id = "data-4002", .type = "data", .url = "http://127.0.0.1:4999"};
  is_int(dsys_registry_register(r, &in), 0, "%s: same id replaces", backend);
  dsys_instance *one;
  is_int(dsys_registry_get(r, "data-4002", &one), 0, "%s: get", backend);
  is_str(one->url, "http://127.0.0.1:4999", "%s: replaced url", backend);
  is_str(one->metadata, "{}", "%s: metadata defaults to {}", backend);
  is_int(one->weight, 1, "%s: weight defaults to 1", backend);
  is_int(one->ntags, 0, "%s: no tags", backend);
  dsys_free(one);
  /* a copy turns the NULL metadata into "": still the default (the
   * registration agent registers such a copy) */
  dsys_instance *cp;
  is_int(dsys_instances_copy(&in, 1, &cp), 0, "%s: copy", backend);
  is_int(dsys_registry_register(r, cp), 0, "%s: copied instance without metadata registers", backend);
  dsys_free(cp);
  is_int(dsys_registry_get(r, "data-4002", &one), 0, "%s: get", backend);
  is_str(one->metadata, "{}", "%s: empty metadata defaults to {}", backend);
  dsys_free(one);
  is_int(count(r, "data", 0), 1, "%s: still one data instance", backend);
  is_int(dsys_registry_get(r, "nope", &one), DSYS_ENOTFOUND, "%s: get unknown", backend);
  is_int(dsys_registry_heartbeat(r, "nope"), DSYS_ENOTFOUND, "%s: heartbeat unknown", backend);
  is_int(dsys_registry_deregister(r, "nope"), DSYS_ENOTFOUND, "%s: deregister unknown", backend);
  dsys_instance bad = {.id = "x", .type = "t", .url = "u", .metadata = "[1]"};
  is_int(dsys_registry_register(r, &bad), DSYS_EINVAL, "%s: metadata must be an object", backend);
  bad.metadata = "{bad";
  is_int(dsys_registry_register(r, &bad), DSYS_EINVAL, "%s: malformed metadata", backend);
  bad.metadata = NULL;
  bad.url = NULL;
  is_int(dsys_registry_register(r, &bad), DSYS_EINVAL, "%s: url required", backend);

  /* TTL: a heartbeat is not a change; expiry is */
  dsys_registry_index(r, &idx0);
  int before = s.n;
  dsys_clock_advance(clk, 20000 * 1000); /* t = 25 s */
  is_int(dsys_registry_heartbeat(r, "auth-3001"), 0, "%s: heartbeat", backend);
  dsys_registry_index(r, &idx);
  is_int(idx, idx0, "%s: heartbeat of a healthy instance is not a change", backend);
  dsys_clock_advance(clk, 5500 * 1000); /* t = 30.5 s: auth-3002 at 30.5 s > ttl */
  is_int(count(r, "auth", 1), 1, "%s: instance past its TTL is unhealthy on read", backend);
  is_int(count(r, "auth", 0), 2, "%s: but still listed", backend);
  dsys_registry_get(r, "auth-3002", &one);
  is_int(one->health, DSYS_INSTANCE_UNHEALTHY, "%s: get shows unhealthy", backend);
  dsys_free(one);
  dsys_clock_advance(clk, 1000 * 1000); /* the sweep timer records it */
  ok(s.n > before && s.kind[s.n - 1] == DSYS_REG_UNHEALTHY && !strcmp(s.id[s.n - 1], "auth-3002"),
     "%s: sweep reports auth-3002 unhealthy to watchers", backend);
  dsys_registry_index(r, &idx);
  ok(idx > idx0, "%s: and bumps the index", backend);
  int nhb = s.n;
  is_int(dsys_registry_heartbeat(r, "auth-3002"), 0, "%s: heartbeat revives", backend);
  wait_n(&s, nhb + 1);
  is_int(count(r, "auth", 1), 2, "%s: healthy again", backend);
  is_int(s.kind[s.n - 1], DSYS_REG_HEALTHY, "%s: healthy change reported", backend);

  /* reap: data-4002 last heartbeat at t = 5 s; reap at 125 s */
  dsys_clock_advance(clk, 60000 * 1000);
  dsys_registry_heartbeat(r, "auth-3001");
  dsys_registry_heartbeat(r, "auth-3002");
  dsys_clock_advance(clk, 20000 * 1000);
  dsys_registry_heartbeat(r, "auth-3001");
  dsys_registry_heartbeat(r, "auth-3002");
  dsys_clock_advance(clk, 20000 * 1000); /* t ~ 131.5 s */
  is_int(dsys_registry_get(r, "data-4002", &one), DSYS_ENOTFOUND, "%s: reaped after reap time", backend);
  int reaped = 0, unhealthy = 0;
  for (int i = before; i < s.n && i < 128; i++) {
    if (s.kind[i] == DSYS_REG_REAPED && !strcmp(s.id[i], "data-4002")) reaped++;
    if (s.kind[i] == DSYS_REG_UNHEALTHY && !strcmp(s.id[i], "data-4002")) unhealthy++;
  }
  ok(reaped == 1 && unhealthy == 1, "%s: watchers saw data-4002 turn unhealthy then reaped", backend);
  is_int(count(r, NULL, 1), 2, "%s: two healthy left", backend);

  /* deregister + index wait */
  dsys_registry_index(r, &idx0);
  uint64_t got = 0;
  is_int(dsys_registry_wait(r, idx0 - 1, 1000, &got), 0, "%s: wait for an index already passed returns at once", backend);
  is_int(got, idx0, "%s: with the current index", backend);
  is_int(dsys_registry_wait(r, idx0, 0, &got), DSYS_ETIMEDOUT, "%s: zero timeout, no change: timed out", backend);
  waiter w = {r, idx0, 0, 99, 0, 0};
  pthread_t t;
  pthread_create(&t, NULL, wait_thread, &w);
  int ndr = s.n;
  is_int(dsys_registry_deregister(r, "auth-3002"), 0, "%s: deregister", backend);
  pthread_join(t, NULL);
  wait_n(&s, ndr + 1);
  ok(w.rc == 0 && w.got > idx0, "%s: blocked waiter woken by the change (rc %d)", backend, w.rc);
  is_int(s.kind[s.n - 1], DSYS_REG_DEREGISTERED, "%s: deregister reported", backend);
  /* wait timeout runs on the registry clock */
  dsys_registry_deregister(r, "auth-3001"); /* empty: no TTL changes */
  dsys_registry_index(r, &idx0);
  waiter w2 = {r, idx0, 0, 99, 5000, 0};
  pthread_create(&t, NULL, wait_thread, &w2);
  for (int i = 0; i < 100000 && !w2.done; i++) {
    dsys_clock_advance(clk, 1000 * 1000);
    sched_yield();
  }
  pthread_join(t, NULL);
  is_int(w2.rc, DSYS_ETIMEDOUT, "%s: wait times out on the fake clock", backend);

  is_int(dsys_registry_unwatch(r, wid), 0, "%s: unwatch", backend);
  int sn = s.n;
  reg(r, "late", "auth", "http://x");
  is_int(s.n, sn, "%s: no callback after unwatch", backend);
  is_int(dsys_registry_unwatch(r, wid), DSYS_ENOTFOUND, "%s: unwatch twice", backend);
  dsys_registry_close(r);
  if (with_daemon) daemon_stop(&d);
  dsys_clock_free(clk);
}

/* Health of the instance id in r's view: 1 healthy, 0 unhealthy, -1 gone. */
static int health_of(dsys_registry *r, const char *id) {
  dsys_instance *one;
  if (dsys_registry_get(r, id, &one)) return -1;
  int h = one->health == DSYS_INSTANCE_HEALTHY;
  dsys_free(one);
  return h;
}

/* Clock skew (issue 20): handle b's wall clock is skew_ms off a's (two
 * fake clocks advanced together, as two hosts whose NTP disagrees), both
 * sweeping the same store. Live instances heartbeat every second (TTL
 * 3 s, reap 10 s); the dead ones of each handle never do. Live ones must
 * stay healthy in both views (no UNHEALTHY change, none reaped); dead ones
 * turn unhealthy after the TTL (within a sweep interval of it, counted
 * from when each handle first saw them) and are reaped after the reap
 * time. A handle opened late trusts the stored flags for a TTL, so it
 * marks nothing live unhealthy at once. */
static void test_skew(const char *backend, const char *target, const char *label,
                      int64_t skew_ms) {
  tap_diag("skew: %s, b %+lld ms", label, (long long)skew_ms);
  dsys_clock *ca, *cb;
  const int64_t w0 = 1700000000000LL;
  dsys_clock_fake_new(&ca, w0);
  dsys_clock_fake_new(&cb, w0 + skew_ms);
  dsys_registry_options oa = {.size = sizeof oa, .clock = ca, .ttl_ms = 3000,
                              .reap_ms = 10000, .sweep_interval_ms = 1000};
  dsys_registry_options ob = oa;
  ob.clock = cb;
  dsys_registry *a, *b, *c = NULL;
  char err[256] = "";
  if (!ok(dsys_registry_open(&a, backend, target, &oa, err, sizeof err) == 0 &&
              dsys_registry_open(&b, backend, target, &ob, err, sizeof err) == 0,
          "skew %s: open two handles (%s)", label, err))
    return;
  seen sa = {0}, sb = {0};
  dsys_registry_watch(a, on_change, &sa, NULL);
  dsys_registry_watch(b, on_change, &sb, NULL);
  char type[32], live_a[48], live_b[48], dead_a[48], dead_b[48];
  snprintf(type, sizeof type, "skew%+lld", (long long)skew_ms);
  snprintf(live_a, sizeof live_a, "%s-live-a", type);
  snprintf(live_b, sizeof live_b, "%s-live-b", type);
  snprintf(dead_a, sizeof dead_a, "%s-dead-a", type);
  snprintf(dead_b, sizeof dead_b, "%s-dead-b", type);
  int rc = reg(a, live_a, type, "http://a") | reg(a, dead_a, type, "http://a") |
           reg(b, live_b, type, "http://b") | reg(b, dead_b, type, "http://b");
  is_int(rc, 0, "skew %s: register two live and two dead instances", label);
  const char *dead[] = {dead_a, dead_b};
  dsys_registry *hs[] = {a, b};
  /* first time (ms since start) each dead instance looked unhealthy / gone
   * to each handle; whether a live one ever looked unhealthy */
  int64_t unh_at[2][2] = {{-1, -1}, {-1, -1}}, gone_at[2][2] = {{-1, -1}, {-1, -1}};
  int live_bad = 0, late_bad = -1, late_dead = -1;
  for (int64_t t = 250; t <= 20000; t += 250) {
    dsys_clock_advance(ca, 250 * 1000);
    dsys_clock_advance(cb, 250 * 1000);
    if (t % 1000 == 0) {
      dsys_registry_heartbeat(a, live_a);
      dsys_registry_heartbeat(b, live_b);
    }
    if (t == 5000) { /* a third handle, opened late, on a's clock */
      dsys_registry_open(&c, backend, target, &oa, NULL, 0);
      late_bad = c ? (health_of(c, live_a) != 1) + (health_of(c, live_b) != 1) : -1;
      late_dead = c ? (health_of(c, dead_a) == 0) + (health_of(c, dead_b) == 0) : -1;
    }
    for (int h = 0; h < 2; h++) {
      live_bad += (health_of(hs[h], live_a) != 1) + (health_of(hs[h], live_b) != 1);
      for (int d = 0; d < 2; d++) {
        int st = health_of(hs[h], dead[d]);
        if (st == 0 && unh_at[h][d] < 0) unh_at[h][d] = t;
        if (st == -1 && gone_at[h][d] < 0) gone_at[h][d] = t;
      }
    }
  }
  is_int(live_bad, 0, "skew %s: live instances of both handles stay healthy in both views for 20 s", label);
  int bad_changes = 0;
  seen *ws[] = {&sa, &sb};
  for (int h = 0; h < 2; h++)
    for (int i = 0; i < ws[h]->n && i < 128; i++)
      if ((ws[h]->kind[i] == DSYS_REG_UNHEALTHY || ws[h]->kind[i] == DSYS_REG_REAPED) &&
          (!strcmp(ws[h]->id[i], live_a) || !strcmp(ws[h]->id[i], live_b)))
        bad_changes++;
  is_int(bad_changes, 0, "skew %s: no UNHEALTHY or REAPED change for a live instance", label);
  for (int h = 0; h < 2; h++)
    for (int d = 0; d < 2; d++) {
      /* seen at registration (t = 0) by its own handle, at the first
       * sweep (t <= 1 s) by the other; a sweep each second */
      ok(unh_at[h][d] > 3000 && unh_at[h][d] <= 5000,
         "skew %s: handle %c sees %s unhealthy after the TTL (at %lld ms)", label, 'a' + h,
         dead[d], (long long)unh_at[h][d]);
      ok(gone_at[h][d] > 10000 && gone_at[h][d] <= 12000,
         "skew %s: handle %c sees %s reaped after the reap time (at %lld ms)", label, 'a' + h,
         dead[d], (long long)gone_at[h][d]);
    }
  is_int(late_bad, 0, "skew %s: a handle opened late sees the live instances healthy", label);
  is_int(late_dead, 2, "skew %s: and the dead ones unhealthy (the stored flag)", label);
  dsys_registry_deregister(a, live_a);
  dsys_registry_deregister(b, live_b);
  dsys_registry_close(c);
  dsys_registry_close(a);
  dsys_registry_close(b);
  dsys_clock_free(ca);
  dsys_clock_free(cb);
}

static void test_sqlite_sharing(const char *path) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 1700000000000LL);
  dsys_registry_options o = {.size = sizeof o, .clock = clk, .sweep_interval_ms = 1000};
  dsys_registry *a, *b;
  char err[256];
  is_int(dsys_registry_open(&a, "sqlite", path, &o, err, sizeof err), 0, "sqlite: open A");
  is_int(dsys_registry_open(&b, "sqlite", path, &o, err, sizeof err), 0, "sqlite: open B on the same file");
  seen sb = {0};
  dsys_registry_watch(b, on_change, &sb, NULL);
  reg(a, "s1", "auth", "http://1");
  is_int(count(b, "auth", 1), 1, "sqlite: B sees A's instance");
  uint64_t ia, ib;
  dsys_registry_index(a, &ia);
  dsys_registry_index(b, &ib);
  ok(ia == ib && ia > 0, "sqlite: one index across connections (%llu)", (unsigned long long)ia);
  is_int(sb.n, 0, "sqlite: B not told before it polls");
  dsys_clock_advance(clk, 1000 * 1000);
  ok(sb.n == 1 && sb.kind[0] == DSYS_REG_REGISTERED && !strcmp(sb.id[0], "s1"),
     "sqlite: B's sweep delivers A's change to B's watcher");
  dsys_registry_heartbeat(b, "s1");
  is_int(dsys_registry_deregister(b, "s1"), 0, "sqlite: B deregisters A's instance");
  is_int(count(a, NULL, 0), 0, "sqlite: A sees it gone");

  /* another process */
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    dsys_registry *c;
    int rc = dsys_registry_open(&c, "sqlite", path, NULL, NULL, 0);
    if (!rc) rc = reg(c, "child-1", "data", "http://child");
    dsys_registry_close(c);
    _exit(rc ? 1 : 0);
  }
  int status = -1;
  waitpid(pid, &status, 0);
  ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "sqlite: child process registered");
  dsys_instance *one;
  is_int(dsys_registry_get(a, "child-1", &one), 0, "sqlite: parent sees the child's instance");
  if (one) is_str(one->url, "http://child", "sqlite: child's url");
  dsys_free(one);
  uint64_t before;
  dsys_registry_index(a, &before);
  pid = fork();
  if (pid == 0) {
    dsys_registry *c;
    int rc = dsys_registry_open(&c, "sqlite", path, NULL, NULL, 0);
    usleep(100 * 1000);
    if (!rc) rc = dsys_registry_deregister(c, "child-1");
    dsys_registry_close(c);
    _exit(rc ? 1 : 0);
  }
  uint64_t got = 0;
  /* wait on the real clock path: poll notices another process's change */
  dsys_registry *rr;
  dsys_registry_open(&rr, "sqlite", path, NULL, NULL, 0);
  int rc = dsys_registry_wait(rr, before, 10000, &got);
  waitpid(pid, &status, 0);
  ok(rc == 0 && got > before, "sqlite: index wait sees another process's change (rc %d)", rc);
  dsys_registry_close(rr);
  dsys_registry_close(a);
  dsys_registry_close(b);
  dsys_clock_free(clk);
}

static void test_misc(void) {
  dsys_registry *r;
  char err[128];
  is_int(dsys_registry_open(&r, "consul", NULL, NULL, err, sizeof err), DSYS_ENOTSUP, "unknown backend");
  is_int(dsys_registry_open(&r, "etcd", NULL, NULL, err, sizeof err), DSYS_EINVAL, "etcd needs endpoints");
  is_int(dsys_registry_open(&r, "etcd://127.0.0.1:1,/p", NULL, NULL, err, sizeof err), DSYS_EINVAL, "etcd: empty endpoint");
  dsys_registry_options bad = {.size = sizeof bad, .ttl_ms = 1000, .reap_ms = 500};
  is_int(dsys_registry_open(&r, "memory", NULL, &bad, NULL, 0), DSYS_EINVAL, "reap must exceed ttl");
  is_int(dsys_registry_open(&r, "sqlite", NULL, NULL, err, sizeof err), DSYS_EINVAL, "sqlite needs a path");
  is_int(dsys_registry_open(&r, "http", NULL, NULL, err, sizeof err), DSYS_EINVAL, "http needs a URL");
  is_int(dsys_registry_open(&r, "http", "ftp://x", NULL, err, sizeof err), DSYS_ESCHEME, "http: unsupported URL scheme");
  dsys_registry_ops ops = {.version = 99, .name = "x"};
  is_int(dsys_registry_open_ops(&r, &ops, NULL, NULL, NULL, 0), DSYS_ENOTSUP, "unknown ops version");
  ops.version = DSYS_REGISTRY_OPS_VERSION;
  is_int(dsys_registry_open_ops(&r, &ops, NULL, NULL, NULL, 0), DSYS_EINVAL, "missing mandatory ops");
  static const char *const tags[] = {"a", "bb"};
  dsys_instance src[2] = {{.id = "1", .type = "t", .url = "u", .tags = tags, .ntags = 2},
                          {.id = "2", .type = "t2", .url = "u2", .name = "n"}};
  dsys_instance *c;
  is_int(dsys_instances_copy(src, 2, &c), 0, "copy");
  ok(!strcmp(c[0].tags[1], "bb") && !strcmp(c[1].name, "n") && c[0].name && !*c[0].name &&
     c[0].tags[1] != tags[1], "deep copy in one block");
  dsys_free(c);
}

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct racer {
  dsys_registry *r;
  const char *prefix;
} racer;

static void *race_thread(void *p) {
  racer *x = p;
  for (int i = 0; i < 50; i++) {
    char id[32];
    snprintf(id, sizeof id, "%s-%d", x->prefix, i);
    reg(x->r, id, "race", "http://r");
  }
  return NULL;
}

/* Two handles (two hosts) on one server: B's watcher hears of A's change
 * through NOTIFY, without a sweep (the fake clock stands still); a change
 * made by another process is seen too. */
static void test_pg_sharing(const char *url) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 1700000000000LL);
  dsys_registry_options o = {.size = sizeof o, .clock = clk, .sweep_interval_ms = 1000};
  dsys_registry *a = NULL, *b = NULL;
  char err[256] = "";
  is_int(dsys_registry_open(&a, url, NULL, &o, err, sizeof err), 0, "pg: open A by URL (%s)", err);
  is_int(dsys_registry_open(&b, "postgres", url, &o, err, sizeof err), 0,
         "pg: open B as backend postgres + URL (%s)", err);
  if (!a || !b) goto out;
  seen sb = {0};
  dsys_registry_watch(b, on_change, &sb, NULL);
  reg(a, "s1", "shared", "http://1");
  is_int(count(b, "shared", 1), 1, "pg: B sees A's instance");
  is_int(wait_n(&sb, 1), 1, "pg: B's watcher is told of A's change without a sweep (NOTIFY)");
  ok(sb.kind[0] == DSYS_REG_REGISTERED && !strcmp(sb.id[0], "s1"), "pg: ... a REGISTERED of s1");
  uint64_t ia, ib;
  dsys_registry_index(a, &ia);
  dsys_registry_index(b, &ib);
  ok(ia == ib && ia > 0, "pg: one index across handles (%llu)", (unsigned long long)ia);
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    dsys_registry *c;
    int rc = dsys_registry_open(&c, url, NULL, NULL, NULL, 0);
    if (!rc) rc = reg(c, "child-1", "data", "http://child");
    dsys_registry_close(c);
    _exit(rc ? 1 : 0);
  }
  int status = -1;
  waitpid(pid, &status, 0);
  ok(WIFEXITED(status) && WEXITSTATUS(status) == 0, "pg: a child process registered");
  is_int(wait_n(&sb, 2), 2, "pg: B's watcher is told of the child's change");
  dsys_instance *one = NULL;
  is_int(dsys_registry_get(a, "child-1", &one), 0, "pg: A sees the child's instance");
  dsys_free(one);
  /* 100 changes from two handles at once: one index each, none lost */
  racer ra = {a, "ra"}, rb = {b, "rb"};
  pthread_t ta, tb;
  pthread_create(&ta, NULL, race_thread, &ra);
  pthread_create(&tb, NULL, race_thread, &rb);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  uint64_t after;
  dsys_registry_index(a, &after);
  is_int((int64_t)(after - ia), 101, "pg: index advanced once per change (%llu -> %llu)",
         (unsigned long long)ia, (unsigned long long)after);
  is_int(count(a, "race", 1), 100, "pg: 100 instances registered by two racing handles");
out:
  dsys_registry_close(a);
  dsys_registry_close(b);
  dsys_clock_free(clk);
}

/* Kill the server under a registry: calls fail with DSYS_EUNAVAIL at once;
 * after the restart the same handle works and its watcher hears again. */
static void test_pg_outage(tpg *srv) {
  /* a clock that stands still: no sweep, so the watcher hears only NOTIFY */
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 1700000000000LL);
  dsys_registry_options o = {.size = sizeof o, .clock = clk};
  dsys_registry *r = NULL, *w = NULL;
  char err[256] = "";
  is_int(dsys_registry_open(&r, srv->url, NULL, &o, err, sizeof err), 0, "pg: open for the outage");
  dsys_registry_open(&w, srv->url, NULL, &o, err, sizeof err);
  if (!r || !w) goto out;
  seen sw = {0};
  dsys_registry_watch(w, on_change, &sw, NULL);
  tpg_kill(srv);
  int64_t t0 = mono_ms();
  int e1 = reg(r, "o1", "outage", "http://o1");
  dsys_instance *v = NULL;
  size_t n = 0;
  int e2 = dsys_registry_lookup(r, "outage", 0, &v, &n);
  ok(e1 == DSYS_EUNAVAIL && e2 == DSYS_EUNAVAIL, "pg: server killed: register and lookup fail with DSYS_EUNAVAIL (%d %d)", e1, e2);
  ok(mono_ms() - t0 < 6000, "pg: ... in bounded time (%lld ms)", (long long)(mono_ms() - t0));
  if (!ok(tpg_restart(srv) == 0, "pg: server restarted")) goto out;
  int e = -1;
  t0 = mono_ms();
  while (e && mono_ms() - t0 < 10000)
    if ((e = reg(r, "o2", "outage", "http://o2"))) usleep(50 * 1000);
  is_int(e, 0, "pg: the same handle registers again (%lld ms)", (long long)(mono_ms() - t0));
  int k;
  for (k = 0; k < 1000 && sw.n < 1; k++) usleep(10 * 1000);
  ok(sw.n >= 1 && !strcmp(sw.id[sw.n - 1], "o2"), "pg: the other handle's watcher hears of it (%d)", sw.n);
out:
  dsys_registry_close(r);
  dsys_registry_close(w);
  dsys_clock_free(clk);
}

static tpg pgsrv;
static void stop_pg(void) { tpg_stop(&pgsrv); }

/* ---- a registry that stops answering (as etcd without a quorum) ---- */

/* A one-table backend whose expire fails DSYS_EUNAVAIL while down; its
 * list keeps answering the stored table, as etcd's falls back to its last
 * view. */
static int flaky_down;
typedef struct flaky {
  dsys_instance in[4];
  int64_t hb[4];
  int n;
} flaky;
static int fk_open(void *st, const char *t, char *e, size_t el) {
  (void)st, (void)t, (void)e, (void)el;
  return 0;
}
static void fk_close(void *st) {
  flaky *f = st;
  for (int i = 0; i < f->n; i++) free((char *)f->in[i].id);
}
static int fk_put(void *st, const dsys_instance *in, int64_t now) {
  flaky *f = st;
  if (flaky_down || f->n == 4) return DSYS_EUNAVAIL;
  f->in[f->n] = (dsys_instance){.id = strdup(in->id), .type = "t", .url = "u",
                                .health = DSYS_INSTANCE_HEALTHY};
  f->hb[f->n++] = now;
  return 0;
}
static int fk_heartbeat(void *st, const char *id, int64_t now) {
  flaky *f = st;
  if (flaky_down) return DSYS_EUNAVAIL;
  for (int i = 0; i < f->n; i++)
    if (!strcmp(f->in[i].id, id)) {
      f->hb[i] = now;
      f->in[i].health = DSYS_INSTANCE_HEALTHY;
      return 0;
    }
  return DSYS_ENOTFOUND;
}
static int fk_remove(void *st, const char *id) {
  (void)st, (void)id;
  return DSYS_ENOTFOUND;
}
static int64_t flaky_slow_ms; /* every list takes this long (on flaky_clk) */
static dsys_clock *flaky_clk;
static int fk_list(void *st, const char *type, dsys_instance **out, size_t *n) {
  flaky *f = st;
  (void)type;
  if (flaky_slow_ms) dsys_clock_advance(flaky_clk, flaky_slow_ms * 1000);
  for (int i = 0; i < f->n; i++) f->in[i].last_heartbeat_ms = f->hb[i];
  *n = (size_t)f->n;
  return dsys_instances_copy(f->in, (size_t)f->n, out);
}
static int fk_get(void *st, const char *id, dsys_instance **out) {
  flaky *f = st;
  for (int i = 0; i < f->n; i++)
    if (!strcmp(f->in[i].id, id)) {
      f->in[i].last_heartbeat_ms = f->hb[i];
      return dsys_instances_copy(&f->in[i], 1, out);
    }
  return DSYS_ENOTFOUND;
}
static int fk_expire(void *st, int64_t unhealthy_before, int64_t reap_before) {
  flaky *f = st;
  (void)reap_before;
  if (flaky_down) return DSYS_EUNAVAIL;
  for (int i = 0; i < f->n; i++)
    if (f->hb[i] < unhealthy_before) f->in[i].health = DSYS_INSTANCE_UNHEALTHY;
  return 0;
}
static int fk_expire_ids(void *st, const dsys_registry_expiry *v, size_t n) {
  flaky *f = st;
  if (flaky_down) return DSYS_EUNAVAIL;
  for (size_t k = 0; k < n; k++)
    for (int i = 0; i < f->n; i++)
      if (!strcmp(f->in[i].id, v[k].id) && f->hb[i] == v[k].heartbeat_ms && !v[k].reap)
        f->in[i].health = DSYS_INSTANCE_UNHEALTHY;
  return 0;
}
static int fk_index(void *st, uint64_t *out) {
  (void)st;
  *out = 0;
  return 0;
}
static int fk_changes(void *st, uint64_t after, dsys_registry_change_fn fn, void *ctx) {
  (void)st, (void)after, (void)fn, (void)ctx;
  return 0;
}

/* The healthy instances of type "t" are exactly id. */
static int only_healthy(dsys_registry *r, const char *id) {
  dsys_instance *v = NULL;
  size_t n = 0;
  int rc = dsys_registry_lookup(r, "t", 1, &v, &n);
  int yes = !rc && n == 1 && !strcmp(v[0].id, id);
  dsys_free(v);
  return yes;
}

/* While the registry cannot be reached, and for one TTL after it answers
 * again, heartbeats that could not arrive make no instance unhealthy: the
 * gateways keep routing to them (after an etcd quorum loss the first
 * sweep used to mark every instance unhealthy: 503s until the next
 * heartbeats). Then the TTL applies again. */
static void test_outage_grace(void) {
  static const dsys_registry_ops ops = {
      .version = DSYS_REGISTRY_OPS_VERSION, .name = "flaky", .state_size = sizeof(flaky),
      .open = fk_open, .close = fk_close, .put = fk_put, .heartbeat = fk_heartbeat,
      .remove = fk_remove, .get = fk_get, .list = fk_list, .expire = fk_expire,
      .index = fk_index, .changes = fk_changes};
  dsys_clock *clk;
  dsys_registry *r;
  dsys_clock_fake_new(&clk, 1000000);
  dsys_registry_options o = {.size = sizeof o, .clock = clk, .ttl_ms = 3000, .reap_ms = 30000,
                             .sweep_interval_ms = -1};
  if (!ok(dsys_registry_open_ops(&r, &ops, NULL, &o, NULL, 0) == 0, "outage: open a flaky registry")) return;
  reg(r, "a", "t", "u");
  reg(r, "b", "t", "u");
  is_int(dsys_registry_sweep(r), 0, "outage: a sweep while the registry answers");
  flaky_down = 1;
  dsys_clock_advance(clk, 5000 * 1000);
  is_int(dsys_registry_sweep(r), DSYS_EUNAVAIL, "outage: the registry stops answering: the sweep fails");
  is_int(count(r, "t", 1), 2, "outage: 5 s without heartbeats (TTL 3 s): both still healthy in lookups");
  flaky_down = 0;
  is_int(dsys_registry_sweep(r), 0, "outage: back: the first sweep succeeds");
  is_int(count(r, "t", 1), 2, "outage: ... and marks no instance unhealthy");
  dsys_clock_advance(clk, 2500 * 1000);
  dsys_registry_sweep(r);
  is_int(count(r, "t", 1), 2, "outage: 2.5 s after: both still healthy (grace of one TTL)");
  is_int(dsys_registry_heartbeat(r, "a"), 0, "outage: a heartbeats again");
  dsys_clock_advance(clk, 1000 * 1000);
  dsys_registry_sweep(r);
  ok(only_healthy(r, "a"), "outage: one TTL after: b, which never heartbeated since, is unhealthy; a is not");
  dsys_clock_advance(clk, 3000 * 1000);
  dsys_registry_sweep(r);
  is_int(count(r, "t", 1), 0, "outage: and a too, 3 s after its last heartbeat (the TTL applies again)");
  dsys_registry_close(r);
  dsys_clock_free(clk);
}

/* A slow registry (an overloaded etcd): while this process's sweeps take
 * over a sixth of the TTL, and for one TTL after, silent heartbeats make
 * no instance unhealthy (they were written through the same slow
 * registry); then the TTL applies again. Health by seen heartbeat changes
 * (expire_ids), as on etcd. */
static void test_slow_grace(void) {
  static const dsys_registry_ops ops = {
      .version = DSYS_REGISTRY_OPS_VERSION, .name = "slow", .state_size = sizeof(flaky),
      .open = fk_open, .close = fk_close, .put = fk_put, .heartbeat = fk_heartbeat,
      .remove = fk_remove, .get = fk_get, .list = fk_list, .expire = fk_expire,
      .index = fk_index, .changes = fk_changes, .expire_ids = fk_expire_ids};
  dsys_clock *clk;
  dsys_registry *r;
  dsys_clock_fake_new(&clk, 1000000);
  flaky_clk = clk;
  dsys_registry_options o = {.size = sizeof o, .clock = clk, .ttl_ms = 3000, .reap_ms = 30000,
                             .sweep_interval_ms = -1};
  if (!ok(dsys_registry_open_ops(&r, &ops, NULL, &o, NULL, 0) == 0, "slow: open")) return;
  reg(r, "a", "t", "u");
  reg(r, "b", "t", "u");
  is_int(dsys_registry_sweep(r), 0, "slow: a sweep while the registry is fast");
  flaky_slow_ms = 1000; /* > 3000 / 6 */
  for (int i = 0; i < 6; i++) {
    dsys_clock_advance(clk, 1000 * 1000);
    dsys_registry_sweep(r);
  }
  is_int(count(r, "t", 1), 2, "slow: 12 s without heartbeats (TTL 3 s) while every read takes 1 s: none unhealthy");
  flaky_slow_ms = 400; /* below a sixth of the TTL: fast enough */
  dsys_registry_sweep(r);
  dsys_clock_advance(clk, 1500 * 1000);
  is_int(dsys_registry_heartbeat(r, "a"), 0, "slow: fast again; a heartbeats");
  dsys_clock_advance(clk, 1500 * 1000);
  dsys_registry_sweep(r);
  ok(only_healthy(r, "a"), "slow: one TTL after it is fast: b, silent all along, is unhealthy; a is not");
  flaky_slow_ms = 0;
  dsys_registry_close(r);
  dsys_clock_free(clk);
}

int main(void) {
  char dir[] = "/tmp/dsys-reg-XXXXXX";
  if (!mkdtemp(dir)) tap_bail("mkdtemp");
  char path[256], path2[256];
  snprintf(path, sizeof path, "%s/reg.sqlite", dir);
  snprintf(path2, sizeof path2, "%s/shared.sqlite", dir);
  conformance("memory", NULL);
  conformance("sqlite", path);
  conformance("http", "inproc://reg-conformance");
  conformance("http", "http://127.0.0.1:0");
  /* a real 3-member cluster; each run under its own prefix */
  tetcd et;
  if (tetcd_start(&et, 3)) tap_bail("cannot start etcd");
  char eurl[400];
  snprintf(eurl, sizeof eurl, "etcd://%s/dsys-test/url", et.endpoints);
  conformance(eurl, NULL);
  snprintf(eurl, sizeof eurl, "%s/dsys-test/name", et.endpoints);
  conformance("etcd", eurl);
  snprintf(eurl, sizeof eurl, "etcd://%s/dsys-test/skew", et.endpoints);
  test_skew(eurl, NULL, "etcd, b ahead", 30000);
  test_skew(eurl, NULL, "etcd, b behind", -30000);
  tetcd_stop(&et);
  /* the same over TLS with client certificates and etcd auth (etcds://) */
  if (tetcd_start_with(&et, 1, "--tls --auth")) tap_bail("cannot start a TLS + auth etcd");
  char surl[1024];
  tetcd_url(&et, "dsys-test/secure", surl, sizeof surl);
  conformance(surl, NULL);
  tetcd_stop(&et);
  test_sqlite_sharing(path2);
  test_skew("sqlite", path, "sqlite, b ahead", 30000);
  test_skew("sqlite", path, "sqlite, b behind", -30000);
  if (ok(tpg_start(&pgsrv) == 0, "start a throwaway PostgreSQL")) {
    atexit(stop_pg);
    conformance("postgresql", pgsrv.url);
    test_pg_sharing(pgsrv.url);
    test_skew("postgresql", pgsrv.url, "postgresql, b ahead", 30000);
    test_skew("postgresql", pgsrv.url, "postgresql, b behind", -30000);
    test_pg_outage(&pgsrv);
  }
  test_misc();
  test_outage_grace();
  test_slow_grace();
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd)) tap_diag("cleanup failed");
  return tap_done();
}
