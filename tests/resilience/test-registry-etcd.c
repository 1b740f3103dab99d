/* The etcd registry backend beyond the conformance suite, against a real
 * 3-member cluster on the real clock: push between two handles (as two
 * processes would be), the lease backstop, one member down (keeps
 * working), two members down (bounded DSYS_EUNAVAIL, no hang), members
 * back (works again without reopening). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "tap.h"
#include "etcdserver.h"

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

typedef struct seen {
  _Atomic int n;
  _Atomic int64_t last_ms; /* when the last callback ran */
  char last_id[64];
  int kind[256];
  uint64_t index[256];
} seen;

static void on_change(void *ud, const dsys_registry_change *c) {
  seen *s = ud;
  snprintf(s->last_id, sizeof s->last_id, "%s", c->id);
  s->last_ms = now_ms();
  if (s->n < 256) {
    s->kind[s->n] = c->kind;
    s->index[s->n] = c->index;
  }
  s->n++;
}

/* Poll (bounded) until the watcher has seen more than n callbacks. */
static int wait_more(seen *s, int n, int64_t limit_ms) {
  int64_t end = now_ms() + limit_ms;
  while (s->n <= n && now_ms() < end) usleep(2000);
  return s->n > n;
}

static int reg(dsys_registry *r, const char *id, const char *type) {
  dsys_instance in = {.id = id, .type = type, .url = "http://127.0.0.1:9"};
  return dsys_registry_register(r, &in);
}

static int count(dsys_registry *r, const char *type) {
  dsys_instance *v;
  size_t n;
  if (dsys_registry_lookup(r, type, 0, &v, &n)) return -1;
  dsys_free(v);
  return (int)n;
}

static dsys_registry *open_reg(const char *url, int64_t ttl, int64_t reap, int64_t sweep) {
  dsys_registry_options o = {.size = sizeof o, .ttl_ms = ttl, .reap_ms = reap,
                             .sweep_interval_ms = sweep};
  dsys_registry *r = NULL;
  char err[256] = "";
  int rc = dsys_registry_open(&r, url, NULL, &o, err, sizeof err);
  if (rc) tap_diag("open %s: %s (%s)", url, dsys_strerror(rc), err);
  return r;
}

/* Two handles on one prefix: B has no sweep timer, so only the watch can
 * tell it about A's changes. */
static void test_push(const char *eps) {
  char url[400];
  snprintf(url, sizeof url, "etcd://%s/t/push", eps);
  dsys_registry *a = open_reg(url, 2000, 4000, 1000), *b = open_reg(url, 2000, 4000, -1);
  ok(a && b, "push: two handles open");
  if (!a || !b) return;
  seen s = {0};
  dsys_registry_watch(b, on_change, &s, NULL);
  int64_t worst = 0, total = 0, regs = 0;
  for (int i = 0; i < 10; i++) {
    char id[32];
    snprintf(id, sizeof id, "p-%d", i);
    int n = s.n;
    int64_t t0 = now_ms();
    int rc = reg(a, id, "push");
    int64_t t1 = now_ms();
    if (rc || !wait_more(&s, n, 3000) || strcmp(s.last_id, id)) {
      ok(0, "push: change %d reached B (rc %d, n %d)", i, rc, (int)s.n);
      break;
    }
    regs++;
    total += t1 - t0;
    if (s.last_ms - t0 > worst) worst = s.last_ms - t0;
  }
  is_int(regs, 10, "push: B's watcher saw each of A's 10 registrations");
  ok(worst < 900, "push: within %lld ms at worst (the sweep would take 1000)", (long long)worst);
  tap_diag("figure: register through etcd %.1f ms on average; seen by another handle's "
           "watcher after %lld ms at worst", regs ? (double)total / regs : 0.0, (long long)worst);
  is_int(count(b, "push"), 10, "push: B lists them");
  int64_t t0 = now_ms();
  int hb_ok = 0;
  for (int i = 0; i < 10; i++) {
    char id[32];
    snprintf(id, sizeof id, "p-%d", i);
    hb_ok += dsys_registry_heartbeat(a, id) == 0;
  }
  is_int(hb_ok, 10, "push: heartbeats");
  tap_diag("figure: heartbeat through etcd %.1f ms on average", (double)(now_ms() - t0) / 10);
  dsys_registry_close(a);
  dsys_registry_close(b);
}

typedef struct writer {
  dsys_registry *r;
  const char *prefix;
  int failures;
} writer;

