/*
 * Fault detector module tests on a fake clock with inproc:// targets and a
 * memory registry: learning instances, /api/status shape and counts,
 * /api/status/:type (and 404), /api/metrics mirrored from a gateway,
 * healthy -> 3 failures -> CRITICAL -> recovery (events in order, alert
 * log), slow responses, an instance reaped from the registry while alive
 * (kept, reported), a deregistered instance that went away (removed),
 * POST /api/check, an SSE client that gets health-status first, the first
 * round at mount (no clock advance needed) and a newly registered instance
 * checked at once, exactly once, instead of a whole interval later.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include "core/json.h"
#include "tap.h"

static dsys_clock *clk;

static void msleep(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* ---- targets ---- */
enum { OK = 0, FAIL = 1, SLOW = 2, FULL = 3 };
typedef struct target {
  dsys_server *srv;
  atomic_int mode;
  atomic_int hits; /* /health requests */
  char url[64];
} target;

static void slow_answer(void *ud) {
  dsys_respond_json(ud, 200, "{\"status\":\"healthy\",\"uptime\":12.5}");
}

static void h_health(dsys_request *req, void *ud) {
  target *t = ud;
  atomic_fetch_add(&t->hits, 1);
  int m = atomic_load(&t->mode);
  if (m == FAIL) {
    dsys_respond_error(req, 503, "down", "down");
  } else if (m == SLOW) {
    dsys_request_defer(req);
    dsys_timer_add(clk, 1500 * 1000, slow_answer, req, NULL);
  } else if (m == FULL) {
    dsys_respond_json(req, 200, "{\"status\":\"healthy\",\"uptime\":12.5,\"storage\":\"full\"}");
  } else {
    dsys_respond_json(req, 200, "{\"status\":\"healthy\",\"uptime\":12.5}");
  }
}

/* The gateway's /api/metrics; its per-upstream latency counters grow by
 * one attempt timeout every look and one slowness ejection every third. */
static atomic_int gw_looks;
static void h_gw_metrics(dsys_request *req, void *ud) {
  int n = atomic_fetch_add(&gw_looks, 1);
  char body[512];
  snprintf(body, sizeof body,
           "{\"metrics\":{\"load-balancer\":{\"name\":\"load-balancer\",\"total\":7}},"
           "\"latency\":{\"data\":{\"attemptTimeouts\":%d,\"hedges\":0,\"slowEjections\":%d}},"
           "\"timestamp\":\"2026-01-01T00:00:00.000Z\"}",
           n, n / 3);
  dsys_respond_json(req, 200, body);
}

static void start_target(target *t, const char *name, int gw) {
  snprintf(t->url, sizeof t->url, "inproc://%s", name);
  dsys_server_new(&t->srv, NULL);
  dsys_server_route(t->srv, "GET", "/health", h_health, t);
  if (gw) dsys_server_route(t->srv, "GET", "/api/metrics", h_gw_metrics, t);
  if (dsys_server_listen(t->srv, t->url)) tap_bail("listen %s", t->url);
}

/* ---- an SSE client ---- */
static pthread_mutex_t smu = PTHREAD_MUTEX_INITIALIZER;
static char sse[1 << 20];
static size_t sse_len;
static atomic_int sse_done;
static void on_chunk(const void *d, size_t n, void *ud) {
  pthread_mutex_lock(&smu);
  if (sse_len + n < sizeof sse) {
    memcpy(sse + sse_len, d, n);
    sse_len += n;
    sse[sse_len] = 0;
  }
  pthread_mutex_unlock(&smu);
}
static void on_sse_done(int err, dsys_reply *r, void *ud) {
  dsys_reply_free(r);
  atomic_store(&sse_done, 1);
}

/* Position of the nth (0-based) event `name` whose data mentions `who`, or -1. */
static long find_event(const char *name, const char *who, int nth) {
  char pat[96];
  snprintf(pat, sizeof pat, "event: %s\ndata: ", name);
  pthread_mutex_lock(&smu);
  long pos = -1;
  const char *p = sse;
  while ((p = strstr(p, pat))) {
    const char *end = strstr(p, "\n\n");
    size_t span = end ? (size_t)(end - p) : strlen(p);
    char *ev = strndup(p, span);
    int match = !who || strstr(ev, who);
    free(ev);
    if (match && nth-- == 0) {
      pos = p - sse;
      break;
    }
    p += strlen(pat);
  }
  pthread_mutex_unlock(&smu);
  return pos;
}

