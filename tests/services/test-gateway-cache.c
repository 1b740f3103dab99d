/*
 * The gateway's response cache (issue 21): a real upstream on 127.0.0.1:0
 * that answers with the caching headers each request asks it for (X-T-*
 * request headers), the gateway on event loops with a fake clock. Checks
 * the rules of docs/reference/gateway.md, "Response cache": off by
 * default; max-age / s-maxage / Age; no-store, private, malformed or
 * conflicting Cache-Control, Set-Cookie, non-200: not stored; no-cache +
 * ETag: revalidated with If-None-Match, the stored body served on 304;
 * Vary (and Vary: *, too many names, bad names, a huge value); requests
 * with Authorization; request Cache-Control, Range; HEAD; a write through
 * the gateway invalidates; the size bounds; metrics; reload on and off.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <distsys/distsys.h>
#include <distsys/gateway.h>
#include <distsys/metrics.h>
#include "services/edge.h"
#include "tap.h"

static dsys_clock *fclk;
static atomic_int hits; /* answers the upstream gave */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static char last_inm[256]; /* the If-None-Match the upstream last saw */

/* Answers as the X-T-* request headers say: X-T-Status (default 200),
 * X-T-CC (Cache-Control), X-T-ETag (its current tag: an If-None-Match
 * naming it gets 304), X-T-Vary, X-T-Age, X-T-Cookie (Set-Cookie),
 * X-T-Pad (that many body bytes). The body counts the answers. */
static void h_up(dsys_request *req, void *ud) {
  (void)ud;
  int n = atomic_fetch_add(&hits, 1) + 1;
  const char *inm = dsys_request_header(req, "If-None-Match");
  pthread_mutex_lock(&mu);
  snprintf(last_inm, sizeof last_inm, "%s", inm ? inm : "");
  pthread_mutex_unlock(&mu);
  static const char *const pass[][2] = {{"X-T-CC", "Cache-Control"}, {"X-T-CC2", "Cache-Control"},
                                        {"X-T-ETag", "ETag"},        {"X-T-Vary", "Vary"},
                                        {"X-T-Age", "Age"},          {"X-T-Cookie", "Set-Cookie"}};
  for (size_t i = 0; i < sizeof pass / sizeof pass[0]; i++) {
    const char *v = dsys_request_header(req, pass[i][0]);
    if (v) dsys_response_header(req, pass[i][1], v);
  }
  const char *tag = dsys_request_header(req, "X-T-ETag");
  const char *st = dsys_request_header(req, "X-T-Status");
  if (!st && tag && inm && dsysi_etag_list_match(inm, tag)) {
    dsys_respond(req, 304, NULL, NULL, 0);
    return;
  }
  const char *pad = dsys_request_header(req, "X-T-Pad");
  size_t np = pad ? strtoul(pad, NULL, 10) : 0;
  const char *lang = dsys_request_header(req, "Accept-Language");
  char *body = malloc(np + 128);
  int bl = snprintf(body, 128, "{\"n\":%d,\"lang\":\"%s\",\"method\":\"%s\",\"pad\":\"", n,
                    lang ? lang : "", dsys_request_method(req));
  memset(body + bl, 'x', np);
  memcpy(body + bl + np, "\"}", 2);
  dsys_respond(req, st ? atoi(st) : 200, "application/json", body, (size_t)bl + np + 2);
  free(body);
}

static void h_health(dsys_request *req, void *ud) {
  (void)ud;
  dsys_respond_json(req, 200, "{\"status\":\"healthy\"}");
}

static const char *gurl;
static dsys_client *cli;

/* One request; then "Name: value" headers, NULL-terminated. */
static dsys_reply *rq(const char *method, const char *path, ...) {
  dsys_header h[24];
  char names[24][64];
  size_t n = 0;
  va_list ap;
  va_start(ap, path);
  for (const char *s; n < 24 && (s = va_arg(ap, const char *));) {
    const char *c = strchr(s, ':');
    snprintf(names[n], sizeof names[n], "%.*s", (int)(c - s), s);
    h[n].name = names[n];
    h[n].value = c + 2;
    n++;
  }
  va_end(ap);
  dsys_call k = {.size = sizeof k, .method = method, .url = gurl, .path = path, .headers = h,
                 .nheaders = n, .body = strcmp(method, "PUT") ? NULL : "{}",
                 .body_len = strcmp(method, "PUT") ? 0 : 2, .timeout_ms = 10000};
  dsys_reply *r = NULL;
  if (dsys_client_do(cli, &k, &r)) return NULL;
  return r;
}

