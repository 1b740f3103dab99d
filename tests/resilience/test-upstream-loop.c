/*
 * dsys_upstream on an event-loop thread, and the loop's HTTP/1.1 dialer it
 * uses there (dsysi_h1_dial), against real http:// servers on port 0:
 *  - the dialer: Host from the URL when the call has none, the URL's base
 *    path, a body both ways, a streamed answer (on_head / on_body), its
 *    refusals (no loop, https), an exchange in flight when the loop is
 *    freed (DSYS_ECANCELED, exactly once);
 *  - dsys_upstream_send from the loop: completion on the loop's thread, a
 *    refused endpoint retried at once on another, a 503 retried after a
 *    backoff on the loop's timer, the request copied, a malformed call
 *    refused before any pick, a call waiting for a backoff when the loop
 *    is freed (DSYS_ECANCELED, and dsys_upstream_free does not hang).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "net.h"
#include "tap.h"
#include "resilience/upstream_int.h"
#include "transport/h1client.h"

static atomic_int flaky_left; /* answers of /flaky that are 503 */
static atomic_int hits;

static void h_who(dsys_request *req, void *ud) {
  atomic_fetch_add(&hits, 1);
  const char *host = dsys_request_header(req, "Host");
  char out[256];
  snprintf(out, sizeof out, "%s %s host=%s", (const char *)ud, dsys_request_target(req),
           host ? host : "(none)");
  dsys_respond(req, 200, "text/plain", out, strlen(out));
}
static void h_echo(dsys_request *req, void *ud) {
  size_t n;
  const void *b = dsys_request_body(req, &n);
  dsys_response_header(req, "X-Seen", dsys_request_header(req, "X-Tag") ? dsys_request_header(req, "X-Tag") : "");
  dsys_respond(req, 201, "application/octet-stream", b, n);
}
static void h_flaky(dsys_request *req, void *ud) {
  atomic_fetch_add(&hits, 1);
  if (atomic_fetch_sub(&flaky_left, 1) > 0) dsys_respond_error(req, 503, "busy", "try later");
  else dsys_respond(req, 200, "text/plain", "fine", 4);
}
static void h_stream(dsys_request *req, void *ud) {
  dsys_respond_stream(req, 200, "text/event-stream");
  dsys_stream_write(req, "data: 1\n\n", 9);
  dsys_stream_write(req, "data: 2\n\n", 9);
  dsys_stream_end(req);
}
static void later(void *ud) { dsys_respond(ud, 200, "text/plain", "late", 4); }
static void h_slow(dsys_request *req, void *ud) {
  dsys_request_defer(req);
  dsys_timer_add(dsys_clock_real(), 2000000, later, req, NULL);
}

static dsys_server *backend(const char *name) {
  dsys_server *s;
  dsys_server_options o = {.size = sizeof o, .threads = 2};
  if (dsys_server_new(&s, &o)) tap_bail("server_new");
  dsys_server_route(s, "GET", "/who", h_who, (void *)name);
  dsys_server_route(s, "GET", "/base/who", h_who, (void *)name);
  dsys_server_route(s, "POST", "/echo", h_echo, NULL);
  dsys_server_route(s, "GET", "/flaky", h_flaky, NULL);
  dsys_server_route(s, "GET", "/stream", h_stream, NULL);
  dsys_server_route(s, "GET", "/slow", h_slow, NULL);
  if (dsys_server_listen(s, "http://127.0.0.1:0")) tap_bail("listen");
  return s;
}

/* ---- a loop on this thread; each case posts its start and runs it ---- */

static dsysi_loop *loop;

typedef struct res {
  int done, err, status, on_loop, streamed_pieces, head_status;
  uint32_t attempts;
  char body[512];
  char seen[64];
  dsysi_buf pieces;
} res;

static void guard(dsysi_loop *l, void *ud) { dsysi_loop_stop(l); }
static void run_loop(int64_t max_us) {
  uint64_t g = dsysi_loop_timer(loop, max_us, guard, NULL);
  dsysi_loop_run(loop);
  dsysi_loop_cancel(loop, g);
}

static void keep(res *r, int err, dsys_reply *reply) {
  r->done++;
  r->err = err;
  r->on_loop = dsysi_loop_current() == loop;
  if (reply) {
    size_t n;
    const char *b = dsys_reply_body(reply, &n);
    r->status = dsys_reply_status(reply);
    snprintf(r->body, sizeof r->body, "%.*s", (int)n, b);
    const char *s = dsys_reply_header(reply, "X-Seen");
    snprintf(r->seen, sizeof r->seen, "%s", s ? s : "");
  }
}

