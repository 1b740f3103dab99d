/* Registry service module (HTTP contract, route by route, bad input,
 * blocking queries), the http backend through a regd outage, and the
 * registration agent across a regd restart. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <json-c/json.h>
#include <distsys/distsys.h>
#include "tap.h"

#define T0 1700000000000LL

static int64_t mono_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static dsys_client *cli;

/* One call; returns the status (or a negative error); body copied to buf. */
static int call(const char *url, const char *method, const char *path, const char *body,
                char *buf, size_t buflen, char *index_hdr) {
  dsys_header h = {"Content-Type", "application/json"};
  dsys_call c = {.size = sizeof c, .method = method, .url = url, .path = path,
                 .headers = &h, .nheaders = body ? 1 : 0, .body = body,
                 .body_len = body ? strlen(body) : 0};
  dsys_reply *rep;
  int rc = dsys_client_do(cli, &c, &rep);
  if (rc) return rc;
  size_t len;
  const char *b = dsys_reply_body(rep, &len);
  if (buf) snprintf(buf, buflen, "%s", b);
  if (index_hdr) {
    const char *x = dsys_reply_header(rep, "X-Dsys-Index");
    snprintf(index_hdr, 32, "%s", x ? x : "");
  }
  int st = dsys_reply_status(rep);
  dsys_reply_free(rep);
  return st;
}

static int has(const char *body, const char *needle) { return strstr(body, needle) != NULL; }

typedef struct regd {
  dsys_registry *reg;
  dsys_server *srv;
  dsys_registry_service *svc;
  char url[128];
} regd;

static int daemon_start(regd *d, const char *listen, dsys_clock *clk, const char *backend,
                        const char *target, int64_t max_wait_ms) {
  memset(d, 0, sizeof *d);
  dsys_registry_options o = {.size = sizeof o, .clock = clk, .ttl_ms = 30000, .reap_ms = 120000};
  dsys_registry_service_options so = {.size = sizeof so, .clock = clk, .max_wait_ms = max_wait_ms};
  dsys_server_options sv = {.size = sizeof sv, .threads = 2};
  int rc = dsys_registry_open(&d->reg, backend, target, &o, NULL, 0);
  if (!rc) rc = dsys_server_new(&d->srv, &sv);
  if (!rc) rc = dsys_registry_service_mount(d->srv, d->reg, &so, &d->svc);
  if (!rc) rc = dsys_server_listen(d->srv, listen);
  if (!rc) snprintf(d->url, sizeof d->url, "%s", dsys_server_url(d->srv, 0));
  return rc;
}

static void daemon_stop(regd *d) {
  dsys_registry_service_drain(d->svc);
  dsys_server_stop(d->srv, 1000);
  dsys_server_free(d->srv);
  dsys_registry_service_free(d->svc);
  dsys_registry_close(d->reg);
}

/* An asynchronous GET whose completion we can watch. */
typedef struct async_get {
  _Atomic int done;
  int err, status;
  char body[4096];
  char index[32];
  int64_t at_ms;
} async_get;

static void on_async(int err, dsys_reply *rep, void *ud) {
  async_get *a = ud;
  a->err = err;
  if (rep) {
    a->status = dsys_reply_status(rep);
    snprintf(a->body, sizeof a->body, "%s", (const char *)dsys_reply_body(rep, NULL));
    const char *x = dsys_reply_header(rep, "X-Dsys-Index");
    snprintf(a->index, sizeof a->index, "%s", x ? x : "");
    dsys_reply_free(rep);
  }
  a->at_ms = mono_ms();
  a->done = 1;
}

static int start_get(const char *url, const char *path, async_get *a) {
  memset(a, 0, sizeof *a);
  dsys_call c = {.size = sizeof c, .url = url, .path = path};
  return dsys_client_send(cli, &c, on_async, a);
}

