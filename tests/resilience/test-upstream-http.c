/*
 * dsys_upstream against real http:// servers on port 0 (real clock):
 *  1. three instances, 300 idempotent calls from 3 threads, one instance
 *     stopped midway: no call fails;
 *  2. one instance made slow (answers after 300 ms, per-try timeout 100 ms):
 *     its breaker opens; once fast again it closes through half-open;
 *  3. discovery through a shared sqlite registry: calls go on after the
 *     registering handle is closed; a new instance is picked up.
 * Every loop is bounded in count and time.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "tap.h"

typedef struct inst {
  char name[8];
  dsys_server *srv;
  char url[64];
  atomic_int slow;
  atomic_int hits;
} inst;

static void answer(void *ud) {
  dsys_request *req = ud;
  dsys_respond(req, 200, "text/plain", "slow", 4);
}

static void h_who(dsys_request *req, void *ud) {
  inst *s = ud;
  atomic_fetch_add(&s->hits, 1);
  if (atomic_load(&s->slow)) {
    dsys_request_defer(req);
    if (dsys_timer_add(dsys_clock_real(), 300000, answer, req, NULL))
      dsys_respond(req, 500, NULL, "", 0);
    return;
  }
  dsys_respond(req, 200, "text/plain", s->name, strlen(s->name));
}

static void inst_start(inst *s, const char *name) {
  memset(s, 0, sizeof *s);
  snprintf(s->name, sizeof s->name, "%s", name);
  dsys_server_options o = {.size = sizeof o, .threads = 4};
  if (dsys_server_new(&s->srv, &o)) tap_bail("server_new");
  dsys_server_route(s->srv, "GET", "/who", h_who, s);
  if (dsys_server_listen(s->srv, "http://127.0.0.1:0")) tap_bail("listen");
  snprintf(s->url, sizeof s->url, "%s", dsys_server_url(s->srv, 0));
}

static void inst_stop(inst *s) {
  if (s->srv) dsys_server_free(s->srv);
  s->srv = NULL;
}

static int64_t now_ms(void) { return dsys_clock_now_ms(dsys_clock_real()); }

/* ---- 1. failover ---- */

typedef struct worker {
  dsys_upstream *u;
  atomic_int *done;
  int ok, failed, calls;
  int first_err;
} worker;

static void *run_calls(void *arg) {
  worker *w = arg;
  int64_t end = now_ms() + 60000;
  for (int i = 0; i < w->calls && now_ms() < end; i++) {
    dsys_reply *r = NULL;
    int rc = dsys_upstream_call(w->u, &(dsys_call){.path = "/who"}, &r);
    if (rc == 0 && dsys_reply_status(r) == 200) {
      w->ok++;
    } else {
      w->failed++;
      if (!w->first_err) w->first_err = rc ? rc : dsys_reply_status(r);
    }
    dsys_reply_free(r);
    atomic_fetch_add(w->done, 1);
  }
  return NULL;
}

static void test_failover(void) {
  inst in[3];
  inst_start(&in[0], "a");
  inst_start(&in[1], "b");
  inst_start(&in[2], "c");
  dsys_retry_options ro = {.size = sizeof ro, .per_try_timeout_ms = 2000, .budget_off = 1};
  dsys_upstream_options o = {.size = sizeof o, .service = "who", .retry = &ro};
  dsys_upstream *u;
  if (dsys_upstream_new(&u, &o)) tap_bail("upstream_new");
  dsys_upstream_add(u, "a", in[0].url, 1);
  dsys_upstream_add(u, "b", in[1].url, 1);
  dsys_upstream_add(u, "c", in[2].url, 1);
  atomic_int done = 0;
  worker w[3];
  pthread_t th[3];
  for (int i = 0; i < 3; i++) {
    w[i] = (worker){.u = u, .done = &done, .calls = 100};
    pthread_create(&th[i], NULL, run_calls, &w[i]);
  }
  int64_t end = now_ms() + 30000;
  while (atomic_load(&done) < 100 && now_ms() < end) usleep(1000);
  int b_hits_before = atomic_load(&in[1].hits);
  dsys_server_stop(in[1].srv, 1000);
  inst_stop(&in[1]);
  int at_stop = atomic_load(&done);
  for (int i = 0; i < 3; i++) pthread_join(th[i], NULL);
  int okc = w[0].ok + w[1].ok + w[2].ok, bad = w[0].failed + w[1].failed + w[2].failed;
  ok(at_stop >= 100 && at_stop < 300, "instance b stopped after %d of 300 calls", at_stop);
  ok(okc == 300 && bad == 0, "300 GET calls across 3 instances, one stopped midway: %d ok, %d failed (%s)",
     okc, bad, bad ? dsys_err_name(w[0].first_err ? w[0].first_err : w[1].first_err ? w[1].first_err : w[2].first_err) : "-");
  ok(b_hits_before > 0, "b served calls before it stopped (%d)", b_hits_before);
  dsys_upstream_totals t;
  dsys_upstream_totals_get(u, &t);
  ok(t.calls == 300 && t.replies == 300, "totals: %llu calls, %llu replies, %llu retries",
     (unsigned long long)t.calls, (unsigned long long)t.replies, (unsigned long long)t.retries);
  dsys_endpoint_stats *s;
  size_t n;
  dsys_upstream_stats(u, &s, &n);
  uint64_t req = 0;
  for (size_t i = 0; i < n; i++) req += s[i].requests;
  ok(n == 3 && req == t.attempts, "per-endpoint requests add up to the attempts (%llu)",
     (unsigned long long)req);
  ok(s[0].latency_count > 0 && s[0].p50_us > 0 && s[0].p99_us >= s[0].p50_us,
     "latency percentiles of a: p50 %lld us, p99 %lld us", (long long)s[0].p50_us,
     (long long)s[0].p99_us);
  dsys_free(s);
  dsys_upstream_free(u);
  inst_stop(&in[0]);
  inst_stop(&in[2]);
}