static void *write_many(void *p) {
  writer *w = p;
  for (int i = 0; i < 40; i++) {
    char id[32];
    snprintf(id, sizeof id, "%s-%02d", w->prefix, i);
    if (reg(w->r, id, "conc")) w->failures++;
  }
  return NULL;
}

static void *sweep_now(void *p) {
  dsys_registry_sweep(p);
  return NULL;
}

/* Two handles (two processes) write at once: every change gets its own
 * index, consecutive, seen once by a third handle's watcher; two sweepers
 * at once record each transition once. On a fake clock shared by the
 * three handles (no sweep timers), so the test decides when TTLs pass. */
static void test_concurrent(const char *eps) {
  char url[400];
  snprintf(url, sizeof url, "etcd://%s/t/conc", eps);
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 1700000000000LL);
  dsys_registry_options o = {.size = sizeof o, .clock = clk, .ttl_ms = 30000,
                             .reap_ms = 120000, .sweep_interval_ms = -1};
  dsys_registry *a = NULL, *b = NULL, *w = NULL;
  dsys_registry_open(&a, url, NULL, &o, NULL, 0);
  dsys_registry_open(&b, url, NULL, &o, NULL, 0);
  dsys_registry_open(&w, url, NULL, &o, NULL, 0);
  ok(a && b && w, "concurrent: three handles");
  if (!a || !b || !w) return;
  seen s = {0};
  dsys_registry_watch(w, on_change, &s, NULL);
  writer wa = {a, "a", 0}, wb = {b, "b", 0};
  pthread_t ta, tb;
  pthread_create(&ta, NULL, write_many, &wa);
  pthread_create(&tb, NULL, write_many, &wb);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  is_int(wa.failures + wb.failures, 0, "concurrent: 80 registrations from two handles at once");
  uint64_t idx = 0;
  dsys_registry_index(w, &idx);
  is_int(idx, 80, "concurrent: index 80, one per change");
  int64_t end = now_ms() + 5000;
  while (s.n < 80 && now_ms() < end) usleep(2000);
  int seq = s.n == 80;
  for (int i = 0; seq && i < 80; i++) seq = s.index[i] == (uint64_t)i + 1;
  ok(seq, "concurrent: the watcher saw 80 changes, indexes 1..80 in order (%d)", (int)s.n);
  is_int(count(w, "conc"), 80, "concurrent: 80 listed");

  /* 31 s later both sweep at once: 80 UNHEALTHY, each once */
  dsys_clock_advance(clk, 31000 * 1000);
  int before = s.n;
  pthread_create(&ta, NULL, sweep_now, a);
  pthread_create(&tb, NULL, sweep_now, b);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  dsys_registry_index(w, &idx);
  is_int(idx, 160, "concurrent sweeps: 80 transitions recorded once each");
  end = now_ms() + 5000;
  while (s.n < before + 80 && now_ms() < end) usleep(2000);
  int unh = 0;
  for (int i = before; i < s.n && i < 256; i++) unh += s.kind[i] == DSYS_REG_UNHEALTHY;
  is_int(unh, 80, "concurrent sweeps: the watcher saw 80 UNHEALTHY");
  dsys_registry_sweep(a);
  dsys_registry_index(w, &idx);
  is_int(idx, 160, "a sweep with nothing to do writes nothing");
  dsys_registry_close(a);
  dsys_registry_close(b);
  dsys_registry_close(w);
  dsys_clock_free(clk);
}

/* Nobody sweeps: the lease (reap 1 s + 2 s margin) removes the instance. */
static void test_lease(const char *eps) {
  char url[400];
  snprintf(url, sizeof url, "etcd://%s/t/lease", eps);
  dsys_registry *x = open_reg(url, 500, 1000, -1);
  ok(x != NULL, "lease: open");
  if (!x) return;
  is_int(reg(x, "orphan", "lease"), 0, "lease: register");
  dsys_registry_close(x); /* the process is gone; nothing sweeps */
  x = open_reg(url, 500, 1000, -1);
  int64_t t0 = now_ms();
  int n = 1;
  while ((n = count(x, "lease")) != 0 && now_ms() - t0 < 10000) usleep(50000);
  is_int(n, 0, "lease: etcd removed the instance by itself after %lld ms (lease 3 s)",
         (long long)(now_ms() - t0));
  dsys_registry_close(x);
}

