/*
 * dsys_upstream on the fake clock with inproc:// servers: endpoint set
 * (static and registry), retries to another endpoint, refused -> immediate
 * retry, idempotency rules, budget, breakers, EUNAVAIL/EBREAKER, active
 * checks, statistics, async exactly-once, free with calls in flight.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "tap.h"

enum { M_OK = 0, M_503 = 1, M_PARK = 2, M_507 = 3 };

typedef struct srvst {
  char name[16];
  char url[64];
  atomic_int mode;
  atomic_int hits;
  atomic_int health_hits;
  pthread_mutex_t mu;
  dsys_request *parked[256];
  int nparked;
  dsys_server *srv;
} srvst;

static void h_health(dsys_request *req, void *ud) {
  srvst *s = ud;
  atomic_fetch_add(&s->health_hits, 1);
  dsys_respond_json(req, 200, "{\"status\":\"healthy\"}");
}

static void h_any(dsys_request *req, void *ud) {
  srvst *s = ud;
  atomic_fetch_add(&s->hits, 1);
  switch (atomic_load(&s->mode)) {
  case M_503:
    dsys_respond_error(req, 503, "down", "unavailable");
    break;
  case M_507:
    dsys_respond_error(req, 507, "DSYS_ENOSPC", "no space left on the storage");
    break;
  case M_PARK:
    dsys_request_defer(req);
    pthread_mutex_lock(&s->mu);
    if (s->nparked < 256) s->parked[s->nparked++] = req;
    else dsys_respond(req, 500, NULL, "", 0);
    pthread_mutex_unlock(&s->mu);
    break;
  default:
    dsys_respond(req, 200, "text/plain", s->name, strlen(s->name));
  }
}

static void srv_start(srvst *s, const char *name) {
  memset(s, 0, sizeof *s);
  snprintf(s->name, sizeof s->name, "%s", name);
  snprintf(s->url, sizeof s->url, "inproc://ut-%s", name);
  pthread_mutex_init(&s->mu, NULL);
  dsys_server_options o = {.size = sizeof o, .threads = 2};
  if (dsys_server_new(&s->srv, &o)) tap_bail("server_new");
  dsys_server_route(s->srv, "GET", "/health", h_health, s);
  dsys_server_route(s->srv, "*", "/*", h_any, s);
  if (dsys_server_listen(s->srv, s->url)) tap_bail("listen %s", s->url);
}

static void srv_unpark(srvst *s) {
  pthread_mutex_lock(&s->mu);
  for (int i = 0; i < s->nparked; i++) dsys_respond(s->parked[i], 200, "text/plain", "late", 4);
  s->nparked = 0;
  pthread_mutex_unlock(&s->mu);
}

static int nparked(srvst *s) {
  pthread_mutex_lock(&s->mu);
  int n = s->nparked;
  pthread_mutex_unlock(&s->mu);
  return n;
}

static void srv_stop(srvst *s) {
  srv_unpark(s);
  dsys_server_free(s->srv);
  pthread_mutex_destroy(&s->mu);
}

static srvst A, B, C;
static dsys_clock *clk;     /* fake: upstream, breakers, health, retry */
static dsys_client *rcli;   /* real-clock client: refused/timeouts fire by themselves */

/* Wait (real time, bounded) for a condition. */
#define WAIT_FOR(cond, ms)                                                   \
  do {                                                                       \
    for (int w_ = 0; w_ < (ms) && !(cond); w_++) usleep(1000);               \
  } while (0)

static dsys_upstream *mk(const dsys_retry_options *ro, const dsys_breaker_options *bo,
                         dsys_client *cli, int32_t when_none) {
  dsys_upstream_options o = {.size = sizeof o, .service = "svc", .clock = clk,
                             .client = cli, .retry = ro, .breaker = bo,
                             .when_none = when_none, .seed = 7};
  dsys_upstream *u = NULL;
  if (dsys_upstream_new(&u, &o)) tap_bail("upstream_new");
  return u;
}

static int get(dsys_upstream *u, const char *method, const char *path,
               const dsys_header *h, size_t nh, dsys_reply **r,
               dsys_upstream_result *res) {
  dsys_call c = {.size = sizeof c, .method = method, .path = path, .headers = h,
                 .nheaders = nh, .url = "ignored://x"};
  res->size = sizeof *res;
  return dsys_upstream_call_ex(u, &c, r, res);
}

static const char *body_of(dsys_reply *r) {
  size_t n;
  return r ? dsys_reply_body(r, &n) : "";
}

static dsys_endpoint_stats *stat_of(dsys_endpoint_stats *s, size_t n, const char *id) {
  for (size_t i = 0; i < n; i++)
    if (!strcmp(s[i].id, id)) return &s[i];
  return NULL;
}

static const dsys_instance *rec_of(const dsys_instance *v, size_t n, const char *id) {
  for (size_t i = 0; i < n; i++)
    if (!strcmp(v[i].id, id)) return &v[i];
  return NULL;
}

static const dsys_retry_options quick_retry = {
    .size = sizeof(dsys_retry_options), .max_attempts = 3, .backoff_base_ms = 10,
    .backoff_cap_ms = 50, .budget_off = 1, .seed = 3};
static const dsys_breaker_options lenient_breaker = {
    .size = sizeof(dsys_breaker_options), .window_size = 1000, .minimum_calls = 1000};

