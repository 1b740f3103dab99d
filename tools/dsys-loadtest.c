/*
 * dsys-loadtest: load generator for the reference deployment (issue 9).
 *
 *   dsys-loadtest [--url URL] [--rps R | --connections N] [--duration D]
 *                 [--type auth|data|compute|all|mixed] [--json] ...
 *
 * One thread drives a libcurl multi handle.
 *
 * Open loop (--rps, the default): request i is due at start + i/rps and is
 * put on the multi handle when due, whatever the earlier requests are doing.
 * Its latency is measured from that scheduled time, not from when it was
 * actually handed to curl, so a server that stalls cannot make the
 * generator wait politely and hide the stall (no "coordinated omission").
 * At most --max-inflight requests are outstanding; a due request beyond
 * that waits in a backlog and is sent when a slot frees, still timed from
 * its schedule. Requests still due but unsent when the time is up are
 * reported as "notSent" and count as errors.
 *
 * Closed loop (--connections N): N transfers run at once; each starts the
 * next when it finishes. Latency is then the plain service time.
 *
 * Latencies go into an HDR-style histogram (tools/loadtest-hist.h, values in
 * microseconds, < 0.4% relative error). See docs/reference/loadtest.md.
 *
 * Exit status: 0 when the run happened (even with errors), 2 for bad flags,
 * 1 when it could not start (target unreachable, libcurl failure), 3 when
 * --max-errors is set and more requests than that failed.
 */
#include <curl/curl.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <distsys/distsys.h>

#include "loadtest-hist.h"

#define PROG "dsys-loadtest"

static const dsys_option opts[] = {
    {"url", "DSYS_LOADTEST_URL", DSYS_OPT_STRING, "http://127.0.0.1:3000",
     "base URL of the target (the gateway by default)"},
    {"type", "DSYS_LOADTEST_TYPE", DSYS_OPT_STRING, "mixed",
     "request mix: auth, data, compute, all (the three slow-work routes in rotation), mixed"},
    {"rps", "DSYS_LOADTEST_RPS", DSYS_OPT_STRING, NULL,
     "open loop: target requests per second (default 100 unless --connections)"},
    {"connections", "DSYS_LOADTEST_CONNECTIONS", DSYS_OPT_INT, NULL,
     "closed loop: N concurrent requests, each starting the next (excludes --rps)"},
    {"duration", "DSYS_LOADTEST_DURATION", DSYS_OPT_DURATION_S, "10s",
     "how long to send (1ms to 24h): 30, 30s, 500ms, 2m"},
    {"max-inflight", "DSYS_LOADTEST_MAX_INFLIGHT", DSYS_OPT_INT, "1000",
     "open loop: most requests outstanding at once; due requests beyond it wait (still timed "
     "from their schedule)"},
    {"timeout", "DSYS_LOADTEST_TIMEOUT", DSYS_OPT_DURATION, "30s", "timeout of one request (up to 1h)"},
    {"timeout-ms", "DSYS_LOADTEST_TIMEOUT_MS", DSYS_OPT_ALIAS, "timeout", NULL},
    {"max-errors", "DSYS_LOADTEST_MAX_ERRORS", DSYS_OPT_INT, NULL,
     "exit 3 when more than this many requests failed (4xx, 5xx, network, not sent)"},
    {"seed", "DSYS_LOADTEST_SEED", DSYS_OPT_INT, NULL, "seed of the operand generator (default: random)"},
    {"json", "DSYS_LOADTEST_JSON", DSYS_OPT_BOOL, "false", "print the summary as one JSON object"},
    {"quiet", "DSYS_LOADTEST_QUIET", DSYS_OPT_BOOL, "false", "no live progress line"},
    {"help", NULL, DSYS_OPT_BOOL, NULL, "show this help and exit"},
    {"version", NULL, DSYS_OPT_BOOL, NULL, "show the version and exit"},
};
#define NOPTS (sizeof opts / sizeof opts[0])

enum { T_AUTH, T_DATA, T_COMPUTE, T_ALL, T_MIXED };
static const char *const type_names[] = {"auth", "data", "compute", "all", "mixed"};

/* What a request was, for the bookkeeping done on its answer. */
enum { K_OTHER, K_SIGNUP, K_CREATE };

typedef struct req {
  CURL *easy;
  struct req *next_free;
  uint64_t sched_ns, sent_ns;
  int active; /* on the multi handle */
  int kind;
  uint64_t tag; /* user or key number */
  char url[1024];
  char *body;
  size_t len, cap;
} req;

#define RING 4096 /* remembered users / keys created by this run */
#define NCODES 600

