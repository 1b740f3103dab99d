/* Circuit breaker state machine on the fake clock. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/distsys.h>
#include "tap.h"
#include "resilience/shared_cause.h"

typedef struct evlog {
  int n;
  dsys_breaker_state from[32], to[32];
} evlog;

static void on_ev(void *ud, const char *name, dsys_breaker_state from,
                  dsys_breaker_state to) {
  evlog *l = ud;
  (void)name;
  if (l->n < 32) {
    l->from[l->n] = from;
    l->to[l->n] = to;
  }
  l->n++;
}

static int call(dsys_breaker *b, int result, int64_t dur_us) {
  dsys_breaker_permit p;
  int rc = dsys_breaker_acquire(b, &p);
  if (rc) return rc;
  return dsys_breaker_record(b, p, result, dur_us);
}

static void test_count_window(void) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 0);
  evlog ev = {0};
  dsys_breaker_options o = {.size = sizeof o, .clock = clk, .name = "b1",
                            .window_size = 10, .minimum_calls = 5,
                            .failure_rate_pct = 50, .open_wait_ms = 1000,
                            .half_open_calls = 2, .on_event = on_ev,
                            .event_ud = &ev};
  dsys_breaker *b;
  is_int(dsys_breaker_new(&b, &o), 0, "new count breaker");
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_CLOSED, "starts closed");
  for (int i = 0; i < 4; i++) call(b, DSYS_BREAKER_FAILURE, 10);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_CLOSED, "4 failures < minimum calls: closed");
  call(b, DSYS_BREAKER_FAILURE, 10);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_OPEN, "5th failure at 100%% trips");
  is_int(ev.n, 1, "one event");
  ok(ev.from[0] == DSYS_BREAKER_CLOSED && ev.to[0] == DSYS_BREAKER_OPEN, "event closed->open");
  dsys_breaker_permit p;
  is_int(dsys_breaker_acquire(b, &p), DSYS_EBREAKER, "open rejects");
  dsys_clock_advance(clk, 999 * 1000);
  is_int(dsys_breaker_acquire(b, &p), DSYS_EBREAKER, "still open at 999 ms");
  dsys_clock_advance(clk, 1000);
  dsys_breaker_permit p1, p2, p3;
  is_int(dsys_breaker_acquire(b, &p1), 0, "after wait: permitted (half-open)");
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_HALF_OPEN, "half-open");
  is_int(dsys_breaker_acquire(b, &p2), 0, "second trial permitted");
  is_int(dsys_breaker_acquire(b, &p3), DSYS_EBREAKER, "third trial rejected");
  dsys_breaker_record(b, p1, DSYS_BREAKER_SUCCESS, 10);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_HALF_OPEN, "one of two trials done");
  dsys_breaker_record(b, p2, DSYS_BREAKER_SUCCESS, 10);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_CLOSED, "two successes close it");
  is_int(ev.n, 3, "events: open, half-open, closed");
  ok(ev.to[1] == DSYS_BREAKER_HALF_OPEN && ev.to[2] == DSYS_BREAKER_CLOSED, "event order");
  dsys_breaker_stats st;
  dsys_breaker_stats_get(b, &st);
  is_int(st.window_calls, 0, "window cleared on close");

  /* mixed outcomes: 4 successes then failures; 50% at 8 calls */
  for (int i = 0; i < 4; i++) call(b, DSYS_BREAKER_SUCCESS, 10);
  for (int i = 0; i < 3; i++) call(b, DSYS_BREAKER_FAILURE, 10);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_CLOSED, "3/7 failures: closed");
  call(b, DSYS_BREAKER_FAILURE, 10);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_OPEN, "4/8 = 50%%: open");

  /* half-open failure reopens */
  dsys_clock_advance(clk, 1000 * 1000);
  is_int(dsys_breaker_acquire(b, &p1), 0, "trial 1");
  is_int(dsys_breaker_acquire(b, &p2), 0, "trial 2");
  dsys_breaker_record(b, p1, DSYS_BREAKER_FAILURE, 10);
  dsys_breaker_record(b, p2, DSYS_BREAKER_SUCCESS, 10);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_OPEN, "half-open with 50%% failures reopens");
  is_int(dsys_breaker_acquire(b, &p), DSYS_EBREAKER, "reopened rejects");

  /* a stale permit is not counted */
  dsys_clock_advance(clk, 1000 * 1000);
  is_int(dsys_breaker_acquire(b, &p1), 0, "trial");
  dsys_breaker_set_state(b, DSYS_BREAKER_CLOSED);
  dsys_breaker_record(b, p1, DSYS_BREAKER_FAILURE, 10);
  dsys_breaker_stats_get(b, &st);
  is_int(st.window_calls, 0, "stale permit ignored");

  /* IGNORED gives a half-open slot back */
  dsys_breaker_set_state(b, DSYS_BREAKER_HALF_OPEN);
  dsys_breaker_acquire(b, &p1);
  dsys_breaker_acquire(b, &p2);
  is_int(dsys_breaker_acquire(b, &p3), DSYS_EBREAKER, "slots used");
  dsys_breaker_record(b, p1, DSYS_BREAKER_IGNORED, 0);
  is_int(dsys_breaker_acquire(b, &p3), 0, "ignored call frees a trial slot");
  dsys_breaker_free(b);

  /* the ring forgets old outcomes */
  o.on_event = NULL;
  o.minimum_calls = 10;
  dsys_breaker_new(&b, &o);
  for (int i = 0; i < 4; i++) call(b, DSYS_BREAKER_FAILURE, 10);
  for (int i = 0; i < 10; i++) call(b, DSYS_BREAKER_SUCCESS, 10);
  dsys_breaker_stats_get(b, &st);
  is_int(st.window_calls, 10, "window holds 10");
  is_int(st.window_failures, 0, "old failures slid out");
  for (int i = 0; i < 4; i++) call(b, DSYS_BREAKER_FAILURE, 10);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_CLOSED, "4/10 closed");
  call(b, DSYS_BREAKER_FAILURE, 10);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_OPEN, "5/10 open");
  dsys_breaker_stats_get(b, &st);
  is_int(st.rejected, 0, "no rejections yet");
  is_int(call(b, DSYS_BREAKER_SUCCESS, 1), DSYS_EBREAKER, "rejected");
  dsys_breaker_stats_get(b, &st);
  is_int(st.rejected, 1, "rejected counted");
  dsys_breaker_free(b);
  dsys_clock_free(clk);
}