/* Wait (real time, bounded) for a flag. */
static int wait_done(_Atomic int *flag, int64_t ms) {
  int64_t end = mono_ms() + ms;
  while (!*flag && mono_ms() < end) usleep(2000);
  return *flag;
}

static size_t wait_parked(dsys_registry_service *svc, size_t n, int64_t ms) {
  int64_t end = mono_ms() + ms;
  while (dsys_registry_service_parked(svc) < n && mono_ms() < end) usleep(2000);
  return dsys_registry_service_parked(svc);
}

static const char *REG_A =
    "{\"serviceId\":\"auth-3001\",\"serviceType\":\"auth\",\"url\":\"http://127.0.0.1:3001\","
    "\"name\":\"auth\",\"metadata\":{\"port\":3001,\"host\":\"127.0.0.1\"}}";
static const char *REG_D =
    "{\"serviceId\":\"data-4002\",\"serviceType\":\"data\",\"url\":\"http://127.0.0.1:4002\","
    "\"name\":\"data\"}";

static void test_routes(void) {
  tap_diag("routes of the Registry contract");
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, T0);
  regd d;
  is_int(daemon_start(&d, "inproc://reg-routes", clk, "memory", NULL, 0), 0, "daemon module up");
  char b[8192], idx[32];
  const char *u = d.url;

  /* register */
  is_int(call(u, "POST", "/api/registry/register", REG_A, b, sizeof b, idx), 200, "register: 200");
  ok(has(b, "\"success\":true") && has(b, "\"message\":\"Service registered successfully\""),
     "register: success and message");
  ok(has(b, "\"serviceId\":\"auth-3001\"") && has(b, "\"serviceType\":\"auth\"") &&
     has(b, "\"metadata\":{\"port\":3001,\"host\":\"127.0.0.1\"}"), "register: service fields echoed: %s", b);
  ok(has(b, "\"registeredAt\":\"2023-11-14T22:13:20.000Z\"") && has(b, "\"lastHeartbeat\":1700000000000") &&
     has(b, "\"healthy\":true"), "register: registeredAt (ISO), lastHeartbeat (ms epoch), healthy");
  is_str(idx, "1", "register: X-Dsys-Index header");
  is_int(call(u, "POST", "/api/registry/register", "{\"serviceId\":\"x\",\"url\":\"u\"}", b, sizeof b, NULL),
         400, "register: missing fields -> 400");
  ok(has(b, "\"error\":\"Missing required fields: serviceId, serviceType, url, name\""), "register: message %s", b);
  is_int(call(u, "POST", "/api/registry/register", "{\"serviceId\":\"x\",\"serviceType\":\"t\",\"url\":\"u\",\"name\":7}",
              b, sizeof b, NULL), 400, "register: non-string name -> 400");
  is_int(call(u, "POST", "/api/registry/register", "{bad json", b, sizeof b, NULL), 400, "register: malformed JSON -> 400");
  ok(has(b, "\"error\":") && has(b, "DSYS_EBADJSON"), "register: malformed JSON answers a JSON error");
  is_int(call(u, "POST", "/api/registry/register", "[1,2]", b, sizeof b, NULL), 400, "register: array body -> 400");
  is_int(call(u, "POST", "/api/registry/register", "{\"a\":1} trailing", b, sizeof b, NULL), 400, "register: trailing garbage -> 400");
  is_int(call(u, "POST", "/api/registry/register", "", b, sizeof b, NULL), 400, "register: empty body -> 400");
  is_int(call(u, "POST", "/api/registry/register",
              "{\"serviceId\":\"x\",\"serviceType\":\"t\",\"url\":\"u\",\"name\":\"n\",\"metadata\":[1]}",
              b, sizeof b, NULL), 400, "register: metadata must be an object");
  is_int(call(u, "POST", "/api/registry/register",
              "{\"serviceId\":\"x\",\"serviceType\":\"t\",\"url\":\"u\",\"name\":\"n\",\"weight\":0}",
              b, sizeof b, NULL), 400, "register: weight out of range");
  is_int(call(u, "POST", "/api/registry/register", REG_D, b, sizeof b, NULL), 200, "register second");
  dsys_clock_advance(clk, 1000 * 1000);
  is_int(call(u, "POST", "/api/registry/register",
              "{\"serviceId\":\"data-4002\",\"serviceType\":\"data\",\"url\":\"http://127.0.0.1:4999\",\"name\":\"data\"}",
              b, sizeof b, NULL), 200, "same id replaces");
  ok(has(b, "4999") && has(b, "\"registeredAt\":\"2023-11-14T22:13:21.000Z\""), "replacement has the new url and time");

  /* heartbeat */
  is_int(call(u, "POST", "/api/registry/heartbeat", "{}", b, sizeof b, NULL), 400, "heartbeat: missing id -> 400");
  is_int(call(u, "POST", "/api/registry/heartbeat", "{\"serviceId\":\"nope\"}", b, sizeof b, NULL), 404, "heartbeat: unknown -> 404");
  ok(has(b, "\"error\":\"Service not found\""), "heartbeat: 'Service not found'");
  is_int(call(u, "POST", "/api/registry/heartbeat", "nope", b, sizeof b, NULL), 400, "heartbeat: malformed JSON -> 400");
  is_int(call(u, "POST", "/api/registry/heartbeat", "{\"serviceId\":\"auth-3001\"}", b, sizeof b, NULL), 200, "heartbeat: 200");
  ok(has(b, "\"success\":true") && has(b, "\"message\":\"Heartbeat received\"") &&
     has(b, "\"timestamp\":\"2023-11-14T22:13:21.000Z\""), "heartbeat: body %s", b);

  /* reads */
  is_int(call(u, "GET", "/api/registry/services", NULL, b, sizeof b, idx), 200, "services: 200");
  ok(has(b, "\"total\":2") && has(b, "\"timestamp\":") && has(b, "\"services\":[{") &&
     has(b, "\"index\":"), "services: list, total, timestamp, index");
  is_int(call(u, "GET", "/api/registry/services?type=data", NULL, b, sizeof b, NULL), 200, "services?type=");
  ok(has(b, "\"total\":1") && has(b, "data-4002") && !has(b, "auth-3001"), "services?type= filters");
  dsys_clock_advance(clk, 30500 * 1000); /* auth at 31.5 s since heartbeat... both > TTL */
  call(u, "POST", "/api/registry/heartbeat", "{\"serviceId\":\"auth-3001\"}", b, sizeof b, NULL);
  is_int(call(u, "GET", "/api/registry/services?healthy=true", NULL, b, sizeof b, NULL), 200, "services?healthy=true");
  ok(has(b, "\"total\":1") && has(b, "auth-3001"), "healthy=true: only the healthy one: %s", b);
  call(u, "GET", "/api/registry/services?healthy=false", NULL, b, sizeof b, NULL);
  ok(has(b, "\"total\":1") && has(b, "data-4002") && has(b, "\"healthy\":false"), "healthy=false: only the unhealthy one");
  is_int(call(u, "GET", "/api/registry/services?healthy=maybe", NULL, b, sizeof b, NULL), 400, "healthy=maybe -> 400");
  is_int(call(u, "GET", "/api/registry/services/auth", NULL, b, sizeof b, NULL), 200, "services/:type");
  ok(has(b, "\"type\":\"auth\"") && has(b, "\"total\":1") && has(b, "auth-3001"), "services/:type body %s", b);
  call(u, "GET", "/api/registry/services/data?healthy=true", NULL, b, sizeof b, NULL);
  ok(has(b, "\"total\":0"), "services/:type?healthy=true");
  call(u, "GET", "/api/registry/services/compute", NULL, b, sizeof b, NULL);
  ok(has(b, "\"total\":0") && has(b, "\"services\":[]"), "unknown type: empty list");
  is_int(call(u, "GET", "/api/registry/service/auth-3001", NULL, b, sizeof b, NULL), 200, "service/:id");
  ok(has(b, "\"serviceId\":\"auth-3001\"") && has(b, "\"url\":\"http://127.0.0.1:3001\""), "service/:id body");
  is_int(call(u, "GET", "/api/registry/service/nope", NULL, b, sizeof b, NULL), 404, "service/:id unknown -> 404");
  ok(has(b, "\"error\":\"Service not found\""), "404 is a JSON error");
  is_int(call(u, "GET", "/health", NULL, b, sizeof b, NULL), 200, "/health");
  ok(has(b, "\"status\":\"healthy\"") && has(b, "\"service\":\"service-registry\"") &&
     has(b, "\"registeredServices\":2") && has(b, "\"uptime\":"), "/health body %s", b);
  is_int(call(u, "GET", "/api/registry/nothing", NULL, b, sizeof b, NULL), 404, "unknown route -> 404");
  ok(b[0] == '{', "unknown route answers JSON");

  /* deregister */
  is_int(call(u, "POST", "/api/registry/deregister", "{}", b, sizeof b, NULL), 400, "deregister: missing id -> 400");
  is_int(call(u, "POST", "/api/registry/deregister", "{\"serviceId\":\"nope\"}", b, sizeof b, NULL), 200,
         "deregister: unknown id -> 200");
  ok(has(b, "\"success\":true") && has(b, "\"removed\":false"), "deregister unknown: success, removed:false");
  is_int(call(u, "POST", "/api/registry/deregister", "{\"serviceId\":\"data-4002\"}", b, sizeof b, NULL), 200, "deregister");
  ok(has(b, "\"removed\":true"), "deregister known: removed:true");
  call(u, "GET", "/api/registry/services", NULL, b, sizeof b, NULL);
  ok(has(b, "\"total\":1"), "one left");
  daemon_stop(&d);
  dsys_clock_free(clk);
}