typedef struct lt {
  /* settings */
  const char *base;
  int type, closed;
  double rps;
  uint64_t duration_ns;
  int64_t connections, max_inflight, timeout_ms;
  int progress;
  /* generator */
  uint64_t rng;
  char runid[17];
  uint64_t next_user, next_key, rotation;
  uint64_t users[RING], nusers;
  uint64_t keys[RING], nkeys;
  /* curl */
  CURLM *multi;
  struct curl_slist *hdrs;
  req *free_list;
  req **all;
  size_t nall;
  int64_t inflight;
  /* results */
  uint64_t start_ns, send_end_ns, end_ns;
  uint64_t sent, completed, not_sent, ok, c4xx, c5xx, other_status, neterr, late;
  uint64_t max_lag_ns, bytes_in;
  uint64_t codes[NCODES];
  uint64_t curlerr[CURL_LAST + 1];
  lt_hist lat, svc;
} lt;

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) { (void)sig; interrupted++; }

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* splitmix64 */
static uint64_t rnd(lt *L) {
  uint64_t z = (L->rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
static uint64_t rndn(lt *L, uint64_t n) { return n ? rnd(L) % n : 0; }
static double rndf(lt *L, double lo, double hi) {
  return lo + (hi - lo) * ((double)(rnd(L) >> 11) / 9007199254740992.0);
}

/* ---- request bodies ---------------------------------------------------- */

static int body_add(req *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int body_add(req *r, const char *fmt, ...) {
  if (!r->body) {
    if (!(r->body = malloc(4096))) return -1;
    r->cap = 4096;
    r->len = 0;
  }
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->body + r->len, r->cap - r->len, fmt, ap);
    va_end(ap);
    if (n < 0) return -1;
    if ((size_t)n < r->cap - r->len) {
      r->len += (size_t)n;
      return 0;
    }
    size_t cap = r->cap * 2;
    while (cap - r->len <= (size_t)n) cap *= 2;
    char *b = realloc(r->body, cap);
    if (!b) return -1;
    r->body = b;
    r->cap = cap;
  }
}

/* A JSON array of n numbers from [lo, hi) with `dec` decimals. */
static int body_numbers(lt *L, req *r, size_t n, double lo, double hi, int dec) {
  int rc = body_add(r, "[");
  for (size_t i = 0; !rc && i < n; i++)
    rc = body_add(r, "%s%.*f", i ? "," : "", dec, rndf(L, lo, hi));
  return rc ? rc : body_add(r, "]");
}

static int set_path(lt *L, req *r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int set_path(lt *L, req *r, const char *fmt, ...) {
  int n = snprintf(r->url, sizeof r->url, "%s", L->base);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(r->url + n, sizeof r->url - (size_t)n, fmt, ap);
  va_end(ap);
  return m < 0 || (size_t)m >= sizeof r->url - (size_t)n ? -1 : 0;
}

/* Method: 0 GET, 1 POST, 2 PUT. */
static int gen_slow(lt *L, req *r, int *method) {
  static const char *const slow[] = {"/api/auth/auth-worker", "/api/data/data-work",
                                     "/api/compute/compute-worker"};
  *method = 0;
  return set_path(L, r, "%s", slow[L->rotation++ % 3]);
}

static int gen_auth(lt *L, req *r, int *method) {
  uint64_t x = rndn(L, 100);
  if (x < 10) { /* the slow route */
    *method = 0;
    return set_path(L, r, "/api/auth/auth-worker");
  }
  *method = 1;
  if (x < 55 || !L->nusers) { /* sign up a new user */
    uint64_t u = ++L->next_user;
    r->kind = K_SIGNUP;
    r->tag = u;
    if (set_path(L, r, "/api/auth/signup")) return -1;
    return body_add(r,
                    "{\"username\":\"lt%su%llu\",\"email\":\"lt-%s-%llu@example.com\","
                    "\"password\":\"lt-pass-%s\"}",
                    L->runid, (unsigned long long)u, L->runid, (unsigned long long)u, L->runid);
  }
  uint64_t n = L->nusers < RING ? L->nusers : RING; /* sign in a user this run created */
  uint64_t u = L->users[rndn(L, n)];
  if (set_path(L, r, "/api/auth/signin")) return -1;
  return body_add(r, "{\"email\":\"lt-%s-%llu@example.com\",\"password\":\"lt-pass-%s\"}",
                  L->runid, (unsigned long long)u, L->runid);
}

static int gen_data(lt *L, req *r, int *method) {
  uint64_t x = rndn(L, 100);
  if (x < 60 || (x >= 80 && !L->nkeys)) {
    *method = 0;
    return set_path(L, r, "/api/data/data-%llu", (unsigned long long)(1 + rndn(L, 10)));
  }
  if (x < 80) { /* create a new key */
    uint64_t k = ++L->next_key;
    *method = 1;
    r->kind = K_CREATE;
    r->tag = k;
    if (set_path(L, r, "/api/data")) return -1;
    return body_add(r,
                    "{\"key\":\"lt-%s-%llu\",\"value\":{\"n\":%llu,\"run\":\"%s\"},"
                    "\"metadata\":{\"source\":\"dsys-loadtest\"}}",
                    L->runid, (unsigned long long)k, (unsigned long long)rndn(L, 1000000), L->runid);
  }
  uint64_t n = L->nkeys < RING ? L->nkeys : RING; /* update a key this run created */
  *method = 2;
  if (set_path(L, r, "/api/data/lt-%s-%llu", L->runid, (unsigned long long)L->keys[rndn(L, n)]))
    return -1;
  return body_add(r, "{\"value\":{\"n\":%llu,\"updated\":true}}", (unsigned long long)rndn(L, 1000000));
}

static int gen_direct_operands(lt *L, req *r, const char *op, int large) {
  size_t n = large ? 1000 + rndn(L, 4001) : 2 + rndn(L, 9);
  if (!strcmp(op, "multiply")) return body_numbers(L, r, n, 0.5, 1.5, 3);
  if (!strcmp(op, "divide")) return body_numbers(L, r, large ? 100 + rndn(L, 400) : 2 + rndn(L, 3), 0.5, 2, 3);
  if (!strcmp(op, "power"))
    return body_add(r, "[%.2f,%llu]", rndf(L, 0, 10), (unsigned long long)rndn(L, large ? 300 : 20));
  if (!strcmp(op, "factorial"))
    return body_add(r, "[%llu]", (unsigned long long)(large ? 100 + rndn(L, 71) : rndn(L, 20)));
  if (!strcmp(op, "fibonacci"))
    return body_add(r, "[%llu]", (unsigned long long)(large ? 500 + rndn(L, 977) : rndn(L, 90)));
  if (!strcmp(op, "primeCheck"))
    return body_add(r, "[%llu]", (unsigned long long)(large ? (1ull << 40) + rndn(L, 1ull << 52) : rndn(L, 1000000)));
  if (!strcmp(op, "matrixMultiply")) {
    size_t m = large ? 20 + rndn(L, 21) : 1 + rndn(L, 4);
    size_t k = large ? 20 + rndn(L, 21) : 1 + rndn(L, 4);
    size_t c = large ? 20 + rndn(L, 21) : 1 + rndn(L, 4);
    int rc = body_add(r, "[[");
    for (size_t i = 0; !rc && i < m; i++)
      rc = body_add(r, "%s", i ? "," : "") || body_numbers(L, r, k, -10, 10, 0);
    rc = rc || body_add(r, "],[");
    for (size_t i = 0; !rc && i < k; i++)
      rc = body_add(r, "%s", i ? "," : "") || body_numbers(L, r, c, -10, 10, 0);
    return rc || body_add(r, "]]");
  }
  return body_numbers(L, r, n, -1000, 1000, 2); /* add, subtract, sumOfSquares, average */
}

static int gen_compute(lt *L, req *r, int *method) {
  static const char *const ops[] = {"add", "subtract", "multiply", "divide", "power", "factorial",
                                    "fibonacci", "primeCheck", "sumOfSquares", "average",
                                    "matrixMultiply"};
  const char *op = ops[rndn(L, sizeof ops / sizeof ops[0])];
  *method = 1;
  if (rndn(L, 100) < 75) { /* direct, 30% of them with large operands */
    int large = rndn(L, 100) < 30;
    if (set_path(L, r, "/api/compute/direct")) return -1;
    return body_add(r, "{\"operation\":\"%s\",\"operands\":", op) ||
           gen_direct_operands(L, r, op, large) || body_add(r, "}");
  }
  if (set_path(L, r, "/api/compute/job")) return -1;
  if (rndn(L, 2)) /* the operation as the job type */
    return body_add(r, "{\"type\":\"%s\",\"data\":{\"operands\":", op) ||
           gen_direct_operands(L, r, op, 0) || body_add(r, "}}");
  return body_add(r, "{\"type\":\"computation\",\"data\":{\"operation\":\"%s\",\"operands\":", op) ||
         gen_direct_operands(L, r, op, 0) || body_add(r, "}}");
}

/* Fill a request: URL, method, body. */
static int generate(lt *L, req *r, int *method) {
  r->len = 0;
  r->kind = K_OTHER;
  if (r->body) r->body[0] = '\0';
  int t = L->type;
  if (t == T_MIXED) { /* weights: data 40, compute 30, auth 15, slow work 15 */
    uint64_t x = rndn(L, 100);
    t = x < 40 ? T_DATA : x < 70 ? T_COMPUTE : x < 85 ? T_AUTH : T_ALL;
  }
  switch (t) {
    case T_AUTH: return gen_auth(L, r, method);
    case T_DATA: return gen_data(L, r, method);
    case T_COMPUTE: return gen_compute(L, r, method);
    default: return gen_slow(L, r, method);
  }
}

/* ---- transfers --------------------------------------------------------- */

static size_t discard(char *p, size_t sz, size_t n, void *ud) {
  ((lt *)ud)->bytes_in += sz * n;
  return sz * n;
}

static req *get_req(lt *L) {
  req *r = L->free_list;
  if (r) {
    L->free_list = r->next_free;
    curl_easy_reset(r->easy);
    return r;
  }
  req **all = realloc(L->all, (L->nall + 1) * sizeof *all);
  if (!all) return NULL;
  L->all = all;
  r = calloc(1, sizeof *r);
  if (!r) return NULL;
  if (!(r->easy = curl_easy_init())) {
    free(r);
    return NULL;
  }
  L->all[L->nall++] = r;
  return r;
}

static void put_req(lt *L, req *r) {
  r->next_free = L->free_list;
  L->free_list = r;
}

/* Start one request that was due at sched; 0 means "now" (closed loop). */
static int launch(lt *L, uint64_t sched) {
  req *r = get_req(L);
  if (!r) return -1;
  int method = 0;
  if (generate(L, r, &method)) {
    put_req(L, r);
    return -1;
  }
  CURL *e = r->easy;
  curl_easy_setopt(e, CURLOPT_URL, r->url);
  curl_easy_setopt(e, CURLOPT_PRIVATE, r);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)L->timeout_ms);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, L);
  curl_easy_setopt(e, CURLOPT_USERAGENT, PROG);
  if (method) {
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, L->hdrs);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->len);
    if (method == 2) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "PUT");
  } else {
    curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
  }
  r->sent_ns = now_ns();
  r->sched_ns = sched ? sched : r->sent_ns;
  if (curl_multi_add_handle(L->multi, e) != CURLM_OK) {
    put_req(L, r);
    return -1;
  }
  uint64_t lag = r->sent_ns - r->sched_ns;
  if (lag > L->max_lag_ns) L->max_lag_ns = lag;
  if (lag > 10000000ull) L->late++;
  r->active = 1;
  L->sent++;
  L->inflight++;
  return 0;
}

