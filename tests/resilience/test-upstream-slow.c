/*
 * dsys_upstream and an instance that hangs or is slow, on an event-loop
 * thread (the gateway's path) against real http:// servers on port 0 whose
 * handlers can stall (hold every request, /health too: a stopped process)
 * or answer late:
 *  - the adaptive per-try timeout follows the answers' latency (floor);
 *  - a GET on the stalled instance is given up after it and retried on the
 *    other; a POST keeps the policy's per-try timeout (a late answer still
 *    comes); consecutive timeouts eject the instance for slowness; it stays
 *    out while its checks hang and is back soon after it answers;
 *  - a streamed answer may run past the adaptive timeout (it bounds the
 *    head); the synchronous call (libcurl) gives up on the stalled one too;
 *  - hedging: a second attempt after the delay wins over a slow first one,
 *    the loser is dropped without counting against its instance; POSTs and
 *    quick answers are not hedged;
 *  - option validation.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "tap.h"
#include "transport/evloop.h"

enum { FAST, STALL, SLOW };

typedef struct backend {
  const char *name;
  dsys_server *srv;
  const char *url;
  atomic_int mode;
  pthread_mutex_t mu;
  dsys_request *held[256];
  int nheld;
} backend;

static void answer(dsys_request *req, const char *body) {
  dsys_respond(req, 200, "text/plain", body, strlen(body));
}

/* Hold the request (STALL) or answer: at once, or after 300 ms (SLOW). */
static void late(void *ud) { answer(ud, "late"); }
static void serve(dsys_request *req, backend *b, const char *body) {
  int m = atomic_load(&b->mode);
  if (m == FAST) {
    answer(req, body);
    return;
  }
  dsys_request_defer(req);
  if (m == SLOW) {
    dsys_timer_add(dsys_clock_real(), 300000, late, req, NULL);
    return;
  }
  pthread_mutex_lock(&b->mu);
  if (b->nheld < 256) b->held[b->nheld++] = req;
  else answer(req, "overflow");
  pthread_mutex_unlock(&b->mu);
}
static void h_data(dsys_request *req, void *ud) { serve(req, ud, ((backend *)ud)->name); }
static void h_health(dsys_request *req, void *ud) { serve(req, ud, "ok"); }
static void sse_rest(void *ud) {
  dsys_stream_write(ud, "data: 2\n\n", 9);
  dsys_stream_end(ud);
}
static void h_sse(dsys_request *req, void *ud) {
  dsys_respond_stream(req, 200, "text/event-stream");
  dsys_stream_write(req, "data: 1\n\n", 9);
  dsys_timer_add(dsys_clock_real(), 150000, sse_rest, req, NULL);
}

/* Answer every held request ("late"). */
static void release(backend *b) {
  pthread_mutex_lock(&b->mu);
  for (int i = 0; i < b->nheld; i++) answer(b->held[i], "late");
  b->nheld = 0;
  pthread_mutex_unlock(&b->mu);
}

static void release_cb(void *ud) { release(ud); }

static void start_backend(backend *b, const char *name) {
  b->name = name;
  pthread_mutex_init(&b->mu, NULL);
  dsys_server_options o = {.size = sizeof o, .threads = 4};
  if (dsys_server_new(&b->srv, &o)) tap_bail("server_new");
  dsys_server_route(b->srv, "GET", "/data", h_data, b);
  dsys_server_route(b->srv, "POST", "/data", h_data, b);
  dsys_server_route(b->srv, "GET", "/health", h_health, b);
  dsys_server_route(b->srv, "GET", "/sse", h_sse, b);
  if (dsys_server_listen(b->srv, "http://127.0.0.1:0")) tap_bail("listen");
  b->url = dsys_server_url(b->srv, 0);
}

/* ---- calls from a loop on this thread ---- */

static dsysi_loop *loop;

typedef struct ucase {
  dsys_upstream *u;
  dsys_call call;
  int done, err, status, start_rc, chunks;
  uint32_t attempts;
  char body[64];
  int64_t took_ms, t0;
} ucase;

static void guard(dsysi_loop *l, void *ud) { dsysi_loop_stop(l); }
static void run_loop(int64_t max_us) {
  uint64_t g = dsysi_loop_timer(loop, max_us, guard, NULL);
  dsysi_loop_run(loop);
  dsysi_loop_cancel(loop, g);
}