static int status(dsys_reply *r) { return r ? dsys_reply_status(r) : -1; }
static const char *hdr(dsys_reply *r, const char *name) {
  const char *v = r ? dsys_reply_header(r, name) : NULL;
  return v ? v : "(none)";
}
/* The upstream answer number in the body ("n"), -1 if none. */
static int body_n(dsys_reply *r) {
  size_t len;
  const char *b = r ? dsys_reply_body(r, &len) : NULL;
  const char *p = b && len ? strstr(b, "\"n\":") : NULL;
  return p ? atoi(p + 4) : -1;
}

/* Two GETs of path with the same headers: the X-Cache of the second,
 * and whether it reached the upstream. */
static const char *second_xcache(const char *path, const char *h1, const char *h2, int *reached) {
  static char x[32];
  dsys_reply *r = rq("GET", path, h1, h2, NULL);
  dsys_reply_free(r);
  int before = atomic_load(&hits);
  r = rq("GET", path, h1, h2, NULL);
  snprintf(x, sizeof x, "%s", hdr(r, "X-Cache"));
  *reached = atomic_load(&hits) - before;
  dsys_reply_free(r);
  return x;
}

static double metric(dsys_metrics *reg, const char *series) {
  char *text = NULL;
  size_t len;
  double v = -1;
  if (dsys_metrics_render(reg, &text, &len)) return -1;
  char line[256];
  snprintf(line, sizeof line, "\n%s", series); /* a series line, not its HELP */
  const char *p = strstr(text, line);
  if (p) p++;
  if (p) v = strtod(p + strlen(series), NULL);
  dsys_free(text);
  return v;
}

static dsys_gateway *make_gateway(const char *up, int cache, size_t max_object,
                                  size_t max_entries) {
  dsys_gateway_options go = {.size = sizeof go, .clock = fclk, .try_timeout_ms = 5000,
                             .health_interval_ms = 3600000, .cache_max_object = max_object,
                             .cache_max_entries = max_entries};
  dsys_gateway *gw = NULL;
  if (dsys_gateway_new(&gw, &go)) tap_bail("gateway");
  const char *u[1] = {up};
  dsys_gateway_add_upstream(gw, "up", u, 1, NULL);
  dsys_gateway_route_options ro = {.size = sizeof ro, .cache = cache};
  if (dsys_gateway_add_route_ex(gw, "/c", "up", &ro)) tap_bail("route /c");
  ro.cache = cache ? DSYS_GATEWAY_CACHE_AUTHORIZED : 0;
  if (dsys_gateway_add_route_ex(gw, "/shared", "up", &ro)) tap_bail("route /shared");
  if (dsys_gateway_add_route(gw, "/plain", "up")) tap_bail("route /plain");
  return gw;
}

/* The parsers alone: given values, then random bytes (no crash, the
 * results within their bounds). */