static void remember(uint64_t *ring, uint64_t *n, uint64_t v) { ring[(*n)++ % RING] = v; }

static void finish(lt *L, CURLMsg *m) {
  uint64_t t = now_ns();
  req *r = NULL;
  curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
  CURLcode res = m->data.result;
  curl_multi_remove_handle(L->multi, m->easy_handle);
  r->active = 0;
  L->inflight--;
  L->completed++;
  if (res != CURLE_OK) {
    L->neterr++;
    L->curlerr[(unsigned)res <= CURL_LAST ? (unsigned)res : CURL_LAST]++;
  } else {
    long code = 0;
    curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &code);
    L->codes[code >= 0 && code < NCODES ? code : 0]++;
    if (code >= 200 && code < 400) L->ok++;
    else if (code >= 400 && code < 500) L->c4xx++;
    else if (code >= 500 && code < 600) L->c5xx++;
    else L->other_status++;
    lt_hist_record(&L->lat, (t - r->sched_ns) / 1000);
    lt_hist_record(&L->svc, (t - r->sent_ns) / 1000);
    if (code == 201 && r->kind == K_SIGNUP) remember(L->users, &L->nusers, r->tag);
    if (code == 201 && r->kind == K_CREATE) remember(L->keys, &L->nkeys, r->tag);
  }
  put_req(L, r);
}