/* ---- 2. slow instance: breaker opens, then closes through half-open ---- */

static atomic_int transitions[5][5];
static void on_br(void *ud, const char *name, dsys_breaker_state f, dsys_breaker_state t) {
  if (!strcmp(name, "b")) atomic_fetch_add(&transitions[f][t], 1);
}

static int breaker_of(dsys_upstream *u, const char *id) {
  dsys_endpoint_stats *s;
  size_t n;
  int st = -1;
  if (dsys_upstream_stats(u, &s, &n)) return -1;
  for (size_t i = 0; i < n; i++)
    if (!strcmp(s[i].id, id)) st = s[i].breaker_state;
  dsys_free(s);
  return st;
}

static void test_slow(void) {
  inst in[2];
  inst_start(&in[0], "a");
  inst_start(&in[1], "b");
  dsys_retry_options ro = {.size = sizeof ro, .per_try_timeout_ms = 100, .budget_off = 1,
                           .backoff_base_ms = 5, .backoff_cap_ms = 20};
  dsys_breaker_options bo = {.size = sizeof bo, .failures_n = 3, .failures_window_ms = 10000,
                             .open_wait_ms = 500, .half_open_calls = 2, .on_event = on_br};
  dsys_health_options ho = {.size = sizeof ho, .consecutive_failures = 1000};
  dsys_upstream_options o = {.size = sizeof o, .service = "who", .retry = &ro,
                             .breaker = &bo, .health = &ho};
  dsys_upstream *u;
  if (dsys_upstream_new(&u, &o)) tap_bail("upstream_new");
  dsys_upstream_add(u, "a", in[0].url, 1);
  dsys_upstream_add(u, "b", in[1].url, 1);
  atomic_store(&in[1].slow, 1);
  int okc = 0, calls = 0;
  int64_t end = now_ms() + 10000;
  while (breaker_of(u, "b") != DSYS_BREAKER_OPEN && calls < 50 && now_ms() < end) {
    dsys_reply *r = NULL;
    if (dsys_upstream_call(u, &(dsys_call){.path = "/who"}, &r) == 0 && dsys_reply_status(r) == 200)
      okc++;
    dsys_reply_free(r);
    calls++;
  }
  ok(breaker_of(u, "b") == DSYS_BREAKER_OPEN, "slow b (300 ms, per-try 100 ms): breaker opened after %d calls", calls);
  ok(okc == calls, "every call still answered (timeouts retried on a): %d/%d", okc, calls);
  int hits = atomic_load(&in[1].hits);
  for (int i = 0; i < 10; i++) {
    dsys_reply *r = NULL;
    if (dsys_upstream_call(u, &(dsys_call){.path = "/who"}, &r) == 0) okc++;
    dsys_reply_free(r);
  }
  is_int(atomic_load(&in[1].hits), hits, "open breaker: b gets no calls");
  atomic_store(&in[1].slow, 0);
  /* after open_wait (500 ms) the reopen timer makes it half-open */
  end = now_ms() + 5000;
  while (breaker_of(u, "b") == DSYS_BREAKER_OPEN && now_ms() < end) usleep(5000);
  ok(atomic_load(&transitions[DSYS_BREAKER_OPEN][DSYS_BREAKER_HALF_OPEN]) >= 1,
     "open -> half-open after the wait");
  end = now_ms() + 10000;
  for (int i = 0; i < 100 && breaker_of(u, "b") != DSYS_BREAKER_CLOSED && now_ms() < end; i++) {
    dsys_reply *r = NULL;
    dsys_upstream_call(u, &(dsys_call){.path = "/who"}, &r);
    dsys_reply_free(r);
  }
  is_int(breaker_of(u, "b"), DSYS_BREAKER_CLOSED, "fast again: half-open trials close it");
  ok(atomic_load(&transitions[DSYS_BREAKER_HALF_OPEN][DSYS_BREAKER_CLOSED]) == 1,
     "half-open -> closed once");
  int before = atomic_load(&in[1].hits);
  for (int i = 0; i < 10; i++) {
    dsys_reply *r = NULL;
    dsys_upstream_call(u, &(dsys_call){.path = "/who"}, &r);
    dsys_reply_free(r);
  }
  ok(atomic_load(&in[1].hits) - before >= 4, "b takes its share again (%d of 10)",
     atomic_load(&in[1].hits) - before);
  dsys_upstream_free(u);
  inst_stop(&in[0]);
  inst_stop(&in[1]);
}