/* dialer cases */
typedef struct dcase {
  dsys_call call;
  dsysi_dial_opts o;
  res r;
  int start_rc;
} dcase;

static void dial_done(int err, dsys_reply *reply, void *ud) {
  dcase *c = ud;
  keep(&c->r, err, reply);
  dsys_reply_free(reply);
  dsysi_loop_stop(loop);
}
static int dial_head(void *ud, const dsys_reply *head) {
  dcase *c = ud;
  c->r.head_status = dsys_reply_status(head);
  return 1; /* stream */
}
static int dial_body(void *ud, const void *d, size_t n) {
  dcase *c = ud;
  c->r.streamed_pieces++;
  return dsysi_buf_append(&c->r.pieces, d, n);
}
static void dial_kick(dsysi_loop *l, void *ud) {
  dcase *c = ud;
  c->start_rc = dsysi_h1_dial(&c->call, &c->o, dial_done, c);
  if (c->start_rc) dsysi_loop_stop(l);
}
static dcase *dial(dcase *c) {
  dsysi_loop_post(loop, dial_kick, c);
  run_loop(5000000);
  return c;
}

/* upstream cases */
typedef struct ucase {
  dsys_upstream *u;
  dsys_call call;
  res r;
  int start_rc;
  char path[32], tag[16], body[16]; /* the caller's buffers, changed after send */
  int stop_on_done;
} ucase;

static void up_done(int err, dsys_reply *reply, const dsys_upstream_result *rs, void *ud) {
  ucase *c = ud;
  keep(&c->r, err, reply);
  c->r.attempts = rs ? rs->attempts : 0;
  dsys_reply_free(reply);
  if (c->stop_on_done && dsysi_loop_current()) dsysi_loop_stop(loop);
}
static void up_kick(dsysi_loop *l, void *ud) {
  ucase *c = ud;
  c->start_rc = dsys_upstream_send(c->u, &c->call, up_done, c);
  /* the request is copied: the caller may reuse its buffers at once */
  memset(c->path, 'x', sizeof c->path - 1);
  memset(c->tag, 'y', sizeof c->tag - 1);
  memset(c->body, 'z', sizeof c->body - 1);
  if (c->start_rc) dsysi_loop_stop(l);
}

/* A seed whose first backoff (attempt 1) is at least lo ms. */
static uint64_t seed_for(const dsys_retry_options *ro, int64_t lo) {
  for (uint64_t s = 1; s < 1000; s++) {
    dsys_retry_options o = *ro;
    o.seed = s;
    dsys_retry *r;
    if (dsys_retry_new(&r, &o)) tap_bail("retry_new");
    int64_t d = dsys_retry_backoff_ms(r, 1);
    dsys_retry_free(r);
    if (d >= lo) return s;
  }
  tap_bail("no seed");
  return 0;
}

static char dead_url[64];

