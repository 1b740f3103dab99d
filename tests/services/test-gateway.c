/*
 * Gateway tests with real servers: three backends on http://127.0.0.1:0,
 * the gateway on event loops (its own HTTP/1.1 client) and on inproc://
 * (the libcurl fallback). Pass-through both ways, balancing, failover with
 * zero failed requests, SSE streaming, local routes, errors; /status from
 * the gateway's own records while its registry is down.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include <distsys/gateway.h>
#include "core/json.h"
#include "tap.h"

static dsys_clock *clk;

typedef struct backend {
  dsys_server *srv;
  char name[16];
  atomic_int hits;
} backend;

static void h_echo(dsys_request *req, void *ud) {
  backend *b = ud;
  atomic_fetch_add(&b->hits, 1);
  json_object *o = json_object_new_object();
  json_object_object_add(o, "instance", json_object_new_string(b->name));
  json_object_object_add(o, "method", json_object_new_string(dsys_request_method(req)));
  json_object_object_add(o, "target", json_object_new_string(dsys_request_target(req)));
  size_t n;
  const char *body = dsys_request_body(req, &n);
  json_object_object_add(o, "body", json_object_new_string_len(body, (int)n));
  const char *names[] = {"X-Custom", "X-Forwarded-For", "traceparent", "X-Request-Id", "Connection", "Host"};
  for (int i = 0; i < 6; i++) {
    const char *v = dsys_request_header(req, names[i]);
    json_object_object_add(o, names[i], v ? json_object_new_string(v) : NULL);
  }
  dsys_response_header(req, "X-Backend", b->name);
  dsys_respond_json(req, 200, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
  json_object_put(o);
}

static void h_health(dsys_request *req, void *ud) {
  dsys_respond_json(req, 200, "{\"status\":\"healthy\"}");
}

static void h_fail(dsys_request *req, void *ud) {
  dsys_respond_error(req, 503, "busy", "backend busy");
}

typedef struct sse {
  dsys_request *req;
  int i;
} sse;
static atomic_int sse_written;
static void sse_tick(void *ud) {
  sse *s = ud;
  char line[64];
  snprintf(line, sizeof line, "event: tick\ndata: %d\n\n", s->i);
  atomic_fetch_add(&sse_written, 1);
  dsys_stream_write(s->req, line, strlen(line));
  if (++s->i == 4) {
    dsys_stream_end(s->req);
    free(s);
    return;
  }
  dsys_timer_add(clk, 100000, sse_tick, s, NULL);
}
static void h_sse(dsys_request *req, void *ud) {
  sse *s = calloc(1, sizeof *s);
  s->req = req;
  dsys_respond_stream(req, 200, "text/event-stream");
  dsys_timer_add(clk, 50000, sse_tick, s, NULL);
}

static void start_backend(backend *b, const char *name) {
  snprintf(b->name, sizeof b->name, "%s", name);
  dsys_server_new(&b->srv, NULL);
  dsys_server_route(b->srv, "*", "/api/data/fail", h_fail, b);
  dsys_server_route(b->srv, "GET", "/api/data/events", h_sse, b);
  dsys_server_route(b->srv, "*", "/api/data/*", h_echo, b);
  dsys_server_route(b->srv, "GET", "/health", h_health, b);
  if (dsys_server_listen(b->srv, "http://127.0.0.1:0")) tap_bail("backend listen");
}

static dsys_reply *call(dsys_client *c, const char *url, const char *method, const char *path,
                        const dsys_header *h, size_t nh, const char *body, int *err) {
  dsys_call k = {.size = sizeof k, .method = method, .url = url, .path = path, .headers = h,
                 .nheaders = nh, .body = body, .body_len = body ? strlen(body) : 0, .timeout_ms = 10000};
  dsys_reply *r = NULL;
  *err = dsys_client_do(c, &k, &r);
  return r;
}

static json_object *body_json(dsys_reply *r) {
  json_object *o = NULL;
  size_t n;
  const char *b = dsys_reply_body(r, &n);
  if (dsysi_json_parse(b, n, &o)) return NULL;
  return o;
}

static int first_chunk_at = -1;
static void on_chunk(const void *d, size_t n, void *ud) {
  if (first_chunk_at < 0) first_chunk_at = atomic_load(&sse_written);
}

static void run(const char *label, const char *listen, unsigned loops) {
  tap_diag("---- gateway on %s", label);
  backend be[3];
  memset(be, 0, sizeof be);
  start_backend(&be[0], "b1");
  start_backend(&be[1], "b2");
  start_backend(&be[2], "b3");
  const char *urls[3] = {dsys_server_url(be[0].srv, 0), dsys_server_url(be[1].srv, 0),
                         dsys_server_url(be[2].srv, 0)};
  dsys_gateway *gw;
  dsys_gateway_options half = {.size = sizeof half, .upstream_cert_file = "/x/cert.pem"};
  is_int(dsys_gateway_new(&gw, &half), DSYS_EINVAL, "[%s] upstream cert without its key", label);
  dsys_gateway_options go = {.size = sizeof go, .try_timeout_ms = 3000};
  is_int(dsys_gateway_new(&gw, &go), 0, "[%s] gateway_new", label);
  is_int(dsys_gateway_add_upstream(gw, "data", urls, 3, NULL), 0, "[%s] static upstream", label);
  is_int(dsys_gateway_add_route(gw, "/api/data", "data"), 0, "[%s] route", label);
  is_int(dsys_gateway_add_route(gw, "/x", "nope"), DSYS_ENOTFOUND, "[%s] route to unknown upstream", label);
  is_int(dsys_gateway_add_upstream(gw, "bad", NULL, 0, NULL), DSYS_EINVAL, "[%s] no urls and no registry", label);
  is_int(dsys_gateway_add_upstream(gw, "p", urls, 1, "bogus"), DSYS_EINVAL, "[%s] unknown policy", label);
  dsys_gateway_upstream_options xo = {.size = sizeof xo, .adaptive_timeout = 2};
  is_int(dsys_gateway_add_upstream_ex(gw, "x", urls, 1, &xo), DSYS_EINVAL, "[%s] bad adaptive_timeout", label);
  xo = (dsys_gateway_upstream_options){.size = sizeof xo, .timeout_factor = 0.5};
  is_int(dsys_gateway_add_upstream_ex(gw, "x", urls, 1, &xo), DSYS_EINVAL, "[%s] bad timeout_factor", label);
  xo = (dsys_gateway_upstream_options){.size = sizeof xo, .hedge_delay_ms = -2};
  is_int(dsys_gateway_add_upstream_ex(gw, "x", urls, 1, &xo), DSYS_EINVAL, "[%s] bad hedge delay", label);
  xo = (dsys_gateway_upstream_options){.size = sizeof xo, .policy = "random", .adaptive_timeout = -1,
                                       .slow_ejection = -1, .hedge_delay_ms = 20};
  is_int(dsys_gateway_add_upstream_ex(gw, "x", urls, 1, &xo), 0, "[%s] an upstream with its own settings", label);
  dsys_server *srv;
  dsys_server_options so = {.size = sizeof so, .event_loops = loops};
  dsys_server_new(&srv, &so);
  is_int(dsys_gateway_mount(gw, srv), 0, "[%s] mount", label);
  if (dsys_server_listen(srv, listen)) tap_bail("gateway listen");
  const char *gurl = dsys_server_url(srv, 0);
  dsys_client *c;
  dsys_client_new(&c, NULL);
  int err;

  /* pass-through */
  dsys_header h[] = {{"X-Custom", "v\xc3\xa9"}, {"Connection", "keep-alive, X-Custom2"},
                     {"X-Forwarded-For", "10.9.8.7"},
                     {"traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}};
  dsys_reply *r = call(c, gurl, "POST", "/api/data/items?x=1&y=a%20b", h, 4, "{\"k\":\"v\"}", &err);
  is_int(err, 0, "[%s] proxied POST", label);
  is_int(dsys_reply_status(r), 200, "[%s] status passes through", label);
  json_object *o = body_json(r);
  is_str(dsysi_json_str(o, "method"), "POST", "[%s] method unchanged", label);
  is_str(dsysi_json_str(o, "target"), "/api/data/items?x=1&y=a%20b", "[%s] raw path and query unchanged", label);
  is_str(dsysi_json_str(o, "body"), "{\"k\":\"v\"}", "[%s] body unchanged", label);
  is_str(dsysi_json_str(o, "X-Custom"), "v\xc3\xa9", "[%s] custom header passes", label);
  const char *xff = dsysi_json_str(o, "X-Forwarded-For");
  ok(xff && (!strcmp(xff, loops ? "10.9.8.7, 127.0.0.1" : "10.9.8.7, inproc")),
     "[%s] X-Forwarded-For appended with the client address: %s", label, xff ? xff : "(none)");
  const char *tp = dsysi_json_str(o, "traceparent");
  ok(tp && !strncmp(tp, "00-0af7651916cd43dd8448eb211c80319c-", 36) && !strstr(tp, "b7ad6b7169203331"),
     "[%s] trace id kept, new span: %s", label, tp ? tp : "(none)");
  ok(dsysi_json_str(o, "X-Request-Id") != NULL, "[%s] request id sent upstream", label);
  is_str(dsysi_json_str(o, "X-Request-Id"), dsys_reply_header(r, "X-Request-Id"), "[%s] same request id both ways", label);
  ok(dsys_reply_header(r, "X-Backend") != NULL, "[%s] upstream response header passes back", label);
  json_object_put(o);
  dsys_reply_free(r);

  /* round robin across the three */
  int before[3];
  for (int i = 0; i < 3; i++) before[i] = atomic_load(&be[i].hits);
  int fails = 0;
  for (int i = 0; i < 30; i++) {
    r = call(c, gurl, "GET", "/api/data/x", NULL, 0, NULL, &err);
    if (err || dsys_reply_status(r) != 200) fails++;
    dsys_reply_free(r);
  }
  is_int(fails, 0, "[%s] 30 GETs succeed", label);
  ok(atomic_load(&be[0].hits) - before[0] == 10 && atomic_load(&be[1].hits) - before[1] == 10 &&
         atomic_load(&be[2].hits) - before[2] == 10,
     "[%s] round robin: 10 each (%d %d %d)", label, atomic_load(&be[0].hits) - before[0],
     atomic_load(&be[1].hits) - before[1], atomic_load(&be[2].hits) - before[2]);

  /* a 503 from the backend to a POST is not retried and passes through */
  r = call(c, gurl, "POST", "/api/data/fail", NULL, 0, "x", &err);
  is_int(dsys_reply_status(r), 503, "[%s] backend 503 to a POST passes through", label);
  ok(strstr(dsys_reply_body(r, NULL), "backend busy") != NULL, "[%s] with the backend's body", label);
  dsys_reply_free(r);

  /* SSE streams through unbuffered (event-loop path only) */
  if (loops) {
    atomic_store(&sse_written, 0);
    first_chunk_at = -1;
    dsys_call k = {.size = sizeof k, .url = gurl, .path = "/api/data/events", .on_chunk = on_chunk, .timeout_ms = 5000};
    r = NULL;
    is_int(dsys_client_do(c, &k, &r), 0, "[%s] SSE through the gateway", label);
    is_str(dsys_reply_header(r, "Content-Type"), "text/event-stream", "[%s] SSE content type", label);
    ok(first_chunk_at >= 1 && first_chunk_at < 4, "[%s] first event arrived before the stream ended (after %d of 4)", label, first_chunk_at);
    dsys_reply_free(r);
  }

  /* local routes */
  r = call(c, gurl, "GET", "/health", NULL, 0, NULL, &err);
  o = body_json(r);
  is_int(dsys_reply_status(r), 200, "[%s] /health", label);
  is_str(dsysi_json_str(o, "loadBalancer"), "operational", "[%s] /health loadBalancer", label);
  json_object *svcs = NULL, *data = NULL, *tot = NULL;
  ok(json_object_object_get_ex(o, "services", &svcs) && json_object_object_get_ex(svcs, "data", &data) &&
         json_object_object_get_ex(data, "total", &tot) && json_object_get_int(tot) == 3,
     "[%s] /health lists 3 data instances", label);
  json_object_put(o);
  dsys_reply_free(r);
  r = call(c, gurl, "GET", "/api/metrics", NULL, 0, NULL, &err);
  o = body_json(r);
  json_object *m = NULL, *lb = NULL, *total = NULL;
  ok(json_object_object_get_ex(o, "metrics", &m) && json_object_object_get_ex(m, "load-balancer", &lb) &&
         json_object_object_get_ex(lb, "total", &total) && json_object_get_int(total) >= 32,
     "[%s] /api/metrics counts requests (%d)", label, total ? json_object_get_int(total) : -1);
  json_object *bm = NULL;
  ok(m && json_object_object_get_ex(m, urls[0], &bm), "[%s] /api/metrics has an entry per backend url", label);
  json_object_put(o);
  dsys_reply_free(r);
  r = call(c, gurl, "GET", "/status", NULL, 0, NULL, &err);
  o = body_json(r);
  ok(o && json_object_object_get_ex(o, "services", &svcs) && json_object_object_get_ex(svcs, "data", &data) &&
         json_object_array_length(data) == 3, "[%s] /status lists the data instances", label);
  json_object *lat = NULL, *ld = NULL, *lx = NULL, *v = NULL, *v2 = NULL;
  int lat_ok = o && json_object_object_get_ex(o, "latency", &lat) &&
               json_object_object_get_ex(lat, "data", &ld) &&
               json_object_object_get_ex(ld, "tryTimeoutMs", &v) && json_object_get_int64(v) >= 0 &&
               json_object_object_get_ex(lat, "x", &lx) &&
               json_object_object_get_ex(lx, "hedgeDelayMs", &v2) && json_object_get_int64(v2) == 20;
  long long data_to = v ? (long long)json_object_get_int64(v) : -1LL;
  ok(lat_ok, "[%s] /status: the latency figures per upstream (data: timeout %lld ms; x: hedge 20 ms)",
     label, data_to);
  json_object_put(o);
  dsys_reply_free(r);
  r = call(c, gurl, "POST", "/api/round-robin/reset", NULL, 0, "{\"serviceType\":\"nope\"}", &err);
  is_int(dsys_reply_status(r), 400, "[%s] reset with unknown type -> 400", label);
  ok(strstr(dsys_reply_body(r, NULL), "Invalid service type") != NULL, "[%s] message", label);
  dsys_reply_free(r);
  r = call(c, gurl, "POST", "/api/round-robin/reset", NULL, 0, "{\"serviceType\":\"data\"}", &err);
  is_int(dsys_reply_status(r), 200, "[%s] reset data", label);
  dsys_reply_free(r);
  r = call(c, gurl, "POST", "/api/round-robin/reset", NULL, 0, "{bad", &err);
  is_int(dsys_reply_status(r), 400, "[%s] reset with malformed JSON -> 400", label);
  dsys_reply_free(r);
  r = call(c, gurl, "GET", "/elsewhere", NULL, 0, NULL, &err);
  is_int(dsys_reply_status(r), 404, "[%s] unrouted path -> 404", label);
  dsys_reply_free(r);

  /* one backend stops mid-run: no GET fails */
  fails = 0;
  for (int i = 0; i < 150; i++) {
    if (i == 40) dsys_server_stop(be[1].srv, 0);
    r = call(c, gurl, "GET", "/api/data/x", NULL, 0, NULL, &err);
    if (err || dsys_reply_status(r) != 200) {
      if (fails++ < 3)
        tap_diag("[%s] failed GET %d: %s %d %s", label, i, dsys_strerror(err), dsys_reply_status(r),
                 r ? (const char *)dsys_reply_body(r, NULL) : "");
    }
    dsys_reply_free(r);
  }
  is_int(fails, 0, "[%s] 150 GETs with one backend stopped after 40: zero failures", label);

  /* everything down: 503 JSON */
  dsys_server_stop(be[0].srv, 0);
  dsys_server_stop(be[2].srv, 0);
  r = call(c, gurl, "GET", "/api/data/x", NULL, 0, NULL, &err);
  is_int(dsys_reply_status(r), 503, "[%s] all backends down -> 503", label);
  o = body_json(r);
  is_str(dsysi_json_str(o, "error"), "Service unavailable", "[%s] 503 body", label);
  ok(dsysi_json_str(o, "timestamp") != NULL, "[%s] 503 has a timestamp", label);
  json_object_put(o);
  dsys_reply_free(r);

  dsys_client_free(c);
  dsys_server_free(srv);
  dsys_gateway_free(gw);
  for (int i = 0; i < 3; i++) dsys_server_free(be[i].srv);
}

/* The one data instance of a /status answer, NULL if not exactly one. */
static json_object *status_data(dsys_client *c, const char *gurl, int64_t *ms) {
  int err;
  int64_t t0 = dsys_clock_now_ms(clk);
  dsys_reply *r = call(c, gurl, "GET", "/status", NULL, 0, NULL, &err);
  *ms = dsys_clock_now_ms(clk) - t0;
  json_object *o = r ? body_json(r) : NULL, *svcs = NULL, *data = NULL;
  dsys_reply_free(r);
  json_object *one = NULL;
  if (o && json_object_object_get_ex(o, "services", &svcs) &&
      json_object_object_get_ex(svcs, "data", &data) && json_object_array_length(data) == 1)
    one = json_object_get(json_object_array_get_idx(data, 0));
  json_object_put(o);
  return one;
}

/* one: the instance named "Data One" with metadata host "h9" */
static int named_as_registered(json_object *one) {
  json_object *md = NULL;
  const char *name = one ? dsysi_json_str(one, "name") : NULL;
  const char *host = one && json_object_object_get_ex(one, "metadata", &md) ? dsysi_json_str(md, "host")
                                                                             : NULL;
  return name && host && !strcmp(name, "Data One") && !strcmp(host, "h9");
}

/* /status names each registry instance from the gateway's own records (the
 * upstream's): it answers the same, at once, while the registry is down.
 * It read the registry on every request, and so waited for a slow or
 * electing etcd (a multi-host run saw a dead host's instances leave the
 * view a second late for it). */
static void status_from_registry(void) {
  backend be;
  memset(&be, 0, sizeof be);
  start_backend(&be, "r1");
  dsys_registry *back = NULL, *reg = NULL;
  dsys_server *rsrv = NULL, *srv = NULL;
  dsys_registry_service *svc = NULL;
  int rc = dsys_registry_open(&back, "memory", NULL, NULL, NULL, 0);
  if (!rc) rc = dsys_server_new(&rsrv, NULL);
  if (!rc) rc = dsys_registry_service_mount(rsrv, back, NULL, &svc);
  if (!rc) rc = dsys_server_listen(rsrv, "http://127.0.0.1:0");
  if (!rc) rc = dsys_registry_open(&reg, "http", dsys_server_url(rsrv, 0), NULL, NULL, 0);
  dsys_instance in = {.id = "data-one", .type = "data", .url = dsys_server_url(be.srv, 0),
                      .name = "Data One", .metadata = "{\"host\":\"h9\"}"};
  if (!rc) rc = dsys_registry_register(reg, &in);
  is_int(rc, 0, "status: a registry service with one data instance, read over http");
  if (rc) tap_bail("registry set-up");
  dsys_gateway_options go = {.size = sizeof go, .registry = reg};
  dsys_gateway *gw = NULL;
  rc = dsys_gateway_new(&gw, &go);
  if (!rc) rc = dsys_gateway_add_upstream(gw, "data", NULL, 0, NULL);
  if (!rc) rc = dsys_server_new(&srv, NULL);
  if (!rc) rc = dsys_gateway_mount(gw, srv);
  if (!rc) rc = dsys_server_listen(srv, "inproc://gateway-status");
  is_int(rc, 0, "status: a gateway on that registry");
  dsys_client *c = NULL;
  dsys_client_new(&c, NULL);
  int64_t ms;
  json_object *one = status_data(c, "inproc://gateway-status", &ms);
  ok(named_as_registered(one), "status: the instance's name and metadata, as registered");
  json_object_put(one);
  dsys_server_stop(rsrv, 0); /* the registry goes away */
  one = status_data(c, "inproc://gateway-status", &ms);
  ok(named_as_registered(one),
     "status: the registry down: the same name and metadata (the gateway's own records)");
  ok(ms < 1000, "status: ... answered in %lld ms", (long long)ms);
  json_object_put(one);
  dsys_client_free(c);
  dsys_server_free(srv);
  dsys_gateway_free(gw);
  dsys_registry_close(reg);
  dsys_server_free(rsrv);
  dsys_registry_service_free(svc);
  dsys_registry_close(back);
  dsys_server_free(be.srv);
}

int main(void) {
  clk = dsys_clock_real();
  dsys_log_set_level(DSYS_LOG_ERROR);
  run("event loops (own HTTP/1.1 client)", "http://127.0.0.1:0", 2);
  run("inproc (libcurl fallback)", "inproc://gateway-test", 0);
  status_from_registry();
  return tap_done();
}
