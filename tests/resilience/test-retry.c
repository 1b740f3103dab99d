/* Retry policy: decision table, backoff bounds, per-try timeouts, budget. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/distsys.h>
#include "tap.h"

typedef struct row {
  const char *method;
  int key; /* 1: Idempotency-Key, 2: If-Match (a precondition) */
  int outcome;
  int status;
  unsigned attempt;
  int64_t elapsed;
  int action;
  int reason;
} row;

#define S DSYS_RETRY_STOP
#define N DSYS_RETRY_NOW
#define B DSYS_RETRY_AFTER_BACKOFF

static const row table[] = {
    {"GET", 0, DSYS_OUTCOME_OK, 200, 1, 0, S, DSYS_RETRY_R_SUCCESS},
    {"POST", 0, DSYS_OUTCOME_NOT_SENT, 0, 1, 0, N, DSYS_RETRY_R_RETRYABLE},
    {"GET", 0, DSYS_OUTCOME_NOT_SENT, 0, 2, 0, N, DSYS_RETRY_R_RETRYABLE},
    {"GET", 0, DSYS_OUTCOME_NOT_SENT, 0, 3, 0, S, DSYS_RETRY_R_ATTEMPTS},
    {"GET", 0, DSYS_OUTCOME_TIMEOUT, 0, 1, 0, B, DSYS_RETRY_R_RETRYABLE},
    {"HEAD", 0, DSYS_OUTCOME_RESET, 0, 1, 0, B, DSYS_RETRY_R_RETRYABLE},
    {"OPTIONS", 0, DSYS_OUTCOME_PROTOCOL, 0, 1, 0, B, DSYS_RETRY_R_RETRYABLE},
    {"PUT", 0, DSYS_OUTCOME_SERVER_ERROR, 503, 1, 0, B, DSYS_RETRY_R_RETRYABLE},
    {"DELETE", 0, DSYS_OUTCOME_SERVER_ERROR, 502, 2, 0, B, DSYS_RETRY_R_RETRYABLE},
    {"GET", 0, DSYS_OUTCOME_SERVER_ERROR, 504, 1, 0, B, DSYS_RETRY_R_RETRYABLE},
    {"GET", 0, DSYS_OUTCOME_SERVER_ERROR, 500, 1, 0, S, DSYS_RETRY_R_NOT_RETRYABLE},
    {"GET", 0, DSYS_OUTCOME_CLIENT_ERROR, 404, 1, 0, S, DSYS_RETRY_R_NOT_RETRYABLE},
    {"GET", 0, DSYS_OUTCOME_CLIENT_ERROR, 429, 1, 0, S, DSYS_RETRY_R_NOT_RETRYABLE},
    {"POST", 0, DSYS_OUTCOME_TIMEOUT, 0, 1, 0, S, DSYS_RETRY_R_NOT_IDEMPOTENT},
    {"POST", 0, DSYS_OUTCOME_SERVER_ERROR, 503, 1, 0, S, DSYS_RETRY_R_NOT_IDEMPOTENT},
    {"PATCH", 0, DSYS_OUTCOME_RESET, 0, 1, 0, S, DSYS_RETRY_R_NOT_IDEMPOTENT},
    {"POST", 1, DSYS_OUTCOME_TIMEOUT, 0, 1, 0, B, DSYS_RETRY_R_RETRYABLE},
    {"PATCH", 1, DSYS_OUTCOME_SERVER_ERROR, 503, 1, 0, B, DSYS_RETRY_R_RETRYABLE},
    /* a timed-out attempt may land late: plain writes are not resent */
    {"PUT", 0, DSYS_OUTCOME_TIMEOUT, 0, 1, 0, S, DSYS_RETRY_R_MAY_LAND_LATE},
    {"DELETE", 0, DSYS_OUTCOME_TIMEOUT, 0, 1, 0, S, DSYS_RETRY_R_MAY_LAND_LATE},
    {"PUT", 2, DSYS_OUTCOME_TIMEOUT, 0, 1, 0, B, DSYS_RETRY_R_RETRYABLE},
    {"DELETE", 1, DSYS_OUTCOME_TIMEOUT, 0, 1, 0, B, DSYS_RETRY_R_RETRYABLE},
    {"PUT", 0, DSYS_OUTCOME_RESET, 0, 1, 0, B, DSYS_RETRY_R_RETRYABLE},
    {"POST", 2, DSYS_OUTCOME_TIMEOUT, 0, 1, 0, S, DSYS_RETRY_R_NOT_IDEMPOTENT},
    {"get", 0, DSYS_OUTCOME_TIMEOUT, 0, 1, 0, S, DSYS_RETRY_R_NOT_IDEMPOTENT},
    {NULL, 0, DSYS_OUTCOME_TIMEOUT, 0, 1, 0, B, DSYS_RETRY_R_RETRYABLE},
    {"GET", 0, DSYS_OUTCOME_TIMEOUT, 0, 3, 0, S, DSYS_RETRY_R_ATTEMPTS},
    {"GET", 0, DSYS_OUTCOME_TIMEOUT, 0, 1, 15000, S, DSYS_RETRY_R_DEADLINE},
    {"GET", 0, DSYS_OUTCOME_NOT_SENT, 0, 1, 20000, S, DSYS_RETRY_R_DEADLINE},
    {"GET", 0, DSYS_OUTCOME_LOCAL, 0, 1, 0, S, DSYS_RETRY_R_NOT_RETRYABLE},
};

