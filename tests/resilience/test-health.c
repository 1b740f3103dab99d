/* Health checker and outlier detection on the fake clock. */
#include <stdlib.h>
#include <string.h>
#include <distsys/distsys.h>
#include "tap.h"

typedef struct probes {
  dsys_clock *clk;
  int n;
  uint64_t token[256];
  int64_t at_ms[256];
  int64_t at_us[256];
  char id[256][16];
  int sync_result; /* -1: async; 0/1: report inside the probe */
  int fail_start;
} probes;

static int probe(void *ud, dsys_health *h, const char *id, const char *url,
                 uint64_t token) {
  probes *p = ud;
  (void)url;
  if (p->fail_start) return DSYS_ECONNREFUSED;
  if (p->n < 256) {
    p->token[p->n] = token;
    p->at_ms[p->n] = dsys_clock_now_ms(p->clk);
    p->at_us[p->n] = dsys_clock_now_us(p->clk);
    snprintf(p->id[p->n], 16, "%s", id);
  }
  p->n++;
  if (p->sync_result >= 0) dsys_health_report(h, token, p->sync_result);
  return 0;
}

typedef struct evs {
  int n;
  dsys_health_event ev[64];
  int usable[64];
  char id[64][16];
} evs;

static void on_event(void *ud, const char *id, dsys_health_event ev, int usable) {
  evs *e = ud;
  if (e->n < 64) {
    e->ev[e->n] = ev;
    e->usable[e->n] = usable;
    snprintf(e->id[e->n], 16, "%s", id);
  }
  e->n++;
}

/* advance in 10 ms steps until the probe was called once more */
static int next_probe(dsys_clock *clk, probes *p, int64_t max_ms) {
  int before = p->n;
  for (int64_t t = 0; t <= max_ms && p->n == before; t += 10) dsys_clock_advance(clk, 10000);
  return p->n > before ? p->n - 1 : -1;
}