/* GET /v1/sd/prometheus: one target group per TCP instance. */
static void test_prometheus_sd(void) {
  tap_diag("Prometheus HTTP service discovery");
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, T0);
  regd d;
  is_int(daemon_start(&d, "inproc://reg-sd", clk, "memory", NULL, 0), 0, "daemon module up");
  char b[8192];
  is_int(call(d.url, "GET", "/v1/sd/prometheus", NULL, b, sizeof b, NULL), 200, "empty registry: 200");
  is_str(b, "[]", "empty registry: no target group");
  call(d.url, "POST", "/api/registry/register", REG_A, b, sizeof b, NULL);
  call(d.url, "POST", "/api/registry/register", REG_D, b, sizeof b, NULL);
  call(d.url, "POST", "/api/registry/register",
       "{\"serviceId\":\"x-1\",\"serviceType\":\"x\",\"url\":\"unix:///tmp/x.sock\",\"name\":\"x\"}", b, sizeof b, NULL);
  call(d.url, "POST", "/api/registry/register",
       "{\"serviceId\":\"s-1\",\"serviceType\":\"secure\",\"url\":\"https://[::1]:8443\",\"name\":\"s\"}", b, sizeof b, NULL);
  is_int(call(d.url, "GET", "/v1/sd/prometheus", NULL, b, sizeof b, NULL), 200, "GET /v1/sd/prometheus: 200");
  json_object *o = json_tokener_parse(b);
  ok(o && json_object_is_type(o, json_type_array) && json_object_array_length(o) == 3,
     "three target groups (the unix instance cannot be scraped): %s", b);
  ok(has(b, "{\"targets\":[\"127.0.0.1:3001\"],\"labels\":{\"__scheme__\":\"http\",\"dsys_type\":\"auth\","
            "\"dsys_id\":\"auth-3001\",\"dsys_healthy\":\"true\"}}"),
     "auth-3001: host:port target, type, id, health");
  ok(has(b, "\"127.0.0.1:4002\"") && has(b, "\"dsys_type\":\"data\""), "data-4002 listed");
  ok(has(b, "{\"targets\":[\"[::1]:8443\"],\"labels\":{\"__scheme__\":\"https\""),
     "an https instance on IPv6: bracketed target, https scheme");
  ok(!has(b, "x.sock") && !has(b, "\"x-1\""), "the unix instance is left out");
  json_object_put(o);
  daemon_stop(&d);
  dsys_clock_free(clk);
}

