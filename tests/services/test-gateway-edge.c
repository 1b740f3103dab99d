/*
 * The gateway's edge (issue 10), with real servers on 127.0.0.1:0 and the
 * gateway on event loops, its clock fake: forged X-Dsys-User-Id stripped,
 * JWT at the edge (missing, expired, alg none, tampered, other algorithm),
 * rate limits with RateLimit-* headers and refill, the bucket LRU bound,
 * CORS preflights, the /v1 alias, 431/413, ambiguous framing and path
 * tricks sent as raw bytes, Idempotency-Key replay and the in-flight 409,
 * and a slow client cut off by the request timeout.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <distsys/distsys.h>
#include <distsys/auth.h>
#include <distsys/gateway.h>
#include "core/json.h"
#include "services/edge.h"
#include "net.h"
#include "tap.h"

#ifndef LIMIT_LOOPS
#define LIMIT_LOOPS 1
#endif
static const char SECRET[] = "0123456789abcdef0123456789abcdef-edge-test";
static dsys_clock *fclk; /* the gateway's fake clock */

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
  const char *u = dsys_request_header(req, "X-Dsys-User-Id");
  json_object_object_add(o, "user", u ? json_object_new_string(u) : NULL);
  int nuser = 0;
  for (size_t i = 0; i < dsys_request_header_count(req); i++) {
    const char *n, *v;
    dsys_request_header_at(req, i, &n, &v);
    if (!strcasecmp(n, "X-Dsys-User-Id")) nuser++;
  }
  json_object_object_add(o, "nuser", json_object_new_int(nuser));
  char hits[16];
  snprintf(hits, sizeof hits, "%d", atomic_load(&b->hits));
  json_object_object_add(o, "hit", json_object_new_string(hits));
  dsys_response_header(req, "X-Backend", b->name);
  dsys_respond_json(req, 201, json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
  json_object_put(o);
}

static void slow_done(void *ud) {
  dsys_respond_json(ud, 201, "{\"slow\":true}");
}
static void h_slow(dsys_request *req, void *ud) {
  backend *b = ud;
  atomic_fetch_add(&b->hits, 1);
  dsys_request_defer(req);
  dsys_timer_add(dsys_clock_real(), 600000, slow_done, req, NULL);
}

static void h_health(dsys_request *req, void *ud) { dsys_respond_json(req, 200, "{\"status\":\"healthy\"}"); }

static void start_backend(backend *b, const char *name) {
  snprintf(b->name, sizeof b->name, "%s", name);
  dsys_server_new(&b->srv, NULL);
  dsys_server_route(b->srv, "GET", "/health", h_health, b);
  dsys_server_route(b->srv, "POST", "/api/data/slow", h_slow, b);
  dsys_server_route(b->srv, "*", "/*", h_echo, b);
  if (dsys_server_listen(b->srv, "http://127.0.0.1:0")) tap_bail("backend listen");
}

static const char *gurl;
static dsys_client *cli;

static dsys_reply *call(const char *method, const char *path, const dsys_header *h, size_t nh,
                        const char *body) {
  dsys_call k = {.size = sizeof k, .method = method, .url = gurl, .path = path, .headers = h,
                 .nheaders = nh, .body = body, .body_len = body ? strlen(body) : 0, .timeout_ms = 10000};
  dsys_reply *r = NULL;
  if (dsys_client_do(cli, &k, &r)) return NULL;
  return r;
}

static int status(dsys_reply *r) { return r ? dsys_reply_status(r) : -1; }

static const char *jstr(dsys_reply *r, const char *key, char *buf, size_t n) {
  json_object *o = NULL;
  size_t len;
  const char *b = r ? dsys_reply_body(r, &len) : NULL;
  buf[0] = '\0';
  if (!b || dsysi_json_parse(b, len, &o)) return NULL;
  json_object *v;
  int found = json_object_object_get_ex(o, key, &v) && v;
  if (found) snprintf(buf, n, "%s", json_object_is_type(v, json_type_string) ? json_object_get_string(v)
                                                                             : json_object_to_json_string(v));
  json_object_put(o);
  return found ? buf : NULL;
}

/* ---- raw sockets ---- */

/* Read until the peer closes, a whole response with Content-Length is in,
 * or timeout_ms passes. */
static size_t raw_read(int fd, char *buf, size_t cap, int timeout_ms) {
  size_t n = 0;
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    int el = (int)((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000);
    if (el >= timeout_ms) break;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms - el) <= 0) break;
    ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
    if (r <= 0) break;
    n += (size_t)r;
    buf[n] = '\0';
    const char *he = strstr(buf, "\r\n\r\n");
    const char *cl = strcasestr(buf, "\r\ncontent-length:");
    if (he && cl && cl < he && n >= (size_t)(he + 4 - buf) + strtoul(cl + 17, NULL, 10)) break;
    if (n + 1 >= cap) break;
  }
  buf[n] = '\0';
  return n;
}

