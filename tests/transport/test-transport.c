/*
 * Transport conformance suite: the same cases against http://, unix://,
 * inproc:// and https:// (pool and event loops, certificates made with
 * openssl in the temp dir), plus https specifics (argv[1] selects one
 * variant; no argument runs all).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "net.h"
#include "tap.h"

static dsys_clock *rc_;
#define NOW_MS() dsys_clock_now_ms(rc_)

/* ---- handlers ---- */

static void h_echo(dsys_request *req, void *ud) {
  size_t len;
  const void *body = dsys_request_body(req, &len);
  const char *h = dsys_request_header(req, "X-Echo");
  if (h) dsys_response_header(req, "X-Echo", h);
  dsys_response_header(req, "X-Method", dsys_request_method(req));
  dsys_respond(req, 200, "application/octet-stream", body, len);
}

static void h_item(dsys_request *req, void *ud) {
  char buf[512];
  const char *x = dsys_request_query_param(req, "x");
  const char *y = dsys_request_query_param(req, "y");
  snprintf(buf, sizeof buf, "id=%s x=%s y=%s q=%s", dsys_request_param(req, "id"),
           x ? x : "-", y ? y : "-", dsys_request_query(req));
  dsys_respond(req, 200, "text/plain", buf, strlen(buf));
}

static void h_rest(dsys_request *req, void *ud) {
  const char *rest = dsys_request_param(req, "*");
  dsys_respond(req, 200, "text/plain", rest, strlen(rest));
}

static void h_trace(dsys_request *req, void *ud) {
  char buf[256];
  snprintf(buf, sizeof buf, "%s %s %s", dsys_request_trace_id(req),
           dsys_request_traceparent(req), dsys_request_id(req));
  dsys_respond(req, 200, "text/plain", buf, strlen(buf));
}

static void h_silent(dsys_request *req, void *ud) { /* forgets to answer */ }

static void answer_later(void *ud) {
  dsys_request *req = ud;
  dsys_respond(req, 200, "text/plain", "slow", 4);
}

/* Completes 200 ms later from the timer thread: no server thread waits. */
static void h_slow(dsys_request *req, void *ud) {
  dsys_request_defer(req);
  dsys_timer_add(rc_, 200000, answer_later, req, NULL);
}

/* Parked until the test releases them (release_parked): a fast request
 * sent meanwhile must be answered while they all still wait, whatever the
 * machine's load (no timer race). Once released, late arrivals (TLS
 * handshakes still under way) are answered at once. */
static pthread_mutex_t parked_mu = PTHREAD_MUTEX_INITIALIZER;
static dsys_request *parked[256];
static int nparked, parked_open;

static void h_parked(dsys_request *req, void *ud) {
  pthread_mutex_lock(&parked_mu);
  int now = parked_open || nparked == 256;
  if (!now) {
    dsys_request_defer(req);
    parked[nparked++] = req;
  }
  pthread_mutex_unlock(&parked_mu);
  if (now) dsys_respond(req, 200, "text/plain", "parked", 6);
}

static void release_parked(void) {
  pthread_mutex_lock(&parked_mu);
  parked_open = 1;
  int n = nparked;
  nparked = 0;
  dsys_request *v[256];
  memcpy(v, parked, sizeof v);
  pthread_mutex_unlock(&parked_mu);
  for (int i = 0; i < n; i++) dsys_respond(v[i], 200, "text/plain", "parked", 6);
}

static void reset_parked(void) {
  pthread_mutex_lock(&parked_mu);
  parked_open = 0;
  nparked = 0;
  pthread_mutex_unlock(&parked_mu);
}

static void h_sleepy(dsys_request *req, void *ud) {
  dsys_request_defer(req);
  dsys_timer_add(rc_, 2000000, answer_later, req, NULL);
}

static atomic_int never_closed;
static void never_close(dsys_request *req, void *ud) {
  atomic_fetch_add(&never_closed, 1);
  /* The transport is gone: finishing still releases the request. */
  int rc = dsys_respond(req, 200, "text/plain", "late", 4);
  if (rc != DSYS_ECLOSED) atomic_fetch_add(&never_closed, 1000);
}

static atomic_int never_started;
static void h_never(dsys_request *req, void *ud) {
  atomic_fetch_add(&never_started, 1);
  dsys_request_on_close(req, never_close, NULL);
  dsys_request_defer(req);
}