static void test_failures(tetcd *et) {
  char url[400];
  snprintf(url, sizeof url, "etcd://%s/t/fail", et->endpoints);
  /* a reap time longer than the test: the outage must not reap f-1 */
  dsys_registry *a = open_reg(url, 2000, 60000, 1000), *b = open_reg(url, 2000, 60000, -1);
  ok(a && b, "failures: two handles open");
  if (!a || !b) return;
  seen s = {0};
  dsys_registry_watch(b, on_change, &s, NULL);
  is_int(reg(a, "f-1", "fail"), 0, "failures: register");

  /* one member down: the handles' first endpoint */
  is_int(tetcd_kill_member(et, 1), 0, "failures: member 1 killed");
  int64_t t0 = now_ms();
  is_int(reg(a, "f-2", "fail"), 0, "one down: register still works");
  int64_t t1 = now_ms();
  is_int(dsys_registry_heartbeat(a, "f-1"), 0, "one down: heartbeat works");
  is_int(count(b, "fail"), 2, "one down: the other handle lists both");
  tap_diag("figure: first register after its member died took %lld ms", (long long)(t1 - t0));
  int n = s.n;
  is_int(dsys_registry_deregister(a, "f-2"), 0, "one down: deregister works");
  /* B's watch was on member 1: it reconnects to another one */
  ok(wait_more(&s, n, 3000), "one down: B's watch (reconnected) saw it");

  /* two members down: no quorum */
  is_int(tetcd_kill_member(et, 2), 0, "failures: member 2 killed");
  t0 = now_ms();
  int rc = reg(a, "f-3", "fail");
  t1 = now_ms();
  is_int(rc, DSYS_EUNAVAIL, "no quorum: register fails with DSYS_EUNAVAIL");
  ok(t1 - t0 < 5000, "no quorum: within %lld ms (bound: 3 s request, 1 s connect)",
     (long long)(t1 - t0));
  ok(strstr(dsys_registry_errmsg(a), "no healthy endpoint") != NULL, "no quorum: errmsg: %s",
     dsys_registry_errmsg(a));
  t0 = now_ms();
  dsys_instance *v = NULL;
  size_t nv = 0;
  rc = dsys_registry_lookup(b, "fail", 0, &v, &nv);
  t1 = now_ms();
  is_int(rc, DSYS_EUNAVAIL, "no quorum: lookup fails too (no cached view in this backend)");
  ok(t1 - t0 < 5000, "no quorum: lookup within %lld ms", (long long)(t1 - t0));
  t0 = now_ms();
  rc = dsys_registry_heartbeat(a, "f-1");
  t1 = now_ms();
  ok(rc == DSYS_EUNAVAIL && t1 - t0 < 5000, "no quorum: heartbeat fails in %lld ms (rc %d)",
     (long long)(t1 - t0), rc);

  /* back: same handles, no reopen */
  is_int(tetcd_start_member(et, 1), 0, "failures: member 1 restarted");
  is_int(tetcd_start_member(et, 2), 0, "failures: member 2 restarted");
  t0 = now_ms();
  while ((rc = reg(a, "f-3", "fail")) != 0 && now_ms() - t0 < 15000) usleep(100000);
  is_int(rc, 0, "back: register works again after %lld ms", (long long)(now_ms() - t0));
  n = s.n;
  is_int(reg(a, "f-4", "fail"), 0, "back: another register");
  ok(wait_more(&s, n, 5000), "back: B's watch delivers again");
  is_int(count(b, "fail"), 3, "back: B lists f-1, f-3, f-4");
  dsys_registry_close(a);
  dsys_registry_close(b);
}

/* Nothing listens: the open fails within the bound and says why. */
static void test_down(void) {
  dsys_registry *r = NULL;
  char err[256] = "";
  int64_t t0 = now_ms();
  int rc = dsys_registry_open(&r, "etcd://127.0.0.1:1,127.0.0.1:2/x", NULL, NULL, err, sizeof err);
  is_int(rc, DSYS_EUNAVAIL, "down: open fails with DSYS_EUNAVAIL in %lld ms", (long long)(now_ms() - t0));
  ok(strstr(err, "no member answered") && strstr(err, "127.0.0.1:"), "down: errbuf: %s", err);
}

int main(void) {
  test_down();
  tetcd et;
  if (tetcd_start(&et, 3)) tap_bail("cannot start etcd");
  test_push(et.endpoints);
  test_lease(et.endpoints);
  test_concurrent(et.endpoints);
  test_failures(&et);
  tetcd_stop(&et);
  return tap_done();
}