static void test_set(void) {
  dsys_upstream *u = mk(&quick_retry, &lenient_breaker, rcli, 0);
  dsys_reply *r = NULL;
  dsys_upstream_result res;
  is_int(get(u, "GET", "/x", NULL, 0, &r, &res), DSYS_EUNAVAIL, "no endpoints -> DSYS_EUNAVAIL");
  is_int(res.attempts, 0, "no attempt made");
  is_int(dsys_upstream_add(u, "a", A.url, 1), 0, "add a");
  is_int(dsys_upstream_add(u, "a", B.url, 1), DSYS_EEXIST, "same id -> EEXIST");
  is_int(dsys_upstream_add(u, "", B.url, 1), DSYS_EINVAL, "empty id -> EINVAL");
  is_int(dsys_upstream_add(u, "x", NULL, 1), DSYS_EINVAL, "NULL url -> EINVAL");
  is_int(dsys_upstream_add(u, "x", "127.0.0.1:80", 1), DSYS_EURL, "URL without a scheme -> EURL");
  is_int(dsys_upstream_add(u, "x", "gopher://h", 1), DSYS_ESCHEME, "unknown scheme -> ESCHEME");
  is_int(dsys_upstream_add(u, "x", "http://h:70000", 1), DSYS_EURL, "port out of range -> EURL");
  is_int(dsys_upstream_add(u, "x", "http://", 1), DSYS_EURL, "no host -> EURL");
  is_int(dsys_upstream_count(u), 1, "refused URLs add no endpoint");
  dsys_upstream_add(u, "b", B.url, 1);
  dsys_upstream_add(u, "c", C.url, 1);
  is_int(dsys_upstream_count(u), 3, "three endpoints");
  char order[16] = "";
  for (int i = 0; i < 6; i++) {
    if (get(u, "GET", "/who", NULL, 0, &r, &res) == 0) {
      strncat(order, body_of(r), 1);
      dsys_reply_free(r);
    }
  }
  is_str(order, "abcabc", "round robin over a, b, c");
  is_int(dsys_upstream_remove(u, "b"), 0, "remove b");
  is_int(dsys_upstream_remove(u, "b"), DSYS_ENOTFOUND, "remove twice -> ENOTFOUND");
  int sawb = 0;
  for (int i = 0; i < 4; i++)
    if (get(u, "GET", "/who", NULL, 0, &r, &res) == 0) {
      sawb |= !strcmp(body_of(r), "b");
      dsys_reply_free(r);
    }
  ok(!sawb && dsys_upstream_count(u) == 2, "removed endpoint gets no more calls");
  dsys_upstream_reset_rr(u);
  struct dsys_upstream_pick p;
  is_int(dsys_upstream_pick(u, NULL, 0, NULL, &p), 0, "pick");
  is_str(p.id, "a", "after reset_rr the rotation starts at the first endpoint");
  struct dsys_upstream_pick q;
  is_int(dsys_upstream_pick(u, NULL, 0, "c", &q), 0, "pick excluding c");
  is_str(q.id, "a", "exclude is honoured");
  dsys_endpoint_stats *s;
  size_t n;
  dsys_upstream_stats(u, &s, &n);
  ok(n == 2 && stat_of(s, n, "a")->in_flight == 2, "two picks in flight on a");
  dsys_free(s);
  dsys_upstream_report(u, &p, 0, 200);
  dsys_upstream_report(u, &q, 0, 200);
  dsys_upstream_report(u, &q, 0, 200); /* released already: ignored */
  dsys_upstream_stats(u, &s, &n);
  ok(stat_of(s, n, "a")->in_flight == 0, "reports release them (a second report is ignored)");
  dsys_free(s);
  dsys_upstream_free(u);
}

static void test_retries(void) {
  dsys_upstream *u = mk(&quick_retry, &lenient_breaker, rcli, 0);
  dsys_upstream_add(u, "a", A.url, 1);
  dsys_upstream_add(u, "b", B.url, 1);
  dsys_upstream_add(u, "c", C.url, 1);
  atomic_store(&A.mode, M_503);
  dsys_reply *r = NULL;
  dsys_upstream_result res;
  int64_t t0 = dsys_clock_now_us(clk);
  int rc = get(u, "GET", "/who", NULL, 0, &r, &res);
  ok(rc == 0 && dsys_reply_status(r) == 200 && strcmp(body_of(r), "a"),
     "503 on a: GET retried on another endpoint (%s)", body_of(r));
  ok(res.attempts == 2 && strcmp(res.endpoint, "a"), "two attempts, last on %s", res.endpoint);
  dsys_reply_free(r);

  /* POST: not retried after it was sent */
  dsys_upstream_reset_rr(u);
  rc = get(u, "POST", "/who", NULL, 0, &r, &res);
  ok(rc == 0 && dsys_reply_status(r) == 503 && res.attempts == 1,
     "POST answered 503 is not retried; the 503 is a reply (status %d, %u attempts)",
     r ? dsys_reply_status(r) : -1, res.attempts);
  is_int(res.last_retry_reason, DSYS_RETRY_R_NOT_IDEMPOTENT, "reason: not idempotent");
  dsys_reply_free(r);
  dsys_upstream_reset_rr(u);
  dsys_header ik = {"Idempotency-Key", "k-1"};
  rc = get(u, "POST", "/who", &ik, 1, &r, &res);
  ok(rc == 0 && dsys_reply_status(r) == 200 && res.attempts == 2,
     "POST with Idempotency-Key is retried (%u attempts)", res.attempts);
  dsys_reply_free(r);
  atomic_store(&A.mode, M_OK);

  /* refused: immediate retry, even for POST */
  dsys_upstream_add(u, "dead", "inproc://ut-nobody-listens", 1);
  dsys_upstream_remove(u, "a");
  dsys_upstream_remove(u, "b");
  dsys_upstream_remove(u, "c");
  dsys_upstream_add(u, "a", A.url, 1);
  dsys_upstream_reset_rr(u);
  t0 = dsys_clock_now_us(clk);
  rc = get(u, "POST", "/who", NULL, 0, &r, &res);
  ok(rc == 0 && dsys_reply_status(r) == 200 && res.attempts == 2 && !strcmp(res.endpoint, "a"),
     "refused POST retried on another endpoint (%d, %u attempts, %s)", rc, res.attempts, res.endpoint);
  is_int(dsys_clock_now_us(clk) - t0, 0, "refused: retried at once (no backoff)");
  dsys_reply_free(r);
  dsys_endpoint_stats *s;
  size_t n;
  dsys_upstream_stats(u, &s, &n);
  dsys_endpoint_stats *d = stat_of(s, n, "dead");
  ok(d && d->by_outcome[DSYS_OUTCOME_NOT_SENT] == 1 && d->failures == 1, "refusal counted on dead");
  ok(d && d->ejected && !d->usable, "refused endpoint ejected by outlier detection");
  dsys_free(s);
  dsys_upstream_totals t;
  dsys_upstream_totals_get(u, &t);
  ok(t.calls == 4 && t.replies == 4 && t.errors == 0 && t.attempts == 7 && t.retries == 3,
     "totals: %llu calls, %llu replies, %llu attempts, %llu retries",
     (unsigned long long)t.calls, (unsigned long long)t.replies,
     (unsigned long long)t.attempts, (unsigned long long)t.retries);
  dsys_upstream_free(u);

  /* everything down: the last error comes back after max_attempts */
  u = mk(&quick_retry, &lenient_breaker, rcli, 0);
  dsys_upstream_add(u, "d1", "inproc://ut-nobody-1", 1);
  dsys_upstream_add(u, "d2", "inproc://ut-nobody-2", 1);
  rc = get(u, "GET", "/who", NULL, 0, &r, &res);
  ok(rc == DSYS_ECONNREFUSED && res.attempts == 3, "all refused: DSYS_ECONNREFUSED after 3 attempts (%s, %u)",
     dsys_err_name(rc), res.attempts);
  dsys_upstream_free(u);
}