static void test_blocking(void) {
  tap_diag("blocking queries");
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, T0);
  regd d;
  is_int(daemon_start(&d, "http://127.0.0.1:0", clk, "memory", NULL, 3000), 0, "daemon on http (max wait 3 s)");
  const char *u = d.url;
  char b[4096], idx[32], path[128];
  call(u, "POST", "/api/registry/register", REG_A, b, sizeof b, idx);
  uint64_t cur = strtoull(idx, NULL, 10);
  snprintf(path, sizeof path, "/api/registry/services?index=%llu&wait=10s", (unsigned long long)(cur - 1));
  int64_t t = mono_ms();
  is_int(call(u, "GET", path, NULL, b, sizeof b, NULL), 200, "index already passed: answers");
  ok(mono_ms() - t < 1000, "at once");
  is_int(call(u, "GET", "/api/registry/services?index=x", NULL, b, sizeof b, NULL), 400, "bad index -> 400");
  is_int(call(u, "GET", "/api/registry/services?index=1&wait=5h", NULL, b, sizeof b, NULL), 400, "bad wait -> 400");
  is_int(call(u, "GET", "/api/registry/services?index=1&wait=-5", NULL, b, sizeof b, NULL), 400, "negative wait -> 400");

  /* woken by a change: more parked queries than server threads (2), which
   * proves that no server thread is held while they wait */
  enum { NQ = 6 };
  async_get q[NQ];
  snprintf(path, sizeof path, "/api/registry/services?index=%llu&wait=2s", (unsigned long long)cur);
  for (int i = 0; i < NQ; i++) start_get(u, path, &q[i]);
  is_int(wait_parked(d.svc, NQ, 3000), NQ, "%d blocking queries parked", NQ);
  is_int(call(u, "GET", "/health", NULL, b, sizeof b, NULL), 200, "server still answers with 2 threads and %d parked", NQ);
  usleep(50 * 1000);
  int any = 0;
  for (int i = 0; i < NQ; i++) any |= q[i].done;
  ok(!any, "no parked query answered before a change");
  int64_t t0 = mono_ms();
  call(u, "POST", "/api/registry/register", REG_D, b, sizeof b, NULL);
  int all = 1;
  for (int i = 0; i < NQ; i++) all &= wait_done(&q[i].done, 3000);
  ok(all, "a change answers every parked query");
  int64_t worst = 0;
  for (int i = 0; i < NQ; i++)
    if (q[i].at_ms - t0 > worst) worst = q[i].at_ms - t0;
  ok(worst < 500, "promptly (slowest %lld ms after the change)", (long long)worst);
  ok(q[0].status == 200 && has(q[0].body, "data-4002") && strtoull(q[0].index, NULL, 10) > cur &&
     has(q[0].body, "\"index\":"), "the answer has the new list, index body field and header (%s)", q[0].index);
  tap_diag("figure: %d parked blocking queries answered %lld ms after a register (http, 2 server threads)", NQ,
           (long long)worst);

  /* no change: answered after the wait, on the service's clock */
  cur = strtoull(q[0].index, NULL, 10);
  async_get w;
  snprintf(path, sizeof path, "/api/registry/services/auth?index=%llu&wait=2s", (unsigned long long)cur);
  start_get(u, path, &w);
  is_int(wait_parked(d.svc, 1, 3000), 1, "typed blocking query parked");
  dsys_clock_advance(clk, 1900 * 1000);
  usleep(50 * 1000);
  ok(!w.done, "not answered before the wait");
  dsys_clock_advance(clk, 100 * 1000);
  ok(wait_done(&w.done, 3000), "answered when the wait passed");
  ok(w.status == 200 && strtoull(w.index, NULL, 10) == cur && has(w.body, "\"type\":\"auth\""),
     "unchanged index, typed body");
  /* the wait is capped (3 s here) */
  snprintf(path, sizeof path, "/api/registry/services?index=%llu&wait=10m", (unsigned long long)cur);
  start_get(u, path, &w);
  wait_parked(d.svc, 1, 3000);
  dsys_clock_advance(clk, 3000 * 1000);
  ok(wait_done(&w.done, 3000), "wait=10m is capped at max_wait_ms");
  /* drain answers parked queries at once */
  start_get(u, path, &w);
  is_int(wait_parked(d.svc, 1, 3000), 1, "parked again");
  dsys_registry_service_drain(d.svc);
  ok(wait_done(&w.done, 3000) && w.status == 200, "drain answers it");
  is_int(dsys_registry_service_parked(d.svc), 0, "nothing parked");
  daemon_stop(&d);
  dsys_clock_free(clk);
}