static void up_done(int err, dsys_reply *reply, const dsys_upstream_result *rs, void *ud) {
  ucase *c = ud;
  c->done++;
  c->err = err;
  c->took_ms = dsys_clock_now_ms(dsys_clock_real()) - c->t0;
  c->attempts = rs ? rs->attempts : 0;
  if (reply) {
    size_t n;
    const char *b = dsys_reply_body(reply, &n);
    c->status = dsys_reply_status(reply);
    snprintf(c->body, sizeof c->body, "%.*s", (int)n, b);
  }
  dsys_reply_free(reply);
  dsysi_loop_stop(loop);
}
static void up_kick(dsysi_loop *l, void *ud) {
  ucase *c = ud;
  c->t0 = dsys_clock_now_ms(dsys_clock_real());
  c->start_rc = dsys_upstream_send(c->u, &c->call, up_done, c);
  if (c->start_rc) dsysi_loop_stop(l);
}
static void on_chunk(const void *d, size_t n, void *ud) { ((ucase *)ud)->chunks++; }

/* Send method path from the loop and run it until the call completes. */
static ucase *send_wait(ucase *c, dsys_upstream *u, const char *method, const char *path) {
  memset(c, 0, sizeof *c);
  c->u = u;
  c->call = (dsys_call){.size = sizeof c->call, .method = method, .path = path,
                        .body = strcmp(method, "POST") ? NULL : "x",
                        .body_len = strcmp(method, "POST") ? 0 : 1};
  if (!strcmp(path, "/sse")) {
    c->call.on_chunk = on_chunk;
    c->call.chunk_ud = c;
  }
  dsysi_loop_post(loop, up_kick, c);
  run_loop(10000000);
  return c;
}

static dsys_endpoint_stats ep_stats(dsys_upstream *u, const char *id) {
  dsys_endpoint_stats *st = NULL, out = {0};
  size_t n = 0;
  dsys_upstream_stats(u, &st, &n);
  for (size_t i = 0; i < n; i++)
    if (!strcmp(st[i].id, id)) out = st[i];
  out.id = out.url = NULL; /* they pointed into st */
  dsys_free(st);
  return out;
}

static dsys_upstream_latency lat(dsys_upstream *u) {
  dsys_upstream_latency l = {.size = sizeof l};
  dsys_upstream_latency_get(u, &l);
  return l;
}

static backend b1, b2;