static double ms(uint64_t us) { return (double)us / 1000.0; }

static void progress(lt *L, uint64_t t, uint64_t *last_t, uint64_t *last_sent) {
  double dt = (double)(t - *last_t) / 1e9;
  double rate = dt > 0 ? (double)(L->sent - *last_sent) / dt : 0;
  fprintf(stderr, "\r\033[K%6.1fs  sent %llu  rps %.1f  in flight %lld  errors %llu  p99 %.2f ms",
          (double)(t - L->start_ns) / 1e9, (unsigned long long)L->sent, rate, (long long)L->inflight,
          (unsigned long long)(L->c4xx + L->c5xx + L->neterr + L->other_status),
          ms(lt_hist_percentile(&L->lat, 99)));
  fflush(stderr);
  *last_t = t;
  *last_sent = L->sent;
}

/* The run itself. @return 0, or -1 when curl refused to work. */
static int run(lt *L) {
  uint64_t start = now_ns(), end = start + L->duration_ns;
  uint64_t next_i = 0, next_tick = start + 1000000000ull, last_t = start, last_sent = 0;
  double interval = L->closed ? 0 : 1e9 / L->rps;
  int sending = 1, aborted = 0;
  L->start_ns = start;
  if (L->closed)
    for (int64_t c = 0; c < L->connections; c++)
      if (launch(L, 0)) return -1;
  for (;;) {
    uint64_t t = now_ns();
    if (interrupted && sending) end = t; /* Ctrl-C: stop sending, drain */
    if (interrupted > 1) aborted = 1;    /* twice: stop now */
    if (sending && t >= end) {
      sending = 0;
      L->send_end_ns = end;
      /* Requests due before the end still go out (late, timed from their
       * schedule) if a slot is free; the rest of the backlog is not sent. */
      for (; !L->closed; next_i++) {
        uint64_t off = (uint64_t)((double)next_i * interval);
        if (off >= end - start) break;
        if (L->inflight >= L->max_inflight) L->not_sent++;
        else if (launch(L, start + off)) return -1;
      }
    }
    if (sending && !L->closed) {
      for (;;) {
        uint64_t due = start + (uint64_t)((double)next_i * interval);
        if (due > t || due >= end || L->inflight >= L->max_inflight) break;
        if (launch(L, due)) return -1;
        next_i++;
      }
    }
    int running = 0;
    if (curl_multi_perform(L->multi, &running) != CURLM_OK) return -1;
    CURLMsg *m;
    int q;
    while ((m = curl_multi_info_read(L->multi, &q)))
      if (m->msg == CURLMSG_DONE) {
        finish(L, m);
        if (L->closed && sending && !interrupted && now_ns() < end && launch(L, 0)) return -1;
      }
    t = now_ns();
    if (L->progress && t >= next_tick) {
      progress(L, t, &last_t, &last_sent);
      next_tick += 1000000000ull;
    }
    if ((!sending && !L->inflight) || aborted) break;
    /* Sleep until the next due request, the progress tick or the end. */
    uint64_t wake = next_tick;
    if (sending) {
      if (end < wake) wake = end;
      if (!L->closed && L->inflight < L->max_inflight) {
        uint64_t due = start + (uint64_t)((double)next_i * interval);
        if (due < wake) wake = due;
      }
    }
    int wait_ms = wake > t ? (int)((wake - t + 999999) / 1000000) : 0;
    if (wait_ms > 100) wait_ms = 100;
    if (curl_multi_poll(L->multi, NULL, 0, wait_ms, NULL) != CURLM_OK) return -1;
  }
  if (aborted) { /* count what was still outstanding as network errors */
    for (size_t i = 0; i < L->nall; i++) {
      req *r = L->all[i];
      if (r->active) {
        curl_multi_remove_handle(L->multi, r->easy);
        r->active = 0;
        L->neterr++;
        L->completed++;
        L->curlerr[CURLE_ABORTED_BY_CALLBACK]++;
        L->inflight--;
        put_req(L, r);
      }
    }
  }
  if (!L->send_end_ns) L->send_end_ns = end;
  L->end_ns = now_ns();
  if (L->progress) fputs("\r\033[K", stderr);
  return 0;
}