static int view_count(dsys_registry *r, const char *type, int healthy) {
  dsys_instance *v;
  size_t n;
  if (dsys_registry_lookup(r, type, healthy, &v, &n)) return -1;
  dsys_free(v);
  return (int)n;
}

static int wait_count(dsys_registry *r, int want, int64_t ms) {
  int64_t end = mono_ms() + ms;
  int n;
  while ((n = view_count(r, NULL, 1)) != want && mono_ms() < end) usleep(2000);
  return n;
}

static void test_outage(const char *dir) {
  tap_diag("http backend: daemon outage");
  char db[256];
  snprintf(db, sizeof db, "%s/outage.sqlite", dir);
  regd d;
  is_int(daemon_start(&d, "http://127.0.0.1:0", NULL, "sqlite", db, 0), 0, "daemon (sqlite store) on http");
  char url[128];
  snprintf(url, sizeof url, "%s", d.url);
  dsys_registry *writer, *reader;
  is_int(dsys_registry_open(&writer, url, NULL, NULL, NULL, 0), 0, "open by URL (writer)");
  is_int(dsys_registry_open(&reader, "http", url, NULL, NULL, 0), 0, "open http backend (reader)");
  uint64_t i0 = 0, i1 = 0;
  dsys_registry_index(reader, &i0);
  dsys_instance a = {.id = "auth-3001", .type = "auth", .url = "http://127.0.0.1:3001"};
  int64_t t0 = mono_ms();
  is_int(dsys_registry_register(writer, &a), 0, "register through the writer");
  int got = wait_count(reader, 1, 3000);
  int64_t lat = mono_ms() - t0;
  is_int(got, 1, "the reader's view has it");
  ok(lat < 1000, "at once, not on a poll tick (%lld ms)", (long long)lat);
  tap_diag("figure: a register shows in another process-style view after %lld ms (http, blocking query)",
           (long long)lat);
  is_int(dsys_registry_wait(reader, i0, 2000, &i1), 0, "index waiters on the reader are woken");

  daemon_stop(&d); /* the daemon goes away */
  is_int(dsys_registry_heartbeat(writer, "auth-3001"), DSYS_ECONNREFUSED, "write while down: DSYS_ECONNREFUSED");
  dsys_instance b = {.id = "data-4002", .type = "data", .url = "http://127.0.0.1:4002"};
  is_int(dsys_registry_register(writer, &b), DSYS_ECONNREFUSED, "register while down: DSYS_ECONNREFUSED");
  usleep(300 * 1000);
  is_int(view_count(reader, "auth", 1), 1, "the reader keeps serving its last view (healthy)");
  dsys_instance *one = NULL;
  is_int(dsys_registry_get(reader, "auth-3001", &one), 0, "get from the last view");
  if (one) is_str(one->url, "http://127.0.0.1:3001", "with its data");
  dsys_free(one);

  /* back on the same address, same store; a change made there shows up */
  int rc = daemon_start(&d, url, NULL, "sqlite", db, 0);
  is_int(rc, 0, "daemon back on %s", url);
  if (rc) return;
  dsys_registry_register(d.reg, &b);
  t0 = mono_ms();
  int n = wait_count(reader, 2, 8000);
  is_int(n, 2, "the reader catches up after the outage (%lld ms)", (long long)(mono_ms() - t0));
  is_int(dsys_registry_heartbeat(writer, "auth-3001"), 0, "writes work again");
  dsys_registry_close(reader);
  dsys_registry_close(writer);
  daemon_stop(&d);
}