static void test_active(void) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 0);
  probes p = {.clk = clk, .sync_result = -1};
  evs ev = {0};
  dsys_health_options o = {.size = sizeof o, .clock = clk, .probe = probe,
                           .probe_ud = &p, .on_event = on_event,
                           .event_ud = &ev, .seed = 99};
  dsys_health *h;
  is_int(dsys_health_new(&h, &o), 0, "new checker (defaults 2 s, 1 s, rise 2, fall 3)");
  int64_t t0 = dsys_clock_now_ms(clk);
  is_int(dsys_health_add(h, "a", "http://a"), 0, "add a");
  is_int(dsys_health_add(h, "a", "http://a"), DSYS_EEXIST, "add twice");
  ok(!dsys_health_usable(h, "a"), "new endpoint gets no traffic before its first check");
  dsys_health_info info;
  dsys_health_info_get(h, "a", &info);
  is_int(info.state, DSYS_HEALTH_PENDING, "pending");
  int i = next_probe(clk, &p, 300);
  ok(i == 0 && p.at_ms[0] - t0 <= 200, "first check within the jitter (%lld ms)", (long long)(p.at_ms[0] - t0));
  is_int(dsys_health_report(h, p.token[0], 1), 0, "report pass");
  ok(dsys_health_usable(h, "a"), "first passing check makes it usable");
  is_int(dsys_health_report(h, p.token[0], 1), DSYS_ENOTFOUND, "second report of a token ignored");
  ok(ev.n == 1 && ev.ev[0] == DSYS_HEALTH_EV_HEALTHY && ev.usable[0], "healthy event");

  /* intervals: 2000 + [0, 200] ms after the previous result */
  int jit_ok = 1;
  int64_t last = dsys_clock_now_ms(clk);
  for (int k = 0; k < 20; k++) {
    int j = next_probe(clk, &p, 3000);
    int64_t gap = p.at_ms[j] - last;
    if (gap < 2000 || gap > 2210) jit_ok = 0;
    dsys_health_report(h, p.token[j], 1);
    last = dsys_clock_now_ms(clk);
  }
  ok(jit_ok, "every interval within [2000, 2200] ms (10 ms steps)");

  /* fall: 3 failures, the first two keep it healthy */
  for (int k = 0; k < 2; k++) {
    int j = next_probe(clk, &p, 3000);
    dsys_health_report(h, p.token[j], 0);
  }
  ok(dsys_health_usable(h, "a"), "2 failures: still healthy (fall 3)");
  int j = next_probe(clk, &p, 3000);
  /* third failure by timeout: no report, 1 s later */
  dsys_clock_advance(clk, p.at_us[j] + 999000 - dsys_clock_now_us(clk));
  ok(dsys_health_usable(h, "a"), "not yet timed out at 999 ms");
  dsys_clock_advance(clk, 1000);
  ok(!dsys_health_usable(h, "a"), "timeout = third failure: unhealthy");
  is_int(dsys_health_report(h, p.token[j], 1), DSYS_ENOTFOUND, "late report ignored");
  dsys_health_counters c;
  dsys_health_counters_get(h, &c);
  is_int(c.timeouts, 1, "one timeout counted");
  ok(ev.n == 2 && ev.ev[1] == DSYS_HEALTH_EV_UNHEALTHY && !ev.usable[1], "unhealthy event");
  /* rise: 2 passes */
  j = next_probe(clk, &p, 3000);
  dsys_health_report(h, p.token[j], 1);
  ok(!dsys_health_usable(h, "a"), "1 pass: still unhealthy (rise 2)");
  j = next_probe(clk, &p, 3000);
  dsys_health_report(h, p.token[j], 1);
  ok(dsys_health_usable(h, "a"), "2 passes: healthy again");
  is_int(ev.n, 3, "three events so far");

  /* probe that reports synchronously, and one that fails to start */
  p.sync_result = 0;
  for (int k = 0; k < 3; k++) next_probe(clk, &p, 3000);
  ok(!dsys_health_usable(h, "a"), "synchronous reports work (3 failures)");
  p.sync_result = 1;
  p.fail_start = 1;
  dsys_clock_advance(clk, 10 * 1000000LL);
  dsys_health_info_get(h, "a", &info);
  ok(info.state == DSYS_HEALTH_UNHEALTHY && info.consecutive_fails >= 5, "a probe that cannot start counts as failed (%u)", info.consecutive_fails);
  p.fail_start = 0;
  is_int(dsys_health_remove(h, "a"), 0, "remove");
  int before = p.n;
  dsys_clock_advance(clk, 10 * 1000000LL);
  is_int(p.n, before, "no probes after removal");
  is_int(dsys_health_remove(h, "a"), DSYS_ENOTFOUND, "remove twice");
  /* an endpoint removed while its check is in flight: report is ignored */
  p.sync_result = -1;
  dsys_health_add(h, "b", "http://b");
  j = next_probe(clk, &p, 300);
  dsys_health_remove(h, "b");
  is_int(dsys_health_report(h, p.token[j], 1), DSYS_ENOTFOUND, "report after removal ignored");
  dsys_health_add(h, "c", "http://c");
  dsys_health_free(h); /* with timers pending: must not leak or run them */
  before = p.n;
  dsys_clock_advance(clk, 10 * 1000000LL);
  is_int(p.n, before, "no probe after free");

  /* start_healthy */
  o.start_healthy = 1;
  dsys_health_new(&h, &o);
  dsys_health_add(h, "x", NULL);
  ok(dsys_health_usable(h, "x"), "start_healthy: usable before any check");
  dsys_health_free(h);
  dsys_clock_free(clk);
}