typedef struct streamer {
  dsys_request *req;
  int i;
} streamer;
static atomic_int chunks_written;

static void stream_tick(void *ud) {
  streamer *s = ud;
  char line[32];
  snprintf(line, sizeof line, "chunk-%d\n", s->i);
  atomic_fetch_add(&chunks_written, 1);
  dsys_stream_write(s->req, line, strlen(line));
  if (++s->i == 5) {
    dsys_stream_end(s->req);
    free(s);
    return;
  }
  dsys_timer_add(rc_, 50000, stream_tick, s, NULL);
}

static void h_stream(dsys_request *req, void *ud) {
  streamer *s = calloc(1, sizeof *s);
  s->req = req;
  dsys_respond_stream(req, 200, "text/event-stream");
  dsys_timer_add(rc_, 50000, stream_tick, s, NULL);
}

/* ---- TLS material (made with openssl in the temp dir) ---- */
static char g_ca[300], g_cert[300], g_key[300], g_ccert[300], g_ckey[300],
    g_other_cert[300], g_other_key[300];

static int make_certs(const char *dir) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd,
           "set -e; cd '%s'; exec >openssl.log 2>&1; "
           "K='-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes'; "
           "openssl req -x509 $K -keyout ca.key -out ca.pem -days 2 -subj /CN=dsys-test-ca; "
           "openssl req $K -keyout srv.key -out srv.csr -subj /CN=127.0.0.1; "
           "printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >srv.ext; "
           "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
           "  -out srv.pem -days 2 -extfile srv.ext; "
           "openssl req $K -keyout cli.key -out cli.csr -subj /CN=dsys-test-client; "
           "printf 'extendedKeyUsage=clientAuth\n' >cli.ext; "
           "openssl x509 -req -in cli.csr -CA ca.pem -CAkey ca.key -CAcreateserial "
           "  -out cli.pem -days 2 -extfile cli.ext; "
           "openssl req -x509 $K -keyout other.key -out other.pem -days 2 -subj /CN=not-from-the-ca",
           dir);
  if (system(cmd) != 0) return -1;
  snprintf(g_ca, sizeof g_ca, "%s/ca.pem", dir);
  snprintf(g_cert, sizeof g_cert, "%s/srv.pem", dir);
  snprintf(g_key, sizeof g_key, "%s/srv.key", dir);
  snprintf(g_ccert, sizeof g_ccert, "%s/cli.pem", dir);
  snprintf(g_ckey, sizeof g_ckey, "%s/cli.key", dir);
  snprintf(g_other_cert, sizeof g_other_cert, "%s/other.pem", dir);
  snprintf(g_other_key, sizeof g_other_key, "%s/other.key", dir);
  return 0;
}

static void remove_certs(const char *dir) {
  static const char *const f[] = {"ca.key", "ca.pem", "ca.srl", "srv.key", "srv.csr", "srv.ext",
                                  "srv.pem", "cli.key", "cli.csr", "cli.ext", "cli.pem",
                                  "other.key", "other.pem", "openssl.log"};
  char p[400];
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
    snprintf(p, sizeof p, "%s/%s", dir, f[i]);
    unlink(p);
  }
}

/* ---- helpers ---- */

static dsys_server *start_server(const char *url, unsigned loops, unsigned threads) {
  dsys_server *srv;
  dsys_server_options o = {.size = sizeof o, .max_body = 2 * 1024 * 1024, .threads = threads,
                           .event_loops = loops};
  if (!strncmp(url, "https:", 6)) {
    o.tls_cert_file = g_cert;
    o.tls_key_file = g_key;
  }
  if (dsys_server_new(&srv, &o)) tap_bail("server_new");
  dsys_server_route(srv, "*", "/echo", h_echo, NULL);
  dsys_server_route(srv, "GET", "/items/:id", h_item, NULL);
  dsys_server_route(srv, "GET", "/files/*", h_rest, NULL);
  dsys_server_route(srv, "GET", "/trace", h_trace, NULL);
  dsys_server_route(srv, "GET", "/silent", h_silent, NULL);
  dsys_server_route(srv, "GET", "/slow", h_slow, NULL);
  dsys_server_route(srv, "GET", "/sleepy", h_sleepy, NULL);
  dsys_server_route(srv, "GET", "/parked", h_parked, NULL);
  dsys_server_route(srv, "GET", "/never", h_never, NULL);
  dsys_server_route(srv, "GET", "/stream", h_stream, NULL);
  int rc = dsys_server_listen(srv, url);
  if (rc) tap_bail("listen %s: %s", url, dsys_strerror(rc));
  return srv;
}