static int wait_stat(dsys_registration *a, int which, uint64_t want, int64_t ms) {
  int64_t end = mono_ms() + ms;
  dsys_registration_stats st;
  for (;;) {
    dsys_registration_stats_get(a, &st);
    uint64_t v = which == 0 ? st.registrations : which == 1 ? st.heartbeats : st.failures;
    if (v >= want || mono_ms() >= end) return v >= want;
    usleep(2000);
  }
}

static void test_agent(void) {
  tap_diag("registration agent");
  dsys_clock *clk; /* the agent's clock */
  dsys_clock_fake_new(&clk, T0);
  regd d;
  is_int(daemon_start(&d, "inproc://reg-agent", NULL, "memory", NULL, 0), 0, "daemon module");
  dsys_registry *r;
  is_int(dsys_registry_open(&r, "inproc://reg-agent", NULL, NULL, NULL, 0), 0, "http backend over inproc");
  dsys_registration *a = NULL;
  dsys_instance bad = {.id = "x", .type = "t"};
  is_int(dsys_registration_start(&a, r, &bad, NULL), DSYS_EINVAL, "start without url: EINVAL");
  ok(a == NULL, "and nothing started");
  dsys_instance in = {.id = "auth-3001", .type = "auth", .url = "http://127.0.0.1:3001",
                      .name = "auth", .metadata = "{\"port\":3001,\"host\":\"127.0.0.1\"}"};
  dsys_registration_options o = {.size = sizeof o, .clock = clk, .heartbeat_ms = 10000, .retry_ms = 1000};
  is_int(dsys_registration_start(&a, r, &in, &o), 0, "start");
  dsys_instance *one = NULL;
  is_int(dsys_registry_get(d.reg, "auth-3001", &one), 0, "registered with the daemon");
  dsys_free(one);
  dsys_clock_advance(clk, 10000 * 1000);
  ok(wait_stat(a, 1, 1, 3000), "heartbeat after 10 s on the agent's clock");

  /* the daemon restarts with an empty registry */
  daemon_stop(&d);
  dsys_clock_advance(clk, 10000 * 1000);
  ok(wait_stat(a, 2, 1, 3000), "heartbeat while down fails quietly");
  dsys_registration_stats st;
  dsys_registration_stats_get(a, &st);
  is_int(st.last_error, DSYS_ECONNREFUSED, "last error: connection refused");
  is_int(daemon_start(&d, "inproc://reg-agent", NULL, "memory", NULL, 0), 0, "daemon restarted, empty");
  for (int i = 0; i < 20 && !wait_stat(a, 0, 2, 100); i++) dsys_clock_advance(clk, 1000 * 1000);
  ok(wait_stat(a, 0, 2, 3000), "agent registered again");
  is_int(dsys_registry_get(d.reg, "auth-3001", &one), 0, "the new daemon knows the instance");
  if (one) is_str(one->metadata, "{\"port\":3001,\"host\":\"127.0.0.1\"}", "with its metadata");
  dsys_free(one);
  /* heartbeat answered not-found (daemon forgot it) -> registers again */
  dsys_registration_stats_get(a, &st);
  uint64_t regs = st.registrations;
  dsys_registry_deregister(d.reg, "auth-3001");
  dsys_clock_advance(clk, 10000 * 1000);
  ok(wait_stat(a, 0, regs + 1, 3000), "heartbeat 'not found' -> registers again");
  is_int(dsys_registration_stop(a), 0, "stop");
  is_int(dsys_registry_get(d.reg, "auth-3001", &one), DSYS_ENOTFOUND, "stop deregistered it");

  o.require_registered = 1;
  daemon_stop(&d);
  a = NULL;
  is_int(dsys_registration_start(&a, r, &in, &o), DSYS_ECONNREFUSED, "require_registered with the daemon down fails");
  ok(a == NULL, "and starts nothing");
  o.require_registered = 0;
  is_int(dsys_registration_start(&a, r, &in, &o), 0, "without it, the agent starts and retries");
  is_int(dsys_registration_stop(a), DSYS_ECONNREFUSED, "stop reports the failed deregistration");
  dsys_registry_close(r);
  dsys_clock_free(clk);
}