/* ---- 3. sqlite registry shared with the instances ---- */

static void test_registry(void) {
  char dir[] = "/tmp/dsys-upreg-XXXXXX";
  if (!mkdtemp(dir)) tap_bail("mkdtemp");
  char path[128];
  snprintf(path, sizeof path, "%s/registry.db", dir);
  inst in[3];
  inst_start(&in[0], "a");
  inst_start(&in[1], "b");
  inst_start(&in[2], "c");
  dsys_registry_options rop = {.size = sizeof rop, .ttl_ms = 60000, .reap_ms = 600000,
                               .sweep_interval_ms = 50};
  dsys_registry *reg_inst, *reg_cli;
  char err[256] = "";
  if (dsys_registry_open(&reg_inst, "sqlite", path, &rop, err, sizeof err)) tap_bail("open: %s", err);
  if (dsys_registry_open(&reg_cli, "sqlite", path, &rop, err, sizeof err)) tap_bail("open: %s", err);
  dsys_instance ia = {.id = "who-a", .type = "who", .url = in[0].url};
  dsys_instance ib = {.id = "who-b", .type = "who", .url = in[1].url};
  dsys_registry_register(reg_inst, &ia);
  dsys_registry_register(reg_inst, &ib);
  dsys_upstream_options o = {.size = sizeof o, .service = "who", .registry = reg_cli};
  dsys_upstream *u;
  is_int(dsys_upstream_new(&u, &o), 0, "upstream on a sqlite registry");
  is_int(dsys_upstream_count(u), 2, "two instances discovered");
  dsys_registry_close(reg_inst);
  int okc = 0;
  for (int i = 0; i < 50; i++) {
    dsys_reply *r = NULL;
    if (dsys_upstream_call(u, &(dsys_call){.path = "/who"}, &r) == 0 && dsys_reply_status(r) == 200)
      okc++;
    dsys_reply_free(r);
  }
  is_int(okc, 50, "registering handle closed: 50 calls still answered");
  /* another process-like handle registers a third instance */
  dsys_registry *reg_late;
  dsys_registry_open(&reg_late, "sqlite", path, &rop, NULL, 0);
  dsys_instance ic = {.id = "who-c", .type = "who", .url = in[2].url};
  dsys_registry_register(reg_late, &ic);
  int64_t end = now_ms() + 5000;
  while (dsys_upstream_count(u) < 3 && now_ms() < end) usleep(5000);
  is_int(dsys_upstream_count(u), 3, "a new instance registered elsewhere is picked up by the watch");
  dsys_registry_deregister(reg_late, "who-a");
  end = now_ms() + 5000;
  while (dsys_upstream_count(u) > 2 && now_ms() < end) usleep(5000);
  is_int(dsys_upstream_count(u), 2, "a deregistration elsewhere is seen too");
  int c_hits = atomic_load(&in[2].hits), a_hits = atomic_load(&in[0].hits);
  for (int i = 0; i < 10; i++) {
    dsys_reply *r = NULL;
    dsys_upstream_call(u, &(dsys_call){.path = "/who"}, &r);
    dsys_reply_free(r);
  }
  ok(atomic_load(&in[2].hits) > c_hits && atomic_load(&in[0].hits) == a_hits,
     "calls follow the registry");
  dsys_registry_close(reg_late);
  dsys_upstream_free(u);
  dsys_registry_close(reg_cli);
  for (int i = 0; i < 3; i++) inst_stop(&in[i]);
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) tap_diag("could not remove %s", dir);
}

int main(void) {
  dsys_log_set_level(DSYS_LOG_ERROR);
  test_failover();
  test_slow();
  test_registry();
  return tap_done();
}