static void test_slow_calls(void) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 0);
  dsys_breaker_options o = {.size = sizeof o, .clock = clk, .window_size = 10,
                            .minimum_calls = 4, .slow_rate_pct = 50,
                            .slow_call_us = 200000};
  dsys_breaker *b;
  dsys_breaker_new(&b, &o);
  call(b, DSYS_BREAKER_SUCCESS, 199999);
  call(b, DSYS_BREAKER_SUCCESS, 1000);
  call(b, DSYS_BREAKER_SUCCESS, 200000);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_CLOSED, "3 calls: under minimum");
  dsys_breaker_stats st;
  dsys_breaker_stats_get(b, &st);
  is_int(st.window_slow, 1, "one slow call (>= threshold)");
  call(b, DSYS_BREAKER_SUCCESS, 500000);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_OPEN, "2/4 slow successes trip at 50%%");
  dsys_breaker_free(b);
  dsys_clock_free(clk);
}

static void test_time_window(void) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 0);
  dsys_breaker_options o = {.size = sizeof o, .clock = clk,
                            .window_type = DSYS_BREAKER_WINDOW_TIME,
                            .window_size = 10, .minimum_calls = 4};
  dsys_breaker *b;
  dsys_breaker_new(&b, &o);
  for (int i = 0; i < 3; i++) call(b, DSYS_BREAKER_FAILURE, 1);
  dsys_clock_advance(clk, 11 * 1000000LL);
  call(b, DSYS_BREAKER_FAILURE, 1);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_CLOSED, "failures older than 10 s expired");
  dsys_breaker_stats st;
  dsys_breaker_stats_get(b, &st);
  is_int(st.window_calls, 1, "time window holds 1 call");
  for (int i = 0; i < 6; i++) {
    call(b, DSYS_BREAKER_SUCCESS, 1);
    dsys_clock_advance(clk, 1000000);
  }
  dsys_breaker_stats_get(b, &st);
  is_int(st.window_calls, 7, "7 calls over 7 s");
  call(b, DSYS_BREAKER_FAILURE, 1);
  call(b, DSYS_BREAKER_FAILURE, 1);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_CLOSED, "3/9 closed");
  dsys_clock_advance(clk, 4 * 1000000LL); /* the first failure and a success slide out */
  dsys_breaker_stats_get(b, &st);
  is_int(st.window_failures, 2, "first failure slid out of the 10 s window");
  call(b, DSYS_BREAKER_FAILURE, 1);
  call(b, DSYS_BREAKER_FAILURE, 1);
  dsys_breaker_stats_get(b, &st);
  ok(st.window_failures == 4 && st.window_calls == 9, "now %u/%u failures", st.window_failures, st.window_calls);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_CLOSED, "4/9 closed");
  call(b, DSYS_BREAKER_FAILURE, 1);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_OPEN, ">= 50%% in time window: open");
  dsys_breaker_free(b);
  dsys_clock_free(clk);
}