/* ---- output ------------------------------------------------------------ */

static void json_str(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c < 0x20) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

static const double pcts[] = {50, 90, 95, 99, 99.9};
static const char *const pct_names[] = {"p50", "p90", "p95", "p99", "p99.9"};

static void json_hist(FILE *f, const lt_hist *h) {
  fprintf(f, "{\"count\":%llu,\"avg\":%.3f,\"min\":%.3f,\"max\":%.3f", (unsigned long long)h->total,
          lt_hist_mean(h) / 1000.0, ms(h->total ? h->min : 0), ms(h->max));
  for (size_t i = 0; i < sizeof pcts / sizeof pcts[0]; i++)
    fprintf(f, ",\"%s\":%.3f", pct_names[i], ms(lt_hist_percentile(h, pcts[i])));
  fputc('}', f);
}

static uint64_t errors(const lt *L) { return L->c4xx + L->c5xx + L->other_status + L->neterr + L->not_sent; }
static double send_secs(const lt *L) { return (double)(L->send_end_ns - L->start_ns) / 1e9; }
static double total_secs(const lt *L) { return (double)(L->end_ns - L->start_ns) / 1e9; }
static double achieved(const lt *L) { return send_secs(L) > 0 ? (double)L->sent / send_secs(L) : 0; }
static double throughput(const lt *L) { return total_secs(L) > 0 ? (double)L->completed / total_secs(L) : 0; }