static void test_budget(void) {
  dsys_retry_options ro = quick_retry;
  ro.budget_off = 0;
  ro.budget_min_per_s = 1;
  ro.budget_window_s = 1;
  ro.budget_ratio_pct = 1;
  ro.max_attempts = 2;
  dsys_upstream *u = mk(&ro, &lenient_breaker, rcli, 0);
  dsys_upstream_add(u, "a", A.url, 1);
  dsys_upstream_add(u, "b", B.url, 1);
  atomic_store(&A.mode, M_503);
  atomic_store(&B.mode, M_503);
  /* start well inside a budget second: the one backoff must not cross it */
  dsys_clock_advance(clk, (1100 - dsys_clock_now_ms(clk) % 1000) * 1000);
  int budget = 0;
  for (int i = 0; i < 10; i++) {
    dsys_reply *r = NULL;
    dsys_upstream_result res;
    if (get(u, "GET", "/who", NULL, 0, &r, &res) == 0) dsys_reply_free(r);
    if (res.last_retry_reason == DSYS_RETRY_R_BUDGET) budget++;
  }
  dsys_upstream_totals t;
  dsys_upstream_totals_get(u, &t);
  ok(t.retries == 1 && budget == 9,
     "retry budget: 1 retry allowed in the window, then stopped (%llu retries, %d budget stops)",
     (unsigned long long)t.retries, budget);
  atomic_store(&A.mode, M_OK);
  atomic_store(&B.mode, M_OK);
  dsys_upstream_free(u);
}

static int br_events;
static void count_br(void *ud, const char *name, dsys_breaker_state f, dsys_breaker_state t) {
  (void)ud, (void)name, (void)f, (void)t;
  br_events++;
}

static void test_breakers(void) {
  dsys_retry_options ro = quick_retry;
  ro.max_attempts = 1;
  dsys_breaker_options bo = {.size = sizeof bo, .failures_n = 2, .failures_window_ms = 10000,
                             .open_wait_ms = 1000, .half_open_calls = 1,
                             .on_event = count_br};
  dsys_upstream *u = mk(&ro, &bo, rcli, 0);
  dsys_upstream_add(u, "a", A.url, 1);
  atomic_store(&A.mode, M_503);
  dsys_reply *r = NULL;
  dsys_upstream_result res;
  for (int i = 0; i < 2; i++)
    if (get(u, "GET", "/who", NULL, 0, &r, &res) == 0) dsys_reply_free(r);
  dsys_endpoint_stats *s;
  size_t n;
  dsys_upstream_stats(u, &s, &n);
  is_int(s[0].breaker_state, DSYS_BREAKER_OPEN, "two failures open the breaker");
  ok(!s[0].usable, "open breaker: not usable");
  dsys_free(s);
  is_int(br_events, 1, "the template's on_event is still called");
  is_int(get(u, "GET", "/who", NULL, 0, &r, &res), DSYS_EBREAKER, "only endpoint open -> DSYS_EBREAKER");
  struct dsys_upstream_pick p;
  is_int(dsys_upstream_pick(u, NULL, 0, NULL, &p), DSYS_EBREAKER, "pick -> DSYS_EBREAKER");
  atomic_store(&A.mode, M_OK);
  dsys_clock_advance(clk, 1000 * 1000);
  dsys_upstream_stats(u, &s, &n);
  is_int(s[0].breaker_state, DSYS_BREAKER_HALF_OPEN, "after open_wait the timer moves it to half-open");
  ok(s[0].usable, "half-open: back in rotation");
  dsys_free(s);
  int rc = get(u, "GET", "/who", NULL, 0, &r, &res);
  ok(rc == 0 && dsys_reply_status(r) == 200, "trial call succeeds");
  dsys_reply_free(r);
  dsys_upstream_stats(u, &s, &n);
  is_int(s[0].breaker_state, DSYS_BREAKER_CLOSED, "successful trial closes it");
  ok(s[0].breaker_rejections == 2, "rejections counted (%llu)", (unsigned long long)s[0].breaker_rejections);
  dsys_free(s);

  /* two endpoints, one forced open: traffic avoids it; both: EBREAKER */
  dsys_upstream_add(u, "b", B.url, 1);
  is_int(dsys_upstream_breaker_set(u, "a", DSYS_BREAKER_FORCED_OPEN), 0, "force a open");
  is_int(dsys_upstream_breaker_set(u, "zz", DSYS_BREAKER_FORCED_OPEN), DSYS_ENOTFOUND, "unknown id");
  int allb = 1;
  for (int i = 0; i < 4; i++) {
    if (get(u, "GET", "/who", NULL, 0, &r, &res) == 0) {
      allb &= !strcmp(body_of(r), "b");
      dsys_reply_free(r);
    } else {
      allb = 0;
    }
  }
  ok(allb, "calls avoid the open breaker");
  dsys_upstream_breaker_set(u, "b", DSYS_BREAKER_FORCED_OPEN);
  is_int(get(u, "GET", "/who", NULL, 0, &r, &res), DSYS_EBREAKER, "all breakers open -> DSYS_EBREAKER");
  dsys_upstream_totals t;
  dsys_upstream_totals_get(u, &t);
  ok(t.breaker_rejected == 3, "totals count EBREAKER picks (%llu)", (unsigned long long)t.breaker_rejected);
  dsys_upstream_free(u);

  /* fail-fast: all breakers open is still EBREAKER */
  u = mk(&ro, NULL, rcli, DSYS_LB_FAIL_FAST);
  dsys_upstream_add(u, "a", A.url, 1);
  dsys_upstream_breaker_set(u, "a", DSYS_BREAKER_FORCED_OPEN);
  is_int(get(u, "GET", "/who", NULL, 0, &r, &res), DSYS_EBREAKER, "fail-fast + all open -> DSYS_EBREAKER");
  dsys_upstream_free(u);
}

static void test_active_checks(void) {
  dsys_health_options ho = {.size = sizeof ho, .interval_ms = 1000, .jitter_ms = -1,
                            .timeout_ms = 500};
  dsys_upstream_options o = {.size = sizeof o, .service = "svc", .clock = clk,
                             .client = rcli, .health = &ho, .health_check = 1,
                             .when_none = DSYS_LB_FAIL_FAST};
  dsys_upstream *u;
  is_int(dsys_upstream_new(&u, &o), 0, "upstream with active checks");
  dsys_upstream_add(u, "a", A.url, 1);
  dsys_reply *r = NULL;
  dsys_upstream_result res;
  is_int(get(u, "GET", "/who", NULL, 0, &r, &res), DSYS_EUNAVAIL,
         "pending endpoint + fail fast -> DSYS_EUNAVAIL");
  int before = atomic_load(&A.health_hits);
  dsys_clock_advance(clk, 1000);
  WAIT_FOR(dsys_upstream_call(u, &(dsys_call){.path = "/who"}, &r) == 0, 2000);
  ok(atomic_load(&A.health_hits) > before, "probe sent GET /health");
  ok(r && dsys_reply_status(r) == 200, "after a passing check the endpoint takes traffic");
  dsys_reply_free(r);
  dsys_endpoint_stats *s;
  size_t n;
  dsys_upstream_stats(u, &s, &n);
  ok(n == 1 && s[0].healthy && s[0].health_state == DSYS_HEALTH_HEALTHY, "stats: healthy");
  dsys_free(s);
  dsys_upstream_free(u);
}