static int raw_status(const char *url, const char *bytes, size_t len, char *resp, size_t cap) {
  int fd = test_connect(url);
  if (fd < 0) return -1;
  size_t off = 0;
  while (off < len) {
    ssize_t w = send(fd, bytes + off, len - off, MSG_NOSIGNAL);
    if (w <= 0) break;
    off += (size_t)w;
  }
  size_t n = raw_read(fd, resp, cap, 3000);
  close(fd);
  int st = -1;
  if (n > 12 && !strncmp(resp, "HTTP/1.", 7)) st = atoi(resp + 9);
  return st;
}

static int raw(const char *bytes, char *resp, size_t cap) {
  return raw_status(gurl, bytes, strlen(bytes), resp, cap);
}

/* A client sending one header byte every step_ms: the ms after which the
 * server closed the connection, or -1 if it was still open at max_ms. */
static int trickle(const char *url, int step_ms, int max_ms) {
  return test_trickle(url, "GET /api/open/x HTTP/1.1\r\nHost: x\r\nX-Slow: ", step_ms, max_ms);
}

/* ---- tokens ---- */

static char *token(const char *claims, const char *alg, int64_t lifetime_s) {
  dsys_token_options to = {.size = sizeof to, .alg = alg, .lifetime_s = lifetime_s, .clock = fclk};
  char *t = NULL;
  if (dsys_token_issue(SECRET, strlen(SECRET), claims, &to, &t)) tap_bail("token_issue");
  return t;
}

static void b64url(const char *in, char *out) {
  static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  size_t n = strlen(in), o = 0;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)(unsigned char)in[i] << 16;
    if (i + 1 < n) v |= (uint32_t)(unsigned char)in[i + 1] << 8;
    if (i + 2 < n) v |= (unsigned char)in[i + 2];
    out[o++] = tab[(v >> 18) & 63];
    out[o++] = tab[(v >> 12) & 63];
    if (i + 1 < n) out[o++] = tab[(v >> 6) & 63];
    if (i + 2 < n) out[o++] = tab[v & 63];
  }
  out[o] = '\0';
}

/* ---- concurrent duplicate ---- */

typedef struct dup {
  const char *tok;
  int status;
  char body[256];
} dupreq;

static void *dup_thread(void *arg) {
  dupreq *d = arg;
  char auth[1024];
  snprintf(auth, sizeof auth, "Bearer %s", d->tok);
  dsys_header h[] = {{"Authorization", auth}, {"Idempotency-Key", "slow-key"}};
  dsys_client *c;
  dsys_client_new(&c, NULL);
  dsys_call k = {.size = sizeof k, .method = "POST", .url = gurl, .path = "/api/data/slow", .headers = h,
                 .nheaders = 2, .body = "{}", .body_len = 2, .timeout_ms = 10000};
  dsys_reply *r = NULL;
  if (!dsys_client_do(c, &k, &r)) {
    d->status = dsys_reply_status(r);
    snprintf(d->body, sizeof d->body, "%s", (const char *)dsys_reply_body(r, NULL));
  }
  dsys_reply_free(r);
  dsys_client_free(c);
  return NULL;
}