static void test_table(void) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 0);
  dsys_retry_options o = {.size = sizeof o, .clock = clk, .budget_off = 1, .seed = 7};
  dsys_retry *r;
  is_int(dsys_retry_new(&r, &o), 0, "new policy");
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
    const row *t = &table[i];
    dsys_retry_input in = {.size = sizeof in, .method = t->method,
                           .has_idempotency_key = t->key & 1,
                           .has_precondition = (t->key & 2) != 0, .outcome = t->outcome,
                           .status = t->status, .attempt = t->attempt,
                           .elapsed_ms = t->elapsed};
    dsys_retry_decision d;
    is_int(dsys_retry_decide(r, &in, &d), 0, "decide row %zu", i);
    ok(d.action == t->action && d.reason == t->reason,
       "row %zu: %s key=%d outcome=%d status=%d attempt=%u -> action %d reason %d (want %d/%d)",
       i, t->method ? t->method : "(null)", t->key, t->outcome, t->status,
       t->attempt, d.action, d.reason, t->action, t->reason);
    if (d.action == N) is_int(d.delay_ms, 0, "row %zu: never-sent retries at once", i);
    if (d.action != S) ok(d.timeout_ms > 0 && d.timeout_ms <= 5000, "row %zu: next timeout %lld", i, (long long)d.timeout_ms);
  }
  dsys_retry_free(r);

  /* configured statuses replace the defaults */
  int32_t st[] = {429, 500};
  dsys_retry_options o2 = {.size = sizeof o2, .clock = clk, .budget_off = 1,
                           .retry_statuses = st, .n_retry_statuses = 2};
  dsys_retry_new(&r, &o2);
  dsys_retry_input in = {.size = sizeof in, .method = "GET",
                         .outcome = DSYS_OUTCOME_CLIENT_ERROR, .status = 429, .attempt = 1};
  dsys_retry_decision d;
  dsys_retry_decide(r, &in, &d);
  is_int(d.action, B, "429 retried when configured");
  in.outcome = DSYS_OUTCOME_SERVER_ERROR;
  in.status = 503;
  dsys_retry_decide(r, &in, &d);
  is_int(d.action, S, "503 not retried when not configured");
  dsys_retry_free(r);
  is_int(dsys_method_idempotent("DELETE"), 1, "DELETE idempotent");
  is_int(dsys_method_idempotent("POST"), 0, "POST not idempotent");
  is_int(dsys_method_safe("GET"), 1, "GET safe");
  is_int(dsys_method_safe(NULL), 1, "no method: GET, safe");
  is_int(dsys_method_safe("OPTIONS"), 1, "OPTIONS safe");
  is_int(dsys_method_safe("PUT"), 0, "PUT not safe");
  is_int(dsys_method_safe("DELETE"), 0, "DELETE not safe");
  dsys_retry_options bad = {.size = sizeof bad, .n_retry_statuses = 2};
  is_int(dsys_retry_new(&r, &bad), DSYS_EINVAL, "statuses count without array");
  dsys_clock_free(clk);
}