static void print_json(const lt *L, FILE *f) {
  fprintf(f, "{\"tool\":\"" PROG "\",\"version\":");
  json_str(f, dsys_version());
  fprintf(f, ",\"url\":");
  json_str(f, L->base);
  fprintf(f, ",\"type\":\"%s\",\"mode\":\"%s\",", type_names[L->type], L->closed ? "closed" : "open");
  if (L->closed) fprintf(f, "\"targetRps\":null,\"connections\":%lld,", (long long)L->connections);
  else fprintf(f, "\"targetRps\":%.3f,\"connections\":null,", L->rps);
  fprintf(f, "\"maxInflight\":%lld,\"durationSec\":%.3f,\"sendSec\":%.3f,\"elapsedSec\":%.3f,",
          (long long)L->max_inflight, (double)L->duration_ns / 1e9, send_secs(L), total_secs(L));
  fprintf(f,
          "\"requests\":{\"sent\":%llu,\"completed\":%llu,\"notSent\":%llu,\"success\":%llu,"
          "\"status4xx\":%llu,\"status5xx\":%llu,\"otherStatus\":%llu,\"networkErrors\":%llu,"
          "\"errors\":%llu,\"late\":%llu},",
          (unsigned long long)L->sent, (unsigned long long)L->completed, (unsigned long long)L->not_sent,
          (unsigned long long)L->ok, (unsigned long long)L->c4xx, (unsigned long long)L->c5xx,
          (unsigned long long)L->other_status, (unsigned long long)L->neterr,
          (unsigned long long)errors(L), (unsigned long long)L->late);
  fprintf(f, "\"achievedRps\":%.3f,\"throughputRps\":%.3f,\"maxSendLagMs\":%.3f,\"bytesReceived\":%llu,",
          achieved(L), throughput(L), (double)L->max_lag_ns / 1e6, (unsigned long long)L->bytes_in);
  fprintf(f, "\"latencyMs\":");
  json_hist(f, &L->lat);
  fprintf(f, ",\"serviceTimeMs\":");
  json_hist(f, &L->svc);
  fprintf(f, ",\"statusCodes\":{");
  int first = 1;
  for (int c = 0; c < NCODES; c++)
    if (L->codes[c]) {
      fprintf(f, "%s\"%d\":%llu", first ? "" : ",", c, (unsigned long long)L->codes[c]);
      first = 0;
    }
  fprintf(f, "},\"networkErrorKinds\":{");
  first = 1;
  for (int c = 0; c <= CURL_LAST; c++)
    if (L->curlerr[c]) {
      if (!first) fputc(',', f);
      json_str(f, curl_easy_strerror((CURLcode)c));
      fprintf(f, ":%llu", (unsigned long long)L->curlerr[c]);
      first = 0;
    }
  fprintf(f, "}}\n");
}

static double pct_of(uint64_t a, uint64_t b) { return b ? 100.0 * (double)a / (double)b : 0; }

static void print_human(const lt *L, FILE *f) {
  if (L->closed)
    fprintf(f, PROG ": closed loop, %lld connections, %.1f s, type %s, %s\n", (long long)L->connections,
            (double)L->duration_ns / 1e9, type_names[L->type], L->base);
  else
    fprintf(f, PROG ": open loop at %.1f req/s, %.1f s, type %s, %s\n", L->rps,
            (double)L->duration_ns / 1e9, type_names[L->type], L->base);
  fprintf(f, "  requests   sent %llu, completed %llu", (unsigned long long)L->sent,
          (unsigned long long)L->completed);
  if (!L->closed)
    fprintf(f, ", not sent %llu, sent >10 ms late %llu (max lag %.1f ms)", (unsigned long long)L->not_sent,
            (unsigned long long)L->late, (double)L->max_lag_ns / 1e6);
  fprintf(f, "\n  results    success %llu (%.1f%%), 4xx %llu, 5xx %llu, network errors %llu",
          (unsigned long long)L->ok, pct_of(L->ok, L->sent), (unsigned long long)L->c4xx,
          (unsigned long long)L->c5xx, (unsigned long long)L->neterr);
  if (L->other_status) fprintf(f, ", other %llu", (unsigned long long)L->other_status);
  fprintf(f, "\n  rate       achieved %.1f req/s over %.2f s of sending; %.1f responses/s over %.2f s\n",
          achieved(L), send_secs(L), throughput(L), total_secs(L));
  const lt_hist *h = &L->lat;
  fprintf(f, "  latency    avg %.2f  min %.2f  max %.2f  (ms, %s)\n", lt_hist_mean(h) / 1000.0,
          ms(h->total ? h->min : 0), ms(h->max),
          L->closed ? "service time" : "from each request's scheduled send time");
  fprintf(f, "            ");
  for (size_t i = 0; i < sizeof pcts / sizeof pcts[0]; i++)
    fprintf(f, " %s %.2f", pct_names[i], ms(lt_hist_percentile(h, pcts[i])));
  fputc('\n', f);
  if (!L->closed)
    fprintf(f, "  service    p50 %.2f  p99 %.2f  max %.2f  (ms, from the actual send)\n",
            ms(lt_hist_percentile(&L->svc, 50)), ms(lt_hist_percentile(&L->svc, 99)), ms(L->svc.max));
  fprintf(f, "  status    ");
  int any = 0;
  for (int c = 0; c < NCODES; c++)
    if (L->codes[c]) fprintf(f, " %d: %llu", c, (unsigned long long)L->codes[c]), any = 1;
  if (!any) fprintf(f, " (no responses)");
  fputc('\n', f);
  for (int c = 0; c <= CURL_LAST; c++)
    if (L->curlerr[c])
      fprintf(f, "  network    %s: %llu\n", curl_easy_strerror((CURLcode)c), (unsigned long long)L->curlerr[c]);
}