static void unit_parsers(void) {
  dsysi_cc cc;
  dsysi_cc_init(&cc);
  dsysi_cc_parse(&cc, "Public, MAX-AGE=30 ,s-maxage=\"99999999999\", no-cache=\"a,b\", x=\"\\\"\"");
  ok(!cc.bad && cc.public_ && cc.max_age == 30 && cc.s_maxage == 2147483648LL && cc.no_cache,
     "Cache-Control: case, spaces, quoted values, a quoted comma, delta-seconds capped at 2^31");
  static const char *const bad_cc[] = {"max-age=1 2", "max-age=", "=", "a b", "max-age=\"1",
                                       "max-age=0x10", "max-age=1;", "\"x\""};
  for (size_t i = 0; i < sizeof bad_cc / sizeof bad_cc[0]; i++) {
    dsysi_cc_init(&cc);
    dsysi_cc_parse(&cc, bad_cc[i]);
    ok(cc.bad, "Cache-Control '%s' is malformed", bad_cc[i]);
  }
  char names[DSYSI_VARY_MAX][64];
  size_t nn = 0;
  ok(!dsysi_vary_parse(" Accept-Encoding ,, accept-language", names, &nn) && nn == 2 &&
         !strcmp(names[0], "accept-encoding") && !strcmp(names[1], "accept-language"),
     "Vary: names lower-cased, empty elements skipped");
  ok(dsysi_etag_list_match("\"a\", W/\"b\"", "\"b\"") && dsysi_etag_list_match("*", "\"x\"") &&
         !dsysi_etag_list_match("\"a\"", "\"b\"") && dsysi_etag_list_match("\"b\"", "W/\"b\""),
     "If-None-Match: lists, weak tags, *");
  uint64_t x = 88172645463325252ull;
  int sane = 1;
  static const char alphabet[] = "max-age=s-maxage=no-store,private\"\\ \t,=*\x01\xff" "0123456789Vary";
  for (int i = 0; i < 100000 && sane; i++) {
    char buf[64];
    size_t len = (size_t)(i % 63);
    for (size_t k = 0; k < len; k++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      buf[k] = alphabet[x % (sizeof alphabet - 1)];
    }
    buf[len] = '\0';
    dsysi_cc_init(&cc);
    dsysi_cc_parse(&cc, buf);
    nn = 0;
    int vr = dsysi_vary_parse(buf, names, &nn);
    sane = cc.max_age >= -1 && cc.max_age <= 2147483648LL && cc.s_maxage >= -1 &&
           nn <= DSYSI_VARY_MAX && (vr == 0 || vr == -1);
    for (size_t k = 0; k < nn && sane; k++) sane = strlen(names[k]) < 64 && names[k][0];
  }
  ok(sane, "100000 random Cache-Control and Vary values: parsed within bounds");
}