static void test_stats(void) {
  dsys_upstream *u = mk(&quick_retry, &lenient_breaker, rcli, 0);
  dsys_upstream_add(u, "a", A.url, 3);
  /* latencies 1..100 ms through pick/report on the fake clock */
  for (int i = 1; i <= 100; i++) {
    struct dsys_upstream_pick p;
    if (dsys_upstream_pick(u, NULL, 0, NULL, &p)) break;
    dsys_clock_advance(clk, i * 1000);
    dsys_upstream_report(u, &p, i == 100 ? DSYS_ETIMEDOUT : 0, i % 10 == 0 ? 404 : 200);
  }
  dsys_endpoint_stats *s;
  size_t n;
  dsys_upstream_stats(u, &s, &n);
  dsys_endpoint_stats *a = &s[0];
  is_str(a->id, "a", "id");
  is_str(a->url, A.url, "url");
  is_int(a->weight, 3, "weight");
  is_int(a->requests, 100, "requests");
  is_int(a->successes, 90, "successes (2xx)");
  is_int(a->by_outcome[DSYS_OUTCOME_CLIENT_ERROR], 9, "4xx by outcome");
  is_int(a->by_outcome[DSYS_OUTCOME_TIMEOUT], 1, "timeout by outcome");
  is_int(a->failures, 1, "failures: the timeout only (4xx is not a failure)");
  is_int(a->latency_count, 100, "histogram count");
  uint64_t sum = 0;
  for (int i = 0; i < DSYS_UPSTREAM_LAT_BUCKETS; i++) sum += a->latency_buckets[i];
  is_int(sum, 100, "buckets add up");
  is_int(a->latency_sum_us, 5050 * 1000, "latency sum");
  ok(a->p50_us >= 40000 && a->p50_us <= 62500, "p50 %lld us ~ 50 ms", (long long)a->p50_us);
  ok(a->p90_us >= 72000 && a->p90_us <= 112500, "p90 %lld us ~ 90 ms", (long long)a->p90_us);
  ok(a->p99_us >= 79000 && a->p99_us <= 124000, "p99 %lld us ~ 99 ms", (long long)a->p99_us);
  ok(a->p50_us <= a->p90_us && a->p90_us <= a->p99_us, "percentiles ordered");
  dsys_free(s);
  int okb = 1;
  for (uint32_t i = 0; i + 1 < DSYS_UPSTREAM_LAT_BUCKETS; i++)
    okb &= dsys_upstream_bucket_lower_us(i) < dsys_upstream_bucket_lower_us(i + 1);
  ok(okb && dsys_upstream_bucket_lower_us(4) == 4 && dsys_upstream_bucket_lower_us(8) == 8,
     "bucket bounds increase (4 per power of two)");
  dsys_upstream_free(u);
}

typedef struct acount {
  atomic_int fired[64];
  atomic_int done, ok, canceled;
  int status[64];
} acount;

typedef struct aone {
  acount *ac;
  int i;
} aone;

static void on_done(int err, dsys_reply *r, const dsys_upstream_result *res, void *ud) {
  aone *o = ud;
  atomic_fetch_add(&o->ac->fired[o->i], 1);
  if (!err && dsys_reply_status(r) == 200) atomic_fetch_add(&o->ac->ok, 1);
  if (err == DSYS_ECANCELED) atomic_fetch_add(&o->ac->canceled, 1);
  o->ac->status[o->i] = err ? err : dsys_reply_status(r);
  dsys_reply_free(r);
  atomic_fetch_add(&o->ac->done, 1);
}

static void test_async(void) {
  dsys_upstream *u = mk(&quick_retry, &lenient_breaker, rcli, 0);
  dsys_upstream_add(u, "a", A.url, 1);
  dsys_upstream_add(u, "dead", "inproc://ut-nobody-listens", 1);
  dsys_upstream_add(u, "b", B.url, 1);
  static acount ac;
  static aone ones[64];
  dsys_call c = {.size = sizeof c, .path = "/who"};
  int started = 0;
  for (int i = 0; i < 48; i++) {
    ones[i] = (aone){&ac, i};
    if (dsys_upstream_send(u, &c, on_done, &ones[i]) == 0) started++;
  }
  WAIT_FOR(atomic_load(&ac.done) >= started, 5000);
  int once = 1;
  for (int i = 0; i < 48; i++) once &= atomic_load(&ac.fired[i]) == 1;
  ok(started == 48 && once, "48 async calls: every callback ran exactly once");
  is_int(atomic_load(&ac.ok), 48, "all succeed (refusals retried at once)");
  is_int(dsys_upstream_send(u, &c, NULL, NULL), DSYS_EINVAL, "NULL callback -> EINVAL");
  dsys_upstream_free(u);

  /* backoff on the clock: nothing happens until the fake clock moves */
  u = mk(&quick_retry, &lenient_breaker, rcli, 0);
  dsys_upstream_add(u, "a", A.url, 1);
  dsys_upstream_add(u, "b", B.url, 1);
  atomic_store(&A.mode, M_503);
  static acount ac2;
  static aone one2 = {&ac2, 0};
  int hits0 = atomic_load(&A.hits);
  is_int(dsys_upstream_send(u, &c, on_done, &one2), 0, "send");
  WAIT_FOR(atomic_load(&A.hits) > hits0, 2000);
  usleep(20000);
  is_int(atomic_load(&ac2.done), 0, "waiting for its backoff on the fake clock");
  for (int i = 0; i < 10 && !atomic_load(&ac2.done); i++) {
    dsys_clock_advance(clk, 10000);
    WAIT_FOR(atomic_load(&ac2.done), 20);
  }
  WAIT_FOR(atomic_load(&ac2.done), 2000);
  ok(atomic_load(&ac2.done) == 1 && ac2.status[0] == 200, "after the backoff: retried on b, 200");
  atomic_store(&A.mode, M_OK);
  dsys_upstream_free(u);

  /* a failed start never fires the callback */
  u = mk(&quick_retry, &lenient_breaker, rcli, 0);
  static acount ac3;
  static aone one3 = {&ac3, 0};
  is_int(dsys_upstream_send(u, &c, on_done, &one3), DSYS_EUNAVAIL, "no endpoints: send fails");
  usleep(10000);
  is_int(atomic_load(&ac3.done), 0, "and its callback never runs");
  dsys_upstream_free(u);
}

/* One call to a (parked: never answers) then b, on a per-try timeout of
 * 100 ms on the fake clock; its end. */
typedef struct tres {
  atomic_int done;
  int status;
  dsys_upstream_result res;
} tres;

static void on_tres(int err, dsys_reply *r, const dsys_upstream_result *res, void *ud) {
  tres *t = ud;
  t->status = err ? err : dsys_reply_status(r);
  t->res = *res;
  dsys_reply_free(r);
  atomic_store(&t->done, 1);
}