static int do_call(dsys_client *c, const char *url, const char *method,
                   const char *path, const void *body, size_t len,
                   dsys_reply **out) {
  dsys_call call = {.size = sizeof call, .method = method, .url = url,
                    .path = path, .body = body, .body_len = len};
  return dsys_client_do(c, &call, out);
}

typedef struct async_ctx {
  pthread_mutex_t mu;
  int done, ok, fast_rank;
  int order; /* completion counter */
} async_ctx;

typedef struct one_call {
  async_ctx *ctx;
  int fast;
} one_call;

static void on_reply(int err, dsys_reply *r, void *ud) {
  one_call *oc = ud;
  async_ctx *ctx = oc->ctx;
  pthread_mutex_lock(&ctx->mu);
  if (!err && dsys_reply_status(r) == 200) ctx->ok++;
  if (oc->fast) ctx->fast_rank = ctx->done;
  ctx->done++;
  pthread_mutex_unlock(&ctx->mu);
  dsys_reply_free(r);
}

static int wait_done(async_ctx *ctx, int n, int64_t ms) {
  int64_t end = NOW_MS() + ms;
  for (;;) {
    pthread_mutex_lock(&ctx->mu);
    int d = ctx->done;
    pthread_mutex_unlock(&ctx->mu);
    if (d >= n) return 1;
    if (NOW_MS() > end) return 0;
    usleep(2000);
  }
}

static void on_chunk(const void *data, size_t len, void *ud) {
  int *first_seen_written = ud;
  if (*first_seen_written < 0) *first_seen_written = atomic_load(&chunks_written);
}

static int refused_url(const char *name, char *buf, size_t n, const char *tmpdir) {
  if (!strcmp(name, "http") || !strcmp(name, "https")) {
    snprintf(buf, n, "%s://127.0.0.1:%d", name, test_free_port());
  } else if (!strcmp(name, "unix")) {
    snprintf(buf, n, "unix://%s/nobody.sock", tmpdir);
  } else {
    snprintf(buf, n, "inproc://nobody-listens-here");
  }
  return 0;
}