/* An outage that keeps the registry's data (the daemon restarts on its
 * file; an etcd member stops): after failed heartbeats the agent
 * heartbeats again, it does not register again (a registration is a new
 * process to every watcher: the gateways would start the instance over,
 * out of rotation until its health checks pass). */
static void test_agent_outage(const char *dir) {
  tap_diag("registration agent: an outage that keeps the data");
  char db[256];
  snprintf(db, sizeof db, "%s/agent.sqlite", dir);
  dsys_clock *clk;
  dsys_clock_fake_new(&clk, T0);
  regd d;
  is_int(daemon_start(&d, "inproc://reg-agent2", NULL, "sqlite", db, 0), 0, "daemon (sqlite store)");
  dsys_registry *r;
  is_int(dsys_registry_open(&r, "inproc://reg-agent2", NULL, NULL, NULL, 0), 0, "http backend over inproc");
  dsys_instance in = {.id = "data-4002", .type = "data", .url = "http://127.0.0.1:4002"};
  dsys_registration_options o = {.size = sizeof o, .clock = clk, .heartbeat_ms = 3000, .retry_ms = 1000};
  dsys_registration *a = NULL;
  is_int(dsys_registration_start(&a, r, &in, &o), 0, "start: registered");
  daemon_stop(&d);
  dsys_clock_advance(clk, 3000 * 1000);
  ok(wait_stat(a, 2, 1, 3000), "a heartbeat fails while the daemon is down");
  is_int(daemon_start(&d, "inproc://reg-agent2", NULL, "sqlite", db, 0), 0, "daemon back on its data");
  for (int i = 0; i < 20 && !wait_stat(a, 1, 1, 100); i++) dsys_clock_advance(clk, 1000 * 1000);
  ok(wait_stat(a, 1, 1, 3000), "the agent heartbeats again");
  dsys_registration_stats st;
  dsys_registration_stats_get(a, &st);
  is_int(st.registrations, 1, "and did not register again (registrations: %llu)",
         (unsigned long long)st.registrations);
  ok(st.registered && !st.last_error, "registered, no error");
  is_int(dsys_registration_stop(a), 0, "stop");
  daemon_stop(&d);
  dsys_registry_close(r);
  dsys_clock_free(clk);
}

int main(void) {
  char dir[] = "/tmp/dsys-regsvc-XXXXXX";
  if (!mkdtemp(dir)) tap_bail("mkdtemp");
  dsys_log_set_level(DSYS_LOG_ERROR);
  dsys_client_options co = {.size = sizeof co, .timeout_ms = 10000};
  dsys_client_new(&cli, &co);
  test_routes();
  test_prometheus_sd();
  test_blocking();
  test_outage(dir);
  test_agent();
  test_agent_outage(dir);
  dsys_client_free(cli);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd)) tap_diag("cleanup failed");
  return tap_done();
}
