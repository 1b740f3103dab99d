/*
 * bench-cache: cross-instance invalidation delay, for bench/run-cache.
 * Two data services on one SQLite file (each on its own HTTP server on
 * 127.0.0.1, data-2 reading items through a dsys_cache), and a gateway
 * with the response cache on in front of data-2 only. Each round writes
 * one item through data-1 (PUT), then polls data-2 and the gateway (GET,
 * every 0.5 ms) until each answers with the new ETag; the delay is from
 * the PUT's answer to that read's answer. Writes start at a random phase
 * of the poll.
 *
 *   bench-cache DB_FILE POLL_MS WRITES
 *   bench-cache serve
 *
 * POLL_MS is the data services' change-log poll (events_poll_ms; dsys-
 * datad's is 200 ms). Prints, for data-2 and for the gateway: median,
 * p99 and max delay in ms, and reads that never saw the write (5 s bound).
 *
 * "serve" runs an upstream whose GET /api/data/... answers are like an
 * item's (about 330 bytes of JSON, an ETag) but carry Cache-Control:
 * max-age=60, so that a caching gateway answers them itself (X-Cache:
 * HIT): what dsys-datad's no-cache items never allow. It prints
 * "listening URL" and runs until SIGTERM or SIGINT.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <distsys/distsys.h>
#include <distsys/cache.h>
#include <distsys/gateway.h>
#include <distsys/services.h>

typedef struct inst {
  dsys_store *st;
  dsys_cache *cache;
  dsys_server *srv;
  dsys_data_service *svc;
} inst;

static void die(const char *what, int rc) {
  fprintf(stderr, "bench-cache: %s: %s\n", what, dsys_strerror(rc));
  exit(1);
}

static void start(inst *I, const char *db, const char *name, int64_t poll_ms, int cached) {
  char url[512];
  snprintf(url, sizeof url, "sqlite://%s", db);
  int rc = dsys_store_open(&I->st, url, NULL);
  if (rc) die("store", rc);
  dsys_cache_options co = {.size = sizeof co, .ttl_ms = 30000}; /* dsys-datad's --cache-ttl */
  if (cached && (rc = dsys_cache_new(&I->cache, &co))) die("cache", rc);
  dsys_server_options so = {.size = sizeof so, .name = name};
  if ((rc = dsys_server_new(&I->srv, &so))) die("server", rc);
  dsys_data_options o = {.size = sizeof o, .store = I->st, .name = name, .no_seed = 1,
                         .events_poll_ms = poll_ms, .cache = I->cache};
  if ((rc = dsys_service_data_mount(I->srv, &o, &I->svc))) die("data mount", rc);
  if ((rc = dsys_server_listen(I->srv, "http://127.0.0.1:0"))) die("listen", rc);
}