static void unit_limiter(void) {
  dsys_clock *c;
  dsys_clock_fake_new(&c, 1700000000000);
  dsysi_rl *rl;
  is_int(dsysi_rl_new(&rl, 256, c), 0, "limiter with a cap of 256 buckets");
  size_t cap = dsysi_rl_cap(rl);
  ok(cap >= 256 && cap < 256 + 16, "cap enforced: %zu", cap);
  size_t maxseen = 0;
  for (int i = 0; i < 20000; i++) {
    char key[32];
    int kl = snprintf(key, sizeof key, "10.%d.%d.%d", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    dsysi_rl_result r;
    dsysi_rl_take(rl, key, (size_t)kl, 1, 2, &r);
    if (dsysi_rl_count(rl) > maxseen) maxseen = dsysi_rl_count(rl);
  }
  ok(maxseen <= cap, "20000 client addresses: never more than the cap of buckets (max %zu)", maxseen);
  /* The most recently used bucket survives, the oldest was evicted. */
  dsysi_rl_result r;
  dsysi_rl_take(rl, "10.0.78.31", 10, 1, 2, &r); /* i = 19999: used twice now */
  is_int(r.allowed, 1, "recent bucket: second token allowed");
  dsysi_rl_take(rl, "10.0.78.31", 10, 1, 2, &r);
  is_int(r.allowed, 0, "recent bucket kept its state: third token refused");
  is_int(r.retry_after_s, 1, "retry after 1 s at 1 token/s");
  dsys_clock_advance(c, 500000);
  dsysi_rl_take(rl, "10.0.78.31", 10, 1, 2, &r);
  is_int(r.allowed, 0, "half a second later: still refused");
  dsys_clock_advance(c, 600000);
  dsysi_rl_take(rl, "10.0.78.31", 10, 1, 2, &r);
  is_int(r.allowed, 1, "after the refill: allowed");
  dsysi_rl_free(rl);

  dsysi_idem *ic;
  is_int(dsysi_idem_new(&ic, 32, 100, c), 0, "idempotency cache, 32 keys");
  for (int i = 0; i < 1000; i++) {
    char key[16];
    int kl = snprintf(key, sizeof key, "k%d", i);
    uint64_t gen;
    dsysi_idem_resp out = {0};
    if (dsysi_idem_begin(ic, key, (size_t)kl, 1, 1000, &gen, &out) == DSYSI_IDEM_NEW) {
      dsysi_idem_resp st = {.status = 201, .body = "x", .blen = 1};
      dsysi_idem_complete(ic, key, (size_t)kl, gen, &st);
    }
  }
  ok(dsysi_idem_count(ic) <= 32 + 16, "1000 keys: cache stays bounded (%zu)", dsysi_idem_count(ic));
  uint64_t gen;
  dsysi_idem_resp out = {0};
  is_int(dsysi_idem_begin(ic, "big", 3, 1, 1000, &gen, &out), DSYSI_IDEM_NEW, "new key");
  dsysi_idem_resp st = {.status = 201, .body = "0123456789012345678901234567890123456789012345678901234567890123456789"
                                                  "0123456789012345678901234567890123456789",
                        .blen = 110};
  dsysi_idem_complete(ic, "big", 3, gen, &st);
  is_int(dsysi_idem_begin(ic, "big", 3, 1, 1000, &gen, &out), DSYSI_IDEM_NEW,
         "a body over max_body is not kept: the key is free again");
  dsysi_idem_abort(ic, "big", 3, gen);
  dsysi_idem_free(ic);
  dsys_clock_free(c);
}

int main(void) {
  dsys_log_set_level(DSYS_LOG_ERROR);
  unit_limiter();

  dsys_clock_fake_new(&fclk, dsys_clock_wall_ms(dsys_clock_real()));
  backend data, auth;
  memset(&data, 0, sizeof data);
  memset(&auth, 0, sizeof auth);
  start_backend(&data, "data");
  start_backend(&auth, "auth");
  const char *du[1] = {dsys_server_url(data.srv, 0)};
  const char *au[1] = {dsys_server_url(auth.srv, 0)};
  dsys_gateway_options go = {.size = sizeof go, .clock = fclk, .try_timeout_ms = 5000,
                             .health_interval_ms = 3600000, .token_secret = SECRET,
                             .token_secret_len = strlen(SECRET)};
  dsys_gateway *gw;
  is_int(dsys_gateway_new(&gw, &go), 0, "gateway with a JWT secret");
  dsys_gateway_add_upstream(gw, "data", du, 1, NULL);
  dsys_gateway_add_upstream(gw, "auth", au, 1, NULL);
  const char *origins[] = {"https://app.example"};
  dsys_gateway_route_options dro = {.size = sizeof dro, .protect = DSYS_GATEWAY_PROTECT_WRITES,
                                    .cors_origins = origins, .ncors_origins = 1,
                                    .idempotency_ttl_ms = 60000};
  is_int(dsys_gateway_add_route_ex(gw, "/api/data", "data", &dro), 0, "protected data route");
  is_int(dsys_gateway_add_route(gw, "/api/auth", "auth"), 0, "plain auth route");
  is_int(dsys_gateway_add_route(gw, "/api/open", "data"), 0, "plain open route");
  dsys_gateway_route_options lro = {.size = sizeof lro, .rate = 1, .burst = 3};
  is_int(dsys_gateway_add_route_ex(gw, "/api/limited", "data", &lro), 0, "rate-limited route");
  dsys_gateway_route_options bad = {.size = sizeof bad, .rate = -1};
  is_int(dsys_gateway_add_route_ex(gw, "/x", "data", &bad), DSYS_EINVAL, "negative rate refused");
  /* the edge as a filter chain: which filters run and in which order */
  dsys_gateway_route_options cro = {.size = sizeof cro, .rate = 1, .burst = 1,
                                    .protect = DSYS_GATEWAY_PROTECT_ALL, .filters = "ratelimit,jwt"};
  is_int(dsys_gateway_add_route_ex(gw, "/api/chain-rl-first", "data", &cro), 0, "filters ratelimit,jwt");
  cro.filters = "jwt,ratelimit";
  is_int(dsys_gateway_add_route_ex(gw, "/api/chain-jwt-first", "data", &cro), 0, "filters jwt,ratelimit");
  cro.filters = "none";
  is_int(dsys_gateway_add_route_ex(gw, "/api/chain-off", "data", &cro), 0, "filters none");
  static const char *const bad_chains[] = {"bogus", "jwt,jwt", "cors,,jwt", "jwt,", "JWT"};
  for (size_t i = 0; i < sizeof bad_chains / sizeof bad_chains[0]; i++) {
    cro.filters = bad_chains[i];
    is_int(dsys_gateway_add_route_ex(gw, "/x", "data", &cro), DSYS_EINVAL, "filters '%s' refused", bad_chains[i]);
  }
  dsys_gateway *gw2;
  dsys_gateway_new(&gw2, NULL);
  dsys_gateway_add_upstream(gw2, "data", du, 1, NULL);
  dsys_gateway_route_options pro = {.size = sizeof pro, .protect = DSYS_GATEWAY_PROTECT_ALL};
  is_int(dsys_gateway_add_route_ex(gw2, "/api", "data", &pro), DSYS_EINVAL,
         "protected route without a secret refused");
  dsys_gateway_free(gw2);

  dsys_server *srv;
  dsys_server_options so = {.size = sizeof so, .event_loops = 2, .max_body = 4096,
                            .connection_memory = 8192, .request_timeout_s = 2};
  dsys_server_new(&srv, &so);
  is_int(dsys_gateway_mount(gw, srv), 0, "mount");
  if (dsys_server_listen(srv, "http://127.0.0.1:0")) tap_bail("gateway listen");
  gurl = dsys_server_url(srv, 0);
  dsys_client_new(&cli, NULL);
  char buf[256];

  /* ---- identity header ---- */
  dsys_header forged[] = {{"X-Dsys-User-Id", "admin"}};
  dsys_reply *r = call("GET", "/api/open/x", forged, 1, NULL);
  is_int(status(r), 201, "open route proxied");
  ok(!jstr(r, "user", buf, sizeof buf), "forged X-Dsys-User-Id stripped on an open route (backend saw %s)",
     buf[0] ? buf : "none");
  dsys_reply_free(r);
  r = call("GET", "/api/data/x", forged, 1, NULL);
  is_int(status(r), 201, "GET on a writes-protected route needs no token");
  ok(!jstr(r, "user", buf, sizeof buf), "forged header stripped on the protected route's reads");
  dsys_reply_free(r);

  /* ---- JWT at the edge ---- */
  int before = atomic_load(&data.hits);
  r = call("POST", "/api/data", NULL, 0, "{}");
  is_int(status(r), 401, "POST without a token -> 401");
  is_str(jstr(r, "error", buf, sizeof buf), "No token provided", "401 body");
  is_str(dsys_reply_header(r, "WWW-Authenticate"), "Bearer", "WWW-Authenticate: Bearer");
  dsys_reply_free(r);
  char *good = token("{\"id\":\"u42\",\"email\":\"a@example.com\"}", "HS256", 3600);
  char auth_h[2048];
  snprintf(auth_h, sizeof auth_h, "Bearer %s", good);
  dsys_header hv[] = {{"Authorization", auth_h}, {"X-Dsys-User-Id", "admin"}, {"x-dsys-user-id", "root"}};
  r = call("POST", "/api/data", hv, 3, "{}");
  is_int(status(r), 201, "POST with a valid token passes");
  is_str(jstr(r, "user", buf, sizeof buf), "u42", "backend sees the verified user id, not the forged one");
  is_str(jstr(r, "nuser", buf, sizeof buf), "1", "exactly one X-Dsys-User-Id upstream");
  dsys_reply_free(r);
  is_int(atomic_load(&data.hits) - before, 1, "only the authenticated POST reached the backend");

  char *shortlived = token("{\"id\":\"u42\"}", "HS256", 60);
  dsys_clock_advance(fclk, 120 * 1000000LL);
  char h2[2048];
  snprintf(h2, sizeof h2, "Bearer %s", shortlived);
  dsys_header he[] = {{"Authorization", h2}};
  r = call("POST", "/api/data", he, 1, "{}");
  is_int(status(r), 401, "expired token -> 401");
  is_str(jstr(r, "error", buf, sizeof buf), "Invalid token", "expired: Invalid token");
  dsys_reply_free(r);

  char hdr64[128], pay64[256], none_tok[512];
  b64url("{\"alg\":\"none\",\"typ\":\"JWT\"}", hdr64);
  char pay[128];
  snprintf(pay, sizeof pay, "{\"id\":\"admin\",\"exp\":%lld}", (long long)(dsys_clock_wall_ms(fclk) / 1000 + 3600));
  b64url(pay, pay64);
  snprintf(none_tok, sizeof none_tok, "Bearer %s.%s.", hdr64, pay64);
  dsys_header hn[] = {{"Authorization", none_tok}};
  r = call("POST", "/api/data", hn, 1, "{}");
  is_int(status(r), 401, "alg:none token -> 401");
  dsys_reply_free(r);

  /* Tampered: a different payload with the original signature. */
  char *t2 = token("{\"id\":\"u42\"}", "HS256", 3600);
  char *dot1 = strchr(t2, '.'), *dot2 = strrchr(t2, '.');
  char tampered[2048];
  snprintf(pay, sizeof pay, "{\"id\":\"admin\",\"exp\":%lld,\"iat\":1}", (long long)(dsys_clock_wall_ms(fclk) / 1000 + 3600));
  b64url(pay, pay64);
  snprintf(tampered, sizeof tampered, "Bearer %.*s.%s%s", (int)(dot1 - t2), t2, pay64, dot2);
  dsys_header ht[] = {{"Authorization", tampered}};
  r = call("POST", "/api/data", ht, 1, "{}");
  is_int(status(r), 401, "tampered payload (old signature) -> 401");
  dsys_reply_free(r);
  snprintf(tampered, sizeof tampered, "Bearer %s", t2);
  /* Not the last character: it carries padding bits a decoder may ignore. */
  char *last = tampered + strlen(tampered) - 5;
  *last = *last == 'A' ? 'B' : 'A';
  r = call("POST", "/api/data", ht, 1, "{}");
  is_int(status(r), 401, "tampered signature -> 401");
  dsys_reply_free(r);
  char *hs512 = token("{\"id\":\"u42\"}", "HS512", 3600);
  snprintf(h2, sizeof h2, "Bearer %s", hs512);
  r = call("POST", "/api/data", he, 1, "{}");
  is_int(status(r), 401, "HS512 token with the right secret -> 401 (HS256 pinned)");
  dsys_reply_free(r);
  is_int(atomic_load(&data.hits) - before, 1, "no refused request reached the backend");

  /* ---- rate limits (fake clock) ---- */
  int st[5];
  char rem[5][8];
  for (int i = 0; i < 4; i++) {
    r = call("GET", "/api/limited/x", NULL, 0, NULL);
    st[i] = status(r);
    snprintf(rem[i], sizeof rem[i], "%s", r && dsys_reply_header(r, "RateLimit-Remaining") ? dsys_reply_header(r, "RateLimit-Remaining") : "-");
    if (i == 3) {
      is_str(dsys_reply_header(r, "Retry-After"), "1", "429: Retry-After 1");
      is_str(dsys_reply_header(r, "RateLimit-Limit"), "3", "429: RateLimit-Limit 3");
      is_str(dsys_reply_header(r, "RateLimit-Reset"), "3", "429: RateLimit-Reset 3 (s to full)");
      is_str(jstr(r, "error", buf, sizeof buf), "Too many requests", "429 body error");
      is_str(jstr(r, "retryAfter", buf, sizeof buf), "1", "429 body retryAfter");
    }
    dsys_reply_free(r);
  }
  ok(st[0] == 201 && st[1] == 201 && st[2] == 201, "burst of 3 passes");
  ok(!strcmp(rem[0], "2") && !strcmp(rem[1], "1") && !strcmp(rem[2], "0"), "RateLimit-Remaining 2,1,0 (%s,%s,%s)",
     rem[0], rem[1], rem[2]);
  is_int(st[3], 429, "4th request within the same instant -> 429");
  dsys_clock_advance(fclk, 999000);
  r = call("GET", "/api/limited/x", NULL, 0, NULL);
  is_int(status(r), 429, "999 ms later: still 429");
  dsys_reply_free(r);
  dsys_clock_advance(fclk, 1000);
  r = call("GET", "/api/limited/x", NULL, 0, NULL);
  is_int(status(r), 201, "after 1 s of refill: allowed again");
  dsys_reply_free(r);
  r = call("GET", "/api/open/x", NULL, 0, NULL);
  is_int(status(r), 201, "other routes are not limited");
  ok(!dsys_reply_header(r, "RateLimit-Limit"), "no RateLimit headers on an unlimited route");
  dsys_reply_free(r);

  /* ---- CORS ---- */
  dsys_header pf[] = {{"Origin", "https://app.example"}, {"Access-Control-Request-Method", "POST"},
                      {"Access-Control-Request-Headers", "authorization, content-type"}};
  before = atomic_load(&data.hits);
  r = call("OPTIONS", "/api/data/x", pf, 3, NULL);
  is_int(status(r), 204, "preflight from an allowed origin -> 204");
  is_str(dsys_reply_header(r, "Access-Control-Allow-Origin"), "https://app.example", "Allow-Origin echoes it");
  ok(dsys_reply_header(r, "Access-Control-Allow-Methods") && strstr(dsys_reply_header(r, "Access-Control-Allow-Methods"), "POST"),
     "Allow-Methods lists POST");
  ok(dsys_reply_header(r, "Access-Control-Allow-Headers") &&
         strstr(dsys_reply_header(r, "Access-Control-Allow-Headers"), "Authorization"),
     "Allow-Headers lists Authorization");
  dsys_reply_free(r);
  pf[0].value = "https://evil.example";
  r = call("OPTIONS", "/api/data/x", pf, 3, NULL);
  is_int(status(r), 403, "preflight from another origin -> 403");
  ok(!dsys_reply_header(r, "Access-Control-Allow-Origin"), "no Allow-Origin for it");
  dsys_reply_free(r);
  is_int(atomic_load(&data.hits) - before, 0, "preflights are answered by the gateway");
  dsys_header og[] = {{"Origin", "https://app.example"}};
  r = call("GET", "/api/data/x", og, 1, NULL);
  is_str(dsys_reply_header(r, "Access-Control-Allow-Origin"), "https://app.example", "simple GET gets Allow-Origin");
  dsys_reply_free(r);
  og[0].value = "https://evil.example";
  r = call("GET", "/api/data/x", og, 1, NULL);
  ok(status(r) == 201 && !dsys_reply_header(r, "Access-Control-Allow-Origin"), "disallowed origin: no CORS headers");
  dsys_reply_free(r);

  /* ---- /v1 alias ---- */
  r = call("GET", "/v1/api/open/items?q=1", NULL, 0, NULL);
  is_int(status(r), 201, "/v1 alias proxied");
  is_str(jstr(r, "target", buf, sizeof buf), "/api/open/items?q=1", "/v1/api/open/items -> /api/open/items upstream");
  dsys_reply_free(r);
  r = call("GET", "/v1/nothing", NULL, 0, NULL);
  is_int(status(r), 404, "/v1 of an unrouted path -> 404");
  dsys_reply_free(r);

  /* ---- limits, raw bytes ---- */
  static char big[32768], resp[65536];
  int n = snprintf(big, sizeof big, "GET /api/open/x HTTP/1.1\r\nHost: x\r\nX-Big: ");
  memset(big + n, 'a', 20000);
  strcpy(big + n + 20000, "\r\n\r\n");
  is_int(raw(big, resp, sizeof resp), 431, "20 kB of headers (connection_memory 8 KiB) -> 431");
  before = atomic_load(&data.hits);
  n = snprintf(big, sizeof big, "POST /api/open/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n");
  memset(big + n, 'b', 10000);
  big[n + 10000] = '\0';
  is_int(raw(big, resp, sizeof resp), 413, "10000-byte body (max_body 4096) -> 413");
  is_int(atomic_load(&data.hits) - before, 0, "oversized body not forwarded");

  before = atomic_load(&data.hits);
  int s1 = raw("POST /api/open/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
               "5\r\nhello\r\n0\r\n\r\n", resp, sizeof resp);
  is_int(s1, 400, "Content-Length with Transfer-Encoding -> 400");
  int s2 = raw("POST /api/open/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
               "5\r\nhello\r\n0\r\n\r\n", resp, sizeof resp);
  is_int(s2, 400, "Transfer-Encoding then Content-Length -> 400");
  int s3 = raw("POST /api/open/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", resp, sizeof resp);
  is_int(s3, 400, "two different Content-Length -> 400");
  is_int(atomic_load(&data.hits) - before, 0, "no ambiguous request was forwarded");

  before = atomic_load(&auth.hits);
  int bd = atomic_load(&data.hits);
  const char *tricks[] = {"/api/open/../auth/x", "/api/open/%2e%2e/auth/x", "/api/open/.%2E/auth/x",
                          "/api/open%2F..%2Fauth/x", "/api/open/..%2fauth/x", "/api/open/x%5c..%5c..%5cauth",
                          "/api/open/./x", "/v1/api/open/../../api/auth/x",
                          /* found by fuzz-gateway: a fragment hid the dot segment
                           * its upstream sees once it drops the fragment */
                          "/api/open/a://%2f.#x", "/api/open/x#/../../auth/x"};
  for (size_t i = 0; i < sizeof tricks / sizeof *tricks; i++) {
    char req[256];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", tricks[i]);
    is_int(raw(req, resp, sizeof resp), 400, "path trick %s -> 400", tricks[i]);
  }
  is_int(atomic_load(&auth.hits) - before, 0, "no path trick reached the auth upstream");
  is_int(atomic_load(&data.hits) - bd, 0, "nor the data upstream");
  is_int(raw("GET /api/open/a..b/.x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", resp, sizeof resp), 201,
         "dots inside a segment are fine");
  ok(strstr(resp, "\"target\":\"\\/api\\/open\\/a..b\\/.x\"") != NULL, "and pass unchanged");
  is_int(raw("GET /api/open/a%2Fb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", resp, sizeof resp), 201,
         "an encoded slash inside a segment (a key \"a/b\") is proxied");
  ok(strstr(resp, "a%2Fb") != NULL, "raw, as sent");
  before = atomic_load(&auth.hits);
  is_int(raw("GET /api%2Fauth/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", resp, sizeof resp), 404,
         "%s is not the /api/auth route (routing on the raw path)", "/api%2Fauth/x");
  is_int(atomic_load(&auth.hits) - before, 0, "auth upstream not reached");

  /* ---- Idempotency-Key ---- */
  dsys_header hk[] = {{"Authorization", auth_h}, {"Idempotency-Key", "order-1"}};
  before = atomic_load(&data.hits);
  r = call("POST", "/api/data/items", hk, 2, "{\"n\":1}");
  is_int(status(r), 201, "first POST with a key");
  ok(!dsys_reply_header(r, "Idempotent-Replayed"), "first answer is not a replay");
  char first_hit[256];
  snprintf(first_hit, sizeof first_hit, "%s", jstr(r, "hit", buf, sizeof buf) ? buf : "");
  dsys_reply_free(r);
  r = call("POST", "/api/data/items", hk, 2, "{\"n\":1}");
  is_int(status(r), 201, "repeat: same status");
  is_str(dsys_reply_header(r, "Idempotent-Replayed"), "true", "repeat: Idempotent-Replayed: true");
  is_str(jstr(r, "hit", buf, sizeof buf), first_hit, "repeat: same body");
  is_str(dsys_reply_header(r, "X-Backend"), "data", "repeat: upstream headers replayed");
  dsys_reply_free(r);
  is_int(atomic_load(&data.hits) - before, 1, "the backend saw one request");
  r = call("POST", "/api/data/items", hk, 2, "{\"n\":2}");
  is_int(status(r), 422, "same key, different body -> 422");
  dsys_reply_free(r);
  char *other = token("{\"id\":\"u7\"}", "HS256", 3600);
  char auth_o[2048];
  snprintf(auth_o, sizeof auth_o, "Bearer %s", other);
  dsys_header hk2[] = {{"Authorization", auth_o}, {"Idempotency-Key", "order-1"}};
  r = call("POST", "/api/data/items", hk2, 2, "{\"n\":1}");
  ok(status(r) == 201 && !dsys_reply_header(r, "Idempotent-Replayed"), "another user's same key is a new request");
  dsys_reply_free(r);
  dsys_clock_advance(fclk, 61 * 1000000LL);
  r = call("POST", "/api/data/items", hk, 2, "{\"n\":1}");
  ok(status(r) == 201 && !dsys_reply_header(r, "Idempotent-Replayed"), "after the TTL the key is new again");
  dsys_reply_free(r);

  dupreq d = {.tok = good};
  pthread_t th;
  before = atomic_load(&data.hits);
  pthread_create(&th, NULL, dup_thread, &d);
  for (int i = 0; i < 200 && atomic_load(&data.hits) == before; i++) usleep(5000);
  dsys_header hs[] = {{"Authorization", auth_h}, {"Idempotency-Key", "slow-key"}};
  r = call("POST", "/api/data/slow", hs, 2, "{}");
  is_int(status(r), 409, "duplicate while the first is in flight -> 409");
  ok(jstr(r, "error", buf, sizeof buf) != NULL, "409 JSON: %s", buf);
  dsys_reply_free(r);
  pthread_join(th, NULL);
  is_int(d.status, 201, "the first one completes");
  r = call("POST", "/api/data/slow", hs, 2, "{}");
  ok(status(r) == 201 && dsys_reply_header(r, "Idempotent-Replayed"), "then it is replayed");
  dsys_reply_free(r);
  is_int(atomic_load(&data.hits) - before, 1, "backend saw one slow POST");

  /* ---- slow clients ---- */
  int cut = trickle(gurl, 250, 6000);
  ok(cut >= 1500 && cut <= 3500, "a client trickling header bytes is cut off after the 2 s request timeout (%d ms)", cut);
  dsys_server *plain;
  /* idle 2 s against a byte every 250 ms: a loaded machine that does not
   * run the trickling thread for a whole second must not pass for a cut */
  dsys_server_options po = {.size = sizeof po, .idle_timeout_s = 2};
  dsys_server_new(&plain, &po);
  dsys_server_route(plain, "*", "/*", h_health, NULL);
  dsys_server_listen(plain, "http://127.0.0.1:0");
  cut = trickle(dsys_server_url(plain, 0), 250, 4500);
  is_int(cut, -1, "libmicrohttpd's idle timeout (2 s) alone does not cut a trickling client (still open at 4.5 s)");
  int idle_fd = test_connect(dsys_server_url(plain, 0));
  cut = -1;
  for (int i = 0; i < 60 && cut < 0; i++) {
    struct pollfd p = {.fd = idle_fd, .events = POLLIN};
    char c;
    if (poll(&p, 1, 100) > 0 && recv(idle_fd, &c, 1, MSG_DONTWAIT) <= 0) cut = i * 100;
  }
  close(idle_fd);
  ok(cut >= 1500 && cut <= 4500, "but it does close a silent connection (%d ms)", cut);
  dsys_server_free(plain);

  /* ---- connection limit ---- */
  dsys_server *lim;
  dsys_server_options lo = {.size = sizeof lo, .max_connections = 3, .event_loops = LIMIT_LOOPS};
  dsys_server_new(&lim, &lo);
  dsys_server_route(lim, "*", "/*", h_health, NULL);
  dsys_server_listen(lim, "http://127.0.0.1:0");
  /* connections that send nothing are held apart (server.md, "Connection
   * floods"); with half a head they take a slot, and a new request takes
   * the place of the oldest of them */
  int held[3];
  for (int i = 0; i < 3; i++) held[i] = test_connect(dsys_server_url(lim, 0));
  usleep(100000);
  int s4 = raw_status(dsys_server_url(lim, 0), "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27, resp, sizeof resp);
  is_int(s4, 200, "3 connections that send nothing do not take max_connections 3: a 4th is served");
  for (int i = 0; i < 3; i++) send(held[i], "GET / HT", 8, MSG_NOSIGNAL);
  dsys_server_conn_stats cs = {.size = sizeof cs};
  for (int i = 0; i < 200 && !dsys_server_conn_stats_get(lim, &cs) && cs.silent; i++)
    usleep(10000); /* bounded (2 s): until all three are in libmicrohttpd */
  s4 = raw_status(dsys_server_url(lim, 0), "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 46, resp, sizeof resp);
  is_int(s4, 200, "3 that sent half a head fill it: a 4th is served all the same");
  if (s4 != 200) tap_diag("got: %.200s", resp);
  struct pollfd hp = {.fd = held[0], .events = POLLIN};
  char c;
  ok(poll(&hp, 1, 2000) == 1 && recv(held[0], &c, 1, MSG_DONTWAIT) <= 0,
     "in the place of the oldest of them, which is closed");
  for (int i = 0; i < 3; i++) close(held[i]);
  dsys_server_free(lim);

  /* ---- the filter chain: order and membership per route ---- */
  r = call("GET", "/api/chain-rl-first/x", NULL, 0, NULL);
  is_int(status(r), 401, "ratelimit,jwt: the first request spends the token, then 401");
  dsys_reply_free(r);
  r = call("GET", "/api/chain-rl-first/x", NULL, 0, NULL);
  is_int(status(r), 429, "ratelimit,jwt: the second is limited before its token is looked at");
  dsys_reply_free(r);
  for (int i = 0; i < 2; i++) {
    r = call("GET", "/api/chain-jwt-first/x", NULL, 0, NULL);
    is_int(status(r), 401, "jwt,ratelimit: request %d refused by jwt before it spends a token", i + 1);
    dsys_reply_free(r);
  }
  char ch[2048];
  snprintf(ch, sizeof ch, "Bearer %s", good);
  dsys_header cah[] = {{"Authorization", ch}};
  r = call("GET", "/api/chain-jwt-first/x", cah, 1, NULL);
  is_int(status(r), 201, "jwt,ratelimit: an authenticated request gets the bucket's token");
  is_str(dsys_reply_header(r, "RateLimit-Remaining"), "0", "... and the limiter's headers");
  dsys_reply_free(r);
  for (int i = 0; i < 3; i++) {
    r = call("GET", "/api/chain-off/x", NULL, 0, NULL);
    is_int(status(r), 201, "filters none: request %d proxied without token or limit", i + 1);
    ok(r && !dsys_reply_header(r, "RateLimit-Limit"), "filters none: no limiter headers");
    dsys_reply_free(r);
  }

  dsys_free(good);
  dsys_free(shortlived);
  dsys_free(t2);
  dsys_free(hs512);
  dsys_free(other);
  dsys_client_free(cli);
  dsys_server_free(srv);
  dsys_gateway_free(gw);

  dsys_server_free(data.srv);
  dsys_server_free(auth.srv);
  dsys_clock_free(fclk);
  return tap_done();
}