/* One call through a (parked: it never answers) and b, per-try timeout
 * 100 ms, on the client fcli of the fake clock, which is advanced until
 * the call ends (400 ms at most); t: how it ended. Returns the attempts
 * that timed out on a. */
static uint64_t call_past_timeout(dsys_client *fcli, const char *method, dsys_header *h,
                                  size_t nh, tres *t) {
  dsys_retry_options ro = quick_retry;
  ro.per_try_timeout_ms = 100;
  dsys_upstream *u = mk(&ro, &lenient_breaker, fcli, 0);
  dsys_upstream_add(u, "a", A.url, 1);
  dsys_upstream_add(u, "b", B.url, 1);
  atomic_store(&A.mode, M_PARK);
  int parked = nparked(&A);
  dsys_call c = {.size = sizeof c, .method = method, .path = "/who", .headers = h, .nheaders = nh};
  memset(t, 0, sizeof *t);
  is_int(dsys_upstream_send(u, &c, on_tres, t), 0, "%s sent to a slow endpoint", method);
  WAIT_FOR(nparked(&A) == parked + 1, 2000);
  for (int i = 0; i < 40 && !atomic_load(&t->done); i++) {
    dsys_clock_advance(clk, 10000);
    WAIT_FOR(atomic_load(&t->done), 10);
  }
  dsys_endpoint_stats *s;
  size_t n;
  uint64_t timeouts = 0;
  if (dsys_upstream_stats(u, &s, &n) == 0) {
    timeouts = stat_of(s, n, "a")->by_outcome[DSYS_OUTCOME_TIMEOUT];
    dsys_free(s);
  }
  srv_unpark(&A);
  atomic_store(&A.mode, M_OK);
  dsys_upstream_free(u);
  return timeouts;
}

/* A timed-out attempt may still land after its retry was answered and
 * after newer writes: a plain PUT or DELETE is not resent (the
 * simulation's seed 37 saw the late PUT overwrite a newer one); a
 * conditional or keyed one is, and a GET is. */
static void test_late_writes(void) {
  dsys_client *fcli;
  dsys_client_options co = {.size = sizeof co, .clock = clk};
  dsys_client_new(&fcli, &co);
  tres t;
  call_past_timeout(fcli, "PUT", NULL, 0, &t);
  ok(atomic_load(&t.done) && t.status == DSYS_ETIMEDOUT && t.res.attempts == 1,
     "PUT past its per-try timeout: DSYS_ETIMEDOUT, not resent (%s, %u attempts)",
     t.status < 0 ? dsys_err_name(t.status) : "status", t.res.attempts);
  is_int(t.res.last_retry_reason, DSYS_RETRY_R_MAY_LAND_LATE, "reason: may land late");
  call_past_timeout(fcli, "DELETE", NULL, 0, &t);
  ok(t.status == DSYS_ETIMEDOUT && t.res.attempts == 1, "DELETE likewise (%u attempts)",
     t.res.attempts);
  dsys_header im = {"if-match", "\"3\""};
  call_past_timeout(fcli, "PUT", &im, 1, &t);
  ok(t.status == 200 && t.res.attempts == 2 && !strcmp(t.res.endpoint, "b"),
     "PUT with If-Match resent on b (%d, %u attempts)", t.status, t.res.attempts);
  dsys_header ik = {"Idempotency-Key", "k-late"};
  call_past_timeout(fcli, "PUT", &ik, 1, &t);
  ok(t.status == 200 && t.res.attempts == 2, "PUT with Idempotency-Key resent (%d)", t.status);
  call_past_timeout(fcli, "GET", NULL, 0, &t);
  ok(t.status == 200 && t.res.attempts == 2, "GET resent (%d)", t.status);
  dsys_client_free(fcli);
}

static void test_timeouts_and_free(void) {
  /* per-try timeout on the fake clock (client on the same clock) */
  dsys_client *fcli;
  dsys_client_options co = {.size = sizeof co, .clock = clk};
  dsys_client_new(&fcli, &co);
  tres t;
  uint64_t a_timeouts = call_past_timeout(fcli, "GET", NULL, 0, &t);
  ok(atomic_load(&t.done) && t.status == 200,
     "per-try timeout (100 ms fake) then retry on b: %d", t.status);
  ok(a_timeouts == 1, "timeout recorded on a (%llu)", (unsigned long long)a_timeouts);
  dsys_client_free(fcli);

  /* free with calls in flight (own client) and one waiting for a backoff */
  atomic_store(&A.mode, M_PARK);
  dsys_call c = {.size = sizeof c, .path = "/who"};
  dsys_upstream_options o = {.size = sizeof o, .clock = clk, .retry = &quick_retry,
                             .breaker = &lenient_breaker};
  dsys_upstream *u;
  dsys_upstream_new(&u, &o);
  dsys_upstream_add(u, "a", A.url, 1);
  static acount ac2;
  static aone ones[16];
  int started = 0;
  for (int i = 0; i < 8; i++) {
    ones[i] = (aone){&ac2, i};
    started += dsys_upstream_send(u, &c, on_done, &ones[i]) == 0;
  }
  WAIT_FOR(nparked(&A) == 8, 2000);
  dsys_upstream_remove(u, "a");
  dsys_upstream_add(u, "b", B.url, 1);
  atomic_store(&B.mode, M_503);
  ones[8] = (aone){&ac2, 8};
  started += dsys_upstream_send(u, &c, on_done, &ones[8]) == 0;
  dsys_upstream_totals tot;
  for (int i = 0; i < 2000; i++) {
    dsys_upstream_totals_get(u, &tot);
    if (tot.attempts >= 9 && atomic_load(&B.hits) > 0) break;
    usleep(1000);
  }
  usleep(10000); /* the 503 reached on_attempt: it now waits for a backoff */
  is_int(atomic_load(&ac2.done), 0, "nothing completed yet");
  dsys_upstream_free(u);
  int once = 1;
  for (int i = 0; i < 9; i++) once &= atomic_load(&ac2.fired[i]) == 1;
  ok(started == 9 && once, "free: each of the 9 callbacks ran exactly once before it returned");
  is_int(atomic_load(&ac2.canceled), 9, "all with DSYS_ECANCELED");
  atomic_store(&A.mode, M_OK);
  atomic_store(&B.mode, M_OK);
  srv_unpark(&A);
}