static json_object *event_data(long pos) {
  if (pos < 0) return NULL; /* not found: the checks that follow fail, no crash */
  pthread_mutex_lock(&smu);
  const char *d = strstr(sse + pos, "data: ") + 6;
  const char *e = strchr(d, '\n');
  json_object *o = NULL;
  dsysi_json_parse(d, (size_t)(e - d), &o);
  pthread_mutex_unlock(&smu);
  return o;
}

static int wait_event(const char *name, const char *who, int nth) {
  for (int i = 0; i < 300; i++) {
    if (find_event(name, who, nth) >= 0) return 1;
    msleep(5);
  }
  /* failed once in a fresh-clone CI run (no event after the first):
   * say whether the stream ended and what it last carried */
  char tail[301];
  pthread_mutex_lock(&smu);
  size_t from = sse_len > 300 ? sse_len - 300 : 0, len = sse_len;
  snprintf(tail, sizeof tail, "%s", sse + from);
  pthread_mutex_unlock(&smu);
  for (char *c = tail; *c; c++)
    if (*c == '\n') *c = '|'; /* one TAP diagnostic line */
  tap_diag("no '%s' event: stream %s, %zu bytes; its end: %s", name,
           atomic_load(&sse_done) ? "ended" : "open", len, tail);
  return 0;
}

/* ---- helpers ---- */
static atomic_int stop_adv;
static void *advancer(void *a) {
  while (!atomic_load(&stop_adv)) {
    dsys_clock_advance(clk, 0);
    msleep(2);
  }
  return NULL;
}

static dsys_faultd *fd;
static dsys_client *cli;
#define FURL "inproc://faultd-test"

/* Wait for a cycle count; advancing by 0 runs timers that are due (the
 * static target's "refused" is reported from one). */
static int wait_cycles(uint64_t want) {
  for (int i = 0; i < 600 && dsys_faultd_cycles(fd) < want; i++) {
    dsys_clock_advance(clk, 0);
    msleep(5);
  }
  return dsys_faultd_cycles(fd) >= want;
}

/* One interval: advance the clock and wait for the cycle to complete. */
static int cycle(void) {
  uint64_t n = dsys_faultd_cycles(fd);
  dsys_clock_advance(clk, 5000 * 1000);
  return wait_cycles(n + 1);
}

static json_object *get(const char *path, int *status) {
  dsys_call k = {.size = sizeof k, .url = FURL, .path = path, .timeout_ms = 5000};
  dsys_reply *r = NULL;
  *status = 0;
  if (dsys_client_do(cli, &k, &r)) return NULL;
  *status = dsys_reply_status(r);
  size_t n;
  const char *b = dsys_reply_body(r, &n);
  json_object *o = NULL;
  dsysi_json_parse(b, n, &o);
  dsys_reply_free(r);
  return o;
}

static json_object *path_get(json_object *o, const char *a, const char *b, const char *c) {
  json_object *x = o;
  if (a && !json_object_object_get_ex(x, a, &x)) return NULL;
  if (b && !json_object_object_get_ex(x, b, &x)) return NULL;
  if (c && !json_object_object_get_ex(x, c, &x)) return NULL;
  return x;
}

static json_object *entry_of(json_object *status, const char *type, const char *name) {
  json_object *arr = path_get(status, "services", type, NULL);
  for (size_t i = 0; arr && i < json_object_array_length(arr); i++) {
    json_object *e = json_object_array_get_idx(arr, i);
    if (!strcmp(dsysi_json_str(e, "name"), name)) return e;
  }
  return NULL;
}

static int64_t iget(json_object *o, const char *k) {
  int64_t v = -999;
  if (o) dsysi_json_int64(o, k, &v);
  return v;
}

static json_object *status_now(void) {
  int st;
  return get("/api/status", &st);
}

static int file_has(const char *path, const char *a, const char *b) {
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  char line[4096];
  int found = 0;
  while (fgets(line, sizeof line, f))
    if (strstr(line, a) && (!b || strstr(line, b))) found = 1;
  fclose(f);
  return found;
}