static void test_n_in_t(void) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 0);
  dsys_breaker_options o = {.size = sizeof o, .clock = clk, .minimum_calls = 1000,
                            .window_size = 1000, .failures_n = 3,
                            .failures_window_ms = 10000};
  dsys_breaker *b;
  dsys_breaker_new(&b, &o);
  call(b, DSYS_BREAKER_FAILURE, 1);
  dsys_clock_advance(clk, 6 * 1000000LL);
  call(b, DSYS_BREAKER_FAILURE, 1);
  dsys_clock_advance(clk, 6 * 1000000LL);
  call(b, DSYS_BREAKER_FAILURE, 1);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_CLOSED, "3 failures over 12 s: closed");
  dsys_clock_advance(clk, 3 * 1000000LL);
  for (int i = 0; i < 50; i++) call(b, DSYS_BREAKER_SUCCESS, 1);
  call(b, DSYS_BREAKER_FAILURE, 1);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_OPEN,
         "3 failures within 10 s trip despite many successes and minimum calls");
  dsys_breaker_free(b);
  dsys_clock_free(clk);
}

static void test_forced_disabled(void) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 0);
  evlog ev = {0};
  dsys_breaker_options o = {.size = sizeof o, .clock = clk, .minimum_calls = 1,
                            .on_event = on_ev, .event_ud = &ev};
  dsys_breaker *b;
  dsys_breaker_new(&b, &o);
  is_int(dsys_breaker_set_state(b, DSYS_BREAKER_FORCED_OPEN), 0, "force open");
  is_int(call(b, DSYS_BREAKER_SUCCESS, 1), DSYS_EBREAKER, "forced open rejects");
  dsys_clock_advance(clk, 3600 * 1000000LL);
  is_int(call(b, DSYS_BREAKER_SUCCESS, 1), DSYS_EBREAKER, "forced open still rejects after an hour");
  dsys_breaker_set_state(b, DSYS_BREAKER_DISABLED);
  for (int i = 0; i < 20; i++) is_int(call(b, DSYS_BREAKER_FAILURE, 1), 0, "disabled permits %d", i);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_DISABLED, "disabled never trips");
  dsys_breaker_set_state(b, DSYS_BREAKER_CLOSED);
  call(b, DSYS_BREAKER_FAILURE, 1);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_OPEN, "closed again trips on failure");
  is_int(ev.n, 4, "forced, disabled, closed, open events");
  is_int(ev.to[0], DSYS_BREAKER_FORCED_OPEN, "first event to forced-open");
  is_int(dsys_breaker_set_state(b, 99), DSYS_EINVAL, "bad state");
  is_str(dsys_breaker_state_name(DSYS_BREAKER_HALF_OPEN), "half-open", "state name");
  dsys_breaker_free(b);
  dsys_breaker_options bad = {.size = sizeof bad, .failure_rate_pct = 101};
  is_int(dsys_breaker_new(&b, &bad), DSYS_EINVAL, "rate over 100 rejected");
  dsys_clock_free(clk);
}

typedef struct thr_arg {
  dsys_breaker *b;
  int n;
} thr_arg;

static void *hammer(void *p) {
  thr_arg *a = p;
  for (int i = 0; i < a->n; i++) call(a->b, i % 3 ? DSYS_BREAKER_SUCCESS : DSYS_BREAKER_FAILURE, 1);
  return NULL;
}