/* ---- flags ------------------------------------------------------------- */

static int bad(dsys_config *cfg, const char *msg, const char *arg) {
  fprintf(stderr, PROG ": %s%s%s\n", msg, arg ? ": " : "", arg ? arg : "");
  dsys_config_free(cfg);
  return 2;
}

/* Raise the open-file limit so max-inflight connections fit. */
static void raise_nofile(int64_t want) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl)) return;
  if (rl.rlim_cur >= (rlim_t)want + 64) return;
  rlim_t target = (rlim_t)want + 64;
  if (rl.rlim_max != RLIM_INFINITY && target > rl.rlim_max) target = rl.rlim_max;
  rl.rlim_cur = target;
  if (setrlimit(RLIMIT_NOFILE, &rl) || target < (rlim_t)want + 64) {
    char m[160];
    snprintf(m, sizeof m, "open-file limit %llu is low for %lld requests in flight",
             (unsigned long long)target, (long long)want);
    dsys_log_write(DSYS_LOG_WARN, "loadtest", m);
  }
}

/* Can we connect at all? (No HTTP request is sent.) */
static int preflight(const char *url, char *err, size_t errlen) {
  CURL *e = curl_easy_init();
  if (!e) return snprintf(err, errlen, "curl_easy_init failed"), -1;
  char ebuf[CURL_ERROR_SIZE] = "";
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_CONNECT_ONLY, 1L);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, ebuf);
  CURLcode rc = curl_easy_perform(e);
  curl_easy_cleanup(e);
  if (rc != CURLE_OK) snprintf(err, errlen, "%s", ebuf[0] ? ebuf : curl_easy_strerror(rc));
  return rc == CURLE_OK ? 0 : -1;
}

static void cleanup(lt *L) {
  for (size_t i = 0; i < L->nall; i++) {
    if (L->multi) curl_multi_remove_handle(L->multi, L->all[i]->easy);
    curl_easy_cleanup(L->all[i]->easy);
    free(L->all[i]->body);
    free(L->all[i]);
  }
  free(L->all);
  curl_slist_free_all(L->hdrs);
  if (L->multi) curl_multi_cleanup(L->multi);
}