static void test_backoff(void) {
  dsys_retry_options o = {.size = sizeof o, .backoff_base_ms = 10,
                          .backoff_cap_ms = 100, .seed = 42};
  dsys_retry *r;
  dsys_retry_new(&r, &o);
  int64_t ceil[] = {0, 10, 20, 40, 80, 100, 100, 100};
  int bounds_ok = 1, reached_high[8] = {0}, saw_zeroish[8] = {0};
  for (uint32_t n = 1; n <= 7; n++) {
    for (int i = 0; i < 2000; i++) {
      int64_t v = dsys_retry_backoff_ms(r, n);
      if (v < 0 || v > ceil[n]) bounds_ok = 0;
      if (v >= ceil[n] * 3 / 4) reached_high[n] = 1;
      if (v <= ceil[n] / 4) saw_zeroish[n] = 1;
    }
  }
  ok(bounds_ok, "every backoff within [0, min(cap, base*2^(n-1))]");
  int spread = 1;
  for (int n = 1; n <= 7; n++) spread &= reached_high[n] && saw_zeroish[n];
  ok(spread, "full jitter spreads over the whole range");
  int64_t big = dsys_retry_backoff_ms(r, 100000);
  ok(big >= 0 && big <= 100, "huge attempt number capped without overflow (%lld)", (long long)big);
  is_int(dsys_retry_try_timeout_ms(r, 0), 5000, "per-try timeout default");
  is_int(dsys_retry_try_timeout_ms(r, 12000), 3000, "bounded by remaining deadline");
  is_int(dsys_retry_try_timeout_ms(r, 16000), 0, "deadline passed: 0");
  dsys_retry_free(r);
  dsys_retry_options o2 = {.size = sizeof o2, .per_try_timeout_ms = -1, .deadline_ms = -1};
  dsys_retry_new(&r, &o2);
  is_int(dsys_retry_try_timeout_ms(r, 1000000), -1, "no limits: -1");
  dsys_retry_free(r);
}

static int try_retry(dsys_retry *r) {
  dsys_retry_input in = {.size = sizeof in, .method = "GET",
                         .outcome = DSYS_OUTCOME_NOT_SENT, .attempt = 1};
  dsys_retry_decision d;
  dsys_retry_decide(r, &in, &d);
  return d.action != DSYS_RETRY_STOP ? 1 : (d.reason == DSYS_RETRY_R_BUDGET ? 0 : -1);
}

static void test_budget(void) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 0);
  dsys_retry_options o = {.size = sizeof o, .clock = clk, .budget_ratio_pct = 20,
                          .budget_min_per_s = 1, .budget_window_s = 10};
  dsys_retry *r;
  dsys_retry_new(&r, &o);
  int n = 0;
  while (n < 1000 && try_retry(r) == 1) n++;
  is_int(n, 10, "with no requests: the minimum, 1/s over 10 s");
  is_int(try_retry(r), 0, "then stopped by the budget");
  for (int i = 0; i < 100; i++) dsys_retry_request(r);
  n = 0;
  while (n < 1000 && try_retry(r) == 1) n++;
  is_int(n, 20, "100 requests allow 20%% more retries");
  uint64_t req, ret;
  dsys_retry_budget_get(r, &req, &ret);
  ok(req == 100 && ret == 30, "window: %llu requests, %llu retries", (unsigned long long)req, (unsigned long long)ret);
  dsys_clock_advance(clk, 10 * 1000000LL);
  dsys_retry_budget_get(r, &req, &ret);
  ok(req == 0 && ret == 0, "window slid: counters back to 0");
  is_int(try_retry(r), 1, "budget available again");
  /* A partial slide: 7 requests at second 15, 5 at second 20 (the retry
   * of second 10 has left the window, seconds 11-20); at second 26 the
   * window (seconds 17-26) holds only the later 5. */
  dsys_clock_advance(clk, 5 * 1000000LL);
  for (int i = 0; i < 7; i++) dsys_retry_request(r);
  dsys_clock_advance(clk, 5 * 1000000LL);
  for (int i = 0; i < 5; i++) dsys_retry_request(r);
  dsys_retry_budget_get(r, &req, &ret);
  ok(req == 12 && ret == 0, "both seconds in the window: %llu requests, %llu retries",
     (unsigned long long)req, (unsigned long long)ret);
  dsys_clock_advance(clk, 6 * 1000000LL);
  dsys_retry_budget_get(r, &req, &ret);
  ok(req == 5 && ret == 0, "the older second slid out: %llu requests, %llu retries",
     (unsigned long long)req, (unsigned long long)ret);
  dsys_retry_free(r);
  dsys_clock_free(clk);
}

/* Requests are counted without the lock: two threads lose none. */
static void *count_requests(void *r) {
  for (int i = 0; i < 100000; i++) dsys_retry_request(r);
  return NULL;
}

static void test_budget_threads(void) {
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, 0);
  dsys_retry_options o = {.size = sizeof o, .clock = clk};
  dsys_retry *r;
  dsys_retry_new(&r, &o);
  pthread_t t1, t2;
  pthread_create(&t1, NULL, count_requests, r);
  pthread_create(&t2, NULL, count_requests, r);
  pthread_join(t1, NULL);
  pthread_join(t2, NULL);
  uint64_t req, ret;
  dsys_retry_budget_get(r, &req, &ret);
  is_int(req, 200000, "two threads' 200,000 requests all counted");
  dsys_retry_free(r);
  dsys_clock_free(clk);
}

int main(void) {
  test_table();
  test_backoff();
  test_budget();
  test_budget_threads();
  return tap_done();
}