static void test_adaptive(void) {
  dsys_retry_options ro = {.size = sizeof ro, .per_try_timeout_ms = 3000, .deadline_ms = 10000,
                           .backoff_base_ms = 1, .backoff_cap_ms = 1, .budget_off = 1};
  dsys_health_options ho = {.size = sizeof ho, .interval_ms = 5000, .timeout_ms = 250,
                            .start_healthy = 1, .fall = 100, .consecutive_slow = 3,
                            .slow_ejection_ms = 200, .down_interval_ms = 50};
  dsys_upstream_options uo = {.size = sizeof uo, .service = "t", .retry = &ro, .health = &ho,
                              .health_check = 1, .adaptive_timeout = 1, .timeout_min_ms = 60,
                              .latency_window_ms = 2000, .latency_min_samples = 10};
  dsys_upstream *u;
  is_int(dsys_upstream_new(&u, &uo), 0, "adaptive: upstream with adaptive per-try timeouts");
  dsys_upstream_add(u, "b2", b2.url, 1);
  dsys_upstream_add(u, "b1", b1.url, 1);
  is_int((int)lat(u).try_timeout_ms, 0, "adaptive: no timeout before any answer");

  /* warm up: answers until the window yields a timeout (derived every
   * 100 ms; bounded) */
  ucase c;
  int n = 0, bad = 0;
  int64_t w0 = dsys_clock_now_ms(dsys_clock_real());
  for (; dsys_clock_now_ms(dsys_clock_real()) - w0 < 3000 && lat(u).try_timeout_ms == 0; n++)
    bad += send_wait(&c, u, "GET", "/data")->status != 200;
  dsys_upstream_latency l = lat(u);
  ok(bad == 0 && l.try_timeout_ms >= 60 && l.try_timeout_ms < 3000 && l.window_answers >= 10,
     "adaptive: after %d answers: %lld ms (p99 %lld us x 4, floor 60 ms)", n,
     (long long)l.try_timeout_ms, (long long)l.window_p_us);
  int64_t to = l.try_timeout_ms;

  /* b2 hangs: a POST on it keeps the policy's per-try timeout */
  atomic_store(&b2.mode, STALL);
  dsys_upstream_reset_rr(u);
  dsys_timer_add(dsys_clock_real(), 400000, release_cb, &b2, NULL);
  send_wait(&c, u, "POST", "/data");
  ok(c.status == 200 && !strcmp(c.body, "late") && c.took_ms >= 380,
     "adaptive: a POST is not cut by it (its late answer came after %lld ms)", (long long)c.took_ms);

  /* GETs: given up on b2 after the adaptive timeout, retried on b1 */
  int all_ok = 1, retried = 0;
  int64_t worst = 0;
  uint64_t t0 = lat(u).attempt_timeouts;
  for (int i = 0; i < 12 && !lat(u).slow_ejections; i++) {
    dsys_upstream_reset_rr(u);
    send_wait(&c, u, "GET", "/data");
    all_ok &= c.status == 200 && !strcmp(c.body, "b1");
    retried += c.attempts == 2;
    if (c.took_ms > worst) worst = c.took_ms;
  }
  l = lat(u);
  ok(all_ok && retried >= 2 && worst < to + 1000,
     "adaptive: GETs on the hung instance answered by the other (%d retried, slowest %lld ms, "
     "policy per-try 3000 ms)", retried, (long long)worst);
  ok(l.attempt_timeouts - t0 >= 2, "adaptive: attempt timeouts counted (%llu)",
     (unsigned long long)(l.attempt_timeouts - t0));
  dsys_endpoint_stats s2 = ep_stats(u, "b2");
  ok(l.slow_ejections == 1 && s2.ejected && !s2.usable,
     "adaptive: consecutive timeouts ejected b2 for slowness");

  /* out of rotation: GETs go to b1 at the first attempt */
  int first = 0;
  for (int i = 0; i < 6; i++) first += send_wait(&c, u, "GET", "/data")->attempts == 1 && c.status == 200;
  is_int(first, 6, "adaptive: while ejected, every GET answered at its first attempt");

  /* past slow_ejection_ms: still out, its checks hang */
  run_loop(500000);
  s2 = ep_stats(u, "b2");
  ok(s2.ejected && !s2.usable, "adaptive: still out after 500 ms while its checks hang");

  /* it answers again: back in rotation by a passing check */
  atomic_store(&b2.mode, FAST);
  release(&b2);
  int64_t r0 = dsys_clock_now_ms(dsys_clock_real()), back = -1;
  for (int i = 0; i < 400 && back < 0; i++) {
    if (ep_stats(u, "b2").usable) back = dsys_clock_now_ms(dsys_clock_real()) - r0;
    else run_loop(5000);
  }
  ok(back >= 0 && back < 1000, "adaptive: back in rotation %lld ms after it answers again", (long long)back);

  /* a streamed answer runs past the adaptive timeout: it bounds the head */
  send_wait(&c, u, "GET", "/sse");
  ok(c.err == 0 && c.status == 200 && c.chunks >= 1 && c.attempts == 1 && c.took_ms >= 140,
     "adaptive: a stream of %lld ms (head at once) is not cut (%s, %d chunks)", (long long)c.took_ms,
     dsys_strerror(c.err), c.chunks);

  /* the synchronous call (libcurl, off the loop) gives up on it too */
  atomic_store(&b2.mode, STALL);
  dsys_upstream_reset_rr(u);
  dsys_call sc = {.size = sizeof sc, .method = "GET", .path = "/data"};
  dsys_reply *r = NULL;
  dsys_upstream_result res = {.size = sizeof res};
  int64_t s0 = dsys_clock_now_ms(dsys_clock_real());
  int rc = dsys_upstream_call_ex(u, &sc, &r, &res);
  int64_t took = dsys_clock_now_ms(dsys_clock_real()) - s0;
  ok(rc == 0 && r && dsys_reply_status(r) == 200 && res.attempts == 2 && took < to + 1000,
     "adaptive: dsys_upstream_call retried on the other after %lld ms (%s)", (long long)took,
     dsys_strerror(rc));
  dsys_reply_free(r);
  atomic_store(&b2.mode, FAST);
  release(&b2);
  run_loop(100000);
  dsys_upstream_free(u);
}