int main(int argc, char **argv) {
  char err[512];
  dsys_config *cfg;
  int st = dsys_program_start(&cfg, opts, NOPTS, argc, argv, PROG,
                              "Load generator for the reference deployment: open loop at a target rate "
                              "(latency from each request's scheduled send time) or closed loop with N "
                              "connections; HDR-style latency histogram. Exit 0 after a run, 1 if it "
                              "could not start, 2 for bad flags, 3 over --max-errors.");
  if (st >= 0) return st;
  if ((st = dsys_program_positionals(cfg, PROG, 0))) {
    dsys_config_free(cfg);
    return st;
  }

  static lt L; /* large (histograms): not on the stack */
  L.type = -1;
  for (int i = 0; i < 5; i++)
    if (!strcmp(dsys_config_get(cfg, "type"), type_names[i])) L.type = i;
  if (L.type < 0) return bad(cfg, "--type must be auth, data, compute, all or mixed", dsys_config_get(cfg, "type"));
  int64_t dur_ms = 0;
  dsys_config_get_duration_ms(cfg, "duration", &dur_ms);
  if (dur_ms < 1 || dur_ms > 86400000)
    return bad(cfg, "--duration must be a time between 1ms and 24h (30, 30s, 500ms, 2m)",
               dsys_config_get(cfg, "duration"));
  L.duration_ns = (uint64_t)dur_ms * 1000000;
  const char *rps = dsys_config_get(cfg, "rps");
  if (dsys_config_get(cfg, "connections")) {
    if (rps) return bad(cfg, "--rps (open loop) and --connections (closed loop) exclude each other", NULL);
    dsys_config_get_int(cfg, "connections", &L.connections);
    if (L.connections < 1 || L.connections > 10000) return bad(cfg, "--connections must be 1..10000", NULL);
    L.closed = 1;
  } else {
    char *end;
    L.rps = rps ? strtod(rps, &end) : 100;
    if (rps && (end == rps || *end || !(L.rps > 0) || L.rps > 1e6))
      return bad(cfg, "--rps must be a number above 0 and at most 1000000", rps);
  }
  dsys_config_get_int(cfg, "max-inflight", &L.max_inflight);
  dsys_config_get_duration_ms(cfg, "timeout", &L.timeout_ms);
  if (L.max_inflight < 1 || L.max_inflight > 100000) return bad(cfg, "--max-inflight must be 1..100000", NULL);
  if (L.timeout_ms < 1 || L.timeout_ms > 3600000) return bad(cfg, "--timeout must be 1ms..1h", NULL);
  int64_t max_errors = -1;
  if (dsys_config_get(cfg, "max-errors")) {
    dsys_config_get_int(cfg, "max-errors", &max_errors);
    if (max_errors < 0) return bad(cfg, "--max-errors must be 0 or more", NULL);
  }
  int64_t seed = 0;
  if (dsys_config_get(cfg, "seed")) dsys_config_get_int(cfg, "seed", &seed);
  else dsys_random_bytes(&seed, sizeof seed);
  L.rng = (uint64_t)seed;
  dsys_random_hex(L.runid, sizeof L.runid, 4);

  /* The base URL: http(s) only, no trailing slash (paths start with '/'). */
  char base[512];
  snprintf(base, sizeof base, "%s", dsys_config_get(cfg, "url"));
  size_t bl = strlen(base);
  while (bl && base[bl - 1] == '/') base[--bl] = '\0';
  if (strncmp(base, "http://", 7) && strncmp(base, "https://", 8))
    return bad(cfg, "--url must be an http:// or https:// URL", base);
  if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
    fprintf(stderr, PROG ": curl_global_init failed\n");
    dsys_config_free(cfg);
    return 1;
  }
  CURLU *cu = curl_url();
  int badurl = !cu || curl_url_set(cu, CURLUPART_URL, base, 0) != CURLUE_OK;
  curl_url_cleanup(cu);
  if (badurl) {
    curl_global_cleanup();
    return bad(cfg, "--url is not a valid URL", base);
  }
  L.base = base;
  int json = dsys_config_get_bool(cfg, "json");
  L.progress = !dsys_config_get_bool(cfg, "quiet") && isatty(STDERR_FILENO);
  int status = 1;

  raise_nofile(L.closed ? L.connections : L.max_inflight);
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa = {.sa_handler = on_sigint};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  lt_hist_init(&L.lat);
  lt_hist_init(&L.svc);

  if (preflight(base, err, sizeof err)) {
    fprintf(stderr, PROG ": cannot connect to %s: %s\n", base, err);
    goto out;
  }
  L.multi = curl_multi_init();
  L.hdrs = curl_slist_append(NULL, "Content-Type: application/json");
  struct curl_slist *h2 = L.hdrs ? curl_slist_append(L.hdrs, "Expect:") : NULL;
  if (!L.multi || !h2) {
    fprintf(stderr, PROG ": cannot set up libcurl\n");
    goto out;
  }
  L.hdrs = h2;
  curl_multi_setopt(L.multi, CURLMOPT_MAXCONNECTS, (long)(L.closed ? L.connections : L.max_inflight));
  if (run(&L)) {
    fprintf(stderr, PROG ": libcurl failed during the run\n");
    goto out;
  }
  if (json) print_json(&L, stdout);
  else print_human(&L, stdout);
  fflush(stdout);
  status = max_errors >= 0 && errors(&L) > (uint64_t)max_errors ? 3 : 0;
  if (status == 3)
    fprintf(stderr, PROG ": %llu requests failed, more than --max-errors %lld\n",
            (unsigned long long)errors(&L), (long long)max_errors);
out:
  cleanup(&L);
  curl_global_cleanup();
  dsys_config_free(cfg);
  return status;
}