int main(void) {
  dsys_log_set_level(DSYS_LOG_ERROR);
  unit_parsers();
  dsys_clock_fake_new(&fclk, dsys_clock_wall_ms(dsys_clock_real()));
  dsys_server *up;
  dsys_server_new(&up, NULL);
  dsys_server_route(up, "GET", "/health", h_health, NULL);
  dsys_server_route(up, "*", "/*", h_up, NULL);
  if (dsys_server_listen(up, "http://127.0.0.1:0")) tap_bail("upstream listen");
  const char *upurl = dsys_server_url(up, 0);

  /* ---- configuration ---- */
  dsys_gateway *gw = make_gateway(upurl, DSYS_GATEWAY_CACHE_ON, 4096, 8);
  dsys_gateway_route_options bad = {.size = sizeof bad, .cache = 3};
  is_int(dsys_gateway_add_route_ex(gw, "/x", "up", &bad), DSYS_EINVAL, "unknown cache mode refused");
  bad.cache = DSYS_GATEWAY_CACHE_ON;
  bad.filters = "cors,jwt";
  is_int(dsys_gateway_add_route_ex(gw, "/x", "up", &bad), DSYS_EINVAL,
         "a caching route whose filters leave out cache is refused");
  bad.filters = "cache,jwt";
  is_int(dsys_gateway_add_route_ex(gw, "/y", "up", &bad), 0, "filters cache,jwt with cache on");
  dsys_metrics *reg = NULL;
  dsys_metrics_new(&reg);
  is_int(dsys_gateway_metrics(gw, reg), 0, "metrics registered");
  dsys_server *srv;
  dsys_server_options so = {.size = sizeof so, .event_loops = 2, .connection_memory = 32768};
  dsys_server_new(&srv, &so);
  is_int(dsys_gateway_mount(gw, srv), 0, "mount");
  if (dsys_server_listen(srv, "http://127.0.0.1:0")) tap_bail("gateway listen");
  gurl = dsys_server_url(srv, 0);
  dsys_client_new(&cli, NULL);
  int reached;

  /* ---- off by default ---- */
  const char *x = second_xcache("/plain/a", "X-T-CC: max-age=60", NULL, &reached);
  is_str(x, "(none)", "a route without cache: no X-Cache");
  is_int(reached, 1, "a route without cache: every GET reaches the upstream");

  /* ---- max-age ---- */
  dsys_reply *r = rq("GET", "/c/fresh", "X-T-CC: max-age=60", NULL);
  is_str(hdr(r, "X-Cache"), "MISS", "first GET: MISS");
  int n1 = body_n(r);
  dsys_reply_free(r);
  int before = atomic_load(&hits);
  dsys_clock_advance(fclk, 5 * 1000000LL);
  r = rq("GET", "/c/fresh", "X-T-CC: max-age=60", NULL);
  is_str(hdr(r, "X-Cache"), "HIT", "second GET within max-age: HIT");
  is_int(body_n(r), n1, "the stored body");
  is_str(hdr(r, "Age"), "5", "Age counts the time in the cache");
  is_str(hdr(r, "Cache-Control"), "max-age=60", "the upstream's Cache-Control is kept");
  is_str(hdr(r, "Content-Type"), "application/json", "and its Content-Type");
  ok(strcmp(hdr(r, "X-Request-Id"), "(none)"), "a HIT has its own X-Request-Id");
  dsys_reply_free(r);
  is_int(atomic_load(&hits) - before, 0, "the HIT did not reach the upstream");
  r = rq("HEAD", "/c/fresh", NULL);
  is_int(status(r), 200, "HEAD of a stored GET answer: 200");
  is_str(hdr(r, "X-Cache"), "HIT", "HEAD: HIT");
  dsys_reply_free(r);
  dsys_clock_advance(fclk, 56 * 1000000LL);
  r = rq("GET", "/c/fresh", "X-T-CC: max-age=60", NULL);
  is_str(hdr(r, "X-Cache"), "MISS", "after max-age, without an ETag: MISS");
  ok(body_n(r) > n1, "a new upstream answer");
  dsys_reply_free(r);
  r = rq("HEAD", "/c/never-got", "X-T-CC: max-age=60", NULL);
  is_str(hdr(r, "X-Cache"), "MISS", "HEAD miss: passed on");
  dsys_reply_free(r);
  r = rq("GET", "/c/never-got", "X-T-CC: max-age=60", NULL);
  is_str(hdr(r, "X-Cache"), "MISS", "a HEAD answer is not stored for GET");
  dsys_reply_free(r);

  /* s-maxage wins over max-age; the upstream's Age counts */
  x = second_xcache("/c/smax", "X-T-CC: max-age=0, s-maxage=60", NULL, &reached);
  is_str(x, "HIT", "s-maxage=60 overrides max-age=0 (a shared cache)");
  r = rq("GET", "/c/aged", "X-T-CC: max-age=60", "X-T-Age: 55", NULL);
  dsys_reply_free(r);
  dsys_clock_advance(fclk, 6 * 1000000LL);
  r = rq("GET", "/c/aged", "X-T-CC: max-age=60", "X-T-Age: 55", NULL);
  is_str(hdr(r, "X-Cache"), "MISS", "Age: 55 + 6 s in the cache > max-age=60: stale");
  dsys_reply_free(r);

  /* ---- what is not stored ---- */
  static const char *const not_stored[] = {
      "X-T-CC: no-store", "X-T-CC: private, max-age=60", "X-T-CC: private=\"x\", max-age=60",
      "X-T-CC: max-age=abc", "X-T-CC: max-age", "X-T-CC: max-age=-1",
      "X-T-CC: max-age=5, max-age=10", "X-T-CC: max-age=\"60", "X-T-CC: =60",
      "X-T-CC: max-age=60 junk", "X-T-CC: max-age=60;x", "X-T-CC: ,,,",
      "X-T-Vary: *", "X-T-Vary: a, b, c, d, e, f, g, h, i", "X-T-Vary: bad name",
      "X-T-Vary: Accept, *", "X-T-Cookie: session=1", "X-T-Status: 404", "X-T-Status: 201",
      "X-T-Status: 500"};
  char path[64];
  for (size_t i = 0; i < sizeof not_stored / sizeof not_stored[0]; i++) {
    snprintf(path, sizeof path, "/c/not-%zu", i);
    /* a max-age for all but those testing Cache-Control */
    const char *cc = strstr(not_stored[i], "X-T-CC") ? NULL : "X-T-CC2: max-age=60";
    x = second_xcache(path, not_stored[i], cc, &reached);
    ok(reached == 1 && !strcmp(x, "MISS"), "not stored: %s (second GET %s, reached %d)",
       not_stored[i], x, reached);
  }
  x = second_xcache("/c/quoted", "X-T-CC: max-age=\"60\", public, immutable", NULL, &reached);
  is_str(x, "HIT", "max-age=\"60\" (quoted) and unknown directives: stored");
  x = second_xcache("/c/two-cc", "X-T-CC: public", "X-T-CC2: max-age=60", &reached);
  is_str(x, "HIT", "two Cache-Control headers are read together");

  /* ---- no-cache + ETag: revalidation ---- */
  r = rq("GET", "/c/item", "X-T-CC: no-cache", "X-T-ETag: \"v1\"", NULL);
  is_str(hdr(r, "X-Cache"), "MISS", "no-cache with an ETag: stored, first GET MISS");
  int nv1 = body_n(r);
  dsys_reply_free(r);
  before = atomic_load(&hits);
  r = rq("GET", "/c/item", "X-T-CC: no-cache", "X-T-ETag: \"v1\"", "If-None-Match: \"other\"", NULL);
  is_str(hdr(r, "X-Cache"), "REVALIDATED", "second GET: revalidated");
  is_int(status(r), 200, "the client's own If-None-Match did not match: 200");
  is_int(body_n(r), nv1, "the stored body served on the upstream's 304");
  is_str(hdr(r, "ETag"), "\"v1\"", "with its ETag");
  dsys_reply_free(r);
  is_int(atomic_load(&hits) - before, 1, "one conditional request upstream");
  pthread_mutex_lock(&mu);
  is_str(last_inm, "\"v1\"", "sent with If-None-Match: the stored tag (the client's replaced)");
  pthread_mutex_unlock(&mu);
  r = rq("GET", "/c/item", "X-T-CC: no-cache", "X-T-ETag: \"v1\"", "If-None-Match: \"v1\"", NULL);
  is_int(status(r), 304, "a client If-None-Match naming the stored tag: 304");
  is_str(hdr(r, "X-Cache"), "REVALIDATED", "after revalidation");
  dsys_reply_free(r);
  r = rq("GET", "/c/item", "X-T-CC: no-cache", "X-T-ETag: \"v2\"", NULL);
  is_str(hdr(r, "X-Cache"), "MISS", "the upstream's tag changed: its 200 passes (MISS)");
  ok(body_n(r) > nv1, "the new body");
  is_str(hdr(r, "ETag"), "\"v2\"", "the new tag");
  int nv2 = body_n(r);
  dsys_reply_free(r);
  r = rq("GET", "/c/item", "X-T-CC: no-cache", "X-T-ETag: \"v2\"", NULL);
  is_str(hdr(r, "X-Cache"), "REVALIDATED", "and the new answer was stored");
  is_int(body_n(r), nv2, "its body");
  dsys_reply_free(r);
  r = rq("GET", "/c/item", "X-T-ETag: \"v2\"", NULL);
  is_str(hdr(r, "X-Cache"), "REVALIDATED", "a 304 without Cache-Control keeps the stored no-cache");
  dsys_reply_free(r);
  r = rq("GET", "/c/item", "X-T-ETag: \"v2\"", "X-T-CC: max-age=60", NULL);
  is_str(hdr(r, "X-Cache"), "REVALIDATED", "a 304 with max-age=60 ...");
  dsys_reply_free(r);
  x = second_xcache("/c/item", "X-T-ETag: \"v2\"", NULL, &reached);
  ok(!strcmp(x, "HIT") && !reached, "... makes the stored answer fresh (%s)", x);
  r = rq("GET", "/c/item", "X-T-ETag: \"v2\"", "Cache-Control: no-cache", NULL);
  is_str(hdr(r, "X-Cache"), "REVALIDATED", "request Cache-Control: no-cache revalidates a fresh answer");
  dsys_reply_free(r);
  r = rq("GET", "/c/item", "X-T-ETag: \"v2\"", "Cache-Control: max-age=0", NULL);
  is_str(hdr(r, "X-Cache"), "REVALIDATED", "request max-age=0 too");
  dsys_reply_free(r);
  r = rq("GET", "/c/item", "X-T-ETag: \"v2\"", "Pragma: no-cache", NULL);
  is_str(hdr(r, "X-Cache"), "REVALIDATED", "Pragma: no-cache too");
  dsys_reply_free(r);
  static const char *const bypass[] = {"Cache-Control: no-store", "Cache-Control: max-age=x",
                                       "Range: bytes=0-3", "If-Modified-Since: Mon, 07 Dec 2026 10:00:00 GMT",
                                       "If-Match: \"v2\""};
  for (size_t i = 0; i < sizeof bypass / sizeof bypass[0]; i++) {
    before = atomic_load(&hits);
    r = rq("GET", "/c/item", "X-T-ETag: \"v2\"", bypass[i], NULL);
    ok(!strcmp(hdr(r, "X-Cache"), "BYPASS") && atomic_load(&hits) - before == 1,
       "request %s: BYPASS, passed on (%s)", bypass[i], hdr(r, "X-Cache"));
    dsys_reply_free(r);
  }
  r = rq("GET", "/c/item", "X-T-ETag: \"v2\"", "X-T-Status: 503", "Cache-Control: no-cache", NULL);
  is_int(status(r), 503, "a failed revalidation is passed on (no stale answer)");
  dsys_reply_free(r);
  r = rq("GET", "/c/item", "X-T-ETag: \"v2\"", NULL);
  is_str(hdr(r, "X-Cache"), "MISS", "and the stored answer was dropped (no conditional request)");
  dsys_reply_free(r);

  /* ---- Vary ---- */
  const char *vcc = "X-T-CC: max-age=60";
  r = rq("GET", "/c/v", vcc, "X-T-Vary: Accept-Language", "Accept-Language: en", NULL);
  is_str(hdr(r, "X-Cache"), "MISS", "Vary: Accept-Language, en: MISS");
  dsys_reply_free(r);
  r = rq("GET", "/c/v", vcc, "X-T-Vary: Accept-Language", "Accept-Language: fr", NULL);
  is_str(hdr(r, "X-Cache"), "MISS", "fr: MISS (another variant)");
  dsys_reply_free(r);
  r = rq("GET", "/c/v", vcc, "X-T-Vary: Accept-Language", "Accept-Language: en", NULL);
  ok(!strcmp(hdr(r, "X-Cache"), "HIT") && strstr(dsys_reply_body(r, NULL), "\"lang\":\"en\""),
     "en: HIT with the en body");
  is_str(hdr(r, "Vary"), "Accept-Language", "Vary is kept");
  dsys_reply_free(r);
  r = rq("GET", "/c/v", vcc, "X-T-Vary: Accept-Language", "Accept-Language: fr", NULL);
  ok(!strcmp(hdr(r, "X-Cache"), "HIT") && strstr(dsys_reply_body(r, NULL), "\"lang\":\"fr\""),
     "fr: HIT with the fr body");
  dsys_reply_free(r);
  r = rq("GET", "/c/v", vcc, "X-T-Vary: Accept-Language", NULL);
  is_str(hdr(r, "X-Cache"), "MISS", "no Accept-Language: another variant");
  dsys_reply_free(r);
  char *huge = malloc(9100);
  memcpy(huge, "Accept-Language: ", 17);
  memset(huge + 17, 'a', 9000);
  huge[9017] = '\0';
  x = second_xcache("/c/v-huge", "X-T-Vary: Accept-Language", huge, &reached);
  ok(reached == 1 && !strcmp(x, "MISS"), "a 9000-byte varying header: not stored, no crash (%s)", x);
  free(huge);

  /* ---- credentials ---- */
  x = second_xcache("/c/auth", "Authorization: Bearer abc", "X-T-CC: max-age=60", &reached);
  ok(reached == 1 && !strcmp(x, "MISS"), "Authorization without public: not stored (%s)", x);
  x = second_xcache("/c/cookie", "Cookie: s=1", "X-T-CC: max-age=60", &reached);
  ok(reached == 1 && !strcmp(x, "MISS"), "Cookie without public: not stored (%s)", x);
  x = second_xcache("/c/auth-pub", "Authorization: Bearer abc", "X-T-CC: public, max-age=60", &reached);
  ok(!reached && !strcmp(x, "HIT"), "Authorization with public: stored (%s)", x);
  r = rq("GET", "/c/auth-pub", NULL);
  is_str(hdr(r, "X-Cache"), "HIT", "and served to a request without it");
  dsys_reply_free(r);
  r = rq("GET", "/c/anon", "X-T-CC: max-age=60", NULL);
  dsys_reply_free(r);
  r = rq("GET", "/c/anon", "X-T-CC: max-age=60", "Authorization: Bearer abc", NULL);
  is_str(hdr(r, "X-Cache"), "MISS", "an anonymous (not public) answer is not served to a request with Authorization");
  dsys_reply_free(r);
  x = second_xcache("/shared/auth", "Authorization: Bearer abc", "X-T-CC: max-age=60", &reached);
  ok(!reached && !strcmp(x, "HIT"), "a route with cache=authorized stores it (%s)", x);

  /* ---- writes invalidate ---- */
  x = second_xcache("/c/w", "X-T-CC: max-age=60", NULL, &reached);
  is_str(x, "HIT", "stored");
  r = rq("PUT", "/c/w", NULL);
  is_int(status(r), 200, "PUT through the gateway");
  is_str(hdr(r, "X-Cache"), "(none)", "writes have no X-Cache");
  dsys_reply_free(r);
  r = rq("GET", "/c/w", "X-T-CC: max-age=60", NULL);
  is_str(hdr(r, "X-Cache"), "MISS", "a successful PUT dropped the stored answer");
  dsys_reply_free(r);
  r = rq("DELETE", "/c/w", "X-T-Status: 409", NULL);
  dsys_reply_free(r);
  r = rq("GET", "/c/w", NULL);
  is_str(hdr(r, "X-Cache"), "HIT", "a failed DELETE did not");
  dsys_reply_free(r);

  /* ---- bounds ---- */
  x = second_xcache("/c/big", "X-T-CC: max-age=60", "X-T-Pad: 5000", &reached);
  ok(reached == 1 && !strcmp(x, "MISS"), "a body over cache_max_object: not stored (%s)", x);
  for (int i = 0; i < 20; i++) {
    snprintf(path, sizeof path, "/c/many-%d", i);
    r = rq("GET", path, "X-T-CC: max-age=600", NULL);
    dsys_reply_free(r);
  }
  double entries = metric(reg, "dsys_gateway_cache_entries ");
  ok(entries >= 1 && entries <= 8, "entries within cache_max_entries=8 (%g)", entries);
  ok(metric(reg, "dsys_gateway_cache_evictions_total ") >= 12, "evictions counted (%g)",
     metric(reg, "dsys_gateway_cache_evictions_total "));
  x = second_xcache("/c/many-19", "X-T-CC: max-age=600", NULL, &reached);
  is_str(x, "HIT", "the newest entry is still there");
  r = rq("GET", "/c/many-0", NULL);
  is_str(hdr(r, "X-Cache"), "MISS", "the oldest was evicted");
  dsys_reply_free(r);
  ok(metric(reg, "dsys_gateway_cache_requests_total{outcome=\"hit\"} ") >= 10, "hits on /metrics (%g)",
     metric(reg, "dsys_gateway_cache_requests_total{outcome=\"hit\"} "));
  ok(metric(reg, "dsys_gateway_cache_requests_total{outcome=\"revalidated\"} ") >= 5,
     "revalidations on /metrics");
  ok(metric(reg, "dsys_gateway_cache_requests_total{outcome=\"miss\"} ") >= 20, "misses on /metrics");
  ok(metric(reg, "dsys_gateway_cache_requests_total{outcome=\"bypass\"} ") >= 5, "bypasses on /metrics");
  ok(metric(reg, "dsys_gateway_cache_bytes ") > 0, "bytes on /metrics");
  ok(metric(reg, "dsys_gateway_cache_stores_total ") > 20, "stores on /metrics");

  /* ---- reload: off, then on again ---- */
  is_int(dsys_gateway_reload(gw, make_gateway(upurl, DSYS_GATEWAY_CACHE_OFF, 4096, 8)), 0,
         "reload with the cache off");
  x = second_xcache("/c/many-19", "X-T-CC: max-age=600", NULL, &reached);
  ok(reached == 1 && !strcmp(x, "(none)"), "off: no X-Cache, every GET upstream (%s)", x);
  ok(metric(reg, "dsys_gateway_cache_entries ") == 0, "off: the entries were dropped");
  is_int(dsys_gateway_reload(gw, make_gateway(upurl, DSYS_GATEWAY_CACHE_ON, 4096, 8)), 0,
         "reload with the cache on");
  r = rq("GET", "/c/many-19", "X-T-CC: max-age=600", NULL);
  is_str(hdr(r, "X-Cache"), "MISS", "on again: MISS");
  dsys_reply_free(r);
  x = second_xcache("/c/many-19", "X-T-CC: max-age=600", NULL, &reached);
  ok(!reached && !strcmp(x, "HIT"), "then HIT (%s)", x);

  dsys_client_free(cli);
  dsys_server_free(srv);
  dsys_gateway_free(gw);
  dsys_metrics_free(reg);
  dsys_server_free(up);
  dsys_clock_free(fclk);
  return tap_done();
}