static void test_outlier(void) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 0);
  evs ev = {0};
  dsys_health_options o = {.size = sizeof o, .clock = clk, .on_event = on_event,
                           .event_ud = &ev, .base_ejection_ms = 10000,
                           .max_ejection_ms = 25000};
  dsys_health *h;
  dsys_health_new(&h, &o);
  dsys_health_add(h, "a", NULL);
  dsys_health_add(h, "b", NULL);
  dsys_health_add(h, "c", NULL);
  ok(dsys_health_usable(h, "a"), "no probe: healthy at once");
  dsys_health_observe(h, "a", DSYS_OUTCOME_NOT_SENT);
  ok(!dsys_health_usable(h, "a"), "refused connection ejects at once");
  ok(ev.n == 1 && ev.ev[0] == DSYS_HEALTH_EV_EJECTED, "ejected event");
  dsys_clock_advance(clk, 9999000);
  ok(!dsys_health_usable(h, "a"), "still ejected at 9.999 s (base 10 s x 1)");
  dsys_clock_advance(clk, 1000);
  ok(dsys_health_usable(h, "a"), "back after 10 s");
  ok(ev.n == 2 && ev.ev[1] == DSYS_HEALTH_EV_UNEJECTED && ev.usable[1], "unejected event");

  for (int i = 0; i < 4; i++) dsys_health_observe(h, "a", DSYS_OUTCOME_SERVER_ERROR);
  dsys_health_observe(h, "a", DSYS_OUTCOME_OK);
  dsys_health_observe(h, "a", DSYS_OUTCOME_TIMEOUT);
  ok(dsys_health_usable(h, "a"), "a success breaks the failure streak");
  for (int i = 0; i < 3; i++) dsys_health_observe(h, "a", DSYS_OUTCOME_RESET);
  ok(dsys_health_usable(h, "a"), "4 consecutive failures: not ejected");
  dsys_health_observe(h, "a", DSYS_OUTCOME_SERVER_ERROR);
  ok(!dsys_health_usable(h, "a"), "5th consecutive failure ejects");
  dsys_health_info info;
  dsys_health_info_get(h, "a", &info);
  is_int(info.ejection_count, 2, "second ejection");
  dsys_clock_advance(clk, 19999000);
  ok(!dsys_health_usable(h, "a"), "second ejection lasts 20 s");
  dsys_clock_advance(clk, 1000);
  ok(dsys_health_usable(h, "a"), "back after 20 s");
  dsys_health_observe(h, "a", DSYS_OUTCOME_NOT_SENT);
  dsys_health_info_get(h, "a", &info);
  is_int(info.ejected_until_ms - dsys_clock_now_ms(clk), 25000, "third ejection capped at 25 s (not 30)");
  dsys_clock_advance(clk, 25 * 1000000LL);
  ok(dsys_health_usable(h, "a"), "back after the cap");
  dsys_clock_advance(clk, 25 * 1000000LL);
  dsys_health_observe(h, "a", DSYS_OUTCOME_NOT_SENT);
  dsys_health_info_get(h, "a", &info);
  is_int(info.ejection_count, 1, "count reset after max_ejection of good behaviour");

  /* never eject the last usable endpoint */
  dsys_health_observe(h, "b", DSYS_OUTCOME_NOT_SENT);
  dsys_health_observe(h, "c", DSYS_OUTCOME_NOT_SENT);
  ok(!dsys_health_usable(h, "b"), "b ejected");
  ok(dsys_health_usable(h, "c"), "c, the last usable endpoint, is not ejected");
  for (int i = 0; i < 20; i++) dsys_health_observe(h, "c", DSYS_OUTCOME_SERVER_ERROR);
  ok(dsys_health_usable(h, "c"), "not even after 20 failures");
  dsys_health_counters c;
  dsys_health_counters_get(h, &c);
  ok(c.skipped_ejections >= 2, "skipped ejections counted (%llu)", (unsigned long long)c.skipped_ejections);
  is_int(dsys_health_observe(h, "zz", DSYS_OUTCOME_OK), DSYS_ENOTFOUND, "unknown endpoint");
  dsys_health_free(h);
  dsys_clock_free(clk);
}

/* Failures every endpoint shares (their database failing over: every
 * instance answers 503) eject none of them; an endpoint that fails alone
 * is still ejected. */
static void test_shared_failures(void) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 0);
  dsys_health_options o = {.size = sizeof o, .clock = clk};
  dsys_health *h;
  dsys_health_new(&h, &o);
  const char *ids[] = {"a", "b", "c"};
  for (int i = 0; i < 3; i++) dsys_health_add(h, ids[i], NULL);
  for (int r = 0; r < 20; r++)
    for (int i = 0; i < 3; i++) dsys_health_observe(h, ids[i], DSYS_OUTCOME_SERVER_ERROR);
  ok(dsys_health_usable(h, "a") && dsys_health_usable(h, "b") && dsys_health_usable(h, "c"),
     "shared failures: 20 in a row on each of 3 endpoints eject none");
  dsys_health_counters c;
  dsys_health_counters_get(h, &c);
  is_int((int)c.ejections, 0, "... no ejection counted");
  ok(c.skipped_ejections > 0, "... skipped ejections counted (%llu)",
     (unsigned long long)c.skipped_ejections);
  /* the shared outage ends: b and c answer again, a keeps failing */
  dsys_health_observe(h, "b", DSYS_OUTCOME_OK);
  dsys_health_observe(h, "c", DSYS_OUTCOME_OK);
  for (int i = 0; i < 4; i++) dsys_health_observe(h, "a", DSYS_OUTCOME_SERVER_ERROR);
  ok(!dsys_health_usable(h, "a"), "an endpoint failing alone is ejected");
  /* one of two others failing too: half of them sound, still its own */
  dsys_health_observe(h, "b", DSYS_OUTCOME_NOT_SENT); /* b ejected */
  dsys_clock_advance(clk, 31 * 1000000LL);           /* a and b back */
  dsys_health_observe(h, "a", DSYS_OUTCOME_RESET);
  for (int i = 0; i < 5; i++) dsys_health_observe(h, "c", DSYS_OUTCOME_RESET);
  ok(!dsys_health_usable(h, "c"), "5 resets on c while a has one and b none: c ejected");
  dsys_health_free(h);
  dsys_clock_free(clk);
}