static void test_threads(void) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 0);
  dsys_breaker_options o = {.size = sizeof o, .clock = clk, .failure_rate_pct = 90};
  dsys_breaker *b;
  dsys_breaker_new(&b, &o);
  pthread_t t[4];
  thr_arg a = {b, 20000};
  for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, hammer, &a);
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  dsys_breaker_stats st;
  dsys_breaker_stats_get(b, &st);
  is_int(st.calls, 80000, "80000 calls counted from 4 threads");
  is_int(st.window_calls, 100, "window full");
  dsys_breaker_free(b);
  dsys_clock_free(clk);
}

/* The shared-cause hook (what dsys_upstream asks its health checker):
 * asked only when the breaker would open; a yes keeps it closed with a
 * fresh window, or closes it from half-open; a no opens it as before. */
typedef struct shq {
  int answer, asked;
} shq;

static int ask_shared(void *ud, const char *name) {
  shq *q = ud;
  q->asked++;
  return !strcmp(name, "s") && q->answer;
}

static void test_shared_cause(void) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 0);
  evlog ev = {0};
  dsys_breaker_options o = {.size = sizeof o, .clock = clk, .name = "s", .window_size = 10,
                            .minimum_calls = 4, .open_wait_ms = 1000, .half_open_calls = 1,
                            .on_event = on_ev, .event_ud = &ev};
  dsys_breaker *b;
  is_int(dsys_breaker_new(&b, &o), 0, "shared: new");
  shq q = {.answer = 1};
  dsysi_breaker_set_shared(b, ask_shared, &q);
  for (int i = 0; i < 3; i++) call(b, DSYS_BREAKER_FAILURE, 10);
  is_int(q.asked, 0, "shared: not asked below the threshold");
  call(b, DSYS_BREAKER_FAILURE, 10);
  is_int(q.asked, 1, "shared: asked when the failures would open it");
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_CLOSED, "shared: a shared cause keeps it closed");
  dsys_breaker_stats st;
  dsys_breaker_stats_get(b, &st);
  ok(st.window_calls == 0 && st.window_failures == 0, "shared: ... with a fresh window (%u/%u)",
     st.window_failures, st.window_calls);
  is_int(ev.n, 0, "shared: no event");
  /* two more failures of the episode, then the cause is gone: its first
   * success forgets them (else a stray failure would open it) */
  call(b, DSYS_BREAKER_FAILURE, 10);
  call(b, DSYS_BREAKER_FAILURE, 10);
  q.answer = 0;
  call(b, DSYS_BREAKER_SUCCESS, 10);
  dsys_breaker_stats_get(b, &st);
  ok(st.window_calls == 1 && st.window_failures == 0,
     "shared: the first success after it forgets the episode's failures (%u/%u)",
     st.window_failures, st.window_calls);
  for (int i = 0; i < 2; i++) call(b, DSYS_BREAKER_SUCCESS, 10);
  call(b, DSYS_BREAKER_FAILURE, 10);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_CLOSED, "shared: then one failure in 4: closed");
  call(b, DSYS_BREAKER_SUCCESS, 10);
  is_int(q.asked, 1, "shared: successes ask nothing");
  /* its own failures: 4 of 8 reach 50% -> asked, no -> open */
  for (int i = 0; i < 3; i++) call(b, DSYS_BREAKER_FAILURE, 10);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_OPEN, "shared: a cause of its own opens it");
  is_int(q.asked, 2, "shared: asked once more");
  /* half-open trial fails while the cause has become shared: closed */
  dsys_clock_advance(clk, 1000 * 1000);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_HALF_OPEN, "shared: half-open after the wait");
  q.answer = 1;
  call(b, DSYS_BREAKER_FAILURE, 10);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_CLOSED,
         "shared: a failed trial with a shared cause closes it (no second wait)");
  /* and a failed trial with a cause of its own reopens it */
  q.answer = 0;
  for (int i = 0; i < 4; i++) call(b, DSYS_BREAKER_FAILURE, 10);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_OPEN, "shared: own failures open it again");
  dsys_clock_advance(clk, 1000 * 1000);
  dsys_breaker_state_get(b);
  call(b, DSYS_BREAKER_FAILURE, 10);
  is_int(dsys_breaker_state_get(b), DSYS_BREAKER_OPEN, "shared: a failed trial of its own reopens it");
  dsys_breaker_free(b);
  dsys_clock_free(clk);
}

int main(void) {
  test_count_window();
  test_slow_calls();
  test_time_window();
  test_n_in_t();
  test_forced_disabled();
  test_shared_cause();
  test_threads();
  return tap_done();
}