int main(void) {
  dsys_log_set_level(DSYS_LOG_ERROR);
  dsys_server *b1 = backend("b1");
  const char *u1 = dsys_server_url(b1, 0);
  const char *a1 = strstr(u1, "://") + 3;
  snprintf(dead_url, sizeof dead_url, "http://127.0.0.1:%d", test_free_port());
  if (dsysi_loop_new(&loop)) tap_bail("loop");

  /* ---- the dialer ---- */
  char hostv[128];
  snprintf(hostv, sizeof hostv, "b1 /who host=%s", a1);
  dcase c1 = {.call = {.size = sizeof c1.call, .method = "GET", .url = u1, .path = "/who"}};
  dial(&c1);
  is_int(c1.start_rc, 0, "dial: started on the loop");
  ok(c1.r.done == 1 && c1.r.err == 0 && c1.r.status == 200, "dial: GET answered 200 (%s)", dsys_strerror(c1.r.err));
  is_str(c1.r.body, hostv, "dial: Host taken from the URL when the call has none");
  ok(c1.r.on_loop, "dial: completion on the loop's thread");

  dsys_header hh[] = {{"Host", "front.example"}};
  dcase c2 = {.call = {.size = sizeof c2.call, .method = "GET", .url = u1, .path = "/who",
                       .headers = hh, .nheaders = 1}};
  dial(&c2);
  is_str(c2.r.body, "b1 /who host=front.example", "dial: the call's own Host is sent as given");

  char based[128];
  snprintf(based, sizeof based, "%s/base", u1);
  dcase c3 = {.call = {.size = sizeof c3.call, .method = "GET", .url = based, .path = "/who?q=1"}};
  dial(&c3);
  ok(c3.r.status == 200 && strstr(c3.r.body, "/base/who?q=1"), "dial: the URL's base path goes first (%s)", c3.r.body);

  dsys_header th[] = {{"X-Tag", "t1"}};
  dcase c4 = {.call = {.size = sizeof c4.call, .method = "POST", .url = u1, .path = "/echo",
                       .headers = th, .nheaders = 1, .body = "payload", .body_len = 7}};
  dial(&c4);
  ok(c4.r.status == 201 && !strcmp(c4.r.body, "payload") && !strcmp(c4.r.seen, "t1"),
     "dial: POST body and headers reach the server, answer headers come back");

  dcase c5 = {.call = {.size = sizeof c5.call, .method = "GET", .url = u1, .path = "/stream"},
              .o = {.on_head = dial_head, .on_body = dial_body}};
  dial(&c5);
  ok(c5.r.err == 0 && c5.r.head_status == 200 && c5.r.status == 200 && c5.r.body[0] == '\0',
     "dial: on_head chose streaming; the reply comes without a body");
  ok(c5.r.pieces.len == 18 && !memcmp(c5.r.pieces.data, "data: 1\n\ndata: 2\n\n", 18),
     "dial: the body went to on_body (%d pieces)", c5.r.streamed_pieces);
  dsysi_buf_free(&c5.r.pieces);

  dcase c6 = {.call = {.size = sizeof c6.call, .method = "GET", .url = u1, .path = "/who"},
              .o = {.max_response = 4}};
  dial(&c6);
  is_int(c6.r.err, DSYS_ETOOBIG, "dial: a body over max_response -> DSYS_ETOOBIG");

  dsys_call off = {.size = sizeof off, .method = "GET", .url = u1, .path = "/who"};
  is_int(dsysi_h1_dial(&off, NULL, dial_done, NULL), DSYS_ESTATE, "dial: off a loop thread -> DSYS_ESTATE");
  ok(dsysi_loop_dialer_find(u1) == NULL, "no loop dialer off a loop thread");
  dcase c7 = {.call = {.size = sizeof c7.call, .method = "GET", .url = "https://127.0.0.1:1", .path = "/"}};
  dial(&c7);
  is_int(c7.start_rc, DSYS_ESCHEME, "dial: https -> DSYS_ESCHEME (libcurl's)");

  /* ---- dsys_upstream_send from the loop ---- */
  dsys_upstream *u;
  dsys_upstream_options uo = {.size = sizeof uo, .service = "t"};
  if (dsys_upstream_new(&u, &uo)) tap_bail("upstream_new");
  dsys_upstream_add(u, "dead", dead_url, 1); /* round robin starts here */
  dsys_upstream_add(u, "b1", u1, 1);
  ucase s1 = {.u = u, .stop_on_done = 1};
  snprintf(s1.path, sizeof s1.path, "/echo");
  snprintf(s1.tag, sizeof s1.tag, "tag-1");
  snprintf(s1.body, sizeof s1.body, "hello");
  dsys_header sh[] = {{"X-Tag", s1.tag}};
  s1.call = (dsys_call){.size = sizeof s1.call, .method = "POST", .path = s1.path, .headers = sh,
                        .nheaders = 1, .body = s1.body, .body_len = 5};
  dsysi_loop_post(loop, up_kick, &s1);
  run_loop(5000000);
  is_int(s1.start_rc, 0, "send: started from the loop");
  ok(s1.r.done == 1 && s1.r.err == 0 && s1.r.status == 201, "send: answered (%s, %d)", dsys_strerror(s1.r.err), s1.r.status);
  ok(s1.r.on_loop, "send: completion on the loop's thread (the loop's dialer, not libcurl's thread)");
  is_int((int)s1.r.attempts, 2, "send: the refused endpoint was retried at once on the other");
  ok(!strcmp(s1.r.body, "hello") && !strcmp(s1.r.seen, "tag-1"),
     "send: the request was copied (the caller's buffers changed after send)");

  ucase s2 = {.u = u};
  dsys_header bad[] = {{"X-Bad", "a\r\nInjected: 1"}};
  s2.call = (dsys_call){.size = sizeof s2.call, .path = "/who", .headers = bad, .nheaders = 1};
  dsys_upstream_totals t0, t1;
  dsys_upstream_totals_get(u, &t0);
  dsysi_loop_post(loop, up_kick, &s2);
  run_loop(2000000);
  dsys_upstream_totals_get(u, &t1);
  ok(s2.start_rc == DSYS_EINVAL && s2.r.done == 0 && t1.picks == t0.picks,
     "send: a header value with CR LF -> DSYS_EINVAL before any pick, no callback");
  dsys_upstream_free(u);

  /* a 503 retried after a backoff on the loop's timer */
  dsys_retry_options ro = {.size = sizeof ro, .backoff_base_ms = 200, .backoff_cap_ms = 200,
                           .budget_off = 1};
  ro.seed = seed_for(&ro, 50);
  int64_t first_delay;
  {
    dsys_retry *r;
    dsys_retry_new(&r, &ro);
    first_delay = dsys_retry_backoff_ms(r, 1);
    dsys_retry_free(r);
  }
  dsys_upstream_options bo = {.size = sizeof bo, .service = "t", .retry = &ro};
  if (dsys_upstream_new(&u, &bo)) tap_bail("upstream_new");
  dsys_upstream_add(u, "b1", u1, 1);
  atomic_store(&flaky_left, 1);
  ucase s3 = {.u = u, .stop_on_done = 1};
  snprintf(s3.path, sizeof s3.path, "/flaky");
  s3.call = (dsys_call){.size = sizeof s3.call, .path = s3.path};
  int64_t t_start = dsys_clock_now_ms(dsys_clock_real());
  dsysi_loop_post(loop, up_kick, &s3);
  run_loop(5000000);
  int64_t took = dsys_clock_now_ms(dsys_clock_real()) - t_start;
  ok(s3.r.done == 1 && s3.r.status == 200 && s3.r.attempts == 2,
     "backoff: 503 then 200 after a retry (%d, %u attempts)", s3.r.status, s3.r.attempts);
  ok(s3.r.on_loop, "backoff: the retry ran on the loop (its timer), completion there too");
  ok(took >= first_delay, "backoff: waited the backoff (%lld ms >= %lld ms)", (long long)took,
     (long long)first_delay);
  dsys_upstream_free(u);

  /* a call waiting for a backoff when the loop is freed: canceled */
  dsys_retry_options lo = {.size = sizeof lo, .backoff_base_ms = 5000, .backoff_cap_ms = 5000,
                           .deadline_ms = 60000, .budget_off = 1};
  lo.seed = seed_for(&lo, 2000);
  if (dsys_upstream_new(&u, &(dsys_upstream_options){.size = sizeof bo, .service = "t", .retry = &lo}))
    tap_bail("upstream_new");
  dsys_upstream_add(u, "b1", u1, 1);
  atomic_store(&flaky_left, 1000);
  ucase s4 = {.u = u};
  snprintf(s4.path, sizeof s4.path, "/flaky");
  s4.call = (dsys_call){.size = sizeof s4.call, .path = s4.path};
  dsysi_loop_post(loop, up_kick, &s4);
  run_loop(500000); /* the first 503 arrives; the backoff (>= 2 s) is pending */
  is_int(s4.r.done, 0, "loop freed: the call still waits for its backoff");

  /* and an exchange in flight on the loop's dialer */
  dcase c8 = {.call = {.size = sizeof c8.call, .method = "GET", .url = u1, .path = "/slow"}};
  dsysi_loop_post(loop, dial_kick, &c8);
  run_loop(200000);
  is_int(c8.r.done, 0, "loop freed: an exchange is in flight");
  dsysi_loop_free(loop);
  loop = NULL;
  ok(s4.r.done == 1 && s4.r.err == DSYS_ECANCELED, "loop freed: the waiting call ends DSYS_ECANCELED (%s)",
     dsys_strerror(s4.r.err));
  ok(c8.r.done == 1 && c8.r.err == DSYS_ECANCELED, "loop freed: the exchange ends DSYS_ECANCELED, once");
  dsys_upstream_free(u); /* returns: nothing of it is left in flight */
  ok(1, "dsys_upstream_free returned after its loop was freed");

  dsys_server_free(b1);
  return tap_done();
}