int main(void) {
  dsys_clock_fake_new(&clk, 1767225600000); /* 2026-01-01 */
  static target d1, d2, gw;
  start_target(&d1, "fd-data-1", 0);
  start_target(&d2, "fd-data-2", 0);
  start_target(&gw, "fd-gw", 1);
  dsys_registry *reg;
  dsys_registry_options ro = {.size = sizeof ro, .clock = clk, .ttl_ms = 60000, .reap_ms = 120000,
                              .sweep_interval_ms = -1};
  if (dsys_registry_open(&reg, "memory", NULL, &ro, NULL, 0)) tap_bail("registry");
  dsys_instance i1 = {.id = "data-4002", .type = "data", .url = d1.url, .name = "data-1"};
  dsys_instance i2 = {.id = "data-4003", .type = "data", .url = d2.url, .name = "data-2"};
  dsys_registry_register(reg, &i1);
  dsys_registry_register(reg, &i2);

  char alog[] = "/tmp/faultd-alerts-XXXXXX";
  int afd = mkstemp(alog);
  close(afd);
  dsys_faultd_options fo = {.size = sizeof fo, .registry = reg, .clock = clk,
                            .gateway_url = gw.url, .alert_log = alog};
  is_int(dsys_faultd_new(&fd, &fo), 0, "faultd_new");
  is_int(dsys_faultd_add_target(fd, "compute", "static-1", "inproc://fd-none"), 0, "static target");
  is_int(dsys_faultd_add_target(fd, "compute", "static-1", "inproc://x"), DSYS_EEXIST, "same static target twice");
  is_int(dsys_faultd_add_target(fd, "compute", "static-2", "localhost:80"), DSYS_EURL,
         "a target URL without a scheme: EURL");
  is_int(dsys_faultd_add_target(fd, "compute", "static-2", "gopher://h"), DSYS_ESCHEME,
         "a target URL no transport serves: ESCHEME");
  dsys_faultd_options bad = {.size = sizeof bad, .interval_ms = -1};
  dsys_faultd *x;
  is_int(dsys_faultd_new(&x, &bad), DSYS_EINVAL, "negative interval rejected");
  dsys_server *srv;
  dsys_server_new(&srv, NULL);
  is_int(dsys_faultd_mount(fd, srv), 0, "mount");
  is_int(dsys_faultd_mount(fd, srv), DSYS_ESTATE, "mount twice");
  if (dsys_server_listen(srv, FURL)) tap_bail("listen");
  dsys_client_new(&cli, NULL);

  /* the SSE client first: it must see health-status before anything else */
  dsys_call sk = {.size = sizeof sk, .url = FURL, .path = "/api/events", .on_chunk = on_chunk,
                  .timeout_ms = 60000};
  is_int(dsys_client_send(cli, &sk, on_sse_done, NULL), 0, "SSE client connects");
  ok(wait_event("health-status", NULL, 0), "health-status arrives on connect");

  /* the first round runs at mount: the fake clock has not moved */
  int st;
  json_object *s = NULL;
  for (int i = 0; i < 400; i++) {
    json_object_put(s);
    s = status_now();
    if (iget(path_get(s, "summary", "services", "data"), "healthy") == 2) break;
    msleep(5);
  }
  is_int(iget(path_get(s, "summary", "services", "data"), "healthy"), 2,
         "both instances checked at start, before any clock advance");
  json_object_put(s);
  ok(atomic_load(&d1.hits) == 1 && atomic_load(&d2.hits) == 1,
     "each checked once at start (%d, %d)", atomic_load(&d1.hits), atomic_load(&d2.hits));

  /* first cycle: runs at mount; the static target is refused on the next advance */
  ok(wait_cycles(1), "first cycle completed");
  s = status_now();
  json_object *sum = path_get(s, "summary", NULL, NULL);
  is_int(iget(sum, "total"), 4, "summary total: 2 data + gateway + static");
  is_int(iget(sum, "healthy"), 3, "3 healthy");
  is_int(iget(sum, "unhealthy"), 1, "1 unhealthy (the static target nobody serves)");
  is_int(iget(path_get(sum, "services", "data", NULL), "healthy"), 2, "summary.services.data.healthy");
  json_object *e1 = entry_of(s, "data", "data-1");
  ok(e1 != NULL, "data-1 listed under services.data");
  is_str(dsysi_json_str(e1, "status"), "healthy", "data-1 healthy");
  is_str(dsysi_json_str(e1, "url"), d1.url, "data-1 url");
  ok(e1 && dsysi_json_str(e1, "lastCheck") && dsysi_json_str(e1, "lastSuccess"), "lastCheck and lastSuccess set");
  json_object *up = path_get(e1, "uptime", NULL, NULL);
  ok(up && json_object_get_double(up) == 12.5, "uptime taken from the instance's /health");
  is_int(iget(e1, "consecutiveFailures"), 0, "no failures");
  ok(path_get(e1, "responseTime", NULL, NULL) != NULL, "responseTime set");
  ok(entry_of(s, "gateway", "load-balancer") != NULL, "the gateway is checked too");
  is_int(iget(path_get(s, "requestMetrics", "load-balancer", NULL), "total"), 7,
         "requestMetrics mirrored from the gateway");
  ok(dsysi_json_str(s, "timestamp") != NULL, "timestamp");
  json_object_put(s);

  s = get("/api/status/data", &st);
  is_int(st, 200, "/api/status/data");
  is_str(dsysi_json_str(s, "serviceType"), "data", "serviceType");
  ok(json_object_array_length(path_get(s, "services", NULL, NULL)) == 2, "two data services");
  json_object_put(s);
  s = get("/api/status/nope", &st);
  is_int(st, 404, "/api/status/:type unknown: 404");
  ok(s && dsysi_json_str(s, "error"), "with a JSON error");
  json_object_put(s);
  s = get("/health", &st);
  is_str(dsysi_json_str(s, "service"), "fault-detector", "/health service");
  is_str(dsysi_json_str(s, "status"), "healthy", "/health status");
  json_object_put(s);
  s = get("/api/metrics", &st);
  is_int(iget(path_get(s, "metrics", "load-balancer", NULL), "total"), 7, "/api/metrics mirrors the gateway");
  json_object_put(s);
  ok(wait_event("health-summary", NULL, 0), "health-summary event after a cycle");
  ok(wait_event("request-metrics", NULL, 0), "request-metrics event after a cycle");

  /* healthy -> 3 failures -> CRITICAL -> recovery */
  atomic_store(&d1.mode, FAIL);
  ok(cycle(), "cycle 2");
  s = status_now();
  e1 = entry_of(s, "data", "data-1");
  is_str(dsysi_json_str(e1, "status"), "unhealthy", "one failure: unhealthy");
  is_int(iget(e1, "consecutiveFailures"), 1, "consecutiveFailures 1");
  ok(find_event("service-failure", "data-1", 0) < 0, "no service-failure yet");
  json_object_put(s);
  ok(cycle() && cycle(), "cycles 3 and 4");
  s = status_now();
  e1 = entry_of(s, "data", "data-1");
  is_int(iget(e1, "consecutiveFailures"), 3, "consecutiveFailures 3");
  ok(json_object_get_boolean(path_get(e1, "critical", NULL, NULL)), "critical");
  is_int(iget(path_get(s, "summary", NULL, NULL), "unhealthy"), 2, "summary: 2 unhealthy");
  json_object_put(s);
  ok(wait_event("service-failure", "data-1", 0), "service-failure event");
  long fpos = find_event("service-failure", "data-1", 0);
  json_object *ev = event_data(fpos);
  is_str(dsysi_json_str(ev, "severity"), "CRITICAL", "severity CRITICAL");
  is_str(dsysi_json_str(ev, "serviceType"), "data", "payload has serviceType");
  is_int(iget(ev, "consecutiveFailures"), 3, "payload has consecutiveFailures");
  ok(dsysi_json_str(ev, "timestamp") != NULL, "payload has timestamp");
  json_object_put(ev);
  ok(cycle(), "cycle 5");
  ok(find_event("service-failure", "data-1", 1) < 0, "service-failure only once per outage");
  atomic_store(&d1.mode, OK);
  ok(cycle(), "cycle 6");
  ok(wait_event("service-recovery", "data-1", 0), "service-recovery event");
  long hpos = find_event("health-status", NULL, 0);
  long u1 = find_event("service-health-update", "\"unhealthy\"", 0);
  long rpos = find_event("service-recovery", "data-1", 0);
  ok(hpos >= 0 && hpos < u1 && u1 < fpos && fpos < rpos,
     "in order: health-status, unhealthy update, service-failure, service-recovery (%ld %ld %ld %ld)",
     hpos, u1, fpos, rpos);
  s = status_now();
  is_str(dsysi_json_str(entry_of(s, "data", "data-1"), "status"), "healthy", "data-1 healthy again");
  json_object_put(s);
  ok(file_has(alog, "\"service-failure\"", "CRITICAL"), "alert log has the CRITICAL line");
  ok(file_has(alog, "\"service-recovery\"", NULL), "alert log has the recovery");

  /* slow */
  atomic_store(&d2.mode, SLOW);
  uint64_t n0 = dsys_faultd_cycles(fd);
  dsys_clock_advance(clk, 5000 * 1000);
  msleep(30);
  dsys_clock_advance(clk, 1500 * 1000);
  ok(wait_cycles(n0 + 1), "cycle with a slow target");
  ok(wait_event("slow-response", "data-2", 0), "slow-response event");
  s = status_now();
  json_object *e2 = entry_of(s, "data", "data-2");
  ok(iget(e2, "responseTime") >= 1500, "responseTime %lld >= 1500", (long long)iget(e2, "responseTime"));
  ok(json_object_get_boolean(path_get(e2, "slow", NULL, NULL)), "marked slow");
  is_str(dsysi_json_str(e2, "status"), "healthy", "slow but healthy");
  json_object_put(s);
  ok(file_has(alog, "\"slow-response\"", "WARNING"), "alert log has the slow response");
  /* the gateway's counters grew across these cycles */
  ok(wait_event("upstream-latency", "\"upstream\":\"data\"", 0),
     "upstream-latency event from the gateway's growing attempt timeouts");
  ok(atomic_load(&gw_looks) >= 4, "the gateway was looked at %d times (its slowEjections grew)",
     atomic_load(&gw_looks));
  ok(wait_event("slow-ejection", "ejected for slowness", 0),
     "slow-ejection alert event once the gateway's slowEjections grew");
  ok(file_has(alog, "\"slow-ejection\"", "WARNING"), "alert log has the slowness ejection");
  atomic_store(&d2.mode, OK);
  /* back in step with the interval (checks measure time on the fake clock,
   * so the clock must not jump while one is in flight) */
  n0 = dsys_faultd_cycles(fd);
  dsys_clock_advance(clk, 3500 * 1000);
  ok(wait_cycles(n0 + 1), "next cycle");
  /* a full disk: healthy, but an alert, and another when space is back */
  atomic_store(&d2.mode, FULL);
  n0 = dsys_faultd_cycles(fd);
  dsys_clock_advance(clk, 5000 * 1000);
  ok(wait_cycles(n0 + 1), "cycle with a full storage");
  ok(wait_event("storage-full", "data-2", 0), "storage-full alert event");
  ok(file_has(alog, "\"storage-full\"", "WARNING"), "alert log has the full storage");
  atomic_store(&d2.mode, OK);
  n0 = dsys_faultd_cycles(fd);
  dsys_clock_advance(clk, 5000 * 1000);
  ok(wait_cycles(n0 + 1), "cycle with space back");
  ok(wait_event("storage-recovered", "data-2", 0), "storage-recovered event");
  s = status_now();
  e2 = entry_of(s, "data", "data-2");
  ok(!json_object_get_boolean(path_get(e2, "slow", NULL, NULL)) && iget(e2, "responseTime") < 1000,
     "fast again: not slow (%lld ms)", (long long)iget(e2, "responseTime"));
  json_object_put(s);

  /* POST /api/check */
  n0 = dsys_faultd_cycles(fd);
  dsys_call ck = {.size = sizeof ck, .url = FURL, .method = "POST", .path = "/api/check", .timeout_ms = 5000};
  dsys_reply *r = NULL;
  /* the static target's refusal completes on a clock advance: advance from here */
  pthread_t adv;
  atomic_store(&stop_adv, 0);
  pthread_create(&adv, NULL, advancer, NULL);
  is_int(dsys_client_do(cli, &ck, &r), 0, "POST /api/check");
  atomic_store(&stop_adv, 1);
  pthread_join(adv, NULL);
  is_int(dsys_reply_status(r), 200, "answered 200");
  ok(dsys_faultd_cycles(fd) > n0, "after a cycle completed");
  ok(strstr(dsys_reply_body(r, NULL), "Health check completed") != NULL, "message");
  dsys_reply_free(r);

  /* reaped while alive: kept, reported */
  for (int i = 0; i < 25; i++) {
    dsys_registry_heartbeat(reg, "data-4003");
    cycle();
  }
  dsys_registry_heartbeat(reg, "data-4003");
  dsys_registry_sweep(reg); /* data-4002 is past the reap time */
  s = status_now();
  e1 = entry_of(s, "data", "data-1");
  ok(e1 != NULL, "reaped instance still listed");
  ok(e1 && !json_object_get_boolean(path_get(e1, "registered", NULL, NULL)), "registered:false");
  is_str(dsysi_json_str(e1, "reason"), "reaped", "reason reaped");
  json_object_put(s);
  ok(file_has(alog, "reaped by the registry", "WARNING"), "alert log reports the vanished instance");
  ok(cycle(), "cycle after the reap");
  s = status_now();
  is_str(dsysi_json_str(entry_of(s, "data", "data-1"), "status"), "unknown", "alive but unregistered: unknown");
  json_object_put(s);
  atomic_store(&d1.mode, FAIL);
  ok(cycle() && cycle() && cycle(), "3 cycles with the vanished instance failing");
  ok(wait_event("service-failure", "data-1", 1), "service-failure for the vanished instance");
  dsys_registry_register(reg, &i1);
  atomic_store(&d1.mode, OK);
  ok(cycle(), "cycle after it registered again");
  s = status_now();
  e1 = entry_of(s, "data", "data-1");
  ok(e1 && json_object_get_boolean(path_get(e1, "registered", NULL, NULL)), "registered again");
  is_str(dsysi_json_str(e1, "status"), "healthy", "and healthy");
  json_object_put(s);

  /* deregistered and gone: removed */
  atomic_store(&d2.mode, FAIL);
  dsys_registry_deregister(reg, "data-4003");
  ok(cycle(), "cycle after a deregistration");
  s = status_now();
  ok(entry_of(s, "data", "data-2") == NULL, "a deregistered instance that stopped answering is removed");
  json_object_put(s);
  ok(wait_event("service-health-update", "\"removed\"", 0), "with a removed update event");

  /* a new instance is checked when it appears: once, without waiting for
   * the next round (the clock stands still; the next round is 5 s away) */
  static target d3;
  start_target(&d3, "fd-data-3", 0);
  n0 = dsys_faultd_cycles(fd);
  dsys_instance i3 = {.id = "data-4004", .type = "data", .url = d3.url, .name = "data-3"};
  dsys_registry_register(reg, &i3);
  dsys_registry_register(reg, &i3); /* more changes while its check runs */
  dsys_registry_heartbeat(reg, "data-4004");
  dsys_registry_register(reg, &i3);
  const char *st3 = NULL;
  s = NULL;
  for (int i = 0; i < 400; i++) {
    json_object_put(s);
    s = status_now();
    st3 = dsysi_json_str(entry_of(s, "data", "data-3"), "status");
    if (st3 && !strcmp(st3, "healthy")) break;
    msleep(5);
  }
  is_str(st3, "healthy", "a newly registered instance is healthy without waiting for a round");
  json_object_put(s);
  msleep(50);
  is_int(atomic_load(&d3.hits), 1, "checked exactly once for its registration and 3 more changes");
  is_int(dsys_faultd_cycles(fd), n0, "by a check of its own, not a cycle");
  ok(cycle(), "next cycle");
  is_int(atomic_load(&d3.hits), 2, "then once per cycle");

  /* shutdown ends the stream */
  dsys_faultd_shutdown(fd);
  for (int i = 0; i < 400 && !atomic_load(&sse_done); i++) msleep(5);
  ok(atomic_load(&sse_done), "shutdown ends the SSE stream");
  s = get("/api/events", &st);
  is_int(st, 503, "new event streams refused after shutdown");
  json_object_put(s);
  dsys_client_free(cli);
  dsys_server_stop(srv, 1000);
  dsys_server_free(srv);
  dsys_faultd_free(fd);
  dsys_registry_close(reg);
  dsys_server_free(d1.srv);
  dsys_server_free(d2.srv);
  dsys_server_free(gw.srv);
  dsys_server_free(d3.srv);
  dsys_clock_free(clk);
  unlink(alog);
  return tap_done();
}