static void test_registry(void) {
  dsys_registry *reg;
  dsys_registry_options ro = {.size = sizeof ro, .clock = clk, .ttl_ms = 1000,
                              .reap_ms = 100000, .sweep_interval_ms = -1};
  if (dsys_registry_open(&reg, "memory", NULL, &ro, NULL, 0)) tap_bail("registry");
  dsys_instance ia = {.id = "a", .type = "svc", .url = A.url};
  dsys_instance ib = {.id = "b", .type = "svc", .url = B.url, .weight = 2, .name = "bee",
                      .metadata = "{\"zone\":\"z1\"}"};
  dsys_instance io = {.id = "o", .type = "other", .url = C.url};
  dsys_registry_register(reg, &ia);
  dsys_registry_register(reg, &ib);
  dsys_registry_register(reg, &io);
  dsys_upstream_options o = {.size = sizeof o, .clock = clk, .client = rcli,
                             .registry = reg, .retry = &quick_retry};
  dsys_upstream *u;
  is_int(dsys_upstream_new(&u, &(dsys_upstream_options){.size = sizeof o, .registry = reg}),
         DSYS_EINVAL, "registry without a service name -> EINVAL");
  o.service = "svc";
  is_int(dsys_upstream_new(&u, &o), 0, "upstream on the registry");
  is_int(dsys_upstream_count(u), 2, "loads the two svc instances (not the other type)");
  dsys_instance *recs = NULL;
  size_t nrecs = 0;
  is_int(dsys_upstream_instances(u, &recs, &nrecs), 0, "instances: the upstream's records");
  const dsys_instance *rb = rec_of(recs, nrecs, "b");
  ok(nrecs == 2 && rb && !strcmp(rb->name, "bee") && !strcmp(rb->metadata, "{\"zone\":\"z1\"}") &&
         rb->weight == 2,
     "instances: both members, with the name, metadata and weight registered (%zu)", nrecs);
  dsys_free(recs);
  is_int(dsys_upstream_instances(u, NULL, &nrecs), DSYS_EINVAL, "instances: NULL array -> EINVAL");
  dsys_instance ic = {.id = "c", .type = "svc", .url = C.url};
  dsys_registry_register(reg, &ic);
  is_int(dsys_upstream_count(u), 3, "watch: a new instance joins at once");
  dsys_registry_deregister(reg, "a");
  is_int(dsys_upstream_count(u), 2, "watch: a deregistered instance leaves at once");
  dsys_reply *r;
  int sawa = 0, good = 0;
  for (int i = 0; i < 6; i++)
    if (dsys_upstream_call(u, &(dsys_call){.path = "/who"}, &r) == 0) {
      sawa |= !strcmp(body_of(r), "a");
      good += dsys_reply_status(r) == 200;
      dsys_reply_free(r);
    }
  ok(good == 6 && !sawa, "calls go to the registered instances only");
  /* c turns unhealthy (no heartbeat past the TTL), b keeps beating */
  dsys_clock_advance(clk, 1500 * 1000);
  dsys_registry_heartbeat(reg, "b");
  dsys_registry_sweep(reg);
  is_int(dsys_upstream_count(u), 1, "an unhealthy instance is skipped at once");
  dsys_registry_heartbeat(reg, "c");
  is_int(dsys_upstream_count(u), 2, "healthy again: back");
  dsys_endpoint_stats *s;
  size_t n;
  dsys_upstream_stats(u, &s, &n);
  ok(stat_of(s, n, "b") && stat_of(s, n, "b")->weight == 2, "registry weight used");
  dsys_free(s);
  ib.metadata = "{\"zone\":\"z2\"}"; /* the same URL, new metadata */
  dsys_registry_register(reg, &ib);
  dsys_upstream_instances(u, &recs, &nrecs);
  rb = rec_of(recs, nrecs, "b");
  ok(rb && !strcmp(rb->metadata, "{\"zone\":\"z2\"}"), "instances: a record registered again is the new one");
  dsys_free(recs);
  dsys_instance ib2 = {.id = "b", .type = "svc", .url = A.url};
  dsys_registry_register(reg, &ib2);
  dsys_upstream_stats(u, &s, &n);
  ok(stat_of(s, n, "b") && !strcmp(stat_of(s, n, "b")->url, A.url), "re-registered with a new url: replaced");
  dsys_free(s);
  dsys_instance ib3 = {.id = "b", .type = "other", .url = A.url};
  dsys_registry_register(reg, &ib3);
  is_int(dsys_upstream_count(u), 1, "re-registered under another type: leaves");
  dsys_upstream_add(u, "static", B.url, 1);
  is_int(dsys_upstream_count(u), 2, "static endpoints mix with registry ones");
  dsys_upstream_instances(u, &recs, &nrecs);
  ok(nrecs == 1 && !strcmp(recs[0].id, "c"), "instances: registry members only, not a static endpoint");
  dsys_free(recs);
  dsys_upstream_free(u);
  dsys_registry_close(reg);
}

/* ---- a registry whose reads fail on demand (an etcd read timing out) ---- */

static int rf_get_fail, rf_list_fail; /* how many of the next gets / lists fail */
typedef struct rf {
  dsys_instance in[4];
  int n;
  char *log_id[8];
  uint64_t nlog;
} rf;
static int rf_open(void *st, const char *t, char *e, size_t el) {
  (void)st, (void)t, (void)e, (void)el;
  return 0;
}
static void rf_close(void *st) {
  rf *f = st;
  for (int i = 0; i < f->n; i++) free((char *)f->in[i].id), free((char *)f->in[i].url);
  for (uint64_t i = 0; i < f->nlog; i++) free(f->log_id[i]);
}
static int rf_put(void *st, const dsys_instance *in, int64_t now) {
  rf *f = st;
  if (f->n == 4 || f->nlog == 8) return DSYS_ENOSPC;
  f->in[f->n++] = (dsys_instance){.id = strdup(in->id), .type = "t", .url = strdup(in->url),
                                  .health = DSYS_INSTANCE_HEALTHY, .last_heartbeat_ms = now};
  f->log_id[f->nlog++] = strdup(in->id);
  return 0;
}
static int rf_heartbeat(void *st, const char *id, int64_t now) {
  (void)st, (void)id, (void)now;
  return 0;
}
static int rf_remove(void *st, const char *id) {
  (void)st, (void)id;
  return DSYS_ENOTFOUND;
}
static int rf_get(void *st, const char *id, dsys_instance **out) {
  rf *f = st;
  if (rf_get_fail > 0 && rf_get_fail--) return DSYS_ETIMEDOUT;
  for (int i = 0; i < f->n; i++)
    if (!strcmp(f->in[i].id, id)) return dsys_instances_copy(&f->in[i], 1, out);
  return DSYS_ENOTFOUND;
}
static int rf_list(void *st, const char *type, dsys_instance **out, size_t *n) {
  rf *f = st;
  (void)type;
  if (rf_list_fail > 0 && rf_list_fail--) return DSYS_ETIMEDOUT;
  *n = (size_t)f->n;
  return dsys_instances_copy(f->in, (size_t)f->n, out);
}
static int rf_expire(void *st, int64_t a, int64_t b) {
  (void)st, (void)a, (void)b;
  return 0;
}
static int rf_index(void *st, uint64_t *out) {
  *out = ((rf *)st)->nlog;
  return 0;
}
static int rf_changes(void *st, uint64_t after, dsys_registry_change_fn fn, void *ctx) {
  rf *f = st;
  for (uint64_t i = after; i < f->nlog; i++) {
    dsys_registry_change c = {.index = i + 1, .kind = DSYS_REG_REGISTERED, .id = f->log_id[i],
                              .type = "t"};
    fn(ctx, &c);
  }
  return 0;
}