static void stop(inst *I) {
  dsys_server_stop(I->srv, 2000);
  dsys_service_data_free(I->svc);
  dsys_server_free(I->srv);
  dsys_store_close(I->st);
  dsys_cache_free(I->cache);
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static dsys_client *cli;

/* One call; the ETag of a 200/201 answer copied to tag ("" otherwise). */
static int do_call(const char *url, const char *method, const char *path, const char *body,
                   char *tag, size_t n) {
  dsys_header h[] = {{"Content-Type", "application/json"}};
  dsys_call c = {.size = sizeof c, .method = method, .url = url, .path = path,
                 .headers = h, .nheaders = body ? 1 : 0, .body = body,
                 .body_len = body ? strlen(body) : 0, .timeout_ms = 5000};
  dsys_reply *r = NULL;
  tag[0] = '\0';
  if (dsys_client_do(cli, &c, &r)) return -1;
  int st = dsys_reply_status(r);
  const char *e = dsys_reply_header(r, "ETag");
  if (e && st < 300) snprintf(tag, n, "%s", e);
  dsys_reply_free(r);
  return st;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void report(const char *what, double *d, int n, int missed) {
  qsort(d, (size_t)n, sizeof *d, cmp);
  if (!n) {
    printf("%-28s no write seen (%d missed)\n", what, missed);
    return;
  }
  int p99 = (int)((n - 1) * 0.99 + 0.5);
  printf("%-28s median %.1f ms  p99 %.1f ms  max %.1f ms  (%d writes, %d never seen)\n", what,
         d[(n - 1) / 2], d[p99], d[n - 1], n, missed);
}

static void h_item(dsys_request *req, void *ud) {
  (void)ud;
  static char body[400];
  static size_t len;
  if (!len) {
    char val[281];
    memset(val, '0', 280);
    val[280] = '\0';
    len = (size_t)snprintf(body, sizeof body,
                           "{\"message\":\"Data retrieved successfully\",\"data\":{\"id\":\"d1\","
                           "\"key\":\"k\",\"value\":\"%s\",\"version\":1}}",
                           val);
  }
  dsys_response_header(req, "ETag", "\"1.1\"");
  dsys_response_header(req, "Cache-Control", "max-age=60");
  dsys_respond(req, 200, "application/json", body, len);
}

static int serve(void) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  dsys_log_set_level(DSYS_LOG_ERROR);
  dsys_server *srv = NULL;
  dsys_server_options o = {.size = sizeof o, .event_loops = 1};
  int rc = dsys_server_new(&srv, &o);
  if (!rc) rc = dsys_server_route(srv, "GET", "/api/data/*", h_item, NULL);
  if (!rc) rc = dsys_server_listen(srv, "http://127.0.0.1:0");
  if (rc) die("serve", rc);
  printf("listening %s\n", dsys_server_url(srv, 0));
  fflush(stdout);
  int sig;
  sigwait(&set, &sig);
  dsys_server_free(srv);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 2 && !strcmp(argv[1], "serve")) return serve();
  if (argc != 4) {
    fprintf(stderr, "usage: bench-cache DB_FILE POLL_MS WRITES | bench-cache serve\n");
    return 2;
  }
  int64_t poll = atoll(argv[2]);
  int writes = atoi(argv[3]);
  if (poll < 1 || writes < 1 || writes > 100000) return 2;
  dsys_log_set_level(DSYS_LOG_ERROR);
  inst d1 = {0}, d2 = {0};
  start(&d1, argv[1], "data-1", poll, 1);
  start(&d2, argv[1], "data-2", poll, 1);
  const char *u1 = dsys_server_url(d1.srv, 0), *u2 = dsys_server_url(d2.srv, 0);
  dsys_gateway_options go = {.size = sizeof go};
  dsys_gateway *gw = NULL;
  int rc = dsys_gateway_new(&gw, &go);
  const char *ups[] = {u2};
  if (!rc) rc = dsys_gateway_add_upstream(gw, "data", ups, 1, NULL);
  dsys_gateway_route_options ro = {.size = sizeof ro, .cache = DSYS_GATEWAY_CACHE_ON};
  if (!rc) rc = dsys_gateway_add_route_ex(gw, "/api/data", "data", &ro);
  dsys_server *gsrv = NULL;
  dsys_server_options gso = {.size = sizeof gso, .event_loops = 1};
  if (!rc) rc = dsys_server_new(&gsrv, &gso);
  if (!rc) rc = dsys_gateway_mount(gw, gsrv);
  if (!rc) rc = dsys_server_listen(gsrv, "http://127.0.0.1:0");
  if (rc) die("gateway", rc);
  const char *g = dsys_server_url(gsrv, 0);
  if ((rc = dsys_client_new(&cli, NULL))) die("client", rc);

  char tag[128], seen[128];
  if (do_call(u1, "POST", "/api/data", "{\"key\":\"inv\",\"value\":0}", tag, sizeof tag) != 201)
    die("create the item", DSYS_EPROTO);
  /* both caches hold the item before the first write */
  do_call(u2, "GET", "/api/data/inv", NULL, seen, sizeof seen);
  do_call(g, "GET", "/api/data/inv", NULL, seen, sizeof seen);
  double *dd = calloc((size_t)writes, sizeof *dd), *dg = calloc((size_t)writes, sizeof *dg);
  int nd = 0, ng = 0, md = 0, mg = 0;
  srand(42);
  for (int i = 1; i <= writes; i++) {
    /* a random phase against the poll: else each write would follow the
     * poll that showed the previous one, and wait a whole interval */
    int64_t us = (int64_t)((double)rand() / RAND_MAX * (double)poll * 1000);
    struct timespec ph = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ph, NULL);
    char body[64];
    snprintf(body, sizeof body, "{\"value\":%d}", i);
    if (do_call(u1, "PUT", "/api/data/inv", body, tag, sizeof tag) != 200 || !tag[0])
      die("PUT", DSYS_EPROTO);
    double t0 = now_ms(), td = -1, tg = -1;
    while ((td < 0 || tg < 0) && now_ms() - t0 < 5000) {
      if (td < 0 && do_call(u2, "GET", "/api/data/inv", NULL, seen, sizeof seen) == 200 &&
          !strcmp(seen, tag))
        td = now_ms() - t0;
      if (tg < 0 && do_call(g, "GET", "/api/data/inv", NULL, seen, sizeof seen) == 200 &&
          !strcmp(seen, tag))
        tg = now_ms() - t0;
      struct timespec ms = {0, 500000};
      nanosleep(&ms, NULL);
    }
    if (td >= 0) dd[nd++] = td;
    else md++;
    if (tg >= 0) dg[ng++] = tg;
    else mg++;
  }
  printf("change-log poll %lld ms:\n", (long long)poll);
  report("  data-2 (dsys_cache)", dd, nd, md);
  report("  gateway --cache on", dg, ng, mg);
  free(dd);
  free(dg);
  dsys_client_free(cli);
  dsys_server_stop(gsrv, 2000);
  dsys_server_free(gsrv);
  dsys_gateway_free(gw);
  stop(&d1);
  stop(&d2);
  return 0;
}