static void run_suite(const char *label, const char *listen_url, const char *tmpdir,
                      unsigned loops, unsigned threads) {
  /* The scheme decides the transport; label names the variant in output. */
  char scheme[32];
  snprintf(scheme, sizeof scheme, "%.*s", (int)strcspn(listen_url, ":"), listen_url);
  const char *name = label;
  tap_diag("---- transport %s (%s)", scheme, label);
  dsys_server *srv = start_server(listen_url, loops, threads);
  const char *url = dsys_server_url(srv, 0);
  ok(url && strncmp(url, scheme, strlen(scheme)) == 0, "[%s] bound url %s", name, url ? url : "(null)");
  if (!strcmp(scheme, "http")) ok(!strstr(url, ":0"), "[http] port 0 was replaced by the real port");
  dsys_client *c;
  dsys_client_options co = {.size = sizeof co, .timeout_ms = 5000};
  /* The connect timeout covers the TLS handshake: 100 at once on a loaded
   * 2-core machine took longer than the 2 s default (44 of 100 answered). */
  if (!strcmp(scheme, "https")) co.tls_ca_file = g_ca, co.connect_timeout_ms = 10000, co.timeout_ms = 10000;
  dsys_client_new(&c, &co);
  dsys_reply *r = NULL;

  /* echo with a header */
  dsys_header hh[] = {{"X-Echo", "hello \xc3\xa9"}};
  dsys_call call = {.size = sizeof call, .method = "POST", .url = url, .path = "/echo",
                    .headers = hh, .nheaders = 1, .body = "ping", .body_len = 4};
  is_int(dsys_client_do(c, &call, &r), 0, "[%s] echo call", name);
  is_int(dsys_reply_status(r), 200, "[%s] echo status", name);
  size_t len = 0;
  const char *b = dsys_reply_body(r, &len);
  ok(len == 4 && !memcmp(b, "ping", 4), "[%s] echo body", name);
  is_str(dsys_reply_header(r, "x-echo"), "hello \xc3\xa9", "[%s] header round trip (case-insensitive)", name);
  is_str(dsys_reply_header(r, "X-Method"), "POST", "[%s] method seen", name);
  ok(dsys_reply_header(r, "X-Request-Id") != NULL, "[%s] request id on the response", name);
  dsys_reply_free(r);

  /* other methods */
  const char *methods[] = {"PUT", "DELETE", "PATCH", "GET"};
  for (int i = 0; i < 4; i++) {
    r = NULL;
    is_int(do_call(c, url, methods[i], "/echo", "x", 1, &r), 0, "[%s] %s call", name, methods[i]);
    is_str(dsys_reply_header(r, "X-Method"), methods[i], "[%s] %s passes through", name, methods[i]);
    dsys_reply_free(r);
  }

  /* 1 MiB body */
  size_t big = 1024 * 1024;
  char *payload = malloc(big);
  for (size_t i = 0; i < big; i++) payload[i] = (char)('a' + i % 26);
  r = NULL;
  is_int(do_call(c, url, "POST", "/echo", payload, big, &r), 0, "[%s] 1 MiB echo", name);
  b = dsys_reply_body(r, &len);
  ok(len == big && !memcmp(b, payload, big), "[%s] 1 MiB body intact", name);
  dsys_reply_free(r);
  /* over the server's 2 MiB limit -> 413 */
  char *huge = calloc(1, 3 * 1024 * 1024);
  r = NULL;
  int rc = do_call(c, url, "POST", "/echo", huge, 3 * 1024 * 1024, &r);
  /* not a reset: the http listeners linger after an early answer */
  is_int(rc, 0, "[%s] oversized body call gets an answer (%s)", name, dsys_strerror(rc));
  is_int(r ? dsys_reply_status(r) : 0, 413, "[%s] oversized body -> 413", name);
  ok(r && strstr(dsys_reply_body(r, NULL), "\"DSYS_ETOOBIG\"") != NULL, "[%s] 413 has a JSON error", name);
  dsys_reply_free(r);
  free(huge);
  free(payload);

  /* params and query */
  r = NULL;
  is_int(do_call(c, url, "GET", "/items/a%20b?x=1&y=c%20d", NULL, 0, &r), 0, "[%s] params call", name);
  is_str(dsys_reply_body(r, NULL), "id=a b x=1 y=c d q=x=1&y=c%20d", "[%s] path param decoded, query parsed, raw query kept", name);
  dsys_reply_free(r);
  r = NULL;
  is_int(do_call(c, url, "GET", "/files/a/b/c.txt", NULL, 0, &r), 0, "[%s] rest route", name);
  is_str(dsys_reply_body(r, NULL), "a/b/c.txt", "[%s] trailing * captures the rest", name);
  dsys_reply_free(r);

  /* 404, 405, 500 */
  r = NULL;
  do_call(c, url, "GET", "/nope", NULL, 0, &r);
  is_int(dsys_reply_status(r), 404, "[%s] unknown route -> 404", name);
  ok(strstr(dsys_reply_body(r, NULL), "\"error\"") && dsys_reply_header(r, "Content-Type") &&
         strstr(dsys_reply_header(r, "Content-Type"), "json"), "[%s] 404 body is JSON", name);
  dsys_reply_free(r);
  r = NULL;
  do_call(c, url, "POST", "/items/1", "", 0, &r);
  is_int(dsys_reply_status(r), 405, "[%s] wrong method -> 405", name);
  is_str(dsys_reply_header(r, "Allow"), "GET", "[%s] 405 says what is allowed", name);
  dsys_reply_free(r);
  r = NULL;
  do_call(c, url, "GET", "/silent", NULL, 0, &r);
  is_int(dsys_reply_status(r), 500, "[%s] handler that never answers -> 500", name);
  dsys_reply_free(r);

  /* trace context */
  dsys_header th[] = {{"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
                      {"X-Request-Id", "req-123"}};
  dsys_call tc = {.size = sizeof tc, .url = url, .path = "/trace", .headers = th, .nheaders = 2};
  r = NULL;
  is_int(dsys_client_do(c, &tc, &r), 0, "[%s] trace call", name);
  b = dsys_reply_body(r, NULL);
  const char *want = "4bf92f3577b34da6a3ce929d0e0e4736 00-4bf92f3577b34da6a3ce929d0e0e4736-";
  ok(!strncmp(b, want, strlen(want)) &&
         !strstr(b, "00f067aa0ba902b7"), "[%s] trace id kept, new span id: %s", name, b);
  ok(strstr(b, " req-123") != NULL, "[%s] incoming request id kept", name);
  is_str(dsys_reply_header(r, "X-Request-Id"), "req-123", "[%s] request id echoed", name);
  dsys_reply_free(r);

  /* 100 concurrent requests */
  async_ctx ctx = {.mu = PTHREAD_MUTEX_INITIALIZER, .fast_rank = -1};
  one_call oc[201];
  for (int i = 0; i < 100; i++) {
    oc[i].ctx = &ctx;
    oc[i].fast = 0;
    dsys_call ec = {.size = sizeof ec, .method = "POST", .url = url, .path = "/echo", .body = "x", .body_len = 1};
    dsys_client_send(c, &ec, on_reply, &oc[i]);
  }
  ok(wait_done(&ctx, 100, 10000), "[%s] 100 concurrent requests completed", name);
  is_int(ctx.ok, 100, "[%s] all 100 answered 200", name);

  /* 200 deferred handlers pending, then a fast one overtakes them all */
  memset(&ctx, 0, sizeof ctx);
  pthread_mutex_init(&ctx.mu, NULL);
  ctx.fast_rank = -1;
  reset_parked();
  int64_t t0 = NOW_MS();
  for (int i = 0; i < 200; i++) {
    oc[i].ctx = &ctx;
    oc[i].fast = 0;
    dsys_call sc = {.size = sizeof sc, .url = url, .path = "/parked"};
    dsys_client_send(c, &sc, on_reply, &oc[i]);
  }
  oc[200].ctx = &ctx;
  oc[200].fast = 1;
  /* Wait until they are all parked (over https the handshakes take a
   * while; they stay parked until released, so waiting longer is safe). */
  int64_t wp = NOW_MS();
  while (dsys_server_inflight(srv) < 200 && NOW_MS() - wp < 20000) usleep(1000);
  int parked_now = (int)dsys_server_inflight(srv);
  pthread_mutex_lock(&ctx.mu);
  int done_before_fast = ctx.done;
  pthread_mutex_unlock(&ctx.mu);
  /* The fast request goes out on a client of its own: what is measured is
   * whether the server makes it wait, not whether our client's I/O thread
   * is still busy with the 200 others (200 TLS handshakes over https). */
  dsys_client *fastc;
  dsys_client_new(&fastc, &co);
  dsys_call fc = {.size = sizeof fc, .method = "POST", .url = url, .path = "/echo"};
  dsys_client_send(fastc, &fc, on_reply, &oc[200]);
  ok(wait_done(&ctx, done_before_fast + 1, 10000) && ctx.fast_rank >= 0,
     "[%s] the fast request was answered while %d others stayed parked", name, parked_now);
  is_int(done_before_fast, 0, "[%s] (none of the parked ones had been answered)", name);
  is_int(ctx.fast_rank, 0, "[%s] the fast request was not stuck behind the %d pending ones", name,
         parked_now);
  release_parked();
  ok(wait_done(&ctx, 201, 20000), "[%s] 200 async handlers + 1 fast completed", name);
  is_int(ctx.ok, 201, "[%s] all answered 200", name);
  dsys_client_free(fastc);
  tap_diag("[%s] 200 parked requests and the fast one took %lld ms", name,
           (long long)(NOW_MS() - t0));

  /* streaming */
  atomic_store(&chunks_written, 0);
  int first_seen_at = -1;
  dsys_call stc = {.size = sizeof stc, .url = url, .path = "/stream", .on_chunk = on_chunk, .chunk_ud = &first_seen_at};
  r = NULL;
  is_int(dsys_client_do(c, &stc, &r), 0, "[%s] stream call", name);
  is_int(dsys_reply_status(r), 200, "[%s] stream status", name);
  ok(first_seen_at >= 1 && first_seen_at < 5, "[%s] first chunk arrived before the stream ended (after %d of 5 writes)", name, first_seen_at);
  dsys_reply_free(r);
  r = NULL;
  stc.on_chunk = NULL;
  is_int(dsys_client_do(c, &stc, &r), 0, "[%s] stream call, collected", name);
  is_str(dsys_reply_body(r, NULL), "chunk-0\nchunk-1\nchunk-2\nchunk-3\nchunk-4\n", "[%s] all chunks in order", name);
  dsys_reply_free(r);

  /* timeout */
  dsys_call slow = {.size = sizeof slow, .url = url, .path = "/sleepy", .timeout_ms = 200};
  r = NULL;
  int64_t ts = NOW_MS();
  is_int(dsys_client_do(c, &slow, &r), DSYS_ETIMEDOUT, "[%s] per-call timeout", name);
  int64_t took = NOW_MS() - ts;
  ok(took >= 150 && took < 1500, "[%s] timed out after %lld ms (asked 200)", name, (long long)took);
  is_int(dsys_classify(DSYS_ETIMEDOUT, 0), DSYS_OUTCOME_TIMEOUT, "[%s] classified as timeout", name);

  /* connection refused */
  char rurl[300];
  refused_url(scheme, rurl, sizeof rurl, tmpdir);
  r = NULL;
  rc = do_call(c, rurl, "GET", "/", NULL, 0, &r);
  is_int(rc, DSYS_ECONNREFUSED, "[%s] nobody listening -> ECONNREFUSED (%s)", name, rurl);
  is_int(dsys_classify(rc, 0), DSYS_OUTCOME_NOT_SENT, "[%s] refused = never sent", name);

  /* stop while requests are in flight (first let the timed-out one end) */
  int64_t q0 = NOW_MS();
  while (dsys_server_inflight(srv) > 0 && NOW_MS() - q0 < 5000) usleep(5000);
  memset(&ctx, 0, sizeof ctx);
  pthread_mutex_init(&ctx.mu, NULL);
  atomic_store(&never_closed, 0);
  for (int i = 0; i < 10; i++) {
    oc[i].ctx = &ctx;
    oc[i].fast = 0;
    dsys_call sc = {.size = sizeof sc, .url = url, .path = i < 5 ? "/slow" : "/never"};
    dsys_client_send(c, &sc, on_reply, &oc[i]);
  }
  int64_t w0 = NOW_MS();
  while (dsys_server_inflight(srv) < 10 && NOW_MS() - w0 < 3000) usleep(1000);
  is_int(dsys_server_inflight(srv), 10, "[%s] 10 requests in flight", name);
  /* the drain must outlast /slow's 200 ms on a loaded machine */
  rc = dsys_server_stop(srv, 2500);
  is_int(rc, DSYS_ETIMEDOUT, "[%s] stop reports that requests were cut off", name);
  ok(wait_done(&ctx, 10, 5000), "[%s] every in-flight request got an answer", name);
  is_int(ctx.ok, 5, "[%s] the 5 that finished within the drain time got 200", name);
  is_int(atomic_load(&never_closed), 5, "[%s] the 5 cut off saw on_close, and finishing them said ECLOSED", name);
  is_int(dsys_server_inflight(srv), 0, "[%s] nothing in flight after stop", name);
  r = NULL;
  rc = do_call(c, url, "GET", "/echo", NULL, 0, &r);
  ok(rc == DSYS_ECONNREFUSED || rc == DSYS_ECONNRESET, "[%s] after stop: %s", name, dsys_strerror(rc));
  dsys_reply_free(r);
  dsys_server_free(srv);
  dsys_client_free(c);
}

static void test_client_errors(void) {
  dsys_client *c;
  dsys_client_new(&c, NULL);
  dsys_reply *r = NULL;
  is_int(do_call(c, "ftp://x", "GET", "/", NULL, 0, &r), DSYS_ESCHEME, "unknown scheme");
  is_int(do_call(c, "nonsense", "GET", "/", NULL, 0, &r), DSYS_EURL, "not a URL");
  is_int(do_call(c, "http://127.0.0.1:1", "GE T", "/", NULL, 0, &r), DSYS_EINVAL, "bad method");
  is_int(do_call(c, "http://127.0.0.1:1", "GET", "no-slash", NULL, 0, &r), DSYS_EINVAL, "path must start with /");
  is_int(do_call(c, "inproc://x", "GET", "/a#frag", NULL, 0, &r), DSYS_EINVAL, "a fragment in the path rejected");
  dsys_header bad[] = {{"X-Evil", "a\r\nInjected: 1"}};
  dsys_call call = {.size = sizeof call, .url = "http://127.0.0.1:1", .headers = bad, .nheaders = 1};
  is_int(dsys_client_do(c, &call, &r), DSYS_EINVAL, "CR/LF in a header value rejected");
  is_int(dsys_client_send(c, &call, NULL, NULL), DSYS_EINVAL, "send without callback rejected");
  dsys_client_free(c);
  dsys_server *s;
  dsys_server_new(&s, NULL);
  is_int(dsys_server_route(s, "GET", "no-slash", h_echo, NULL), DSYS_EINVAL, "route pattern must start with /");
  is_int(dsys_server_route(s, "GET", "/a/*/b", h_echo, NULL), DSYS_EINVAL, "* only at the end");
  is_int(dsys_server_listen(s, "gopher://x"), DSYS_ESCHEME, "listen on unknown scheme");
  is_int(dsys_server_listen(s, "127.0.0.1:8080"), DSYS_EURL, "listen on a URL without a scheme");
  is_int(dsys_server_listen(s, "inproc://dup"), 0, "inproc listen");
  dsys_server *s2;
  dsys_server_new(&s2, NULL);
  is_int(dsys_server_listen(s2, "inproc://dup"), DSYS_EEXIST, "inproc name taken");
  dsys_server_free(s2);
  dsys_server_free(s);
}

/* One GET /echo with a client made from these options. */
static int tls_get(const dsys_client_options *co, const char *url, int *status) {
  dsys_client *c;
  if (dsys_client_new(&c, co)) tap_bail("client_new");
  dsys_reply *r = NULL;
  int rc = do_call(c, url, "GET", "/echo", NULL, 0, &r);
  *status = rc ? 0 : dsys_reply_status(r);
  dsys_reply_free(r);
  dsys_client_free(c);
  return rc;
}

/* https specifics: verification on by default, host name checked, mutual
 * TLS, listen errors, and the event-loop mode. */
static void test_tls(void) {
  tap_diag("---- https: verification, mutual TLS, errors");
  dsys_server *srv = start_server("https://127.0.0.1:0", 0, 2);
  const char *url = dsys_server_url(srv, 0);
  int st = 0;
  /* Generous timeouts: the handshakes load CA stores (slow under valgrind). */
  dsys_client_options co = {.size = sizeof co, .timeout_ms = 10000, .connect_timeout_ms = 10000};
  int rc = tls_get(&co, url, &st);
  is_int(rc, DSYS_EPROTO, "[https] no CA (system store only): certificate rejected");
  is_int(dsys_classify(rc, 0), DSYS_OUTCOME_PROTOCOL, "[https] classified as protocol error");
  co.tls_insecure = 1;
  rc = tls_get(&co, url, &st);
  ok(rc == 0 && st == 200, "[https] the same server with verification off answers (so the failure was verification): %s %d",
     dsys_strerror(rc), st);
  co.tls_insecure = 0;
  co.tls_ca_file = g_ca;
  rc = tls_get(&co, url, &st);
  ok(rc == 0 && st == 200, "[https] with the CA: 200 (%s %d)", dsys_strerror(rc), st);
  /* The certificate names IP 127.0.0.1 only: "localhost" must not match. */
  char lurl[300];
  snprintf(lurl, sizeof lurl, "https://localhost%s", strrchr(url, ':'));
  rc = tls_get(&co, lurl, &st);
  is_int(rc, DSYS_EPROTO, "[https] host name not in the certificate (%s): rejected", lurl);
  /* Plain http to the https port is not an answer. */
  char purl[300];
  snprintf(purl, sizeof purl, "http://127.0.0.1%s", strrchr(url, ':'));
  rc = tls_get(&co, purl, &st);
  ok(rc != 0, "[https] plain http to an https listener fails: %s", dsys_strerror(rc));
  dsys_server_free(srv);

  /* Mutual TLS. */
  dsys_server_options so = {.size = sizeof so, .threads = 2, .tls_cert_file = g_cert,
                            .tls_key_file = g_key, .tls_client_ca_file = g_ca};
  if (dsys_server_new(&srv, &so)) tap_bail("server_new");
  dsys_server_route(srv, "GET", "/echo", h_echo, NULL);
  is_int(dsys_server_listen(srv, "https://127.0.0.1:0"), 0, "[mtls] listen");
  url = dsys_server_url(srv, 0);
  dsys_client_options mc = {.size = sizeof mc, .timeout_ms = 10000, .connect_timeout_ms = 10000,
                            .tls_ca_file = g_ca};
  rc = tls_get(&mc, url, &st);
  ok(rc == 0 && st == 403, "[mtls] no client certificate: 403 (%s %d)", dsys_strerror(rc), st);
  mc.tls_cert_file = g_other_cert;
  mc.tls_key_file = g_other_key;
  rc = tls_get(&mc, url, &st);
  ok(rc == 0 && st == 403, "[mtls] certificate from another CA: 403 (%s %d)", dsys_strerror(rc), st);
  mc.tls_cert_file = g_ccert;
  mc.tls_key_file = g_ckey;
  rc = tls_get(&mc, url, &st);
  ok(rc == 0 && st == 200, "[mtls] with the client certificate: 200 (%s %d)", dsys_strerror(rc), st);
  dsys_server_free(srv);

  /* Listen errors. */
  dsys_server *s;
  dsys_server_new(&s, NULL);
  is_int(dsys_server_listen(s, "https://127.0.0.1:0"), DSYS_EINVAL, "[https] listen without certificate and key: EINVAL");
  dsys_server_free(s);
  dsys_server_options bo = {.size = sizeof bo, .tls_cert_file = "/nonexistent/c.pem",
                            .tls_key_file = g_key};
  dsys_server_new(&s, &bo);
  is_int(dsys_server_listen(s, "https://127.0.0.1:0"), DSYS_EIO, "[https] unreadable certificate file: EIO");
  dsys_server_free(s);
  bo.tls_cert_file = g_key; /* a key is not a certificate */
  dsys_server_new(&s, &bo);
  is_int(dsys_server_listen(s, "https://127.0.0.1:0"), DSYS_EIO, "[https] a key given as the certificate: EIO");
  dsys_server_free(s);
}

int main(int argc, char **argv) {
  rc_ = dsys_clock_real();
  char tmpl[] = "/tmp/dsys-conf-XXXXXX";
  char *tmpdir = mkdtemp(tmpl);
  if (!tmpdir) tap_bail("mkdtemp");
  char unix_url[256];
  snprintf(unix_url, sizeof unix_url, "unix://%s/s.sock", tmpdir);
  const char *only = argc > 1 ? argv[1] : NULL;
  if (!only || !strcmp(only, "http")) run_suite("http", "http://127.0.0.1:0", tmpdir, 0, 4);
  /* one server thread: MHD ignores a pool of 1 (docs/reference/transports.md,
   * libmicrohttpd pitfall 6) */
  if (!only || !strcmp(only, "http-1thread")) run_suite("http-1thread", "http://127.0.0.1:0", tmpdir, 0, 1);
  if (!only || !strcmp(only, "http-loops")) run_suite("http-loops", "http://127.0.0.1:0", tmpdir, 2, 4);
  if (!only || !strcmp(only, "unix")) run_suite("unix", unix_url, tmpdir, 0, 4);
  if (!only || !strcmp(only, "unix-loop")) run_suite("unix-loop", unix_url, tmpdir, 1, 4);
  if (!only || !strcmp(only, "inproc")) run_suite("inproc", "inproc://conformance", tmpdir, 0, 4);
  if (!only || !strncmp(only, "https", 5)) {
    if (make_certs(tmpdir)) tap_bail("openssl could not make the test certificates");
    if (!only || !strcmp(only, "https")) run_suite("https", "https://127.0.0.1:0", tmpdir, 0, 4);
    if (!only || !strcmp(only, "https-loops")) run_suite("https-loops", "https://127.0.0.1:0", tmpdir, 2, 4);
    if (!only || !strcmp(only, "https-tls")) test_tls();
    remove_certs(tmpdir);
  }
  if (!only) test_client_errors();
  char sock[300];
  snprintf(sock, sizeof sock, "%s/s.sock", tmpdir);
  unlink(sock);
  rmdir(tmpdir);
  return tap_done();
}