/* A registry read that fails (timed out) is not "the instance is gone":
 * the upstream reads again, or re-reads the whole service at the next
 * change; a live instance it could not read is not lost for good. */
static void test_registry_read_errors(void) {
  static const dsys_registry_ops ops = {
      .version = DSYS_REGISTRY_OPS_VERSION, .name = "readfail", .state_size = sizeof(rf),
      .open = rf_open, .close = rf_close, .put = rf_put, .heartbeat = rf_heartbeat,
      .remove = rf_remove, .get = rf_get, .list = rf_list, .expire = rf_expire,
      .index = rf_index, .changes = rf_changes};
  dsys_registry *reg;
  dsys_registry_options ro = {.size = sizeof ro, .clock = clk, .ttl_ms = 100000,
                              .reap_ms = 1000000, .sweep_interval_ms = -1};
  if (!ok(dsys_registry_open_ops(&reg, &ops, NULL, &ro, NULL, 0) == 0, "read errors: open"))
    return;
  dsys_upstream_options o = {.size = sizeof o, .clock = clk, .client = rcli, .registry = reg,
                             .retry = &quick_retry, .service = "t"};
  dsys_upstream *u;
  if (!ok(dsys_upstream_new(&u, &o) == 0, "read errors: upstream")) {
    dsys_registry_close(reg);
    return;
  }
  rf_get_fail = 2;
  dsys_registry_register(reg, &(dsys_instance){.id = "x", .type = "t", .url = A.url});
  is_int(dsys_upstream_count(u), 1, "read errors: a get that times out twice is tried again");
  rf_get_fail = 3;
  rf_list_fail = 1;
  dsys_registry_register(reg, &(dsys_instance){.id = "y", .type = "t", .url = B.url});
  is_int(dsys_upstream_count(u), 1, "read errors: y could not be read at all: not there yet");
  dsys_registry_register(reg, &(dsys_instance){.id = "z", .type = "t", .url = C.url});
  is_int(dsys_upstream_count(u), 3,
         "read errors: the next change re-reads the service: y is there (not lost), and z");
  dsys_upstream_free(u);
  dsys_registry_close(reg);
  rf_get_fail = rf_list_fail = 0;

  /* A change missed for good (no later change to re-read at): the
   * periodic re-read brings the instance in within its period. */
  if (!ok(dsys_registry_open_ops(&reg, &ops, NULL, &ro, NULL, 0) == 0, "re-read: open")) return;
  o.registry = reg;
  o.registry_reread_ms = 2000;
  if (!ok(dsys_upstream_new(&u, &o) == 0, "re-read: upstream every 2 s")) {
    dsys_registry_close(reg);
    return;
  }
  rf_get_fail = 3;
  rf_list_fail = 1;
  dsys_registry_register(reg, &(dsys_instance){.id = "w", .type = "t", .url = A.url});
  rf_get_fail = rf_list_fail = 0;
  is_int(dsys_upstream_count(u), 0, "re-read: w could not be read, and no change follows");
  dsys_clock_advance(clk, 1000 * 1000);
  is_int(dsys_upstream_count(u), 0, "re-read: not before the period");
  dsys_clock_advance(clk, 1000 * 1000);
  is_int(dsys_upstream_count(u), 1, "re-read: w is there after 2 s, without a change");
  dsys_upstream_free(u);
  dsys_registry_close(reg);
  dsys_upstream_options bad = {.size = sizeof bad, .clock = clk, .client = rcli, .registry = reg,
                               .service = "t", .registry_reread_ms = 50};
  is_int(dsys_upstream_new(&u, &bad), DSYS_EINVAL, "re-read: a period under 100 ms is refused");
  bad.registry_reread_ms = -2;
  is_int(dsys_upstream_new(&u, &bad), DSYS_EINVAL, "re-read: below -1 is refused");
}

typedef struct churn {
  dsys_upstream *u;
  atomic_int *stop;
  long picks, errors;
} churn;

static void *pick_loop(void *arg) {
  churn *c = arg;
  for (long i = 0; i < 200000 && !atomic_load(c->stop); i++) {
    struct dsys_upstream_pick p;
    if (dsys_upstream_pick(c->u, NULL, 0, NULL, &p)) {
      c->errors++;
      continue;
    }
    c->picks++;
    if (strncmp(p.url, "inproc://", 9)) c->errors += 1000000; /* id/url stay valid */
    dsys_upstream_report(c->u, &p, i % 7 ? 0 : DSYS_ETIMEDOUT, 200);
  }
  return NULL;
}

/* picks and reports from two threads while endpoints come and go */
static void test_churn(void) {
  dsys_upstream *u = mk(&quick_retry, NULL, rcli, 0);
  dsys_upstream_add(u, "a", A.url, 1);
  atomic_int stop = 0;
  churn c[2] = {{u, &stop, 0, 0}, {u, &stop, 0, 0}};
  pthread_t th[2];
  for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, pick_loop, &c[i]);
  for (int i = 0; i < 300; i++) {
    dsys_upstream_add(u, "b", B.url, 1);
    dsys_upstream_add(u, "c", C.url, 2);
    usleep(100);
    dsys_upstream_remove(u, "b");
    dsys_upstream_remove(u, "c");
  }
  atomic_store(&stop, 1);
  for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
  ok(c[0].errors + c[1].errors == 0 && c[0].picks + c[1].picks > 0,
     "2 threads pick/report while b and c are added and removed 300 times: %ld picks, %ld errors",
     c[0].picks + c[1].picks, c[0].errors + c[1].errors);
  dsys_endpoint_stats *s;
  size_t n;
  dsys_upstream_stats(u, &s, &n);
  ok(n == 1 && s[0].in_flight == 0, "nothing left in flight");
  dsys_free(s);
  dsys_upstream_free(u);
}

/* The state of each endpoint's breaker, as letters ('C'losed, 'O'pen,
 * 'H'alf-open, '?'), in the order a, b, c. */
static void breaker_states(dsys_upstream *u, char out[4]) {
  dsys_endpoint_stats *s;
  size_t n;
  memcpy(out, "???", 4);
  if (dsys_upstream_stats(u, &s, &n)) return;
  static const char *ids[] = {"a", "b", "c"};
  for (int i = 0; i < 3; i++) {
    dsys_endpoint_stats *e = stat_of(s, n, ids[i]);
    if (e) out[i] = "COH??"[e->breaker_state];
  }
  dsys_free(s);
}

/* What a, b and c answer (M_...). */
static void set_modes(int a, int b, int c) {
  atomic_store(&A.mode, a);
  atomic_store(&B.mode, b);
  atomic_store(&C.mode, c);
}

/* n calls; how many were answered with status (the others: errors or
 * other statuses). */