/* Ejection for slowness: consecutive timeouts or slow answers; back by
 * time without checks, by a passing check (checked every down_interval)
 * with them. */
static void test_slowness(void) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 0);
  evs ev = {0};
  dsys_health_options o = {.size = sizeof o, .clock = clk, .on_event = on_event, .event_ud = &ev,
                           .seed = 5, .consecutive_slow = 3, .slow_ejection_ms = 500};
  dsys_health *h;
  is_int(dsys_health_new(&h, &o), 0, "slowness: new checker without probes");
  dsys_health_add(h, "a", "http://a");
  dsys_health_add(h, "b", "http://b");
  dsys_health_observe(h, "a", DSYS_OUTCOME_TIMEOUT);
  dsys_health_observe(h, "a", DSYS_OUTCOME_TIMEOUT);
  dsys_health_observe(h, "a", DSYS_OUTCOME_OK);
  dsys_health_observe(h, "a", DSYS_OUTCOME_TIMEOUT);
  dsys_health_observe_slow(h, "a");
  ok(dsys_health_usable(h, "a") && ev.n == 0, "slowness: an answer in time breaks the streak");
  dsys_health_observe_slow(h, "a");
  ok(!dsys_health_usable(h, "a") && ev.n == 1 && ev.ev[0] == DSYS_HEALTH_EV_EJECTED_SLOW,
     "slowness: timeout, slow, slow in a row eject (event EJECTED_SLOW)");
  dsys_health_info info;
  dsys_health_info_get(h, "a", &info);
  ok(info.ejected && info.ejected_until_ms - dsys_clock_now_ms(clk) == 500,
     "slowness: for slow_ejection_ms (%lld ms)", (long long)(info.ejected_until_ms - dsys_clock_now_ms(clk)));
  dsys_clock_advance(clk, 499000);
  ok(!dsys_health_usable(h, "a"), "slowness: still out at 499 ms");
  dsys_clock_advance(clk, 1000);
  ok(dsys_health_usable(h, "a") && ev.n == 2 && ev.ev[1] == DSYS_HEALTH_EV_UNEJECTED,
     "slowness: without checks, back after that time");
  /* slow traffic (every endpoint slow): no ejection, only outliers */
  dsys_health_add(h, "c", "http://c");
  for (int k = 0; k < 2; k++) {
    dsys_health_observe_slow(h, "a");
    dsys_health_observe_slow(h, "b");
    dsys_health_observe_slow(h, "c");
  }
  dsys_health_observe_slow(h, "a");
  ok(dsys_health_usable(h, "a") && dsys_health_usable(h, "b") && dsys_health_usable(h, "c"),
     "slowness: every endpoint slow (a slow route): nobody ejected");
  dsys_health_observe(h, "c", DSYS_OUTCOME_OK);
  dsys_health_observe_slow(h, "a");
  ok(!dsys_health_usable(h, "a"), "slowness: half the others in time again: the slowest is ejected");
  dsys_health_remove(h, "c");
  dsys_health_remove(h, "a");
  dsys_health_add(h, "a", "http://a");
  dsys_health_observe(h, "b", DSYS_OUTCOME_OK);
  dsys_health_observe_slow(h, "b");
  dsys_health_observe_slow(h, "b");
  dsys_health_observe(h, "b", DSYS_OUTCOME_TIMEOUT);
  dsys_health_observe(h, "a", DSYS_OUTCOME_TIMEOUT);
  dsys_health_observe(h, "a", DSYS_OUTCOME_TIMEOUT);
  dsys_health_observe(h, "a", DSYS_OUTCOME_TIMEOUT);
  ok(!dsys_health_usable(h, "b") && dsys_health_usable(h, "a"),
     "slowness: the last usable endpoint is never ejected");
  dsys_health_free(h);

  /* off by default: timeouts only feed the failure streak (5) */
  o.consecutive_slow = 0;
  dsys_health_new(&h, &o);
  dsys_health_add(h, "a", "http://a");
  dsys_health_add(h, "b", "http://b");
  for (int i = 0; i < 4; i++) dsys_health_observe(h, "a", DSYS_OUTCOME_TIMEOUT);
  for (int i = 0; i < 10; i++) dsys_health_observe_slow(h, "a");
  ok(dsys_health_usable(h, "a"), "slowness off: 4 timeouts and slow answers eject nothing");
  dsys_health_observe(h, "a", DSYS_OUTCOME_TIMEOUT);
  dsys_health_info_get(h, "a", &info);
  ok(info.ejected && info.ejected_until_ms - dsys_clock_now_ms(clk) == 30000,
     "slowness off: the 5th failure ejects as any failure streak (30 s)");
  dsys_health_free(h);

  /* with checks: out until a check passes, checked every down_interval */
  probes p = {.clk = clk, .sync_result = -1};
  ev.n = 0;
  dsys_health_options ao = o;
  ao.consecutive_slow = 2;
  ao.probe = probe;
  ao.probe_ud = &p;
  ao.start_healthy = 1;
  ao.interval_ms = 2000;
  ao.jitter_ms = -1;
  ao.down_interval_ms = 100;
  ao.timeout_ms = 300;
  ao.fall = 100; /* only the ejection takes it out here */
  is_int(dsys_health_new(&h, &ao), 0, "slowness: a checker with probes, down_interval 100 ms");
  dsys_health_add(h, "a", "http://a");
  dsys_health_add(h, "b", "http://b");
  int i = next_probe(clk, &p, 50); /* the first checks at once (no jitter) */
  while (i >= 0 && i < 1) i = next_probe(clk, &p, 50);
  for (int k = 0; k < p.n; k++) dsys_health_report(h, p.token[k], 1);
  int before = p.n;
  int64_t t_ej = dsys_clock_now_ms(clk);
  dsys_health_observe(h, "a", DSYS_OUTCOME_TIMEOUT);
  dsys_health_observe(h, "a", DSYS_OUTCOME_TIMEOUT);
  ok(!dsys_health_usable(h, "a"), "slowness: ejected (2 timeouts)");
  i = next_probe(clk, &p, 1000);
  ok(i == before && !strcmp(p.id[i], "a") && p.at_ms[i] - t_ej <= 100,
     "slowness: the ejected endpoint is checked within down_interval (%lld ms)",
     (long long)(i >= 0 ? p.at_ms[i] - t_ej : -1));
  /* its checks time out (a hung process) past slow_ejection_ms */
  while (dsys_clock_now_ms(clk) - t_ej < 1500) dsys_clock_advance(clk, 10000);
  ok(!dsys_health_usable(h, "a"), "slowness: still out at 1.5 s while its checks fail (> slow_ejection_ms)");
  int checked = 0;
  for (int k = before; k < p.n; k++) checked += !strcmp(p.id[k], "a");
  ok(checked >= 3, "slowness: checked again and again meanwhile (%d checks)", checked);
  /* it answers again: the next check passes and ends the ejection */
  i = next_probe(clk, &p, 1000);
  while (i >= 0 && strcmp(p.id[i], "a")) i = next_probe(clk, &p, 1000);
  int64_t t_pass = dsys_clock_now_ms(clk);
  is_int(dsys_health_report(h, p.token[i], 1), 0, "slowness: a passing check");
  ok(dsys_health_usable(h, "a") && ev.ev[ev.n - 1] == DSYS_HEALTH_EV_UNEJECTED,
     "slowness: back in rotation by it (at %lld ms)", (long long)(t_pass - t_ej));
  /* healthy again: checks back at the normal interval */
  int n0 = p.n;
  for (int k = 0; k < 150; k++) dsys_clock_advance(clk, 10000);
  checked = 0;
  for (int k = n0; k < p.n; k++) checked += !strcmp(p.id[k], "a");
  ok(checked <= 1, "slowness: usable again, checked at the normal interval (%d in 1.5 s)", checked);
  dsys_health_free(h);
  dsys_clock_free(clk);
}

int main(void) {
  test_active();
  test_outlier();
  test_shared_failures();
  test_slowness();
  return tap_done();
}