static void test_hedge(void) {
  dsys_retry_options ro = {.size = sizeof ro, .per_try_timeout_ms = 3000, .budget_off = 1};
  dsys_upstream_options uo = {.size = sizeof uo, .service = "h", .retry = &ro, .hedge = 1,
                              .hedge_delay_ms = 30};
  dsys_upstream *u;
  is_int(dsys_upstream_new(&u, &uo), 0, "hedge: upstream hedging after 30 ms");
  dsys_upstream_add(u, "b2", b2.url, 1);
  dsys_upstream_add(u, "b1", b1.url, 1);
  is_int((int)lat(u).hedge_delay_ms, 30, "hedge: the fixed delay");
  atomic_store(&b2.mode, SLOW);
  dsys_upstream_reset_rr(u);
  ucase c;
  send_wait(&c, u, "GET", "/data");
  dsys_upstream_latency l = lat(u);
  ok(c.status == 200 && !strcmp(c.body, "b1") && c.took_ms < 250 && c.attempts == 2,
     "hedge: the hedge on b1 answered first (%lld ms, %u attempts, %s)", (long long)c.took_ms,
     c.attempts, c.body);
  ok(l.hedges == 1 && l.hedges_won == 1, "hedge: counted sent and won (%llu, %llu)",
     (unsigned long long)l.hedges, (unsigned long long)l.hedges_won);
  /* the slow first attempt answers later: dropped, not a failure of b2 */
  dsys_endpoint_stats s2 = {0};
  for (int i = 0; i < 200; i++) {
    s2 = ep_stats(u, "b2");
    if (!s2.in_flight) break;
    run_loop(5000);
  }
  ok(s2.in_flight == 0 && s2.failures == 0, "hedge: the loser ended without counting against b2");

  dsys_upstream_reset_rr(u);
  send_wait(&c, u, "POST", "/data");
  ok(c.status == 200 && !strcmp(c.body, "late") && lat(u).hedges == 1,
     "hedge: a POST is never hedged (waited %lld ms for b2)", (long long)c.took_ms);
  atomic_store(&b2.mode, FAST);
  for (int i = 0; i < 6; i++) send_wait(&c, u, "GET", "/data");
  is_int((int)lat(u).hedges, 1, "hedge: quick answers are not hedged");
  dsys_upstream_free(u);

  /* the delay from the window's percentile once it has answers */
  uo.hedge_delay_ms = 0;
  uo.latency_min_samples = 5;
  is_int(dsys_upstream_new(&u, &uo), 0, "hedge: delay from the p95");
  dsys_upstream_add(u, "b1", b1.url, 1);
  is_int((int)lat(u).hedge_delay_ms, -1, "hedge: none before any answer");
  int64_t w0 = dsys_clock_now_ms(dsys_clock_real());
  while (dsys_clock_now_ms(dsys_clock_real()) - w0 < 3000 && lat(u).hedge_delay_ms < 0)
    send_wait(&c, u, "GET", "/data");
  dsys_upstream_latency hl = lat(u);
  ok(hl.hedge_delay_ms >= 1, "hedge: %lld ms from the %llu answers of the window", (long long)hl.hedge_delay_ms,
     (unsigned long long)hl.window_answers);
  dsys_upstream_free(u);
}

static void test_options(void) {
  dsys_upstream *u = NULL;
  dsys_upstream_options o = {.size = sizeof o, .timeout_factor = 0.5};
  is_int(dsys_upstream_new(&u, &o), DSYS_EINVAL, "options: factor below 1 -> EINVAL");
  o = (dsys_upstream_options){.size = sizeof o, .timeout_percentile = 101};
  is_int(dsys_upstream_new(&u, &o), DSYS_EINVAL, "options: percentile over 100 -> EINVAL");
  o = (dsys_upstream_options){.size = sizeof o, .timeout_min_ms = 500, .timeout_max_ms = 100};
  is_int(dsys_upstream_new(&u, &o), DSYS_EINVAL, "options: floor over ceiling -> EINVAL");
  o = (dsys_upstream_options){.size = sizeof o, .latency_window_ms = 50};
  is_int(dsys_upstream_new(&u, &o), DSYS_EINVAL, "options: window under 100 ms -> EINVAL");
  is_int(dsys_upstream_new(&u, NULL), 0, "options: defaults");
  dsys_upstream_latency l = {0};
  is_int(dsys_upstream_latency_get(u, &l), DSYS_EINVAL, "latency_get: size unset -> EINVAL");
  l = lat(u);
  ok(l.try_timeout_ms == 0 && l.hedge_delay_ms == -1, "latency_get: off by default");
  dsys_upstream_free(u);
}

int main(void) {
  dsys_log_set_level(DSYS_LOG_ERROR);
  start_backend(&b1, "b1");
  start_backend(&b2, "b2");
  if (dsysi_loop_new(&loop)) tap_bail("loop");
  test_options();
  test_adaptive();
  test_hedge();
  dsysi_loop_free(loop);
  release(&b2);
  dsys_server_free(b1.srv);
  dsys_server_free(b2.srv);
  return tap_done();
}