static int calls_answered(dsys_upstream *u, int n, int status) {
  int got = 0;
  for (int i = 0; i < n; i++) {
    dsys_reply *r = NULL;
    dsys_upstream_result res;
    if (get(u, "GET", "/who", NULL, 0, &r, &res) == 0) {
      got += dsys_reply_status(r) == status;
      dsys_reply_free(r);
    }
  }
  return got;
}

/* The breakers' shared-cause rule (outlier detection's): when most
 * instances fail together (their database down), no breaker opens, and
 * the instances answer as soon as the cause is gone; one failing alone
 * opens its own. Outlier ejection is held off (a high streak) so that
 * only the breakers decide. */
static void test_breakers_shared(void) {
  dsys_retry_options ro = quick_retry;
  ro.max_attempts = 1;
  dsys_breaker_options bo = {.size = sizeof bo, .window_size = 10, .minimum_calls = 4,
                             .open_wait_ms = 1000, .half_open_calls = 1};
  dsys_health_options ho = {.size = sizeof ho, .consecutive_failures = 1000};
  dsys_upstream_options o = {.size = sizeof o, .service = "svc", .clock = clk, .client = rcli,
                             .retry = &ro, .breaker = &bo, .health = &ho, .seed = 7};
  dsys_upstream *u = NULL;
  if (dsys_upstream_new(&u, &o)) tap_bail("upstream_new");
  dsys_upstream_add(u, "a", A.url, 1);
  dsys_upstream_add(u, "b", B.url, 1);
  dsys_upstream_add(u, "c", C.url, 1);
  char st[4];
  set_modes(M_503, M_503, M_503);
  is_int(calls_answered(u, 30, 503), 30, "shared cause: all three answer 503 to 30 calls");
  breaker_states(u, st);
  is_str(st, "CCC", "shared cause: no breaker opened (10 failures each)");
  set_modes(M_OK, M_OK, M_OK);
  is_int(calls_answered(u, 6, 200), 6, "cause gone: the next calls are answered at once, no wait");
  breaker_states(u, st);
  is_str(st, "CCC", "cause gone: a success on a cleared window opens nothing");

  /* a fails alone: the others answer, its breaker opens */
  set_modes(M_503, M_OK, M_OK);
  for (int i = 0; i < 30 && (breaker_states(u, st), st[0] != 'O'); i++) calls_answered(u, 1, 200);
  is_str(st, "OCC", "one instance failing alone: its breaker opens");
  is_int(calls_answered(u, 4, 200), 4, "... and the others take the calls");

  /* the cause becomes shared while a is open: b and c fail too; a's
   * trial fails like theirs, and a closes instead of staying out */
  set_modes(M_503, M_503, M_503);
  is_int(calls_answered(u, 4, 503), 4, "b and c fail too");
  dsys_clock_advance(clk, 1000 * 1000);
  breaker_states(u, st);
  is_str(st, "HCC", "a half-open after the wait");
  for (int i = 0; i < 6 && (breaker_states(u, st), st[0] == 'H'); i++) calls_answered(u, 1, 503);
  is_str(st, "CCC", "a's failed trial with a shared cause closes it (no second wait)");
  set_modes(M_OK, M_OK, M_OK);
  is_int(calls_answered(u, 3, 200), 3, "cause gone: all three answer at once");
  dsys_upstream_free(u);
}

/* Which 5xx answers count against an endpoint (count_5xx): by default a
 * 507 (a full storage every instance shares) keeps it in rotation, while a
 * 503 opens its breaker; with COUNT_ALL_5XX the 507 does too. */
static void test_count_5xx(void) {
  dsys_retry_options ro = quick_retry;
  ro.max_attempts = 1;
  dsys_breaker_options bo = {.size = sizeof bo, .failures_n = 2, .failures_window_ms = 10000,
                             .open_wait_ms = 1000, .half_open_calls = 1};
  for (int all = 0; all < 2; all++) {
    dsys_upstream_options o = {.size = sizeof o, .service = "svc", .clock = clk, .client = rcli,
                               .retry = &ro, .breaker = &bo, .seed = 7,
                               .count_5xx = all ? DSYS_UPSTREAM_COUNT_ALL_5XX : DSYS_UPSTREAM_COUNT_GATEWAY_5XX};
    dsys_upstream *u = NULL;
    if (dsys_upstream_new(&u, &o)) tap_bail("upstream_new");
    dsys_upstream_add(u, "a", A.url, 1);
    atomic_store(&A.mode, M_507);
    dsys_reply *r = NULL;
    dsys_upstream_result res;
    int n507 = 0;
    for (int i = 0; i < 4; i++)
      if (get(u, "GET", "/who", NULL, 0, &r, &res) == 0) {
        n507 += dsys_reply_status(r) == 507;
        dsys_reply_free(r);
      }
    dsys_endpoint_stats *s;
    size_t n;
    dsys_upstream_stats(u, &s, &n);
    if (!all) {
      is_int(n507, 4, "count_5xx default: four 507 answers passed on");
      is_int(s[0].breaker_state, DSYS_BREAKER_CLOSED, "count_5xx default: 507s do not open the breaker");
      ok(s[0].usable && !s[0].ejected, "count_5xx default: the endpoint stays in rotation");
    } else {
      is_int(s[0].breaker_state, DSYS_BREAKER_OPEN, "COUNT_ALL_5XX: two 507s open the breaker");
      ok(!s[0].usable, "COUNT_ALL_5XX: out of rotation");
    }
    dsys_free(s);
    dsys_upstream_free(u);
  }
  atomic_store(&A.mode, M_OK);
  dsys_upstream_options bad = {.size = sizeof bad, .count_5xx = 2};
  dsys_upstream *u = NULL;
  is_int(dsys_upstream_new(&u, &bad), DSYS_EINVAL, "count_5xx out of range -> DSYS_EINVAL");
}

int main(void) {
  dsys_log_set_level(DSYS_LOG_ERROR);
  if (dsys_clock_fake_new(&clk, 1700000000000LL)) tap_bail("clock");
  dsys_client_options co = {.size = sizeof co};
  if (dsys_client_new(&rcli, &co)) tap_bail("client");
  srv_start(&A, "a");
  srv_start(&B, "b");
  srv_start(&C, "c");
  test_set();
  test_retries();
  test_budget();
  test_breakers();
  test_count_5xx();
  test_breakers_shared();
  test_active_checks();
  test_stats();
  test_async();
  test_timeouts_and_free();
  test_late_writes();
  test_registry();
  test_registry_read_errors();
  test_churn();
  is_int(dsys_upstream_new(NULL, NULL), DSYS_EINVAL, "new(NULL) -> EINVAL");
  dsys_upstream_free(NULL);
  dsys_client_free(rcli);
  srv_stop(&A);
  srv_stop(&B);
  srv_stop(&C);
  dsys_clock_free(clk);
  return tap_done();
}
